"""ONNX Runtime sessions with an ordered preference of execution providers."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

from facerest.errors import BackendUnavailable, ModelError
from facerest.runtime.base import TensorSpec

log = logging.getLogger(__name__)

_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(uint8)": "uint8"}


def _spec(arg: ort.NodeArg) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) else (d or None) for d in arg.shape)
    return TensorSpec(arg.name, shape, _ORT_TYPES.get(arg.type, arg.type))


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
        provider_options: dict[str, dict[str, str]] | None = None,
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
        available = ort.get_available_providers()
        chosen = [p for p in wanted if p in available]
        if not chosen:
            raise BackendUnavailable(
                f"none of the execution providers {wanted} is available; this onnxruntime has {available}"
            )
        skipped = [p for p in wanted if p not in available]
        if skipped:
            log.warning("execution providers not available here, skipped: %s", ", ".join(skipped))
        opts = [(provider_options or {}).get(p, {}) for p in chosen]
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
        self._output_names = [o.name for o in self.outputs]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self._session.run(self._output_names, feeds)
        return dict(zip(self._output_names, results, strict=True))
