"""InsightFace-REST's own clients against facerest (issue 27), on a real server.

What `ifr_clients` (IFRClient, IFRClientAsync), `examples/process_dir_async.py` and `benchmark.py`
of InsightFace-REST's newest snapshot (2025-06) send, byte for byte where it matters: the bodies
below are built the way those clients build them (the same dict, in the same key order, through
`msgpack.dumps` or `json`), and the answers are parsed with pydantic models written after the
clients' own (`ifr_clients/schemas.py`: Optional fields without defaults, which pydantic 2 makes
required). The clients themselves are not vendored; docs/api.md lists what each field does here.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import requests
from conftest import Server, package_photo, start_server, stop_server
from helpers import b64
from pydantic import BaseModel, ConfigDict, ValidationError

YAO = package_photo("yaoming.jpg")
PLAYERS = package_photo("players.jpg")


# --- the clients' answer models (ifr_clients/schemas.py), field for field -----------------------
class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Took(_Lenient):
    total_ms: float | None


class FacesResponse(_Lenient):
    num_det: int | None
    prob: float | None
    size: int | None
    bbox: list[int] | None
    landmarks: list[list] | None
    norm: float | None
    vec: list | None
    facedata: str | None


class ImageResponse(_Lenient):
    status: str
    took_ms: float | None
    faces: list[FacesResponse] | None


class RecognitionResponse(_Lenient):
    took: Took
    data: list[ImageResponse]


# --- the clients' request bodies -------------------------------------------------------------
def client_body(
    images: dict[str, Any],
    *,
    threshold: float = 0.6,
    extract_embedding: Any = True,
    return_face_data: bool = False,
    return_landmarks: bool = False,
    embed_only: Any = False,
    limit_faces: int = 0,
    min_face_size: int = 0,
    use_msgpack: Any = True,
    img_req_headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """`IFRClient.extract`'s / `IFRClientAsync.extract`'s `req`, key for key (the sync client
    turns img_req_headers=None into {}; the async one sends it as it is: null)."""
    return dict(
        images=images,
        threshold=threshold,
        extract_ga=False,
        extract_embedding=extract_embedding,
        return_face_data=return_face_data,
        return_landmarks=return_landmarks,
        embed_only=embed_only,
        limit_faces=limit_faces,
        min_face_size=min_face_size,
        msgpack=use_msgpack,
        img_req_headers=img_req_headers,
    )


def post(url: str, body: dict[str, Any], *, use_msgpack: bool = True) -> Any:
    """The clients' transport: msgpack with their two headers, or requests' json=; the answer
    decoded as they decode it (msgpack only when the content type is exactly x-msgpack)."""
    if use_msgpack:
        response = requests.post(
            f"{url}/extract",
            data=msgpack.dumps(body),
            timeout=120,
            headers={"content-type": "application/msgpack", "accept": "application/x-msgpack"},
        )
    else:
        response = requests.post(f"{url}/extract", json=body, timeout=120)
    assert response.status_code == 200, response.text
    if response.headers["content-type"] == "application/x-msgpack":
        return msgpack.loads(response.content)
    return json.loads(response.content)


def data_images(*paths: Path, use_msgpack: bool = True) -> dict[str, Any]:
    return {"data": [p.read_bytes() if use_msgpack else b64(p) for p in paths]}


# --- the tests ------------------------------------------------------------------------------
def test_server_info_gives_what_the_clients_print(server: Server):
    """`server_info(show=True)` and benchmark.py read these keys (KeyError 'max_size' before)."""
    info = requests.get(f"{server.url}/info", timeout=30).json()
    printed = [
        info["models"][key]
        for key in (
            "inference_backend",
            "det_name",
            "rec_name",
            "rec_batch_size",
            "det_batch_size",
            "max_size",
        )
    ]
    assert printed[5] == [640, 640]
    assert info["defaults"]["det_thresh"] == 0.6 and info["defaults"]["img_req_headers"] == {}


@pytest.mark.parametrize("use_msgpack", [True, False], ids=["msgpack", "json"])
def test_async_client_sends_null_headers(server: Server, use_msgpack: bool):
    """IFRClientAsync sends `img_req_headers: null` unless given (a 422 before): every async call
    and process_dir_async.py over a folder depend on it."""
    body = client_body(
        data_images(YAO, use_msgpack=use_msgpack), use_msgpack=use_msgpack, img_req_headers=None
    )
    assert body["img_req_headers"] is None
    answer = post(server.url, body, use_msgpack=use_msgpack)
    assert answer["data"][0]["status"] == "ok" and len(answer["data"][0]["faces"]) == 1


@pytest.mark.parametrize(
    "field",
    [
        "threshold",
        "extract_embedding",
        "return_face_data",
        "return_landmarks",
        "embed_only",
        "limit_faces",
        "min_face_size",
        "msgpack",
        "extract_ga",
    ],
)
def test_every_optional_field_takes_null(server: Server, field: str):
    """InsightFace-REST's request fields are all Optional: null means the default."""
    body = client_body(data_images(YAO), img_req_headers={})
    body[field] = None
    answer = post(server.url, body)
    [face] = answer["data"][0]["faces"]
    assert len(face["vec"]) == 512


@pytest.fixture(scope="module")
def images_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """InsightFace-REST's /images root as benchmark.py expects it: test_images/Stallone.jpg (the
    package's one-face photo stands in, so the test runs without the shared data)."""
    root = tmp_path_factory.mktemp("ifr_images")
    (root / "test_images").mkdir()
    shutil.copy(YAO, root / "test_images" / "Stallone.jpg")
    return root


@pytest.fixture(scope="module")
def rooted(models_dir: Path, images_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log_dir = tmp_path_factory.mktemp("ifr_server")
    env = {"FACEREST_MODELS_DIR": str(models_dir), "FACEREST_LOCAL_FILES_ROOT": str(images_root)}
    server = start_server(env, log_dir / "server.log")
    yield server
    stop_server(server)
    assert "Traceback" not in server.log(), server.log()[-5000:]


@pytest.mark.parametrize("msgpack_word", ["True", "False"])
def test_benchmark_body_with_string_booleans(rooted: Server, msgpack_word: str):
    """benchmark.py passes its --use_msgpack text through: `"msgpack": "True"` (a 422 before).
    It sends a server-side path, read under FACEREST_LOCAL_FILES_ROOT as under IFR's /images."""
    body = client_body(
        {"urls": ["test_images/Stallone.jpg"]},
        extract_embedding=True,
        embed_only=False,
        limit_faces=0,
        use_msgpack=msgpack_word,
        img_req_headers={},
    )
    raw = msgpack.dumps(body)
    assert b"\xa7msgpack\xa4True" in raw or b"\xa7msgpack\xa5False" in raw  # the text, not a bool
    response = requests.post(
        f"{rooted.url}/extract",
        data=raw,
        timeout=120,
        headers={"content-type": "application/msgpack", "accept": "application/x-msgpack"},
    )
    assert response.status_code == 200, response.text
    # the Accept header asks for msgpack whatever the body says, as in InsightFace-REST
    assert response.headers["content-type"] == "application/x-msgpack"
    assert len(msgpack.loads(response.content)["data"][0]["faces"]) == 1


@pytest.mark.parametrize(
    ("value", "expected_faces"),
    [("true", 1), ("YES", 1), ("on", 1), (1, 1), (1.0, 1), ("false", 0), ("0", 0), ("no", 0), (0, 0)],
)
def test_booleans_are_read_as_insightface_rest_reads_them(server: Server, value: Any, expected_faces: int):
    body = {"images": {"data": [b64(YAO)]}, "extract_embedding": value, "return_landmarks": value}
    response = requests.post(f"{server.url}/extract", json=body, timeout=120)
    assert response.status_code == 200, response.text
    [face] = response.json()["data"][0]["faces"]
    assert (face["vec"] is not None, face["landmarks"] is not None) == (bool(expected_faces),) * 2


@pytest.mark.parametrize(
    "body",
    [
        {"extract_embedding": "maybe"},
        {"extract_embedding": 2},
        {"limit_faces": "five"},
        {"limit_faces": "1.5"},
        {"threshold": "high"},
        {"threshold": "1.5"},
        {"img_req_headers": "x"},
    ],
)
def test_what_insightface_rest_refuses_is_refused(server: Server, body: dict[str, Any]):
    response = requests.post(f"{server.url}/extract", json={"images": {"data": []}, **body}, timeout=30)
    assert response.status_code == 422, response.text


def test_numbers_as_text(server: Server):
    body = {"images": {"data": [b64(PLAYERS)]}, "threshold": "0.7", "limit_faces": "2", "min_face_size": "10"}
    response = requests.post(f"{server.url}/extract", json=body, timeout=120)
    assert response.status_code == 200, response.text
    assert len(response.json()["data"][0]["faces"]) == 2


@pytest.mark.parametrize("use_msgpack", [True, False], ids=["msgpack", "json"])
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"extract_embedding": False},
        {"return_landmarks": True},
        {"embed_only": True},
    ],
    ids=["default", "detect-only", "landmarks", "embed-only"],
)
def test_answers_parse_with_the_clients_models(server: Server, use_msgpack: bool, options: dict[str, Any]):
    """raw_response=False: every field of FacesResponse is required (landmarks and facedata were
    missing unless asked, vec and norm on detection only)."""
    image = PLAYERS
    if options.get("embed_only"):  # an aligned 112x112 crop, as the server itself cuts it
        crop = post(server.url, client_body(data_images(YAO), return_face_data=True, img_req_headers={}))
        image_bytes = __import__("base64").b64decode(crop["data"][0]["faces"][0]["facedata"])
        images = {"data": [image_bytes if use_msgpack else b64(image_bytes)]}
    else:
        images = data_images(image, use_msgpack=use_msgpack)
    body = client_body(images, use_msgpack=use_msgpack, img_req_headers={}, **options)
    parsed = RecognitionResponse.model_validate(post(server.url, body, use_msgpack=use_msgpack))
    faces = parsed.data[0].faces
    assert parsed.data[0].status == "ok" and faces
    for face in faces:
        assert face.facedata is None
        assert (face.landmarks is not None) == bool(options.get("return_landmarks"))
        assert (face.vec is None, face.norm is None) == (options.get("extract_embedding") is False,) * 2
        if face.vec is not None:
            assert abs(float(np.linalg.norm(face.vec)) - 1) < 1e-3
    if options.get("embed_only"):
        assert faces[0].bbox == [0, 0, 112, 112] and faces[0].prob == 1


def test_a_missing_key_would_fail_the_clients_models():
    """The models above are as strict as the clients': the test above can fail."""
    with pytest.raises(ValidationError, match="landmarks"):
        FacesResponse.model_validate(
            {
                "num_det": 0,
                "prob": 0.9,
                "size": 10,
                "bbox": [0, 0, 10, 10],
                "norm": 1,
                "vec": [],
                "facedata": None,
            }
        )


@pytest.mark.parametrize("use_msgpack", [True, False], ids=["msgpack", "json"])
def test_limit_faces_keeps_the_largest_first(server: Server, use_msgpack: bool):
    """sort_boxes: past limit_faces, the faces by box area, largest first (clients take faces[0])."""
    everyone = post(
        server.url, client_body(data_images(PLAYERS), extract_embedding=False, img_req_headers={})
    )
    boxes = [f["bbox"] for f in everyone["data"][0]["faces"]]
    areas = sorted(((b[2] - b[0]) * (b[3] - b[1]) for b in boxes), reverse=True)
    limited = post(
        server.url,
        client_body(
            data_images(PLAYERS, use_msgpack=use_msgpack),
            extract_embedding=False,
            limit_faces=5,
            use_msgpack=use_msgpack,
            img_req_headers={},
        ),
        use_msgpack=use_msgpack,
    )
    faces = limited["data"][0]["faces"]
    got = [(f["bbox"][2] - f["bbox"][0]) * (f["bbox"][3] - f["bbox"][1]) for f in faces]
    assert len(boxes) > 5
    assert got == areas[:5]
    assert [f["num_det"] for f in faces] == list(range(5))


@pytest.mark.parametrize("use_msgpack", [True, False], ids=["msgpack", "json"])
def test_gender_is_the_class_index(server: Server, use_msgpack: bool):
    """InsightFace-REST answers gender 0 (female) or 1 (male) and age as an int."""
    body = client_body(data_images(YAO, use_msgpack=use_msgpack), use_msgpack=use_msgpack, img_req_headers={})
    body["extract_ga"] = True
    [face] = post(server.url, body, use_msgpack=use_msgpack)["data"][0]["faces"]
    assert face["gender"] == 1 and type(face["gender"]) is int
    assert isinstance(face["age"], int) and 15 < face["age"] < 70
    assert face["mask"] is None and face["mask_probs"] is None


def test_facerest_fields_keep_facerest_answers(server: Server):
    """`face_fields: "facerest"` (facerest's own client): gender as a word, only the fields asked
    for, facedata as bytes in msgpack."""
    body = {"images": {"data": [YAO.read_bytes()]}, "extract_ga": True, "return_face_data": True}
    body["face_fields"] = "facerest"
    answer = msgpack.loads(
        requests.post(
            f"{server.url}/extract",
            data=msgpack.dumps(body),
            headers={"content-type": "application/msgpack", "accept": "application/x-msgpack"},
            timeout=120,
        ).content
    )
    [face] = answer["data"][0]["faces"]
    assert face["gender"] == "male" and "landmarks" not in face and "mask" not in face
    assert face["facedata"][:2] == b"\xff\xd8"


def test_facedata_is_base64_text_in_msgpack_too(server: Server):
    """InsightFace-REST base64-encodes facedata in msgpack answers as well; its client's
    decode_face_data turns text into bytes (and leaves bytes alone)."""
    body = client_body(data_images(YAO), return_face_data=True, img_req_headers={})
    [face] = post(server.url, body)["data"][0]["faces"]
    assert isinstance(face["facedata"], str)
    assert __import__("base64").b64decode(face["facedata"])[:2] == b"\xff\xd8"


def test_facerest_client_reads_its_own_answers(server: Server):
    from facerest.client import Client

    with Client(server.url, timeout=120) as fr:
        [face] = fr.extract([YAO], extract_ga=True).images[0].faces
    assert face.gender == "male"


def test_the_2020_format_in_insightface_fields(server: Server):
    """A 2020 body (max_size, no api_ver): a list per image of faces with the 2020 keys."""
    body = {"images": {"data": [b64(YAO)]}, "max_size": [640, 480], "extract_ga": True}
    [[face]] = requests.post(f"{server.url}/extract", json=body, timeout=120).json()
    assert {"vec", "det", "prob", "bbox", "norm", "gender", "age", "mask_prob", "status"} <= set(face)
    assert face["status"] == "Ok" and face["det"] == 0 and face["gender"] == 1 and face["mask_prob"] is None
