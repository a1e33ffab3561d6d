"""Every format clients send decodes to upright BGR pixels; limits hold before full decode."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from conftest import package_photo, read_bgr
from PIL import Image

from facerest.errors import ImageDecodeError, ImageTooLarge
from facerest.imaging.decode import decode_image, exif_orientation, image_size

LIMIT = 50_000_000


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return read_bgr(package_photo("yaoming.jpg"))


def encode(image: np.ndarray, ext: str, *params: int) -> bytes:
    ok, data = cv2.imencode(ext, image, list(params))
    assert ok
    return data.tobytes()


@pytest.mark.parametrize("ext", [".png", ".bmp", ".webp", ".tiff"])
def test_lossless_formats_round_trip(photo, ext):
    params = (cv2.IMWRITE_WEBP_QUALITY, 101) if ext == ".webp" else ()
    decoded = decode_image(encode(photo, ext, *params), max_pixels=LIMIT)
    assert decoded.shape == photo.shape and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - photo).max() <= 1


def test_jpeg(photo):
    decoded = decode_image(encode(photo, ".jpg", cv2.IMWRITE_JPEG_QUALITY, 95), max_pixels=LIMIT)
    assert decoded.shape == photo.shape
    assert np.abs(decoded.astype(int) - photo).mean() < 3


def test_grayscale_rgba_and_16_bit(photo):
    gray = cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY)
    out = decode_image(encode(gray, ".png"), max_pixels=LIMIT)
    assert out.shape == photo.shape and (out[:, :, 0] == gray).all()

    rgba = cv2.cvtColor(photo, cv2.COLOR_BGR2BGRA)
    out = decode_image(encode(rgba, ".png"), max_pixels=LIMIT)
    assert out.shape == photo.shape and np.abs(out.astype(int) - photo).max() <= 1

    deep = photo.astype(np.uint16) * 257
    out = decode_image(encode(deep, ".png"), max_pixels=LIMIT)
    assert out.dtype == np.uint8 and np.abs(out.astype(int) - photo).max() <= 1


def test_gif_first_frame(photo):
    frames = [Image.fromarray(photo[:, :, ::-1]), Image.fromarray(np.zeros_like(photo))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    out = decode_image(buffer.getvalue(), max_pixels=LIMIT)
    assert out.shape == photo.shape
    assert out.mean() > 40  # the photo, not the black second frame


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_exif_orientation_applied(photo, orientation):
    image = Image.fromarray(photo[:, :, ::-1])
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif.tobytes(), quality=95)
    data = buffer.getvalue()
    assert exif_orientation(data) == orientation
    out = decode_image(data, max_pixels=LIMIT)
    h, w = photo.shape[:2]
    assert out.shape[:2] == ((h, w) if orientation in (1, 3) else (w, h))
    # what OpenCV's own EXIF-aware decoder makes of it
    expected = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert np.abs(out.astype(int) - expected).mean() < 2


def test_pixel_limit_checked_from_header():
    big = np.zeros((400, 500, 3), np.uint8)
    data = encode(big, ".png")
    assert image_size(data) == (500, 400)
    with pytest.raises(ImageTooLarge):
        decode_image(data, max_pixels=400 * 500 - 1)


@pytest.mark.parametrize("data", [b"", b"\x00" * 100, b"hello world", b"\xff\xd8\xff\xe0garbage"])
def test_garbage_is_a_decode_error(data):
    with pytest.raises(ImageDecodeError):
        decode_image(data, max_pixels=LIMIT)
