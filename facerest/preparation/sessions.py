"""`open_session`: every inference session passes through here, whatever runtime the settings ask for.

The runtime layer loads a file on a named backend and knows nothing of models; what is decided per
model lives here: which CPU runtime runs it faster (FACEREST_RUNTIME=auto), the TensorRT engine
built for it (FACEREST_RUNTIME=trt), bf16 for the recognizer (FACEREST_REC_PRECISION).
"""

from __future__ import annotations

from pathlib import Path

from facerest.config import Settings
from facerest.models.catalog import CatalogEntry
from facerest.models.store import ModelStore
from facerest.preparation.cpu_runtime import choose_cpu_runtime
from facerest.runtime.base import InferenceSession, Precision
from facerest.runtime.factory import create_session
from facerest.runtime.shapes import ModelRole
from facerest.tools.tensorrt_build import build_engine


def open_session(
    model_path: Path, settings: Settings, *, model_name: str = "", role: ModelRole | None = None
) -> InferenceSession:
    """Load `model_path` (an ONNX file) on the runtime the settings ask for, ready to run (`role`:
    what the graph is in the pipeline, for the shape profiles of GPU engines)."""
    precision = _precision(settings, model_name)
    if settings.runtime == "auto":
        return _auto_session(model_path, settings, model_name, precision, role)
    if settings.runtime == "trt":
        engine = engine_for(model_path, settings, model_name)
        return create_session(engine, settings, backend="trt", model_name=model_name or model_path.stem)
    return create_session(
        model_path, settings, backend=settings.runtime, model_name=model_name, precision=precision, role=role
    )


def session_name(model_name: str, index: int) -> str:
    """The name of a model's `index`-th file's session ("age_gender_dlib_1" is its second)."""
    return model_name if index == 0 else f"{model_name}_{index}"


def catalog_entry(model_name: str, settings: Settings) -> CatalogEntry:
    """The catalogue entry behind a session name (see `session_name`)."""
    store = ModelStore(settings.models_dir)
    base, _, index = model_name.rpartition("_")
    name = base if index.isdigit() and store.catalog.get(base) is not None else model_name
    return store.entry(name)


def engine_for(model_path: Path, settings: Settings, model_name: str = "") -> Path:
    """The TensorRT engine of `model_path`, built first if the cache has none valid."""
    return build_engine(model_path, settings, catalog_entry(model_name or model_path.stem, settings))


def _precision(settings: Settings, model_name: str) -> Precision:
    return "bf16" if settings.rec_precision == "bf16" and model_name == settings.rec_name else "f32"


def _auto_session(
    model_path: Path, settings: Settings, model_name: str, precision: Precision, role: ModelRole | None
) -> InferenceSession:
    """ONNX Runtime, unless OpenVINO is installed, the models run on the CPU, and it is faster."""

    def on(backend: str, precision: Precision = "f32") -> InferenceSession:
        return create_session(
            model_path, settings, backend=backend, model_name=model_name, precision=precision
        )

    if settings.providers != ["CPUExecutionProvider"]:  # GPUs asked for: their providers decide
        return create_session(model_path, settings, backend="onnx", model_name=model_name, role=role)
    try:  # OpenVINO is an optional extra (facerest[openvino])
        from facerest.runtime.openvino import cpu_has_bf16
    except ImportError:
        return on("onnx")
    if precision == "bf16" and cpu_has_bf16():
        return on("openvino", "bf16")
    return choose_cpu_runtime(
        model_path, settings, model_name, {"onnx": lambda: on("onnx"), "openvino": lambda: on("openvino")}
    )
