"""Dense landmarks: InsightFace 2d106det (192x192 crop around the box -> 106 points)."""

from __future__ import annotations

import cv2
import numpy as np

from facerest.models.base import SessionFaceModel
from facerest.models.faces import Face


class Landmark2d106(SessionFaceModel):
    """Crops a square of 1.5x the box's longer side, centred on the box, and maps points back."""

    default_size = 192

    def _matrix(self, face: Face) -> np.ndarray:
        x1, y1, x2, y2 = face.bbox.astype(np.float64)
        scale = self.size / (max(x2 - x1, y2 - y1) * 1.5)
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        return np.array([[scale, 0, self.size / 2 - cx * scale], [0, scale, self.size / 2 - cy * scale]])

    def crop(self, image: np.ndarray, face: Face) -> np.ndarray:
        return cv2.warpAffine(image, self._matrix(face), (self.size, self.size), borderValue=0.0)

    def apply(self, face: Face, row: np.ndarray) -> None:
        points = row.reshape(-1, 2).astype(np.float64)
        points = (points + 1.0) * (self.size / 2)
        inverse = cv2.invertAffineTransform(self._matrix(face))
        face.landmarks_dense = (points @ inverse[:, :2].T + inverse[:, 2]).astype(np.float32)
