"""Small helpers the tests share."""

from __future__ import annotations

import base64
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np

from facerest.serving.local import free_port


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


def many_scans_jpeg(width: int = 7000, height: int = 7000, scans: int = 1500) -> bytes:
    """A valid grey progressive JPEG of `scans` empty scans (about 10 bytes each): a decoder
    passes over all width x height coefficients once per scan (issue 14's 16 KB hostile file)."""

    def segment(marker: int, payload: bytes) -> bytes:
        return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload

    parts = [
        b"\xff\xd8",
        segment(0xDB, b"\x00" + b"\x01" * 64),  # quantisation table 0, all ones
        segment(0xC2, struct.pack(">BHHB", 8, height, width, 1) + b"\x01\x11\x00"),  # progressive
        segment(0xC4, b"\x00" + b"\x01" + b"\x00" * 15 + b"\x00"),  # DC table: one 1-bit code
        segment(0xC4, b"\x10" + b"\x01" + b"\x00" * 15 + b"\x00"),  # AC table: one 1-bit code (EOB)
        segment(0xDA, b"\x01\x01\x00\x00\x00\x00"),  # DC scan, no data
    ]
    parts += [segment(0xDA, b"\x01\x01\x00\x01\x3f\x00")] * (scans - 1)  # AC scans 1..63, no data
    parts.append(b"\xff\xd9")
    return b"".join(parts)


def bmp(image: np.ndarray, header_size: int = 40, top_down: bool = False) -> bytes:
    """A 24-bit BMP of a BGR image with the DIB header of `header_size` bytes: 12 is OS/2 1.x's
    BITMAPCOREHEADER (16-bit sides), 16 OS/2 2.x's short header, 40/52/56/108/124 the Windows
    ones (the fields past the 40 bytes of BITMAPINFOHEADER left zero); `top_down`: rows stored
    first to last, marked by a negative height (not in OS/2 1.x)."""
    height, width = image.shape[:2]
    stride = (width * 3 + 3) // 4 * 4
    rows = image if top_down else image[::-1]
    pixels = b"".join(row.tobytes() + b"\x00" * (stride - width * 3) for row in rows)
    if header_size == 12:
        dib = struct.pack("<IHHHH", 12, width, height, 1, 24)
    else:
        signed_height = -height if top_down else height
        dib = struct.pack(
            "<IiiHHIIiiII", header_size, width, signed_height, 1, 24, 0, len(pixels), 2835, 2835, 0, 0
        )
        dib = (dib + b"\x00" * header_size)[:header_size]
    offset = 14 + len(dib)
    return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + dib + pixels


def serve_until_exit(env: dict[str, str], cwd: Path) -> tuple[int, str]:
    """`facerest serve` until it exits (it should, quickly); its status and output."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("FACEREST_")}
    full.update(
        {"FACEREST_HOST": "127.0.0.1", "FACEREST_PORT": str(free_port()), "FACEREST_THREADS": "1", **env}
    )
    done = subprocess.run(
        [sys.executable, "-m", "facerest.cli", "serve"],
        env=full,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
    )
    return done.returncode, done.stdout + done.stderr


def run_cli(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`facerest ARGS` in a process of its own, with `env` over this one's (FACEREST_* dropped)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("FACEREST_")}
    return subprocess.run(
        [sys.executable, "-m", "facerest.cli", *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if "error: " in line]
