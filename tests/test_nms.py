"""Greedy NMS in chunks (issue 28) keeps exactly the boxes the one greedy loop over every
candidate keeps, the reference SCRFD/RetinaFace code's, in the same order."""

from __future__ import annotations

import numpy as np
import pytest

from facerest.models.detection import nms as nms_module
from facerest.models.detection.nms import nms


def greedy(
    boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, by_min: bool, max_keep: int
) -> np.ndarray:
    """The reference: each kept box compared with every candidate left."""
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size > 0 and (max_keep <= 0 or len(keep) < max_keep):
        i = order[0]
        keep.append(i)
        rest = order[1:]
        xx1 = np.maximum(x1[i], x1[rest])
        yy1 = np.maximum(y1[i], y1[rest])
        xx2 = np.minimum(x2[i], x2[rest])
        yy2 = np.minimum(y2[i], y2[rest])
        inter = np.maximum(0.0, xx2 - xx1 + 1) * np.maximum(0.0, yy2 - yy1 + 1)
        union = np.minimum(areas[i], areas[rest]) if by_min else areas[i] + areas[rest] - inter
        order = rest[inter / union <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


@pytest.mark.parametrize("chunk", [5, 256])
def test_chunks_keep_what_one_greedy_loop_keeps(monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    monkeypatch.setattr(nms_module, "CHUNK", chunk)
    rng = np.random.default_rng(28)
    for trial in range(60):
        count = int(rng.integers(1, 800))
        corner = rng.uniform(0, 600, (count, 2))
        size = rng.uniform(2, [20, 80, 200][trial % 3], (count, 2))
        boxes = np.concatenate([corner, corner + size], axis=1).astype([np.float32, np.float64][trial % 2])
        scores = rng.uniform(0, 1, count).astype(np.float32)
        if trial % 4 == 0:
            scores = np.round(scores, 1)  # ties: the stable order decides, as in the reference
        threshold = [0.3, 0.4, 0.5, 0.7][trial % 4]
        by_min = trial % 5 == 0
        max_keep = [0, 3, 100, 2048][trial % 4]
        expected = greedy(boxes, scores, threshold, by_min, max_keep)
        assert np.array_equal(nms(boxes, scores, threshold, by_min=by_min, max_keep=max_keep), expected)


def test_no_boxes_keep_nothing() -> None:
    assert nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.4).shape == (0,)
