"""The picture kept with a face: enough of it for a person to recognise, and for another recognizer
to embed it again later (issue 32's re-embedding).

A square centred on the detector's box, its side twice the box's longer edge (cut by the image where
it must be), scaled down to at most `size` pixels, JPEG at quality 90, with the detector's 5
landmarks in crop pixels beside it: another recognizer re-aligns on those landmarks with its own
template, or detects again on the crop (a face is half the crop's width, as detectors expect). The
aligned 112x112 ArcFace crop would fix the template and the margin of one model family; this keeps
the context around the face. Measured cost per face: docs/architecture.md ("Face crops").
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import simplejpeg

#: the side of the square kept, in box edges (2: the face and half a face of context each side)
CONTEXT = 2.0
JPEG_QUALITY = 90


@dataclass(slots=True, frozen=True)
class FaceCrop:
    """A JPEG of a face with its landmarks in the JPEG's own pixels."""

    jpeg: bytes
    width: int
    height: int
    landmarks: list[list[float]] | None = None  # 5 [x, y], crop pixels

    def pixels(self) -> np.ndarray:
        """The crop decoded (BGR), as the image it was cut from was: what a recognizer aligns on
        its landmarks to embed the face again (issue 32)."""
        return simplejpeg.decode_jpeg(self.jpeg, colorspace="BGR")


@dataclass(slots=True)
class RawCrop:
    """A crop not yet encoded (video keeps one per track and encodes the best when it ends)."""

    pixels: np.ndarray  # BGR, at most `size` on its longer side
    landmarks: np.ndarray | None  # (5, 2), crop pixels

    def encode(self, quality: int = JPEG_QUALITY) -> FaceCrop:
        height, width = self.pixels.shape[:2]
        jpeg = simplejpeg.encode_jpeg(np.ascontiguousarray(self.pixels), quality=quality, colorspace="BGR")
        points = (
            None
            if self.landmarks is None
            else [[round(float(x), 2), round(float(y), 2)] for x, y in self.landmarks]
        )
        return FaceCrop(jpeg, width, height, points)


def cut_crop(
    image: np.ndarray, bbox: np.ndarray | list[float], landmarks: np.ndarray | None, size: int
) -> RawCrop | None:
    """The square around the face (cut by the image), scaled to at most `size`; None when nothing
    of the box lies inside the image."""
    x1, y1, x2, y2 = (float(v) for v in bbox)
    side = CONTEXT * max(x2 - x1, y2 - y1)
    if side <= 0:
        return None
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    height, width = image.shape[:2]
    left, top = max(0, round(cx - side / 2)), max(0, round(cy - side / 2))
    right, bottom = min(width, round(cx + side / 2)), min(height, round(cy + side / 2))
    if right - left < 2 or bottom - top < 2:
        return None
    patch = image[top:bottom, left:right]
    scale = min(1.0, size / max(right - left, bottom - top))
    if scale < 1.0:
        out_w, out_h = max(1, round((right - left) * scale)), max(1, round((bottom - top) * scale))
        # INTER_AREA: a downscale that averages (no aliasing, which would cost a later embedding)
        patch = cv2.resize(patch, (out_w, out_h), interpolation=cv2.INTER_AREA)
        scale_x, scale_y = out_w / (right - left), out_h / (bottom - top)
    else:
        patch = patch.copy()  # not a view: the frame or image it came from can be freed
        scale_x = scale_y = 1.0
    points = None
    if landmarks is not None:
        points = (np.asarray(landmarks, np.float32) - [left, top]) * [scale_x, scale_y]
    return RawCrop(patch, points)


def face_crop(
    image: np.ndarray, bbox: np.ndarray | list[float], landmarks: np.ndarray | None, size: int
) -> FaceCrop | None:
    """The JPEG crop of one face of `image` (BGR); None when the box is outside the image."""
    raw = cut_crop(image, bbox, landmarks, size)
    return None if raw is None else raw.encode()
