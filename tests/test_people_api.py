"""Issue 29 over HTTP against a real server: face pictures (stored, served, re-embeddable, gone when
deleted), the people API (pages, merge, move, one person per photo) and the review queue."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from conftest import Server, package_photo, read_bgr, shared_path, shared_people, start_server, stop_server
from helpers import b64

from facerest.gallery.sqlite import SQLiteStore
from facerest.gallery.store import ModelTag, NewFace
from facerest.imaging.crops import face_crop
from facerest.imaging.marks import FaceMark
from facerest.pipeline import ExtractOptions

YAO = package_photo("yaoming.jpg")
GDP = package_photo("gdp.jpg")
PLAYERS = package_photo("players.jpg")


def database(server: Server) -> Path:
    """The server's SQLite gallery (its data folder is beside its log)."""
    return server.log_path.parent / "data" / "gallery.db"


def crop_rows(server: Server, face_ids: list[int]) -> int:
    with sqlite3.connect(database(server)) as db:
        marks = ",".join("?" * len(face_ids))
        return db.execute(f"SELECT COUNT(*) FROM face_crops WHERE face_id IN ({marks})", face_ids).fetchone()[
            0
        ]


def share_in_file(server: Server, jpeg: bytes) -> float:
    """The share of a picture's bytes still in the database's files, once its log is written back
    (a picture spans several pages of the file: each 256-byte slice is looked for on its own)."""
    with sqlite3.connect(database(server)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    files = [database(server), database(server).with_name("gallery.db-wal")]
    content = b"".join(f.read_bytes() for f in files if f.exists())
    slices = range(64, len(jpeg) - 256, 256)
    return sum(jpeg[i : i + 256] in content for i in slices) / len(slices)


def test_face_pictures_are_kept_served_and_gone_when_deleted(server: Server, analyzer) -> None:  # type: ignore[no-untyped-def]
    """Must show 4: a picture for every face enrolled from an image, served as JPEG with its
    landmarks, good enough to embed the face again; gone from the database (row and bytes) when
    the face, its subject or its gallery is deleted."""
    gallery = "pictures"
    with server.client() as client:
        client.delete(f"/gallery/{gallery}")
        r = client.post(
            f"/gallery/{gallery}/subjects/yao/faces",
            json={"images": {"data": [b64(YAO)]}, "return_quality": True},
        )
        assert r.status_code == 200, r.text
        [yao] = r.json()["added"]
        r = client.post(
            f"/gallery/{gallery}/subjects/gdp/faces", json={"images": {"data": [b64(GDP)]}, "all_faces": True}
        )
        gdp = [a["face_id"] for a in r.json()["added"]]
        posted = client.post(f"/gallery/{gallery}/subjects/vec/faces", json={"embeddings": [[1.0] * 512]})
        [vec] = posted.json()["added"]
        assert crop_rows(server, [yao["face_id"], *gdp, vec["face_id"]]) == 1 + len(gdp)  # none for a vector

        face = client.get(f"/gallery/{gallery}/faces/{yao['face_id']}").json()
        assert face["subject"] == "yao" and face["has_image"] and face["source"] == "image"
        assert face["quality"] == pytest.approx(yao["quality"]["score"], abs=1e-4)
        image = client.get(f"/gallery/{gallery}/faces/{yao['face_id']}/image")
        assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
        pixels = cv2.imdecode(np.frombuffer(image.content, np.uint8), cv2.IMREAD_COLOR)
        height, width = pixels.shape[:2]
        assert (width, height) == (face["image"]["width"], face["image"]["height"]) and max(
            width, height
        ) <= 256
        landmarks = np.array(face["image"]["landmarks"], np.float32)
        assert landmarks.shape == (5, 2) and (landmarks >= 0).all() and (landmarks[:, 0] <= width).all()
        missing = client.get(f"/gallery/{gallery}/faces/{vec['face_id']}/image")
        assert missing.status_code == 404 and "no picture" in missing.json()["detail"]

        # the picture embeds again: re-aligned on its own landmarks (what another recognizer does with
        # its template), and detected afresh
        stored = client.get(f"/gallery/{gallery}/subjects/yao", params={"embeddings": True}).json()["faces"][
            0
        ]
        original = np.asarray(stored["embedding"], np.float32)
        aligned = (
            analyzer.process([pixels], ExtractOptions(marks=[[FaceMark(None, landmarks)]]))[0]
            .faces[0]
            .embedding
        )
        detected = analyzer.process([pixels], ExtractOptions(limit_faces=1))[0].faces[0].embedding
        print(
            f"\nthe kept picture embedded again: cosine {float(aligned @ original):.4f} on its landmarks, "
            f"{float(detected @ original):.4f} detected afresh ({width}x{height}, {len(image.content)} bytes)"
        )
        assert float(aligned @ original) > 0.9 and float(detected @ original) > 0.9

        # deleted with the face: the row, the answer and the bytes in the file
        assert share_in_file(server, image.content) > 0.8  # slices across a page boundary are split
        assert client.delete(f"/gallery/{gallery}/faces/{yao['face_id']}").status_code == 200
        assert crop_rows(server, [yao["face_id"]]) == 0
        assert client.get(f"/gallery/{gallery}/faces/{yao['face_id']}/image").status_code == 404
        # overwritten in the file too (secure_delete), but for what B-tree rebalancing left in a
        # page's free space: making every byte gone is erasure's VACUUM (issue 30)
        left = share_in_file(server, image.content)
        print(f"after the delete, {left:.1%} of the picture's bytes are still in the file")
        assert left < 0.1
        # with the subject
        assert crop_rows(server, gdp) == len(gdp) >= 2
        gdp_picture = client.get(f"/gallery/{gallery}/faces/{gdp[0]}/image").content
        assert client.delete(f"/gallery/{gallery}/subjects/gdp").status_code == 200
        assert crop_rows(server, gdp) == 0 and share_in_file(server, gdp_picture) < 0.1
        # with the gallery
        r = client.post(f"/gallery/{gallery}/faces", json={"images": {"data": [b64(YAO)]}})
        unsorted = r.json()["added"][0]["face_id"]
        assert crop_rows(server, [unsorted]) == 1
        assert client.delete(f"/gallery/{gallery}").status_code == 200
        assert crop_rows(server, [unsorted]) == 0
        assert client.get(f"/gallery/{gallery}/faces/{unsorted}/image").status_code == 404
    # no picture is ever a file of its own
    data = database(server).parent
    assert not [p for p in data.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")]


def test_crop_disk_cost_per_face(analyzer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """What a kept picture costs, measured on the shared photos: the JPEG, and the database file
    with and without pictures (printed; documented in docs/architecture.md)."""
    photos = sorted(shared_path("verify", "deepface", "images").glob("*.jpg"))
    photos += sorted(shared_path("verify", "facerec_ageitgey", "images").glob("*"))
    faces: list[NewFace] = []
    for path in photos:
        image = read_bgr(path)
        [result] = analyzer.process([image], ExtractOptions(limit_faces=1))
        if not result.faces:
            continue
        face = result.faces[0]
        crop = face_crop(image, face.bbox, face.landmarks, 256)
        assert crop is not None and max(crop.width, crop.height) <= 256
        faces.append(
            NewFace(face.embedding, "x" * 64, [float(v) for v in face.bbox], face.score, crop, 0.5, "image")
        )
    sizes = np.array([len(f.crop.jpeg) for f in faces if f.crop is not None])
    model = ModelTag("w600k_mbf", "0" * 32, 512)

    def file_bytes(keep: bool) -> int:
        path = tmp_path / f"{keep}.db"
        store = SQLiteStore(path)
        store.add_faces(
            "g",
            "s",
            model,
            [NewFace(f.embedding, f.image_hash, f.bbox, f.prob, f.crop if keep else None) for f in faces],
        )
        store.close()
        with sqlite3.connect(path) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return path.stat().st_size

    per_face = (file_bytes(True) - file_bytes(False)) / len(faces)
    print(
        f"\npictures of {len(faces)} shared-set faces at 256 px, JPEG q90: "
        f"mean {sizes.mean() / 1024:.1f} KB, "
        f"median {np.median(sizes) / 1024:.1f} KB, max {sizes.max() / 1024:.1f} KB; SQLite file "
        f"{per_face / 1024:.1f} KB more per face with pictures than without"
    )
    assert len(faces) >= 70 and 2_000 < sizes.mean() < 60_000


def wait_for_review(client: httpx.Client, gallery: str, count: int, timeout_s: float = 20) -> list[dict]:
    """The review queue once it holds `count` items (it is filled from the event stream, a moment
    after the search answered)."""
    deadline = time.monotonic() + timeout_s
    while True:
        items = client.get(f"/gallery/{gallery}/review", params={"limit": 1000}).json()["items"]
        if len(items) >= count or time.monotonic() > deadline:
            return items
        time.sleep(0.1)


def test_people_api_pages_merge_move_and_one_person_per_photo(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    gallery = "people-api"
    with server.client() as client:
        client.delete(f"/gallery/{gallery}")
        created = client.put(f"/gallery/{gallery}")
        assert (
            created.status_code == 201 and created.json()["created"] is True and created.json()["faces"] == 0
        )
        assert client.put(f"/gallery/{gallery}").status_code == 200  # exists: nothing changes
        rng = np.random.default_rng(29)
        vectors = rng.standard_normal((30, 512)).astype(np.float32)
        ids: dict[str, list[int]] = {}
        for i in range(10):
            r = client.post(
                f"/gallery/{gallery}/subjects/Person {i:02d}/faces",
                json={"embeddings": vectors[3 * i : 3 * i + 3].tolist()},
            )
            ids[f"Person {i:02d}"] = [a["face_id"] for a in r.json()["added"]]

        # pages: every subject once, in order, `next_cursor` null at the end; a name filter
        names, cursor = [], None
        while True:
            page = client.get(f"/gallery/{gallery}/subjects", params={"limit": 3, "cursor": cursor}).json()
            names += [s["subject"] for s in page["subjects"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert names == sorted(ids)
        # facerest's own client reads every page of a list (three rows a page here)
        from facerest.client import Client, calls

        monkeypatch.setattr(calls, "PAGE", 3)
        with Client(server.url) as fr:
            assert [s.subject for s in fr.subjects(gallery)] == sorted(ids)
            assert [f.face_id for f in fr.subject(gallery, "Person 04").faces] == [
                str(i) for i in ids["Person 04"]
            ]
            assert gallery in [g.name for g in fr.galleries()]
        assert [
            s["subject"]
            for s in client.get(f"/gallery/{gallery}/subjects", params={"q": "son 0"}).json()["subjects"]
        ] == sorted(ids)
        assert client.get(f"/gallery/{gallery}/subjects", params={"q": "07"}).json()["subjects"] == [
            {"subject": "Person 07", "faces": 3, "representative": ids["Person 07"][0]}
        ]
        faces = client.get(f"/gallery/{gallery}/subjects/Person 01", params={"limit": 2}).json()
        assert [f["face_id"] for f in faces["faces"]] == ids["Person 01"][:2] and faces["next_cursor"]
        rest = client.get(
            f"/gallery/{gallery}/subjects/Person 01", params={"limit": 2, "cursor": faces["next_cursor"]}
        )
        assert [f["face_id"] for f in rest.json()["faces"]] == ids["Person 01"][2:] and rest.json()[
            "next_cursor"
        ] is None
        galleries = client.get("/galleries", params={"q": "PEOPLE-A"}).json()
        assert [g["name"] for g in galleries["galleries"]] == [gallery] and galleries["next_cursor"] is None
        # a cursor of another list, or made up, is a clear 400; limits outside 1..1000 a 422
        bad = client.get(f"/gallery/{gallery}/subjects", params={"cursor": faces["next_cursor"]})
        assert bad.status_code == 400 and "cursor" in bad.json()["detail"]
        assert client.get(f"/gallery/{gallery}/subjects", params={"cursor": "!!"}).status_code == 400
        assert client.get(f"/gallery/{gallery}/subjects", params={"limit": 0}).status_code == 422
        assert client.get(f"/gallery/{gallery}/subjects", params={"limit": 1001}).status_code == 422

        # merge, move (split), representative; search follows at once
        def named(vector: np.ndarray) -> str | None:
            r = client.post(f"/gallery/{gallery}/search", json={"embeddings": [vector.tolist()]})
            return r.json()["data"][0]["faces"][0]["subject"]

        r = client.post(f"/gallery/{gallery}/subjects/Person 00/merge", json={"into": "Person 01"})
        assert r.status_code == 200 and r.json()["moved"] == 3, r.text
        assert named(vectors[0]) == "Person 01"
        assert client.get(f"/gallery/{gallery}/subjects/Person 00").status_code == 404
        assert (
            client.post(
                f"/gallery/{gallery}/subjects/Person 01/merge", json={"into": "Person 01"}
            ).status_code
            == 400
        )
        r = client.post(
            f"/gallery/{gallery}/faces/move",
            json={"face_ids": ids["Person 00"][:2], "subject": "Split", "new": True},
        )
        assert r.json() == {"gallery": gallery, "subject": "Split", "moved": 2, "same_photo": []}
        assert named(vectors[1]) == "Split" and named(vectors[2]) == "Person 01"
        again = client.post(
            f"/gallery/{gallery}/faces/move",
            json={"face_ids": ids["Person 02"], "subject": "Split", "new": True},
        )
        assert again.status_code == 409 and again.json()["code"] == "conflict"
        none = client.post(
            f"/gallery/{gallery}/faces/move",
            json={"face_ids": [ids["Person 02"][0], 987654321], "subject": "X"},
        )
        assert none.status_code == 404 and "987654321" in none.json()["detail"]
        assert client.get(f"/gallery/{gallery}/faces/{ids['Person 02'][0]}").json()["subject"] == "Person 02"
        r = client.put(
            f"/gallery/{gallery}/subjects/Person 01/representative", json={"face_id": ids["Person 01"][2]}
        )
        assert r.status_code == 200
        listed = client.get(f"/gallery/{gallery}/subjects", params={"q": "Person 01"}).json()["subjects"]
        assert listed[0]["representative"] == ids["Person 01"][2]
        wrong = client.put(
            f"/gallery/{gallery}/subjects/Person 01/representative", json={"face_id": ids["Person 03"][0]}
        )
        assert wrong.status_code == 404
        # back to the unsorted faces
        r = client.post(
            f"/gallery/{gallery}/faces/move", json={"face_ids": ids["Person 09"], "subject": None}
        )
        assert r.json()["moved"] == 3 and named(vectors[27]) is None
        unsorted = client.get(f"/gallery/{gallery}/faces", params={"limit": 2}).json()
        assert [f["face_id"] for f in unsorted["faces"]] == ids["Person 09"][:2] and unsorted["next_cursor"]

        # one person per photo: two faces of gdp.jpg in one subject are named; they never cluster
        r = client.post(
            f"/gallery/{gallery}/subjects/Crowd/faces",
            json={"images": {"data": [b64(GDP)]}, "all_faces": True},
        )
        crowd = [a["face_id"] for a in r.json()["added"]]
        assert len(crowd) >= 2 and {tuple(p) for p in r.json()["same_photo"]} >= {(crowd[0], crowd[1])}
        r = client.post(
            f"/gallery/{gallery}/faces/move", json={"face_ids": crowd[1:2], "subject": "Person 03"}
        )
        assert r.json()["same_photo"] == []
        r = client.post(f"/gallery/{gallery}/faces/move", json={"face_ids": crowd[1:2], "subject": "Crowd"})
        assert [crowd[0], crowd[1]] in r.json()["same_photo"]
        # the same face enrolled twice from one photo, unsorted: never one cluster
        for _ in range(2):
            client.post(
                f"/gallery/{gallery}/faces",
                json={"images": {"data": [b64(YAO)], "faces": [[{"bbox": [70, 50, 230, 250]}]]}},
            )
        clusters = client.get(f"/gallery/{gallery}/clusters").json()
        assert clusters["next_cursor"] is None
        yao_faces = [c for c in clusters["clusters"] if any(f["has_image"] for f in c["faces"])]
        assert len(yao_faces) == 2 and all(c["size"] == 1 for c in yao_faces), clusters
        first = client.get(f"/gallery/{gallery}/clusters", params={"limit": 1}).json()
        second = client.get(
            f"/gallery/{gallery}/clusters", params={"limit": 1, "cursor": first["next_cursor"]}
        ).json()
        assert first["clusters"][0]["cluster_id"] != second["clusters"][0]["cluster_id"]
        assert client.delete(f"/gallery/{gallery}").status_code == 200


def test_review_queue_over_http(server: Server) -> None:
    """Searches put the faces they could not name in the queue, with their picture and source;
    two photos of one stranger are one group; "not X", assignment (to a new subject, or with a
    conflict), dismissal; searches of a refused picture never name X again."""
    people = shared_people("deepface")
    strangers = [people["id05"][0], people["id05"][1], people["id06"][0]]
    gallery = "review-api"
    with server.client() as client:
        client.delete(f"/gallery/{gallery}")
        r = client.post(f"/gallery/{gallery}/subjects/yao/faces", json={"images": {"data": [b64(YAO)]}})
        assert r.status_code == 200
        hashes = []
        for photo in strangers:
            r = client.post(f"/gallery/{gallery}/search", json={"images": {"data": [b64(photo)]}})
            [hit] = r.json()["data"][0]["faces"]
            assert hit["subject"] is None
            hashes.append(r.json()["data"][0]["image_hash"])
        # the same picture again is not queued twice; a named face is not queued at all
        client.post(f"/gallery/{gallery}/search", json={"images": {"data": [b64(strangers[0])]}})
        client.post(f"/gallery/{gallery}/search", json={"images": {"data": [b64(YAO)]}})
        items = wait_for_review(client, gallery, 3)
        time.sleep(0.5)
        items = wait_for_review(client, gallery, 3)
        assert len(items) == 3, items
        assert {i["image_hash"] for i in items} == set(hashes)
        by_hash = {i["image_hash"]: i for i in items}
        a, b, c = (by_hash[h] for h in hashes)
        assert a["group"] == b["group"] != c["group"]  # id05's two photos look alike, id06 does not
        assert a["source"] == "search" and a["has_image"] and a["candidates"][0]["subject"] == "yao"
        picture = client.get(f"/gallery/{gallery}/review/{a['review_id']}/image")
        assert picture.status_code == 200 and picture.headers["content-type"] == "image/jpeg"

        # "not yao": no longer a candidate, and a search of that picture never names yao
        r = client.post(
            f"/gallery/{gallery}/review/not", json={"review_ids": [c["review_id"]], "subject": "yao"}
        )
        assert r.json()["changed"] == 1
        [after] = [i for i in wait_for_review(client, gallery, 3) if i["review_id"] == c["review_id"]]
        assert after["excluded"] == ["yao"] and all(m["subject"] != "yao" for m in after["candidates"])
        r = client.post(
            f"/gallery/{gallery}/search", json={"images": {"data": [b64(strangers[2])]}, "threshold": -1}
        )
        assert r.json()["data"][0]["faces"][0]["subject"] is None  # even at any threshold
        r = client.post(
            f"/gallery/{gallery}/search", json={"images": {"data": [b64(strangers[0])]}, "threshold": -1}
        )
        assert r.json()["data"][0]["faces"][0]["subject"] == "yao"  # another picture: still possible

        # assign the group as a new person: enrolled with its pictures, off the queue
        r = client.post(
            f"/gallery/{gallery}/review/assign",
            json={"review_ids": [a["review_id"], b["review_id"]], "subject": "id05", "new": True},
        )
        assert r.status_code == 200, r.text
        faces = r.json()["face_ids"]
        assert r.json()["moved"] == 2 and len(faces) == 2
        assert all(client.get(f"/gallery/{gallery}/faces/{f}/image").status_code == 200 for f in faces)
        assert client.get(f"/gallery/{gallery}/faces/{faces[0]}").json()["source"] == "search"
        conflict = client.post(
            f"/gallery/{gallery}/review/assign",
            json={"review_ids": [c["review_id"]], "subject": "id05", "new": True},
        )
        assert conflict.status_code == 409
        gone = client.post(
            f"/gallery/{gallery}/review/assign", json={"review_ids": [a["review_id"]], "subject": "x"}
        )
        assert gone.status_code == 404
        r = client.post(f"/gallery/{gallery}/search", json={"images": {"data": [b64(people["id05"][2])]}})
        assert r.json()["data"][0]["faces"][0]["subject"] == "id05"  # the new person is found at once
        r = client.post(f"/gallery/{gallery}/review/dismiss", json={"review_ids": [c["review_id"]]})
        assert r.json()["dismissed"] == 1
        left = client.get(f"/gallery/{gallery}/review").json()["items"]
        assert c["review_id"] not in [i["review_id"] for i in left]
        assert client.post(f"/gallery/{gallery}/review/dismiss", json={"review_ids": []}).status_code == 422
        assert client.delete(f"/gallery/{gallery}").status_code == 200
        assert client.get(f"/gallery/{gallery}/review").status_code == 404


# --- must show 3 over HTTP: concurrent clients against the stored truth, both backends ----------


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def any_server(
    request: pytest.FixtureRequest, server: Server, models_dir: Path, tmp_path_factory
) -> Iterator[Server]:  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        yield server
        return
    from gallery_pg import postgres_url

    url = postgres_url()
    log_dir = tmp_path_factory.mktemp("pg-server")
    srv = start_server(
        {"FACEREST_MODELS_DIR": str(models_dir), "FACEREST_GALLERY_URL": url}, log_dir / "server.log"
    )
    yield srv
    stop_server(srv)
    assert "Traceback" not in srv.log(), srv.log()


def all_faces(client: httpx.Client, gallery: str) -> dict[int, str | None]:
    """Every face's subject as the API lists it, a page of 4 at a time."""
    where: dict[int, str | None] = {}
    names: list[str] = []
    cursor = None
    while True:
        page = client.get(f"/gallery/{gallery}/subjects", params={"limit": 4, "cursor": cursor}).json()
        names += [s["subject"] for s in page["subjects"]]
        if (cursor := page["next_cursor"]) is None:
            break
    for name in [*names, None]:
        cursor = None
        while True:
            path = f"/gallery/{gallery}/subjects/{name}" if name else f"/gallery/{gallery}/faces"
            page = client.get(path, params={"limit": 4, "cursor": cursor}).json()
            for face in page["faces"]:
                assert face["face_id"] not in where, f"face {face['face_id']} listed twice"
                where[face["face_id"]] = name
            if (cursor := page["next_cursor"]) is None:
                break
    return where


def test_concurrent_clients_lose_nothing_and_invent_nothing(any_server: Server) -> None:
    """Must show 3: four clients merge, move, delete and assign review items at once over HTTP,
    each on its own subjects of one gallery; after each step the client's search names the face
    it touched as it now should; at the end every face's subject, as listed page by page and as
    searched, is the truth the clients kept, and no face appeared from nowhere."""
    import random
    import threading

    people = shared_people("deepface")
    gallery = "concurrent"
    rng = np.random.default_rng(30)
    truth: dict[int, str | None] = {}
    vectors: dict[int, np.ndarray] = {}
    review: dict[int, list[int]] = {}
    with any_server.client() as client:
        client.delete(f"/gallery/{gallery}")
        for w in range(4):
            for s in range(5):
                vs = rng.standard_normal((3, 512)).astype(np.float32)
                vs /= np.linalg.norm(vs, axis=1, keepdims=True)
                r = client.post(
                    f"/gallery/{gallery}/subjects/w{w}s{s}/faces", json={"embeddings": vs.tolist()}
                )
                for a, v in zip(r.json()["added"], vs, strict=True):
                    truth[a["face_id"]] = f"w{w}s{s}"
                    vectors[a["face_id"]] = v
        # the review queue: real photos nobody in the gallery is, two per client
        photos = [p for who in ("id00", "id01", "id02", "id09") for p in people[who][:2]]
        for photo in photos:
            client.post(f"/gallery/{gallery}/search", json={"images": {"data": [b64(photo)]}})
        items = wait_for_review(client, gallery, len(photos))
        assert len(items) == len(photos)
        for w in range(4):
            review[w] = [i["review_id"] for i in items[2 * w : 2 * w + 2]]
    lock = threading.Lock()
    problems: list[str] = []
    done: dict[str, int] = {}

    def client_run(w: int) -> None:
        pick = random.Random(100 + w)
        with any_server.client() as client:
            for step in range(16):
                with lock:
                    mine = {f: s for f, s in truth.items() if s and s.startswith(f"w{w}")}
                subjects = sorted(set(mine.values()))
                op = pick.choice(
                    ["merge", "move", "move", "delete_face", "assign", "assign"]
                    + (["delete_subject"] if step % 8 == 7 else [])
                )
                touched: int | None = None
                if op == "merge" and len(subjects) >= 2:
                    a, b = pick.sample(subjects, 2)
                    r = client.post(f"/gallery/{gallery}/subjects/{a}/merge", json={"into": b})
                    ok = r.status_code == 200
                    with lock:
                        truth.update({f: b for f, s in truth.items() if s == a})
                    touched = next((f for f, s in mine.items() if s == a and f in vectors), None)
                elif op == "move" and mine:
                    chosen = pick.sample(sorted(mine), min(len(mine), pick.randint(1, 3)))
                    target = f"w{w}n{step}" if pick.random() < 0.5 else pick.choice(subjects)
                    r = client.post(
                        f"/gallery/{gallery}/faces/move", json={"face_ids": chosen, "subject": target}
                    )
                    ok = r.status_code == 200
                    with lock:
                        truth.update(dict.fromkeys(chosen, target))
                    touched = next((f for f in chosen if f in vectors), None)
                elif op == "delete_face" and mine:
                    face = pick.choice(sorted(mine))
                    r = client.delete(f"/gallery/{gallery}/faces/{face}")
                    ok = r.status_code == 200
                    with lock:
                        del truth[face]
                elif op == "delete_subject" and subjects:
                    subject = pick.choice(subjects)
                    r = client.delete(f"/gallery/{gallery}/subjects/{subject}")
                    ok = r.status_code == 200
                    with lock:
                        for f in [f for f, s in truth.items() if s == subject]:
                            del truth[f]
                elif op == "assign" and review[w]:
                    item = review[w].pop()
                    target = pick.choice(subjects) if subjects else f"w{w}r{step}"
                    r = client.post(
                        f"/gallery/{gallery}/review/assign", json={"review_ids": [item], "subject": target}
                    )
                    ok = r.status_code == 200
                    if ok:
                        with lock:
                            truth[r.json()["face_ids"][0]] = target
                else:
                    continue
                if not ok:
                    problems.append(f"client {w} {op}: {r.status_code} {r.text}")
                    return
                with lock:
                    done[op] = done.get(op, 0) + 1
                if touched is not None:  # search follows at once
                    r = client.post(
                        f"/gallery/{gallery}/search", json={"embeddings": [vectors[touched].tolist()]}
                    )
                    found = r.json()["data"][0]["faces"][0]["subject"]
                    if found != truth[touched]:
                        problems.append(
                            f"client {w} after {op}: face {touched} named {found}, not {truth[touched]}"
                        )

    threads = [threading.Thread(target=client_run, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert not problems, problems
    with any_server.client() as client:
        listed = all_faces(client, gallery)
        assert listed == truth  # nothing lost, nothing invented, every face where its client put it
        embedded = [f for f in truth if f in vectors]
        r = client.post(
            f"/gallery/{gallery}/search",
            json={"embeddings": [vectors[f].tolist() for f in embedded], "top_k": 1},
        )
        searched = [entry["faces"][0]["subject"] for entry in r.json()["data"]]
        assert searched == [truth[f] for f in embedded]
        left = {i["review_id"] for i in client.get(f"/gallery/{gallery}/review").json()["items"]}
        assert left == {i for items in review.values() for i in items}
        print(
            f"\n{len(truth)} faces in {len(set(truth.values()))} subjects, as listed and as searched, after "
            f"{sum(done.values())} concurrent operations from 4 clients {done}"
        )
        assert client.delete(f"/gallery/{gallery}").status_code == 200


def test_keeping_pictures_can_be_turned_off(analyzer, settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """FACEREST_GALLERY_KEEP_CROPS=false: faces are enrolled without a picture (the console shows
    a placeholder) and the review queue keeps none either."""
    from facerest.gallery.service import GalleryService
    from facerest.imaging.decode import decode_image

    off = settings.model_copy(update={"gallery_keep_crops": False, "data_dir": tmp_path})
    service = GalleryService(SQLiteStore(tmp_path / "gallery.db"), analyzer, off)
    try:
        image = decode_image(YAO.read_bytes(), max_pixels=off.max_image_pixels)
        [(face_id, _)] = service.enrol("g", "yao", [image]).added
        assert not service.face("g", face_id).has_crop
        with pytest.raises(Exception, match="no picture"):
            service.face_image("g", face_id)
        on = GalleryService(service.store, analyzer, settings.model_copy(update={"data_dir": tmp_path}))
        [(kept, _)] = on.enrol("g", "yao", [image]).added
        assert on.face("g", kept).has_crop and on.face_image("g", kept).jpeg[:2] == b"\xff\xd8"
        on.review.close()  # type: ignore[union-attr]
    finally:
        service.close()
