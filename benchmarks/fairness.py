"""Fairness: latency of a small request alone and beside big ones, against a real server.

    .venv/bin/python benchmarks/fairness.py                         # starts a server on 127.0.0.1
    .venv/bin/python benchmarks/fairness.py --url http://127.0.0.1:18081 --duration 30

Stallone.jpg (one face, with its embedding) is sent at a steady rate (`--rate` per second, each
on its own connection, whether or not the previous one answered: a starved request shows as many
slow samples, not as one), first alone, then while `--big` clients each send a big request again
and again: 4 tiny images at threshold 0, that is 1024 faces to embed (MAX_FACES_PER_REQUEST).
Prints p50/p95/max of the small request in both phases and the ratio of the p95s. The scheduler
serves the request served least so far first, so the small one waits for the running batch, not
for the big requests' whole jobs. Measures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import httpx
import numpy as np

from facerest.serving.local import start_local_server, stop_local_server

ROOT = Path(__file__).resolve().parents[1]
STALLONE = ROOT.parent / "shared" / "testdata" / "anchor" / "Stallone.jpg"


def small_body(path: Path) -> dict:
    return {"images": {"data": [base64.b64encode(path.read_bytes()).decode()]}}


def big_body() -> dict:
    ok, png = cv2.imencode(".png", np.full((1, 1, 3), 128, np.uint8))
    assert ok
    return {"images": {"data": [base64.b64encode(png.tobytes()).decode()] * 4}, "threshold": 0.0}


def p(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


async def small_open_loop(client: httpx.AsyncClient, body: dict, stop_at: float, rate: float) -> list[float]:
    async def one() -> float | None:
        started = time.perf_counter()
        response = await client.post("/extract", json=body)
        return (time.perf_counter() - started) * 1000 if response.status_code == 200 else None

    tasks = []
    while time.monotonic() < stop_at:
        tasks.append(asyncio.create_task(one()))
        await asyncio.sleep(1.0 / rate)
    return [ms for ms in await asyncio.gather(*tasks) if ms is not None]


async def big_loop(client: httpx.AsyncClient, body: dict, stop_at: float, counts: dict[int, int]) -> None:
    while time.monotonic() < stop_at:
        response = await client.post("/extract", json=body)
        counts[response.status_code] = counts.get(response.status_code, 0) + 1


async def measure(url: str, duration_s: float, big_clients: int, small_image: Path, rate: float) -> None:
    small, big = small_body(small_image), big_body()
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        await client.post("/extract", json=small)  # warm
        alone = await small_open_loop(client, small, time.monotonic() + duration_s, rate)
        counts: dict[int, int] = {}
        stop_at = time.monotonic() + duration_s
        bigs = [big_loop(client, big, stop_at, counts) for _ in range(big_clients)]
        results = await asyncio.gather(small_open_loop(client, small, stop_at, rate), *bigs)
        beside = results[0]
    print(f"\nsmall request ({small_image.name}), {rate:g}/s, latency ms   n     p50     p95     max")
    for label, values in (
        ("alone", alone),
        (f"beside {big_clients} client(s) of 1024-face requests", beside),
    ):
        print(f"{label:<42} {len(values):4d} {p(values, 50):7.0f} {p(values, 95):7.0f} {max(values):7.0f}")
    print(f"p95 ratio beside / alone: {p(beside, 95) / p(alone, 95):.2f}; big requests answered: {counts}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="a running server; default: start one on 127.0.0.1")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per phase")
    parser.add_argument("--big", type=int, default=1, help="clients sending big requests")
    parser.add_argument("--rate", type=float, default=2.0, help="small requests per second")
    parser.add_argument("--image", type=Path, default=STALLONE)
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    args = parser.parse_args()
    if not args.image.exists():
        print(f"{args.image} is absent (../shared/testdata beside the checkout); pass --image")
        return 2
    process = None
    url = args.url
    if url is None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FACEREST_")}
        env["FACEREST_MODELS_DIR"] = str(args.models_dir)
        log = Path(tempfile.gettempdir()) / "facerest_fairness_server.log"
        url, process = start_local_server(env, log)
    try:
        asyncio.run(
            measure(url, min(args.duration, 300), max(1, min(args.big, 16)), args.image, min(args.rate, 20.0))
        )
    finally:
        if process is not None:
            stop_local_server(process, timeout_s=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
