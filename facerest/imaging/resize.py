"""Fitting images to the detector: keep the aspect ratio, pad right and bottom."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True, slots=True)
class DetectorInput:
    scale: float  # canvas pixels per original pixel
    resized: tuple[int, int]  # (w, h) of the image inside the canvas
    canvas: tuple[int, int]  # (w, h) fed to the detector
    offset: tuple[int, int] = (0, 0)  # (x, y) of the image's top-left corner in the canvas

    def to_image(self, points: np.ndarray) -> np.ndarray:
        """Canvas (x, y) coordinates, last axis of pairs, -> original image coordinates."""
        return (points - np.asarray(self.offset, np.float32)) / self.scale


#: zero border (canvas pixels) kept right and below the image. SCRFD's deep features see far;
#: with less than two stride-32 cells of border, faces near the edge come out with shifted
#: landmarks compared with the reference 640x640 letterbox (embeddings drop to cosine 0.73-0.90
#: on shared/verify images); with 64 px they match it to >= 0.999.
EDGE_MARGIN = 64


def plan_input(
    width: int,
    height: int,
    max_size: tuple[int, int],
    *,
    fixed: tuple[int, int] | None = None,
    stride: int = 32,
    max_upscale: float = 0.0,
    max_pixels: int = 0,
) -> DetectorInput:
    """Choose the detector canvas for an image of `width` x `height`.

    The image is scaled to fit `max_size` exactly as the reference pipeline does (the longer
    side relative to the box fills it, the other truncated to whole pixels), so the faces and
    landmarks found are the reference's. Dynamic-shape detectors then get a canvas that follows
    the image (sides rounded up to `stride`, plus EDGE_MARGIN, never beyond `max_size`) instead of
    a padded square: a wide image costs fewer FLOPs. Fixed-shape detectors get their own size.
    `max_upscale` > 0 caps the enlargement of small images (fewer FLOPs, but landmarks, hence
    embeddings, then differ from the reference's: cosine 0.96-0.99; off by default).
    `max_pixels` > 0 bounds the canvas (a dynamic-shape detector's memory and time grow with it):
    an image that `max_size` would scale past it (a 1x1 picture with max_size 8192, or any picture
    with max_size 0) is scaled down until the canvas fits. Images fitting a box up to about
    sqrt(max_pixels) on a side are untouched, so ordinary requests keep the reference's results.
    """
    box_w, box_h = fixed if fixed is not None else max_size
    if box_w <= 0 or box_h <= 0:  # "do not resize": the canvas grows around the image
        box_w = math.ceil((width + EDGE_MARGIN) / stride) * stride
        box_h = math.ceil((height + EDGE_MARGIN) / stride) * stride
        resized = (width, height)
    elif height / width > box_h / box_w:
        resized = (max(1, int(box_h * width / height)), box_h)
    else:
        resized = (box_w, max(1, int(box_w * height / width)))
    if 0 < max_upscale < resized[1] / height:  # opt-in: small images are not blown up that far
        resized = (max(1, round(width * max_upscale)), max(1, round(height * max_upscale)))
    if fixed is not None:
        canvas = fixed
    else:
        canvas = _dynamic_canvas(resized, (box_w, box_h), stride)
        if max_pixels > 0 and canvas[0] * canvas[1] > max_pixels:
            # shrink the image until its canvas (margin and rounding included) fits the bound
            factor = math.sqrt(max_pixels / (canvas[0] * canvas[1]))
            base = resized
            while canvas[0] * canvas[1] > max_pixels and resized != (1, 1):
                resized = (max(1, int(base[0] * factor)), max(1, int(base[1] * factor)))
                canvas = _dynamic_canvas(resized, (box_w, box_h), stride)
                factor *= 0.97
    # the scale actually applied, after truncation, maps canvas coordinates back exactly
    return DetectorInput(resized[1] / height, resized, canvas)


def _dynamic_canvas(resized: tuple[int, int], box: tuple[int, int], stride: int) -> tuple[int, int]:
    """The canvas around a resized image: its sides plus EDGE_MARGIN, rounded up to `stride`,
    never beyond the `box` (rounded up to `stride`)."""
    return (
        min(math.ceil(box[0] / stride), math.ceil((resized[0] + EDGE_MARGIN) / stride)) * stride,
        min(math.ceil(box[1] / stride), math.ceil((resized[1] + EDGE_MARGIN) / stride)) * stride,
    )


#: second pass for close-ups: the image's longer side in canvas pixels. SCRFD's anchors are
#: trained on faces up to about half its 640 input; a face filling this frame falls inside.
CLOSEUP_SIDE = 256


def plan_closeup(
    width: int,
    height: int,
    *,
    side: int = CLOSEUP_SIDE,
    fixed: tuple[int, int] | None = None,
    stride: int = 32,
) -> DetectorInput:
    """A canvas for images whose faces may fill the frame: the image shrunk (or enlarged) so its
    longer side is `side`, centred in a black border half as wide as the image on each side, so
    a face cut by the image's edge still has context around it, as in the detector's training."""
    if fixed is not None:
        side = min(side, fixed[0] // 2, fixed[1] // 2)
    scale = side / max(width, height)
    resized = (max(1, round(width * scale)), max(1, round(height * scale)))
    canvas = fixed or tuple(math.ceil(2 * r / stride) * stride for r in resized)
    offset = ((canvas[0] - resized[0]) // 2, (canvas[1] - resized[1]) // 2)
    return DetectorInput(resized[1] / height, resized, (canvas[0], canvas[1]), offset)


def letterbox(image: np.ndarray, plan: DetectorInput) -> np.ndarray:
    """The image resized per `plan`, at its offset (top-left by default) in a black canvas."""
    if (image.shape[1], image.shape[0]) != plan.resized:
        # INTER_LINEAR both ways, as the reference pipeline resizes
        image = cv2.resize(image, plan.resized, interpolation=cv2.INTER_LINEAR)
    if plan.resized == plan.canvas:
        return image
    canvas = np.zeros((plan.canvas[1], plan.canvas[0], 3), dtype=np.uint8)
    x, y = plan.offset
    canvas[y : y + plan.resized[1], x : x + plan.resized[0]] = image
    return canvas
