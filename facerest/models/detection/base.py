"""What every detector family provides: tensor preparation, batched inference, decoding."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import cv2
import numpy as np

from facerest.models.catalog import CatalogEntry
from facerest.runtime.base import InferenceSession


@dataclass(slots=True)
class Detections:
    """Faces found in one detector input, in that input's pixel coordinates."""

    boxes: np.ndarray  # (n, 4) float32 x1, y1, x2, y2
    scores: np.ndarray  # (n,) float32
    landmarks: np.ndarray | None = None  # (n, 5, 2) float32
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. "mask": (n,) scores

    @classmethod
    def empty(cls, with_landmarks: bool = True) -> Detections:
        return cls(
            np.zeros((0, 4), np.float32),
            np.zeros(0, np.float32),
            np.zeros((0, 5, 2), np.float32) if with_landmarks else None,
        )

    def __len__(self) -> int:
        return len(self.scores)

    def take(self, index: np.ndarray) -> Detections:
        return Detections(
            self.boxes[index],
            self.scores[index],
            None if self.landmarks is None else self.landmarks[index],
            {k: v[index] for k, v in self.extra.items()},
        )

    def scaled(self, factor: float) -> Detections:
        """Coordinates divided by `factor` (detector input -> original image)."""
        return Detections(
            self.boxes / factor,
            self.scores,
            None if self.landmarks is None else self.landmarks / factor,
            self.extra,
        )


class Detector(ABC):
    """A detector = catalogue entry + runtime session; owns its pre- and post-processing.

    The pipeline resizes each image (keeping its aspect ratio) and pads it to `input_size_for`;
    `prepare` turns that canvas into the model's input tensor, `infer` runs a batch of them, and
    `decode` turns one image's raw outputs into Detections.
    """

    #: input sides must be multiples of this (the largest feature stride)
    stride: int = 32

    def __init__(self, entry: CatalogEntry, session: InferenceSession, nms_threshold: float = 0.4) -> None:
        self.entry = entry
        self.session = session
        self.nms_threshold = nms_threshold
        #: most detections kept per image, best scores first (0: all). At threshold 0 every
        #: anchor is a candidate: thousands survive NMS, each costing a pass over the rest
        self.max_detections = 0
        self.input_name = session.inputs[0].name
        shape = session.inputs[0].shape
        # a graph with fixed spatial dims forces that canvas; dynamic graphs follow the image
        h, w = shape[2], shape[3]
        self.fixed_input: tuple[int, int] | None = (
            (w, h) if isinstance(w, int) and isinstance(h, int) else None
        )
        batch = shape[0]
        self.max_batch = 1 if (isinstance(batch, int) and batch == 1) or not entry.allow_batching else 64
        pre = entry.preprocess
        self._mean = tuple(pre.mean)
        self._scale = 1.0 / pre.std[0]
        self._swap_rb = pre.color == "RGB"

    @property
    def name(self) -> str:
        return self.entry.name

    def prepare(self, canvas: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 BGR canvas -> (3, H, W) float32 model input."""
        blob = cv2.dnn.blobFromImage(
            canvas, self._scale, (canvas.shape[1], canvas.shape[0]), self._mean, swapRB=self._swap_rb
        )
        return blob[0]

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run a (N, 3, H, W) batch; outputs keep the batch as their first axis."""
        return self.session.run({self.input_name: batch})

    @abstractmethod
    def decode(
        self, outputs: dict[str, np.ndarray], input_hw: tuple[int, int], threshold: float
    ) -> Detections:
        """One image's outputs (batch axis removed) -> Detections in canvas coordinates."""
