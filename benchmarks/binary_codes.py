"""Which scan proposes candidates for the embedded gallery: sign codes of a random projection,
compared by Hamming distance over every face, then re-ranked exactly.

    PYTHONPATH=. python benchmarks/binary_codes.py [--faces 1000000] [--queries 300] [--bits 128,256,512]

The gallery and queries are gallery_bench.py's ("facelike" synthetic faces, 4 per subject; each
query a new face of an enrolled subject, cosine ~0.56 to that subject's faces). Each face becomes
`bits` signs of its projection on a fixed Gaussian matrix (random hyperplanes: the share of
differing bits estimates the angle between two faces). Three scans of the same codes, one query
at a time: faiss-cpu's IndexBinaryFlat, usearch's exhaustive `search(..., exact=True)` with the
Hamming metric, and numpy (`bitwise_count` of the XOR, then `argpartition`). Then the `k` nearest
codes are re-ranked by the exact float32 cosine and the best subject compared with the exact
scan's (recall@1 of subjects, as gallery_bench.py counts it). Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gallery_bench import PER_SUBJECT, new_faces, spectrum, synthetic


def codes_of(vectors: np.ndarray, projection: np.ndarray) -> np.ndarray:
    out = np.empty((len(vectors), projection.shape[1] // 8), np.uint8)
    for start in range(0, len(vectors), 100_000):
        out[start : start + 100_000] = np.packbits(vectors[start : start + 100_000] @ projection > 0, axis=1)
    return out


def scanners(codes: np.ndarray, bits: int) -> dict[str, Callable[[np.ndarray, int], np.ndarray]]:
    import faiss
    from usearch.index import MetricKind, search

    flat = faiss.IndexBinaryFlat(bits)
    flat.add(codes)
    words = codes.view(np.uint64)

    def with_faiss(query: np.ndarray, k: int) -> np.ndarray:
        return flat.search(query[None], k)[1][0]

    def with_usearch(query: np.ndarray, k: int) -> np.ndarray:
        return np.asarray(search(codes, query, k, MetricKind.Hamming, exact=True, threads=1).keys, np.int64)

    def with_numpy(query: np.ndarray, k: int) -> np.ndarray:
        distances = np.bitwise_count(words ^ query.view(np.uint64)).sum(1, dtype=np.uint16)
        return np.argpartition(distances, k)[:k]

    return {"faiss IndexBinaryFlat": with_faiss, "usearch exact": with_usearch, "numpy": with_numpy}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--faces", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--bits", default="128,256,512")
    parser.add_argument("--candidates", default="50,100,200,300,1000")
    args = parser.parse_args()
    import faiss

    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    centres, faces = synthetic(rng, args.faces // PER_SUBJECT, "facelike")
    picks = rng.integers(0, len(centres), args.queries)
    queries = new_faces(rng, centres[picks], spectrum("facelike"))
    subject = np.arange(len(faces)) // PER_SUBJECT
    exact = np.concatenate(
        [subject[(faces @ queries[s : s + 100].T).argmax(0)] for s in range(0, len(queries), 100)]
    )
    ks = [int(k) for k in args.candidates.split(",")]
    print(f"{len(faces):,} faces, {len(queries)} queries, one at a time, one thread")
    columns = " | ".join(f"recall@1 k={k}" for k in ks)
    print(f"| bits | scan | codes MiB | encode s | scan p50 ms | {columns} |")
    print("|---|---|---|---|---|" + "---|" * len(ks))
    for bits in (int(b) for b in args.bits.split(",")):
        projection = np.random.default_rng(7).standard_normal((faces.shape[1], bits), dtype=np.float32)
        t0 = time.perf_counter()
        codes = codes_of(faces, projection)
        encode_s = time.perf_counter() - t0
        query_codes = codes_of(queries, projection)
        for name, scan in scanners(codes, bits).items():
            sample = query_codes if name.startswith("faiss") else query_codes[:30]
            took = []
            for q in sample:
                t0 = time.perf_counter()
                scan(q, max(ks))
                took.append((time.perf_counter() - t0) * 1000)
            recalls = []
            for k in ks:
                hits = 0
                for qi, q in enumerate(sample):
                    found = scan(q, k)
                    found = found[found >= 0]
                    hits += subject[found[np.argmax(faces[found] @ queries[qi])]] == exact[qi]
                recalls.append(f"{hits / len(sample):.3f}")
            print(
                f"| {bits} | {name} | {codes.nbytes / 2**20:.0f} | {encode_s:.1f} | "
                f"{np.median(took):.2f} | " + " | ".join(recalls) + " |",
                flush=True,
            )


if __name__ == "__main__":
    main()
