"""Nothing acknowledged is lost, nothing is half-written: concurrent enrolment, SIGKILL, restart."""

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
    env = {"FACEREST_MODELS_DIR": str(models_dir), "FACEREST_GALLERY_URL": url}
    server = start_server(env, tmp_path / "first.log")
    acked: dict[str, list[int]] = {}  # subject -> face ids the server acknowledged
    stop = threading.Event()
    lock = threading.Lock()

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
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(acked) < 40 and time.monotonic() < deadline:
        time.sleep(0.05)
    server.process.kill()  # SIGKILL, with requests in flight
    server.process.wait(30)
    stop.set()
    for t in threads:
        t.join(60)
    assert len(acked) >= 40, "too few enrolments acknowledged before the kill"

    server = start_server(env, tmp_path / "second.log")
    try:
        with server.client() as http:
            stored = {
                s["subject"]: s["faces"] for s in http.get("/gallery/durable/subjects").json()["subjects"]
            }
            missing = sorted(set(acked) - set(stored))
            assert not missing, f"acknowledged but lost: {missing}"
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
            probe = request_vectors(0, 0)[1]
            hit = http.post("/gallery/durable/search", json={"embeddings": [probe.tolist()]}).json()
            assert hit["data"][0]["faces"][0]["subject"] == "c0-0"
            print(
                f"\n{backend}: {len(acked)} enrolments acknowledged before SIGKILL, "
                f"{len(stored)} found after restart ({len(stored) - len(acked)} in flight and committed)"
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
