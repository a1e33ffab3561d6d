"""Each throughput lever measured before/after in one run, alternating, in-process (issue 3).

    .venv/bin/python benchmarks/levers.py [--rounds 5] [--only spinning,canvas,...]

Prints one line per lever: median ms of the "before" and "after" variants over the rounds and
their ratio. The machine is shared and noisy: compare ratios, not absolute figures.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import orjson
import simplejpeg

from facerest.api.serialize import v2_body
from facerest.cli.bench import default_images
from facerest.config import Settings
from facerest.imaging.decode import decode_image
from facerest.imaging.resize import letterbox, plan_input
from facerest.models.store import ModelStore
from facerest.pipeline import ExtractOptions, FaceAnalyzer
from facerest.preparation import load_models


def alternate(variants: dict[str, Callable[[], object]], rounds: int, calls: int) -> dict[str, float]:
    """Median ms per call of each variant, the variants interleaved round by round."""
    for run in variants.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                run()
            times[name].append((time.perf_counter() - t0) * 1000 / calls)
    return {name: statistics.median(v) for name, v in times.items()}


def report(lever: str, result: dict[str, float]) -> None:
    names = list(result)
    base = result[names[0]]
    cells = ", ".join(f"{n} {ms:.1f} ms ({base / ms:.2f}x)" for n, ms in result.items())
    print(f"{lever:28s} {cells}", flush=True)


def ort_session(path: Path, threads: int, spinning: bool) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default="", help="comma-separated levers to run")
    args = parser.parse_args()
    only = set(filter(None, args.only.split(",")))
    settings = Settings(threads=args.threads, ga_name="")
    store = ModelStore(settings.models_dir)
    det_path = store.ensure(settings.det_name)[0]
    rec_path = store.ensure(settings.rec_name)[0]
    photos = {name: path.read_bytes() for name, path in default_images().items()}
    small, crowd = list(photos)  # Stallone.jpg, lumia.jpg (or the package's photos)
    rng = np.random.default_rng(0)
    face = rng.standard_normal((1, 3, 112, 112), dtype=np.float32)

    def wanted(name: str) -> bool:
        return not only or name in only

    if wanted("spinning"):
        # detector then recognizer, as one request runs them: idle spinning threads of one
        # session steal the cores from the next
        variants = {}
        for spinning in (True, False):
            det = ort_session(det_path, args.threads, spinning)
            rec = ort_session(rec_path, args.threads, spinning)
            canvas = rng.standard_normal((1, 3, 640, 608), dtype=np.float32)

            def run(det=det, rec=rec, canvas=canvas) -> None:  # type: ignore[no-untyped-def]
                det.run(None, {det.get_inputs()[0].name: canvas})
                rec.run(None, {rec.get_inputs()[0].name: face})

            variants["spinning" if spinning else "no spinning"] = run
        report("ORT pool spinning (det+rec)", alternate(variants, args.rounds, 10))

    models = load_models(settings)
    detector = models.detector
    if wanted("canvas"):
        for name, data in photos.items():
            image = decode_image(data, max_pixels=settings.max_image_pixels)
            h, w = image.shape[:2]
            square = detector.prepare(letterbox(image, plan_input(w, h, (640, 640), fixed=(640, 640))))[None]
            follow = detector.prepare(letterbox(image, plan_input(w, h, (640, 640))))[None]
            report(
                f"canvas {name} {follow.shape[3]}x{follow.shape[2]}",
                alternate(
                    {
                        "640x640": lambda t=square: detector.infer(t),
                        "aspect": lambda t=follow: detector.infer(t),
                    },
                    args.rounds,
                    5,
                ),
            )

    if wanted("detbatch"):
        # concurrent same-shape images could run as one detector batch: FACEREST_DET_BATCH_SIZE
        one = rng.standard_normal((1, 3, 640, 608), dtype=np.float32)
        result = alternate(
            {f"batch {n}": lambda n=n: detector.infer(np.repeat(one, n, axis=0)) for n in (1, 2, 4)},
            args.rounds,
            2,
        )
        report("detector 608x640, per image", {k: v / int(k.split()[1]) for k, v in result.items()})

    if wanted("batch") and models.recognizer is not None:
        recognizer = models.recognizer
        eight = np.repeat(face, 8, axis=0)
        report(
            "recognizer 8 faces",
            alternate(
                {
                    "8 calls of 1": lambda: [recognizer.infer(face) for _ in range(8)],
                    "1 call of 8": lambda: recognizer.infer(eight),
                },
                args.rounds,
                3,
            ),
        )

    if wanted("chunk") and models.recognizer is not None:
        # a crowd photo's faces (lumia.jpg: 84) run in chunks of FACEREST_REC_BATCH_SIZE
        recognizer = models.recognizer
        crowd_faces = np.repeat(face, 84, axis=0)

        def chunks(n: int) -> Callable[[], object]:
            return lambda: [recognizer.infer(crowd_faces[i : i + n]) for i in range(0, 84, n)]

        report(
            "recognizer 84 faces",
            alternate({f"chunks of {n}": chunks(n) for n in (64, 32, 16, 8)}, args.rounds, 1),
        )

    if wanted("runtime"):
        try:
            from facerest.runtime.onnx import OnnxSession
            from facerest.runtime.openvino import OpenVinoSession, cpu_has_bf16
        except ImportError as exc:
            print(f"runtime: skipped ({exc})")
        else:
            canvas = rng.standard_normal((1, 3, 640, 608), dtype=np.float32)
            eight = np.repeat(face, 8, axis=0)
            for path, tensor in ((det_path, canvas), (rec_path, eight)):
                a = OnnxSession(path, threads=args.threads)
                b = OpenVinoSession(path, threads=args.threads)
                feeds = {a.inputs[0].name: tensor}
                variants = {
                    "onnxruntime": lambda a=a, f=feeds: a.run(f),
                    "openvino": lambda b=b, f=feeds: b.run(f),
                }
                if path == rec_path and cpu_has_bf16():  # FACEREST_REC_PRECISION=bf16
                    c = OpenVinoSession(path, threads=args.threads, precision="bf16")
                    variants["openvino bf16"] = lambda c=c, f=feeds: c.run(f)
                report(
                    f"runtime {path.stem} {'x'.join(map(str, tensor.shape))}",
                    alternate(variants, args.rounds, 5),
                )

    if wanted("decode"):
        for name, data in photos.items():
            report(
                f"decode {name}",
                alternate(
                    {
                        "full": lambda d=data: simplejpeg.decode_jpeg(d, colorspace="BGR"),
                        "1/2 scale": lambda d=data: simplejpeg.decode_jpeg(
                            d, colorspace="BGR", min_height=0, min_factor=2
                        ),
                        "opencv full": lambda d=data: cv2.imdecode(
                            np.frombuffer(d, np.uint8), cv2.IMREAD_COLOR
                        ),
                    },
                    args.rounds,
                    5,
                ),
            )

    analyzer = FaceAnalyzer(models, settings)
    try:
        if wanted("serialise"):
            image = decode_image(photos[crowd], max_pixels=settings.max_image_pixels)
            results = analyzer.process([image], ExtractOptions())
            body = v2_body(results, {"total_ms": 1.0}, binary=False)

            def stdlib() -> bytes:
                return json.dumps(body, default=lambda o: o.tolist()).encode()

            report(
                f"serialise {crowd} answer",
                alternate(
                    {"json": stdlib, "orjson": lambda: orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)},
                    args.rounds,
                    5,
                ),
            )

        if wanted("wait"):
            # 8 concurrent one-face requests, in-process (no HTTP): scheduler batch wait
            image = decode_image(photos[small], max_pixels=settings.max_image_pixels)
            pool = concurrent.futures.ThreadPoolExecutor(8)

            def eight_clients(wait_ms: float) -> Callable[[], object]:
                def run() -> object:
                    analyzer.scheduler.batch_wait_s = wait_ms / 1000
                    return list(pool.map(lambda _: analyzer.process([image], ExtractOptions()), range(16)))

                return run

            result = alternate({f"wait {w} ms": eight_clients(w) for w in (0.0, 2.0, 5.0)}, args.rounds, 1)
            report(f"batch wait, 16 x {small}", {k: v / 16 for k, v in result.items()})
            pool.shutdown()

        if wanted("closeup"):
            # images where the first pass suffices must not pay for the close-up pass
            images = [decode_image(d, max_pixels=settings.max_image_pixels) for d in photos.values()]

            def pipeline(enabled: bool) -> Callable[[], object]:
                def run() -> object:
                    analyzer.settings.closeup_pass = enabled
                    return analyzer.process(images, ExtractOptions())

                return run

            report(
                "close-up pass on/off",
                alternate({"off": pipeline(False), "on": pipeline(True)}, args.rounds, 2),
            )
            analyzer.settings.closeup_pass = True
    finally:
        analyzer.close()


if __name__ == "__main__":
    main()
