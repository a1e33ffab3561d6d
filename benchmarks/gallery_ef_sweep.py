"""Recall and latency of the SQLite gallery's index against its breadth (sets RECALL_TO_EF).

    PYTHONPATH=. python benchmarks/gallery_ef_sweep.py PATH/gallery.db [--faces 100000]

PATH is a gallery left by `benchmarks/gallery_bench.py --backends sqlite` (its temporary folder,
printed in the server log); the queries are regenerated from the same seed. In-process (no
HTTP): the index's candidates re-ranked as the store does, against the exact scan. Prints a
table; asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gallery_bench import new_faces, spectrum, synthetic

from facerest.gallery.index import IndexOptions
from facerest.gallery.sqlite import SQLiteStore


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("database", type=Path)
    parser.add_argument("--faces", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--ef", default="96,160,320,640")
    args = parser.parse_args()
    rng = np.random.default_rng(0)  # as gallery_bench.py draws them
    centres, _ = synthetic(rng, args.faces // 4, "facelike")
    picks = rng.integers(0, len(centres), args.queries)
    queries = new_faces(rng, centres[picks], spectrum("facelike"))
    store = SQLiteStore(args.database, IndexOptions(min_faces=1))
    matrix, index = store._matrices["bench"], store._indexes["bench"]
    print(f"{len(index):,} faces, index {index.memory_bytes() / 2**20:.0f} MiB")
    exact = [r.matches for r in matrix.search(queries, 10)]
    print("| ef | recall@1 | recall@10 | p50 ms | p95 ms |\n|---|---|---|---|---|")
    for ef in (int(e) for e in args.ef.split(",")):
        times, top1, top10 = [], [], []
        for query, truth in zip(queries, exact, strict=True):
            t0 = time.perf_counter()
            [candidates] = index.search(query[None], 100, expansion=ef)
            got = matrix.rerank(query, candidates, 10).matches
            times.append((time.perf_counter() - t0) * 1000)
            top1.append(got[0].subject == truth[0].subject)
            top10.append(len({m.subject for m in got} & {m.subject for m in truth}) / len(truth))
        p50, p95 = np.percentile(times, [50, 95])
        print(f"| {ef} | {np.mean(top1):.3f} | {np.mean(top10):.3f} | {p50:.2f} | {p95:.2f} |", flush=True)
    store.close()


if __name__ == "__main__":
    main()
