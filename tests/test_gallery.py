"""The gallery over HTTP against a real server: identification, verification, management, errors."""

from __future__ import annotations

import csv
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import Server, package_photo, read_bgr, shared_path
from helpers import b64

from facerest.config import Settings
from facerest.gallery.calibration import shipped
from facerest.gallery.sqlite import SQLiteStore
from facerest.gallery.store import ModelTag, NewFace
from facerest.models.catalog import Catalog
from facerest.pipeline import ExtractOptions

SETS = ["deepface", "facerec_ageitgey"]
DEFAULT_FMR = Settings.model_fields["verify_fmr"].default


def calibrated_threshold(model: str = "w600k_mbf") -> float:
    """The server's default /verify decision: the shipped calibration's threshold at FMR 1e-3."""
    entry = Catalog.load().get(model)
    assert entry is not None and entry.verify_threshold is not None  # the fallback without one
    calibration = shipped(model)
    assert calibration is not None
    return calibration.threshold_for(DEFAULT_FMR)


def identities(set_name: str) -> tuple[Path, list[tuple[str, str]]]:
    root = shared_path("verify", set_name)
    with (root / "identities.csv").open() as fh:
        return root, [(r["img"], r["identity"]) for r in csv.DictReader(fh)]


def pairs(set_name: str) -> list[tuple[str, str, bool]]:
    root = shared_path("verify", set_name)
    with (root / "pairs.csv").open() as fh:
        return [(r["img_a"], r["img_b"], r["same"] == "1") for r in csv.DictReader(fh)]


def largest(faces: list[dict]) -> dict:
    return max(faces, key=lambda f: (f["bbox"][2] - f["bbox"][0]) * (f["bbox"][3] - f["bbox"][1]))


@pytest.fixture(scope="module")
def embeddings(analyzer) -> dict[str, dict[str, np.ndarray]]:  # type: ignore[no-untyped-def]
    """In-process largest-face embeddings of every shared photo, taken as test_correctness takes them."""
    return embed_sets(analyzer)


@pytest.fixture(scope="module")
def pack_embeddings(pack_analyzer) -> dict[str, dict[str, np.ndarray]]:  # type: ignore[no-untyped-def]
    """The same with each model pack's models (issue 32)."""
    return embed_sets(pack_analyzer)


def embed_sets(analyzer) -> dict[str, dict[str, np.ndarray]]:  # type: ignore[no-untyped-def]
    out: dict[str, dict[str, np.ndarray]] = {}
    for set_name in SETS:
        root, people = identities(set_name)
        results = analyzer.process([read_bgr(root / img) for img, _ in people], ExtractOptions())
        out[set_name] = {}
        for (img, _), result in zip(people, results, strict=True):
            areas = [(f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]) for f in result.faces]
            out[set_name][img] = result.faces[int(np.argmax(areas))].embedding
    return out


def pairwise_accuracy(set_name: str, vectors: dict[str, np.ndarray], threshold: float) -> float:
    decisions = [(float(vectors[a] @ vectors[b]) >= threshold) == same for a, b, same in pairs(set_name)]
    return float(np.mean(decisions))


def test_calibrated_threshold_separates_the_shared_sets(embeddings) -> None:  # type: ignore[no-untyped-def]
    """The calibrated threshold for w600k_mbf sits in the gap between same and different pairs."""
    threshold = calibrated_threshold()
    for set_name in SETS:
        vectors = embeddings[set_name]
        sims = np.array([float(vectors[a] @ vectors[b]) for a, b, _ in pairs(set_name)])
        same = np.array([s for _, _, s in pairs(set_name)])
        print(
            f"\n{set_name}: same-person min {sims[same].min():.3f}, different max {sims[~same].max():.3f}, "
            f"threshold {threshold}"
        )
        assert sims[~same].max() < threshold <= sims[same].min()


@pytest.mark.parametrize("set_name", SETS)
def test_identification_rank1_and_unknowns(
    set_name, pack_server: Server, pack_settings, pack_embeddings
) -> None:  # type: ignore[no-untyped-def]
    """Enrol one photo per identity, search with every other photo; leave each identity out in
    turn. With each model pack (issue 32)."""
    server, embeddings = pack_server, pack_embeddings
    root, people = identities(set_name)
    reference: dict[str, str] = {}
    for img, who in people:
        reference.setdefault(who, img)
    probes = [(img, who) for img, who in people if reference[who] != img]
    gallery = f"id-{set_name}"
    threshold = calibrated_threshold(pack_settings.rec_name)
    with server.client() as client:
        client.delete(f"/gallery/{gallery}")
        for who, img in reference.items():
            r = client.post(
                f"/gallery/{gallery}/subjects/{who}/faces", json={"images": {"data": [b64(root / img)]}}
            )
            assert r.status_code == 200, r.text
            assert len(r.json()["added"]) == 1 and r.json()["failed"] == []
        r = client.post(
            f"/gallery/{gallery}/search",
            json={
                "images": {"data": [b64(root / img) for img, _ in probes]},
                "top_k": len(reference),
                "fmr": DEFAULT_FMR,
            },
        )
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["threshold"] == threshold
        hits = [largest(item["faces"]) for item in answer["data"]]
        rank1 = np.mean(
            [hit["matches"][0]["subject"] == who for hit, (_, who) in zip(hits, probes, strict=True)]
        )
        named = np.mean([hit["subject"] == who for hit, (_, who) in zip(hits, probes, strict=True)])
        verification = pairwise_accuracy(set_name, embeddings[set_name], threshold)
        print(
            f"\n{set_name}: {len(reference)} identities, {len(probes)} probes: rank-1 {rank1:.4f}, "
            f"named at the threshold {named:.4f}; pairwise verification accuracy {verification:.4f}"
        )
        assert rank1 >= verification

        # each identity left out in turn: its photos must match nobody above the threshold
        # (searched with their embeddings: the image path was just exercised above)
        worst = -1.0
        vectors = embeddings[set_name]
        for who in reference:
            out = f"out-{set_name}-{who}"
            client.delete(f"/gallery/{out}")
            for other, img in reference.items():
                if other != who:
                    r = client.post(
                        f"/gallery/{out}/subjects/{other}/faces", json={"embeddings": [vectors[img].tolist()]}
                    )
                    assert r.status_code == 200, r.text
            mine = [vectors[img].tolist() for img, person in probes if person == who]
            if mine:
                r = client.post(f"/gallery/{out}/search", json={"embeddings": mine})
                for item in r.json()["data"]:
                    [hit] = item["faces"]
                    worst = max(worst, hit["similarity"])
                    assert hit["subject"] is None, (who, hit)
            assert client.delete(f"/gallery/{out}").status_code == 200
        print(f"{set_name}: identities left out: highest similarity to someone else {worst:.3f}")


@pytest.mark.parametrize("set_name", SETS)
def test_verify_gives_the_pairwise_decisions(
    set_name, pack_server: Server, pack_settings, pack_embeddings
) -> None:  # type: ignore[no-untyped-def]
    """/verify decides as test_correctness's pair test does (largest face, cosine >= threshold),
    with each model pack (issue 32).

    Every pair goes through /verify as two embeddings; with two images, each photo at least once
    plus every pair within 0.1 of the threshold (the only ones a small difference in the pipeline
    could flip).
    """
    server = pack_server
    root, _ = identities(set_name)
    vectors = pack_embeddings[set_name]
    threshold = calibrated_threshold(pack_settings.rec_name)
    all_pairs = pairs(set_name)
    expected = {(a, b): float(vectors[a] @ vectors[b]) for a, b, _ in all_pairs}
    with_images, seen = [], set()
    for a, b, _ in all_pairs:
        near = abs(expected[(a, b)] - threshold) < 0.1
        if near or a not in seen or b not in seen:
            with_images.append((a, b))
            seen |= {a, b}

    def by_images(pair: tuple[str, str]) -> dict:
        with server.client() as client:
            r = client.post("/verify", json={"images": {"data": [b64(root / pair[0]), b64(root / pair[1])]}})
        assert r.status_code == 200, r.text
        return r.json()

    with ThreadPoolExecutor(4) as pool:
        answers = dict(zip(with_images, pool.map(by_images, with_images), strict=True))
    with server.client() as client:
        for a, b, _ in all_pairs:
            r = client.post("/verify", json={"embeddings": [vectors[a].tolist(), vectors[b].tolist()]})
            assert r.status_code == 200, r.text
            assert r.json()["same"] == (expected[(a, b)] >= threshold), (a, b)
            assert r.json()["similarity"] == pytest.approx(expected[(a, b)], abs=1e-4)
    for (a, b), answer in answers.items():
        assert answer["threshold"] == threshold
        assert answer["same"] == (expected[(a, b)] >= threshold), (a, b, answer)
        assert answer["similarity"] == pytest.approx(expected[(a, b)], abs=2e-3)
    accuracy = np.mean([answers[(a, b)]["same"] == same for a, b, same in all_pairs if (a, b) in answers])
    print(f"\n{set_name}: {len(answers)} pairs verified from images, accuracy {accuracy:.4f}")


def test_gallery_management_over_http(server: Server) -> None:
    players = b64(package_photo("players.jpg"))
    yao = b64(package_photo("yaoming.jpg"))
    with server.client() as client:
        client.delete("/gallery/team")
        r = client.post(
            "/gallery/team/subjects/players/faces", json={"images": {"data": [players]}, "all_faces": True}
        )
        assert r.status_code == 200, r.text
        added = r.json()["added"]
        assert len(added) >= 5 and all(len(a["bbox"]) == 4 and a["prob"] > 0.5 for a in added)
        r = client.post(
            "/gallery/team/subjects/yao/faces",
            json={"images": {"data": [yao, "bm90IGFuIGltYWdl", b64(np.zeros(10, np.uint8).tobytes())]}},
        )
        body = r.json()
        assert r.status_code == 200 and len(body["added"]) == 1
        assert [f["index"] for f in body["failed"]] == [1, 2]
        [team] = [g for g in client.get("/galleries").json()["galleries"] if g["name"] == "team"]
        assert team == {
            **team,
            "model": "w600k_mbf",
            "subjects": 2,
            "faces": len(added) + 1,
            "index": "exact",
        }
        subjects = client.get("/gallery/team/subjects").json()["subjects"]
        assert [{k: s[k] for k in ("subject", "faces")} for s in subjects] == [
            {"subject": "players", "faces": len(added)},
            {"subject": "yao", "faces": 1},
        ]
        face = client.get("/gallery/team/subjects/yao").json()["faces"][0]
        assert set(face) == {
            "face_id",
            "bbox",
            "prob",
            "image_hash",
            "model",
            "added_at",
            "quality",
            "source",
            "has_image",
            "representative",
        }
        assert len(face["image_hash"]) == 64 and face["model"] == "w600k_mbf"

        # the tallest player is Yao Ming: searching his portrait names him, the rest are someone else
        r = client.post("/gallery/team/search", json={"images": {"data": [yao]}, "top_k": 2})
        hit = r.json()["data"][0]["faces"][0]
        assert hit["subject"] == "yao" and hit["similarity"] > 0.99
        assert [m["subject"] for m in hit["matches"]] == ["yao", "players"]
        r = client.post("/verify", json={"images": {"data": [yao]}, "gallery": "team", "subject": "yao"})
        assert r.json()["same"] is True and r.json()["similarity"] > 0.99

        assert client.patch("/gallery/team/subjects/yao", json={"new_name": "yao ming"}).status_code == 200
        conflict = client.patch("/gallery/team/subjects/players", json={"new_name": "yao ming"})
        assert conflict.status_code == 409 and conflict.json()["code"] == "conflict"
        assert client.delete(f"/gallery/team/faces/{added[0]['face_id']}").status_code == 200
        assert client.delete(f"/gallery/team/faces/{added[0]['face_id']}").status_code == 404
        assert client.get("/gallery/team/subjects").json()["subjects"][0]["faces"] == len(added) - 1
        assert client.delete("/gallery/team/subjects/players").status_code == 200
        r = client.post("/gallery/team/search", json={"images": {"data": [players]}})
        named = [f["subject"] for f in r.json()["data"][0]["faces"]]
        assert named.count("yao ming") == 1 and set(named) == {"yao ming", None}
        assert client.delete("/gallery/team").status_code == 200
        assert client.get("/gallery/team/subjects").status_code == 404


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("post", "/gallery/none/search", {"embeddings": [[1.0] * 512]}, 404, "not_found"),
        ("get", "/gallery/none/subjects/x", None, 404, "not_found"),
        ("delete", "/gallery/none", None, 404, "not_found"),
        ("post", "/gallery/g/subjects/s/faces", {"embeddings": [[1.0] * 3]}, 400, "bad_input"),
        ("post", "/gallery/g/subjects/s/faces", {"embeddings": [[0.0] * 512]}, 400, "bad_input"),
        ("post", "/gallery/g/subjects/s/faces", {}, 400, "bad_input"),
        ("post", "/gallery/g/subjects/s/faces", {"embeddings": "x"}, 422, "validation_error"),
        ("post", "/verify", {"embeddings": [[1.0] * 512]}, 400, "bad_input"),
        (
            "post",
            "/verify",
            {"embeddings": [[1.0] * 512, [1.0] * 512], "threshold": 2},
            422,
            "validation_error",
        ),
        ("post", "/verify", {"images": {"data": ["bm90IGFuIGltYWdl", "eA=="]}}, 400, "image_decode_error"),
        (
            "post",
            "/verify",
            {"embeddings": [[1.0] * 512], "gallery": "none", "subject": "x"},
            404,
            "not_found",
        ),
    ],
)
def test_bad_requests_get_clear_4xx(client: httpx.Client, method, path, body, status, code) -> None:  # type: ignore[no-untyped-def]
    r = client.request(method, path, json=body)
    assert (r.status_code, r.json()["code"]) == (status, code), r.text


def test_verify_says_which_image_has_no_face(client: httpx.Client) -> None:
    blank = np.full((200, 200, 3), 128, np.uint8)
    import cv2

    _, jpeg = cv2.imencode(".jpg", blank)
    r = client.post(
        "/verify", json={"images": {"data": [b64(package_photo("yaoming.jpg")), b64(jpeg.tobytes())]}}
    )
    assert r.status_code == 400 and r.json()["code"] == "no_face" and "image 1" in r.json()["detail"]


def test_gallery_of_another_model_is_refused(server: Server) -> None:
    """A gallery recorded with another recognizer answers 409 to enrolment, search and verify."""
    database = server.log_path.parent / "data" / "gallery.db"
    assert database.is_file()
    other = SQLiteStore(database)  # another writer on the server's file, as a second worker would be
    try:
        other.delete_gallery("foreign")
        other.add_faces(
            "foreign", "x", ModelTag("glintr100", "f" * 32, 512), [NewFace(np.ones(512, np.float32))]
        )
    finally:
        other.close()
    vector = (np.ones(512) / np.sqrt(512)).tolist()
    with server.client() as client:
        for method, path, body in [
            ("post", "/gallery/foreign/subjects/x/faces", {"embeddings": [vector]}),
            ("post", "/gallery/foreign/search", {"embeddings": [vector]}),
            ("post", "/verify", {"embeddings": [vector], "gallery": "foreign", "subject": "x"}),
            ("get", "/gallery/foreign/subjects", None),
        ]:
            r = client.request(method, path, json=body)
            assert (r.status_code, r.json()["code"]) == (409, "model_mismatch"), (path, r.text)
            assert "glintr100" in r.json()["detail"]
        assert client.delete("/gallery/foreign").status_code == 200
