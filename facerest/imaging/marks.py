"""Faces a client marks by hand (`images.faces` of /extract): a box, 5 landmarks, or both.

Landmarks are used as given (the face is aligned on them exactly as on detected ones). A box
alone is searched: the detector looks at the box with a margin around it, and the found face that
overlaps the box most lends its landmarks; when nothing is found there, the box itself is resized
to the recognizer's input (as for `single_face` without a face), and the answer says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: context around a marked box the detector sees (a share of the box's size, each side)
SEARCH_MARGIN = 0.5
#: a face found near a marked box is that box's face when they overlap at least this much (IoU)
MIN_OVERLAP = 0.3


@dataclass(slots=True, frozen=True)
class FaceMark:
    bbox: np.ndarray | None  # (4,) x1, y1, x2, y2
    landmarks: np.ndarray | None  # (5, 2)


class BadMark(ValueError):
    """A mark that names no face of its image (outside it, or of zero area)."""


def check_mark(mark: FaceMark, width: int, height: int, index: int) -> None:
    if mark.landmarks is not None:
        points = mark.landmarks
        inside = (
            (points[:, 0] >= 0) & (points[:, 0] <= width) & (points[:, 1] >= 0) & (points[:, 1] <= height)
        )
        if not inside.all():
            raise BadMark(f"face {index}: landmarks outside the {width}x{height} image")
        if np.ptp(points[:, 0]) < 1 or np.ptp(points[:, 1]) < 1:
            raise BadMark(f"face {index}: the 5 landmarks do not span a face")
    if mark.bbox is not None:
        x1, y1, x2, y2 = mark.bbox
        if x2 <= x1 or y2 <= y1:
            raise BadMark(f"face {index}: box {mark.bbox.tolist()} has zero area (give x1, y1, x2, y2)")
        if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
            raise BadMark(f"face {index}: box outside the {width}x{height} image")


def box_of_landmarks(points: np.ndarray) -> np.ndarray:
    """A face box around 5 landmarks (eyes, nose, mouth corners), in the proportions SCRFD gives."""
    x1, y1 = points.min(axis=0)
    x2, y2 = points.max(axis=0)
    w, h = x2 - x1, y2 - y1
    return np.array([x1 - 0.45 * w, y1 - 0.9 * h, x2 + 0.45 * w, y2 + 0.55 * h], np.float32)


def search_region(box: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """The part of the image the detector looks at for a marked box: the box and a margin."""
    x1, y1, x2, y2 = box
    mx, my = SEARCH_MARGIN * (x2 - x1), SEARCH_MARGIN * (y2 - y1)
    return (
        max(int(np.floor(x1 - mx)), 0),
        max(int(np.floor(y1 - my)), 0),
        min(int(np.ceil(x2 + mx)), width),
        min(int(np.ceil(y2 + my)), height),
    )


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)
