"""Plain records the pipeline produces and the API serialises."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass(slots=True)
class Quality:
    score: float  # 0..1, the product of the factors below
    face_size: float  # box width, pixels of the image
    eye_distance: float | None  # pixels between the eyes (None without landmarks)
    detector_score: float
    sharpness: float  # variance of the Laplacian of the aligned 112x112 grey crop
    yaw: float | None  # degrees, + when the face turns to the image's left (rough: 5 points)
    pitch: float | None  # degrees, + when the face looks down (rough)
    roll: float | None  # degrees of the eye line from horizontal
    cut: float  # share of the face outside the image (0: whole), from its box and landmarks

    def to_json(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@dataclass(slots=True)
class Face:
    bbox: np.ndarray  # (4,) float32 x1, y1, x2, y2 in original image pixels
    score: float
    landmarks: np.ndarray | None  # (5, 2) float32 in original image pixels
    index: int = 0  # position among the faces of its image, after filtering
    embedding: np.ndarray | None = None  # (D,) float32, unit length
    norm: float | None = None  # embedding norm before normalisation
    gender: str | None = None  # "male" | "female"
    age: int | None = None
    mask_probs: dict[str, float] | None = None  # {"mask": p, "no_mask": q}
    mask: bool | None = None
    landmarks_dense: np.ndarray | None = None  # (106, 2) when a dense landmark model ran
    crop: np.ndarray | None = None  # (112, 112, 3) BGR aligned crop when asked for
    whole_image: bool = False  # True when `single_face` fell back to the whole image
    quality: Quality | None = None  # when asked for (`return_quality`)
    marked: str | None = None  # a face the client marked: "landmarks", "box" or "box only" (no landmarks)

    @property
    def width(self) -> float:
        return float(self.bbox[2] - self.bbox[0])


@dataclass(slots=True)
class ImageResult:
    faces: list[Face] = field(default_factory=list)
    error: str | None = None  # a short reason when this image failed alone
    error_code: str | None = None
    took_ms: float = 0.0
    width: int = 0
    height: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None
