"""Preparing models for this machine (fetch, verify, convert, build engines, choose the CPU runtime)
and handing the models layer ready sessions: the one stage between the model files and the pipeline."""

from facerest.preparation.gpu import prepare_runtime_apart
from facerest.preparation.sessions import open_session
from facerest.preparation.stage import (
    load_detector,
    load_face_model,
    load_models,
    load_recognizer,
    prepare_models,
    prepare_runtime,
)

__all__ = [
    "load_detector",
    "load_face_model",
    "load_models",
    "load_recognizer",
    "open_session",
    "prepare_models",
    "prepare_runtime",
    "prepare_runtime_apart",
]
