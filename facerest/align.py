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


def norm_crop(image: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """The aligned `size`x`size` crop of one face."""
    matrix = arcface_matrix(landmarks, size)
    return cv2.warpAffine(image, matrix, (size, size), borderValue=0.0)
