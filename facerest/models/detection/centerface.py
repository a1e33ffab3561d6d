"""CenterFace (Star-Clouds): an anchor-free heatmap at stride 4.

Outputs, in the graph's order: heatmap [N, 1, H/4, W/4], scale [N, 2, ..] (log height, log width
in 4 px units), offset [N, 2, ..] (sub-cell y, x) and landmarks [N, 10, ..] (y, x pairs relative
to the box's top-left corner, in box heights and widths). Boxes are clipped to the input.
"""

from __future__ import annotations

import numpy as np

from facerest.errors import ModelError
from facerest.models.detection.base import Detections, Detector
from facerest.models.detection.nms import nms

HEATMAP_STRIDE = 4


class CenterFaceDetector(Detector):
    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        outputs = self.session.outputs
        channels = [o.shape[1] if len(o.shape) == 4 else None for o in outputs]
        if len(outputs) != 4 or channels.count(2) != 2 or 1 not in channels or 10 not in channels:
            raise ModelError(
                f"{self.entry.name}: CenterFace needs 4 outputs with 1, 2, 2 and 10 channels, got {channels}"
            )
        two = [o.name for o, c in zip(outputs, channels, strict=True) if c == 2]
        self.heatmap = outputs[channels.index(1)].name
        self.scale_name, self.offset_name = two  # the reference export lists scale before offset
        self.landmarks_name = outputs[channels.index(10)].name

    def decode(
        self, outputs: dict[str, np.ndarray], input_hw: tuple[int, int], threshold: float
    ) -> Detections:
        height, width = input_hw
        heat = outputs[self.heatmap][0]
        rows, cols = np.nonzero(heat > threshold)
        if rows.size == 0:
            return Detections.empty()
        scale = outputs[self.scale_name][:, rows, cols]  # (2, n): log h, log w
        offset = outputs[self.offset_name][:, rows, cols]  # (2, n): dy, dx
        box_h = np.exp(scale[0]) * HEATMAP_STRIDE
        box_w = np.exp(scale[1]) * HEATMAP_STRIDE
        x1 = np.clip((cols + offset[1] + 0.5) * HEATMAP_STRIDE - box_w / 2, 0, width)
        y1 = np.clip((rows + offset[0] + 0.5) * HEATMAP_STRIDE - box_h / 2, 0, height)
        x2 = np.minimum(x1 + box_w, width)
        y2 = np.minimum(y1 + box_h, height)
        boxes = np.stack([x1, y1, x2, y2], axis=1).astype(np.float32)
        scores = heat[rows, cols].astype(np.float32)
        lmk = outputs[self.landmarks_name][:, rows, cols].T.reshape(-1, 5, 2)  # (y, x) pairs
        landmarks = np.stack(
            [lmk[:, :, 1] * box_w[:, None] + x1[:, None], lmk[:, :, 0] * box_h[:, None] + y1[:, None]],
            axis=-1,
        ).astype(np.float32)
        keep = nms(boxes, scores, self.nms_threshold, max_keep=self.max_detections)
        return Detections(boxes[keep], scores[keep], landmarks[keep])
