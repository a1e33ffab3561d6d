"""The embedded backend: SQLite in WAL mode on disk, every gallery also held as a matrix in memory.

SQLite is the durable record. Small galleries are searched by an exact matrix product over the
in-memory copy; from `IndexOptions.min_faces` faces on (the measured crossover), an index of sign
codes (facerest/gallery/index.py, files beside the database) proposes candidate faces that are then
re-ranked exactly against the same copy. Other processes writing the same file (several
workers) are noticed through `PRAGMA data_version`: the in-memory copy is read again and the
index caught up with it.

Deleted faces leave no bytes behind (issue 30): `secure_delete` overwrites deleted rows with
zeros, every delete then empties the WAL into the database (`wal_checkpoint(TRUNCATE)`: the WAL
held the pages as they were) and rewrites the gallery's index file without their codes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from facerest.errors import Conflict, ModelMismatch, NotFound
from facerest.gallery.index import FaceIndex, IndexOptions, reconcile, wait_for_threads
from facerest.gallery.store import (
    MISSING_LISTED,
    REEMBED_COLUMNS,
    UNSORTED,
    GalleryInfo,
    GalleryStore,
    ModelTag,
    NewFace,
    NewReviewItem,
    NotOwner,
    ReembedJob,
    ReviewBounds,
    ReviewItem,
    SearchResult,
    StoredFace,
    SubjectSummary,
    checked_rename,
    like_pattern,
    mismatch_message,
    missing_crops,
    reembed_takes_up,
    review_dedupe,
    review_group,
    top_subjects,
)
from facerest.imaging.crops import FaceCrop

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS galleries (
    name TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    model_md5 TEXT NOT NULL,
    dim INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS faces (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    gallery TEXT NOT NULL REFERENCES galleries(name) ON DELETE CASCADE,
    subject TEXT NOT NULL,
    embedding BLOB NOT NULL,
    image_hash TEXT,
    bbox TEXT,
    prob REAL,
    model TEXT NOT NULL,
    added_at REAL NOT NULL,
    quality REAL,
    source TEXT,
    cover INTEGER NOT NULL DEFAULT 0,
    next_embedding BLOB
);
CREATE INDEX IF NOT EXISTS faces_by_subject ON faces (gallery, subject);
-- a face owns its crop: written in the face's transaction, deleted with it (issue 29)
CREATE TABLE IF NOT EXISTS face_crops (
    face_id INTEGER PRIMARY KEY REFERENCES faces(id) ON DELETE CASCADE,
    jpeg BLOB NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    landmarks TEXT
);
-- faces nobody could name, for a person to look at, kept and deleted with their gallery
CREATE TABLE IF NOT EXISTS review_items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    gallery TEXT NOT NULL REFERENCES galleries(name) ON DELETE CASCADE,
    grp INTEGER NOT NULL,
    embedding BLOB NOT NULL,
    jpeg BLOB,
    width INTEGER,
    height INTEGER,
    landmarks TEXT,
    image_hash TEXT,
    bbox TEXT,
    prob REAL,
    quality REAL,
    source TEXT NOT NULL,
    ref TEXT,
    created_at REAL NOT NULL,
    candidates TEXT NOT NULL,
    names TEXT NOT NULL,
    excluded TEXT NOT NULL DEFAULT '[]',
    dedupe TEXT,
    next_embedding BLOB
);
CREATE UNIQUE INDEX IF NOT EXISTS review_dedupe ON review_items (gallery, dedupe);
CREATE INDEX IF NOT EXISTS review_by_group ON review_items (gallery, grp, id);
CREATE INDEX IF NOT EXISTS review_by_age ON review_items (gallery, created_at);
-- writes that changed what the in-memory matrices hold (a process reads them again after another's)
CREATE TABLE IF NOT EXISTS searched_writes (id INTEGER PRIMARY KEY CHECK (id = 0), n INTEGER NOT NULL);
INSERT OR IGNORE INTO searched_writes (id, n) VALUES (0, 0);
-- a gallery moving to another recognizer (issue 32): the new embeddings wait in next_embedding
CREATE TABLE IF NOT EXISTS reembeds (
    gallery TEXT PRIMARY KEY REFERENCES galleries(name) ON DELETE CASCADE,
    model TEXT NOT NULL,
    model_md5 TEXT NOT NULL,
    dim INTEGER NOT NULL,
    alignment TEXT NOT NULL,
    source_model TEXT NOT NULL,
    source_md5 TEXT NOT NULL,
    source_dim INTEGER NOT NULL,
    into_gallery TEXT,
    drop_missing INTEGER NOT NULL,
    state TEXT NOT NULL,
    owner TEXT,
    started_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    finished_at REAL,
    error TEXT,
    faces INTEGER NOT NULL DEFAULT 0,
    done INTEGER NOT NULL DEFAULT 0,
    missing TEXT NOT NULL DEFAULT '[]',
    missing_count INTEGER NOT NULL DEFAULT 0,
    review_items INTEGER NOT NULL DEFAULT 0,
    review_done INTEGER NOT NULL DEFAULT 0,
    review_dropped INTEGER NOT NULL DEFAULT 0
);
"""

#: columns added since a table was first made, added to older databases at start
ADDED_COLUMNS = {
    "faces": (
        ("quality", "REAL"),
        ("source", "TEXT"),
        ("cover", "INTEGER NOT NULL DEFAULT 0"),
        ("next_embedding", "BLOB"),  # issue 32
    ),
    "review_items": (("next_embedding", "BLOB"),),
}
#: a face's crop with landmarks (`c` is face_crops): what a re-embed aligns from; a review item's
USABLE_CROP = "c.landmarks IS NOT NULL"
REVIEW_CROP = "jpeg IS NOT NULL AND landmarks IS NOT NULL"

#: a face's record (`f` is faces), as `_stored` reads it
FACE_COLUMNS = (
    "f.id, f.subject, f.image_hash, f.bbox, f.prob, f.model, f.added_at, f.quality, f.source, f.cover, "
    "EXISTS(SELECT 1 FROM face_crops c WHERE c.face_id = f.id)"
)
REVIEW_COLUMNS = (
    "id, grp, source, ref, created_at, candidates, excluded, image_hash, bbox, prob, quality, "
    "jpeg IS NOT NULL"
)


class _RowsById:
    """Face id -> row of its matrix, as a table over the span of the ids held (-1: not held).

    A re-rank looks up its ~100 candidates in one vectorised step: a dict took ~100 lookups that
    miss the cache after a scan (0.1-0.2 ms a search at a million faces), and ~100 bytes a face
    where the table takes 4. SQLite hands out ids in increasing order (AUTOINCREMENT), so a
    gallery's ids usually fill their span; while the span is far wider than its faces (ids spread
    by heavy churn or by other galleries' enrolments, or a gallery half read back in subject
    order) a dict holds them instead, so memory follows the faces held, never the ids handed out."""

    #: the table may cover this many ids per face held, plus SPARE_IDS (16 MB of table)
    SPAN_PER_FACE = 8
    SPARE_IDS = 1 << 22

    def __init__(self) -> None:
        self.first = 0
        self.table = np.zeros(0, np.int32)
        self.sparse: dict[int, int] | None = None
        self.held = 0
        self.low, self.high = 2**63 - 1, -1  # the span of the ids ever added

    def _fits(self) -> bool:
        return self.high - self.low + 1 <= self.SPAN_PER_FACE * self.held + self.SPARE_IDS

    def add(self, ids: np.ndarray, rows: np.ndarray) -> None:
        """Faces not held yet."""
        if not len(ids):
            return
        self.held += len(ids)
        self.low, self.high = min(self.low, int(ids.min())), max(self.high, int(ids.max()))
        if self.sparse is None and not self._fits():
            held = np.flatnonzero(self.table >= 0)
            self.sparse = dict(zip((held + self.first).tolist(), self.table[held].tolist(), strict=True))
            self.table = np.zeros(0, np.int32)
        if self.sparse is not None:
            self.sparse.update(zip(ids.tolist(), rows.tolist(), strict=True))
            return
        self._cover(self.low, self.high)
        self.table[ids - self.first] = rows

    def _cover(self, low: int, high: int) -> None:
        if len(self.table) and self.first <= low and high < self.first + len(self.table):
            return
        # a quarter spare above: enrolment appends ids in increasing order
        grown = np.full(high - low + 1 + (high - low + 1) // 4, -1, np.int32)
        if len(self.table):
            grown[self.first - low : self.first - low + len(self.table)] = self.table
        self.first, self.table = low, grown

    def get(self, ids: np.ndarray) -> np.ndarray:
        """The rows of those of `ids` held."""
        if self.sparse is not None and self._fits():  # e.g. the whole gallery is read back now
            sparse, self.sparse = self.sparse, None
            self.table = np.zeros(0, np.int32)
            self._cover(self.low, self.high)
            self.table[np.fromiter(sparse, np.int64, len(sparse)) - self.first] = list(sparse.values())
        if self.sparse is not None:
            found = self.sparse
            return np.fromiter((row for i in ids.tolist() if (row := found.get(i)) is not None), np.int64)
        offsets = ids - self.first
        rows = self.table[offsets[(offsets >= 0) & (offsets < len(self.table))]]
        return rows[rows >= 0].astype(np.int64)

    def move(self, face_id: int, row: int) -> None:
        if self.sparse is not None:
            self.sparse[face_id] = row
        else:
            self.table[face_id - self.first] = row

    def pop(self, face_id: int) -> int | None:
        if self.sparse is not None:
            row = self.sparse.pop(face_id, None)
        else:
            offset = face_id - self.first
            row = int(self.table[offset]) if 0 <= offset < len(self.table) else -1
            if row < 0:
                return None
            self.table[offset] = -1
        if row is not None:
            self.held -= 1
        return row


class _Matrix:
    """One gallery's embeddings in memory: rows grow in steps, deletes swap in the last row."""

    def __init__(self, model: ModelTag, capacity: int = 16) -> None:
        capacity = max(capacity, 16)
        self.model = model
        self.vectors = np.zeros((capacity, model.dim), np.float32)
        self.ids = np.zeros(capacity, np.int64)
        self.codes = np.zeros(capacity, np.int32)
        self.count = 0
        self.names: list[str] = []  # subject code -> name
        self.code_of: dict[str, int] = {}
        self.rows_by_id = _RowsById()
        self.faces_of: dict[int, int] = {}  # subject code -> its faces held (a subject has >= 1)

    @property
    def subjects(self) -> int:
        return len(self.faces_of)

    def add(self, subject: str, ids: list[int], vectors: np.ndarray) -> None:
        code = self._code(subject)
        need = self.count + len(ids)
        if need > len(self.ids):
            # grow by a quarter: at most 25% spare rows (a 100k gallery is 200 MB of float32)
            capacity = max(need, len(self.ids) + max(len(self.ids) // 4, 1024))
            self.vectors = np.resize(self.vectors, (capacity, self.vectors.shape[1]))
            self.ids = np.resize(self.ids, capacity)
            self.codes = np.resize(self.codes, capacity)
        rows = slice(self.count, need)
        self.vectors[rows] = vectors
        self.ids[rows] = ids
        self.codes[rows] = code
        self.rows_by_id.add(np.asarray(ids, np.int64), np.arange(self.count, need))
        self.count = need
        if ids:
            self.faces_of[code] = self.faces_of.get(code, 0) + len(ids)

    def delete(self, face_id: int) -> None:
        row = self.rows_by_id.pop(face_id)
        if row is None:
            return
        code = int(self.codes[row])
        if self.faces_of[code] > 1:
            self.faces_of[code] -= 1
        else:
            del self.faces_of[code]
        last = self.count - 1
        if row != last:
            self.vectors[row] = self.vectors[last]
            self.ids[row] = self.ids[last]
            self.codes[row] = self.codes[last]
            self.rows_by_id.move(int(self.ids[row]), row)
        self.count = last

    def delete_subject(self, subject: str) -> list[int]:
        code = self.code_of.get(subject)
        if code is None:
            return []
        gone = self.ids[: self.count][self.codes[: self.count] == code].tolist()
        for face_id in gone:
            self.delete(face_id)
        return gone

    def rename(self, subject: str, new_name: str) -> None:
        code = self.code_of.pop(subject, None)
        if code is not None:
            self.names[code] = new_name
            self.code_of[new_name] = code

    def _code(self, subject: str) -> int:
        code = self.code_of.get(subject)
        if code is None:
            code = self.code_of[subject] = len(self.names)
            self.names.append(subject)
        return code

    def merge(self, subject: str, into: str) -> None:
        """Every face of `subject` becomes one of `into`'s (a rename when `into` is new)."""
        source = self.code_of.get(subject)
        if source is None:
            return
        target = self.code_of.get(into)
        if target is None or target not in self.faces_of:
            self.code_of.pop(into, None)
            self.rename(subject, into)
            return
        rows = np.flatnonzero(self.codes[: self.count] == source)
        self.codes[rows] = target
        self.faces_of[target] = self.faces_of.get(target, 0) + self.faces_of.pop(source, 0)
        # the old name keeps its slot with no face (a subject's best is -inf there: never listed)
        del self.code_of[subject]

    def move(self, face_ids: list[int], subject: str) -> None:
        target = self._code(subject)
        for row in self._rows(np.asarray(face_ids, np.int64)).tolist():
            old = int(self.codes[row])
            if old == target:
                continue
            if self.faces_of[old] > 1:
                self.faces_of[old] -= 1
            else:
                del self.faces_of[old]
            self.codes[row] = target
            self.faces_of[target] = self.faces_of.get(target, 0) + 1

    def search(self, queries: np.ndarray, top_k: int) -> list[SearchResult]:
        if self.count == 0:
            return [SearchResult() for _ in queries]
        similarities = queries @ self.vectors[: self.count].T
        codes = self.codes[: self.count]
        return [top_subjects(row, codes, self.names, top_k) for row in similarities]

    def _rows(self, ids: np.ndarray) -> np.ndarray:
        """The rows of those of `ids` still held (deleted ones drop out)."""
        return self.rows_by_id.get(np.asarray(ids, np.int64))

    def fetch(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the ids among `ids` still held, their vectors), a copy."""
        rows = self._rows(ids)
        return self.ids[rows], self.vectors[rows]

    def rerank(self, query: np.ndarray, candidates: np.ndarray, top_k: int) -> SearchResult:
        """The exact answer over the candidate faces that still exist (deleted ones drop out here)."""
        rows = self._rows(candidates)
        if len(rows) == 0:
            return SearchResult()
        # the candidates' own subjects, not every subject's slot (250k subjects: 0.9 ms a query)
        subjects, local = np.unique(self.codes[rows], return_inverse=True)
        names = [self.names[code] for code in subjects.tolist()]
        return top_subjects(self.vectors[rows] @ query, local, names, top_k)


def _bbox_text(bbox: list[float] | None) -> str | None:
    return None if bbox is None else json.dumps([round(float(v), 2) for v in bbox])


def _stored(r: tuple, embedding: bytes | None = None) -> StoredFace:
    return StoredFace(
        face_id=r[0],
        subject=r[1],
        image_hash=r[2],
        bbox=None if r[3] is None else json.loads(r[3]),
        prob=r[4],
        model=r[5],
        added_at=r[6],
        quality=r[7],
        source=r[8],
        representative=bool(r[9]),
        has_crop=bool(r[10]),
        embedding=None if embedding is None else np.frombuffer(embedding, np.float32),
    )


def _crop(r: tuple | None) -> FaceCrop | None:
    """(jpeg, width, height, landmarks) -> FaceCrop."""
    if r is None or r[0] is None:
        return None
    return FaceCrop(bytes(r[0]), int(r[1]), int(r[2]), None if r[3] is None else json.loads(r[3]))


def _review(r: tuple, embedding: bytes | None = None) -> ReviewItem:
    return ReviewItem(
        review_id=r[0],
        group=r[1],
        source=r[2],
        ref=r[3],
        created_at=r[4],
        candidates=[(s, float(v)) for s, v in json.loads(r[5])],
        excluded=json.loads(r[6]),
        image_hash=r[7],
        bbox=None if r[8] is None else json.loads(r[8]),
        prob=r[9],
        quality=r[10],
        has_crop=bool(r[11]),
        embedding=None if embedding is None else np.frombuffer(embedding, np.float32),
    )


def _placeholders(values: list) -> str:
    return ",".join("?" * len(values))


class SQLiteStore(GalleryStore):
    def __init__(self, path: Path, index_options: IndexOptions | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.index_options = index_options or IndexOptions()
        self._index_dir = path.with_name(path.name + "-index")
        self._indexes: dict[str, FaceIndex] = {}
        self._changes_since_save: dict[str, int] = {}
        self._building: dict[str, threading.Thread] = {}
        #: bumped when a gallery's index is dropped: a background build of the old one is discarded
        self._generation: dict[str, int] = {}
        self._closed = False
        # one connection shared by the worker threads under one lock: SQLite writes are serial
        # anyway, and searches read the in-memory matrices
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._lock = threading.RLock()
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before the client hears "added", not only in the OS cache
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        # deleted rows (faces, crops, review items) are overwritten with zeros, not only unlinked
        # (many builds default to it; said here so that no build is trusted to); erasure adds the
        # WAL checkpoint (`_erase_leftovers`)
        self._db.execute("PRAGMA secure_delete=ON")
        self._migrate()
        self._matrices: dict[str, _Matrix] = {}
        self._data_version = -1
        self._searched_writes = -1  # writes that changed what the matrices hold, when last read
        self._counted: int | None = None  # the count a write in progress found (see `_write`)
        with self._lock:
            self._refresh()

    # --- plumbing ---

    def _migrate(self) -> None:
        """The schema, with the columns later issues added put into an older database (once, in
        one transaction, whichever process starts first)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for table, columns in ADDED_COLUMNS.items():
                known = {r[1] for r in self._db.execute(f"PRAGMA table_info({table})")}
                for column, declaration in columns if known else ():
                    if column not in known:
                        self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    @contextmanager
    def _write(self, searched: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction; the caller holds the lock and updates the matrices after it commits.

        (Our own commits leave `data_version` unchanged, so the matrices are not read again.)
        `searched` False: the write changes nothing the matrices hold (a re-embedding's vectors
        waiting beside the old ones, its job): other processes need not read every face again,
        which they would after each of a move's steps otherwise (issue 32).
        """
        self._refresh()
        self._db.execute("BEGIN IMMEDIATE")
        self._counted = None
        try:
            yield self._db
            if searched:
                self._count_searched(self._db)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        if self._counted is not None and self._counted == self._searched_writes:
            self._searched_writes += 1  # ours: nothing to read again for it

    def _count_searched(self, db: sqlite3.Connection) -> None:
        """In a write's transaction: it changed what the matrices hold (once per transaction)."""
        if self._counted is None:
            [self._counted] = db.execute("SELECT n FROM searched_writes").fetchone()
            db.execute("UPDATE searched_writes SET n = n + 1")

    def _refresh(self) -> None:
        """Reload the matrices when another process committed, since we last looked, a write that
        changed what they hold. (A process of a version before issue 32 counts no writes: run one
        version against a file at a time.)"""
        version = self._db.execute("PRAGMA data_version").fetchone()[0]
        if version == self._data_version:
            return
        [searched] = self._db.execute("SELECT n FROM searched_writes").fetchone()
        if searched == self._searched_writes:
            self._data_version = version
            return
        self._searched_writes = searched
        # sized to fit: no doubling, no spare rows after a (re)load
        matrices = {
            name: _Matrix(ModelTag(model, md5, dim), count)
            for name, model, md5, dim, count in self._db.execute(
                "SELECT name, model, model_md5, dim, (SELECT COUNT(*) FROM faces WHERE gallery = name) "
                "FROM galleries"
            )
        }
        rows = self._db.execute(
            "SELECT gallery, subject, id, embedding FROM faces ORDER BY gallery, subject, id"
        )
        batch: list[tuple[str, str, int, bytes]] = []
        for row in rows:
            if batch and (row[0], row[1]) != batch[0][:2]:
                self._load(matrices, batch)
                batch = []
            batch.append(row)
        if batch:
            self._load(matrices, batch)
        before, self._matrices = self._matrices, matrices
        self._data_version = version
        for name in list(self._indexes):
            if name not in matrices:
                self._drop_index(name)
            elif name in before and before[name].model != matrices[name].model:
                # moved to another recognizer by another process (issue 32): same ids, new vectors
                self._forget_index(name)
        for name in matrices:
            self._sync_index(name, from_disk=name not in self._indexes)

    # --- the index of each large gallery ---

    def _index_path(self, gallery: str) -> Path:
        return self._index_dir / f"{hashlib.sha256(gallery.encode()).hexdigest()[:24]}.codes"

    def _sync_index(self, gallery: str, from_disk: bool) -> None:
        """Index `gallery` when it is large enough: the saved file caught up with SQLite, or built.

        (The caller holds the lock.) A large gallery is indexed in the background: until its
        index is ready, searches scan it exactly (and an index in use stays in use)."""
        matrix = self._matrices[gallery]
        options = self.index_options
        if options.min_faces <= 0 or matrix.count < options.min_faces:
            self._indexes.pop(gallery, None)
            return
        if gallery in self._building:
            return  # the build under way catches up with every write before it is put in use
        if matrix.count >= options.background_from:
            generation = self._generation.get(gallery, 0)
            builder = threading.Thread(
                target=self._build_index,
                args=(gallery, generation, from_disk),
                name=f"gallery-index-{gallery[:40]}",
                daemon=True,
            )
            self._building[gallery] = builder
            builder.start()
            return
        dim = matrix.vectors.shape[1]
        path = self._index_path(gallery)
        current = (
            FaceIndex.load(path, dim, options, matrix.model.md5) if from_disk else self._indexes.get(gallery)
        )
        index, what = reconcile(current, matrix.ids[: matrix.count], matrix.fetch, dim, options)
        assert index is not None  # nothing stops an inline build
        log.info("gallery %r index: %s", gallery, what)
        self._indexes[gallery] = index
        if index.dirty:
            self._save_index(gallery)

    def _build_index(self, gallery: str, generation: int, from_disk: bool) -> None:
        """The background build: load or build from a snapshot of the face ids, reading vectors a
        chunk at a time under the lock, then catch up under the lock with what changed meanwhile."""
        options = self.index_options

        def abandoned() -> bool:
            return self._closed or self._generation.get(gallery, 0) != generation

        def fetch(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            with self._lock:
                matrix = self._matrices.get(gallery)
                if matrix is None:
                    return ids[:0], np.zeros((0, 0), np.float32)
                return matrix.fetch(ids)

        try:
            with self._lock:
                matrix = self._matrices.get(gallery)
                if matrix is None or abandoned():
                    return
                dim = matrix.vectors.shape[1]
                ids = matrix.ids[: matrix.count].copy()
                model = matrix.model.md5
            path = self._index_path(gallery)
            started = time.perf_counter()
            saved = FaceIndex.load(path, dim, options, model) if from_disk else None
            index, what = reconcile(saved, ids, fetch, dim, options, abandoned)
            if index is None:
                return
            log.info("gallery %r index (background): %s", gallery, what)
            if index.dirty:  # before it is shared: nothing else touches it
                self._write_index_file(gallery, index, model)
            with self._lock:
                matrix = self._matrices.get(gallery)
                if matrix is None or abandoned():
                    return
                index, what = reconcile(index, matrix.ids[: matrix.count], matrix.fetch, dim, options)
                assert index is not None
                self._indexes[gallery] = index
                self._changes_since_save[gallery] = 0
                if index.dirty:  # faces deleted during the build: their codes leave the file too
                    self._save_index(gallery)
                log.info(
                    "gallery %r index in use after %.1f s (%s since the snapshot)",
                    gallery,
                    time.perf_counter() - started,
                    what,
                )
        except Exception:  # derived data: the gallery is scanned exactly until the next try
            log.exception("building the index of gallery %r failed", gallery)
        finally:
            with self._lock:
                self._building.pop(gallery, None)

    def wait_for_indexes(self, timeout_s: float | None = None) -> bool:
        """Block until no index is being built (tests, benchmarks); False when still building."""
        return wait_for_threads(self._lock, self._building, timeout_s)

    def indexing(self, gallery: str) -> bool:
        """Whether the gallery's index is being built (searches scan exactly until it is ready)."""
        with self._lock:
            return gallery in self._building

    def _save_index(self, gallery: str) -> None:
        self._write_index_file(gallery, self._indexes[gallery], self._matrices[gallery].model.md5)
        self._changes_since_save[gallery] = 0

    def _write_index_file(self, gallery: str, index: FaceIndex, model: str) -> None:
        try:
            index.save(self._index_path(gallery), model)
        except OSError as exc:  # derived data: a failed save costs a catch-up at the next start
            log.warning("could not save the index of gallery %r: %s", gallery, exc)

    def _indexed(self, gallery: str, changed: int) -> FaceIndex | None:
        """The gallery's index after a write of `changed` faces; saved every tenth of its size."""
        index = self._indexes.get(gallery)
        if index is None:
            return None
        done = self._changes_since_save.get(gallery, 0) + changed
        self._changes_since_save[gallery] = done
        if done > max(len(index) // 10, 1000):
            self._save_index(gallery)
        return index

    def _forget_index(self, gallery: str) -> None:
        """Stop using the gallery's index (a build under way is discarded); its file stays: it
        names the model it codes, and is only read back for that model."""
        self._indexes.pop(gallery, None)
        self._changes_since_save.pop(gallery, None)
        self._generation[gallery] = self._generation.get(gallery, 0) + 1

    def _drop_index(self, gallery: str) -> None:
        self._indexes.pop(gallery, None)
        self._generation[gallery] = self._generation.get(gallery, 0) + 1
        path = self._index_path(gallery)
        for leftover in (path, path.with_name(path.name + ".json")):
            leftover.unlink(missing_ok=True)

    @staticmethod
    def _load(matrices: dict[str, _Matrix], batch: list[tuple[str, str, int, bytes]]) -> None:
        gallery, subject = batch[0][:2]
        vectors = np.frombuffer(b"".join(r[3] for r in batch), np.float32).reshape(len(batch), -1)
        matrices[gallery].add(subject, [r[2] for r in batch], vectors)

    def _info(self, name: str) -> GalleryInfo | None:
        """From the in-memory copy, which follows SQLite (our writes, and others' through
        `_refresh`, which the caller has run): counting a million rows per search would cost
        more than the search."""
        matrix = self._matrices.get(name)
        if matrix is None:
            return None
        index = "codes" if name in self._indexes else "building" if name in self._building else "exact"
        return GalleryInfo(name, matrix.model, matrix.subjects, matrix.count, index)

    # --- the interface ---

    def galleries(self) -> list[GalleryInfo]:
        with self._lock:
            self._refresh()
            return [info for name in sorted(self._matrices) if (info := self._info(name)) is not None]

    def gallery(self, name: str) -> GalleryInfo | None:
        with self._lock:
            self._refresh()
            return self._info(name)

    def add_faces(self, gallery: str, subject: str, model: ModelTag, faces: list[NewFace]) -> list[int]:
        return self.add_many(gallery, model, [(subject, face) for face in faces])

    def add_many(self, gallery: str, model: ModelTag, faces: list[tuple[str, NewFace]]) -> list[int]:
        with self._lock:
            with self._write() as db:
                self._checked_gallery(db, gallery, model, create=True)
                ids = self._insert(db, gallery, model, faces)
            # committed: the matrix follows, before any other writer gets the lock
            self._added(gallery, model, [s for s, _ in faces], ids, [f.embedding for _, f in faces])
        return ids

    @staticmethod
    def _checked_gallery(db: sqlite3.Connection, gallery: str, model: ModelTag, create: bool) -> bool:
        """Whether the gallery exists (created for `model` when asked); ModelMismatch for another model."""
        row = db.execute("SELECT model, model_md5, dim FROM galleries WHERE name = ?", (gallery,)).fetchone()
        if row is None:
            if create:
                db.execute(
                    "INSERT INTO galleries (name, model, model_md5, dim, created_at) VALUES (?, ?, ?, ?, ?)",
                    (gallery, model.name, model.md5, model.dim, time.time()),
                )
            return create
        if ModelTag(*row) != model:
            raise ModelMismatch(mismatch_message(gallery, ModelTag(*row), model))
        return True

    @staticmethod
    def _insert(
        db: sqlite3.Connection, gallery: str, model: ModelTag, faces: list[tuple[str, NewFace]]
    ) -> list[int]:
        """Faces and their crops, in the caller's transaction; their ids."""
        now = time.time()
        ids: list[int] = []
        for subject, face in faces:
            cursor = db.execute(
                "INSERT INTO faces (gallery, subject, embedding, image_hash, bbox, prob, model, added_at, "
                "quality, source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    gallery,
                    subject,
                    np.asarray(face.embedding, np.float32).tobytes(),
                    face.image_hash,
                    _bbox_text(face.bbox),
                    face.prob,
                    model.name,
                    now,
                    face.quality,
                    face.source,
                ),
            )
            face_id = int(cursor.lastrowid)  # type: ignore[arg-type]
            ids.append(face_id)
            if face.crop is not None:
                db.execute(
                    "INSERT INTO face_crops (face_id, jpeg, width, height, landmarks) VALUES (?, ?, ?, ?, ?)",
                    (
                        face_id,
                        face.crop.jpeg,
                        face.crop.width,
                        face.crop.height,
                        None if face.crop.landmarks is None else json.dumps(face.crop.landmarks),
                    ),
                )
        return ids

    def _added(
        self, gallery: str, model: ModelTag, subjects: list[str], ids: list[int], vectors: list[np.ndarray]
    ) -> None:
        """The matrix and index follow committed faces (the caller holds the lock)."""
        matrix = self._matrices.setdefault(gallery, _Matrix(model))
        if not ids:
            return
        stacked = np.stack([np.asarray(v, np.float32) for v in vectors])
        start = 0
        for end in range(1, len(ids) + 1):  # runs of one subject go in together
            if end == len(ids) or subjects[end] != subjects[start]:
                matrix.add(subjects[start], ids[start:end], stacked[start:end])
                start = end
        if gallery in self._indexes:
            self._indexes[gallery].add(np.asarray(ids, np.int64), stacked)
            self._indexed(gallery, len(ids))
        elif 0 < self.index_options.min_faces <= matrix.count:
            self._sync_index(gallery, from_disk=True)

    def subjects(self, gallery: str) -> list[tuple[str, int]]:
        with self._lock:
            return [
                (r[0], r[1])
                for r in self._db.execute(
                    "SELECT subject, COUNT(*) FROM faces WHERE gallery = ? GROUP BY subject ORDER BY subject",
                    (gallery,),
                )
            ]

    def faces(self, gallery: str, subject: str, with_embeddings: bool = False) -> list[StoredFace]:
        vector = "f.embedding" if with_embeddings else "NULL"
        with self._lock:
            rows = self._db.execute(
                f"SELECT {FACE_COLUMNS}, {vector} FROM faces f WHERE f.gallery = ? AND f.subject = ? "
                "ORDER BY f.id",
                (gallery, subject),
            ).fetchall()
        return [_stored(r, r[11]) for r in rows]

    def rename_subject(self, gallery: str, subject: str, new_name: str) -> int:
        with self._lock:
            with self._write() as db:
                taken = db.execute(
                    "SELECT 1 FROM faces WHERE gallery = ? AND subject = ? LIMIT 1", (gallery, new_name)
                ).fetchone()
                moved = checked_rename(
                    gallery,
                    subject,
                    new_name,
                    taken is not None,
                    lambda: (
                        db.execute(
                            "UPDATE faces SET subject = ? WHERE gallery = ? AND subject = ?",
                            (new_name, gallery, subject),
                        ).rowcount
                    ),
                )
            if matrix := self._matrices.get(gallery):
                matrix.rename(subject, new_name)
        return moved

    def delete_subject(self, gallery: str, subject: str) -> int:
        with self._lock:
            with self._write() as db:
                deleted = db.execute(
                    "DELETE FROM faces WHERE gallery = ? AND subject = ?", (gallery, subject)
                ).rowcount
            if matrix := self._matrices.get(gallery):
                gone = matrix.delete_subject(subject)
                if gone and (index := self._indexed(gallery, len(gone))):
                    index.remove(gone)
            if deleted:
                self._erase_leftovers(gallery)
        return deleted

    def delete_face(self, gallery: str, face_id: int) -> bool:
        return bool(self.delete_faces(gallery, [face_id]))

    def delete_faces(self, gallery: str, face_ids: list[int]) -> list[int]:
        with self._lock:
            with self._write() as db:
                gone = [
                    face_id
                    for face_id in face_ids
                    if db.execute(
                        "DELETE FROM faces WHERE gallery = ? AND id = ?", (gallery, face_id)
                    ).rowcount
                ]
            if matrix := self._matrices.get(gallery):
                for face_id in gone:
                    matrix.delete(face_id)
                if gone and (index := self._indexed(gallery, len(gone))):
                    index.remove(gone)
            if gone:
                self._erase_leftovers(gallery)
        return gone

    def delete_gallery(self, gallery: str) -> bool:
        with self._lock:
            with self._write() as db:
                db.execute("DELETE FROM faces WHERE gallery = ?", (gallery,))
                deleted = db.execute("DELETE FROM galleries WHERE name = ?", (gallery,)).rowcount
            self._matrices.pop(gallery, None)
            self._drop_index(gallery)
            if deleted:
                self._erase_leftovers(None)
        return bool(deleted)

    def _erase_leftovers(self, gallery: str | None) -> None:
        """After a delete (holding the lock): the gallery's index file rewritten without the gone
        faces' codes, and the WAL, which still holds the rows as they were, emptied into the
        database, where secure_delete has zeroed them."""
        if gallery in self._indexes:
            self._save_index(gallery)
        elif gallery is not None and gallery not in self._building:
            # a file this process does not keep (another one's, or left from when the gallery was
            # larger): it may hold the deleted faces' codes, and it is only derived data
            path = self._index_path(gallery)
            for leftover in (path, path.with_name(path.name + ".json")):
                leftover.unlink(missing_ok=True)
        self._checkpoint()

    def _checkpoint(self) -> str:
        busy = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        if busy:  # another process kept reading past the busy timeout; its next delete tries again
            log.warning(
                "the gallery's WAL could not be emptied now: deleted rows stay in it until the next delete"
            )
            return "WAL busy: emptied at the next delete"
        return "WAL emptied into the database (deleted rows zeroed there)"

    def erase_deleted(self, vacuum: bool = False) -> list[str]:
        """Every delete already zeroes and checkpoints; `vacuum` also rewrites the whole file,
        for space freed before secure_delete was on (a database made by an older version)."""
        with self._lock:
            done = []
            if vacuum:
                self._db.execute("VACUUM")
                done.append("database rewritten (VACUUM)")
            done.append(self._checkpoint())
            return done

    # --- pages, crops, merge and move (issue 29) ---

    def galleries_page(self, after: str | None, limit: int, q: str | None = None) -> list[GalleryInfo]:
        with self._lock:
            self._refresh()
            needle = None if q is None else q.casefold()
            names = [
                name
                for name in sorted(self._matrices)
                if (after is None or name > after) and (needle is None or needle in name.casefold())
            ][:limit]
            return [info for name in names if (info := self._info(name)) is not None]

    def subjects_page(
        self, gallery: str, after: str | None, limit: int, q: str | None = None
    ) -> list[SubjectSummary]:
        # every name a client can give sorts after UNSORTED (a control character): starting there
        # leaves the unsorted faces out and walks (gallery, subject) in order, a page at a time.
        # The bare `id` takes the row of MAX(): the chosen face, else the best quality (then the
        # lowest id, the first in the index's order)
        where, args = "", [gallery, max(after or UNSORTED, UNSORTED)]
        if q:
            where, args = " AND subject LIKE ? ESCAPE '\\'", [*args, like_pattern(q)]
        with self._lock:
            rows = self._db.execute(
                "SELECT subject, COUNT(*), id, MAX(cover * 2.0 + COALESCE(quality, 0.0)) FROM faces "
                f"WHERE gallery = ? AND subject > ?{where} GROUP BY subject ORDER BY subject LIMIT ?",
                (*args, limit),
            ).fetchall()
        return [SubjectSummary(r[0], int(r[1]), int(r[2])) for r in rows]

    def faces_page(
        self, gallery: str, subject: str, after: int | None, limit: int, q: str | None = None
    ) -> list[StoredFace]:
        where, args = "", [gallery, subject, after or 0]
        if q:
            where, args = " AND f.source LIKE ? ESCAPE '\\'", [*args, like_pattern(q)]
        with self._lock:
            rows = self._db.execute(
                f"SELECT {FACE_COLUMNS} FROM faces f WHERE f.gallery = ? AND f.subject = ? AND f.id > ?"
                f"{where} ORDER BY f.id LIMIT ?",
                (*args, limit),
            ).fetchall()
        return [_stored(r) for r in rows]

    def face(self, gallery: str, face_id: int) -> StoredFace | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {FACE_COLUMNS} FROM faces f WHERE f.gallery = ? AND f.id = ?", (gallery, face_id)
            ).fetchone()
        return None if row is None else _stored(row)

    def face_crop(self, gallery: str, face_id: int) -> FaceCrop | None:
        with self._lock:
            row = self._db.execute(
                "SELECT c.jpeg, c.width, c.height, c.landmarks FROM face_crops c "
                "JOIN faces f ON f.id = c.face_id WHERE f.gallery = ? AND c.face_id = ?",
                (gallery, face_id),
            ).fetchone()
        return _crop(row)

    @staticmethod
    def _subject_exists(db: sqlite3.Connection, gallery: str, subject: str) -> bool:
        found = db.execute(
            "SELECT 1 FROM faces WHERE gallery = ? AND subject = ? LIMIT 1", (gallery, subject)
        )
        return found.fetchone() is not None

    def merge_subjects(self, gallery: str, subject: str, into: str) -> int:
        with self._lock:
            with self._write() as db:
                # `into` keeps its chosen picture; a new `into` takes `subject`'s
                keep = "cover" if not self._subject_exists(db, gallery, into) else "0"
                moved = db.execute(
                    f"UPDATE faces SET subject = ?, cover = {keep} WHERE gallery = ? AND subject = ?",
                    (into, gallery, subject),
                ).rowcount
                if moved == 0:
                    raise NotFound(f"no subject {subject!r} in gallery {gallery!r}")
            if matrix := self._matrices.get(gallery):
                matrix.merge(subject, into)
        return moved

    def move_faces(self, gallery: str, face_ids: list[int], subject: str, require_new: bool = False) -> int:
        ids = sorted(set(face_ids))
        with self._lock:
            with self._write() as db:
                if require_new and self._subject_exists(db, gallery, subject):
                    raise Conflict(f"subject {subject!r} already exists in gallery {gallery!r}")
                found = {
                    r[0]
                    for r in db.execute(
                        f"SELECT id FROM faces WHERE gallery = ? AND id IN ({_placeholders(ids)})",
                        (gallery, *ids),
                    )
                }
                if missing := [i for i in ids if i not in found]:
                    raise NotFound(f"no face {', '.join(map(str, missing[:5]))} in gallery {gallery!r}")
                db.execute(
                    "UPDATE faces SET subject = ?, cover = 0 "
                    f"WHERE gallery = ? AND id IN ({_placeholders(ids)})",
                    (subject, gallery, *ids),
                )
            if matrix := self._matrices.get(gallery):
                matrix.move(ids, subject)
        return len(ids)

    def set_representative(self, gallery: str, subject: str, face_id: int) -> None:
        with self._lock, self._write() as db:
            row = db.execute(
                "SELECT 1 FROM faces WHERE gallery = ? AND subject = ? AND id = ?",
                (gallery, subject, face_id),
            ).fetchone()
            if row is None:
                raise NotFound(f"no face {face_id} of subject {subject!r} in gallery {gallery!r}")
            db.execute(
                "UPDATE faces SET cover = (id = ?) WHERE gallery = ? AND subject = ?",
                (face_id, gallery, subject),
            )

    # --- the review queue (issue 29) ---

    def add_review(
        self, gallery: str, item: NewReviewItem, group_threshold: float, bounds: ReviewBounds
    ) -> int | None:
        with self._lock:
            review_id, gone = self._add_review(gallery, item, group_threshold, bounds)
            if gone:  # items past the bounds are erased: their bytes leave the WAL too (issue 30)
                self._checkpoint()
        return review_id

    def _add_review(
        self, gallery: str, item: NewReviewItem, group_threshold: float, bounds: ReviewBounds
    ) -> tuple[int | None, int]:
        """(the new item's id or None, the number of items that went past the bounds)."""
        now = time.time()
        dedupe = review_dedupe(item)
        with self._write() as db:
            if db.execute("SELECT 1 FROM galleries WHERE name = ?", (gallery,)).fetchone() is None:
                return None, 0
            gone = db.execute(
                "DELETE FROM review_items WHERE gallery = ? AND created_at < ?",
                (gallery, now - bounds.max_age_s),
            ).rowcount
            if (
                dedupe is not None
                and db.execute(
                    "SELECT 1 FROM review_items WHERE gallery = ? AND dedupe = ?", (gallery, dedupe)
                ).fetchone()
            ):
                return None, gone
            rows = db.execute(
                "SELECT grp, embedding, image_hash FROM review_items WHERE gallery = ?", (gallery,)
            ).fetchall()
            vectors = (
                np.frombuffer(b"".join(r[1] for r in rows), np.float32).reshape(len(rows), -1)
                if rows
                else np.zeros((0, len(item.embedding)), np.float32)
            )
            groups = np.array([r[0] for r in rows], np.int64)
            group = review_group(vectors, groups, [r[2] for r in rows], item, group_threshold)
            crop = item.crop
            cursor = db.execute(
                "INSERT INTO review_items (gallery, grp, embedding, jpeg, width, height, landmarks, "
                "image_hash, bbox, prob, quality, source, ref, created_at, candidates, names, dedupe) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    gallery,
                    -1 if group is None else group,
                    np.asarray(item.embedding, np.float32).tobytes(),
                    None if crop is None else crop.jpeg,
                    None if crop is None else crop.width,
                    None if crop is None else crop.height,
                    None if crop is None or crop.landmarks is None else json.dumps(crop.landmarks),
                    item.image_hash,
                    _bbox_text(item.bbox),
                    item.prob,
                    item.quality,
                    item.source,
                    item.ref,
                    now,
                    json.dumps([[s, round(float(v), 6)] for s, v in item.candidates]),
                    "\n".join(s for s, _ in item.candidates),
                    dedupe,
                ),
            )
            review_id = int(cursor.lastrowid)  # type: ignore[arg-type]
            if group is None:
                db.execute("UPDATE review_items SET grp = ? WHERE id = ?", (review_id, review_id))
            # the oldest go first past the bound
            gone += db.execute(
                "DELETE FROM review_items WHERE id IN (SELECT id FROM review_items WHERE gallery = ? "
                "ORDER BY id DESC LIMIT -1 OFFSET ?)",
                (gallery, bounds.max_items),
            ).rowcount
        return review_id, gone

    def review_page(
        self, gallery: str, after: tuple[int, int] | None, limit: int, q: str | None, max_age_s: float
    ) -> list[ReviewItem]:
        group, last = after or (-1, -1)
        where, args = "", [gallery, time.time() - max_age_s, group, last]
        if q:
            where, args = " AND names LIKE ? ESCAPE '\\'", [*args, like_pattern(q)]
        with self._lock:
            rows = self._db.execute(
                f"SELECT {REVIEW_COLUMNS} FROM review_items WHERE gallery = ? AND created_at >= ? "
                f"AND (grp, id) > (?, ?){where} ORDER BY grp, id LIMIT ?",
                (*args, limit),
            ).fetchall()
        return [_review(r) for r in rows]

    def review_items(self, gallery: str, ids: list[int], with_embeddings: bool = False) -> list[ReviewItem]:
        vector = "embedding" if with_embeddings else "NULL"
        with self._lock:
            rows = self._db.execute(
                f"SELECT {REVIEW_COLUMNS}, {vector} FROM review_items "
                f"WHERE gallery = ? AND id IN ({_placeholders(ids)}) ORDER BY id",
                (gallery, *ids),
            ).fetchall()
        return [_review(r, r[12]) for r in rows]

    def review_crop(self, gallery: str, review_id: int) -> FaceCrop | None:
        with self._lock:
            row = self._db.execute(
                "SELECT jpeg, width, height, landmarks FROM review_items WHERE gallery = ? AND id = ?",
                (gallery, review_id),
            ).fetchone()
        return _crop(row)

    def exclude_review(self, gallery: str, ids: list[int], subject: str) -> int:
        changed = 0
        with self._lock, self._write() as db:
            for review_id, excluded in db.execute(
                f"SELECT id, excluded FROM review_items WHERE gallery = ? AND id IN ({_placeholders(ids)})",
                (gallery, *ids),
            ).fetchall():
                names = json.loads(excluded)
                if subject not in names:
                    db.execute(
                        "UPDATE review_items SET excluded = ? WHERE id = ?",
                        (json.dumps([*names, subject]), review_id),
                    )
                    changed += 1
        return changed

    def delete_review(self, gallery: str, ids: list[int]) -> int:
        with self._lock:
            with self._write() as db:
                deleted = int(
                    db.execute(
                        f"DELETE FROM review_items WHERE gallery = ? AND id IN ({_placeholders(ids)})",
                        (gallery, *ids),
                    ).rowcount
                )
            if deleted:  # a dismissed face leaves no bytes in the WAL either (issue 30)
                self._checkpoint()
        return deleted

    def expire_review(self, older_than: float) -> dict[str, int]:
        with self._lock:
            with self._write() as db:
                galleries = db.execute(
                    "DELETE FROM review_items WHERE created_at < ? RETURNING gallery", (older_than,)
                ).fetchall()
            if galleries:
                self._checkpoint()
        return dict(Counter(g for (g,) in galleries))

    def forget_review_subject(self, gallery: str, subject: str, same_above: float | None) -> tuple[int, int]:
        needle = json.dumps(subject)  # as the name is written in `candidates` and `excluded`
        deleted = changed = 0
        with self._lock:
            with self._write() as db:
                rows = db.execute(
                    "SELECT id, candidates, excluded FROM review_items WHERE gallery = ? "
                    "AND (instr(candidates, ?) > 0 OR instr(excluded, ?) > 0)",
                    (gallery, needle, needle),
                ).fetchall()
                for review_id, candidates_text, excluded_text in rows:
                    candidates = json.loads(candidates_text)
                    excluded = json.loads(excluded_text)
                    scores = [v for name, v in candidates if name == subject]
                    if scores and (same_above is None or max(scores) >= same_above):
                        deleted += db.execute("DELETE FROM review_items WHERE id = ?", (review_id,)).rowcount
                        continue
                    kept = [[name, v] for name, v in candidates if name != subject]
                    if len(kept) == len(candidates) and subject not in excluded:
                        continue  # the name only appeared inside another one
                    db.execute(
                        "UPDATE review_items SET candidates = ?, names = ?, excluded = ? WHERE id = ?",
                        (
                            json.dumps(kept),
                            "\n".join(name for name, _ in kept),
                            json.dumps([n for n in excluded if n != subject]),
                            review_id,
                        ),
                    )
                    changed += 1
            if deleted or changed:  # the old rows leave the WAL too
                self._checkpoint()
        return deleted, changed

    def assign_review(
        self, gallery: str, ids: list[int], subject: str, model: ModelTag, require_new: bool = False
    ) -> list[int]:
        wanted = list(dict.fromkeys(ids))
        with self._lock:
            with self._write() as db:
                if not self._checked_gallery(db, gallery, model, create=False):
                    raise NotFound(f"no gallery {gallery!r}")
                if require_new and self._subject_exists(db, gallery, subject):
                    raise Conflict(f"subject {subject!r} already exists in gallery {gallery!r}")
                rows = {
                    r[0]: r
                    for r in db.execute(
                        "SELECT id, embedding, jpeg, width, height, landmarks, image_hash, bbox, prob, "
                        "quality, source FROM review_items "
                        f"WHERE gallery = ? AND id IN ({_placeholders(wanted)})",
                        (gallery, *wanted),
                    )
                }
                if missing := [i for i in wanted if i not in rows]:
                    raise NotFound(
                        f"no review item {', '.join(map(str, missing[:5]))} in gallery {gallery!r}"
                    )
                faces = [
                    NewFace(
                        np.frombuffer(r[1], np.float32),
                        r[6],
                        None if r[7] is None else json.loads(r[7]),
                        r[8],
                        _crop(r[2:6]),
                        r[9],
                        r[10],
                    )
                    for r in (rows[i] for i in wanted)
                ]
                face_ids = self._insert(db, gallery, model, [(subject, f) for f in faces])
                db.execute(
                    f"DELETE FROM review_items WHERE gallery = ? AND id IN ({_placeholders(wanted)})",
                    (gallery, *wanted),
                )
            self._added(gallery, model, [subject] * len(faces), face_ids, [f.embedding for f in faces])
        return face_ids

    def search(
        self, gallery: str, queries: np.ndarray, top_k: int, exact: bool = False, floor: float | None = None
    ) -> list[SearchResult]:
        queries = np.asarray(queries, np.float32)
        with self._lock:
            self._refresh()
            matrix = self._matrices.get(gallery)
            if matrix is None:
                return [SearchResult() for _ in queries]
            index = None if exact else self._indexes.get(gallery)
            if index is None:
                return matrix.search(queries, top_k)
            count = max(self.index_options.candidates, 10 * top_k)
            results = [
                matrix.rerank(query, candidates, top_k)
                for query, candidates in zip(queries, index.search(queries, count), strict=True)
            ]
            if floor is not None:
                for i, result in enumerate(results):
                    if not result.matches or result.matches[0].similarity < floor:
                        [results[i]] = matrix.search(queries[i : i + 1], top_k)
            return results

    # --- re-embedding: a gallery moving to another recognizer (issue 32) ---

    @staticmethod
    def _job(db: sqlite3.Connection, gallery: str) -> ReembedJob | None:
        r = db.execute(f"SELECT {REEMBED_COLUMNS} FROM reembeds WHERE gallery = ?", (gallery,)).fetchone()
        return None if r is None else ReembedJob.from_row(r, missing=json.loads(r[18]))

    @staticmethod
    def _missing(db: sqlite3.Connection, gallery: str, pending_only: bool) -> tuple[list[int], int]:
        """(the first MISSING_LISTED, the number of) faces without a crop to align from; with
        `pending_only`, of those also without a new embedding."""
        pending = " AND f.next_embedding IS NULL" if pending_only else ""
        ids = [
            r[0]
            for r in db.execute(
                "SELECT f.id FROM faces f LEFT JOIN face_crops c ON c.face_id = f.id "
                f"WHERE f.gallery = ? AND (c.face_id IS NULL OR NOT ({USABLE_CROP})){pending} ORDER BY f.id",
                (gallery,),
            )
        ]
        return ids[:MISSING_LISTED], len(ids)

    def reembed_begin(self, job: ReembedJob, owner: str, lease_s: float) -> ReembedJob:
        gallery, now = job.gallery, time.time()
        with self._lock, self._write(searched=False) as db:
            row = db.execute(
                "SELECT model, model_md5, dim FROM galleries WHERE name = ?", (gallery,)
            ).fetchone()
            if row is None:
                raise NotFound(f"no gallery {gallery!r}")
            existing = self._job(db, gallery)
            if reembed_takes_up(existing, job, owner, lease_s, now):
                db.execute(
                    "UPDATE reembeds SET owner = ?, updated_at = ?, state = 'running', error = NULL, "
                    "drop_missing = ? WHERE gallery = ?",
                    (owner, now, int(job.drop_missing), gallery),
                )
                return self._job(db, gallery)  # type: ignore[return-value]
            if ModelTag(*row) != job.source:
                raise ModelMismatch(mismatch_message(gallery, ModelTag(*row), job.source))
            if job.into is not None:
                taken = db.execute(
                    "SELECT 1 FROM galleries WHERE name = ? UNION ALL SELECT 1 FROM reembeds "
                    "WHERE into_gallery = ? AND state <> 'done'",
                    (job.into, job.into),
                ).fetchone()
                if taken:
                    raise Conflict(f"gallery {job.into!r} already exists (or is being made)")
            missing, count = self._missing(db, gallery, pending_only=False)
            if count and job.into is None and not job.drop_missing:
                raise Conflict(missing_crops(gallery, missing, count))
            db.execute("UPDATE faces SET next_embedding = NULL WHERE gallery = ?", (gallery,))
            db.execute("UPDATE review_items SET next_embedding = NULL WHERE gallery = ?", (gallery,))
            [review] = db.execute(
                f"SELECT COUNT(*) FROM review_items WHERE gallery = ? AND {REVIEW_CROP}", (gallery,)
            ).fetchone()
            db.execute("DELETE FROM reembeds WHERE gallery = ?", (gallery,))
            db.execute(
                f"INSERT INTO reembeds ({REEMBED_COLUMNS}) VALUES ({_placeholders([0] * 23)})",
                (
                    gallery,
                    job.target.name,
                    job.target.md5,
                    job.target.dim,
                    job.alignment,
                    job.source.name,
                    job.source.md5,
                    job.source.dim,
                    job.into,
                    int(job.drop_missing),
                    "running",
                    owner,
                    now,
                    now,
                    None,
                    None,
                    0,
                    0,
                    json.dumps(missing),
                    count,
                    0 if job.into is not None else review,
                    0,
                    0,
                ),
            )
            return self._job(db, gallery)  # type: ignore[return-value]

    def reembed_job(self, gallery: str) -> ReembedJob | None:
        with self._lock:
            self._refresh()
            job = self._job(self._db, gallery)
            if job is not None and job.state != "done":
                matrix = self._matrices.get(gallery)
                job.faces = 0 if matrix is None else matrix.count
                job.done = min(job.done, job.faces)
            return job

    def reembed_running(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT gallery FROM reembeds WHERE state = 'running'")]

    def reembed_todo(self, gallery: str, review: bool, after: int, limit: int) -> list[tuple[int, FaceCrop]]:
        if review:
            sql = (
                "SELECT id, jpeg, width, height, landmarks FROM review_items WHERE gallery = ? AND id > ? "
                f"AND next_embedding IS NULL AND {REVIEW_CROP} ORDER BY id LIMIT ?"
            )
        else:
            sql = (
                "SELECT f.id, c.jpeg, c.width, c.height, c.landmarks FROM faces f JOIN face_crops c "
                "ON c.face_id = f.id WHERE f.gallery = ? AND f.id > ? AND f.next_embedding IS NULL "
                f"AND {USABLE_CROP} ORDER BY f.id LIMIT ?"
            )
        with self._lock:
            rows = self._db.execute(sql, (gallery, after, limit)).fetchall()
        return [(int(r[0]), _crop(r[1:5])) for r in rows]  # type: ignore[misc]

    def reembed_put(
        self, gallery: str, owner: str, review: bool, ids: list[int], vectors: np.ndarray
    ) -> None:
        table, counter = ("review_items", "review_done") if review else ("faces", "done")
        vectors = np.asarray(vectors, np.float32)
        with self._lock, self._write(searched=False) as db:
            job = self._job(db, gallery)
            if job is None or job.state != "running" or job.owner != owner:
                raise NotOwner(f"the move of gallery {gallery!r} was cancelled or taken up by another runner")
            if vectors.shape[1] != job.target.dim:
                raise ModelMismatch(
                    f"{job.target.name} gave {vectors.shape[1]} values; the move expects {job.target.dim}"
                )
            written = 0
            for face_id, vector in zip(ids, vectors, strict=True):
                written += db.execute(
                    f"UPDATE {table} SET next_embedding = ? WHERE gallery = ? AND id = ?",
                    (vector.tobytes(), gallery, face_id),
                ).rowcount
            db.execute(
                f"UPDATE reembeds SET updated_at = ?, {counter} = {counter} + ? WHERE gallery = ?",
                (time.time(), written, gallery),
            )

    def reembed_finish(self, gallery: str, owner: str) -> ReembedJob | None:
        now = time.time()
        with self._lock:
            with self._write(searched=False) as db:
                job = self._job(db, gallery)
                if job is None or job.state != "running" or job.owner != owner:
                    raise NotOwner(
                        f"the move of gallery {gallery!r} was cancelled or taken up by another runner"
                    )
                [left] = db.execute(
                    "SELECT COUNT(*) FROM faces f JOIN face_crops c ON c.face_id = f.id "
                    f"WHERE f.gallery = ? AND f.next_embedding IS NULL AND {USABLE_CROP}",
                    (gallery,),
                ).fetchone()
                if job.into is None:
                    left += db.execute(
                        "SELECT COUNT(*) FROM review_items WHERE gallery = ? AND next_embedding IS NULL "
                        f"AND {REVIEW_CROP}",
                        (gallery,),
                    ).fetchone()[0]
                if left:
                    return None
                row = db.execute(
                    "SELECT model, model_md5, dim FROM galleries WHERE name = ?", (gallery,)
                ).fetchone()
                if ModelTag(*row) != job.source:
                    raise ModelMismatch(mismatch_message(gallery, ModelTag(*row), job.source))
                missing, count = self._missing(db, gallery, pending_only=True)
                moved, dropped = 0, 0
                if job.into is None and count and not job.drop_missing:
                    raise Conflict(missing_crops(gallery, missing, count))
                self._count_searched(db)  # the switch: every process reads the faces again
                if job.into is None:
                    db.execute("DELETE FROM faces WHERE gallery = ? AND next_embedding IS NULL", (gallery,))
                    moved = db.execute(
                        "UPDATE faces SET embedding = next_embedding, next_embedding = NULL, model = ? "
                        "WHERE gallery = ?",
                        (job.target.name, gallery),
                    ).rowcount
                    dropped = db.execute(
                        "DELETE FROM review_items WHERE gallery = ? AND next_embedding IS NULL", (gallery,)
                    ).rowcount
                    db.execute(
                        "UPDATE review_items SET embedding = next_embedding, next_embedding = NULL "
                        "WHERE gallery = ?",
                        (gallery,),
                    )
                    db.execute(
                        "UPDATE galleries SET model = ?, model_md5 = ?, dim = ? WHERE name = ?",
                        (job.target.name, job.target.md5, job.target.dim, gallery),
                    )
                else:
                    if db.execute("SELECT 1 FROM galleries WHERE name = ?", (job.into,)).fetchone():
                        raise Conflict(
                            f"gallery {job.into!r} was made meanwhile; the move cannot be done into it"
                        )
                    db.execute(
                        "INSERT INTO galleries (name, model, model_md5, dim, created_at) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (job.into, job.target.name, job.target.md5, job.target.dim, now),
                    )
                    ids = [
                        r[0]
                        for r in db.execute(
                            "SELECT id FROM faces WHERE gallery = ? AND next_embedding IS NOT NULL "
                            "ORDER BY id",
                            (gallery,),
                        )
                    ]
                    for face_id in ids:  # each face and its crop, in the order they came
                        new_id = db.execute(
                            "INSERT INTO faces (gallery, subject, embedding, image_hash, bbox, prob, "
                            "model, added_at, quality, source, cover) SELECT ?, subject, next_embedding, "
                            "image_hash, bbox, prob, ?, added_at, quality, source, cover FROM faces "
                            "WHERE id = ?",
                            (job.into, job.target.name, face_id),
                        ).lastrowid
                        db.execute(
                            "INSERT INTO face_crops (face_id, jpeg, width, height, landmarks) "
                            "SELECT ?, jpeg, width, height, landmarks FROM face_crops WHERE face_id = ?",
                            (new_id, face_id),
                        )
                    moved = len(ids)
                    db.execute("UPDATE faces SET next_embedding = NULL WHERE gallery = ?", (gallery,))
                db.execute(
                    "UPDATE reembeds SET state = 'done', owner = NULL, updated_at = ?, finished_at = ?, "
                    "faces = ?, done = ?, missing = ?, missing_count = ?, review_dropped = ? "
                    "WHERE gallery = ?",
                    (now, now, moved, moved, json.dumps(missing), count, dropped, gallery),
                )
                done = self._job(db, gallery)
            # committed: the moved gallery's matrix read again, its index made anew
            self._reload(gallery if job.into is None else job.into)
            if job.into is None:  # the old embeddings and the dropped faces leave the WAL (issue 30)
                self._checkpoint()
        return done

    def _reload(self, gallery: str) -> None:
        """The gallery's matrix read again from SQLite and its index rebuilt (the caller holds
        the lock): its embeddings were all replaced, under the same face ids."""
        row = self._db.execute(
            "SELECT model, model_md5, dim FROM galleries WHERE name = ?", (gallery,)
        ).fetchone()
        [count] = self._db.execute("SELECT COUNT(*) FROM faces WHERE gallery = ?", (gallery,)).fetchone()
        matrices = {gallery: _Matrix(ModelTag(*row), count)}
        batch: list[tuple[str, str, int, bytes]] = []
        for r in self._db.execute(
            "SELECT gallery, subject, id, embedding FROM faces WHERE gallery = ? ORDER BY subject, id",
            (gallery,),
        ):
            if batch and r[1] != batch[0][1]:
                self._load(matrices, batch)
                batch = []
            batch.append(r)
        if batch:
            self._load(matrices, batch)
        self._matrices[gallery] = matrices[gallery]
        self._drop_index(gallery)
        self._sync_index(gallery, from_disk=False)

    def reembed_end(self, gallery: str, owner: str | None, error: str | None) -> bool:
        with self._lock, self._write(searched=False) as db:
            job = self._job(db, gallery)
            if job is None or job.state != "running" or owner not in (None, job.owner):
                return False
            db.execute(
                "UPDATE reembeds SET owner = NULL, state = ?, error = ?, updated_at = ? WHERE gallery = ?",
                ("failed" if error else "running", error, time.time(), gallery),
            )
        return True

    def reembed_cancel(self, gallery: str) -> bool:
        with self._lock, self._write(searched=False) as db:
            job = self._job(db, gallery)
            if job is None or job.state == "done":
                return False
            db.execute(
                "UPDATE faces SET next_embedding = NULL WHERE gallery = ? AND next_embedding IS NOT NULL",
                (gallery,),
            )
            db.execute(
                "UPDATE review_items SET next_embedding = NULL "
                "WHERE gallery = ? AND next_embedding IS NOT NULL",
                (gallery,),
            )
            db.execute("DELETE FROM reembeds WHERE gallery = ?", (gallery,))
        return True

    def close(self) -> None:
        with self._lock:
            self._closed = True  # a build under way stops at its next chunk
        self.wait_for_indexes(timeout_s=60)
        with self._lock:
            # caught up first: another worker's deletes must not come back with our saved codes
            self._refresh()
            for gallery, index in self._indexes.items():
                if index.dirty:
                    self._save_index(gallery)
            self._db.close()
