"""Request image entries -> decoded pixels, one result or one error per entry."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from facerest.config import Settings
from facerest.errors import FaceRestError, ImageTooLarge, TooManyImages
from facerest.imaging.decode import decode_image
from facerest.imaging.sources import FetchPolicy, decode_base64, load_source

Loaded = np.ndarray | FaceRestError


def fetch_policy(settings: Settings) -> FetchPolicy:
    return FetchPolicy(
        max_bytes=settings.max_image_bytes,
        timeout_s=settings.url_timeout_s,
        max_redirects=settings.url_max_redirects,
        allowlist=tuple(settings.url_allowlist),
        local_root=settings.local_files_root,
    )


def check_count(count: int, settings: Settings) -> None:
    if count > settings.max_images_per_request:
        raise TooManyImages(f"{count} images in one request; the limit is {settings.max_images_per_request}")


def _decode(data: bytes, settings: Settings) -> Loaded:
    try:
        if len(data) > settings.max_image_bytes:
            raise ImageTooLarge(
                f"image is {len(data)} bytes, more than the limit of {settings.max_image_bytes}"
            )
        return decode_image(data, max_pixels=settings.max_image_pixels)
    except FaceRestError as exc:
        return exc


def load_images(
    data: Sequence[str | bytes] | None,
    urls: Sequence[str] | None,
    settings: Settings,
    headers: dict[str, str] | None = None,
) -> list[Loaded]:
    """Decoded images in request order: `data` entries first, then `urls`."""
    data, urls = list(data or []), list(urls or [])
    check_count(len(data) + len(urls), settings)
    out: list[Loaded] = []
    for entry in data:
        try:
            raw = (
                entry
                if isinstance(entry, bytes)
                else decode_base64(entry, max_bytes=settings.max_image_bytes)
            )
        except FaceRestError as exc:
            out.append(exc)
            continue
        out.append(_decode(raw, settings))
    if urls:
        policy = fetch_policy(settings)

        def fetch(url: str) -> Loaded:
            try:
                return _decode(load_source(url, policy, headers), settings)
            except FaceRestError as exc:
                return exc

        with ThreadPoolExecutor(max_workers=min(8, len(urls))) as pool:
            out.extend(pool.map(fetch, urls))
    return out
