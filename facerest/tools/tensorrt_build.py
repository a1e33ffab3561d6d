"""Native TensorRT engines from ONNX, cached per model md5 + GPU + TensorRT version + build options.

An engine only runs on the GPU model and TensorRT version it was built with, and encodes its
batch range and precision; all of these form the cache key. The key is kept beside the engine
(`<model>.<gpu>.json`) so a stale engine is rebuilt with a log line that says what changed. Builds take
a file lock and write atomically: two GPU process groups starting together build once.
"""

from __future__ import annotations

import fcntl
import json
import logging
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facerest.errors import BackendUnavailable, ModelError
from facerest.models.store import md5_of

if TYPE_CHECKING:
    from facerest.config import Settings
    from facerest.models.catalog import CatalogEntry

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EngineKey:
    """Everything an engine depends on; a different value of any field means a rebuild."""

    model_md5: str
    gpu_name: str
    tensorrt_version: str
    fp16: bool
    max_batch: int
    # (min, opt, max) shapes per dynamic input, e.g. {"input.1": [[1,3,32,32], [4,3,640,640], ...]}
    profiles: dict[str, list[list[int]]]


def engine_path(engines_dir: Path, model_name: str, key: EngineKey) -> Path:
    """One engine per model and GPU model: GPUs of two kinds can share the models volume, and
    any other change (model file, TensorRT, precision, batch) replaces the engine in place."""
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", key.gpu_name).strip("-").lower() or "gpu"
    return engines_dir / f"{model_name}.{gpu}.plan"


def stale_reason(path: Path, key: EngineKey) -> str | None:
    """Why the engine at `path` cannot be used for `key`; None when it can."""
    meta = path.with_suffix(".json")
    if not path.is_file() or not meta.is_file():
        return "no engine built yet"
    try:
        recorded = json.loads(meta.read_text("utf-8"))
    except ValueError:
        return "its metadata is unreadable"
    changed = [f"{k}: {recorded.get(k)!r} -> {v!r}" for k, v in asdict(key).items() if recorded.get(k) != v]
    return "; ".join(changed) or None


def batch_limit(entry: CatalogEntry, settings: Settings) -> int:
    return settings.det_batch_size if entry.task == "detection" else settings.rec_batch_size


def profile_shapes(
    inputs: list[tuple[str, list[int | None]]], max_batch: int, max_size: tuple[int, int]
) -> dict[str, list[list[int]]]:
    """An optimisation profile: batch 1..max_batch, detector sides 32..max_size (canvas never larger).

    `inputs` are (name, NCHW dims with None for dynamic). Fixed dims stay as they are.
    """
    width, height = max_size
    shapes = {}
    for name, dims in inputs:
        low, opt, high = [], [], []
        for axis, dim in enumerate(dims):
            if dim is not None and dim > 0:
                low.append(dim), opt.append(dim), high.append(dim)
            elif axis == 0:
                low.append(1), opt.append(max_batch), high.append(max_batch)
            else:  # a dynamic spatial side (NCHW: axis 2 is height, 3 width)
                side = height if axis == 2 else width
                low.append(32), opt.append(side), high.append(side)
        shapes[name] = [low, opt, high]
    return shapes


def onnx_inputs(onnx_path: Path) -> list[tuple[str, list[int | None]]]:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    initialisers = {i.name for i in model.graph.initializer}
    result = []
    for value in model.graph.input:
        if value.name in initialisers:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]
        result.append((value.name, dims))
    return result


def _tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError as exc:
        raise BackendUnavailable(
            f"TensorRT is not installed ({exc}): use the GPU image (deploy/Dockerfile.gpu) or install "
            "TensorRT's Python bindings"
        ) from exc
    return tensorrt


def gpu_name() -> str:
    """Name of the GPU this process sees as device 0 (CUDA_VISIBLE_DEVICES picks which)."""
    from facerest.runtime.tensorrt import cuda_call, cudart

    props = cuda_call(cudart().cudaGetDeviceProperties(0))
    name = props.name
    return (name.decode() if isinstance(name, bytes) else str(name)).rstrip("\x00").strip()


def make_key(
    onnx_path: Path, settings: Settings, entry: CatalogEntry, *, gpu: str, trt_version: str
) -> EngineKey:
    max_batch = batch_limit(entry, settings) if entry.allow_batching else 1
    return EngineKey(
        model_md5=md5_of(onnx_path),
        gpu_name=gpu,
        tensorrt_version=trt_version,
        fp16=settings.force_fp16,
        max_batch=max_batch,
        profiles=profile_shapes(onnx_inputs(onnx_path), max_batch, tuple(settings.max_size)),  # type: ignore[arg-type]
    )


def build_engine(onnx_path: Path, settings: Settings, entry: CatalogEntry) -> Path:
    """The engine for `onnx_path` on this GPU: the cached one when still valid, else a new build."""
    trt = _tensorrt()
    key = make_key(onnx_path, settings, entry, gpu=gpu_name(), trt_version=trt.__version__)
    engines_dir = settings.trt_engines_dir or settings.models_dir / "trt_engines"
    engines_dir.mkdir(parents=True, exist_ok=True)
    path = engine_path(engines_dir, onnx_path.stem, key)
    with (engines_dir / f"{onnx_path.stem}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another GPU group may be building the same engine
        reason = stale_reason(path, key)
        if reason is None:
            log.info("TensorRT engine for %s is up to date: %s", onnx_path.name, path)
            return path
        log.info("building the TensorRT engine for %s (%s)", onnx_path.name, reason)
        if key.fp16:
            log.warning("TensorRT engine for %s is built in FP16 (FACEREST_FORCE_FP16=true)", onnx_path.name)
        started = time.perf_counter()
        plan = _build(trt, onnx_path, key, settings.trt_workspace_mb)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(plan)
        tmp.replace(path)
        path.with_suffix(".json").write_text(json.dumps(asdict(key), indent=1), "utf-8")
        log.info("built %s in %.1f s (%d MiB)", path.name, time.perf_counter() - started, len(plan) >> 20)
        return path


def _build(trt: Any, onnx_path: Path, key: EngineKey, workspace_mb: int) -> bytes:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if int(trt.__version__.split(".")[0]) < 10:  # explicit batch is the only mode from TensorRT 10
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if key.fp16:
        if not hasattr(trt.BuilderFlag, "FP16"):
            raise BackendUnavailable(f"TensorRT {trt.__version__} has no FP16 builder flag")
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in key.profiles.items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ModelError(f"TensorRT failed to build an engine for {onnx_path} (see the log above)")
    return bytes(plan)
