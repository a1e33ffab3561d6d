"""What every per-face model (recognizer, gender/age, mask, dense landmarks) provides."""

from __future__ import annotations

from abc import ABC, abstractmethod

import cv2
import numpy as np

from facerest.models.catalog import CatalogEntry
from facerest.models.faces import Face
from facerest.runtime.base import InferenceSession


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


class SessionFaceModel(FaceModel):
    """A per-face model that is one session with one image input, NCHW or NHWC, normalised per
    the catalogue entry; its first output has one row per face."""

    #: input side when the graph leaves it dynamic
    default_size = 112

    def __init__(self, entry: CatalogEntry, session: InferenceSession) -> None:
        super().__init__(entry)
        self.session = session
        self.input_name = session.inputs[0].name
        shape = session.inputs[0].shape
        self.nhwc = shape[-1] == 3
        side = shape[1] if self.nhwc else shape[2]
        self.size = side if isinstance(side, int) else self.default_size
        batch = shape[0]
        if (isinstance(batch, int) and batch == 1) or not entry.allow_batching:
            self.max_batch = 1
        pre = entry.preprocess
        self._mean, self._std, self._swap_rb = list(pre.mean), list(pre.std), pre.color == "RGB"

    def prepare(self, crops: np.ndarray) -> np.ndarray:
        x = blob(crops, self._mean, self._std, self._swap_rb)
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if self.nhwc else x

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return next(iter(self.session.run({self.input_name: batch}).values())).reshape(len(batch), -1)


def box_crop(image: np.ndarray, bbox: np.ndarray, size: int) -> np.ndarray:
    """The face's box (clipped to the image; the whole image if nothing is left) resized to size."""
    x1, y1, x2, y2 = np.round(bbox).astype(int)
    region = image[max(y1, 0) : max(y2, 1), max(x1, 0) : max(x2, 1)]
    return cv2.resize(region if region.size else image, (size, size), interpolation=cv2.INTER_AREA)
