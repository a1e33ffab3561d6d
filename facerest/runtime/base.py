"""The one interface every backend implements, and the factory that picks a backend."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from facerest.errors import BackendUnavailable
from facerest.runtime.shapes import ModelRole, ShapeLimits, profile_shapes

if TYPE_CHECKING:
    from facerest.config import Settings


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    shape: tuple[int | str | None, ...]  # str or None: dynamic dimension
    dtype: str = "float32"


class InferenceSession(Protocol):
    """A loaded model ready to run; knows tensors, nothing about faces."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    backend: str  # e.g. "onnxruntime:CPUExecutionProvider"

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def create_session(
    model_path: Path, settings: Settings, *, model_name: str = "", role: ModelRole | None = None
) -> InferenceSession:
    """Load `model_path` on the backend the settings ask for (`role`: what the graph is in the
    pipeline, for the shape profiles of GPU engines)."""
    if settings.runtime == "auto":
        return _auto_session(model_path, settings, model_name, role)
    if settings.runtime == "onnx":
        return _onnx_session(model_path, settings, model_name, role)
    if settings.runtime == "torch":
        try:
            from facerest.runtime.pytorch import TorchSession
        except ImportError as exc:
            raise BackendUnavailable(
                f"FACEREST_RUNTIME=torch but PyTorch is not installed ({exc}); install facerest[torch]"
            ) from exc
        return TorchSession.from_settings(model_path, settings, model_name or model_path.stem, role)
    if settings.runtime == "openvino":
        try:
            from facerest.runtime.openvino import OpenVinoSession
        except ImportError as exc:
            raise BackendUnavailable(
                f"FACEREST_RUNTIME=openvino but OpenVINO is not installed ({exc}); "
                "install it with `pip install facerest[openvino]`"
            ) from exc
        bf16 = settings.rec_precision == "bf16" and model_name == settings.rec_name
        return OpenVinoSession(model_path, threads=settings.threads, precision="bf16" if bf16 else "f32")
    if settings.runtime == "trt":
        try:
            from facerest.runtime.tensorrt import TensorRTSession
        except ImportError as exc:
            raise BackendUnavailable(f"FACEREST_RUNTIME=trt but TensorRT is not usable here ({exc})") from exc
        return TensorRTSession.from_onnx(model_path, settings, model_name)
    if settings.runtime == "triton":
        try:
            from facerest.runtime.triton import TritonSession
        except ImportError as exc:
            raise BackendUnavailable(
                f"FACEREST_RUNTIME=triton but the Triton client is not installed ({exc})"
            ) from exc
        return TritonSession(model_name or model_path.stem, settings)
    raise BackendUnavailable(f"unknown runtime {settings.runtime!r}")


def _onnx_session(
    model_path: Path, settings: Settings, model_name: str, role: ModelRole | None = None
) -> InferenceSession:
    from facerest.runtime.onnx import OnnxSession, provider_plan

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


def _auto_session(
    model_path: Path, settings: Settings, model_name: str, role: ModelRole | None = None
) -> InferenceSession:
    """ONNX Runtime, unless OpenVINO is installed, the models run on the CPU, and it is faster."""
    if settings.providers != ["CPUExecutionProvider"]:  # GPUs asked for: their providers decide
        return _onnx_session(model_path, settings, model_name, role)
    try:
        from facerest.runtime.openvino import OpenVinoSession, cpu_has_bf16
    except ImportError:
        return _onnx_session(model_path, settings, model_name)
    if settings.rec_precision == "bf16" and model_name == settings.rec_name and cpu_has_bf16():
        return OpenVinoSession(model_path, threads=settings.threads, precision="bf16")
    from facerest.runtime.select import choose_cpu_runtime

    return choose_cpu_runtime(
        model_path,
        settings,
        model_name,
        {
            "onnx": lambda: _onnx_session(model_path, settings, model_name),
            "openvino": lambda: OpenVinoSession(model_path, threads=settings.threads),
        },
    )


def check_runtime(settings: Settings) -> None:
    """What can be known wrong before loading a model: ONNX Runtime providers asked for by name
    and absent (e.g. FACEREST_PROVIDERS=CUDAExecutionProvider on a CPU build) stop `facerest
    serve` with one line, before any worker or GPU group starts."""
    if settings.runtime == "onnx" or (
        settings.runtime == "auto" and settings.providers != ["CPUExecutionProvider"]
    ):
        from facerest.runtime.onnx import available_providers, provider_plan

        available_providers(provider_plan(settings)[0])


def prepare_runtime(settings: Settings) -> None:
    """Work the runtime needs once per machine (or GPU) before any worker starts.

    TensorRT: build (or find cached) engines for every configured model, so workers only load
    them and never race to build; auto: measure which CPU runtime runs each model faster. Called
    by `facerest serve` after the model files are prepared, in each GPU's process group (it sees
    only its GPU). With FACEREST_REQUIRE_GPU it first proves the GPU runtime asked for is the one
    that runs (BackendUnavailable, one line, otherwise).
    """
    check_runtime(settings)
    if settings.gpu_required:
        from facerest.runtime.gpu import check_gpu_runtime

        check_gpu_runtime(settings)
    if settings.runtime == "auto":
        if settings.workers == 1:  # the one worker measures as it loads
            return
        # measured here, before the workers start, so they only read the choice (and do not
        # measure while the others load, on the same cores)
        from facerest.models import prepare_models

        for name, paths in prepare_models(settings).items():
            for i, path in enumerate(paths):
                create_session(path, settings, model_name=name if i == 0 else f"{name}_{i}")
        return
    if settings.runtime != "trt":
        return
    from facerest.models import prepare_models
    from facerest.models.store import ModelStore
    from facerest.tools.tensorrt_build import build_engine

    store = ModelStore(settings.models_dir)
    for name, paths in prepare_models(settings).items():
        for path in paths:
            build_engine(path, settings, store.entry(name))
