"""Hostile inputs, one error shape, metrics and request ids, against the real server on 127.0.0.1.

The hostile corpus is generated here; each case must get its documented answer (docs/reliability.md):
a 4xx with `{"detail", "code"}` for a bad request, a per-image `failed` with a `code` for a bad
image, and the server must stay up with its memory bounded.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import package_photo, read_bgr
from helpers import b64
from PIL import Image

YAO = package_photo("yaoming.jpg")
YAO_BYTES = YAO.read_bytes()

# what each kind of bad image is answered with, per image (status "failed" and this code)
DECODE = {"image_decode_error"}
TOO_LARGE = {"image_too_large"}


def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak) of a process, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


# --- the corpus ---


def png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A real, valid 8-bit grey PNG of width x height zeros: ~1 MB compressed, 900 MB decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte + pixels
    parts = [compressor.compress(row) for _ in range(height)]
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")
    )


def jpeg_with_size(width: int, height: int) -> bytes:
    """yaoming.jpg with its frame header claiming another size (a JPEG 'bomb' by its header)."""
    data = bytearray(YAO_BYTES)
    pos = 2
    while data[pos] == 0xFF:
        marker, length = data[pos + 1], struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        if 0xC0 <= marker <= 0xC2:
            data[pos + 5 : pos + 9] = struct.pack(">HH", height, width)
            return bytes(data)
        pos += 2 + length
    raise AssertionError("no SOF marker")


def encode(image: np.ndarray, ext: str) -> bytes:
    ok, buffer = cv2.imencode(ext, image)
    assert ok
    return buffer.tobytes()


def pil_bytes(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **kwargs)
    return out.getvalue()


def corrupt(data: bytes, seed: int = 0) -> bytes:
    """Overwrite a stretch in the middle of the data (the compressed stream) with noise."""
    rng = np.random.default_rng(seed)
    out = bytearray(data)
    start = len(out) // 3
    out[start : start + 2000] = rng.integers(0, 256, 2000, dtype=np.uint8).tobytes()
    return bytes(out)


def good_images() -> dict[str, bytes]:
    """Odd but valid images: each is answered `ok`, with the face when there is one."""
    bgr = read_bgr(YAO)
    rgb = Image.open(YAO).convert("RGB")
    frames = [rgb.convert("P"), rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT).convert("P")]
    return {
        "cmyk_jpeg": pil_bytes(rgb.convert("CMYK"), "JPEG", quality=90),
        "png_16_bit": encode(bgr.astype(np.uint16) * 257, ".png"),
        "animated_gif": pil_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100),
        "tiff": encode(bgr, ".tiff"),
    }


def faceless_images() -> dict[str, bytes]:
    """Valid images too small or too thin to hold a face: `ok` with no faces."""
    return {
        "1x1_png": encode(np.full((1, 1, 3), 128, np.uint8), ".png"),
        "1x1_jpeg": encode(np.full((1, 1, 3), 128, np.uint8), ".jpg"),
        "1x5000_png": encode(np.full((5000, 1, 3), 200, np.uint8), ".png"),
        "5000x1_png": encode(np.full((1, 5000, 3), 200, np.uint8), ".png"),
        "3x4000_jpeg": encode(np.full((4000, 3, 3), 90, np.uint8), ".jpg"),
    }


def broken_images() -> dict[str, tuple[bytes, set[str]]]:
    """Bad images and the codes each may fail with."""
    png = encode(read_bgr(YAO), ".png")
    return {
        "zero_bytes": (b"", DECODE),
        "random_bytes": (np.random.default_rng(1).integers(0, 256, 50_000, dtype=np.uint8).tobytes(), DECODE),
        "text": (b"This is a text file, not an image.\n" * 20, DECODE),
        "html": (b"<!doctype html><html><body>404 not found</body></html>", DECODE),
        "truncated_png": (png[: len(png) // 2], DECODE),
        "png_header_only": (png[:33], DECODE),
        "corrupt_png": (corrupt(png), DECODE),
        "jpeg_magic_only": (b"\xff\xd8\xff", DECODE),
        "png_bomb_30000x30000": (png_bomb(), TOO_LARGE),
        "jpeg_header_60000x60000": (jpeg_with_size(60000, 60000), TOO_LARGE),
        "ppm_header_30000x30000": (b"P6\n30000 30000\n255\n" + b"\x00" * 1000, TOO_LARGE),
        "gif_header_65535x65535": (b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\x00" * 100, TOO_LARGE),
        "radiance_hdr": (encode(np.zeros((8, 8, 3), np.float32), ".hdr"), DECODE),  # unsized: refused
    }


def damaged_jpegs() -> dict[str, bytes]:
    """Damaged JPEGs: libjpeg may recover part of the picture (`ok`) or give up (`failed`)."""
    return {
        "truncated_jpeg": YAO_BYTES[: len(YAO_BYTES) // 2],
        "corrupt_jpeg": corrupt(YAO_BYTES),
        "jpeg_without_end": YAO_BYTES[:-2],
    }


def assert_error(response, status: int, code: str | None = None) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, (response.status_code, response.text[:500])
    body = response.json()
    assert set(body) == {"detail", "code"}, body
    assert isinstance(body["detail"], str) and body["detail"]
    assert "Traceback" not in body["detail"]
    if code is not None:
        assert body["code"] == code, body
    return body


def extract(client, images: list[bytes], **options):  # type: ignore[no-untyped-def]
    body = {"images": {"data": [base64.b64encode(i).decode() for i in images]}, **options}
    response = client.post("/extract", json=body)
    assert response.status_code == 200, response.text[:500]
    return response.json()["data"]


@pytest.fixture(scope="module")
def memory_watch(server):  # type: ignore[no-untyped-def]
    """The server's memory before this module's hostile requests; checked once they are all done."""
    before = rss_kib(server.process.pid)
    yield before
    after = rss_kib(server.process.pid)
    # a decoded bomb alone would be 900 MB (grey) to 2.7 GB (BGR); normal work stays well below
    grown_mib = (after["VmHWM"] - max(before["VmHWM"], before["VmRSS"])) / 1024
    assert grown_mib < 400, (before, after)
    assert server.process.poll() is None


def test_odd_but_valid_images_are_read(client, memory_watch):
    images = good_images()
    results = extract(client, list(images.values()), extract_embedding=False)
    for name, result in zip(images, results, strict=True):
        assert result["status"] == "ok", (name, result)
        assert len(result["faces"]) == 1, (name, result["faces"])


def test_tiny_and_thin_images_answer_without_faces(client, memory_watch):
    images = faceless_images()
    results = extract(client, list(images.values()))
    for name, result in zip(images, results, strict=True):
        assert result == {"status": "ok", "took_ms": result["took_ms"], "faces": []}, name


def test_broken_images_fail_alone(client, memory_watch):
    cases = broken_images()
    images = [data for data, _ in cases.values()]
    results = extract(client, [YAO_BYTES, *images, YAO_BYTES], extract_embedding=False)
    assert results[0]["status"] == results[-1]["status"] == "ok"  # the good neighbours are untouched
    assert len(results[0]["faces"]) == len(results[-1]["faces"]) == 1
    for (name, (_, codes)), result in zip(cases.items(), results[1:-1], strict=True):
        assert result["status"] == "failed", (name, result)
        assert result["code"] in codes, (name, result)
        assert result["traceback"] and "Traceback" not in result["traceback"], name


def test_damaged_jpegs_are_recovered_or_fail_alone(client, memory_watch):
    cases = damaged_jpegs()
    results = extract(client, list(cases.values()), extract_embedding=False)
    for name, result in zip(cases, results, strict=True):
        assert result["status"] in ("ok", "failed"), name
        if result["status"] == "failed":
            assert result["code"] in DECODE, (name, result)


def test_hostile_images_in_the_other_endpoints(client, memory_watch):
    bomb = png_bomb(20000, 20000)
    with io.BytesIO(bomb) as fh:
        response = client.post("/multipart/extract", files=[("files", ("bomb.png", fh, "image/png"))])
    assert response.json()["data"][0]["code"] == "image_too_large"
    response = client.post("/multipart/draw_detections", files={"file": ("x.png", b"not an image")})
    assert_error(response, 400, "image_decode_error")
    response = client.post("/draw_detections", json={"images": {"data": [b64(bomb)]}})
    assert_error(response, 413, "image_too_large")
    response = client.post("/multipart/extract", files=[("files", ("empty.jpg", b""))])
    assert response.json()["data"][0]["code"] == "image_decode_error"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"images": {"data": ["!!!not base64$$$"]}}, 200, "bad_input"),
        ({"images": {"data": ["data:image/jpeg;base64"]}}, 200, "bad_input"),
        ({"images": {"data": ["a"]}}, 200, "bad_input"),
        ({"images": {"data": "abc"}}, 422, "validation_error"),
        ({"images": {"data": [123]}}, 422, "validation_error"),
        ({"images": {"data": [None]}}, 422, "validation_error"),
        ({"images": {"urls": [{"u": 1}]}}, 422, "validation_error"),
        ({"images": []}, 422, "validation_error"),
        ({"images": None}, 422, "validation_error"),
        ({}, 422, "validation_error"),
        ({"images": {"data": []}, "threshold": "high"}, 422, "validation_error"),
        ({"images": {"data": []}, "threshold": -1}, 422, "validation_error"),
        ({"images": {"data": []}, "limit_faces": -1}, 422, "validation_error"),
        ({"images": {"data": []}, "limit_faces": 1.5}, 422, "validation_error"),
        ({"images": {"data": []}, "max_size": [1, 2, 3]}, 422, "validation_error"),
        ({"images": {"data": []}, "max_size": [100000, 100000]}, 422, "validation_error"),
        ({"images": {"data": []}, "api_ver": "3"}, 422, "validation_error"),
        ({"images": {"data": []}, "img_req_headers": "x"}, 422, "validation_error"),
        ({"images": {"data": []}, "return_face_data": 2}, 422, "validation_error"),
        ({"images": {"data": []}, "return_face_data": "maybe"}, 422, "validation_error"),
        ([1, 2, 3], 422, "validation_error"),
        ("images", 422, "validation_error"),
        (None, 422, "validation_error"),
        ({"images": {"data": ["eA=="] * 1000}}, 413, "too_many_images"),
        ({"images": {"urls": ["http://x"] * 600, "data": ["eA=="] * 400}}, 413, "too_many_images"),
    ],
)
def test_wrong_bodies_get_their_documented_answer(client, body, status, code):
    response = client.post("/extract", content=json.dumps(body), headers={"Content-Type": "application/json"})
    if status == 200:
        [result] = response.json()["data"]
        assert (result["status"], result["code"]) == ("failed", code)
    else:
        assert_error(response, status, code)


def test_empty_lists_answer_empty(client):
    for images in ({"data": []}, {"urls": []}, {"data": [], "urls": []}, {}):
        response = client.post("/extract", json={"images": images})
        assert response.status_code == 200 and response.json()["data"] == [], images
    assert client.post("/extract", json={"images": {}, "api_ver": "1"}).json() == []


def test_malformed_payloads(client):
    deep = b"[" * 100_000 + b"]" * 100_000
    for content, media in (
        (deep, "application/json"),
        (b"", "application/json"),
        (b"\x00\x01\x02", "application/json"),
        (b'{"images": {"data": ["\xff\xfe"]}}', "application/json"),
        (b"\x91" * 5000 + b"\xc0", "application/msgpack"),
    ):
        response = client.post("/extract", content=content, headers={"Content-Type": media})
        assert_error(response, 400)
    response = client.post(
        "/multipart/extract", content=b"garbage", headers={"Content-Type": "multipart/form-data"}
    )
    assert response.status_code in (400, 422)
    assert set(response.json()) == {"detail", "code"}
    response = client.post("/multipart/extract", data={"threshold": "0.5"})  # no files
    assert_error(response, 422, "validation_error")


def test_broken_http_framing_leaves_no_trace(server, client):
    """Bodies whose framing is broken, sent over a raw socket: uvicorn answers 400, the app sees
    a disconnect, nothing is logged as a crash (the session's server fixture checks its log)."""
    host, port = server.url.removeprefix("http://").split(":")
    for request in (
        b"POST /extract HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST /extract HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nContent-Length: 20\r\n\r\n0123456789",
        b"POST /multipart/extract HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n5\r\n--b\r\n\r\nzz\r\n",
    ):
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(request)
            assert sock.recv(4096).startswith(b"HTTP/1.1 400")
    assert client.get("/health").status_code == 200


def test_one_error_shape_everywhere(client):
    assert_error(client.get("/nowhere"), 404, "not_found")
    assert_error(client.delete("/extract"), 405, "method_not_allowed")
    assert_error(client.get("/extract"), 405, "method_not_allowed")
    assert_error(client.post("/extract", json={"images": {"data": [b64(YAO)]}, "detect_masks": True}), 400)
    # a CORS preflight on a server without CORS origins is not answered with any allow header
    preflight = client.options(
        "/extract", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in preflight.headers
    assert preflight.status_code == 405


def test_request_id_echoed_or_generated(client):
    response = client.get("/info", headers={"X-Request-ID": "client-id-42"})
    assert response.headers["x-request-id"] == "client-id-42"
    generated = client.get("/info").headers["x-request-id"]
    assert len(generated) == 32 and int(generated, 16) >= 0
    # an id that would pollute logs is replaced, not echoed
    replaced = client.get("/info", headers={"X-Request-ID": "a b\tc" + "x" * 300}).headers["x-request-id"]
    assert len(replaced) == 32 and " " not in replaced
    assert client.get("/nowhere", headers={"X-Request-ID": "err-1"}).headers["x-request-id"] == "err-1"


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        series, _, value = line.rpartition(" ")
        if series.split("{")[0] != name:
            continue
        found = dict(
            part.split("=", 1) for part in series.partition("{")[2].rstrip("}").split(",") if "=" in part
        )
        if all(found.get(k) == json.dumps(v) for k, v in labels.items()):
            return float(value)
    return 0.0


def test_metrics_count_requests_faces_and_errors(client):
    before = client.get("/metrics")
    assert before.status_code == 200
    assert before.headers["content-type"].startswith("text/plain")
    extract(client, [YAO_BYTES, b"junk"], extract_embedding=False)
    client.post("/extract", json={"images": {"data": ["eA=="] * 1000}})
    after = client.get("/metrics").text

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before.text, name, **labels)

    assert delta("facerest_requests_total", method="POST", path="/extract", status="200") == 1
    assert delta("facerest_requests_total", method="POST", path="/extract", status="413") == 1
    assert delta("facerest_errors_total", code="too_many_images") == 1
    assert delta("facerest_faces_total") == 1
    assert delta("facerest_images_total", status="failed") == 1
    assert delta("facerest_request_seconds_count", path="/extract") == 2
    assert metric(after, "facerest_request_seconds_bucket", path="/extract", le="+Inf") >= 2
    assert "facerest_queue_depth" in after and "facerest_requests_in_flight" in after
    assert metric(after, "facerest_queue_depth") == 0  # nothing waits once the answers are in
    # the one decodable photo ran the detector once (its face is found by the first pass) and,
    # without embeddings, never the recognizer
    assert delta("facerest_inference_inputs_total", model="scrfd_500m_bnkps") == 1
    assert delta("facerest_inference_batches_total", model="scrfd_500m_bnkps") == 1
    assert delta("facerest_inference_inputs_total", model="w600k_mbf") == 0
    # unknown paths are counted under one label, not one per path
    client.get("/random/path/123")
    assert metric(client.get("/metrics").text, "facerest_requests_total", path="unmatched", status="404") >= 1
