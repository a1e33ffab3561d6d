"""Issue 31 through a real server: CompreFace's Python SDK and DeepStack's clients from PyPI against
facerest (must show 1 and 2), Double-Take's and CodeProject.AI's requests as they send them, two
keys that each reach only their own gallery through both APIs (must show 4), calibrated
similarities, and bad input answered in each API's error shape, never a 500."""

from __future__ import annotations

import csv
import itertools
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import Server, package_photo, shared_path, start_server, stop_server

from facerest.access.keys import key_digest
from facerest.access.roles import Principal
from facerest.api.access import key_gallery
from facerest.api.compat import confidence
from facerest.api.compreface import face_id_of, uuid_of
from facerest.errors import Forbidden
from facerest.gallery.calibration import decide, shipped

KEY_A = "5f0b8c3e-0000-4000-8000-00000000000a"  # CompreFace's keys are UUIDs
KEY_B = "5f0b8c3e-0000-4000-8000-00000000000b"
VIEWER_A = "5f0b8c3e-0000-4000-8000-0000000000a1"  # may search and list "home", not enrol
KEY_TWO = "5f0b8c3e-0000-4000-8000-000000000002"  # of two galleries: no one service
ADMIN = "admin-key"  # FACEREST_API_KEYS: an admin of every gallery, FACEREST_COMPAT_GALLERY here
AS_ADMIN = {"x-api-key": ADMIN}


def _key(name: str, key: str, role: str, galleries: list[str]) -> dict[str, object]:
    """A FACEREST_ACCESS_KEYS entry: how an operator keeps a CompreFace service's existing key."""
    return {"name": name, "role": role, "galleries": galleries, "sha256": key_digest(key)}


COMPAT = {"FACEREST_COMPREFACE_ENABLED": "true", "FACEREST_DEEPSTACK_ENABLED": "true"}
ENV = {
    **COMPAT,
    "FACEREST_API_KEYS": ADMIN,
    "FACEREST_COMPAT_GALLERY": "shared",
    "FACEREST_ACCESS_KEYS": json.dumps(
        [
            _key("home", KEY_A, "operator", ["home"]),
            _key("office", KEY_B, "operator", ["office"]),
            _key("home-viewer", VIEWER_A, "viewer", ["home"]),
            _key("two", KEY_TWO, "operator", ["home", "office"]),
        ]
    ),
}
#: Double-Take's defaults: a match from 60 %, "unknown" below 40 %
MATCH, UNKNOWN = 0.6, 0.4


@pytest.fixture(scope="module")
def compat_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("compat-data")


@pytest.fixture(scope="module")
def compat_server(
    models_dir: Path, compat_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """Keys with roles and galleries (issue 30): one CompreFace service / DeepStack key per gallery."""
    log_dir = tmp_path_factory.mktemp("compat-server")
    env = {"FACEREST_MODELS_DIR": str(models_dir), "FACEREST_DATA_DIR": str(compat_data), **ENV}
    srv = start_server(env, log_dir / "server.log")
    yield srv
    stop_server(srv)
    assert "Traceback" not in srv.log(), srv.log()


@pytest.fixture(scope="module")
def open_server(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """No key anywhere: every request is an admin of every gallery (CodeProject.AI's clients)."""
    log_dir = tmp_path_factory.mktemp("open-server")
    srv = start_server({"FACEREST_MODELS_DIR": str(models_dir), **COMPAT}, log_dir / "server.log")
    yield srv
    stop_server(srv)
    assert "Traceback" not in srv.log(), srv.log()


def people(set_name: str) -> tuple[Path, dict[str, list[str]]]:
    """Photos by identity, in the order of identities.csv."""
    root = shared_path("verify", set_name)
    out: dict[str, list[str]] = {}
    with (root / "identities.csv").open() as fh:
        for row in csv.DictReader(fh):
            out.setdefault(row["identity"], []).append(row["img"])
    return root, out


def largest(result: list[dict]) -> dict:
    return max(
        result,
        key=lambda f: (f["box"]["x_max"] - f["box"]["x_min"]) * (f["box"]["y_max"] - f["box"]["y_min"]),
    )


# --- the pieces, in process ---


def test_similarity_reads_the_decision_at_60_and_strangers_below_40() -> None:
    """0.6 exactly at the decision point in force, below 0.4 just under it, 0.2 a decade."""
    calibration = shipped("w600k_mbf")
    assert calibration is not None
    for subjects in (None, 1, 6, 1000):
        decision = decide(
            calibration, subjects=subjects, default_fmr=1e-3, default_fpir=1e-2, fallback_threshold=0.3
        )
        t = decision.threshold
        assert confidence(t, decision, calibration) == pytest.approx(MATCH, abs=0.02)
        assert confidence(t - 1e-4, decision, calibration) < UNKNOWN
        assert confidence(-0.2, decision, calibration) < 0.3
        assert confidence(0.95, decision, calibration) == 1.0
        # a score strangers reach 100 times less often than the threshold reads 0.8 or more
        assert decision.fmr is not None
        if decision.fmr / 100 >= calibration.min_fmr:
            stricter = calibration.threshold_for(decision.fmr / 100)
            assert confidence(stricter, decision, calibration) >= 0.79
        scores = np.linspace(-0.3, 1.0, 400)
        values = [confidence(float(s), decision, calibration) for s in scores]
        assert all(b >= a for a, b in itertools.pairwise(values)), "not monotone"
    # without a calibration: 0.1 of cosine counts as a decade
    plain = decide(None, default_fmr=1e-3, fallback_threshold=0.3)
    assert confidence(0.3, plain, None) == MATCH
    assert confidence(0.35, plain, None) == pytest.approx(0.7)
    assert confidence(0.25, plain, None) == pytest.approx(0.3)


def test_a_key_reaches_exactly_one_gallery() -> None:
    """The gallery of a CompreFace / DeepStack request is the key's own (api/access.py)."""
    assert key_gallery(Principal("home", "operator", frozenset({"home"})), "shared") == "home"
    assert key_gallery(Principal("boss", "admin"), "shared") == "shared"  # a key of every gallery
    assert key_gallery(Principal("two", "viewer", frozenset({"a", "shared"})), "shared") == "shared"
    with pytest.raises(Forbidden, match="scoped to one gallery"):
        key_gallery(Principal("two", "viewer", frozenset({"a", "b"})), "shared")


def test_image_ids_are_uuids_that_name_face_ids() -> None:
    for face_id in (1, 42, 2**48 + 5, 2**63 - 1):
        text = uuid_of(face_id)
        assert str(uuid.UUID(text)) == text and face_id_of(text) == face_id
    assert face_id_of("17") == 17
    for other in (str(uuid.uuid4()), "zzz", "0", uuid_of(0), "-5", "9" * 30):
        assert face_id_of(other) is None


# --- must show 1: the official CompreFace Python SDK ---


def test_compreface_sdk_recognition_detection_verification(compat_server: Server) -> None:
    from compreface import CompreFace

    root, by_person = people("deepface")
    names = [p for p, photos in by_person.items() if len(photos) >= 2]
    known, strangers = names[:6], [p for p in by_person if p not in names[:6]]
    port = compat_server.url.rsplit(":", 1)[1]
    options = {"limit": 0, "prediction_count": 3, "face_plugins": "age,gender,landmarks", "status": True}
    sdk = CompreFace("http://127.0.0.1", port, options)
    recognition = sdk.init_face_recognition(KEY_A)
    faces, subjects = recognition.get_face_collection(), recognition.get_subjects()
    subjects.delete_all()
    assert subjects.list() == {"subjects": []}

    added = {}
    assert subjects.add(known[0]) == {"subject": known[0]}  # kept once it has a face (docs/moving.md)
    for person in known:
        answer = faces.add(str(root / by_person[person][0]), person)
        assert answer["subject"] == person and uuid.UUID(answer["image_id"]), answer
        added[person] = answer["image_id"]
    assert sorted(subjects.list()["subjects"]) == sorted(known)
    listed = faces.list()
    assert listed["total_elements"] == len(known) and listed["page_number"] == 0
    assert {f["image_id"]: f["subject"] for f in listed["faces"]} == {i: p for p, i in added.items()}

    named, probes, stranger_scores = 0, 0, []
    for person, photos in by_person.items():
        for photo in photos[1:3] if person in known else photos[:2]:
            result = recognition.recognize(str(root / photo))["result"]
            face = largest(result)
            assert {"age", "gender", "landmarks", "box", "subjects"} <= set(face), face
            best = face["subjects"][0]
            if person in known:
                probes += 1
                if best["similarity"] >= MATCH:
                    assert best["subject"] == person, (photo, face["subjects"])
                    named += 1
            else:
                stranger_scores.append(best["similarity"])
    print(
        f"\nCompreFace SDK: {named}/{probes} photos of enrolled people read >= {MATCH}; "
        f"strangers' best similarity {max(stranger_scores):.3f} at most over {len(stranger_scores)} photos"
    )
    assert named >= 0.9 * probes
    assert strangers and max(stranger_scores) < UNKNOWN

    # the collection's verify, then deletion by id, by subject, rename, delete
    first = known[0]
    verified = faces.verify(str(root / by_person[first][1]), added[first])["result"]
    assert verified[0]["subject"] == first and verified[0]["similarity"] >= MATCH
    other = faces.verify(str(root / by_person[known[1]][1]), added[first])["result"]
    assert other[0]["similarity"] < UNKNOWN
    assert faces.delete(added[first]) == {"image_id": added[first], "subject": first}
    assert faces.delete(added[first])["code"] == 44  # gone: CompreFace's "image not found"
    assert faces.delete_all(known[1]) == {"deleted": 1}
    assert subjects.update(known[2], "renamed") == {"updated": True}
    assert subjects.delete("renamed") == {"subject": "renamed"}
    assert sorted(subjects.list()["subjects"]) == sorted(known[3:])

    # the detection and verification services
    detection = sdk.init_face_detection(KEY_A)
    found = detection.detect(str(package_photo("players.jpg")), {"limit": 3, "face_plugins": "landmarks"})
    assert len(found["result"]) == 3 and all(len(f["landmarks"]) == 5 for f in found["result"])
    verification = sdk.init_face_verification(KEY_A)
    photos = by_person[known[3]]
    same = verification.verify(str(root / photos[0]), str(root / photos[1]))["result"][0]
    assert same["face_matches"][0]["similarity"] >= MATCH and "box" in same["source_image_face"]
    different = verification.verify(str(root / photos[0]), str(root / by_person[strangers[0]][0]))
    assert different["result"][0]["face_matches"][0]["similarity"] < UNKNOWN
    subjects.delete_all()


def test_compreface_base64_and_embeddings(compat_server: Server) -> None:
    """Base64 JSON bodies and the embedding endpoints, as CompreFace documents them."""
    import base64

    root, by_person = people("facerec_ageitgey")
    person, photos = next((p, ph) for p, ph in by_person.items() if len(ph) >= 2)
    headers = {"x-api-key": KEY_B}
    with compat_server.client(headers=headers) as client:
        client.delete("/api/v1/recognition/subjects")
        b64 = base64.b64encode((root / photos[0]).read_bytes()).decode()
        added = client.post("/api/v1/recognition/faces", params={"subject": person}, json={"file": b64})
        assert added.status_code == 201, added.text
        image_id = added.json()["image_id"]
        probe = base64.b64encode((root / photos[1]).read_bytes()).decode()
        found = client.post(
            "/api/v1/recognition/recognize", params={"face_plugins": "calculator"}, json={"file": probe}
        )
        assert found.status_code == 200, found.text
        face = found.json()["result"][0]
        assert face["subjects"][0]["subject"] == person and len(face["embedding"]) == 512
        vector = face["embedding"]
        by_vector = client.post("/api/v1/recognition/embeddings/recognize", json={"embeddings": [vector]})
        assert by_vector.json()["result"][0]["similarities"][0]["subject"] == person
        one = client.post(
            f"/api/v1/recognition/embeddings/faces/{image_id}/verify", json={"embeddings": [vector]}
        )
        assert one.json()["result"][0]["similarity"] >= MATCH
        pair = client.post(
            "/api/v1/verification/embeddings/verify",
            json={"source": vector, "targets": [vector, [-v for v in vector]]},
        ).json()["result"]
        assert pair[0]["similarity"] == 1.0 and pair[1]["similarity"] == 0.0
        deleted = client.post("/api/v1/recognition/faces/delete", json=[image_id, str(uuid.uuid4())])
        assert deleted.json() == [{"image_id": image_id, "subject": person}]


# --- must show 2: DeepStack clients from PyPI, and the posts Double-Take and CodeProject.AI send ---


def test_deepstack_clients_register_recognize_list_delete(compat_server: Server, open_server: Server) -> None:
    import deepstack.core as deepstack_python
    from deepstack_sdk import Face, ServerConfig

    root, by_person = people("facerec_ageitgey")
    pairs = [(p, ph) for p, ph in by_person.items() if len(ph) >= 2]
    (alice, alice_photos), (bob, bob_photos) = pairs[0], pairs[1]
    stranger = next(ph[0] for p, ph in by_person.items() if p not in (alice, bob))
    port = int(compat_server.url.rsplit(":", 1)[1])

    sdk = Face(ServerConfig(compat_server.url, api_key=KEY_B))  # DeepStack's own SDK
    for user in sdk.listFaces().list:  # its answer, parsed by the SDK
        sdk.deleteFace(user)
    assert sdk.registerFace([str(root / alice_photos[0])], alice) is True
    assert sorted(_deepstack_users(compat_server, KEY_B)) == [alice]
    found = sdk.recognizeFace(str(root / alice_photos[1]), min_confidence=MATCH)
    assert [(d.userid, d.confidence >= MATCH) for d in found] == [(alice, True)]
    nobody = sdk.recognizeFace(str(root / stranger))
    assert [d.userid for d in nobody] == ["unknown"] and nobody[0].confidence == 0

    # Home Assistant's DeepStack face integration speaks through deepstack-python
    ha = deepstack_python.DeepstackFace(ip="127.0.0.1", port=port, api_key=KEY_B)
    assert ha.register(bob, (root / bob_photos[0]).read_bytes()) == "face added"
    assert sorted(ha.get_registered_faces()) == sorted([alice, bob])
    predictions = ha.recognize((root / bob_photos[1]).read_bytes())
    assert [p["userid"] for p in predictions] == [bob]
    assert len(ha.detect((root / stranger).read_bytes())) == 1

    assert sdk.deleteFace(alice) is True
    assert _deepstack_users(compat_server, KEY_B) == [bob]

    # Double-Take's deepstack detector: `image` (+ `api_key`) multipart posts
    with compat_server.client() as client:
        url = "/v1/vision/face"
        photo = (root / alice_photos[0]).read_bytes()
        trained = client.post(
            f"{url}/register", files={"image": photo}, data={"userid": alice, "api_key": KEY_B}
        )
        assert trained.status_code == 200 and trained.json()["success"] is True
        again = client.post(
            f"{url}/register", files={"image": photo}, data={"userid": alice, "api_key": KEY_B}
        )
        assert again.json()["message"] == "face updated"
        seen = client.post(
            f"{url}/recognize",
            files={"image": (root / alice_photos[1]).read_bytes()},
            data={"api_key": KEY_B},
        )
        body = seen.json()
        assert body["success"] is True and body["predictions"][0]["userid"] == alice
        assert {"x_min", "y_min", "x_max", "y_max", "confidence"} <= set(body["predictions"][0])
        removed = client.post(f"{url}/delete", data={"userid": alice, "api_key": KEY_B})
        assert removed.json()["success"] is True

    # CodeProject.AI's clients (and Double-Take's aiserver detector) send no key: the default
    # gallery of a server without keys; register takes image1..n, match image1/image2
    with open_server.client() as client:
        client.post(f"{url}/delete", data={"userId": bob})
        registered = client.post(
            f"{url}/register",
            files={
                "image1": (root / bob_photos[0]).read_bytes(),
                "image2": (root / bob_photos[1]).read_bytes(),
            },
            data={"userid": bob},
        )
        assert registered.json()["success"] is True and registered.json()["message"] == "face added"
        listed = client.post(f"{url}/list").json()
        assert listed["success"] is True and bob in listed["faces"] and alice not in listed["faces"]
        recognized = client.post(
            f"{url}/recognize",
            files={"image": (root / bob_photos[0]).read_bytes()},
            data={"min_confidence": "0.4"},
        ).json()
        assert recognized["predictions"][0]["userid"] == bob and recognized["count"] == 1
        matched = client.post(
            f"{url}/match",
            files={
                "image1": (root / bob_photos[0]).read_bytes(),
                "image2": (root / bob_photos[1]).read_bytes(),
            },
        ).json()
        assert matched["success"] is True and matched["similarity"] >= MATCH
        differ = client.post(
            f"{url}/match",
            files={"image1": (root / bob_photos[0]).read_bytes(), "image2": (root / stranger).read_bytes()},
        ).json()
        assert differ["similarity"] < UNKNOWN
        assert client.post(f"{url}/delete", data={"userId": bob}).json()["success"] is True


def _deepstack_users(server: Server, key: str) -> list[str]:
    with server.client() as client:
        return client.post("/v1/vision/face/list", data={"api_key": key}).json()["faces"]


# --- must show 4: a key reaches only its own gallery, through both APIs ---


def test_two_keys_two_galleries_through_both_apis(compat_server: Server, compat_data: Path) -> None:
    root, by_person = people("facerec_ageitgey")
    (alice, alice_photos), (bob, bob_photos) = [(p, ph) for p, ph in by_person.items() if len(ph) >= 2][:2]
    with compat_server.client() as client:
        for key in (KEY_A, KEY_B):
            client.delete("/api/v1/recognition/subjects", headers={"x-api-key": key})
        # alice through CompreFace with key A, bob through DeepStack with key B
        added = client.post(
            "/api/v1/recognition/faces",
            params={"subject": alice},
            headers={"x-api-key": KEY_A},
            files={"file": (root / alice_photos[0]).read_bytes()},
        )
        assert added.status_code == 201, added.text
        registered = client.post(
            "/v1/vision/face/register",
            files={"image": (root / bob_photos[0]).read_bytes()},
            data={"userid": bob, "api_key": KEY_B},
        )
        assert registered.json()["success"] is True
        for key, mine in ((KEY_A, alice), (KEY_B, bob)):
            compreface = client.get("/api/v1/recognition/subjects", headers={"x-api-key": key}).json()
            deepstack = client.post("/v1/vision/face/list", data={"api_key": key}).json()
            assert compreface["subjects"] == [mine] and deepstack["faces"] == [mine], (
                key,
                compreface,
                deepstack,
            )
        # a face of the other key's subject is nobody here, through both APIs
        seen_by_b = client.post(
            "/api/v1/recognition/recognize",
            headers={"x-api-key": KEY_B},
            files={"file": (root / alice_photos[1]).read_bytes()},
        ).json()["result"][0]["subjects"]
        assert [s["subject"] for s in seen_by_b] == [bob] and seen_by_b[0]["similarity"] < UNKNOWN
        seen_by_a = client.post(
            "/v1/vision/face/recognize",
            files={"image": (root / bob_photos[1]).read_bytes()},
            data={"api_key": KEY_A},
        ).json()
        assert [p["userid"] for p in seen_by_a["predictions"]] == ["unknown"]
        # neither key can delete the other's subject; facerest's own API sees two galleries
        assert (
            client.delete(f"/api/v1/recognition/subjects/{bob}", headers={"x-api-key": KEY_A}).json()["code"]
            == 42
        )
        client.post("/v1/vision/face/delete", data={"userid": alice, "api_key": KEY_B})
        assert client.get("/api/v1/recognition/subjects", headers={"x-api-key": KEY_A}).json()[
            "subjects"
        ] == [alice]
        listed = client.get("/galleries", headers=AS_ADMIN).json()["galleries"]
        galleries = {g["name"]: g["subjects"] for g in listed}
        assert galleries["home"] == 1 and galleries["office"] == 1
        # a key the server does not know reaches nothing
        unknown = client.get("/api/v1/recognition/subjects", headers={"x-api-key": str(uuid.uuid4())})
        assert unknown.status_code == 401 and unknown.json()["code"] == 10
        refused = client.post("/v1/vision/face/list", data={"api_key": "guess"})
        assert refused.status_code == 401 and refused.json()["error"] == "Incorrect api key"
    # the audit trail (issue 30) has the compatibility APIs' reads and writes as the native API's
    found = audit(compat_data, "--subject", alice)
    assert ("home", "enrol", "home", "/api/v1/recognition/faces", "ok") in found
    assert ("home", "read", "home", "/api/v1/recognition/subjects", "ok") in found
    assert ("office", "delete", "office", "/v1/vision/face/delete", "ok") in found
    assert all(gallery == key for key, _, gallery, _, _ in found), found  # never the other's
    assert ("office", "enrol", "office", "/v1/vision/face/register", "ok") in audit(
        compat_data, "--subject", bob
    )


def audit(data_dir: Path, *args: str) -> list[tuple[str, str, str, str, str]]:
    """`facerest audit ... --json` as (key, action, gallery, route, outcome) rows."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEREST_")}
    done = subprocess.run(
        [sys.executable, "-m", "facerest.cli", "audit", *args, "--json"],
        env={**env, "FACEREST_DATA_DIR": str(data_dir)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    return [(r["key"], r["action"], r["gallery"], r["route"], r["outcome"]) for r in rows]


# --- bad input: their error shapes, never a 500 ---


def test_bad_input_gets_each_apis_error_shape(compat_server: Server) -> None:
    photo = package_photo("yaoming.jpg").read_bytes()
    blank = _blank_jpeg()
    cf = {"x-api-key": KEY_A}
    compreface_cases = [
        ("post", "/api/v1/recognition/recognize", {"files": {"file": blank}}, 400, 28),
        ("post", "/api/v1/detection/detect", {"files": {"file": blank}}, 400, 28),
        ("post", "/api/v1/recognition/recognize", {"files": {"other": photo}}, 400, 34),
        ("post", "/api/v1/recognition/recognize", {"files": {"file": b"not an image"}}, 400, 21),
        ("post", "/api/v1/recognition/recognize", {"json": {"file": "@@not base64@@"}}, 400, 21),
        ("post", "/api/v1/recognition/recognize", {"json": {"nofile": 1}}, 400, 33),
        (
            "post",
            "/api/v1/recognition/recognize",
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            400,
            36,
        ),
        ("post", "/api/v1/recognition/recognize?limit=-1", {"files": {"file": photo}}, 400, 26),
        ("post", "/api/v1/recognition/recognize?prediction_count=0", {"files": {"file": photo}}, 400, 26),
        ("post", "/api/v1/recognition/recognize?det_prob_threshold=7", {"files": {"file": photo}}, 400, 26),
        ("post", "/api/v1/recognition/faces", {"files": {"file": photo}}, 400, 33),
        ("post", "/api/v1/recognition/faces?subject=a/b", {"files": {"file": photo}}, 400, 36),
        ("delete", "/api/v1/recognition/faces/not-a-uuid", {}, 404, 44),
        ("delete", f"/api/v1/recognition/faces/{uuid.uuid4()}", {}, 404, 44),
        ("delete", "/api/v1/recognition/subjects/nobody", {}, 404, 42),
        ("post", "/api/v1/recognition/embeddings/recognize", {"json": {"embeddings": [[1, 2, 3]]}}, 400, 36),
        (
            "post",
            "/api/v1/recognition/embeddings/recognize",
            {
                "content": b'{"embeddings": [[' + b",".join([b"1e999"] * 512) + b"]]}",
                "headers": {"content-type": "application/json"},
            },
            400,
            36,
        ),
        (
            "post",
            "/api/v1/recognition/embeddings/recognize",
            {"json": {"embeddings": [[0.1] * 512] * 2000}},
            413,
            36,
        ),
        ("post", "/api/v1/recognition/faces/delete", {"json": {"not": "a list"}}, 400, 26),
        ("post", "/api/v1/verification/verify", {"files": {"source_image": photo}}, 400, 34),
        ("post", "/api/v1/verification/embeddings/verify", {"json": {"source": [], "targets": []}}, 400, 26),
    ]
    with compat_server.client(headers=cf) as client:
        for method, path, kwargs, status, code in compreface_cases:
            answer = client.request(method.upper(), path, **kwargs)
            assert (answer.status_code, answer.json().get("code")) == (status, code), (path, answer.text)
            assert set(answer.json()) == {"message", "code"} and answer.json()["message"], answer.text
    deepstack_cases = [
        ("/recognize", {}, "No valid image file found"),
        ("/recognize", {"files": {"image": b"garbage"}}, "invalid image"),
        (
            "/recognize",
            {"files": {"image": photo}, "data": {"min_confidence": "x"}},
            "Invalid value for min_confidence",
        ),
        (
            "/recognize",
            {"files": {"image": photo}, "data": {"min_confidence": "1.5"}},
            "min_confidence cannot be greater than 1",
        ),
        ("", {"data": {"api_key": KEY_A}}, "No valid image file found"),
        ("/register", {"files": {"image": photo}}, "userid not specified"),
        ("/register", {"data": {"userid": "x"}}, "No valid image file found"),
        ("/register", {"files": {"image": blank}, "data": {"userid": "x"}}, "no face detected"),
        ("/delete", {"data": {"api_key": KEY_A}}, "userid not specified"),
        ("/match", {"files": {"image1": photo}}, "No valid image file found"),
        ("/match", {"files": {"image1": photo, "image2": blank}}, "no face found"),
        (
            "/recognize",
            {"content": b"--x\r\n", "headers": {"content-type": "multipart/form-data; boundary=x"}},
            None,
        ),
    ]
    with compat_server.client() as client:
        for path, kwargs, error in deepstack_cases:
            # the key as the header where the case's form has none (issue 30: every request has one)
            headers = {**kwargs.pop("headers", {}), "x-api-key": KEY_A}  # type: ignore[dict-item]
            answer = client.post(f"/v1/vision/face{path}", headers=headers, **kwargs)
            body = answer.json()
            assert 400 <= answer.status_code < 500 and body["success"] is False, (path, answer.text)
            assert error is None or body["error"] == error, (path, body)
        # many files in one form: bounded, refused in DeepStack's shape
        files = [("image", photo)] * 100
        many = client.post("/v1/vision/face/register", files=files, data={"userid": "x", "api_key": KEY_A})
        assert many.status_code == 400 and many.json()["success"] is False, many.text
    assert "Traceback" not in compat_server.log()


def _blank_jpeg() -> bytes:
    import cv2

    return cv2.imencode(".jpg", np.full((240, 320, 3), 127, np.uint8))[1].tobytes()


# --- off by default, listed in /info ---


def test_both_apis_are_off_by_default_and_listed_in_info(server: Server, compat_server: Server) -> None:
    with server.client() as client:
        assert client.post("/api/v1/recognition/recognize", headers={"x-api-key": KEY_A}).status_code == 404
        assert client.post("/v1/vision/face/list").status_code == 404
        apis = client.get("/info").json()["apis"]
        assert apis["compreface"] is False and apis["deepstack"] is False
        assert client.get("/info").json()["publishing"] == {"mqtt": None}
    with compat_server.client() as client:
        apis = client.get("/info", headers=AS_ADMIN).json()["apis"]
        assert apis == {"facerest": True, "insightface_rest": True, "compreface": True, "deepstack": True}


def test_keys_of_facerest_guard_both_apis(compat_server: Server) -> None:
    """Issue 30's keys and rules guard both APIs, answered in each API's shape: no key is 401
    (CompreFace's "missing header", DeepStack's "incorrect key"), a key of every gallery reaches
    FACEREST_COMPAT_GALLERY, a viewer may list and search but not enrol (403), a key of two
    galleries is no one service (403), and a service key is an ordinary facerest key on facerest's
    own routes, limited to its gallery."""
    photo = package_photo("yaoming.jpg").read_bytes()
    with compat_server.client() as client:
        missing = client.get("/api/v1/recognition/subjects")
        assert missing.status_code == 401 and missing.json() == {
            "message": "Missing header: x-api-key",
            "code": 20,
        }
        refused = client.post("/v1/vision/face/list")
        assert refused.status_code == 401 and refused.json()["error"] == "Incorrect api key"
        ok = client.get("/api/v1/recognition/subjects", headers=AS_ADMIN)
        assert ok.status_code == 200 and ok.json() == {"subjects": []}
        assert client.post("/v1/vision/face/list", data={"api_key": ADMIN}).json()["success"] is True
        # the header works for DeepStack too (the form field wins where both are sent)
        assert client.post("/v1/vision/face/list", headers={"x-api-key": KEY_A}).json()["success"] is True
        # a viewer of home: lists and searches, never enrols
        viewer = {"x-api-key": VIEWER_A}
        assert client.get("/api/v1/recognition/subjects", headers=viewer).status_code == 200
        enrol = client.post(
            "/api/v1/recognition/faces", params={"subject": "v"}, headers=viewer, files={"file": photo}
        )
        assert enrol.status_code == 403 and "needs the operator role" in enrol.json()["message"]
        register = client.post(
            "/v1/vision/face/register", files={"image": photo}, data={"userid": "v", "api_key": VIEWER_A}
        )
        assert register.status_code == 403 and register.json()["success"] is False
        assert "needs the operator role" in register.json()["error"]
        # a key of two galleries stands for no one service
        two = client.get("/api/v1/recognition/subjects", headers={"x-api-key": KEY_TWO})
        assert two.status_code == 403 and "scoped to one gallery" in two.json()["message"]
        # facerest's own routes: the service key sees its gallery only
        assert client.get("/galleries", headers={"x-api-key": KEY_A}).status_code == 200
        assert client.get("/gallery/office", headers={"x-api-key": KEY_A}).status_code == 403


def test_a_search_through_compreface_is_a_search(compat_server: Server) -> None:
    """The adapter calls the gallery service: what facerest's own API enrols, CompreFace finds."""
    with compat_server.client() as client:
        client.delete("/gallery/home", headers=AS_ADMIN)
        photo = package_photo("yaoming.jpg").read_bytes()
        import base64

        enrolled = client.post(
            "/gallery/home/subjects/yao/faces",
            json={"images": {"data": [base64.b64encode(photo).decode()]}},
            headers=AS_ADMIN,
        )
        assert enrolled.status_code == 200, enrolled.text
        found = client.post(
            "/api/v1/recognition/recognize", headers={"x-api-key": KEY_A}, files={"file": photo}
        ).json()
        assert found["result"][0]["subjects"][0] == {"subject": "yao", "similarity": 1.0}
        client.delete("/gallery/home", headers=AS_ADMIN)
