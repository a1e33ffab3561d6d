"""Issue 32, must show 3, through real servers and the CLI: a w600k_mbf gallery moved to SFace
answers the open-set test of the shared sets as one enrolled with SFace directly; a search during a
move answers from the old model; a move whose runner is killed is taken up and finishes, nothing
twice; bad requests change nothing.

A default-pack server (SCRFD + w600k_mbf) and a commercial-pack one (YuNet + SFace) share one
gallery store, as an operator moving to the commercial pack would run them.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import Server, shared_people, start_server, stop_server
from helpers import b64
from test_open_set import largest, photos, split

SFACE = "sface_2021dec_int8bq"
#: a runner silent this long is taken to have crashed (short here, so the test need not wait)
LEASE_S = "4"


def server_for(url: str, models_dir: Path, log: Path, pack: str = "default", **env: str) -> Server:
    return start_server(
        {
            "FACEREST_MODELS_DIR": str(models_dir),
            "FACEREST_GALLERY_URL": url,
            "FACEREST_MODEL_PACK": pack,
            "FACEREST_REEMBED_LEASE_S": LEASE_S,
            **env,
        },
        log,
    )


@pytest.fixture(scope="module")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('reembed') / 'gallery.db'}"


@pytest.fixture(scope="module")
def w600k(sqlite_url: str, models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = server_for(sqlite_url, models_dir, tmp_path_factory.mktemp("w600k") / "server.log")
    yield server
    stop_server(server)
    assert "Traceback" not in server.log(), server.log()


def wait_for(client: httpx.Client, gallery: str, ready, timeout: float = 180) -> dict:  # type: ignore[no-untyped-def]
    """GET .../reembed until `ready(body)`."""
    deadline = time.monotonic() + timeout
    while True:
        r = client.get(f"/gallery/{gallery}/reembed")
        if r.status_code == 200 and ready(r.json()):
            return r.json()
        assert time.monotonic() < deadline, r.text
        time.sleep(0.2)


def answers(client: httpx.Client, gallery: str, paths: list[Path]) -> list[tuple[str | None, float]]:
    """(subject named, best similarity) of the largest face of each photo."""
    r = client.post(f"/gallery/{gallery}/search", json={"images": {"data": [b64(p) for p in paths]}})
    assert r.status_code == 200, r.text
    return [
        (f["subject"], f["matches"][0]["similarity"]) for f in (largest(d["faces"]) for d in r.json()["data"])
    ]


def same_answers(a: list[tuple[str | None, float]], b: list[tuple[str | None, float]]) -> bool:
    if [s for s, _ in a] != [s for s, _ in b]:
        return False
    return all(abs(x - y) < 1e-6 for (_, x), (_, y) in zip(a, b, strict=True))


def face_ids(client: httpx.Client, gallery: str, subjects: list[str]) -> dict[str, list[int]]:
    out = {}
    for who in subjects:
        r = client.get(f"/gallery/{gallery}/subjects/{who}")
        assert r.status_code == 200, r.text
        out[who] = [f["face_id"] for f in r.json()["faces"]]
    return out


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_search_during_a_move_answers_from_the_old_model_and_a_killed_move_is_taken_up(
    backend: str, request: pytest.FixtureRequest, models_dir: Path, tmp_path: Path
) -> None:
    if backend == "sqlite":
        url, server = request.getfixturevalue("sqlite_url"), request.getfixturevalue("w600k")
    else:
        from gallery_pg import postgres_url

        url = postgres_url()
        server = server_for(url, models_dir, tmp_path / "server.log")
    gallery = f"moving-{backend}"
    # each person's photos but the last enrolled; the last ones (of those with two or more) probe
    people = {
        who: paths[:-1] if len(paths) > 1 else paths
        for who, paths in shared_people("facerec_ageitgey").items()
    }
    probes = [paths[-1] for paths in shared_people("facerec_ageitgey").values() if len(paths) > 1]
    try:
        with server.client() as client:
            for who, paths in people.items():
                r = client.post(
                    f"/gallery/{gallery}/subjects/{who}/faces",
                    json={"images": {"data": [b64(p) for p in paths]}},
                )
                assert r.status_code == 200 and len(r.json()["added"]) == len(paths), r.text
            faces = sum(len(p) for p in people.values())
            before = answers(client, gallery, probes)
            assert all(s is not None and sim < 0.99 for s, sim in before), before
            ids = face_ids(client, gallery, list(people))

            # the CLI moves it in place, two faces a step, resting between steps
            env = {k: v for k, v in os.environ.items() if not k.startswith("FACEREST_")}
            env.update(
                FACEREST_MODELS_DIR=str(models_dir),
                FACEREST_GALLERY_URL=url,
                FACEREST_THREADS="2",
                FACEREST_REEMBED_BATCH_SIZE="2",
                FACEREST_REEMBED_PAUSE_S="1.5",
                FACEREST_REEMBED_LEASE_S=LEASE_S,
            )
            cli = subprocess.Popen(
                [sys.executable, "-m", "facerest", "gallery", "reembed", gallery, "--model", SFACE],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=tmp_path,
            )
            try:
                mid = wait_for(client, gallery, lambda b: 4 <= b["done"] < faces and b["state"] == "running")
                # mid-way: the server searches the old model's vectors, answers unchanged
                assert (mid["model"], mid["from_model"], mid["faces"], mid["into"]) == (
                    SFACE,
                    "w600k_mbf",
                    faces,
                    None,
                )
                assert client.get(f"/gallery/{gallery}").json()["model"] == "w600k_mbf"
                during = answers(client, gallery, probes)
                assert same_answers(during, before)
            finally:
                cli.send_signal(signal.SIGKILL)  # a crash: no goodbye, the lease still held
                output = cli.communicate(timeout=30)[0].decode(errors="replace")
            assert cli.returncode == -signal.SIGKILL, output

            # within the dead runner's lease nobody else may take it; after it, a POST does
            r = client.post(f"/gallery/{gallery}/reembed", json={"model": SFACE})
            assert r.status_code == 409 and "being moved" in r.json()["detail"], r.text
            left = wait_for(client, gallery, lambda b: b["state"] == "interrupted", timeout=30)
            assert 4 <= left["done"] < faces
            assert same_answers(answers(client, gallery, probes), before)
            r = client.post(f"/gallery/{gallery}/reembed", json={})  # no model: take up the last move
            assert r.status_code == 202 and r.json()["done"] == left["done"], r.text
            done = wait_for(client, gallery, lambda b: b["state"] in ("done", "failed"))
            assert (done["state"], done["faces"], done["done"], done["missing"]) == (
                "done",
                faces,
                faces,
                {"count": 0, "face_ids": []},
            ), done
            assert (done["dim"], done["alignment"]) == (128, "arcface")

            # switched: the same faces under the same ids, now SFace's; this w600k_mbf server says so
            info = client.get(f"/gallery/{gallery}").json()
            assert (info["model"], info["faces"]) == (SFACE, faces)
            r = client.post(f"/gallery/{gallery}/search", json={"images": {"data": [b64(probes[0])]}})
            assert r.status_code == 409 and r.json()["code"] == "model_mismatch", r.text
    finally:
        if backend == "postgresql":
            stop_server(server)
    assert "Traceback" not in server.log(), server.log()
    # the faces kept their ids (read from the store: the server above no longer lists them)
    from facerest.gallery import open_store

    store = open_store(url)
    try:
        assert {who: [f.face_id for f in store.faces(gallery, who)] for who in people} == ids
    finally:
        store.close()


def test_a_moved_gallery_decides_as_one_enrolled_with_sface(
    sqlite_url: str, w600k: Server, models_dir: Path, tmp_path: Path
) -> None:
    references, known, unknown = split(photos())
    probes = known + unknown
    sface = server_for(sqlite_url, models_dir, tmp_path / "sface.log", pack="commercial")
    try:
        with w600k.client() as old, sface.client() as new:
            for who, photo in references.items():
                for client, gallery in ((old, "os-w600k"), (new, "os-direct")):
                    r = client.post(
                        f"/gallery/{gallery}/subjects/{who}/faces",
                        json={"images": {"data": [b64(photo.path)]}},
                    )
                    assert r.status_code == 200 and len(r.json()["added"]) == 1, r.text
            r = old.post("/gallery/os-posted/subjects/x/faces", json={"embeddings": [[1.0] * 512]})
            [posted] = r.json()["added"]
            info = old.get("/gallery/os-w600k").json()

            # refused, nothing changed
            for gallery, body, status, code, says in [
                ("os-w600k", {"model": "nope"}, 400, "bad_input", "unknown model 'nope'"),
                ("os-w600k", {"model": "scrfd_500m_bnkps"}, 400, "bad_input", "not a face recognizer"),
                ("os-w600k", {"model": "w600k_mbf"}, 400, "bad_input", "already"),
                ("os-w600k", {"model": SFACE, "into": "os-posted"}, 409, "conflict", "already exists"),
                ("os-w600k", {}, 404, "not_found", "no unfinished move"),
                (
                    "os-posted",
                    {"model": SFACE},
                    409,
                    "conflict",
                    f"keep no crop .* face ids {posted['face_id']}",
                ),
                ("os-none", {"model": SFACE}, 404, "not_found", "no gallery"),
                ("os-w600k", {"model": SFACE, "into": "a/b"}, 422, "validation_error", "into"),
                ("os-w600k", {"model": SFACE, "drop": True}, 422, "validation_error", "drop"),
            ]:
                r = old.post(f"/gallery/{gallery}/reembed", json=body)
                assert (r.status_code, r.json()["code"]) == (status, code), (body, r.text)
                assert re.search(says, r.json()["detail"]), r.text
            assert old.get("/gallery/os-w600k").json() == info
            for method in ("GET", "DELETE"):
                assert old.request(method, "/gallery/os-w600k/reembed").status_code == 404

            r = old.post("/gallery/os-w600k/reembed", json={"model": SFACE, "into": "os-moved"})
            assert r.status_code == 202, r.text
            done = wait_for(old, "os-w600k", lambda b: b["state"] in ("done", "failed"))
            assert (done["state"], done["into"], done["faces"], done["missing"]["count"]) == (
                "done",
                "os-moved",
                len(references),
                0,
            ), done
            assert old.get("/gallery/os-w600k").json() == info  # the gallery moved from is as it was

            # the same probes through the SFace server, against both galleries
            decisions = {}
            for gallery in ("os-moved", "os-direct"):
                hits = []
                for start in range(0, len(probes), 24):
                    chunk = probes[start : start + 24]
                    r = new.post(
                        f"/gallery/{gallery}/search", json={"images": {"data": [b64(p.path) for p in chunk]}}
                    )
                    assert r.status_code == 200, r.text
                    hits += [largest(item["faces"]) for item in r.json()["data"]]
                decisions[gallery] = hits
            moved, direct = decisions["os-moved"], decisions["os-direct"]
            differ = [
                (p.path.name, p.who, a["subject"], a["similarity"], b["subject"], b["similarity"])
                for p, a, b in zip(probes, moved, direct, strict=True)
                if a["subject"] != b["subject"]
            ]
            right = {
                g: sum(h["subject"] == p.who for h, p in zip(d[: len(known)], known, strict=True))
                for g, d in decisions.items()
            }
            rejected = {g: sum(h["subject"] is None for h in d[len(known) :]) for g, d in decisions.items()}
            genuine = {
                g: [h["matches"][0]["similarity"] for h, p in zip(d[: len(known)], known, strict=True)]
                for g, d in decisions.items()
            }
            threshold = r.json()["threshold"]
            lines = [
                f"{len(references)} identities; {len(known)} known and {len(unknown)} unknown probes, "
                f"searched by the SFace server at threshold {threshold:.4f}:"
            ]
            for g in decisions:
                mean, low = sum(genuine[g]) / len(genuine[g]), min(genuine[g])
                lines.append(
                    f"  {g}: known named {right[g]}/{len(known)}, unknown rejected {rejected[g]}/"
                    f"{len(unknown)}, known probes' best similarity mean {mean:.4f} min {low:.4f}"
                )
            lines.append(f"  probes decided differently: {differ or 'none'}")
            print("\n" + "\n".join(lines))
            assert not differ
            assert right["os-moved"] == right["os-direct"] and rejected["os-moved"] == rejected[
                "os-direct"
            ] == len(unknown)
    finally:
        stop_server(sface)
    assert "Traceback" not in sface.log(), sface.log()
