"""The one interface every backend implements: tensors in, tensors out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

#: numeric precision a backend runs a model in (bf16: OpenVINO on CPUs that have it)
Precision = Literal["f32", "bf16"]


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
