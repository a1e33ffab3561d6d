"""Execution backends: each takes named float tensors and returns named tensors, nothing more."""

from facerest.runtime.base import InferenceSession, TensorSpec, create_session

__all__ = ["InferenceSession", "TensorSpec", "create_session"]
