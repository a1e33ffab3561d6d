"""Images as the client takes them (paths, bytes, BGR arrays, URLs) -> the request's image fields."""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from facerest.client.codec import Format
from facerest.client.errors import InvalidImage

ImageLike = str | os.PathLike | bytes | bytearray | np.ndarray


def _is_url(value: str) -> bool:
    return value.startswith(("http://", "https://"))


def image_bytes(image: ImageLike) -> bytes:
    """Encoded bytes for a path, bytes or BGR array (arrays go as lossless PNG)."""
    if isinstance(image, bytes | bytearray):
        return bytes(image)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise InvalidImage(f"arrays must be uint8 HxW or HxWxC (BGR); got {image.dtype} {image.shape}")
        ok, encoded = cv2.imencode(".png", image)
        if not ok:
            raise InvalidImage(f"could not encode an array of shape {image.shape}")
        return encoded.tobytes()
    path = Path(image)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidImage(f"cannot read {path}: {exc.strerror or exc}") from exc


def split_images(images: ImageLike | Sequence[ImageLike]) -> tuple[list[bytes], list[str], list[int]]:
    """-> (encoded data, URLs, the server's answer index for each input in the caller's order).

    The server answers for `data` entries first, then `urls`; the order map puts results back.
    """
    items: Sequence[ImageLike]
    if isinstance(images, str | os.PathLike | bytes | bytearray | np.ndarray):
        items = [images]
    else:
        items = list(images)
    data: list[bytes] = []
    urls: list[str] = []
    where: list[tuple[str, int]] = []
    for item in items:
        if isinstance(item, str) and _is_url(item):
            where.append(("url", len(urls)))
            urls.append(item)
        else:
            where.append(("data", len(data)))
            data.append(image_bytes(item))
    order = [i if kind == "data" else len(data) + i for kind, i in where]
    return data, urls, order


def images_field(data: list[bytes], urls: list[str], fmt: Format) -> dict[str, list]:
    field_: dict[str, list] = {}
    if data:
        field_["data"] = data if fmt == "msgpack" else [base64.b64encode(d).decode("ascii") for d in data]
    if urls:
        field_["urls"] = urls
    return field_
