"""YuNet (libfacedetection, OpenCV Zoo's face_detection_yunet_2023mar): anchor-free, strides 8,
16, 32, one prior per cell.

Per stride, rows of the feature map in raster order: cls [N, rows, 1] and obj [N, rows, 1]
(sigmoids; the score is the geometric mean of the two, each clipped to [0, 1]), bbox [N, rows, 4]
(centre offset in cells, log width and height in cells) and kps [N, rows, 10] (the 5 landmarks'
offsets in cells: right eye, left eye, nose tip, right and left mouth corner of the person, so
image left first, as SCRFD's). The decoding is OpenCV's `FaceDetectorYN::postProcess`; the
input is the BGR canvas as it is (no mean, no scaling), padded right and below to the stride.
"""

from __future__ import annotations

import numpy as np

from facerest.errors import ModelError
from facerest.models.detection.base import Detections, Detector
from facerest.models.detection.nms import nms


class YuNetDetector(Detector):
    strides = (8, 16, 32)

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        names = {o.name for o in self.session.outputs}
        wanted = {f"{kind}_{s}" for kind in ("cls", "obj", "bbox", "kps") for s in self.strides}
        if not wanted <= names:
            raise ModelError(f"{self.entry.name}: a YuNet graph needs the outputs {sorted(wanted - names)}")
        if self.fixed_input is not None:  # the zoo's own export: 640x640, one image per call
            self.max_batch = 1

    def decode(
        self, outputs: dict[str, np.ndarray], input_hw: tuple[int, int], threshold: float
    ) -> Detections:
        width = input_hw[1]
        boxes_all, scores_all, kps_all = [], [], []
        for stride in self.strides:
            cols = -(-width // stride)
            cls = np.clip(outputs[f"cls_{stride}"].reshape(-1), 0.0, 1.0)
            obj = np.clip(outputs[f"obj_{stride}"].reshape(-1), 0.0, 1.0)
            scores = np.sqrt(cls * obj)
            keep = np.flatnonzero(scores > threshold)
            if keep.size == 0:
                continue
            cells = np.stack([keep % cols, keep // cols], axis=1).astype(np.float32)  # (c, r)
            bbox = outputs[f"bbox_{stride}"].reshape(-1, 4)[keep]
            centre = (cells + bbox[:, :2]) * stride
            size = np.exp(bbox[:, 2:]) * stride
            boxes_all.append(np.concatenate([centre - size / 2, centre + size / 2], axis=1))
            kps = outputs[f"kps_{stride}"].reshape(-1, 5, 2)[keep]
            kps_all.append((kps + cells[:, None, :]) * stride)
            scores_all.append(scores[keep])
        if not scores_all:
            return Detections.empty()
        boxes = np.concatenate(boxes_all).astype(np.float32)
        scores = np.concatenate(scores_all).astype(np.float32)
        landmarks = np.concatenate(kps_all).astype(np.float32)
        keep = nms(boxes, scores, self.nms_threshold, max_keep=self.max_detections)
        return Detections(boxes[keep], scores[keep], landmarks[keep])
