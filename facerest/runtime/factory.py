"""`create_session`: a model file loaded on a named backend."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from facerest.errors import BackendUnavailable
from facerest.runtime.base import InferenceSession, Precision
from facerest.runtime.onnx import OnnxSession, provider_plan

if TYPE_CHECKING:
    from facerest.config import Settings


def create_session(
    model_path: Path,
    settings: Settings,
    *,
    backend: str,
    model_name: str = "",
    precision: Precision = "f32",
) -> InferenceSession:
    """Load `model_path` on `backend`: "onnx" and "openvino" take an ONNX file, "trt" a TensorRT
    engine, "triton" a model the Triton server holds under `model_name`. Which backend runs a model
    (and building its engine) is decided before, in facerest.preparation."""
    if backend == "onnx":
        providers, options = provider_plan(settings)
        return OnnxSession(
            model_path,
            providers=providers,
            threads=settings.threads,
            provider_options=options,
            model_name=model_name or model_path.stem,
        )
    # the other backends are optional extras: a missing one is a clear error, not an ImportError
    if backend == "openvino":
        try:
            from facerest.runtime.openvino import OpenVinoSession
        except ImportError as exc:
            raise BackendUnavailable(
                f"FACEREST_RUNTIME=openvino but OpenVINO is not installed ({exc}); "
                "install it with `pip install facerest[openvino]`"
            ) from exc
        return OpenVinoSession(model_path, threads=settings.threads, precision=precision)
    if backend == "trt":
        try:
            from facerest.runtime.tensorrt import TensorRTSession
        except ImportError as exc:
            raise BackendUnavailable(f"FACEREST_RUNTIME=trt but TensorRT is not usable here ({exc})") from exc
        return TensorRTSession(model_path, model_name=model_name)
    if backend == "triton":
        try:
            from facerest.runtime.triton import TritonSession
        except ImportError as exc:
            raise BackendUnavailable(
                f"FACEREST_RUNTIME=triton but the Triton client is not installed ({exc})"
            ) from exc
        return TritonSession(model_name or model_path.stem, settings)
    raise BackendUnavailable(f"unknown runtime {backend!r}")
