"""Every endpoint against a real server on 127.0.0.1, in both request formats, JSON and msgpack."""

from __future__ import annotations

import base64
import concurrent.futures
import os
import time

import cv2
import msgpack
import numpy as np
import pytest
from conftest import package_photo, read_bgr
from helpers import b64

from facerest.pipeline import ExtractOptions

YAO = package_photo("yaoming.jpg")
PLAYERS = package_photo("players.jpg")


def test_root_redirects_to_docs(client):
    response = client.get("/", follow_redirects=False)
    assert response.status_code in (302, 307)
    assert response.headers["location"].endswith("/docs")
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    assert "ExtractRequest" in schema["components"]["schemas"]


def test_info_lists_models_and_defaults(client):
    info = client.get("/info").json()
    assert info["version"]
    assert info["models"]["det_name"] == "scrfd_500m_bnkps"
    assert info["models"]["rec_name"] == "w600k_mbf"
    assert info["models"]["providers"]["w600k_mbf"].startswith(("onnxruntime:CPU", "openvino:CPU"))
    assert info["defaults"]["threshold"] == 0.6


def test_matrix_products_run_on_one_blas_thread(client):
    """Issue 28: a search of 1,000 posted embeddings multiplied on every core halved the other
    requests' throughput; FACEREST_BLAS_THREADS (1) bounds it, and /info reads what is in force."""
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: BLAS runs one thread whatever the setting")
    assert client.get("/info").json()["blas_threads"] == 1


def test_info_gives_the_licence_of_every_model_in_use(client):
    licences = client.get("/info").json()["models"]["licences"]
    assert set(licences) >= {"scrfd_500m_bnkps", "w600k_mbf"}
    assert licences["w600k_mbf"]["licence"] == "non-commercial research only"
    assert "InsightFace" in licences["w600k_mbf"]["source"]


def test_health_is_ready(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_extract_v2_envelope(pack, pack_client):
    """Run with each model pack (issue 32): the answer has the same shape, the vector the pack
    recognizer's dimension."""
    client = pack_client
    body = {"images": {"data": [b64(YAO)]}, "return_landmarks": True, "verbose_timings": True}
    answer = client.post("/extract", json=body).json()
    assert set(answer["took"]) >= {"total_ms", "read_imgs_ms", "embed_all_ms"}
    [item] = answer["data"]
    assert item["status"] == "ok"
    [face] = item["faces"]
    x1, y1, x2, y2 = face["bbox"]
    assert all(isinstance(v, int) for v in face["bbox"])
    assert 0 <= x1 < x2 and 0 <= y1 < y2
    assert face["size"] == x2 - x1
    assert face["num_det"] == 0
    assert 0.6 < face["prob"] <= 1
    vec = np.array(face["vec"])
    assert vec.shape == (EMBEDDING_DIMS[pack],)
    assert abs(np.linalg.norm(vec) - 1) < 1e-4
    assert face["norm"] > 1
    landmarks = np.array(face["landmarks"])
    assert landmarks.shape == (5, 2)
    # eyes above the nose, nose above the mouth, all inside the box
    assert landmarks[:2, 1].max() < landmarks[2, 1] < landmarks[3:, 1].min()
    assert (landmarks[:, 0] >= x1).all() and (landmarks[:, 0] <= x2).all()


#: the dimension of each model pack's recognizer
EMBEDDING_DIMS = {"default": 512, "commercial": 128}


def test_extract_original_2020_format(client):
    """The 2020 body with max_size answers with a list of faces per image: vec, det, prob, bbox."""
    image = b64(YAO)
    answer = client.post("/extract", json={"images": {"data": [image, image]}, "max_size": [640, 480]}).json()
    assert isinstance(answer, list) and len(answer) == 2
    for faces in answer:
        [face] = faces
        assert face["det"] == 0
        assert len(face["vec"]) == 512
        assert len(face["bbox"]) == 4 and 0 < face["prob"] <= 1


def test_extract_api_ver_1_and_max_size_zero(client):
    answer = client.post(
        "/extract", json={"images": {"data": [b64(YAO)]}, "api_ver": "1", "max_size": [0, 0]}
    ).json()
    assert isinstance(answer, list)
    assert len(answer[0]) == 1 and len(answer[0][0]["vec"]) == 512


def test_data_uri_prefix_is_accepted(client):
    body = {"images": {"data": ["data:image/jpeg;base64," + b64(YAO)]}}
    [item] = client.post("/extract", json=body).json()["data"]
    assert item["status"] == "ok" and len(item["faces"]) == 1


def test_msgpack_both_ways_with_raw_bytes(client):
    # facerest's own face fields: facedata as raw JPEG bytes (InsightFace-REST's are base64 text)
    body = msgpack.packb(
        {"images": {"data": [YAO.read_bytes()]}, "return_face_data": True, "face_fields": "facerest"}
    )
    response = client.post(
        "/extract",
        content=body,
        headers={"Content-Type": "application/msgpack", "Accept": "application/x-msgpack"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-msgpack"
    answer = msgpack.unpackb(response.content)
    [face] = answer["data"][0]["faces"]
    assert len(face["vec"]) == 512 and isinstance(face["vec"][0], float)
    crop = cv2.imdecode(np.frombuffer(face["facedata"], np.uint8), cv2.IMREAD_COLOR)
    assert crop.shape == (112, 112, 3)
    # the same request in JSON gives the same embedding (msgpack carries single floats)
    json_face = client.post("/extract", json={"images": {"data": [b64(YAO)]}}).json()["data"][0]["faces"][0]
    assert np.dot(face["vec"], json_face["vec"]) > 0.9999


def test_msgpack_flag_in_json_body(client):
    response = client.post("/extract", json={"images": {"data": [b64(YAO)]}, "msgpack": True})
    assert response.headers["content-type"] == "application/x-msgpack"
    assert msgpack.unpackb(response.content)["data"][0]["status"] == "ok"


def test_one_bad_image_fails_alone(client):
    good = b64(YAO)
    body = {"images": {"data": [good, b64(b"this is not an image"), "%%% not base64 %%%", good]}}
    data = client.post("/extract", json=body).json()["data"]
    assert [d["status"] for d in data] == ["ok", "failed", "failed", "ok"]
    assert data[1]["traceback"] and "Traceback" not in data[1]["traceback"]
    assert len(data[0]["faces"]) == 1 and data[1]["faces"] == []


def test_detection_only_and_face_data(client):
    body = {"images": {"data": [b64(PLAYERS)]}, "extract_embedding": False, "return_face_data": True}
    faces = client.post("/extract", json=body).json()["data"][0]["faces"]
    assert len(faces) >= 10
    # InsightFace-REST's face fields: every key its clients read, null when not asked for
    assert all(f["vec"] is None and f["norm"] is None for f in faces)
    crop = cv2.imdecode(np.frombuffer(base64.b64decode(faces[0]["facedata"]), np.uint8), cv2.IMREAD_COLOR)
    assert crop.shape == (112, 112, 3)


def test_threshold_limit_and_min_size(client):
    image = b64(PLAYERS)
    all_faces = client.post("/extract", json={"images": {"data": [image]}, "extract_embedding": False}).json()
    faces = all_faces["data"][0]["faces"]
    widths = sorted((f["size"] for f in faces), reverse=True)
    limited = client.post(
        "/extract", json={"images": {"data": [image]}, "extract_embedding": False, "limit_faces": 3}
    ).json()["data"][0]["faces"]
    area = lambda f: (f["bbox"][2] - f["bbox"][0]) * (f["bbox"][3] - f["bbox"][1])  # noqa: E731
    largest = sorted((area(f) for f in faces), reverse=True)[:3]
    assert sorted((area(f) for f in limited), reverse=True) == largest
    cut = widths[len(widths) // 2]
    big = client.post(
        "/extract", json={"images": {"data": [image]}, "extract_embedding": False, "min_face_size": cut}
    ).json()["data"][0]["faces"]
    assert all(f["size"] >= cut - 1 for f in big) and 0 < len(big) < len(faces)
    strict = client.post(
        "/extract", json={"images": {"data": [image]}, "extract_embedding": False, "threshold": 0.85}
    ).json()["data"][0]["faces"]
    assert len(strict) < len(faces) and all(f["prob"] > 0.85 for f in strict)


def test_embed_only_takes_aligned_crops(client):
    image = read_bgr(YAO)
    face = client.post("/extract", json={"images": {"data": [b64(YAO)]}, "return_face_data": True}).json()
    face = face["data"][0]["faces"][0]
    crop = base64.b64decode(face["facedata"])
    answer = client.post("/extract", json={"images": {"data": [b64(crop)]}, "embed_only": True}).json()
    [only] = answer["data"][0]["faces"]
    assert only["bbox"] == [0, 0, 112, 112] and only["prob"] == 1.0
    # the JPEG round trip of the crop changes pixels slightly, not the identity
    assert np.dot(only["vec"], face["vec"]) > 0.95
    assert image.shape[0] > 112


def test_unavailable_feature_is_a_clear_400(client):
    response = client.post("/extract", json={"images": {"data": [b64(YAO)]}, "detect_masks": True})
    assert response.status_code == 400
    assert response.json()["code"] == "feature_unavailable"
    assert "FACEREST_MASK_NAME" in response.json()["detail"]


def test_malformed_bodies_are_4xx(client):
    cases = [
        (b"{not json", {"Content-Type": "application/json"}, 400),
        (b"\xc1\xc1", {"Content-Type": "application/msgpack"}, 400),
        (b'{"images": "nope"}', {"Content-Type": "application/json"}, 422),
        (b'{"images": {"data": [1, 2]}}', {"Content-Type": "application/json"}, 422),
        (b'{"images": {"data": []}, "threshold": 7}', {"Content-Type": "application/json"}, 422),
        (b"[]", {"Content-Type": "application/json"}, 422),
        # "yes" is a boolean to InsightFace-REST (pydantic's lax booleans), "maybe" is not
        (b'{"images": {"data": []}, "extract_ga": "maybe"}', {"Content-Type": "application/json"}, 422),
    ]
    for content, headers, status in cases:
        response = client.post("/extract", content=content, headers=headers)
        assert response.status_code == status, (content, response.text)
        assert response.json()["detail"] and response.json()["code"]


def test_empty_image_list_answers_empty(client):
    answer = client.post("/extract", json={"images": {"data": []}}).json()
    assert answer["data"] == []


def test_draw_detections_json_and_multipart(client):
    response = client.post("/draw_detections", json={"images": {"data": [b64(PLAYERS)]}})
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    drawn = cv2.imdecode(np.frombuffer(response.content, np.uint8), cv2.IMREAD_COLOR)
    original = read_bgr(PLAYERS)
    assert drawn.shape[1] == original.shape[1] and drawn.shape[0] > original.shape[0]  # footer added
    # green boxes were drawn: many more pure-green pixels than in the photo
    green = lambda img: int(((img[:, :, 1] > 180) & (img[:, :, 0] < 40) & (img[:, :, 2] < 40)).sum())  # noqa: E731
    assert green(drawn) > green(original) + 500

    several = client.post("/draw_detections", json={"images": {"data": [b64(YAO), b64(b"junk")]}}).json()
    assert [d["status"] for d in several["data"]] == ["ok", "failed"]

    with PLAYERS.open("rb") as fh:
        response = client.post(
            "/multipart/draw_detections",
            files={"file": ("players.jpg", fh, "image/jpeg")},
            data={"threshold": "0.7", "draw_scores": "false", "limit_faces": "2"},
        )
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    assert cv2.imdecode(np.frombuffer(response.content, np.uint8), cv2.IMREAD_COLOR) is not None


def test_multipart_extract(client):
    with YAO.open("rb") as a, PLAYERS.open("rb") as b:
        response = client.post(
            "/multipart/extract",
            files=[("files", ("a.jpg", a)), ("files", ("b.jpg", b))],
            data={"extract_embedding": "false"},
        )
    data = response.json()["data"]
    assert len(data[0]["faces"]) == 1 and len(data[1]["faces"]) >= 10


def test_concurrent_requests_do_not_stall_each_other(server):
    """Heavy extracts in flight; the event loop still answers /info at once."""
    big = b64(PLAYERS)
    with server.client() as c, concurrent.futures.ThreadPoolExecutor(6) as pool:
        heavy = [pool.submit(c.post, "/extract", json={"images": {"data": [big] * 2}}) for _ in range(5)]
        time.sleep(0.3)
        started = time.perf_counter()
        assert c.get("/info").status_code == 200
        info_latency = time.perf_counter() - started
        done = [f.result() for f in heavy]
        heavy_latency = time.perf_counter() - started
    assert all(r.status_code == 200 for r in done)
    assert info_latency < heavy_latency / 3, (info_latency, heavy_latency)


def test_detect_scale_per_request(client, analyzer):
    """`detect_scale` picks the policy for one request: "reference" gives the embedding the
    reference scale gives in-process (galleries enrolled elsewhere), the default the adaptive one
    (yaoming.jpg is small: the two scales differ for it)."""
    image = read_bgr(YAO)
    expected = {
        policy: analyzer.process([image], ExtractOptions(detect_scale=policy))[0].faces[0].embedding
        for policy in ("reference", "adaptive")
    }
    assert float(expected["reference"] @ expected["adaptive"]) < 0.999

    def served(**extra: object) -> np.ndarray:
        body = {"images": {"data": [b64(YAO)]}, **extra}
        [face] = client.post("/extract", json=body).json()["data"][0]["faces"]
        return np.asarray(face["vec"], np.float32)

    assert float(served(detect_scale="reference") @ expected["reference"]) > 0.9999
    assert float(served() @ expected["adaptive"]) > 0.9999
    refused = client.post("/extract", json={"images": {"data": [b64(YAO)]}, "detect_scale": "huge"})
    assert refused.status_code == 422
