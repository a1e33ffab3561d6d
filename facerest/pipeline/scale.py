"""Detector scale policy (issue 18): at which scale each image is searched for faces.

The reference pipeline fits every image to max_size, so a 220x269 portrait is enlarged 2.4x
(5.6x the pixels) before the detector sees it, although its face is already far above the
detector's smallest anchors. `adaptive` (the default) detects at the image's own scale (shrunk
to max_size when larger, never enlarged) and runs the reference-scale pass only where enlarging
can reveal faces: the image would be enlarged by the reference AND the first pass found nothing,
or found a face narrower than RELIABLE_FACE_PX (the faces beside it may be smaller still and
missed) or less sure than UNSURE_SCORE. That pass then replaces the first, so such images get
the reference's faces exactly.
Images the reference enlarges less than DIRECT_GAIN are detected at the reference scale at once.
`reference` is the reference pipeline's scale, bit for bit; `native` never enlarges.

Canvases here are never larger than the reference's, so GPU shape profiles
(facerest/runtime/shapes.py: max_size, at least 32 px) cover them. Fixed-input graphs gain
nothing from a smaller image in the same canvas, and MTCNN scans its own pyramid, so both keep
the reference scale whatever the policy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from facerest.imaging.resize import EDGE_MARGIN, DetectorInput, plan_input
from facerest.models.detection.base import Detections

ScalePolicy = Literal["adaptive", "reference", "native"]

#: a face found at least this wide (canvas pixels) at native scale is found, and its landmarks
#: placed, close enough to the reference scale's; narrower ones mean smaller faces may have been
#: missed and their embeddings move most (players.jpg at 1/3: 13 px faces at cosine 0.80-0.95 to
#: the reference's; measured on the shared, package and downscaled crowd photos with
#: tests/test_detect_scale.py)
RELIABLE_FACE_PX = 32.0
#: a face found at native scale less sure than this is one the detector hesitates on, and its
#: landmarks with it (mask.jpg's masked faces: scores 0.66-0.69, cosine 0.87 to the reference's, one
#: face the reference does not find); every face at or above it embedded within 0.95 of the reference
UNSURE_SCORE = 0.75
#: when the reference enlarges an image less than this, its canvas costs at most 1.56x the native
#: one, less than a native pass plus a reference pass, so the reference scale is used directly
#: (players.jpg at 1/2, enlarged 1.035x: 20 px faces at cosine 0.955 to the reference natively)
DIRECT_GAIN = 1.25


@dataclass(frozen=True, slots=True)
class ScalePlan:
    first: DetectorInput  # the canvas the first pass runs on
    reference: DetectorInput  # the reference pipeline's canvas for the same image
    policy: ScalePolicy

    @property
    def may_enlarge(self) -> bool:
        """Whether a reference-scale pass would see the faces larger than the first pass did."""
        return self.policy == "adaptive" and self.reference.scale > self.first.scale

    def needs_reference_pass(self, found: Detections) -> bool:
        """After the first pass: is it worth looking again at the reference scale?"""
        if not self.may_enlarge:
            return False
        if len(found) == 0:
            return True
        widths = (found.boxes[:, 2] - found.boxes[:, 0]) * self.first.scale
        return bool(widths.min() < RELIABLE_FACE_PX or found.scores.min() < UNSURE_SCORE)


def plan_scale(
    width: int,
    height: int,
    max_size: tuple[int, int],
    *,
    policy: ScalePolicy,
    fixed: tuple[int, int] | None,
    stride: int,
    family: str,
    max_upscale: float = 0.0,
    max_pixels: int = 0,
) -> ScalePlan:
    """The first pass's canvas under `policy`, and the reference's (FACEREST_MAX_UPSCALE applies to
    the reference scale as it always has; the native scale never enlarges past it either;
    `max_pixels` bounds both canvases, FACEREST_MAX_DETECTOR_PIXELS)."""
    reference = plan_input(
        width, height, max_size, fixed=fixed, stride=stride, max_upscale=max_upscale, max_pixels=max_pixels
    )
    unscaled = min(max_size) <= 0  # "do not resize": every policy detects at the image's size
    if policy == "reference" or fixed is not None or family == "mtcnn" or unscaled:
        return ScalePlan(reference, reference, "reference")
    native_cap = min(1.0, max_upscale) if max_upscale > 0 else 1.0
    first = plan_input(
        width, height, max_size, fixed=fixed, stride=stride, max_upscale=native_cap, max_pixels=max_pixels
    )
    if policy == "adaptive" and reference.scale < first.scale * DIRECT_GAIN:
        first = reference
    return ScalePlan(first, reference, policy)


#: context kept around a face when its landmarks are refined, in face sizes on each side
REFINE_CONTEXT = 0.5


@dataclass(frozen=True, slots=True)
class RefineCrop:
    origin: tuple[int, int]  # (x, y) of the crop in the image
    size: tuple[int, int]  # (w, h) of the crop in the image
    plan: DetectorInput  # the crop at the reference scale, top-left in its canvas


def plan_refine(box: np.ndarray, width: int, height: int, scale: float, stride: int) -> RefineCrop:
    """A crop around one face (REFINE_CONTEXT of its size on each side, inside the image) and its
    canvas at the reference `scale`, bordered right and below as the reference canvas is."""
    side = REFINE_CONTEXT * float(max(box[2] - box[0], box[3] - box[1]))
    x0, y0 = max(0, math.floor(box[0] - side)), max(0, math.floor(box[1] - side))
    x1, y1 = min(width, math.ceil(box[2] + side)), min(height, math.ceil(box[3] + side))
    crop = (max(1, x1 - x0), max(1, y1 - y0))
    resized = (max(1, round(crop[0] * scale)), max(1, round(crop[1] * scale)))
    canvas = tuple(math.ceil((r + EDGE_MARGIN) / stride) * stride for r in resized)
    return RefineCrop((x0, y0), crop, DetectorInput(resized[1] / crop[1], resized, (canvas[0], canvas[1])))
