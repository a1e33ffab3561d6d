"""Erasure that leaves nothing (issue 30): a deleted subject's embeddings, name, index codes,
face pictures, review items and feedback are gone from every file, in SQLite (through the API and
`facerest gallery erase-subject`) and in PostgreSQL (its data files, searched raw), and no search
on any replica returns it; a person's data can be exported; retention erases by itself (unsorted
faces, review items, audit files).

The files are searched for the raw bytes: 32-byte windows of each stored embedding (float32, as
both stores keep it), the subject's name, each face's sign code from the index file, and (where
the server keeps face crops) a slice of each crop.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import Server, package_photo, start_server, stop_server
from helpers import b64, run_cli

from facerest.gallery import erasure, open_store
from facerest.gallery.index import IndexOptions
from facerest.gallery.store import ModelTag, NewFace

GALLERY = "people"
ZEB = "Zebulon Quartermaine"
XAN = "Xanthippe Ostrowski"
MIN_FACES = 20


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, 512)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def windows(data: bytes, size: int = 32) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data) - size + 1, 256)]


def files_holding(
    root: Path, needles: dict[str, list[bytes]], skip: tuple[str, ...] = ()
) -> dict[str, list[str]]:
    """{what: [files under root holding any of its byte strings]}, every regular file read raw."""
    found: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file() or any(part in skip for part in path.relative_to(root).parts):
            continue
        try:
            content = path.read_bytes()
        except (PermissionError, FileNotFoundError):  # a file removed while we walked
            continue
        for what, pieces in needles.items():
            if any(piece in content for piece in pieces):
                found.setdefault(what, []).append(str(path.relative_to(root)))
    return found


# --- SQLite, through a running server ---


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("erasure_data")


@pytest.fixture(scope="module")
def server(models_dir: Path, data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {
        "FACEREST_MODELS_DIR": str(models_dir),
        "FACEREST_DATA_DIR": str(data_dir),
        "FACEREST_GALLERY_INDEX_MIN_FACES": str(MIN_FACES),
        # retention: unsorted faces kept ~2 s, swept twice a second
        "FACEREST_RETENTION_UNSORTED_DAYS": str(2 / 86_400),
        "FACEREST_RETENTION_INTERVAL_S": "0.5",
        # the review queue (issue 29) on, keeping named faces too: a subject's own face searched
        # again is queued with the subject as its candidate
        "FACEREST_PEOPLE_REVIEW": "true",
        "FACEREST_PEOPLE_REVIEW_MARGIN": "1.0",
    }
    srv = start_server(env, tmp_path_factory.mktemp("erasure_server") / "server.log")
    yield srv
    stop_server(srv)
    assert "Traceback" not in srv.log(), srv.log()[-5000:]


def stored(client, subject: str, gallery: str = GALLERY) -> tuple[list[int], list[bytes]]:  # type: ignore[no-untyped-def]
    faces = client.get(f"/gallery/{gallery}/subjects/{subject}", params={"embeddings": True}).json()["faces"]
    return [f["face_id"] for f in faces], [np.asarray(f["embedding"], np.float32).tobytes() for f in faces]


def needles_of(client, data_dir: Path, subject: str) -> dict[str, list[bytes]]:  # type: ignore[no-untyped-def]
    ids, embeddings = stored(client, subject)
    needles = {
        "embedding": [w for e in embeddings for w in windows(e)],
        "name": [subject.encode()],
    }
    codes = []
    for path in (data_dir / "gallery.db-index").glob("*.codes"):
        with np.load(path) as saved:
            held = dict(zip(saved["ids"].tolist(), saved["codes"], strict=True))
        codes += [held[i].tobytes() for i in ids if i in held]
    assert len(codes) == len(ids), "every face of the subject has its code in the index file"
    needles["index code"] = codes
    crops = []
    for face_id in ids:  # where the server keeps face crops (issue 29), their bytes too
        crop = client.get(f"/gallery/{GALLERY}/faces/{face_id}/image")
        if crop.status_code == 200:
            crops.append(crop.content[len(crop.content) // 2 : len(crop.content) // 2 + 64])
    if crops:
        needles["crop"] = crops
    return needles


def test_a_deleted_subject_leaves_no_byte_in_the_data_folder(server: Server, data_dir: Path) -> None:
    rng = np.random.default_rng(30)
    zeb, xan, others = unit(rng, 3), unit(rng, 3), unit(rng, MIN_FACES + 10)
    with server.client() as client:
        # the subjects first, then enough faces for the index: the saved index holds their codes
        photo = {"data": [b64(package_photo("yaoming.jpg"))]}
        assert (
            client.post(f"/gallery/{GALLERY}/subjects/{ZEB}/faces", json={"images": photo}).status_code == 200
        )
        for name, vectors in ((ZEB, zeb), (XAN, xan)):
            added = client.post(
                f"/gallery/{GALLERY}/subjects/{name}/faces", json={"embeddings": vectors.tolist()}
            )
            assert added.status_code == 200, added.text
        for i, vector in enumerate(others):
            client.post(
                f"/gallery/{GALLERY}/subjects/other-{i % 10}/faces", json={"embeddings": [vector.tolist()]}
            )
        [info] = client.get("/galleries").json()["galleries"]
        assert info["index"] == "codes" and info["faces"] == 7 + len(others)
        # feedback that names the subject and its faces
        zeb_ids, _ = stored(client, ZEB)
        other_id = stored(client, "other-0")[0][0]
        said = {"different": [[zeb_ids[0], other_id]], "not": [{"face_id": other_id, "subject": ZEB}]}
        assert client.post(f"/gallery/{GALLERY}/feedback", json=said).status_code == 200
        needles = needles_of(client, data_dir, ZEB)
        before = files_holding(data_dir, needles)
        assert set(before) == set(needles), before  # the search finds each of them before
        assert "people.db" in " ".join(before["name"])

        deleted = client.delete(f"/gallery/{GALLERY}/subjects/{ZEB}")
        assert deleted.json()["deleted_faces"] == 4

        assert files_holding(data_dir, needles) == {}
        for exact in (False, True):
            found = client.post(
                f"/gallery/{GALLERY}/search", json={"embeddings": zeb.tolist(), "top_k": 100, "exact": exact}
            ).json()["data"]
            assert all(m["subject"] != ZEB for d in found for f in d["faces"] for m in f["matches"])


def test_erase_and_export_subject_commands(server: Server, data_dir: Path) -> None:
    """The data-subject access export, then `facerest gallery erase-subject` in another process
    while the server runs; the server's own index, caught up, never writes the codes back."""
    env = {"FACEREST_DATA_DIR": str(data_dir), "FACEREST_GALLERY_INDEX_MIN_FACES": str(MIN_FACES)}
    with server.client() as client:
        needles = needles_of(client, data_dir, XAN)
        ids, embeddings = stored(client, XAN)
        searched = client.post(
            f"/gallery/{GALLERY}/search",
            json={"embeddings": [np.frombuffer(embeddings[0], np.float32).tolist()]},
            headers={"X-Request-ID": "dsar-search"},
        )
        assert searched.json()["data"][0]["faces"][0]["subject"] == XAN
    time.sleep(0.3)
    export = data_dir.parent / "xan.json"
    done = run_cli(env, "gallery", "export-subject", GALLERY, XAN, "-o", str(export))
    assert done.returncode == 0, done.stderr
    body = json.loads(export.read_text())
    assert [f["face_id"] for f in body["faces"]] == ids
    assert [np.asarray(f["embedding"], np.float32).tobytes() for f in body["faces"]] == embeddings
    assert "dsar-search" in [r["request_id"] for r in body["audit"]]  # who looked them up
    export.unlink()

    erased = run_cli(env, "gallery", "erase-subject", GALLERY, XAN)
    assert erased.returncode == 0, erased.stderr
    assert f"erased 3 faces of {XAN!r} from {GALLERY!r}: {', '.join(map(str, ids))}" in erased.stdout
    assert "erased from disk: WAL emptied" in erased.stdout
    assert files_holding(data_dir, needles) == {}
    with server.client() as client:  # the server notices, and its index drops the codes too
        found = client.post(
            f"/gallery/{GALLERY}/search",
            json={"embeddings": [np.frombuffer(e, np.float32).tolist() for e in embeddings]},
        ).json()["data"]
        assert all(m["subject"] != XAN for d in found for f in d["faces"] for m in f["matches"])
        assert client.get(f"/gallery/{GALLERY}/subjects/{XAN}").status_code == 404
    assert files_holding(data_dir, needles) == {}
    again = run_cli(env, "gallery", "erase-subject", GALLERY, XAN)
    assert again.returncode == 0 and "nothing held about it was left" in again.stdout


def review_items(client, gallery: str, at_least: int = 0, timeout_s: float = 60) -> list[dict]:  # type: ignore[no-untyped-def]
    """The review queue, once it holds `at_least` items (it fills a moment after a search)."""
    deadline = time.monotonic() + timeout_s
    while True:
        items = client.get(f"/gallery/{gallery}/review", params={"limit": 1000}).json()["items"]
        if len(items) >= at_least or time.monotonic() > deadline:
            return items
        time.sleep(0.2)


def test_a_subject_made_through_the_review_queue_leaves_no_byte(server: Server, data_dir: Path) -> None:
    """Faces that went through the review queue (with their pictures), review items that are
    likely the subject's face, and the name in review items that only mention it: after the
    delete, no file holds any of them; the items that merely mentioned it stay, without it."""
    gallery, quintus = "reviewed", "Quintus Reviewfield"
    photo = {"images": {"data": [b64(package_photo("players.jpg"))]}}
    with server.client() as client:
        other = unit(np.random.default_rng(34), 1).tolist()
        assert (
            client.post(f"/gallery/{gallery}/subjects/other/faces", json={"embeddings": other}).status_code
            == 200
        )
        searched = client.post(f"/gallery/{gallery}/search", json=photo).json()["data"][0]["faces"]
        queued = review_items(client, gallery, at_least=len(searched) // 2)
        assert len(queued) >= 3, queued
        # two of the strangers become the subject, their pictures kept from the queue
        assigned = client.post(
            f"/gallery/{gallery}/review/assign",
            json={"review_ids": [queued[0]["review_id"], queued[1]["review_id"]], "subject": quintus},
        )
        assert assigned.status_code == 200, assigned.text
        # the same photo again: the subject's two faces are named, and queued with it as their
        # candidate (the margin keeps them); a stranger's photo is queued with it as a far candidate
        before = {i["review_id"] for i in review_items(client, gallery)}
        client.post(f"/gallery/{gallery}/search", json=photo)
        client.post(
            f"/gallery/{gallery}/search", json={"images": {"data": [b64(package_photo("yaoming.jpg"))]}}
        )
        items = review_items(client, gallery, at_least=len(before) + 3)
        new = [i for i in items if i["review_id"] not in before]
        scores = [{c["subject"]: c["similarity"] for c in i["candidates"]} for i in new]
        # the server's line between the two: the 1:1 decision point (about 0.33 here)
        own = [i for i, score in zip(new, scores, strict=True) if score.get(quintus, -1) > 0.9]
        mention = [i for i, score in zip(new, scores, strict=True) if -1 < score.get(quintus, -1) < 0.25]
        assert len(own) == 2 and mention, scores
        # "not the subject" said of an old item: the name in the item and in people.db
        said = client.post(
            f"/gallery/{gallery}/review/not",
            json={"review_ids": [queued[2]["review_id"]], "subject": quintus},
        )
        assert said.status_code == 200 and said.json()["changed"] == 1

        ids, embeddings = stored(client, quintus, gallery)
        assert len(ids) == 2
        needles: dict[str, list[bytes]] = {
            "embedding": [w for e in embeddings for w in windows(e)],
            "name": [quintus.encode()],
            "crop": [],
        }
        for path in [f"faces/{i}/image" for i in ids] + [f"review/{i['review_id']}/image" for i in own]:
            crop = client.get(f"/gallery/{gallery}/{path}")
            assert crop.status_code == 200, path
            needles["crop"].append(crop.content[len(crop.content) // 2 : len(crop.content) // 2 + 64])
        found = files_holding(data_dir, needles)
        assert set(found) == set(needles), found
        assert "people.db" in " ".join(found["name"])
        # the access export carries the pictures and the review items that list the person
        export = data_dir.parent / "quintus.json"
        env = {"FACEREST_DATA_DIR": str(data_dir), "FACEREST_GALLERY_INDEX_MIN_FACES": str(MIN_FACES)}
        done = run_cli(env, "gallery", "export-subject", gallery, quintus, "-o", str(export), "--no-audit")
        assert done.returncode == 0, done.stderr
        body = json.loads(export.read_text())
        export.unlink()
        pictures = [base64.b64decode(f["image"]["jpeg_base64"]) for f in body["faces"]]
        assert [f["face_id"] for f in body["faces"]] == ids
        assert pictures == [client.get(f"/gallery/{gallery}/faces/{i}/image").content for i in ids]
        listed = {r["review_id"]: r["similarity"] for r in body["review_items"]}
        assert {i["review_id"] for i in own + mention} <= set(listed)

        deleted = client.delete(f"/gallery/{gallery}/subjects/{quintus}")
        assert deleted.status_code == 200 and deleted.json()["deleted_faces"] == 2

        assert files_holding(data_dir, needles) == {}
        left = {i["review_id"]: i for i in review_items(client, gallery)}
        assert not {i["review_id"] for i in own} & set(left)  # likely the subject's face: erased
        for item in [*mention, queued[2]]:  # only mentioned it: kept, without the name
            kept = left[item["review_id"]]
            assert quintus not in [c["subject"] for c in kept["candidates"]] + kept["excluded"], kept
        assert client.delete(f"/gallery/{gallery}").status_code == 200


def test_retention_erases_unsorted_faces_by_itself(server: Server, data_dir: Path) -> None:
    vectors = unit(np.random.default_rng(31), 3)
    with server.client() as client:
        added = client.post("/gallery/kept/faces", json={"embeddings": vectors.tolist()})
        assert added.status_code == 200 and len(added.json()["added"]) == 3
        ids = [a["face_id"] for a in added.json()["added"]]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            [kept] = [g for g in client.get("/galleries").json()["galleries"] if g["name"] == "kept"]
            if kept["faces"] == 0:
                break
            time.sleep(0.2)
        assert kept["faces"] == 0, "the unsorted faces outlived their retention"
    needles = {"embedding": [w for v in vectors for w in windows(v.tobytes())]}
    assert files_holding(data_dir, needles) == {}
    records = [
        json.loads(line)
        for p in (data_dir / "audit").glob("audit-*.jsonl")
        for line in p.read_text().splitlines()
    ]
    assert any(r["key"] == "retention" and r["faces"] == ids for r in records)


def test_retention_erases_expired_review_items_by_itself(models_dir: Path, tmp_path: Path) -> None:
    """A review item past FACEREST_PEOPLE_REVIEW_MAX_AGE_S in a gallery nobody searches again (so
    no new item pushes it out) is erased by the server's sweep: its picture and embedding leave
    the files, and the trail says the server did it."""
    data = tmp_path / "data"
    env = {
        "FACEREST_MODELS_DIR": str(models_dir),
        "FACEREST_DATA_DIR": str(data),
        "FACEREST_PEOPLE_REVIEW_MAX_AGE_S": "5",
        "FACEREST_RETENTION_INTERVAL_S": "0.5",
    }
    srv = start_server(env, tmp_path / "server.log")
    try:
        with srv.client() as client:
            other = unit(np.random.default_rng(35), 1).tolist()
            client.post("/gallery/quiet/subjects/other/faces", json={"embeddings": other})
            photo = {"images": {"data": [b64(package_photo("yaoming.jpg"))]}}
            assert client.post("/gallery/quiet/search", json=photo).status_code == 200
            [item] = review_items(client, "quiet", at_least=1, timeout_s=4)  # listed while young
            crop = client.get(f"/gallery/quiet/review/{item['review_id']}/image").content
        needles = {"crop": [crop[len(crop) // 2 : len(crop) // 2 + 64]]}
        assert files_holding(data, needles), "the young item is on disk"
        deadline = time.monotonic() + 30
        while files_holding(data, needles) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert files_holding(data, needles) == {}
        records = [
            json.loads(line)
            for p in (data / "audit").glob("audit-*.jsonl")
            for line in p.read_text().splitlines()
        ]
        assert any(r["key"] == "retention" and r.get("review_items") == 1 for r in records), records
    finally:
        stop_server(srv)
    assert "Traceback" not in srv.log(), srv.log()[-5000:]


# --- PostgreSQL: its data files, and two replicas ---


def test_postgres_erasure_reaches_its_data_files_and_every_replica(tmp_path: Path) -> None:
    from gallery_pg import postgres_url

    url = postgres_url()
    import psycopg

    options = IndexOptions(min_faces=10)
    first, second = open_store(url, options), open_store(url, options)
    try:
        rng = np.random.default_rng(32)
        zeb, others = unit(rng, 3), unit(rng, 30)
        model = ModelTag("w600k_mbf", "0" * 32, 512)
        zeb_ids = first.add_faces(GALLERY, ZEB, model, [NewFace(v) for v in zeb])
        for i, vector in enumerate(others):
            first.add_faces(GALLERY, f"other-{i % 10}", model, [NewFace(vector)])
        for store in (first, second):  # each replica loads its codes, then searches through them
            store.search(GALLERY, zeb, 5)
            assert store.wait_for_indexes(60)
            assert store.gallery(GALLERY).index == "codes"
            assert store.search(GALLERY, zeb, 1)[0].matches[0].subject == ZEB
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CHECKPOINT")  # what is committed is in the data files, not only the WAL
            pg_data = Path(conn.execute("SHOW data_directory").fetchone()[0])  # type: ignore[index]
        needles = {"embedding": [w for v in zeb for w in windows(v.tobytes())], "name": [ZEB.encode()]}
        assert set(files_holding(pg_data, needles, skip=("pg_wal",))) == set(needles)

        env = {"FACEREST_DATA_DIR": str(tmp_path), "FACEREST_GALLERY_URL": url}
        erased = run_cli(env, "gallery", "erase-subject", GALLERY, ZEB)
        assert erased.returncode == 0, erased.stderr
        assert f"erased 3 faces of {ZEB!r}" in erased.stdout
        assert "facerest_faces rewritten (VACUUM FULL" in erased.stdout

        assert files_holding(pg_data, needles, skip=("pg_wal",)) == {}
        for store in (second, first):  # the other replica's codes drop the faces at its next search
            for result in store.search(GALLERY, zeb, 100) + store.search(GALLERY, zeb, 100, exact=True):
                assert all(m.subject != ZEB for m in result.matches)
            codes = store._codes._loaded[GALLERY].index.keys()  # type: ignore[attr-defined]
            assert not set(zeb_ids) & set(codes.tolist())
        # the WAL: what docs/privacy.md says PostgreSQL keeps until its segments are recycled
        print("pg_wal files still holding the erased bytes:", files_holding(pg_data / "pg_wal", needles))
    finally:
        first.close()
        second.close()


def test_the_one_deletion_path_forgets_feedback_naming_the_subject(tmp_path: Path) -> None:
    from facerest.gallery.people import FeedbackStore

    store = open_store(f"sqlite:///{tmp_path / 'g.db'}")
    feedback = FeedbackStore(tmp_path / "people.db")
    try:
        model = ModelTag("m", "0" * 32, 512)
        vectors = unit(np.random.default_rng(33), 3)
        [a] = store.add_faces("g", "Ann", model, [NewFace(vectors[0])])
        [b] = store.add_faces("g", "Bob", model, [NewFace(vectors[1])])
        feedback.add_not("g", [(b, "Ann", None)])
        feedback.add_different("g", [(a, b)])
        removed = erasure.delete_subject(store, feedback, "g", "Ann")
        assert (removed.faces, removed.feedback) == ([a], 2)
        assert feedback.not_subjects("g") == [] and feedback.different("g") == []
        assert erasure.delete_subject(store, feedback, "g", "Ann").faces == []
        expired = erasure.expire_unsorted(store, feedback, older_than_s=0.0, now=time.time() + 1)
        assert expired == []  # no unsorted faces: nothing to expire
    finally:
        store.close()
        feedback.close()
    assert b"Ann" not in (tmp_path / "people.db").read_bytes()
