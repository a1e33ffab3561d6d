"""ONNX Runtime sessions with an ordered preference of execution providers."""

from __future__ import annotations

import ctypes
import fcntl
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort

from facerest.errors import BackendUnavailable, ModelError
from facerest.runtime.base import TensorSpec
from facerest.runtime.shapes import ort_tensorrt_profile_options

if TYPE_CHECKING:
    from facerest.config import Settings

log = logging.getLogger(__name__)

#: the order `FACEREST_PROVIDERS=auto` tries: fastest first, CPU always last
PREFERENCE = [
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "OpenVINOExecutionProvider",
    "CPUExecutionProvider",
]

#: providers that run on an NVIDIA GPU: FACEREST_REQUIRE_GPU means one of these must be in use
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")

_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(uint8)": "uint8"}


def _spec(arg: ort.NodeArg) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) else (d or None) for d in arg.shape)
    return TensorSpec(arg.name, shape, _ORT_TYPES.get(arg.type, arg.type))


def provider_plan(
    settings: Settings, profiles: dict[str, list[list[int]]] | None = None
) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """The providers to ask for, in order, and each one's options.

    Defaults follow the other settings (FP16 only with FACEREST_FORCE_FP16, TensorRT's engine cache
    beside the native engines, its workspace, the model's shape profile so engines are built once
    for every shape the pipeline sends); FACEREST_PROVIDER_OPTIONS overrides them key by key.
    """
    wanted = list(settings.providers) or ["CPUExecutionProvider"]
    if wanted == ["auto"]:
        wanted = list(PREFERENCE)
    engines = settings.trt_engines_dir or settings.models_dir / "trt_engines"
    defaults: dict[str, dict[str, Any]] = {
        "TensorrtExecutionProvider": {
            "trt_fp16_enable": settings.force_fp16,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(engines / "ort"),
            "trt_max_workspace_size": settings.trt_workspace_mb << 20,
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(engines / "ort"),
            **ort_tensorrt_profile_options(profiles or {}),
        },
        "CUDAExecutionProvider": {
            # each process sees one GPU (CUDA_VISIBLE_DEVICES, set per GPU by `facerest serve`)
            "device_id": 0,
            # EXHAUSTIVE benchmarks every cuDNN algorithm again for each new input shape, and
            # the detector's shape follows each image: seconds of stall per new shape
            "cudnn_conv_algo_search": "HEURISTIC",
            # the arena grows by what is asked, not by doubling: several workers share one GPU
            "arena_extend_strategy": "kSameAsRequested",
            **({"gpu_mem_limit": settings.gpu_mem_limit_mb << 20} if settings.gpu_mem_limit_mb else {}),
        },
    }
    options = {p: {**defaults.get(p, {}), **settings.provider_options.get(p, {})} for p in wanted}
    return wanted, options


def available_providers(wanted: list[str], available: list[str] | None = None) -> list[str]:
    """Those of `wanted` this onnxruntime has (`available`: its providers, when already read);
    none of them: BackendUnavailable (checked by `facerest serve` before any worker starts, and
    by every session)."""
    available = ort.get_available_providers() if available is None else available
    chosen = [p for p in wanted if p in available]
    if not chosen:
        raise BackendUnavailable(
            f"none of the execution providers {wanted} is available; this onnxruntime has {available}"
        )
    return chosen


class OnnxSession:
    """One ONNX model on ONNX Runtime.

    Sequential execution with `threads` intra-op threads: on a small CPU one session using every
    core beats parallel mode or several sessions (measured in docs/performance.md).
    """

    def __init__(
        self,
        model: Path | bytes,
        *,
        providers: list[str] | None = None,
        threads: int = 1,
        provider_options: dict[str, dict[str, Any]] | None = None,
        model_name: str = "",
        require_gpu: bool = False,
        io_binding: bool | None = None,
    ) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Idle pool threads would spin for a while after each run and steal the cores from the
        # next model's session (detector then recognizer): 2x slower per image on 2 cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Models with a fixed output batch of 1 warn on every batched call; the outputs are right.
        options.log_severity_level = 3
        wanted = providers or ["CPUExecutionProvider"]
        automatic = wanted == ["auto"]
        if automatic:
            wanted = list(PREFERENCE)
        available = ort.get_available_providers()
        label = model_name or where_of(model)
        if require_gpu:  # before loading anything: the wheel has no such provider
            check_gpu_providers(label, wanted, [p for p in wanted if p in available], available)
        chosen = available_providers(wanted, available)
        skipped = [p for p in wanted if p not in available]
        if skipped:
            # asked for by name: the operator expects it, so say loudly that it is not there
            (log.info if automatic else log.warning)(
                "execution providers not available here, skipped: %s", ", ".join(skipped)
            )
        # onnxruntime takes option values as strings
        opts = [
            {
                k: str(v).lower() if isinstance(v, bool) else str(v)
                for k, v in (provider_options or {}).get(p, {}).items()
            }
            for p in chosen
        ]
        source = model if isinstance(model, bytes) else str(model)
        trt_options = (provider_options or {}).get("TensorrtExecutionProvider", {})
        engine_dir = (
            trt_options.get("trt_engine_cache_path") if "TensorrtExecutionProvider" in chosen else None
        )
        try:
            with _engine_cache_lock(engine_dir, label):
                self._session = _start_session(
                    source, options, chosen, opts, require_gpu=require_gpu, label=label
                )
        except BackendUnavailable:
            raise
        except Exception as exc:  # onnxruntime raises its own untyped errors
            where = "the model bytes" if isinstance(model, bytes) else str(model)
            raise ModelError(f"ONNX Runtime could not load {where}: {exc}") from exc
        # ONNX Runtime's Python wrapper would otherwise switch a failing run() to CUDA or CPU,
        # print a line to stdout and carry on, while /info still named the GPU provider
        self._session.disable_fallback()
        self.inputs = [_spec(a) for a in self._session.get_inputs()]
        self.outputs = [_spec(a) for a in self._session.get_outputs()]
        self.providers = self._session.get_providers()
        self.backend = f"onnxruntime:{self.providers[0]}"
        dropped = [p for p in chosen if p not in self.providers]
        if require_gpu:
            check_gpu_providers(label, wanted, self.providers, available)
        if dropped:  # e.g. CUDA present in the wheel but no driver: the session starts without it
            log.warning("%s: providers that failed to start: %s", label, dropped)
        if options_in_use := [
            f"{p} {o}" for p, o in zip(chosen, opts, strict=True) if o and p in self.providers
        ]:
            log.info("%s: provider options %s", label, "; ".join(options_in_use))
        log.info("%s runs on %s", label, ", ".join(self.providers))
        self._output_names = [o.name for o in self.outputs]
        # on a GPU provider, inputs go through I/O binding from page-locked host buffers: the
        # host-to-device copy is then a DMA at full PCIe speed, not a staged pageable copy
        on_gpu = self.providers[0] in GPU_PROVIDERS
        self._binding = on_gpu if io_binding is None else io_binding
        self._staging = PinnedStaging() if on_gpu and self._binding else None
        self._bind_lock = threading.Lock()

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._binding:
            return self._run_bound(feeds)
        results = self._session.run(self._output_names, feeds)
        return dict(zip(self._output_names, results, strict=True))

    def _run_bound(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._bind_lock:  # the staging buffers are reused from call to call
            binding = self._session.io_binding()
            for name, array in feeds.items():
                array = np.ascontiguousarray(array)
                staged = self._staging.stage(name, array) if self._staging else array
                binding.bind_input(name, "cpu", 0, staged.dtype.type, list(staged.shape), staged.ctypes.data)
            for name in self._output_names:
                binding.bind_output(name, "cpu")
            self._session.run_with_iobinding(binding)
            results = binding.copy_outputs_to_cpu()
        return dict(zip(self._output_names, results, strict=True))


class PinnedStaging:
    """Page-locked host buffers, one per input name, grown as needed (cuda-python's
    cudaMallocHost); without cuda-python the arrays are bound as they are (pageable)."""

    def __init__(self) -> None:
        self._buffers: dict[str, tuple[Any, np.ndarray]] = {}
        try:
            from facerest.runtime.tensorrt import cuda_call, cudart

            self._runtime, self._call = cudart(), cuda_call
        except BackendUnavailable as exc:
            log.info("no pinned staging for ONNX Runtime inputs (%s)", exc.detail)
            self._runtime = None

    def stage(self, name: str, array: np.ndarray) -> np.ndarray:
        if self._runtime is None:
            return array
        pointer, raw = self._buffers.get(name, (None, np.empty(0, np.uint8)))
        if raw.nbytes < array.nbytes:
            if pointer is not None:
                self._runtime.cudaFreeHost(pointer)
            pointer = self._call(self._runtime.cudaMallocHost(array.nbytes))
            raw = np.frombuffer((ctypes.c_byte * array.nbytes).from_address(int(pointer)), np.uint8)
            self._buffers[name] = (pointer, raw)
        view = raw[: array.nbytes].view(array.dtype).reshape(array.shape)
        np.copyto(view, array)
        return view


def check_gpu_providers(label: str, wanted: list[str], running: list[str], available: list[str]) -> None:
    """FACEREST_REQUIRE_GPU: BackendUnavailable unless the GPU providers asked for are the ones
    running (every one named; with `auto`, at least one)."""
    asked = [p for p in wanted if p in GPU_PROVIDERS]
    if not asked:
        return
    automatic = wanted == list(PREFERENCE)
    missing = [p for p in asked if p not in running]
    if (automatic and len(missing) < len(asked)) or not missing:
        return
    raise BackendUnavailable(
        f"FACEREST_REQUIRE_GPU: {label} asked for {', '.join(missing)} but would run on "
        f"{', '.join(p for p in running if p not in missing) or 'nothing'} (this onnxruntime offers "
        f"{', '.join(available)}); install onnxruntime-gpu and check the driver, or set "
        "FACEREST_REQUIRE_GPU=false to run on the CPU"
    )


def _start_session(
    source: str | bytes,
    options: ort.SessionOptions,
    providers: list[str],
    provider_options: list[dict[str, str]],
    *,
    require_gpu: bool,
    label: str,
) -> ort.InferenceSession:
    """The session on `providers`, with ONNX Runtime's own fallback off: a GPU provider that fails
    to start is an error with FACEREST_REQUIRE_GPU, else a logged, visible switch to the CPU."""
    try:
        return ort.InferenceSession(
            source,
            sess_options=options,
            providers=providers,
            provider_options=provider_options,
            enable_fallback=0,
        )
    except Exception as exc:  # onnxruntime raises its own untyped errors
        gpu = [p for p in providers if p in GPU_PROVIDERS]
        if not gpu:
            raise
        if require_gpu:
            raise BackendUnavailable(
                f"FACEREST_REQUIRE_GPU: {label}: {', '.join(gpu)} failed to start ({exc})"
            ) from exc
        log.warning("%s: %s failed to start (%s); running on the CPU", label, ", ".join(gpu), exc)
        return ort.InferenceSession(
            source, sess_options=options, providers=["CPUExecutionProvider"], enable_fallback=0
        )


@contextmanager
def _engine_cache_lock(folder: str | None, label: str) -> Iterator[None]:
    """One process at a time builds TensorRT engines into `folder` (created): the others wait and
    then load what it wrote instead of building the same engine at once."""
    if folder is None:
        yield
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    with (Path(folder) / f"{label}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def where_of(model: Path | bytes) -> str:
    return "model bytes" if isinstance(model, bytes) else model.name
