"""What making a deleted face's bytes gone costs a delete, in the SQLite gallery (issue 30).

    PYTHONPATH=. python benchmarks/erasure_cost.py [--faces 10000 100000] [--deletes 20]

Every delete (facerest/gallery/erasure.py) zeroes the rows (secure_delete), empties the WAL into
the database (wal_checkpoint(TRUNCATE)) and rewrites the gallery's index file without the deleted
codes. Measured per single-face delete on an indexed gallery of each size, with the parts apart:
the index file rewrite and the checkpoint. Synthetic 512-d unit vectors, a temporary folder.
Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from facerest.gallery.index import IndexOptions
from facerest.gallery.sqlite import SQLiteStore
from facerest.gallery.store import ModelTag, NewFace

MODEL = ModelTag("bench", "0" * 32, 512)


def median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--deletes", type=int, default=20)
    args = parser.parse_args()
    print(f"{'faces':>8} {'delete ms':>10} {'index rewrite ms':>17} {'checkpoint ms':>14} {'index MB':>9}")
    rng = np.random.default_rng(0)
    for count in args.faces:
        with tempfile.TemporaryDirectory() as folder:
            store = SQLiteStore(Path(folder) / "gallery.db", IndexOptions(min_faces=5000))
            ids: list[int] = []
            for start in range(0, count, 2000):
                v = rng.standard_normal((min(2000, count - start), 512)).astype(np.float32)
                v /= np.linalg.norm(v, axis=1, keepdims=True)
                ids += store.add_faces("g", f"s{start}", MODEL, [NewFace(x) for x in v])
            store.wait_for_indexes()
            store.delete_face("g", ids.pop())  # the first save after the build
            deletes, saves, checkpoints = [], [], []
            for face_id in ids[: args.deletes]:
                started = time.perf_counter()
                store.delete_face("g", face_id)
                deletes.append(time.perf_counter() - started)
            with store._lock:
                for _ in range(5):
                    started = time.perf_counter()
                    store._save_index("g")
                    saves.append(time.perf_counter() - started)
                    started = time.perf_counter()
                    store._checkpoint()
                    checkpoints.append(time.perf_counter() - started)
            size = sum(p.stat().st_size for p in (Path(folder) / "gallery.db-index").iterdir()) / 1e6
            store.close()
        print(
            f"{count:>8} {median_ms(deletes):>10.1f} {median_ms(saves):>17.1f} "
            f"{median_ms(checkpoints):>14.1f} {size:>9.1f}"
        )


if __name__ == "__main__":
    main()
