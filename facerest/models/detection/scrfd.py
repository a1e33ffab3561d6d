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
    """Outputs: scores [N, rows, 1], box distances [N, rows, 4] and, for the *kps variants,
    landmark offsets [N, rows, 10], one of each per stride (rows = cells x anchors); graphs
    exported without a batch axis drop the N. Exporters disagree on the order of the outputs
    (InsightFace's own lists them by kind, the 500m export by stride, IFR's re-exports by name),
    so each output is told by its last dimension and its stride by its row count.
    """

    strides = (8, 16, 32)

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        outputs = self.session.outputs
        by_width: dict[object, list[str]] = {}
        for output in outputs:
            by_width.setdefault(output.shape[-1], []).append(output.name)
        levels = len(self.strides)
        if len(by_width.get(1, [])) != levels or len(by_width.get(4, [])) != levels:
            # unknown last dims (fully dynamic shapes): the InsightFace order, scores/boxes/kps
            names = [o.name for o in outputs]
            by_width = {1: names[:levels], 4: names[levels : 2 * levels], 10: names[2 * levels : 3 * levels]}
        self._score_names = by_width[1]
        self._box_names = by_width[4]
        self._kps_names = by_width.get(10, [])
        self.batched = len(outputs[0].shape) == 3
        if not self.batched:
            self.max_batch = 1

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        outputs = super().infer(batch)
        if not self.batched:  # graphs without a batch axis answer for a single image
            outputs = {k: v[None] for k, v in outputs.items()}
        return outputs

    @staticmethod
    def _by_stride(outputs: dict[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
        """The arrays of `names`, finest stride (most rows) first."""
        return sorted((outputs[n] for n in names), key=lambda a: -a.shape[0])

    def decode(
        self, outputs: dict[str, np.ndarray], input_hw: tuple[int, int], threshold: float
    ) -> Detections:
        height, width = input_hw
        all_scores = self._by_stride(outputs, self._score_names)
        all_boxes = self._by_stride(outputs, self._box_names)
        all_kps = self._by_stride(outputs, self._kps_names) if self._kps_names else []
        boxes_all, scores_all, kps_all = [], [], []
        for level, stride in enumerate(self.strides):
            scores = all_scores[level].reshape(-1)
            fh, fw = -(-height // stride), -(-width // stride)
            num_anchors = max(1, scores.shape[0] // (fh * fw))
            keep = np.flatnonzero(scores > threshold)
            if keep.size == 0:
                continue
            centers = anchor_centers(fh, fw, stride, num_anchors)[keep]
            dist = all_boxes[level].reshape(-1, 4)[keep] * stride
            boxes = np.concatenate([centers - dist[:, :2], centers + dist[:, 2:]], axis=1)
            boxes_all.append(boxes)
            scores_all.append(scores[keep])
            if all_kps:
                kps = all_kps[level].reshape(-1, 5, 2)[keep] * stride
                kps_all.append(kps + centers[:, None, :])
        if not scores_all:
            return Detections.empty(bool(self._kps_names))
        boxes = np.concatenate(boxes_all).astype(np.float32)
        scores = np.concatenate(scores_all).astype(np.float32)
        landmarks = np.concatenate(kps_all).astype(np.float32) if kps_all else None
        keep = nms(boxes, scores, self.nms_threshold, max_keep=self.max_detections)
        return Detections(boxes[keep], scores[keep], None if landmarks is None else landmarks[keep])
