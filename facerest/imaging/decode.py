"""Bytes -> BGR uint8 pixels, for every format clients send, within size limits."""

from __future__ import annotations

import struct

import cv2
import numpy as np
import simplejpeg

from facerest.errors import ImageDecodeError, ImageTooLarge

JPEG_MAGIC = b"\xff\xd8"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: progressive JPEGs from cameras and encoders hold 2 to about 20 scans (FACEREST_MAX_JPEG_SCANS)
DEFAULT_MAX_JPEG_SCANS = 100

# EXIF orientation -> operations that bring the pixels upright
_ORIENT_OPS = {
    2: (None, 1),
    3: (cv2.ROTATE_180, None),
    4: (None, 0),
    5: (cv2.ROTATE_90_CLOCKWISE, 1),
    6: (cv2.ROTATE_90_CLOCKWISE, None),
    7: (cv2.ROTATE_90_COUNTERCLOCKWISE, 1),
    8: (cv2.ROTATE_90_COUNTERCLOCKWISE, None),
}


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation tag of a JPEG (1 when absent or unreadable)."""
    pos = 2
    end = min(len(data), 1 << 20)
    while pos + 4 <= end and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no more metadata
            break
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        if marker == 0xE1 and data[pos + 4 : pos + 10] == b"Exif\x00\x00":
            return _orientation_from_tiff(data[pos + 10 : pos + 2 + length])
        pos += 2 + length
    return 1


def _orientation_from_tiff(tiff: bytes) -> int:
    if len(tiff) < 8:
        return 1
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None:
        return 1
    ifd = struct.unpack(order + "I", tiff[4:8])[0]
    if ifd + 2 > len(tiff):
        return 1
    count = struct.unpack(order + "H", tiff[ifd : ifd + 2])[0]
    for i in range(count):
        at = ifd + 2 + 12 * i
        if at + 12 > len(tiff):
            break
        tag, _type, _n = struct.unpack(order + "HHI", tiff[at : at + 8])
        if tag == 0x0112:
            value = struct.unpack(order + "H", tiff[at + 8 : at + 10])[0]
            return value if 1 <= value <= 8 else 1
    return 1


def apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    rotate, flip = _ORIENT_OPS.get(orientation, (None, None))
    if rotate is not None:
        image = cv2.rotate(image, rotate)
    if flip is not None:
        image = cv2.flip(image, flip)
    return image


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) read from the header without decoding pixels, when the format allows."""
    if data.startswith(PNG_MAGIC) and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data.startswith(JPEG_MAGIC):
        try:
            height, width, _, _ = simplejpeg.decode_jpeg_header(data)
            return width, height
        except ValueError:
            return None
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        return struct.unpack("<HH", data[6:10])
    if data[:2] == b"BM":
        return _bmp_size(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 30:
        kind = data[12:16]
        if kind == b"VP8X":
            width = int.from_bytes(data[24:27], "little") + 1
            height = int.from_bytes(data[27:30], "little") + 1
            return width, height
        if kind == b"VP8 " and len(data) >= 30:
            width, height = struct.unpack("<HH", data[26:30])
            return width & 0x3FFF, height & 0x3FFF
        if kind == b"VP8L" and len(data) >= 25:
            bits = int.from_bytes(data[21:25], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def _bmp_size(data: bytes) -> tuple[int, int] | None:
    """A BMP's size by its DIB header: OS/2 1.x (BITMAPCOREHEADER, 12 bytes) holds 16-bit
    unsigned sides; every later header (16, 40, 52, 56, 64, 108, 124 bytes) 32-bit signed ones,
    a negative height meaning rows stored top-down."""
    if len(data) < 18:
        return None
    header = struct.unpack("<I", data[14:18])[0]
    if header == 12 and len(data) >= 22:
        return struct.unpack("<HH", data[18:22])
    if header >= 16 and len(data) >= 26:
        width, height = struct.unpack("<ii", data[18:26])
        return abs(width), abs(height)
    return None


def jpeg_scans(data: bytes) -> int:
    """How many scans (SOS markers) the first image of a JPEG holds, without decoding it.

    A progressive decoder passes over every coefficient of the image once per scan, so a tiny
    file with thousands of empty scans costs seconds per megapixel. The header segments are walked
    up to the first scan (their payloads, EXIF thumbnails included, may hold any bytes); past it
    a marker byte pair cannot occur inside entropy-coded data (0xFF is stuffed), so the scans are
    the SOS pairs up to the first end-of-image (a phone's second, appended picture is not ours)."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return 0
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xDA:
            end = data.find(b"\xff\xd9", pos)
            return data.count(b"\xff\xda", pos, end if end >= 0 else len(data))
        if marker == 0xD9:
            return 0
        pos += 2 + struct.unpack(">H", data[pos + 2 : pos + 4])[0]
    return 0


def _decode_jpeg(data: bytes) -> np.ndarray | None:
    """libjpeg-turbo (simplejpeg), recovering what it can of a damaged file; None when it cannot
    even read the header (a JPEG variant it lacks), so that OpenCV may try. Once the header is
    read the first decoder has the last word: a file it gave up on after decoding its scans is
    not decoded a second time by OpenCV (twice the cost, for a file that is broken)."""
    try:
        simplejpeg.decode_jpeg_header(data)
    except (ValueError, RuntimeError):
        return None
    try:
        image = simplejpeg.decode_jpeg(data, colorspace="BGR", strict=False)
    except (ValueError, RuntimeError) as exc:
        raise ImageDecodeError(f"the JPEG data cannot be decoded: {exc}") from exc
    return apply_orientation(image, exif_orientation(data))


def to_bgr8(image: np.ndarray) -> np.ndarray:
    """Any depth and channel count -> 3-channel uint8 BGR."""
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype in (np.float32, np.float64):
        image = np.clip(image * 255.0, 0, 255).astype(np.uint8)
    elif image.dtype != np.uint8:
        image = cv2.convertScaleAbs(image)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    channels = image.shape[2]
    if channels == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if channels == 4:
        # composite onto white: transparent avatars are usually drawn on light pages
        alpha = image[:, :, 3:4].astype(np.float32) / 255.0
        rgb = image[:, :, :3].astype(np.float32)
        return (rgb * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    return np.ascontiguousarray(image[:, :, :3])


def decode_image(data: bytes, *, max_pixels: int, max_scans: int = DEFAULT_MAX_JPEG_SCANS) -> np.ndarray:
    """Decode an encoded image to (H, W, 3) uint8 BGR, upright; raises a BadInput subclass."""
    if not data:
        raise ImageDecodeError("empty image")
    size = image_size(data)
    if size is not None and size[0] * size[1] > max_pixels:
        raise ImageTooLarge(
            f"image is {size[0]}x{size[1]} = {size[0] * size[1]} pixels, more than the limit of {max_pixels}"
        )
    image: np.ndarray | None = None
    if data.startswith(JPEG_MAGIC):
        scans = jpeg_scans(data)
        if scans > max_scans:
            raise ImageTooLarge(f"the JPEG holds {scans} scans, more than the limit of {max_scans}")
        image = _decode_jpeg(data)
    if image is None:
        buffer = np.frombuffer(data, dtype=np.uint8)
        flags = cv2.IMREAD_UNCHANGED
        # OpenCV reads an OS/2 1.x BMP unchanged as one grey channel; in colour it reads it right
        if data.startswith(JPEG_MAGIC) or (data[:2] == b"BM" and data[14:18] == b"\x0c\x00\x00\x00"):
            flags = cv2.IMREAD_COLOR
        try:
            image = cv2.imdecode(buffer, flags)
        except cv2.error:
            image = None
        if image is None:
            raise ImageDecodeError(
                "data is not an image in a supported format (JPEG, PNG, WebP, BMP, GIF, TIFF)"
            )
        if size is None and image.shape[0] * image.shape[1] > max_pixels:
            raise ImageTooLarge(f"image has more than {max_pixels} pixels")
        image = to_bgr8(image)
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ImageDecodeError("image has no pixels")
    return image
