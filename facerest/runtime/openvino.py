"""OpenVINO sessions on the CPU (`FACEREST_RUNTIME=openvino`, `pip install facerest[openvino]`)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import openvino as ov

from facerest.errors import ModelError
from facerest.runtime.base import TensorSpec

_OV_TYPES = {"f32": "float32", "f16": "float16", "u8": "uint8"}

log = logging.getLogger(__name__)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512_BF16 or AMX), as OpenVINO sees it."""
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def _spec(port: ov.Output) -> TensorSpec:
    shape = tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape())
    return TensorSpec(
        port.get_any_name(), shape, _OV_TYPES.get(port.get_element_type().get_type_name(), "float32")
    )


class OpenVinoSession:
    """One ONNX model compiled by OpenVINO for the CPU, `threads` inference threads.

    fp32 by default: the same outputs as ONNX Runtime to about 1e-5. `precision="bf16"` on a CPU
    with native bf16 (recognizers only: a bf16 detector moves landmarks enough to cost 0.06 of
    embedding cosine). Calls come from the single inference thread, so one request suffices.
    """

    def __init__(self, model_path: Path, *, threads: int = 1, precision: str = "f32") -> None:
        core = ov.Core()
        if precision == "bf16" and not cpu_has_bf16():
            log.warning("%s: this CPU has no native bf16; running it in f32", model_path.name)
            precision = "f32"
        config = {
            "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": precision,  # explicit: OpenVINO may pick bf16 by itself
        }
        self.precision = precision
        try:
            model = core.read_model(str(model_path))
            self._compiled = core.compile_model(model, "CPU", config)
        except RuntimeError as exc:
            raise ModelError(f"OpenVINO could not load {model_path}: {exc}") from exc
        self._request = self._compiled.create_infer_request()
        # names as the ONNX graph has them (compilation may add aliases that `get_any_name` picks)
        self.inputs = [_spec(p) for p in model.inputs]
        self.outputs = [_spec(p) for p in model.outputs]
        self.backend = "openvino:CPU" + (":bf16" if precision == "bf16" else "")

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self._request.infer(feeds, share_inputs=True, share_outputs=False)
        return {
            spec.name: np.asarray(results[port])
            for spec, port in zip(self.outputs, self._compiled.outputs, strict=True)
        }
