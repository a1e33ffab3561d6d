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
from facerest.runtime.shapes import ModelRole, ShapeLimits, batch_range, profile_shapes

if TYPE_CHECKING:
    from facerest.config import Settings
    from facerest.models.catalog import CatalogEntry

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EngineKey:
    """Everything an engine depends on; a different value of any field means a rebuild."""

    model_md5: str
    gpu_name: str
    # an engine's kernels are compiled for one SM version: two GPUs with one marketing name but
    # different compute capabilities (or a renamed one) must not share it
    compute_capability: str
    tensorrt_version: str
    fp16: bool
    max_batch: int
    # (min, opt, max) shapes per input, e.g. {"input.1": [[1,3,32,32], [4,3,640,640], ...]}
    profiles: dict[str, list[list[int]]]


def engine_path(engines_dir: Path, model_name: str, key: EngineKey) -> Path:
    """One engine per model and GPU model: GPUs of two kinds can share the models volume, and
    any other change (model file, TensorRT, precision, batch) replaces the engine in place."""
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", key.gpu_name).strip("-").lower() or "gpu"
    # the TensorRT version in the name: two images with different TensorRT sharing one models
    # volume keep their own engines instead of rebuilding each other's on every start
    trt = re.sub(r"[^0-9.]+", "", key.tensorrt_version) or "trt"
    return engines_dir / f"{model_name}.{gpu}.sm{key.compute_capability}.trt{trt}.plan"


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


def model_role(onnx_path: Path, entry: CatalogEntry) -> ModelRole:
    """The role of one of `entry`'s files (MTCNN's three graphs differ: P-Net, R-Net, O-Net)."""
    names = [f.name for f in entry.files]
    stage = names.index(onnx_path.name) if onnx_path.name in names else 0
    return ModelRole(entry.task, entry.family, stage, entry.allow_batching)


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


def compute_capability() -> str:
    """The compute capability of device 0, e.g. 8.9."""
    from facerest.runtime.tensorrt import cuda_call, cudart

    props = cuda_call(cudart().cudaGetDeviceProperties(0))
    return f"{props.major}.{props.minor}"


def make_key(
    onnx_path: Path,
    settings: Settings,
    entry: CatalogEntry,
    *,
    gpu: str,
    trt_version: str,
    capability: str = "",
) -> EngineKey:
    role = model_role(onnx_path, entry)
    limits = ShapeLimits.of(settings)
    return EngineKey(
        model_md5=md5_of(onnx_path),
        gpu_name=gpu,
        compute_capability=capability,
        tensorrt_version=trt_version,
        fp16=settings.force_fp16,
        max_batch=batch_range(role, limits)[1],
        profiles=profile_shapes(role, onnx_inputs(onnx_path), limits),
    )


def check_fp16(trt: Any, fp16: bool) -> None:
    """TensorRT 11 builds strongly typed networks only: no FP16 builder flag, precision comes from
    the graph's own types. Refuse FACEREST_FORCE_FP16 there before any build, in one line,
    rather than fail half-way through start-up (or build FP32 while the settings say FP16)."""
    if fp16 and not hasattr(trt.BuilderFlag, "FP16"):
        raise BackendUnavailable(
            f"FACEREST_FORCE_FP16 needs TensorRT's FP16 builder flag, which TensorRT {trt.__version__} "
            "no longer has (strongly typed networks only); use TensorRT 10, FACEREST_RUNTIME=torch "
            "(FP16 on CUDA), or FACEREST_FORCE_FP16=false"
        )


def engine_loads(trt: Any, path: Path) -> bool:
    """The engine deserializes with this TensorRT on this GPU (a driver or TensorRT update, or a
    truncated file, makes it fail while its metadata still matches)."""
    runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
    try:
        return runtime.deserialize_cuda_engine(path.read_bytes()) is not None
    except Exception:  # TensorRT raises its own untyped errors
        return False


def build_engine(onnx_path: Path, settings: Settings, entry: CatalogEntry) -> Path:
    """The engine for `onnx_path` on this GPU: the cached one when still valid, else a new build."""
    trt = _tensorrt()
    check_fp16(trt, settings.force_fp16)
    gpu, capability = gpu_name(), compute_capability()
    key = make_key(onnx_path, settings, entry, gpu=gpu, trt_version=trt.__version__, capability=capability)
    engines_dir = settings.trt_engines_dir or settings.models_dir / "trt_engines"
    engines_dir.mkdir(parents=True, exist_ok=True)
    path = engine_path(engines_dir, onnx_path.stem, key)
    with (engines_dir / f"{onnx_path.stem}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another GPU group may be building the same engine
        reason = stale_reason(path, key)
        if reason is None:
            if engine_loads(trt, path):
                log.info("TensorRT engine for %s is up to date: %s", onnx_path.name, path)
                return path
            reason = "the cached engine does not deserialize here"
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
    check_fp16(trt, key.fp16)
    if key.fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in key.profiles.items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ModelError(f"TensorRT failed to build an engine for {onnx_path} (see the log above)")
    return bytes(plan)
