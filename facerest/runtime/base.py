"""The one interface every backend implements, and the factory that picks a backend."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from facerest.errors import BackendUnavailable

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


def create_session(model_path: Path, settings: Settings, *, model_name: str = "") -> InferenceSession:
    """Load `model_path` on the backend the settings ask for."""
    if settings.runtime == "onnx":
        from facerest.runtime.onnx import OnnxSession, provider_plan

        providers, options = provider_plan(settings)
        return OnnxSession(
            model_path,
            providers=providers,
            threads=settings.threads,
            provider_options=options,
            model_name=model_name or model_path.stem,
        )
    if settings.runtime == "openvino":
        try:
            from facerest.runtime.openvino import OpenVinoSession
        except ImportError as exc:
            raise BackendUnavailable(
                f"FACEREST_RUNTIME=openvino but OpenVINO is not installed ({exc}); "
                "install it with `pip install facerest[openvino]`"
            ) from exc
        return OpenVinoSession(model_path, threads=settings.threads)
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


def prepare_runtime(settings: Settings) -> None:
    """Work the runtime needs once per machine (or GPU) before any worker starts.

    TensorRT: build (or find cached) engines for every configured model, so workers only load
    them and never race to build. Called by `facerest serve` after the model files are prepared,
    in each GPU's process group (it sees only its GPU).
    """
    if settings.runtime != "trt":
        return
    from facerest.models import prepare_models
    from facerest.models.store import ModelStore
    from facerest.tools.tensorrt_build import build_engine

    store = ModelStore(settings.models_dir)
    for name, paths in prepare_models(settings).items():
        for path in paths:
            build_engine(path, settings, store.entry(name))
