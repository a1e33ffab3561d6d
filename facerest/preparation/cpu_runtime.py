"""`FACEREST_RUNTIME=auto`: per model, the CPU runtime that runs it faster on this machine.

Which one wins depends on the CPU: on 2-core Zen 3 (AVX2) machines ONNX Runtime ran the pipeline
1.2x faster than OpenVINO; on 2-core Zen 5 (AVX-512) machines OpenVINO ran the recognizer 1.3x
faster and the detector 1.1x; on a 2-core Intel Xeon (AVX-512) OpenVINO the recognizer 1.4x and
the detector at par (docs/performance.md). Both give the same outputs to about 1e-5, so
the choice is about speed only. It is measured once per model file, machine, thread count and
runtime versions, and remembered in the models folder, so later starts and workers just load.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from facerest.models.store import installing
from facerest.runtime.base import InferenceSession

if TYPE_CHECKING:
    from facerest.config import Settings

log = logging.getLogger(__name__)

CHOICES_FILE = ".runtime-choices.json"
#: OpenVINO is chosen only when clearly faster: a close call on a noisy machine stays with the default
MIN_GAIN = 1.1
#: time spent measuring each runtime on one model, after a few warm-up calls
MEASURE_SECONDS = 0.4
WARMUP_CALLS = 5


def cpu_identity() -> str:
    """The CPU model and its instruction-set flags: what decides which runtime's kernels win."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    fields = dict(
        line.split(":", 1) for line in info.splitlines() if ":" in line and not line.startswith("processor")
    )
    model = fields.get("model name\t", "").strip()
    flags = hashlib.sha1(fields.get("flags\t\t", "").strip().encode()).hexdigest()[:12]
    return f"{model} [{flags}]"


def choice_key(model_path: Path, threads: int) -> str:
    import onnxruntime as ort
    import openvino as ov

    stat = model_path.stat()
    return "|".join(
        [
            f"{model_path.name}:{stat.st_size}:{int(stat.st_mtime)}",
            cpu_identity(),
            f"threads={threads}",
            f"onnxruntime={ort.__version__}",
            f"openvino={ov.get_version()}",
        ]
    )


def sample_feeds(session: InferenceSession, batch: int, canvas: tuple[int, int]) -> dict[str, np.ndarray]:
    """Inputs shaped as the pipeline feeds them: dynamic batch `batch`, dynamic sides `canvas`."""
    rng = np.random.default_rng(0)
    feeds = {}
    for spec in session.inputs:
        shape = []
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, int):
                shape.append(dim)
            elif axis == 0:
                shape.append(batch)
            else:  # NCHW spatial sides (a dynamic channel count does not occur in these models)
                shape.append(canvas[1] if axis == len(spec.shape) - 2 else canvas[0])
        feeds[spec.name] = rng.random(shape, dtype=np.float32).astype(spec.dtype)
    return feeds


def seconds_per_call(sessions: dict[str, InferenceSession], feeds: dict[str, np.ndarray]) -> dict[str, float]:
    """Median seconds per call of each session, measured in alternation (a session measured
    first would pay for the clock ramping up and the caches warming)."""
    for session in sessions.values():
        for _ in range(WARMUP_CALLS):
            session.run(feeds)
    times: dict[str, list[float]] = {name: [] for name in sessions}
    deadline = time.perf_counter() + MEASURE_SECONDS * len(sessions)
    while min(len(t) for t in times.values()) < 5 or (
        time.perf_counter() < deadline and min(len(t) for t in times.values()) < 100
    ):
        for name, session in sessions.items():
            t0 = time.perf_counter()
            session.run(feeds)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def choose_cpu_runtime(
    model_path: Path,
    settings: Settings,
    model_name: str,
    make: dict[str, Callable[[], InferenceSession]],
) -> InferenceSession:
    """The session of the runtime in `make` ("onnx", "openvino") remembered or measured as faster."""
    key = choice_key(model_path, settings.threads)
    store = settings.models_dir / CHOICES_FILE
    with installing(store):  # one process measures while the others wait, then read its answer
        choices = _read(store)
        remembered = choices.get(key)
        if remembered in make:
            return make[remembered]()
        batch = settings.rec_batch_size if model_name == settings.rec_name else 1
        canvas = (settings.max_size[0], settings.max_size[1])
        sessions = {name: build() for name, build in make.items()}
        feeds = sample_feeds(sessions["onnx"], batch, canvas)
        timing = seconds_per_call(sessions, feeds)
        chosen = "openvino" if timing["onnx"] >= MIN_GAIN * timing["openvino"] else "onnx"
        log.info(
            "runtime auto: %s on %s (%s)",
            model_name or model_path.stem,
            chosen,
            ", ".join(f"{name} {t * 1000:.2f} ms" for name, t in timing.items()),
        )
        choices[key] = chosen
        _write(store, choices)
        return sessions[chosen]


def _read(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _write(path: Path, choices: dict[str, str]) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(choices, indent=1, sort_keys=True))
    os.replace(tmp, path)
