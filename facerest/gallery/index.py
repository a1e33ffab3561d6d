"""An approximate-nearest-neighbour index over one gallery's faces (usearch HNSW), derived from SQLite.

SQLite is the record; this index only proposes candidates, which the store re-ranks exactly
against its float32 copy, so a stale or damaged index can cost recall but never correctness:
deleted faces are dropped before re-ranking, renamed subjects are looked up at answer time.
The file is written to a temporary name, flushed and renamed over the old one (atomic), and
on opening it is reconciled with the faces SQLite holds (missing ones added, gone ones removed)
or rebuilt when it cannot be read or was built with other settings.

Why usearch (measured in docs/performance.md, benchmarks/ann_libraries.py): deletes in place
(faiss's HNSW cannot remove), float16/int8 storage, a single-file save/restore, 64-bit keys
(our face ids), and machine code chosen at run time for the CPU it runs on.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

#: bump when what the files mean changes: older files are rebuilt
FORMAT = 1


@dataclass(frozen=True, slots=True)
class IndexOptions:
    """How galleries are indexed; `min_faces` 0 turns the index off (exact scan always)."""

    min_faces: int = 5_000
    #: galleries at least this large are (re)built in a background thread while searches scan
    #: exactly (a million faces take many minutes); smaller ones are built at once
    background_from: int = 50_000
    #: int8 inside the graph: half the memory and time of float16 at 100k faces, recall@1 0.987 vs
    #: 0.990 at expansion 320 after the exact re-rank (docs/performance.md)
    dtype: str = "i8"
    connectivity: int = 16
    expansion_add: int = 128
    expansion_search: int = 320
    #: faces re-ranked exactly per query (at least 10 per subject asked for)
    candidates: int = 100
    threads: int = 0
    #: PostgreSQL's maintenance_work_mem for the HNSW build: the build is many times faster when
    #: the whole graph fits (a million 512-d faces need about 4 GB)
    pg_build_memory_mb: int = 1024

    def shape(self) -> dict[str, object]:
        """What a saved file must have been built with to be reused."""
        return {"format": FORMAT, "dtype": self.dtype, "connectivity": self.connectivity}


class FaceIndex:
    """Face ids -> unit vectors, searched by inner product (cosine of unit vectors)."""

    def __init__(self, dim: int, options: IndexOptions, index: object | None = None) -> None:
        from usearch.index import Index

        self.dim = dim
        self.options = options
        self._index = index or Index(
            ndim=dim,
            metric="ip",
            dtype=options.dtype,
            connectivity=options.connectivity,
            expansion_add=options.expansion_add,
            expansion_search=options.expansion_search,
        )
        self._index.expansion_search = options.expansion_search
        self.removed_since_build = 0
        self.dirty = False

    def __len__(self) -> int:
        return len(self._index)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            self._index.add(
                np.asarray(ids, np.uint64), np.asarray(vectors, np.float32), threads=self.options.threads
            )
            self.dirty = True

    def remove(self, ids: np.ndarray | list[int]) -> None:
        ids = np.asarray(ids, np.uint64)
        if len(ids):
            self._index.remove(ids)
            self.removed_since_build += len(ids)
            self.dirty = True

    def worn(self) -> bool:
        """Deleted nodes stay in the graph as tombstones: past a quarter of it, rebuild."""
        return self.removed_since_build > max(len(self), 1) // 4

    def keys(self) -> np.ndarray:
        return np.asarray(self._index.keys, np.int64)

    def search(self, queries: np.ndarray, count: int, expansion: int | None = None) -> list[np.ndarray]:
        """Candidate face ids per query, roughly best first."""
        self._index.expansion_search = max(expansion or self.options.expansion_search, count)
        found = self._index.search(np.asarray(queries, np.float32), count, threads=1)
        if not hasattr(found, "counts"):  # one query: usearch answers a single match list
            return [np.asarray(found.keys[: len(found)], np.int64)]
        return [np.asarray(keys[:n], np.int64) for keys, n in zip(found.keys, found.counts, strict=True)]

    def memory_bytes(self) -> int:
        return int(self._index.memory_usage)

    # --- files ---

    def save(self, path: Path) -> None:
        """Atomically: a reader sees the old file or the new one, never half of one."""
        path.parent.mkdir(parents=True, exist_ok=True)
        # per process: workers sharing one SQLite file may save the same gallery at once
        temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        self._index.save(str(temporary))
        with open(temporary, "rb+") as fh:
            os.fsync(fh.fileno())
        meta = {
            **self.options.shape(),
            "dim": self.dim,
            "count": len(self),
            "bytes": temporary.stat().st_size,
        }
        meta_path = path.with_name(path.name + ".json")
        meta_tmp = meta_path.with_name(f"{meta_path.name}.{os.getpid()}.tmp")
        meta_tmp.write_text(json.dumps(meta))
        # the index first, then its description: a crash in between leaves a description that
        # does not match (size), which is read as "rebuild"
        os.replace(temporary, path)
        os.replace(meta_tmp, meta_path)
        _fsync_dir(path.parent)
        self.dirty = False

    @classmethod
    def load(cls, path: Path, dim: int, options: IndexOptions) -> FaceIndex | None:
        """The saved index, or None when absent, unreadable or built with other settings."""
        from usearch.index import Index

        meta_path = path.with_name(path.name + ".json")
        try:
            meta = json.loads(meta_path.read_text())
            if {k: meta.get(k) for k in options.shape()} != options.shape() or meta.get("dim") != dim:
                log.info("gallery index %s was built with other settings; rebuilding", path.name)
                return None
            if path.stat().st_size != meta.get("bytes"):
                log.warning("gallery index %s does not match its description; rebuilding", path.name)
                return None
            index = Index.restore(str(path))
        except FileNotFoundError:
            return None
        except Exception as exc:  # a damaged file is rebuilt from SQLite, whatever the damage
            log.warning("gallery index %s cannot be read (%s); rebuilding", path.name, exc)
            return None
        if index is None or index.ndim != dim or len(index) != meta.get("count"):
            log.warning("gallery index %s is damaged; rebuilding", path.name)
            return None
        return cls(dim, options, index)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: faces added to an index per call while it is built: small enough that a builder holding the
#: store's lock for one chunk's vectors keeps searches waiting only briefly
BUILD_CHUNK = 20_000

Fetch = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def reconcile(
    index: FaceIndex | None,
    ids: np.ndarray,
    fetch: Fetch,
    dim: int,
    options: IndexOptions,
    stop: Callable[[], bool] = lambda: False,
) -> tuple[FaceIndex | None, str]:
    """`index` made to hold exactly `ids`: caught up or built anew; and what was done.

    `fetch(some_ids)` gives (the ids of those that still exist, their vectors), so a builder in
    the background reads the vectors a chunk at a time; `stop()` true abandons the work (None)."""
    started = time.perf_counter()
    if index is not None:
        have = index.keys()
        gone = np.setdiff1d(have, ids, assume_unique=True)
        new = ids[~np.isin(ids, have, assume_unique=True)]
        # a catch-up that would touch most of the graph costs more than a build
        if len(gone) + len(new) <= max(len(ids), 1) // 2:
            index.remove(gone)
            if not _add_in_chunks(index, new, fetch, stop):
                return None, "abandoned"
            if not index.worn():
                return index, f"caught up (+{len(new)} -{len(gone)}) in {time.perf_counter() - started:.2f} s"
    fresh = FaceIndex(dim, options)
    if not _add_in_chunks(fresh, ids, fetch, stop):
        return None, "abandoned"
    return fresh, f"built ({len(fresh)} faces) in {time.perf_counter() - started:.2f} s"


def _add_in_chunks(index: FaceIndex, ids: np.ndarray, fetch: Fetch, stop: Callable[[], bool]) -> bool:
    for start in range(0, len(ids), BUILD_CHUNK):
        if stop():
            return False
        present, vectors = fetch(ids[start : start + BUILD_CHUNK])
        index.add(present, vectors)
    return True


def options_dict(options: IndexOptions) -> dict[str, object]:
    return asdict(options)


#: (recall@1 asked for, HNSW search breadth that reached it): usearch, M=16, float16, 100,000
#: "facelike" 512-d unit vectors with 100 candidates re-ranked (benchmarks/gallery_bench.py's
#: gallery; docs/performance.md: ef 96 -> 0.965, 160 -> 0.985, 320 -> 0.995, 640 -> 1.000). Larger
#: galleries need more for the same recall. A recall between two rows gets the larger breadth.
RECALL_TO_EF = ((0.90, 64), (0.96, 96), (0.98, 160), (0.995, 320), (0.999, 640))


def ef_for_recall(recall: float) -> int:
    for reached, ef in RECALL_TO_EF:
        if recall <= reached:
            return ef
    return 1000
