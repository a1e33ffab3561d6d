"""Request image entries -> decoded pixels, one result or one error per entry.

Memory is bounded before anything is decoded: every image's size is read from its header (formats
whose header gives no size are refused, so no decoder can be tricked into a decompression bomb),
each image must fit `max_image_pixels` and the request as a whole `max_request_pixels`.
"""

from __future__ import annotations

import contextvars
import io
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
from PIL import Image, UnidentifiedImageError

from facerest.config import Settings
from facerest.errors import (
    FaceRestError,
    ImageDecodeError,
    ImageTooLarge,
    RequestTimeout,
    TooManyImages,
    UrlFetchFailed,
)
from facerest.imaging.decode import decode_image, image_size
from facerest.imaging.sources import FetchPolicy, decode_base64, load_source

Loaded = np.ndarray | FaceRestError


def fetch_policy(settings: Settings) -> FetchPolicy:
    return FetchPolicy(
        max_bytes=settings.max_image_bytes,
        timeout_s=settings.url_timeout_s,
        max_redirects=settings.url_max_redirects,
        allowlist=tuple(settings.url_allowlist),
        local_root=settings.local_files_root,
        retries=settings.url_retries,
    )


def check_count(count: int, settings: Settings) -> None:
    if count > settings.max_images_per_request:
        raise TooManyImages(f"{count} images in one request; the limit is {settings.max_images_per_request}")


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header alone: our own readers first, then Pillow's, which open
    lazily (TIFF, PPM, JPEG 2000, lossless JPEG... are sized without decoding a pixel)."""
    size = image_size(data)
    if size is not None:
        return size
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Image.DecompressionBombError:
        return (1 << 31, 1)  # Pillow refuses to even describe it: bigger than any limit we allow
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None


class _PixelBudget:
    def __init__(self, settings: Settings) -> None:
        self.per_image = settings.max_image_pixels
        self.left = settings.max_request_pixels
        self.total = settings.max_request_pixels

    def admit(self, data: bytes) -> None:
        if not data:
            raise ImageDecodeError("empty image")
        size = header_size(data)
        if size is None:
            raise ImageDecodeError(
                "data is not an image in a supported format (JPEG, PNG, WebP, BMP, GIF, TIFF)"
            )
        pixels = size[0] * size[1]
        if pixels > self.per_image:
            raise ImageTooLarge(
                f"image is {size[0]}x{size[1]} = {pixels} pixels, more than the limit of {self.per_image}"
            )
        if pixels > self.left:
            raise ImageTooLarge(
                f"the images of this request hold more than {self.total} pixels together; "
                "send fewer or smaller images per request"
            )
        self.left -= pixels


def _decode(data: bytes | FaceRestError, settings: Settings, budget: _PixelBudget) -> Loaded:
    if isinstance(data, FaceRestError):
        return data
    try:
        if len(data) > settings.max_image_bytes:
            raise ImageTooLarge(
                f"image is {len(data)} bytes, more than the limit of {settings.max_image_bytes}"
            )
        budget.admit(data)
        return decode_image(data, max_pixels=settings.max_image_pixels, max_scans=settings.max_jpeg_scans)
    except FaceRestError as exc:
        return exc


def load_images(
    data: Sequence[str | bytes] | None,
    urls: Sequence[str] | None,
    settings: Settings,
    headers: dict[str, str] | None = None,
    deadline: float | None = None,
) -> list[Loaded]:
    """Decoded images in request order: `data` entries first, then `urls`.

    `deadline` (time.monotonic()) is when the request must be done (default: REQUEST_TIMEOUT_S
    from now): downloads share it, and no image is decoded past it (RequestTimeout, a 504)."""
    phase_ends = deadline if deadline is not None else time.monotonic() + settings.request_timeout_s
    data, urls = list(data or []), list(urls or [])
    check_count(len(data) + len(urls), settings)
    raw: list[bytes | FaceRestError] = []
    for entry in data:
        try:
            if isinstance(entry, str):
                entry = decode_base64(entry, max_bytes=settings.max_image_bytes)
            raw.append(entry)
        except FaceRestError as exc:
            raw.append(exc)
    if urls:
        policy = fetch_policy(settings)
        # all downloads of a request share its time limit: 64 slow URLs fetched 8 at a time must
        # not hold a place in the pipeline for 8 rounds of URL_TIMEOUT_S

        def fetch(url: str) -> bytes | FaceRestError:
            left = phase_ends - time.monotonic()
            try:
                if left <= 0:
                    raise UrlFetchFailed(
                        f"{url} was not fetched: the request's {settings.request_timeout_s} s were spent"
                    )
                return load_source(url, replace(policy, timeout_s=min(policy.timeout_s, left)), headers)
            except FaceRestError as exc:
                return exc

        # each download runs in a copy of this thread's context, so its log lines keep the request id
        contexts = [contextvars.copy_context() for _ in urls]
        with ThreadPoolExecutor(max_workers=min(8, len(urls))) as pool:
            raw.extend(pool.map(lambda context, url: context.run(fetch, url), contexts, urls))
    budget = _PixelBudget(settings)
    decoded = []
    for entry in raw:
        # one image's decode is bounded by its pixels and scans; the request's by its deadline
        # (an entry that already failed, e.g. a download the deadline cut, costs nothing more)
        if not isinstance(entry, FaceRestError) and time.monotonic() > phase_ends:
            raise RequestTimeout(
                f"the request took longer than {settings.request_timeout_s} s (decoding its images)"
            )
        decoded.append(_decode(entry, settings, budget))
    return decoded
