"""Which ANN library for the embedded gallery: usearch vs faiss-cpu HNSW on our kind of vectors.

    PYTHONPATH=. python benchmarks/ann_libraries.py [--faces 100000] [--queries 300] [--threads 2]

512-d unit vectors: `--faces` synthetic (Gaussian, normalised) plus, when ../shared/testdata and
the models are there, nothing else (the real embeddings are measured by gallery_bench.py).
Queries: "mated" = an enrolled vector seen again with noise (cosine ~0.7 to it, as a second
photo of an enrolled person is), "unmated" = fresh random vectors (nobody enrolled: the hardest
case for a graph index, its nearest neighbour barely stands out). Recall@k: share of the exact
top-k faces the index returns. Search: one query at a time, one thread. Prints a table; asserts
nothing. hnswlib is not measured: it ships only an sdist whose setup.py compiles with
-march=native (the portability bug this issue is about), see docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def unit(rng: np.random.Generator, n: int, dim: int = 512) -> np.ndarray:
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):  # in chunks: float64 temporaries of 1M x 512 would be 4 GB
        v = rng.standard_normal((min(100_000, n - start), dim), dtype=np.float32)
        out[start : start + len(v)] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    sims = queries @ vectors.T
    top = np.argpartition(-sims, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(sims, top, 1), axis=1)
    return np.take_along_axis(top, order, 1)


def recall(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth, strict=True)]))


def timed_search(
    search: Callable[[np.ndarray], np.ndarray], queries: np.ndarray
) -> tuple[np.ndarray, float, float]:
    for q in queries[:10]:
        search(q)
    found, lat = [], []
    for q in queries:
        t0 = time.perf_counter()
        found.append(search(q))
        lat.append((time.perf_counter() - t0) * 1000)
    p50, p95 = np.percentile(lat, [50, 95])
    return np.array(found), float(p50), float(p95)


def bench_usearch(
    vectors: np.ndarray, dtype: str, threads: int, ef_values: list[int], queries: dict, truth: dict
):
    from usearch.index import Index

    index = Index(ndim=vectors.shape[1], metric="ip", dtype=dtype, connectivity=16, expansion_add=128)
    t0 = time.perf_counter()
    index.add(np.arange(len(vectors)), vectors, threads=threads)
    build = time.perf_counter() - t0
    path = Path(tempfile.mkdtemp()) / "u.usearch"
    t0 = time.perf_counter()
    index.save(str(path))
    save = time.perf_counter() - t0
    size = path.stat().st_size
    t0 = time.perf_counter()
    index = Index.restore(str(path))
    load = time.perf_counter() - t0
    rows = []
    for ef in ef_values:
        index.expansion_search = ef
        for kind, q in queries.items():
            found, p50, p95 = timed_search(lambda v: index.search(v, 10, threads=1).keys, q)
            rows.append(
                {
                    "library": f"usearch {dtype}",
                    "ef": ef,
                    "queries": kind,
                    "build s": build,
                    "index MiB": size / 2**20,
                    "save s": save,
                    "load s": load,
                    "p50 ms": p50,
                    "p95 ms": p95,
                    "recall@1": recall(found, truth[kind], 1),
                    "recall@10": recall(found, truth[kind], 10),
                }
            )
    path.unlink()
    return rows


def bench_faiss(
    vectors: np.ndarray, kind_name: str, threads: int, ef_values: list[int], queries: dict, truth: dict
):
    import faiss

    dim = vectors.shape[1]
    faiss.omp_set_num_threads(threads)
    if kind_name == "f32":
        index = faiss.IndexHNSWFlat(dim, 16, faiss.METRIC_INNER_PRODUCT)
    else:
        qtype = {"f16": faiss.ScalarQuantizer.QT_fp16, "i8": faiss.ScalarQuantizer.QT_8bit}[kind_name]
        index = faiss.IndexHNSWSQ(dim, qtype, 16, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 128
    t0 = time.perf_counter()
    if not index.is_trained:
        index.train(vectors[:20_000])
    index.add(vectors)
    build = time.perf_counter() - t0
    path = Path(tempfile.mkdtemp()) / "f.faiss"
    t0 = time.perf_counter()
    faiss.write_index(index, str(path))
    save = time.perf_counter() - t0
    size = path.stat().st_size
    t0 = time.perf_counter()
    index = faiss.read_index(str(path))
    load = time.perf_counter() - t0
    faiss.omp_set_num_threads(1)
    rows = []
    for ef in ef_values:
        index.hnsw.efSearch = ef
        for kind, q in queries.items():
            found, p50, p95 = timed_search(lambda v: index.search(v[None], 10)[1][0], q)
            rows.append(
                {
                    "library": f"faiss HNSW {kind_name}",
                    "ef": ef,
                    "queries": kind,
                    "build s": build,
                    "index MiB": size / 2**20,
                    "save s": save,
                    "load s": load,
                    "p50 ms": p50,
                    "p95 ms": p95,
                    "recall@1": recall(found, truth[kind], 1),
                    "recall@10": recall(found, truth[kind], 10),
                }
            )
    path.unlink()
    faiss.omp_set_num_threads(threads)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--faces", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ef", default="32,64,128")
    parser.add_argument("--only", default="usearch:f32,usearch:f16,usearch:i8,faiss:f32,faiss:f16,faiss:i8")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    vectors = unit(rng, args.faces)
    mated = vectors[rng.integers(0, args.faces, args.queries)] + unit(rng, args.queries)
    mated /= np.linalg.norm(mated, axis=1, keepdims=True)
    queries = {"mated": mated, "unmated": unit(rng, args.queries)}
    truth = {k: exact_top(vectors, q, 10) for k, q in queries.items()}
    exact_lat = []
    for q in queries["mated"][:100]:
        t0 = time.perf_counter()
        np.argmax(vectors @ q)
        exact_lat.append((time.perf_counter() - t0) * 1000)
    print(
        f"{args.faces:,} faces; exact scan (numpy, float32) p50 {np.median(exact_lat):.2f} ms; "
        f"pid {os.getpid()}"
    )
    ef_values = [int(e) for e in args.ef.split(",")]
    rows = []
    for spec in args.only.split(","):
        library, dtype = spec.split(":")
        bench = bench_usearch if library == "usearch" else bench_faiss
        new = bench(vectors, dtype, args.threads, ef_values, queries, truth)
        for row in new:
            print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
        rows += new
    headers = list(rows[0])
    print("\n| " + " | ".join(headers) + " |\n|" + "---|" * len(headers))
    for row in rows:
        print(
            "| "
            + " | ".join(f"{row[h]:.3f}" if isinstance(row[h], float) else str(row[h]) for h in headers)
            + " |"
        )


if __name__ == "__main__":
    main()
