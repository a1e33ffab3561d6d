"""Where the index starts to beat the exact scan of the SQLite gallery (sets gallery_index_min_faces).

    PYTHONPATH=. python benchmarks/gallery_crossover.py [--sizes 1000,2000,5000,10000,20000]

For each size: the store's own search (one query, top 5 subjects) exact vs through the index
(IndexOptions defaults: 256-bit codes, 100 candidates re-ranked), p50 over 200 queries.
Queries: enrolled faces seen again (cosine ~0.7). Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from facerest.gallery.index import IndexOptions
from facerest.gallery.sqlite import SQLiteStore
from facerest.gallery.store import ModelTag, NewFace

MODEL = ModelTag("w600k_mbf", "c5b029527cb6f874e057613fc10bae1b", 512)


def p50_ms(store: SQLiteStore, queries: np.ndarray, exact: bool) -> float:
    for q in queries[:10]:
        store.search("g", q[None], 5, exact=exact)
    times = []
    for q in queries:
        t0 = time.perf_counter()
        store.search("g", q[None], 5, exact=exact)
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1000,2000,5000,10000,20000")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print("| faces | exact p50 ms | index p50 ms | index build s |\n|---|---|---|---|")
    for size in (int(s) for s in args.sizes.split(",")):
        vectors = rng.standard_normal((size, 512), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        queries = (
            vectors[rng.integers(0, size, 200)] + rng.standard_normal((200, 512), dtype=np.float32) / 22.6
        )
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        path = Path(tempfile.mkdtemp(prefix="facerest-crossover-")) / "g.db"
        store = SQLiteStore(path, IndexOptions(min_faces=0))
        for s in range(0, size, 4):
            store.add_faces("g", f"s{s}", MODEL, [NewFace(v) for v in vectors[s : s + 4]])
        store.close()
        t0 = time.perf_counter()
        indexed = SQLiteStore(path, IndexOptions(min_faces=1))
        build = time.perf_counter() - t0
        print(
            f"| {size:,} | {p50_ms(indexed, queries, True):.2f} | {p50_ms(indexed, queries, False):.2f} "
            f"| {build:.1f} |",
            flush=True,
        )
        indexed.close()


if __name__ == "__main__":
    main()
