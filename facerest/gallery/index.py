"""Candidate faces for one gallery's searches: a sign code per face, compared with every face.

Each face is kept as the signs of its projection on a fixed random Gaussian matrix (256 bits by
default: 32 bytes where the float32 vector is 2,048): the share of bits two codes differ in
estimates the angle between the faces. A search compares the query's code with every face's
(faiss-cpu's IndexBinaryFlat: Hamming distance, popcount kernels chosen at run time for the CPU)
and the store re-ranks the nearest codes exactly against its float32 copy. Why a flat scan of
codes and not a graph (measured in docs/performance.md): a second photo of a person is far from
every enrolled face (cosine ~0.56 to the right subject's), where an HNSW walk needs a wide beam;
at a million faces usearch's HNSW gave recall@1 0.88 in 24 ms, the codes 1.000 in about 2 ms,
built in seconds instead of minutes.

SQLite is the record; this index only proposes candidates, so a stale or damaged index can cost
recall but never correctness: deleted faces are dropped before re-ranking, renamed subjects are
looked up at answer time. The file is written to a temporary name, flushed and renamed over the
old one (atomic), and on opening it is reconciled with the faces SQLite holds (missing ones added,
gone ones removed) or rebuilt when it cannot be read or was built with other settings.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from threading import Thread

import numpy as np

log = logging.getLogger(__name__)

#: bump when what the files mean changes: older files are rebuilt
FORMAT = 2
#: the projection's seed: saved files carry their projection, this only makes new ones alike
SEED = 0x66616365


@dataclass(frozen=True, slots=True)
class IndexOptions:
    """How galleries are indexed; `min_faces` 0 turns the index off (exact scan always)."""

    min_faces: int = 5_000
    #: galleries at least this large are (re)built in a background thread while searches scan
    #: exactly; smaller ones are built at once
    background_from: int = 50_000
    #: bits per face's code: 256 found the exact best subject for 300 of 300 queries at a million
    #: faces with 100 candidates re-ranked; 128 needed 1,000 for 0.99 (docs/performance.md)
    bits: int = 256
    #: faces re-ranked exactly per query (at least 10 per subject asked for)
    candidates: int = 100
    #: the codes are split into this many parts scanned in parallel threads (faiss's
    #: IndexBinaryShards): a scan of a million codes reads 32 MB, more than one core's memory
    #: bandwidth delivers in the time a search has (4.5 ms on one core, 3.7 on two, cache cold)
    scan_threads: int = 2
    #: PostgreSQL: whether pgvector's HNSW index is built (it answers while a replica loads its
    #: codes, and for galleries below `min_faces`), and its search breadth (hnsw.ef_search)
    pg_hnsw: bool = True
    #: PostgreSQL: whether each replica holds the codes of large galleries (else HNSW alone)
    pg_codes: bool = True
    pg_ef_search: int = 320
    #: PostgreSQL's maintenance_work_mem for the HNSW build: the build is many times faster when
    #: the whole graph fits (a million 512-d faces need about 4 GB)
    pg_build_memory_mb: int = 1024

    def shape(self) -> dict[str, object]:
        """What a saved file must have been built with to be reused."""
        return {"format": FORMAT, "bits": self.bits}


class FaceIndex:
    """Face ids -> sign codes, searched by Hamming distance over every face."""

    def __init__(self, dim: int, options: IndexOptions, projection: np.ndarray | None = None) -> None:
        import faiss

        # one query scans on one core (faiss splits only across queries); no OpenMP team that
        # spins beside the server's other threads
        faiss.omp_set_num_threads(1)
        self.dim = dim
        self.options = options
        self.projection = (
            np.random.default_rng(SEED).standard_normal((dim, options.bits), dtype=np.float32)
            if projection is None
            else projection
        )
        #: face id % parts -> its part; a search asks every part at once and merges the answers
        self._parts = [
            faiss.IndexBinaryIDMap2(faiss.IndexBinaryFlat(options.bits))
            for _ in range(max(options.scan_threads, 1))
        ]
        self._codes = faiss.IndexBinaryShards(options.bits, len(self._parts) > 1, False)
        for part in self._parts:
            self._codes.add_shard(part)
        self.dirty = False

    def __len__(self) -> int:
        return sum(int(part.ntotal) for part in self._parts)

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        return np.packbits(np.asarray(vectors, np.float32) @ self.projection > 0, axis=1)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            self._add_codes(np.asarray(ids, np.int64), self.encode(vectors))
            self.dirty = True

    def _add_codes(self, ids: np.ndarray, codes: np.ndarray) -> None:
        which = ids % len(self._parts)
        for n, part in enumerate(self._parts):
            mine = which == n
            part.add_with_ids(np.ascontiguousarray(codes[mine]), np.ascontiguousarray(ids[mine], np.int64))
        self._codes.syncWithSubIndexes()

    def remove(self, ids: np.ndarray | list[int]) -> None:
        import faiss

        ids = np.asarray(ids, np.int64)
        if len(ids):
            selector = faiss.IDSelectorBatch(len(ids), faiss.swig_ptr(ids))
            for part in self._parts:
                part.remove_ids(selector)
            self._codes.syncWithSubIndexes()
            self.dirty = True

    def keys(self) -> np.ndarray:
        import faiss

        return np.concatenate([faiss.vector_to_array(part.id_map) for part in self._parts]).astype(np.int64)

    def search(self, queries: np.ndarray, count: int) -> list[np.ndarray]:
        """Candidate face ids per query, nearest code first."""
        count = min(count, len(self))
        if count == 0:
            return [np.zeros(0, np.int64) for _ in queries]
        _, found = self._codes.search(self.encode(queries), count)
        return [row[row >= 0] for row in found]

    def memory_bytes(self) -> int:
        # the codes, their ids twice (the list and the reverse map) and the projection
        return len(self) * (self.options.bits // 8 + 32) + self.projection.nbytes

    # --- files ---

    def save(self, path: Path, model: str = "") -> None:
        """Atomically: a reader sees the old file or the new one, never half of one. `model`: the
        md5 of the recognizer whose embeddings it codes (a gallery moved to another one in place
        keeps its face ids: its old file must not be taken for the new embeddings)."""
        import faiss

        path.parent.mkdir(parents=True, exist_ok=True)
        # per process: workers sharing one SQLite file may save the same gallery at once
        temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        codes = np.concatenate(
            [
                faiss.vector_to_array(faiss.downcast_IndexBinary(part.index).xb).reshape(
                    -1, self.options.bits // 8
                )
                for part in self._parts
            ]
        )
        with open(temporary, "wb") as fh:
            np.savez(fh, ids=self.keys(), codes=codes, projection=self.projection)
            fh.flush()
            os.fsync(fh.fileno())
        meta = {
            **self.options.shape(),
            "dim": self.dim,
            "count": len(self),
            "bytes": temporary.stat().st_size,
            "model": model,
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
    def load(cls, path: Path, dim: int, options: IndexOptions, model: str = "") -> FaceIndex | None:
        """The saved index, or None when absent, unreadable or built with other settings (or for
        another model than `model`; files saved before issue 32 name none and are taken)."""
        meta_path = path.with_name(path.name + ".json")
        try:
            meta = json.loads(meta_path.read_text())
            if (
                {k: meta.get(k) for k in options.shape()} != options.shape()
                or meta.get("dim") != dim
                or meta.get("model", model) != model
            ):
                log.info("gallery index %s was built with other settings; rebuilding", path.name)
                return None
            if path.stat().st_size != meta.get("bytes"):
                log.warning("gallery index %s does not match its description; rebuilding", path.name)
                return None
            with np.load(path, allow_pickle=False) as saved:
                ids, codes, projection = saved["ids"], saved["codes"], saved["projection"]
            if (
                projection.shape != (dim, options.bits)
                or codes.shape != (len(ids), options.bits // 8)
                or len(ids) != meta.get("count")
                or len(np.unique(ids)) != len(ids)
            ):
                log.warning("gallery index %s is damaged; rebuilding", path.name)
                return None
            index = cls(dim, options, projection.astype(np.float32, copy=False))
            index._add_codes(ids.astype(np.int64, copy=False), codes.astype(np.uint8, copy=False))
        except FileNotFoundError:
            return None
        except Exception as exc:  # a damaged file is rebuilt from SQLite, whatever the damage
            log.warning("gallery index %s cannot be read (%s); rebuilding", path.name, exc)
            return None
        return index


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def wait_for_threads(
    lock: AbstractContextManager[object], running: dict[str, Thread], timeout_s: float | None
) -> bool:
    """Block until `running` (builders or loaders, registered under `lock`) is empty; False when
    `timeout_s` passed first."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        with lock:
            threads = list(running.values())
        if not threads:
            return True
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return False
        threads[0].join(left)


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
        # a catch-up that would touch most of the faces costs more than a build
        if len(gone) + len(new) <= max(len(ids), 1) // 2:
            index.remove(gone)
            if not _add_in_chunks(index, new, fetch, stop):
                return None, "abandoned"
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


#: (recall@1 asked for, faces re-ranked per query that reached it at a million faces with
#: 256-bit codes, benchmarks/binary_codes.py; docs/performance.md). A recall between two rows
#: gets the larger count.
RECALL_TO_CANDIDATES = ((0.99, 100), (0.995, 200), (0.999, 300))

#: (recall@1 asked for, pgvector HNSW search breadth that reached it): M=16, 100,000 "facelike"
#: 512-d unit vectors with 100 candidates re-ranked (benchmarks/gallery_bench.py's gallery;
#: docs/performance.md: ef 96 -> 0.965, 160 -> 0.985, 320 -> 0.995, 640 -> 1.000). Larger
#: galleries need more for the same recall.
RECALL_TO_EF = ((0.90, 64), (0.96, 96), (0.98, 160), (0.995, 320), (0.999, 640))


def candidates_for_recall(recall: float) -> int:
    return next((n for reached, n in RECALL_TO_CANDIDATES if recall <= reached), 1000)


def ef_for_recall(recall: float) -> int:
    return next((ef for reached, ef in RECALL_TO_EF if recall <= reached), 1000)
