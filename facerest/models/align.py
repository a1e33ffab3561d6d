"""Five-point similarity alignment to the ArcFace 112x112 template."""

from __future__ import annotations

import cv2
import numpy as np

ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float32,
)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (Umeyama, 1991) mapping src points onto dst; returns 2x3."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(cov) < 0:
        d[1] = -1
    rotation = u @ np.diag(d) @ vt
    src_var = (src_c**2).sum() / len(src)
    scale = (s * d).sum() / src_var if src_var > 0 else 1.0
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - matrix[:, :2] @ src_mean
    return matrix


def arcface_matrix(landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """The 2x3 affine that carries a face's 5 landmarks onto the template scaled to `size`."""
    if size % 112 == 0:
        template = ARCFACE_TEMPLATE * (size / 112.0)
    else:  # 128-based templates shift x by 8 px per 128
        template = ARCFACE_TEMPLATE * (size / 128.0)
        template[:, 0] += 8.0 * size / 128.0
    return similarity_transform(landmarks, template)


#: the most a bilinear warp may shrink before it skips source pixels (its kernel is 2 px wide)
MAX_BILINEAR_SHRINK = 2.0


def norm_crop(
    image: np.ndarray, landmarks: np.ndarray, size: int = 112, *, antialias: bool = False
) -> np.ndarray:
    """The aligned `size`x`size` crop of one face.

    Plain (the reference pipeline's way): one bilinear warp. A face hundreds of pixels wide is
    then sampled every few pixels, and its embedding depends on the photo's resolution: a 1246 px
    face embeds 0.1 of cosine away from the same face sent as a 400 px crop. `antialias` first
    shrinks the face's region with pixel averaging (INTER_AREA) so the warp shrinks at most 2x.
    """
    matrix = arcface_matrix(landmarks, size)
    shrink = 1.0 / np.sqrt(abs(np.linalg.det(matrix[:, :2])))
    if antialias and shrink > MAX_BILINEAR_SHRINK:
        return _antialiased_warp(image, matrix, size, MAX_BILINEAR_SHRINK / shrink)
    return cv2.warpAffine(image, matrix, (size, size), borderValue=0.0)


def _antialiased_warp(image: np.ndarray, matrix: np.ndarray, size: int, factor: float) -> np.ndarray:
    """`matrix`'s warp, done as an area-averaged resize by `factor` of the source region the
    output covers, then the rest of the warp on that smaller region."""
    corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], np.float64)
    source = corners @ cv2.invertAffineTransform(matrix).T
    h, w = image.shape[:2]
    x0, y0 = np.clip(np.floor(source.min(axis=0)) - 2, 0, (w, h)).astype(int)
    x1, y1 = np.clip(np.ceil(source.max(axis=0)) + 2, 0, (w, h)).astype(int)
    if x1 - x0 < 2 or y1 - y0 < 2:  # the face lies outside the image: nothing to average
        return cv2.warpAffine(image, matrix, (size, size), borderValue=0.0)
    region = image[y0:y1, x0:x1]
    small_w, small_h = max(1, round((x1 - x0) * factor)), max(1, round((y1 - y0) * factor))
    small = cv2.resize(region, (small_w, small_h), interpolation=cv2.INTER_AREA)
    kx, ky = small_w / (x1 - x0), small_h / (y1 - y0)
    # small pixel centres: x' + 0.5 = (x - x0 + 0.5) * kx, so x = (x' + 0.5) / kx - 0.5 + x0
    to_source = np.array([[1 / kx, 0, 0.5 / kx - 0.5 + x0], [0, 1 / ky, 0.5 / ky - 0.5 + y0], [0, 0, 1]])
    return cv2.warpAffine(small, matrix @ to_source, (size, size), borderValue=0.0)
