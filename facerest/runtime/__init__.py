"""Execution backends: each takes named float tensors and returns named tensors, nothing more."""

from facerest.runtime.base import InferenceSession, Precision, TensorSpec

__all__ = ["InferenceSession", "Precision", "TensorSpec"]
