"""RetinaFace (InsightFace, MXNet-converted) and RetinaFaceAntiCov (mnet_cov2, with mask scores).

Outputs per stride (32, 16, 8): class probabilities [N, 2A, H, W] (background for the first A
channels, face for the next A), box deltas [N, 4A, H, W], landmark deltas [N, 10A, H, W] and, for
the anti-COVID model, type probabilities [N, 3A, H, W] whose last A channels are "wears a mask".
A = 2 anchors per cell, square, 16 px base scaled by (32, 16) at stride 32, (8, 4) at 16 and
(2, 1) at 8, centred at (7.5, 7.5) of each cell. Boxes are deltas on the anchor centre and size
(width/height in log space), landmarks offsets in anchor sizes times `landmark_std` (0.2 for the
"net3l" models: retinaface_mnet025_v2 and mnet_cov2; 1.0 otherwise).
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np

from facerest.errors import ModelError
from facerest.models.detection.base import Detections, Detector
from facerest.models.detection.nms import nms

STRIDES = (32, 16, 8)
#: anchor scales (multiples of the 16 px base) per stride, largest first as in the reference
ANCHOR_SCALES = {32: (32.0, 16.0), 16: (8.0, 4.0), 8: (2.0, 1.0)}
BASE_SIZE = 16
KINDS = ("cls", "bbox", "landmark", "type")


@lru_cache(maxsize=64)
def anchors(height: int, width: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """(centres (H*W*A, 2), sizes (H*W*A,)) in cell-major, anchor-minor order."""
    scales = np.asarray(ANCHOR_SCALES[stride], np.float32)
    ys, xs = np.mgrid[:height, :width]
    offset = (BASE_SIZE - 1) / 2.0
    centres = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float32) * stride + offset
    centres = np.repeat(centres, len(scales), axis=0)
    sizes = np.tile(scales * BASE_SIZE, height * width)
    centres.setflags(write=False)
    sizes.setflags(write=False)
    return centres, sizes


def _kind(name: str) -> str | None:
    for kind in KINDS:
        if kind in name:
            return kind
    return None


class RetinaFaceDetector(Detector):
    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        decoder = self.entry.decoder
        self.landmark_std = float(decoder.get("landmark_std", 1.0))
        self.masks = bool(decoder.get("masks", self.entry.family == "mnet_cov2"))
        per_stride = 4 if self.masks else 3
        names = [o.name for o in self.session.outputs]
        if len(names) != per_stride * len(STRIDES):
            raise ModelError(
                f"{self.entry.name}: a {self.entry.family} graph has {per_stride * len(STRIDES)} outputs, "
                f"this one {len(names)}"
            )
        # {stride: {kind: output name}}: by name when the exporter kept MXNet's names
        # (face_rpn_cls_prob_reshape_stride32 ...), else in the reference order
        self.outputs: dict[int, dict[str, str]] = {s: {} for s in STRIDES}
        for i, name in enumerate(names):
            match = re.search(r"stride(\d+)", name)
            kind = _kind(name)
            if match and kind and int(match.group(1)) in self.outputs:
                self.outputs[int(match.group(1))][kind] = name
            else:
                self.outputs[STRIDES[i // per_stride]][KINDS[i % per_stride]] = name

    def decode(
        self, outputs: dict[str, np.ndarray], input_hw: tuple[int, int], threshold: float
    ) -> Detections:
        boxes_all, scores_all, lmk_all, mask_all = [], [], [], []
        for stride in STRIDES:
            names = self.outputs[stride]
            cls = outputs[names["cls"]]
            num_anchors = cls.shape[0] // 2
            height, width = cls.shape[1], cls.shape[2]
            # channel-last so that rows run cell by cell, anchor by anchor
            scores = cls[num_anchors:].transpose(1, 2, 0).reshape(-1)
            keep = np.flatnonzero(scores >= threshold)
            if keep.size == 0:
                continue
            centres, sizes = anchors(height, width, stride)
            centres, sizes = centres[keep], sizes[keep, None]
            deltas = outputs[names["bbox"]].transpose(1, 2, 0).reshape(-1, 4)[keep]
            ctr = deltas[:, :2] * sizes + centres
            half = (np.exp(deltas[:, 2:]) * sizes - 1.0) / 2.0
            boxes_all.append(np.concatenate([ctr - half, ctr + half], axis=1))
            scores_all.append(scores[keep])
            lmk = outputs[names["landmark"]].transpose(1, 2, 0).reshape(-1, 5, 2)[keep]
            lmk_all.append(lmk * self.landmark_std * sizes[:, :, None] + centres[:, None, :])
            if self.masks:
                types = outputs[names["type"]][2 * num_anchors :].transpose(1, 2, 0).reshape(-1)
                mask_all.append(types[keep])
        if not scores_all:
            empty = Detections.empty()
            if self.masks:
                empty.extra["mask"] = np.zeros(0, np.float32)
            return empty
        boxes = np.concatenate(boxes_all).astype(np.float32)
        scores = np.concatenate(scores_all).astype(np.float32)
        landmarks = np.concatenate(lmk_all).astype(np.float32)
        keep = nms(boxes, scores, self.nms_threshold, max_keep=self.max_detections)
        extra = {"mask": np.concatenate(mask_all).astype(np.float32)[keep]} if self.masks else {}
        return Detections(boxes[keep], scores[keep], landmarks[keep], extra)
