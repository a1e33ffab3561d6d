"""SCRFD (bnkps / gnkps / without keypoints): anchor-free distances at strides 8, 16, 32."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from facerest.models.detection.base import Detections, Detector
from facerest.models.detection.nms import nms


@lru_cache(maxsize=64)
def anchor_centers(height: int, width: int, stride: int, num_anchors: int) -> np.ndarray:
    """(height*width*num_anchors, 2) x, y centres of the anchors of one feature map."""
    ys, xs = np.mgrid[:height, :width]
    centers = (np.stack([xs, ys], axis=-1).astype(np.float32) * stride).reshape(-1, 2)
    if num_anchors > 1:
        centers = np.repeat(centers, num_anchors, axis=0)
    centers.setflags(write=False)
    return centers


class ScrfdDetector(Detector):
    strides = (8, 16, 32)

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        outputs = [o.name for o in self.session.outputs]
        levels = len(self.strides)
        # outputs come as scores per stride, then boxes, then (optionally) keypoints
        self._score_names = outputs[:levels]
        self._box_names = outputs[levels : 2 * levels]
        self._kps_names = outputs[2 * levels : 3 * levels] if len(outputs) >= 3 * levels else []
        self.batched = len(self.session.outputs[0].shape) == 3
        if not self.batched:
            self.max_batch = 1

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        outputs = super().infer(batch)
        if not self.batched:  # graphs without a batch axis answer for a single image
            outputs = {k: v[None] for k, v in outputs.items()}
        return outputs

    def decode(
        self, outputs: dict[str, np.ndarray], input_hw: tuple[int, int], threshold: float
    ) -> Detections:
        height, width = input_hw
        boxes_all, scores_all, kps_all = [], [], []
        for level, stride in enumerate(self.strides):
            scores = outputs[self._score_names[level]].reshape(-1)
            fh, fw = height // stride, width // stride
            num_anchors = max(1, scores.shape[0] // (fh * fw))
            keep = np.flatnonzero(scores > threshold)
            if keep.size == 0:
                continue
            centers = anchor_centers(fh, fw, stride, num_anchors)[keep]
            dist = outputs[self._box_names[level]].reshape(-1, 4)[keep] * stride
            boxes = np.concatenate([centers - dist[:, :2], centers + dist[:, 2:]], axis=1)
            boxes_all.append(boxes)
            scores_all.append(scores[keep])
            if self._kps_names:
                kps = outputs[self._kps_names[level]].reshape(-1, 5, 2)[keep] * stride
                kps_all.append(kps + centers[:, None, :])
        if not scores_all:
            return Detections.empty(bool(self._kps_names))
        boxes = np.concatenate(boxes_all).astype(np.float32)
        scores = np.concatenate(scores_all).astype(np.float32)
        landmarks = np.concatenate(kps_all).astype(np.float32) if kps_all else None
        keep = nms(boxes, scores, self.nms_threshold)
        return Detections(boxes[keep], scores[keep], None if landmarks is None else landmarks[keep])
