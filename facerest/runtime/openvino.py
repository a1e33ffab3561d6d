"""OpenVINO sessions on the CPU (`FACEREST_RUNTIME=openvino`, `pip install facerest[openvino]`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openvino as ov

from facerest.errors import ModelError
from facerest.runtime.base import TensorSpec

_OV_TYPES = {"f32": "float32", "f16": "float16", "u8": "uint8"}


def _spec(port: ov.Output) -> TensorSpec:
    shape = tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape())
    return TensorSpec(
        port.get_any_name(), shape, _OV_TYPES.get(port.get_element_type().get_type_name(), "float32")
    )


class OpenVinoSession:
    """One ONNX model compiled by OpenVINO for the CPU, fp32, `threads` inference threads.

    Same outputs as ONNX Runtime to about 1e-5; 1.0-1.2x its speed on the 2-core Zen 3 machines
    (docs/performance.md). Calls come from the single inference thread, so one request suffices.
    """

    def __init__(self, model_path: Path, *, threads: int = 1) -> None:
        core = ov.Core()
        config = {
            "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32",  # no bf16/fp16 shortcuts: embeddings must not move
        }
        try:
            model = core.read_model(str(model_path))
            self._compiled = core.compile_model(model, "CPU", config)
        except RuntimeError as exc:
            raise ModelError(f"OpenVINO could not load {model_path}: {exc}") from exc
        self._request = self._compiled.create_infer_request()
        # names as the ONNX graph has them (compilation may add aliases that `get_any_name` picks)
        self.inputs = [_spec(p) for p in model.inputs]
        self.outputs = [_spec(p) for p in model.outputs]
        self.backend = "openvino:CPU"

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self._request.infer(feeds, share_inputs=True, share_outputs=False)
        return {
            spec.name: np.asarray(results[port])
            for spec, port in zip(self.outputs, self._compiled.outputs, strict=True)
        }
