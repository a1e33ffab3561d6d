"""One command that checks a GPU machine and measures it (issue 19), in well under 10 minutes:

    python benchmarks/gpu_check.py                 # on a machine with an NVIDIA GPU
    python benchmarks/gpu_check.py --cpu           # proves the script itself, on any machine

1. prints the versions (Python, facerest, ONNX Runtime and its providers, torch and its CUDA,
   TensorRT, cuda-python, the GPU and its driver);
2. runs tests/test_gpu.py (and the torch runtime's tests) with every skip counted as a failure;
3. runs the whole pipeline on every GPU runtime present (native TensorRT, ONNX Runtime's CUDA and
   TensorRT providers, torch on CUDA; FP32 and FP16) and compares it with the CPU (ONNX Runtime)
   on the shared photos: faces found, box corners (px), cosine of each face's embedding;
4. measures throughput per runtime: Stallone.jpg-like single-face images in requests of 1, 16
   and 64 images, and lumia.jpg (85 faces), from several client threads at once (the scheduler
   batches across requests, as it does behind the HTTP server);
5. writes one JSON and one Markdown report (--out).

A runtime that does not start is reported absent with its one-line reason (FACEREST_REQUIRE_GPU
is on in GPU mode: nothing falls back to the CPU unseen). With --cpu the "GPU" runtimes are the
CPU ones (ONNX Runtime, torch on the CPU): the figures are then CPU figures, labelled as such.

On a machine whose Python has torch and CUDA but nothing of facerest: docs/gpu_check.md lists
the wheels to bring (benchmarks/gpu_bundle.sh makes the folder) and the one command to run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# numpy and OpenCV are imported where used: with --wheels they are installed first

ROOT = Path(__file__).resolve().parents[1]
#: the photos every comparison runs on (../shared/testdata/anchor beside a checkout)
PHOTOS = ["Stallone.jpg", "lumia.jpg", "TH.png", "TH1.jpg", "mask.jpg"]


@dataclass
class Variant:
    """One runtime configuration to compare and measure."""

    name: str
    settings: dict[str, Any]
    precision: str = "fp32"
    status: str = "not run"  # ok | absent: <reason> | failed: <reason>
    backends: dict[str, str] = field(default_factory=dict)
    compare: list[dict[str, Any]] = field(default_factory=list)
    throughput: list[dict[str, Any]] = field(default_factory=list)
    load_s: float = 0.0


def _version(module: str) -> str | None:
    try:
        imported = __import__(module)
    except Exception as exc:  # a broken install is worth reporting, not crashing on
        return None if isinstance(exc, ImportError) else f"broken ({exc})"
    return str(getattr(imported, "__version__", "?"))


def versions() -> dict[str, Any]:
    import numpy as np
    import onnxruntime as ort

    # the torch runtime before torch itself: it sets OpenMP's wait policy first
    with contextlib.suppress(ImportError):
        import facerest.runtime.pytorch

    import facerest

    found: dict[str, Any] = {
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        # other work on the machine: a shared one makes every figure smaller
        "load_average_1m_at_start": round(os.getloadavg()[0], 2),
        "facerest": facerest.__version__,
        "numpy": np.__version__,
        "onnxruntime": ort.__version__,
        "onnxruntime_providers": ort.get_available_providers(),
        "tensorrt": _version("tensorrt"),
        "torch": _version("torch"),
    }
    try:
        import torch

        found["torch_cuda"] = torch.version.cuda
        found["torch_cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            found["gpu"] = torch.cuda.get_device_name(0)
            found["gpu_capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
    except ImportError:
        pass
    try:
        from importlib.metadata import version

        found["cuda_python"] = version("cuda-python")
    except Exception:
        found["cuda_python"] = None
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        found["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        found["nvidia_smi"] = f"not available ({exc})"
    return found


def run_tests(cpu: bool, timeout_s: int) -> dict[str, Any]:
    """tests/test_gpu.py and the torch tests, every skip counted as a failure."""
    tests = [t for t in ("tests/test_gpu.py", "tests/test_runtime_torch.py") if (ROOT / t).is_file()]
    if not tests:
        return {"status": "failed", "detail": f"no tests/test_gpu.py beside {Path(__file__).name}"}
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *tests]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "detail": f"the tests ran past {timeout_s} s"}
    summary = (done.stdout.strip().splitlines() or [""])[-1]
    counts = {w: int(n) for n, w in re.findall(r"(\d+) (passed|failed|skipped|errors?)", summary)}
    skips = [line for line in done.stdout.splitlines() if line.startswith("SKIPPED")]
    bad = (
        counts.get("failed", 0) + counts.get("error", 0) + counts.get("errors", 0) + counts.get("skipped", 0)
    )
    return {
        "status": "ok" if bad == 0 and counts.get("passed", 0) > 0 else "failed",
        "summary": summary,
        "counts": counts,
        "skips_counted_as_failures": skips,
        "expected_on_cpu": cpu,
        "tail": done.stdout.strip().splitlines()[-25:],
    }


def variants(cpu: bool) -> list[Variant]:
    if cpu:
        return [
            Variant("onnxruntime-cpu", {"runtime": "onnx", "providers": ["CPUExecutionProvider"]}),
            Variant("torch-cpu", {"runtime": "torch"}),
        ]
    gpu = {"require_gpu": True}
    cuda = ["CUDAExecutionProvider"]
    trt = ["TensorrtExecutionProvider"]
    return [
        Variant("tensorrt", {"runtime": "trt", **gpu}),
        Variant("tensorrt", {"runtime": "trt", "force_fp16": True, **gpu}, "fp16"),
        Variant("onnxruntime-cuda", {"runtime": "onnx", "providers": cuda, **gpu}),
        Variant("onnxruntime-tensorrt", {"runtime": "onnx", "providers": trt, **gpu}),
        Variant(
            "onnxruntime-tensorrt", {"runtime": "onnx", "providers": trt, "force_fp16": True, **gpu}, "fp16"
        ),
        Variant("torch-cuda", {"runtime": "torch", **gpu}),
        Variant("torch-cuda", {"runtime": "torch", "force_fp16": True, **gpu}, "fp16"),
    ]


def load_analyzer(models_dir: Path, overrides: dict[str, Any], threads: int, rec_batch: int) -> Any:
    from facerest.config import Settings
    from facerest.pipeline import FaceAnalyzer
    from facerest.preparation import load_models

    settings = Settings(
        models_dir=models_dir,
        threads=threads,
        rec_batch_size=rec_batch,
        # a request of 64 images on a slow runtime must not time out half-way through a figure
        request_timeout_s=600,
        # detection + embeddings, as InsightFace-REST's published figures; no gender/age engines
        ga_name="",
        **{"require_gpu": False, **overrides},
    )
    return FaceAnalyzer(load_models(settings), settings)


def _iou(a: Any, b: Any) -> float:
    import numpy as np

    x1, y1 = np.maximum(a[:2], b[:2])
    x2, y2 = np.minimum(a[2:], b[2:])
    inter = max(0.0, float(x2 - x1)) * max(0.0, float(y2 - y1))
    union = float(np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2])) - inter
    return inter / union if union > 0 else 0.0


def compare(reference: list[Any], results: list[Any], names: list[str]) -> list[dict[str, Any]]:
    """Per photo: faces found by each, matched by box overlap; largest corner gap, lowest cosine."""
    import numpy as np

    rows = []
    for name, want, got in zip(names, reference, results, strict=True):
        gaps, cosines, unmatched = [], [], 0
        taken: set[int] = set()
        for face in want.faces:
            best = max(
                ((i, _iou(face.bbox, other.bbox)) for i, other in enumerate(got.faces) if i not in taken),
                key=lambda pair: pair[1],
                default=(None, 0.0),
            )
            if best[0] is None or best[1] < 0.5:
                unmatched += 1
                continue
            taken.add(best[0])
            other = got.faces[best[0]]
            gaps.append(float(np.abs(face.bbox - other.bbox).max()))
            if face.embedding is not None and other.embedding is not None:
                cosines.append(float(np.dot(face.embedding, other.embedding)))
        rows.append(
            {
                "photo": name,
                "faces_cpu": len(want.faces),
                "faces": len(got.faces),
                "unmatched": unmatched + len(got.faces) - len(taken),
                "max_box_gap_px": round(max(gaps, default=0.0), 3),
                "min_cosine": round(min(cosines, default=float("nan")), 6),
                "mean_cosine": round(statistics.fmean(cosines), 6) if cosines else None,
            }
        )
    return rows


def throughput(analyzer: Any, image: Any, batch: int, clients: int, seconds: float) -> dict[str, Any]:
    """Requests of `batch` copies of `image` from `clients` threads for `seconds` (after one warm-up)."""
    from facerest.pipeline import ExtractOptions

    options = ExtractOptions()
    request = [image] * batch
    analyzer.process(request, options)  # warm-up: shapes, engines, CUDA graphs
    stop = time.perf_counter() + seconds
    done = {"images": 0, "faces": 0, "requests": 0}
    lock = threading.Lock()

    def client() -> None:
        while time.perf_counter() < stop:
            results = analyzer.process(request, options)
            with lock:
                done["requests"] += 1
                done["images"] += len(results)
                done["faces"] += sum(len(r.faces) for r in results)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client) for _ in range(clients)]:
            future.result()
    elapsed = time.perf_counter() - started
    return {
        "requests": done["requests"],
        "images_per_s": round(done["images"] / elapsed, 2),
        "faces_per_s": round(done["faces"] / elapsed, 1),
        "seconds": round(elapsed, 2),
    }


#: installed beside the wheels on a GPU machine: the GPU build of ONNX Runtime (replacing the CPU
#: one facerest depends on), cuda-python for native TensorRT, pytest for the GPU tests, and
#: TensorRT itself when asked (the version onnxruntime-gpu's TensorRT provider is built for)
GPU_EXTRAS = ["onnxruntime-gpu==1.24.1", "cuda-python==12.9.4", "pytest==9.2.0"]
TENSORRT = "tensorrt-cu12==10.14.1.48.post1"


def install_and_rerun(wheels: Path, with_tensorrt: bool, *, gpu: bool) -> int:
    """Install the bundle's wheels into this Python (the one with torch and CUDA: a venv made
    from it would not see a torch that itself lives in a venv), then run the check again."""
    pip = [sys.executable, "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, *sorted(str(w) for w in wheels.glob("*.whl"))], check=True)
    if gpu:  # onnxruntime-gpu replaces the CPU wheel (both install the `onnxruntime` module)
        subprocess.run(
            [sys.executable, "-m", "pip", "uninstall", "--quiet", "--yes", "onnxruntime"], check=True
        )
        subprocess.run([*pip, *GPU_EXTRAS, *([TENSORRT] if with_tensorrt else [])], check=True)
    else:
        subprocess.run([*pip, "pytest==9.2.0"], check=True)
    rest = [a for a in sys.argv[1:] if a != "--with-tensorrt" and not a.startswith("--wheels=")]
    if "--wheels" in rest:
        i = rest.index("--wheels")
        del rest[i : i + 2]
    return subprocess.run([sys.executable, str(Path(__file__).resolve()), *rest]).returncode


def photos_dir(given: str | None) -> Path:
    for candidate in [given, ROOT.parent / "shared" / "testdata" / "anchor", ROOT / "photos"]:
        if candidate and (Path(candidate) / "Stallone.jpg").is_file():
            return Path(candidate)
    raise SystemExit("error: no Stallone.jpg found: pass --photos DIR (../shared/testdata/anchor)")


def markdown(report: dict[str, Any]) -> str:
    v = report["versions"]
    lines = [
        f"# GPU check: {report['label']}",
        "",
        f"{report['started']} on `{v['host']}`, {report['duration_s']} s. "
        + (
            "**CPU proof (`--cpu`): these are CPU figures on a shared machine, not GPU figures; "
            "they show the script works.**"
            if report["cpu_mode"]
            else f"GPU: {v.get('gpu') or v.get('nvidia_smi')}."
        ),
        "",
        "## Versions",
        "",
        *[f"- {k}: `{val}`" for k, val in v.items()],
        "",
        "## tests/test_gpu.py (skips count as failures)",
        "",
        f"{report['tests'].get('status')}: {report['tests'].get('summary', report['tests'].get('detail'))}"
        + (" (without a GPU the GPU tests can only skip)" if report["cpu_mode"] else ""),
        *[f"- {s}" for s in report["tests"].get("skips_counted_as_failures", [])],
        "",
        "## Each runtime against the CPU (ONNX Runtime), per photo",
        "",
        "| runtime | precision | status | photo | faces (CPU) | faces | unmatched | max box gap px "
        "| min cosine |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for item in report["variants"]:
        rows = item["compare"] or [{}]
        for row in rows:
            lines.append(
                f"| {item['name']} | {item['precision']} | {item['status']} | {row.get('photo', '')} | "
                f"{row.get('faces_cpu', '')} | {row.get('faces', '')} | {row.get('unmatched', '')} | "
                f"{row.get('max_box_gap_px', '')} | {row.get('min_cosine', '')} |"
            )
    lines += [
        "",
        f"## Throughput ({report['clients']} client thread(s), {report['seconds']} s each after a "
        f"warm-up request, in-process pipeline; load average at the end {report['load_average_1m_at_end']})",
        "",
        "| runtime | precision | scenario | images/s | faces/s |",
        "|---|---|---|---|---|",
    ]
    for item in report["variants"]:
        for row in item["throughput"]:
            lines.append(
                f"| {item['name']} | {item['precision']} | {row['scenario']} | {row['images_per_s']} | "
                f"{row['faces_per_s']} |"
            )
    lines += ["", "Backends in use per model:", ""]
    for item in report["variants"]:
        if item["backends"]:
            backends = ", ".join(f"{k}: {b}" for k, b in item["backends"].items())
            lines.append(f"- {item['name']} {item['precision']}: {backends}")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cpu", action="store_true", help="compare and measure the CPU runtimes (script proof)"
    )
    parser.add_argument(
        "--photos", help="folder with Stallone.jpg and lumia.jpg (default ../shared/testdata/anchor)"
    )
    parser.add_argument("--models-dir", default=str(Path.home() / ".cache" / "facerest-gpu-check" / "models"))
    parser.add_argument("--out", help="report path without suffix (default docs/gpu_check_<gpu or cpu>)")
    parser.add_argument("--seconds", type=float, default=None, help="per throughput scenario (GPU 3, CPU 1)")
    parser.add_argument("--clients", type=int, default=None, help="concurrent requests (GPU 8, CPU 1)")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument(
        "--budget-s", type=float, default=540, help="runtimes not started by then are reported as skipped"
    )
    parser.add_argument("--only", help="comma-separated runtime names to run (e.g. torch-cuda,tensorrt)")
    parser.add_argument(
        "--wheels",
        help="first install these wheels (benchmarks/gpu_bundle.sh) and onnxruntime-gpu into this "
        "Python (the one with torch + CUDA; use a throwaway environment or container)",
    )
    parser.add_argument(
        "--with-tensorrt", action="store_true", help="with --wheels: also pip-install TensorRT"
    )
    args = parser.parse_args()
    if args.wheels:
        return install_and_rerun(Path(args.wheels), args.with_tensorrt, gpu=not args.cpu)

    import cv2

    started = time.perf_counter()
    seconds = args.seconds if args.seconds is not None else (1.0 if args.cpu else 3.0)
    clients = args.clients or (1 if args.cpu else 8)
    threads = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()) or 1
    folder = photos_dir(args.photos)
    names = [n for n in PHOTOS if (folder / n).is_file()]
    images = {n: cv2.imread(str(folder / n), cv2.IMREAD_COLOR) for n in names}
    models_dir = Path(args.models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)

    found = versions()
    print(json.dumps(found, indent=1))
    tests = {"status": "skipped (--skip-tests)"} if args.skip_tests else run_tests(args.cpu, timeout_s=240)
    print(f"tests: {tests.get('status')}: {tests.get('summary', tests.get('detail', ''))}", flush=True)

    from facerest.errors import FaceRestError
    from facerest.pipeline import ExtractOptions

    reference_analyzer = load_analyzer(
        models_dir, {"runtime": "onnx", "providers": ["CPUExecutionProvider"]}, threads, 64
    )
    reference = [reference_analyzer.process([images[n]], ExtractOptions())[0] for n in names]
    reference_analyzer.close()

    scenarios = [("Stallone.jpg", 1), ("Stallone.jpg", 16), ("Stallone.jpg", 64), ("lumia.jpg", 1)]
    chosen = variants(args.cpu)
    if args.only:
        chosen = [v for v in chosen if v.name in args.only.split(",")]
    for variant in chosen:
        if time.perf_counter() - started > args.budget_s:  # the whole check stays inside 10 minutes
            variant.status = (
                f"skipped: the {args.budget_s:.0f} s budget was spent (engines now cached: run again)"
            )
            continue
        t0 = time.perf_counter()
        try:
            analyzer = load_analyzer(models_dir, variant.settings, threads, 64)
        except FaceRestError as exc:
            variant.status = f"absent: {exc.detail}"
            print(f"{variant.name} {variant.precision}: {variant.status}", flush=True)
            continue
        except Exception as exc:  # a runtime's own error: reported, the others still run
            variant.status = f"failed: {type(exc).__name__}: {exc}"
            print(f"{variant.name} {variant.precision}: {variant.status}", flush=True)
            continue
        variant.load_s = round(time.perf_counter() - t0, 1)
        variant.backends = dict(analyzer.models.backends)
        try:
            results = [analyzer.process([images[n]], ExtractOptions())[0] for n in names]
            variant.compare = compare(reference, results, names)
            for photo, batch in scenarios:
                if photo not in images:
                    continue
                row = throughput(analyzer, images[photo], batch, clients, seconds)
                variant.throughput.append({"scenario": f"{photo} x{batch} per request", **row})
                print(f"{variant.name} {variant.precision} {photo} x{batch}: {row}", flush=True)
            variant.status = "ok"
        except Exception as exc:  # keep the report of the other runtimes
            variant.status = f"failed: {type(exc).__name__}: {exc}"
        finally:
            analyzer.close()
        print(f"{variant.name} {variant.precision}: {variant.status} {variant.backends}", flush=True)

    label = "CPU proof" if args.cpu else (found.get("gpu") or "GPU")
    report = {
        "label": label,
        "cpu_mode": args.cpu,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "duration_s": round(time.perf_counter() - started, 1),
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        "seconds": seconds,
        "clients": clients,
        "photos": names,
        "versions": found,
        "tests": tests,
        "variants": [v.__dict__ for v in chosen],
    }
    slug = "cpu_proof" if args.cpu else "".join(c if c.isalnum() else "_" for c in label.lower()).strip("_")
    out = Path(args.out) if args.out else ROOT / "docs" / f"gpu_check_{slug}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(f"report: {out.with_suffix('.json')} and {out.with_suffix('.md')} ({report['duration_s']} s)")
    # every runtime present works, and at least one does; on the CPU the GPU tests can only skip
    counts = tests.get("counts", {})
    tests_ok = tests.get("status") in ("ok", "skipped (--skip-tests)") or (
        args.cpu
        and counts.get("passed", 0) > 0
        and not any(counts.get(k) for k in ("failed", "error", "errors"))
    )
    healthy = (
        tests_ok
        and all(v.status == "ok" or v.status.startswith(("absent", "skipped")) for v in chosen)
        and any(v.status == "ok" for v in chosen)
    )
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
