"""Nothing acknowledged is lost, nothing deleted comes back, nothing is half-written: concurrent
enrolment and deletion, SIGKILL, restart; with the search index on from the first face."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import free_port, start_server, stop_server
from gallery_pg import postgres_url

CLIENTS = 4
FACES_PER_REQUEST = 3


def request_vectors(client: int, n: int) -> np.ndarray:
    """What client `client` sends in its n-th request: known in advance, so any stored face can be checked."""
    v = np.random.default_rng([client, n]).standard_normal((FACES_PER_REQUEST, 512)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_acknowledged_faces_survive_sigkill(backend: str, models_dir: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'gallery.db'}" if backend == "sqlite" else postgres_url()
    # the index in use from the first face (SQLite: sign codes; PostgreSQL: the HNSW index is built
    # in the background, and the planner takes it once it is worth it)
    env = {
        "FACEREST_MODELS_DIR": str(models_dir),
        "FACEREST_GALLERY_URL": url,
        "FACEREST_GALLERY_INDEX_MIN_FACES": "1",
    }
    server = start_server(env, tmp_path / "first.log")
    acked: dict[str, list[int]] = {}  # subject -> face ids the server acknowledged
    deleted: set[str] = set()  # subjects whose deletion the server acknowledged
    doomed: set[str] = set()  # subjects a deletion was sent for (acknowledged or not)
    stop = threading.Event()
    lock = threading.Lock()

    def delete() -> None:
        """Deletes every third acknowledged subject, while the enrolments go on."""
        with httpx.Client(base_url=server.url, timeout=30) as http:
            while not stop.is_set():
                with lock:
                    victims = [s for s in acked if s not in doomed and int(s.split("-")[1]) % 3 == 0]
                for subject in victims:
                    with lock:
                        doomed.add(subject)
                    try:
                        r = http.delete(f"/gallery/durable/subjects/{subject}")
                    except httpx.HTTPError:
                        return
                    assert r.status_code == 200, r.text
                    with lock:
                        deleted.add(subject)
                time.sleep(0.01)

    def enrol(client: int) -> None:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for n in range(10_000):
                if stop.is_set():
                    return
                subject = f"c{client}-{n}"
                body = {"embeddings": request_vectors(client, n).tolist()}
                try:
                    r = http.post(f"/gallery/durable/subjects/{subject}/faces", json=body)
                except httpx.HTTPError:
                    return  # the server died under this request: it was never acknowledged
                assert r.status_code == 200, r.text
                with lock:
                    acked[subject] = [f["face_id"] for f in r.json()["added"]]

    threads = [threading.Thread(target=enrol, args=(c,)) for c in range(CLIENTS)]
    threads.append(threading.Thread(target=delete))
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while (len(acked) < 40 or len(deleted) < 5) and time.monotonic() < deadline:
        time.sleep(0.05)
    server.process.kill()  # SIGKILL, with requests in flight
    server.process.wait(30)
    stop.set()
    for t in threads:
        t.join(60)
    assert len(acked) >= 40, "too few enrolments acknowledged before the kill"
    assert len(deleted) >= 5, "too few deletions acknowledged before the kill"

    server = start_server(env, tmp_path / "second.log")
    try:
        with server.client() as http:
            stored = {
                s["subject"]: s["faces"] for s in http.get("/gallery/durable/subjects").json()["subjects"]
            }
            missing = sorted(set(acked) - doomed - set(stored))
            assert not missing, f"acknowledged but lost: {missing}"
            resurrected = sorted(deleted & set(stored))
            assert not resurrected, f"deleted but back: {resurrected}"
            # one request is one transaction: every stored subject has all its faces, each intact
            assert all(count == FACES_PER_REQUEST for count in stored.values()), stored
            for subject in stored:
                client, n = (int(x) for x in subject[1:].split("-"))
                faces = http.get(f"/gallery/durable/subjects/{subject}", params={"embeddings": True}).json()[
                    "faces"
                ]
                if subject in acked:
                    assert [f["face_id"] for f in faces] == acked[subject]
                got = np.array([f["embedding"] for f in faces], np.float32)
                assert np.allclose(got, request_vectors(client, n), atol=1e-6), subject
            # search finds every stored face (by its own vector) and never a deleted subject
            for subject in sorted(set(acked) | deleted):
                client, n = (int(x) for x in subject[1:].split("-"))
                probes = request_vectors(client, n).tolist()
                answer = http.post("/gallery/durable/search", json={"embeddings": probes, "top_k": 10}).json()
                for face in answer["data"]:
                    [hit] = face["faces"]
                    names = [m["subject"] for m in hit["matches"]]
                    if subject in stored:
                        assert names[0] == subject, (subject, hit)
                    if subject in deleted:
                        assert subject not in names, (subject, hit)
            print(
                f"\n{backend}: {len(acked)} enrolments and {len(deleted)} deletions acknowledged before "
                f"SIGKILL, {len(stored)} subjects after restart, each found by search, no deleted one"
            )
    finally:
        stop_server(server)
    assert "Traceback" not in server.log(), server.log()


def test_unreachable_storage_leaves_the_rest_of_the_service_up(models_dir: Path, tmp_path: Path) -> None:
    """A gallery database that cannot be reached: gallery requests answer 503 with the reason."""
    port = free_port()  # nothing listens there
    env = {
        "FACEREST_MODELS_DIR": str(models_dir),
        "FACEREST_GALLERY_URL": f"postgresql://127.0.0.1:{port}/none",
    }
    server = start_server(env, tmp_path / "server.log")
    try:
        with server.client() as http:
            r = http.get("/galleries")
            assert r.status_code == 503 and r.json()["code"] == "storage_unavailable", r.text
            assert "PostgreSQL" in r.json()["detail"]
            r = http.post("/gallery/g/search", json={"embeddings": [[1.0] * 512]})
            assert r.status_code == 503 and r.json()["code"] == "storage_unavailable", r.text
            # comparing two faces needs no gallery
            r = http.post("/verify", json={"embeddings": [[1.0] * 512] * 2})
            assert r.status_code == 200 and r.json()["same"] is True, r.text
            assert http.get("/info").status_code == 200
    finally:
        stop_server(server)


@pytest.mark.slow
def test_two_replicas_on_one_postgresql_see_each_others_writes(models_dir: Path, tmp_path: Path) -> None:
    """Two API servers on one database, each searching its own codes of the gallery (index from
    the first face): an enrolment or deletion through one is seen by the other at once."""
    url = postgres_url()
    env = {
        "FACEREST_MODELS_DIR": str(models_dir),
        "FACEREST_GALLERY_URL": url,
        "FACEREST_GALLERY_INDEX_MIN_FACES": "1",
    }
    first = start_server(env, tmp_path / "first.log")
    try:
        second = start_server(env, tmp_path / "second.log")
        try:
            with first.client() as a, second.client() as b:
                faces = request_vectors(7, 7)
                r = a.post("/gallery/shared/subjects/alice/faces", json={"embeddings": faces.tolist()})
                assert r.status_code == 200, r.text
                probe = {"embeddings": [faces[0].tolist()]}
                hit = b.post("/gallery/shared/search", json=probe).json()["data"][0]["faces"][0]
                assert hit["subject"] == "alice", hit
                for http in (a, b):  # the first search loads the replica's codes in the background
                    http.post("/gallery/shared/search", json=probe)
                    deadline = time.monotonic() + 30
                    while http.get("/galleries").json()["galleries"][0]["index"] != "codes":
                        assert time.monotonic() < deadline, "the codes were not loaded"
                        time.sleep(0.1)
                r = b.post("/gallery/shared/subjects/bob/faces", json={"embeddings": [(-faces[0]).tolist()]})
                assert r.status_code == 200, r.text
                assert {s["subject"] for s in a.get("/gallery/shared/subjects").json()["subjects"]} == {
                    "alice",
                    "bob",
                }
                assert b.delete("/gallery/shared/subjects/alice").status_code == 200
                hit = a.post("/gallery/shared/search", json=probe).json()["data"][0]["faces"][0]
                assert all(m["subject"] != "alice" for m in hit["matches"]), hit
                assert hit["subject"] is None
        finally:
            stop_server(second)
    finally:
        stop_server(first)
