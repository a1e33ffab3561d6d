"""Gallery backends at scale, through the HTTP API: enrolment, index build, search latency and recall.

    PYTHONPATH=. python benchmarks/gallery_bench.py [--faces 100000] [--backends sqlite,postgresql]
        [--vectors facelike|isotropic] [--queries 200]

The gallery: `--faces` synthetic 512-d unit vectors, 4 faces per subject, plus the shared photos'
real embeddings (one reference photo per identity; the others are probes) when ../shared/testdata
is there. Synthetic vectors come in two kinds:
  facelike  - drawn with a decaying spectrum (variance of component i ~ 1/(i+10)), which gives
              different "people" the spread of cosine similarities the real embeddings show
              (printed: std of impostor similarities, real vs synthetic);
  isotropic - plain Gaussian, normalised: every direction equally likely, the worst case for
              any graph index (nothing leads a search towards the right neighbour).
A subject's faces are its centre plus noise (cosine ~0.75 to it); queries are new faces of
enrolled subjects drawn the same way, plus the real probes.

Steps: bulk enrolment through the store (one transaction per subject, as the API does) with no
index; then `facerest serve` on that storage: start (both backends build their index in the
background: SQLite's sign codes, PostgreSQL's HNSW index CONCURRENTLY; timed until GET
/galleries says "index": "codes" or "hnsw"); search at 1
and 8 concurrent clients (each request one embedding, top 10; timed through a lean keep-alive
client, LeanClient, and at 1 client also through httpx to show what that client adds); recall@1 and @10 of the
subjects against the same request with `exact: true`; a second start (index reused); the
server's RSS and the storage on disk; enrolment through HTTP while searching. PostgreSQL: a
throwaway Debian server (tests/gallery_pg.py) unless `--postgres-url`. Prints a table; asserts
nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import json
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import psutil

from facerest.gallery import open_store
from facerest.gallery.index import IndexOptions
from facerest.gallery.store import GalleryStore, ModelTag, NewFace
from facerest.serving.local import start_local_server, stop_local_server

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "testdata"
MODEL = ModelTag("w600k_mbf", "c5b029527cb6f874e057613fc10bae1b", 512)
PER_SUBJECT = 4


def spectrum(kind: str, dim: int = 512) -> np.ndarray:
    if kind == "isotropic":
        return np.ones(dim, np.float32)
    scale = 1.0 / np.sqrt(np.arange(dim, dtype=np.float32) + 10.0)
    return scale / np.linalg.norm(scale) * np.sqrt(dim)


def unit_rows(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def synthetic(rng: np.random.Generator, subjects: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(centres (S, 512), faces (S*4, 512)): chunked, so 1M faces need no float64 temporaries."""
    scale = spectrum(kind)
    centres = np.empty((subjects, 512), np.float32)
    faces = np.empty((subjects * PER_SUBJECT, 512), np.float32)
    for start in range(0, subjects, 50_000):
        n = min(50_000, subjects - start)
        c = unit_rows(rng.standard_normal((n, 512), dtype=np.float32) * scale)
        centres[start : start + n] = c
        for j in range(PER_SUBJECT):
            faces[(start * PER_SUBJECT) + j : (start + n) * PER_SUBJECT : PER_SUBJECT] = new_faces(
                rng, c, scale
            )
    return centres, faces


def new_faces(rng: np.random.Generator, centres: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Another photo of each centre's person: cosine ~0.75 to the centre."""
    noise = unit_rows(rng.standard_normal(centres.shape, dtype=np.float32) * scale)
    return unit_rows(centres + 0.88 * noise)


def real_embeddings() -> dict[str, list[tuple[str, np.ndarray]]]:
    """identity -> [(image, embedding)] of the shared verification sets (empty without them)."""
    import csv

    import cv2

    from facerest.config import Settings
    from facerest.pipeline import ExtractOptions, FaceAnalyzer
    from facerest.preparation.stage import load_models

    if not SHARED.exists():
        print(f"{SHARED} is absent: no real embeddings mixed in")
        return {}
    analyzer = FaceAnalyzer(load_models(Settings(models_dir=Path(tempfile.mkdtemp()), threads=2)), Settings())
    out: dict[str, list[tuple[str, np.ndarray]]] = {}
    for set_name in ("deepface", "facerec_ageitgey"):
        root = SHARED / "verify" / set_name
        with (root / "identities.csv").open() as fh:
            people = [(r["img"], r["identity"]) for r in csv.DictReader(fh)]
        results = analyzer.process([cv2.imread(str(root / img)) for img, _ in people], ExtractOptions())
        for (img, who), result in zip(people, results, strict=True):
            face = max(result.faces, key=lambda f: (f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]))
            out.setdefault(f"{set_name}-{who}", []).append((img, face.embedding))
    analyzer.close()
    return out


def impostor_std(vectors: np.ndarray, labels: list[str]) -> float:
    sims = vectors @ vectors.T
    different = np.array(labels)[:, None] != np.array(labels)[None, :]
    return float(sims[np.triu(different, 1)].std())


def enrol(url: str, faces: np.ndarray, real: dict, timed: int) -> tuple[float, int]:
    """Enrolment through the store (one transaction per subject, as the API does) for the first
    `timed` subjects, timed; the rest loaded in bulk (one transaction per 5,000 subjects)."""
    store: GalleryStore = open_store(url, IndexOptions(min_faces=0))
    subjects = len(faces) // PER_SUBJECT
    timed = min(timed, subjects)
    started = time.perf_counter()
    for s in range(timed):
        chunk = faces[s * PER_SUBJECT : (s + 1) * PER_SUBJECT]
        store.add_faces(
            "bench", f"subject-{s}", MODEL, [NewFace(v, None, [0, 0, 100, 100], 0.9) for v in chunk]
        )
    elapsed = time.perf_counter() - started
    store.close()
    bulk_load(url, faces, range(timed, subjects))
    store = open_store(url, IndexOptions(min_faces=0))
    for who, photos in real.items():
        store.add_faces("bench", who, MODEL, [NewFace(photos[0][1])])
    store.close()
    return elapsed, timed


def bulk_load(url: str, faces: np.ndarray, subjects: range) -> None:
    now = time.time()
    rows = ((f"subject-{s}", faces[s * PER_SUBJECT + j], now) for s in subjects for j in range(PER_SUBJECT))
    if url.startswith("sqlite:///"):
        import sqlite3

        db = sqlite3.connect(url.removeprefix("sqlite:///"))
        with db:
            db.executemany(
                "INSERT INTO faces (gallery, subject, embedding, model, added_at) "
                "VALUES ('bench', ?, ?, ?, ?)",
                ((s, v.tobytes(), MODEL.name, at) for s, v, at in rows),
            )
        db.close()
        return
    import psycopg
    from pgvector.psycopg import register_vector

    with psycopg.connect(url) as conn:
        register_vector(conn)
        with (
            conn.cursor() as cur,
            cur.copy(
                "COPY facerest_faces (gallery, subject, embedding, model, added_at) "
                "FROM STDIN WITH (FORMAT BINARY)"
            ) as copy,
        ):
            copy.set_types(["text", "text", "vector", "text", "float8"])
            for s, v, at in rows:
                copy.write_row(("bench", s, v, MODEL.name, at))


def storage_mib(url: str) -> float:
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        files = [p for p in path.parent.rglob("*") if p.is_file()]
        return sum(p.stat().st_size for p in files) / 2**20
    import psycopg

    with psycopg.connect(url) as conn:
        return conn.execute("SELECT pg_database_size(current_database())").fetchone()[0] / 2**20  # type: ignore[index]


def wait_for_index(base: str) -> None:
    """Until the server says the gallery is searched through its index (both backends build it
    in the background after the start)."""
    with httpx.Client(base_url=base, timeout=60, trust_env=False) as http:
        while True:
            [bench] = [g for g in http.get("/galleries").json()["galleries"] if g["name"] == "bench"]
            if bench["index"] in ("codes", "hnsw"):
                return
            time.sleep(1)


class LeanClient:
    """One keep-alive HTTP/1.1 connection through the standard library's http.client.

    Latency is read through this rather than httpx: httpx spends ~1.3 ms of its own CPU per
    request here (measured side by side on one server: 1M gallery p50 6.1 ms through httpx,
    5.3 through http.client; the one-face gallery 2.9 vs 1.5), which is the client's cost, not
    the API's. The body is still encoded and the answer decoded inside the clock."""

    def __init__(self, base: str) -> None:
        url = urlsplit(base)
        self.connection = http.client.HTTPConnection(url.hostname, url.port, timeout=120)

    def post(self, path: str, body: dict) -> dict:
        self.connection.request(
            "POST", path, body=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        response = self.connection.getresponse()
        answer = response.read()
        if response.status != 200:
            raise RuntimeError(f"{path}: {response.status} {answer[:200]!r}")
        return json.loads(answer)


def search_all(
    base: str,
    queries: np.ndarray,
    clients: int,
    exact: bool = False,
    threshold: float | None = -1.0,
    gallery: str = "bench",
    through_httpx: bool = False,
) -> tuple[list, list[float]]:
    """Top-10 subjects per query and each request's time. threshold -1 (the default here): the
    index's own answer, never searched again exactly; None: the server's threshold, below which
    a face is searched again exactly (the service's behaviour)."""
    local = threading.local()

    def one(q: np.ndarray) -> tuple[list[str], float]:
        if not hasattr(local, "client"):
            local.client = (
                httpx.Client(base_url=base, timeout=120, trust_env=False)
                if through_httpx
                else LeanClient(base)
            )
        body = {"embeddings": [q.tolist()], "top_k": 10, "exact": exact, "threshold": threshold}
        t0 = time.perf_counter()
        if through_httpx:
            r = local.client.post(f"/gallery/{gallery}/search", json=body)
            r.raise_for_status()
            answer = r.json()
        else:
            answer = local.client.post(f"/gallery/{gallery}/search", body)
        took = (time.perf_counter() - t0) * 1000
        return [m["subject"] for m in answer["data"][0]["faces"][0]["matches"]], took

    with ThreadPoolExecutor(clients) as pool:
        answers = list(pool.map(one, queries))
    return [a for a, _ in answers], [t for _, t in answers]


def run(
    backend: str, url: str, faces: np.ndarray, real: dict, queries: np.ndarray, models: Path, extra_env: dict
) -> dict:
    row: dict[str, str] = {"backend": backend, "faces": f"{len(faces) + len(real):,}"}
    enrol_s, requests = enrol(url, faces, real, timed=2000)
    row["enrol (store) req/s"] = f"{requests / enrol_s:.0f}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEREST_")}
    env.update({"FACEREST_MODELS_DIR": str(models), "FACEREST_GALLERY_URL": url, "FACEREST_THREADS": "2"})
    env.update(extra_env)
    log_dir = Path(tempfile.mkdtemp(prefix="facerest-bench-log-"))
    t0 = time.perf_counter()
    base, process = start_local_server(env, log_dir / "first.log", timeout_s=7200)
    row["first start s"] = f"{time.perf_counter() - t0:.1f}"
    try:
        wait_for_index(base)
        row["index build s"] = f"{time.perf_counter() - t0:.1f}"
        exact_answers, exact_ms = search_all(base, queries, 1, exact=True)
        row["exact p50 ms"] = f"{np.percentile(exact_ms, 50):.1f}"
        for clients in (1, 8):
            answers, ms = search_all(base, queries, clients)
            p50, p95 = np.percentile(ms, [50, 95])
            row[f"p50/p95 ms x{clients}"] = f"{p50:.1f}/{p95:.1f}"
        _, httpx_ms = search_all(base, queries, 1, through_httpx=True)
        row["p50 ms x1 via httpx"] = f"{np.percentile(httpx_ms, 50):.1f}"
        with httpx.Client(base_url=base, timeout=60, trust_env=False) as http:
            # what HTTP, JSON and the service cost around any search: a one-face gallery
            http.post("/gallery/tiny/subjects/one/faces", json={"embeddings": [queries[0].tolist()]})
        _, floor_ms = search_all(base, queries, 1, gallery="tiny")
        row["one-face gallery p50 ms"] = f"{np.percentile(floor_ms, 50):.1f}"
        row["recall@1"] = (
            f"{np.mean([a[:1] == e[:1] for a, e in zip(answers, exact_answers, strict=True)]):.3f}"
        )
        row["recall@10"] = (
            f"{np.mean([len(set(a) & set(e)) / max(len(e), 1) for a, e in zip(answers, exact_answers, strict=True)]):.3f}"  # noqa: E501
        )
        if real:
            probes = [(who, emb) for who, photos in real.items() for _, emb in photos[1:]]
            probe_vectors = np.stack([e for _, e in probes])
            for name, exact, threshold in (
                ("index", False, -1.0),
                ("served", False, None),
                ("exact", True, None),
            ):
                got, _ = search_all(base, probe_vectors, 1, exact=exact, threshold=threshold)
                rank1 = np.mean([g[0] == who for g, (who, _) in zip(got, probes, strict=True)])
                row[f"real rank-1 {name}"] = f"{rank1:.3f}"
        # enrolment through HTTP while 2 clients search
        stop = threading.Event()

        def searching() -> None:
            while not stop.is_set():
                search_all(base, queries[:20], 1)

        searchers = [threading.Thread(target=searching) for _ in range(2)]
        for t in searchers:
            t.start()
        rng = np.random.default_rng(99)
        extra = unit_rows(rng.standard_normal((200 * PER_SUBJECT, 512), dtype=np.float32))
        with httpx.Client(base_url=base, timeout=120, trust_env=False) as http:
            t1 = time.perf_counter()
            for s in range(200):
                body = {"embeddings": extra[s * PER_SUBJECT : (s + 1) * PER_SUBJECT].tolist()}
                http.post(f"/gallery/bench/subjects/http-{s}/faces", json=body).raise_for_status()
            row["enrol (HTTP, searched) req/s"] = f"{200 / (time.perf_counter() - t1):.0f}"
        stop.set()
        for t in searchers:
            t.join()
        row["server RSS MiB"] = f"{psutil.Process(process.pid).memory_info().rss / 2**20:.0f}"
    finally:
        stop_local_server(process)
    row["disk MiB"] = f"{storage_mib(url):.0f}"
    t0 = time.perf_counter()
    base, process = start_local_server(env, log_dir / "second.log", timeout_s=7200)
    try:
        search_all(base, queries[:1], 1)
        row["restart s (answering)"] = f"{time.perf_counter() - t0:.1f}"
        wait_for_index(base)
        row["restart s (indexed)"] = f"{time.perf_counter() - t0:.1f}"
    finally:
        stop_local_server(process)
    row.update(in_process(url, queries, extra_env))
    return row


def in_process(url: str, queries: np.ndarray, extra_env: dict) -> dict[str, str]:
    """The store's own search (no HTTP, no JSON), to show what the API adds, and how its time and
    recall@1 (against the exact scan) follow the number of faces re-ranked per query (both
    backends search their codes; PostgreSQL without them, with FACEREST_GALLERY_INDEX_MIN_FACES
    above the gallery, would use hnsw.ef_search)."""
    from facerest.config import Settings
    from facerest.gallery import index_options

    settings = Settings(**{k.removeprefix("FACEREST_").lower(): v for k, v in extra_env.items()})
    options = index_options(settings)
    store = open_store(url, options)
    row: dict[str, str] = {}
    try:
        store.wait_for_indexes()  # type: ignore[attr-defined]
        exact = [store.search("bench", q[None, :], 10, exact=True)[0].matches[:1] for q in queries]
        for candidates in (options.candidates, 50, 200, 300):
            if hasattr(store, "index_options"):  # SQLite
                store.index_options = dataclasses.replace(options, candidates=candidates)
            else:
                store.candidates = candidates  # type: ignore[attr-defined]
            took, hits = [], 0
            for q, best in zip(queries, exact, strict=True):
                t0 = time.perf_counter()
                found = store.search("bench", q[None, :], 1)[0].matches[:1]
                took.append((time.perf_counter() - t0) * 1000)
                hits += [m.subject for m in found] == [m.subject for m in best]
            label = "in-process" if candidates == options.candidates else f"candidates {candidates}"
            row[f"{label} p50 ms / recall@1"] = f"{np.percentile(took, 50):.2f} / {hits / len(queries):.3f}"
    finally:
        store.close()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--faces", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--vectors", choices=["facelike", "isotropic"], default="facelike")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--postgres-url", default="")
    parser.add_argument(
        "--index-min-faces", default="", help="FACEREST_GALLERY_INDEX_MIN_FACES for the server"
    )
    parser.add_argument("--recall", default="", help="FACEREST_GALLERY_RECALL for the server")
    parser.add_argument(
        "--pg-build-memory-mb",
        default="",
        help="FACEREST_GALLERY_INDEX_BUILD_MEMORY_MB for the server (1M faces: 4096)",
    )
    parser.add_argument(
        "--no-pg-hnsw",
        action="store_true",
        help="FACEREST_GALLERY_PG_HNSW=false: the codes alone (no HNSW build competing for the CPU)",
    )
    args = parser.parse_args()
    extra_env = {}
    if args.no_pg_hnsw:
        extra_env["FACEREST_GALLERY_PG_HNSW"] = "false"
    if args.index_min_faces:
        extra_env["FACEREST_GALLERY_INDEX_MIN_FACES"] = args.index_min_faces
    if args.recall:
        extra_env["FACEREST_GALLERY_RECALL"] = args.recall
    if args.pg_build_memory_mb:
        extra_env["FACEREST_GALLERY_INDEX_BUILD_MEMORY_MB"] = args.pg_build_memory_mb
    rng = np.random.default_rng(0)
    real = real_embeddings()
    centres, faces = synthetic(rng, args.faces // PER_SUBJECT, args.vectors)
    picks = rng.integers(0, len(centres), args.queries)
    queries = new_faces(rng, centres[picks], spectrum(args.vectors))
    if real:
        labels = [who for who, photos in real.items() for _ in photos]
        vectors = np.stack([e for photos in real.values() for _, e in photos])
        sample = faces[: 4 * 200]
        print(
            f"impostor similarity std: real {impostor_std(vectors, labels):.3f}, "
            f"synthetic {args.vectors} {impostor_std(sample, [str(i // 4) for i in range(len(sample))]):.3f}; "  # noqa: E501
            f"genuine mean: synthetic {float(np.mean(np.sum(queries * faces[picks * 4], 1))):.3f}"
        )
    models = Path(tempfile.mkdtemp(prefix="facerest-bench-models-"))
    rows = []
    for backend in args.backends.split(","):
        if backend == "sqlite":
            url = f"sqlite:///{Path(tempfile.mkdtemp(prefix='facerest-bench-')) / 'gallery.db'}"
            rows.append(run(backend, url, faces, real, queries, models, extra_env))
        else:
            sys.path.insert(0, str(ROOT / "tests"))
            from gallery_pg import new_database, start_postgres, stop_postgres

            server = None
            if args.postgres_url:
                url = args.postgres_url
            else:
                root = Path(tempfile.mkdtemp(prefix="facerest-bench-pg-"))
                uri, server = start_postgres(root)
                url = new_database(uri, "bench")
            try:
                rows.append(run(backend, url, faces, real, queries, models, extra_env))
            finally:
                if server is not None:
                    stop_postgres(server, root)
        print(rows[-1], flush=True)
    headers = list(dict.fromkeys(h for row in rows for h in row))
    print(f"\n{args.vectors} vectors, {args.queries} queries, pid {os.getpid()}")
    print("| " + " | ".join(headers) + " |\n|" + "---|" * len(headers))
    for row in rows:
        print("| " + " | ".join(row.get(h, "") for h in headers) + " |")


if __name__ == "__main__":
    main()
