"""YOLOv5-Face (deepcam-cn): n, s, m, l.

Two export forms are read:
- decoded (InsightFace-REST's exports): one output [N, rows, 16] = centre x, centre y, width,
  height, objectness, 5 landmark (x, y) pairs, class score; rows run stride 8, 16, 32, 3 anchors
  per cell. The score is the objectness, as in InsightFace-REST.
- raw heads: three outputs [N, 3, H, W, 16], one per stride (8, 16, 32), decoded here with the
  model's anchors: xy = (2 sigmoid - 0.5 + cell) * stride, wh = (2 sigmoid)^2 * anchor,
  landmarks = value * anchor + cell * stride, score = sigmoid(objectness) * sigmoid(class).
"""

from __future__ import annotations

import numpy as np

from facerest.models.detection.base import Detections, Detector
from facerest.models.detection.nms import nms

STRIDES = (8, 16, 32)
#: (width, height) of the 3 anchors of each stride, from yolov5-face's model configs
ANCHORS = {
    8: ((4, 5), (8, 10), (13, 16)),
    16: ((23, 29), (43, 55), (73, 105)),
    32: ((146, 217), (231, 300), (335, 433)),
}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class YoloV5FaceDetector(Detector):
    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        outputs = self.session.outputs
        self.raw_heads = len(outputs) == 3 and all(len(o.shape) == 5 for o in outputs)
        self.output_names = [o.name for o in outputs]

    def _rows_from_heads(self, outputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(rows (n, 15) = x1 y1 x2 y2 + 10 landmark coords... as decoded rows, scores)"""
        heads = sorted((outputs[n] for n in self.output_names), key=lambda a: -a.shape[1] * a.shape[2])
        decoded = []
        for stride, head in zip(STRIDES, heads, strict=True):
            _, height, width, _ = head.shape
            ys, xs = np.mgrid[:height, :width]
            cell = np.stack([xs, ys], axis=-1).astype(np.float32)[None]  # (1, H, W, 2)
            anchor = np.asarray(ANCHORS[stride], np.float32)[:, None, None, :]  # (3, 1, 1, 2)
            xy = (_sigmoid(head[..., 0:2]) * 2 - 0.5 + cell) * stride
            wh = (_sigmoid(head[..., 2:4]) * 2) ** 2 * anchor
            score = _sigmoid(head[..., 4:5]) * _sigmoid(head[..., 15:16])
            lmk = (
                head[..., 5:15].reshape(*head.shape[:3], 5, 2) * anchor[..., None, :]
                + (cell * stride)[..., None, :]
            )
            decoded.append(
                np.concatenate([xy, wh, score, lmk.reshape(*head.shape[:3], 10)], axis=-1).reshape(-1, 15)
            )
        rows = np.concatenate(decoded)
        return rows, rows[:, 4]

    def decode(
        self, outputs: dict[str, np.ndarray], input_hw: tuple[int, int], threshold: float
    ) -> Detections:
        if self.raw_heads:
            rows, scores = self._rows_from_heads(outputs)
        else:
            rows = outputs[self.output_names[0]]
            scores = rows[:, 4]
        keep = np.flatnonzero(scores >= threshold)
        if keep.size == 0:
            return Detections.empty()
        rows, scores = rows[keep], scores[keep]
        centre, size = rows[:, 0:2], rows[:, 2:4]
        boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1).astype(np.float32)
        landmarks = rows[:, 5:15].reshape(-1, 5, 2).astype(np.float32)
        scores = scores.astype(np.float32)
        keep = nms(boxes, scores, self.nms_threshold, max_keep=self.max_detections)
        return Detections(boxes[keep], scores[keep], landmarks[keep])
