"""What every per-face model (recognizer, gender/age, mask, dense landmarks) provides."""

from __future__ import annotations

from abc import ABC, abstractmethod

import cv2
import numpy as np

from facerest.faces import Face
from facerest.models.catalog import CatalogEntry


class FaceModel(ABC):
    """Runs on crops of detected faces, batched over every face waiting.

    `crop` cuts one face out of its image (cheap, in the request's thread), `prepare` turns a
    stack of crops into the model's input, `infer` runs it (on the inference thread), and `apply`
    writes one face's output row into its Face record.
    """

    #: the faces one call may take
    max_batch: int = 64

    def __init__(self, entry: CatalogEntry) -> None:
        self.entry = entry

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def task(self) -> str:
        return self.entry.task

    @abstractmethod
    def crop(self, image: np.ndarray, face: Face) -> np.ndarray:
        """(h, w, 3) uint8 BGR crop of one face, in the model's input size."""

    @abstractmethod
    def prepare(self, crops: np.ndarray) -> np.ndarray:
        """(N, h, w, 3) uint8 crops -> the model's input tensor."""

    @abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Input tensor -> (N, ...) outputs, one row per face."""

    @abstractmethod
    def apply(self, face: Face, row: np.ndarray) -> None:
        """Write one face's output into its record."""


def blob(crops: np.ndarray, mean: list[float], std: list[float], swap_rb: bool) -> np.ndarray:
    """(N, h, w, 3) uint8 BGR -> (N, 3, h, w) float32 ((x - mean) / std, optionally as RGB)."""
    if len(set(std)) == 1:
        return cv2.dnn.blobFromImages(
            list(crops), 1.0 / std[0], (crops.shape[2], crops.shape[1]), tuple(mean), swapRB=swap_rb
        )
    x = crops[..., ::-1] if swap_rb else crops
    x = (x.astype(np.float32) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
