"""Greedy non-maximum suppression shared by every detector family."""

from __future__ import annotations

import numpy as np


def nms(
    boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, *, by_min: bool = False, max_keep: int = 0
) -> np.ndarray:
    """Indices of the boxes kept, best score first; at most `max_keep` (0: no limit).

    Areas use the +1 pixel convention of the reference SCRFD/RetinaFace code, so the same boxes
    survive as in InsightFace. `by_min`: overlap over the smaller box instead of the union
    (MTCNN's last stage).
    """
    if len(boxes) == 0:
        return np.empty(0, dtype=np.int64)
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
        iou = inter / union
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)
