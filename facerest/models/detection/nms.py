"""Greedy non-maximum suppression shared by every detector family."""

from __future__ import annotations

import numpy as np

#: candidates compared per step of the greedy loop: each kept box is compared with the rest of its
#: chunk, not with every candidate left (issue 28: at threshold 0 a 640x640 pass has 16,800)
CHUNK = 256


def nms(
    boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, *, by_min: bool = False, max_keep: int = 0
) -> np.ndarray:
    """Indices of the boxes kept, best score first; at most `max_keep` (0: no limit).

    Areas use the +1 pixel convention of the reference SCRFD/RetinaFace code, so the same boxes
    survive as in InsightFace. `by_min`: overlap over the smaller box instead of the union
    (MTCNN's last stage).

    The candidates are taken in chunks of CHUNK in score order: a chunk first loses what the
    boxes kept so far overlap, then runs the greedy loop within itself. Each box meets the same
    kept boxes, in the same order and with the same arithmetic as in one greedy loop over all of
    them, so the result is the same, at a cost that no longer grows with candidates x kept.
    """
    if len(boxes) == 0:
        return np.empty(0, dtype=np.int64)
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)

    def iou(i: np.ndarray | np.intp, rest: np.ndarray) -> np.ndarray:
        """Overlap of box(es) `i` (a scalar, or a column for many) with the boxes `rest`."""
        xx1 = np.maximum(x1[i], x1[rest])
        yy1 = np.maximum(y1[i], y1[rest])
        xx2 = np.minimum(x2[i], x2[rest])
        yy2 = np.minimum(y2[i], y2[rest])
        inter = np.maximum(0.0, xx2 - xx1 + 1) * np.maximum(0.0, yy2 - yy1 + 1)
        union = np.minimum(areas[i], areas[rest]) if by_min else areas[i] + areas[rest] - inter
        return inter / union

    order = np.argsort(-scores, kind="stable")
    keep: list[np.intp] = []
    for start in range(0, len(order), CHUNK):
        if 0 < max_keep <= len(keep):
            break
        chunk = order[start : start + CHUNK]
        alive = np.ones(len(chunk), dtype=bool)
        for block in range(0, len(keep), CHUNK):  # CHUNK x CHUNK pairs at a time: bounded memory
            kept = np.asarray(keep[block : block + CHUNK])[:, None]
            alive &= (iou(kept, chunk) <= iou_threshold).all(axis=0)
        chunk = chunk[alive]
        while chunk.size > 0 and (max_keep <= 0 or len(keep) < max_keep):
            i = chunk[0]
            keep.append(i)
            rest = chunk[1:]
            chunk = rest[iou(i, rest) <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)
