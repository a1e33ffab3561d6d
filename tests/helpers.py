"""Small helpers the tests share."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np


def b64(path_or_bytes: Path | bytes) -> str:
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    return base64.b64encode(data).decode("ascii")


def vectors(faces: list[dict]) -> np.ndarray:
    return np.array([f["vec"] for f in faces], dtype=np.float32)


def assert_same_faces(expected: list, got: list, *, min_faces: int = 5) -> None:
    """Two runs of one photo (Face records) found the same faces, in order, with equal embeddings."""
    assert len(got) == len(expected) > min_faces
    for a, b in zip(expected, got, strict=True):
        assert np.abs(a.bbox - b.bbox).max() < 0.5
        assert float(a.embedding @ b.embedding) > 0.9999
