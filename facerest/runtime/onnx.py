"""ONNX Runtime sessions with an ordered preference of execution providers."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort

from facerest.errors import BackendUnavailable, ModelError
from facerest.runtime.base import TensorSpec

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

_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(uint8)": "uint8"}


def _spec(arg: ort.NodeArg) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) else (d or None) for d in arg.shape)
    return TensorSpec(arg.name, shape, _ORT_TYPES.get(arg.type, arg.type))


def provider_plan(settings: Settings) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """The providers to ask for, in order, and each one's options.

    Defaults follow the other settings (FP16 only with FACEREST_FORCE_FP16, TensorRT's engine cache
    beside the native engines, its workspace); FACEREST_PROVIDER_OPTIONS overrides them key by key.
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
        },
        # each process sees one GPU (CUDA_VISIBLE_DEVICES, set per GPU by `facerest serve`)
        "CUDAExecutionProvider": {"device_id": 0},
    }
    options = {p: {**defaults.get(p, {}), **settings.provider_options.get(p, {})} for p in wanted}
    return wanted, options


def available_providers(wanted: list[str]) -> list[str]:
    """Those of `wanted` this onnxruntime has; none of them: BackendUnavailable (checked by
    `facerest serve` before any worker starts, and by every session)."""
    available = ort.get_available_providers()
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
        chosen = available_providers(wanted)
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
        try:
            self._session = ort.InferenceSession(
                source, sess_options=options, providers=chosen, provider_options=opts
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            where = "the model bytes" if isinstance(model, bytes) else str(model)
            raise ModelError(f"ONNX Runtime could not load {where}: {exc}") from exc
        self.inputs = [_spec(a) for a in self._session.get_inputs()]
        self.outputs = [_spec(a) for a in self._session.get_outputs()]
        self.providers = self._session.get_providers()
        self.backend = f"onnxruntime:{self.providers[0]}"
        label = model_name or where_of(model)
        dropped = [p for p in chosen if p not in self.providers]
        if dropped:  # e.g. CUDA present in the wheel but no driver: onnxruntime falls back quietly
            log.warning("%s: providers that failed to start: %s", label, dropped)
        if options_in_use := [
            f"{p} {o}" for p, o in zip(chosen, opts, strict=True) if o and p in self.providers
        ]:
            log.info("%s: provider options %s", label, "; ".join(options_in_use))
        log.info("%s runs on %s", label, ", ".join(self.providers))
        self._output_names = [o.name for o in self.outputs]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self._session.run(self._output_names, feeds)
        return dict(zip(self._output_names, results, strict=True))


def where_of(model: Path | bytes) -> str:
    return "model bytes" if isinstance(model, bytes) else model.name
