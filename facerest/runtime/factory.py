"""`create_session`: a model file loaded on a named backend."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from facerest.errors import BackendUnavailable
from facerest.runtime.base import InferenceSession, Precision
from facerest.runtime.onnx import OnnxSession, available_providers, provider_plan
from facerest.runtime.shapes import ModelRole, ShapeLimits, profile_shapes

if TYPE_CHECKING:
    from facerest.config import Settings


def create_session(
    model_path: Path,
    settings: Settings,
    *,
    backend: str,
    model_name: str = "",
    precision: Precision = "f32",
    role: ModelRole | None = None,
) -> InferenceSession:
    """Load `model_path` on `backend`: "onnx", "openvino" and "torch" take an ONNX file, "trt" a
    TensorRT engine, "triton" a model the Triton server holds under `model_name`. Which backend runs
    a model (and building its engine) is decided before, in facerest.preparation. `role` (what the
    graph is in the pipeline) gives GPU engines their shape profiles."""
    if backend == "onnx":
        profiles = None
        if role is not None and (
            "TensorrtExecutionProvider" in settings.providers or settings.providers == ["auto"]
        ):
            profiles = graph_profiles(model_path, role, settings)
        providers, options = provider_plan(settings, profiles)
        return OnnxSession(
            model_path,
            providers=providers,
            threads=settings.threads,
            provider_options=options,
            model_name=model_name or model_path.stem,
            require_gpu=settings.gpu_required,
        )
    if backend == "torch":
        try:
            from facerest.runtime.pytorch import TorchSession
        except ImportError as exc:
            raise BackendUnavailable(
                f"FACEREST_RUNTIME=torch but PyTorch is not installed ({exc}); install facerest[torch]"
            ) from exc
        return TorchSession.from_settings(model_path, settings, model_name or model_path.stem, role)
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


def graph_profiles(model_path: Path, role: ModelRole, settings: Settings) -> dict[str, list[list[int]]]:
    """The shape profile of the ONNX graph at `model_path` for the current settings."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    initialisers = {i.name for i in model.graph.initializer}
    inputs = [
        (v.name, [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim])
        for v in model.graph.input
        if v.name not in initialisers
    ]
    return profile_shapes(role, inputs, ShapeLimits.of(settings))


def check_runtime(settings: Settings) -> None:
    """What can be known wrong before loading a model: ONNX Runtime providers asked for by name
    and absent (e.g. FACEREST_PROVIDERS=CUDAExecutionProvider on a CPU build) stop `facerest
    serve` with one line, before any worker or GPU group starts."""
    if settings.runtime == "onnx" or (
        settings.runtime == "auto" and settings.providers != ["CPUExecutionProvider"]
    ):
        available_providers(provider_plan(settings)[0])
