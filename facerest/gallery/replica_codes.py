"""Each PostgreSQL replica's own index of sign codes (facerest/gallery/index.py) over a gallery.

The database stays the record and the only thing replicas share. A replica loads a gallery's
embeddings once (in the background; pgvector's HNSW index or an exact scan answers meanwhile),
keeps 32 bytes per face in memory, and proposes candidate face ids, which are then re-ranked
exactly by the database from the rows that exist at that moment: a face deleted elsewhere can
never be returned, a renamed subject is answered by its new name.

Staying in step with the other replicas: every write locks its gallery's row first and, when
it changed any face, bumps the gallery's `version` and logs the ids it added and removed under
that version (facerest_changes), all in its own transaction. The row lock is held to the commit,
so versions commit in order and without gaps: a replica that reads version V finds every change
up to V in the log. Before each search a replica reads the version (one row by key) and applies
what it has not seen. The log keeps a day (CHANGES_KEEP_S); a replica that finds a gap (it
looked last before what was pruned), or a gallery deleted and made again (a new `created_at`),
loads the gallery again.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from facerest.gallery.index import FaceIndex, IndexOptions, wait_for_threads

log = logging.getLogger(__name__)

SCHEMA = """
ALTER TABLE facerest_galleries ADD COLUMN IF NOT EXISTS version BIGINT NOT NULL DEFAULT 0;
CREATE TABLE IF NOT EXISTS facerest_changes (
    gallery TEXT NOT NULL REFERENCES facerest_galleries(name) ON DELETE CASCADE,
    version BIGINT NOT NULL,
    added BIGINT[] NOT NULL,
    removed BIGINT[] NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (gallery, version)
);
"""

#: how long the change log keeps a write: a replica that last looked longer ago loads again
CHANGES_KEEP_S = 86_400.0
#: the log is pruned by one write in this many (per gallery)
PRUNE_EVERY = 256

#: rows read per fetch while a gallery is loaded
LOAD_CHUNK = 20_000


def lock_gallery(conn: Any, gallery: str) -> tuple[Any, ...] | None:
    """In a writer's transaction, first: the gallery's row locked to the commit (writers of one
    gallery take turns; faces can still reference it); (model, model_md5, dim), or None."""
    return conn.execute(  # type: ignore[no-any-return]
        "SELECT model, model_md5, dim FROM facerest_galleries WHERE name = %s FOR NO KEY UPDATE",
        (gallery,),
    ).fetchone()


def log_change(conn: Any, gallery: str, added: list[int], removed: list[int]) -> None:
    """In the writer's transaction, after `lock_gallery`: the next version and what it changed."""
    if not added and not removed:
        return
    [version] = conn.execute(
        "UPDATE facerest_galleries SET version = version + 1 WHERE name = %s RETURNING version", (gallery,)
    ).fetchone()
    now = time.time()
    conn.execute(
        "INSERT INTO facerest_changes (gallery, version, added, removed, at) VALUES (%s, %s, %s, %s, %s)",
        (gallery, version, added, removed, now),
    )
    if version % PRUNE_EVERY == 0:
        conn.execute(
            "DELETE FROM facerest_changes WHERE gallery = %s AND at < %s", (gallery, now - CHANGES_KEEP_S)
        )


def _add_rows(index: FaceIndex, rows: list[tuple[Any, ...]]) -> None:
    """(id, pgvector) rows into the index."""
    if rows:
        index.add(np.array([r[0] for r in rows], np.int64), np.stack([r[1].to_numpy() for r in rows]))


@dataclass(slots=True)
class _Loaded:
    created_at: float
    version: int
    index: FaceIndex


class ReplicaCodes:
    """The galleries' code indexes of this replica, loaded on first search and kept in step."""

    def __init__(self, connect: Any, options: IndexOptions) -> None:
        #: a context manager giving a pooled connection (the store's pool)
        self._connect = connect
        self.options = options
        self._lock = threading.RLock()
        self._loaded: dict[str, _Loaded] = {}
        self._loading: dict[str, threading.Thread] = {}
        self._closed = threading.Event()

    def candidates(self, conn: Any, gallery: str, queries: np.ndarray, count: int) -> list[np.ndarray] | None:
        """Candidate face ids per query from the gallery's codes brought up to the database's
        version; None while they are not loaded here or the gallery is below the index's size
        (a load starts if none has)."""
        if not self.enabled:
            return None
        row = conn.execute(
            "SELECT created_at, version FROM facerest_galleries WHERE name = %s", (gallery,)
        ).fetchone()
        # one lock for catching up and searching: faiss must not be searched while it is added to
        with self._lock:
            loaded = self._loaded.get(gallery)
            if row is None:
                self._loaded.pop(gallery, None)
                return None
            created_at, version = float(row[0]), int(row[1])
            if loaded is None or loaded.created_at != created_at or loaded.version > version:
                self._loaded.pop(gallery, None)
                self._start_load(gallery)
                return None
            if version > loaded.version and not self._catch_up(conn, gallery, loaded):
                self._loaded.pop(gallery, None)  # the log no longer reaches back that far
                self._start_load(gallery)
                return None
            if len(loaded.index) < self.options.min_faces:
                return None
            return loaded.index.search(queries, count)

    def searched(self, gallery: str) -> bool:
        """Whether searches of the gallery go through this replica's codes."""
        with self._lock:
            loaded = self._loaded.get(gallery)
            return loaded is not None and len(loaded.index) >= self.options.min_faces

    def _catch_up(self, conn: Any, gallery: str, loaded: _Loaded) -> bool:
        """Apply the logged changes after `loaded.version`; False when the log has a gap there."""
        changes = conn.execute(
            "SELECT version, added, removed FROM facerest_changes "
            "WHERE gallery = %s AND version > %s ORDER BY version",
            (gallery, loaded.version),
        ).fetchall()
        if not changes or [int(c[0]) for c in changes] != list(
            range(loaded.version + 1, loaded.version + 1 + len(changes))
        ):
            return False
        added = [face for _, faces, _ in changes for face in faces]
        removed = [face for _, _, faces in changes for face in faces]
        if added:
            present = conn.execute(
                "SELECT id, embedding FROM facerest_faces WHERE gallery = %s AND id = ANY(%s) "
                "AND vector_dims(embedding) = %s",
                (gallery, added, loaded.index.dim),
            ).fetchall()
            _add_rows(loaded.index, present)
        # removals after additions: a face added and removed since the last look ends up gone
        loaded.index.remove(removed)
        loaded.version = int(changes[-1][0])
        return True

    @property
    def enabled(self) -> bool:
        return self.options.min_faces > 0 and self.options.pg_codes

    def load(self, gallery: str) -> None:
        """Start loading the gallery's codes in the background (at start, for every gallery)."""
        if self.enabled:
            with self._lock:
                self._start_load(gallery)

    def _start_load(self, gallery: str) -> None:
        if gallery in self._loading or self._closed.is_set():
            return
        loader = threading.Thread(
            target=self._load, args=(gallery,), name=f"codes-{gallery[:40]}", daemon=True
        )
        self._loading[gallery] = loader
        loader.start()

    def _load(self, gallery: str) -> None:
        """Every face of the gallery read in one snapshot, with the version that snapshot is at."""
        started = time.perf_counter()
        try:
            with self._connect() as conn, conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                row = conn.execute(
                    "SELECT created_at, version, dim FROM facerest_galleries WHERE name = %s", (gallery,)
                ).fetchone()
                if row is None:
                    return
                index = FaceIndex(int(row[2]), self.options)
                with conn.cursor(name="facerest_codes_load", binary=True) as cursor:  # no text parsing
                    cursor.itersize = LOAD_CHUNK
                    cursor.execute(
                        "SELECT id, embedding FROM facerest_faces WHERE gallery = %s "
                        "AND vector_dims(embedding) = %s",
                        (gallery, int(row[2])),
                    )
                    while rows := cursor.fetchmany(LOAD_CHUNK):
                        if self._closed.is_set():
                            return
                        _add_rows(index, rows)
            with self._lock:
                if not self._closed.is_set():
                    self._loaded[gallery] = _Loaded(float(row[0]), int(row[1]), index)
            log.info(
                "gallery %r: %d faces' codes loaded in %.1f s",
                gallery,
                len(index),
                time.perf_counter() - started,
            )
        except Exception:  # derived data: searches use the database's own index until the next try
            if not self._closed.is_set():
                log.exception("loading the codes of gallery %r failed", gallery)
        finally:
            with self._lock:
                self._loading.pop(gallery, None)

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until no gallery is loading (tests, benchmarks); False when one still is."""
        return wait_for_threads(self._lock, self._loading, timeout_s)

    def close(self) -> None:
        self._closed.set()
        self.wait(timeout_s=30)
