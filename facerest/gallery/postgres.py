"""The shared backend: PostgreSQL with pgvector, for several API replicas over one gallery.

Large galleries are searched through each replica's own sign codes of every face
(facerest/gallery/replica_codes.py: loaded once, kept in step through a change log, candidates
re-ranked exactly by the database). Until they are loaded, and for galleries below
`IndexOptions.min_faces`, search goes through an HNSW index (inner product on unit vectors, one
partial index per embedding size, built CONCURRENTLY in the background so enrolment keeps
working): the nearest faces come from the index in order (the query shape `ORDER BY embedding <#> q
LIMIT n`, the only one pgvector's index serves; see docs/performance.md for its EXPLAIN), exactly
scored, and only then grouped by subject. `hnsw.ef_search` follows the recall asked for; `exact`
scans every face. Every replica sees every other's writes at once: the records live in the one
database, and the codes catch up with its change log before every search.

Deleting (issue 30): a deleted face is gone from every query and every replica's codes at once,
but PostgreSQL never overwrites a row in place: its bytes stay in the table's and indexes' pages
(and in the WAL) until the pages are rewritten. `erase_deleted` rewrites facerest's tables and
indexes (VACUUM FULL); docs/privacy.md says what that costs and what it cannot reach.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from facerest.errors import BackendUnavailable, Conflict, ModelMismatch, NotFound
from facerest.gallery import replica_codes
from facerest.gallery.index import IndexOptions
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
    SubjectMatch,
    SubjectSummary,
    checked_rename,
    like_pattern,
    mismatch_message,
    missing_crops,
    reembed_takes_up,
    review_dedupe,
    review_group,
)
from facerest.imaging.crops import FaceCrop

SCHEMA = """
CREATE EXTENSION IF NOT EXISTS vector;
CREATE TABLE IF NOT EXISTS facerest_galleries (
    name TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    model_md5 TEXT NOT NULL,
    dim INTEGER NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS facerest_faces (
    id BIGSERIAL PRIMARY KEY,
    gallery TEXT NOT NULL REFERENCES facerest_galleries(name) ON DELETE CASCADE,
    subject TEXT NOT NULL,
    embedding vector NOT NULL,
    image_hash TEXT,
    bbox REAL[],
    prob REAL,
    model TEXT NOT NULL,
    added_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS facerest_faces_by_subject ON facerest_faces (gallery, subject);
-- a 512-d vector (2 KB) is just over TOAST's threshold: stored out of line by default, it makes
-- every search detoast each row (1.5 s instead of ~0.1 s for 100k faces); keep it in the row
DO $$ BEGIN
    IF (SELECT attstorage FROM pg_attribute
        WHERE attrelid = 'facerest_faces'::regclass AND attname = 'embedding') <> 'p' THEN
        ALTER TABLE facerest_faces ALTER COLUMN embedding SET STORAGE PLAIN;
    END IF;
END $$;
-- issue 29: quality, source and the chosen picture of each face; its crop beside it, deleted
-- with it; the review queue, deleted with its gallery
ALTER TABLE facerest_faces ADD COLUMN IF NOT EXISTS quality REAL;
ALTER TABLE facerest_faces ADD COLUMN IF NOT EXISTS source TEXT;
ALTER TABLE facerest_faces ADD COLUMN IF NOT EXISTS cover BOOLEAN NOT NULL DEFAULT false;
CREATE TABLE IF NOT EXISTS facerest_face_crops (
    face_id BIGINT PRIMARY KEY REFERENCES facerest_faces(id) ON DELETE CASCADE,
    jpeg BYTEA NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    landmarks JSONB
);
CREATE TABLE IF NOT EXISTS facerest_review_items (
    id BIGSERIAL PRIMARY KEY,
    gallery TEXT NOT NULL REFERENCES facerest_galleries(name) ON DELETE CASCADE,
    grp BIGINT NOT NULL,
    embedding vector NOT NULL,
    jpeg BYTEA,
    width INTEGER,
    height INTEGER,
    landmarks JSONB,
    image_hash TEXT,
    bbox REAL[],
    prob REAL,
    quality REAL,
    source TEXT NOT NULL,
    ref TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    candidates JSONB NOT NULL,
    names TEXT NOT NULL,
    excluded TEXT[] NOT NULL DEFAULT '{}',
    dedupe TEXT,
    UNIQUE (gallery, dedupe)
);
CREATE INDEX IF NOT EXISTS facerest_review_by_group ON facerest_review_items (gallery, grp, id);
CREATE INDEX IF NOT EXISTS facerest_review_by_age ON facerest_review_items (gallery, created_at);
-- issue 32: a gallery moving to another recognizer; the new embeddings wait in next_embedding
ALTER TABLE facerest_faces ADD COLUMN IF NOT EXISTS next_embedding vector;
ALTER TABLE facerest_review_items ADD COLUMN IF NOT EXISTS next_embedding vector;
CREATE TABLE IF NOT EXISTS facerest_reembeds (
    gallery TEXT PRIMARY KEY REFERENCES facerest_galleries(name) ON DELETE CASCADE,
    model TEXT NOT NULL,
    model_md5 TEXT NOT NULL,
    dim INTEGER NOT NULL,
    alignment TEXT NOT NULL,
    source_model TEXT NOT NULL,
    source_md5 TEXT NOT NULL,
    source_dim INTEGER NOT NULL,
    into_gallery TEXT,
    drop_missing BOOLEAN NOT NULL,
    state TEXT NOT NULL,
    owner TEXT,
    started_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    finished_at DOUBLE PRECISION,
    error TEXT,
    faces BIGINT NOT NULL DEFAULT 0,
    done BIGINT NOT NULL DEFAULT 0,
    missing BIGINT[] NOT NULL DEFAULT '{}',
    missing_count BIGINT NOT NULL DEFAULT 0,
    review_items BIGINT NOT NULL DEFAULT 0,
    review_done BIGINT NOT NULL DEFAULT 0,
    review_dropped BIGINT NOT NULL DEFAULT 0
);
"""

#: a face's crop with landmarks (`c` is facerest_face_crops; a crop kept without landmarks holds
#: JSON null there): what a re-embed aligns from; a review item's
USABLE_CROP = "COALESCE(jsonb_typeof(c.landmarks), '') = 'array'"
REVIEW_CROP = "jpeg IS NOT NULL AND COALESCE(jsonb_typeof(landmarks), '') = 'array'"

#: a face's record (`f` is facerest_faces), as `_stored` reads it
FACE_COLUMNS = (
    "f.id, f.subject, f.image_hash, f.bbox, f.prob, f.model, f.added_at, f.quality, f.source, f.cover, "
    "EXISTS(SELECT 1 FROM facerest_face_crops c WHERE c.face_id = f.id)"
)
REVIEW_COLUMNS = (
    "id, grp, source, ref, created_at, candidates, excluded, image_hash, bbox, prob, quality, "
    "jpeg IS NOT NULL"
)


def _floats(values: list[float] | None) -> list[float] | None:
    """A REAL[] column takes one type: [1, 2.5] would not go in."""
    return None if values is None else [float(v) for v in values]


def _stored(r: Any, embedding: Any = None) -> StoredFace:
    return StoredFace(
        face_id=int(r[0]),
        subject=r[1],
        image_hash=r[2],
        bbox=None if r[3] is None else [float(v) for v in r[3]],
        prob=r[4],
        model=r[5],
        added_at=r[6],
        quality=r[7],
        source=r[8],
        representative=bool(r[9]),
        has_crop=bool(r[10]),
        embedding=None if embedding is None else np.asarray(embedding.to_numpy(), np.float32),
    )


def _crop(r: Any) -> FaceCrop | None:
    """(jpeg, width, height, landmarks) -> FaceCrop."""
    if r is None or r[0] is None:
        return None
    return FaceCrop(bytes(r[0]), int(r[1]), int(r[2]), r[3])


def _review(r: Any, embedding: Any = None) -> ReviewItem:
    return ReviewItem(
        review_id=int(r[0]),
        group=int(r[1]),
        source=r[2],
        ref=r[3],
        created_at=r[4],
        candidates=[(str(s), float(v)) for s, v in r[5]],
        excluded=list(r[6]),
        image_hash=r[7],
        bbox=None if r[8] is None else [float(v) for v in r[8]],
        prob=r[9],
        quality=r[10],
        has_crop=bool(r[11]),
        embedding=None if embedding is None else np.asarray(embedding.to_numpy(), np.float32),
    )


#: whether the schema above (and the replicas' change log) is all there, read from the catalogue
SCHEMA_CURRENT = """
SELECT to_regclass('facerest_review_by_age') IS NOT NULL
   AND to_regclass('facerest_face_crops') IS NOT NULL
   AND to_regclass('facerest_changes') IS NOT NULL
   AND (SELECT count(*) FROM pg_attribute
        WHERE attrelid = to_regclass('facerest_faces') AND attname IN ('quality', 'source', 'cover')) = 3
   AND EXISTS (SELECT 1 FROM pg_attribute
        WHERE attrelid = to_regclass('facerest_galleries') AND attname = 'version')
   AND to_regclass('facerest_reembeds') IS NOT NULL
   AND (SELECT count(*) FROM pg_attribute WHERE attname = 'next_embedding'
        AND attrelid IN (to_regclass('facerest_faces'), to_regclass('facerest_review_items'))) = 2
"""

# the schema is created once per database even when several replicas start together
SCHEMA_LOCK = 0x66616365  # "face"
# one CREATE INDEX CONCURRENTLY on facerest_faces at a time, in all replicas: each HNSW index and
# the index of subject names (two at once on one table wait for each other's snapshot and one
# fails with "deadlock detected", leaving searches without their index until a restart). Taken
# by polling (`_take_index_lock`): a session blocked in pg_advisory_lock holds a snapshot, which
# the running build waits for, a deadlock of its own
INDEX_LOCK = 0x686E7377  # "hnsw"
NAME_INDEX = "facerest_faces_subject_trgm"

log = logging.getLogger(__name__)


INDEX_PREFIX = "facerest_faces_hnsw_"


def index_name(dim: int) -> str:
    return f"{INDEX_PREFIX}{dim}"


# whether the HNSW index of gallery g's embedding size is valid (NULL: there is none)
_INDEX_VALID = (
    "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
    f"WHERE c.relname = '{INDEX_PREFIX}' || g.dim"
)
_INDEX_STATES = {True: "hnsw", False: "building", None: "exact"}
#: how long a gallery's face and subject counts are reused when no write of ours changed them
COUNTS_TTL_S = 5.0


def index_sql(dim: int) -> str:
    """The HNSW index of the faces of `dim`-sized embeddings (an index needs a fixed size)."""
    return (
        f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {index_name(dim)} ON facerest_faces "
        f"USING hnsw ((embedding::vector({dim})) vector_ip_ops) WITH (m = 16, ef_construction = 128) "
        f"WHERE vector_dims(embedding) = {dim}"
    )


def candidates_sql(dim: int) -> str:
    """The nearest `n` faces of a gallery, best first: the shape the HNSW index serves."""
    return (
        f"SELECT subject, -(embedding::vector({dim}) <#> %(q)s::vector({dim})) AS similarity "
        f"FROM facerest_faces WHERE gallery = %(gallery)s AND vector_dims(embedding) = {dim} "
        f"ORDER BY embedding::vector({dim}) <#> %(q)s::vector({dim}) LIMIT %(n)s"
    )


#: the candidates this replica's codes proposed, scored exactly by the rows that exist now
RERANK_SQL = (
    "SELECT subject, MAX(-(embedding <#> %(q)s)) AS similarity FROM facerest_faces "
    "WHERE gallery = %(gallery)s AND id = ANY(%(ids)s) GROUP BY subject "
    "ORDER BY similarity DESC, subject LIMIT %(k)s"
)

Method = TypeVar("Method", bound=Callable[..., Any])


def _recounts(method: Method) -> Method:
    """A write to a gallery: its cached counts are dropped once the write is done."""

    @functools.wraps(method)
    def write(self: PostgresStore, gallery: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, gallery, *args, **kwargs)
        finally:
            self._counts.pop(gallery, None)

    return write  # type: ignore[return-value]


class PostgresStore(GalleryStore):
    def __init__(self, url: str, options: IndexOptions | None = None, pool_size: int = 8) -> None:
        options = options or IndexOptions()
        try:
            import psycopg
            from pgvector.psycopg import register_vector
            from psycopg_pool import ConnectionPool
        except ImportError as exc:
            raise BackendUnavailable(
                "FACEREST_GALLERY_URL names PostgreSQL but psycopg / pgvector are not installed: "
                "pip install 'facerest[postgres]'"
            ) from exc
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("SELECT pg_advisory_lock(%s)", (SCHEMA_LOCK,))
                try:
                    # DDL only when something is missing: even `IF NOT EXISTS` takes its table's
                    # lock (ALTER TABLE an exclusive one), which would stall the other replicas'
                    # searches and can deadlock with their writes at every start
                    if not conn.execute(SCHEMA_CURRENT).fetchone()[0]:  # type: ignore[index]
                        conn.execute(SCHEMA)
                        conn.execute(replica_codes.SCHEMA)
                finally:
                    conn.execute("SELECT pg_advisory_unlock(%s)", (SCHEMA_LOCK,))
        except psycopg.Error as exc:
            raise BackendUnavailable(f"cannot use the PostgreSQL gallery database: {exc}") from exc
        self._pool = ConnectionPool(
            url, min_size=1, max_size=pool_size, configure=register_vector, open=True, timeout=30
        )
        self.ef_search = options.pg_ef_search
        self.candidates = options.candidates
        self.build_memory_mb = options.pg_build_memory_mb
        # min_faces 0: no HNSW index is made and no codes are loaded (bulk loads; exact scans)
        self.build_index = options.min_faces > 0 and options.pg_hnsw
        self._codes = replica_codes.ReplicaCodes(self._pool.connection, options)
        self._url = url
        self._indexed_dims: set[int] = set()
        self._counts: dict[str, tuple[float, int, int]] = {}  # gallery -> (when, subjects, faces)
        self._closed = threading.Event()
        with self._pool.connection() as conn:
            known = conn.execute("SELECT name, dim FROM facerest_galleries").fetchall()
        for dim in {int(dim) for _, dim in known}:
            self._ensure_index(dim)
        for name, _ in known:
            self._codes.load(name)
        if options.min_faces > 0:
            threading.Thread(target=self._build_name_index, name="names-trgm", daemon=True).start()

    # --- the HNSW indexes ---

    def _ensure_index(self, dim: int) -> None:
        """Build the index of `dim`-sized faces in the background if it is missing or invalid."""
        if dim in self._indexed_dims or not self.build_index:
            return
        self._indexed_dims.add(dim)
        threading.Thread(target=self._build_index, args=(dim,), name=f"hnsw-{dim}", daemon=True).start()

    def _build_index(self, dim: int) -> None:
        import psycopg

        try:
            # its own connection, in autocommit: CREATE INDEX CONCURRENTLY cannot run in a transaction
            with psycopg.connect(self._url, autocommit=True) as conn:
                if not self._take_index_lock(conn):
                    return
                try:
                    valid = conn.execute(
                        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                        "WHERE c.relname = %s",
                        (index_name(dim),),
                    ).fetchone()
                    if valid is not None and valid[0]:
                        return
                    if valid is not None:  # a build that was interrupted leaves an invalid index
                        conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {index_name(dim)}")
                    started = time.perf_counter()
                    conn.execute(f"SET maintenance_work_mem = '{int(self.build_memory_mb)}MB'")
                    conn.execute(index_sql(dim))  # type: ignore[arg-type]
                    log.info("HNSW index for %d-d faces built in %.1f s", dim, time.perf_counter() - started)
                finally:
                    conn.execute("SELECT pg_advisory_unlock(%s)", (INDEX_LOCK,))
        except psycopg.Error as exc:  # searches stay exact scans until an index exists
            if not self._closed.is_set():
                log.warning("could not build the HNSW index for %d-d faces: %s", dim, exc)
            self._indexed_dims.discard(dim)

    def _take_index_lock(self, conn: Any) -> bool:
        """INDEX_LOCK for this session (autocommit), tried every 0.2 s between statements; False
        when the store closed meanwhile."""
        while True:
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (INDEX_LOCK,)).fetchone()
            if row is not None and row[0]:
                return True
            if self._closed.wait(0.2):
                return False

    def _build_name_index(self) -> None:
        """The trigram index (pg_trgm) that serves a name filter, `subject ILIKE '%q%'`: without
        it a filter reads every name of the gallery (470 ms at 100,000 subjects; 3 ms with it).
        Built CONCURRENTLY in the background when missing; where pg_trgm cannot be had, filters
        scan."""
        import psycopg

        try:
            with psycopg.connect(self._url, autocommit=True) as conn:
                if not self._take_index_lock(conn):
                    return
                try:
                    valid = conn.execute(
                        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                        "WHERE c.relname = %s",
                        (NAME_INDEX,),
                    ).fetchone()
                    if valid is not None and valid[0]:
                        return
                    if valid is not None:
                        conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {NAME_INDEX}")
                    conn.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
                    conn.execute(
                        f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {NAME_INDEX} ON facerest_faces "
                        "USING gin (subject gin_trgm_ops)"
                    )
                finally:
                    conn.execute("SELECT pg_advisory_unlock(%s)", (INDEX_LOCK,))
        except psycopg.Error as exc:
            if not self._closed.is_set():
                log.info("no trigram index on subject names (%s): a name filter scans the names", exc)

    # --- the interface ---

    def galleries(self) -> list[GalleryInfo]:
        return self._infos(None)

    def gallery(self, name: str) -> GalleryInfo | None:
        """Existence, model and index by key (every search asks); the counts, which cost a pass
        over the gallery's rows (100 ms at a million faces), are kept COUNTS_TTL_S and dropped
        on this server's own writes, so another replica's enrolments show within seconds."""
        with self._pool.connection() as conn:
            row = conn.execute(
                f"SELECT g.model, g.model_md5, g.dim, ({_INDEX_VALID}) "
                "FROM facerest_galleries g WHERE g.name = %s",
                (name,),
            ).fetchone()
            if row is None:
                self._counts.pop(name, None)
                return None
            counted = self._counts.get(name)
            if counted is None or time.monotonic() - counted[0] > COUNTS_TTL_S:
                subjects, faces = conn.execute(
                    "SELECT COUNT(DISTINCT subject), COUNT(*) FROM facerest_faces WHERE gallery = %s", (name,)
                ).fetchone()  # type: ignore[misc]
                counted = self._counts[name] = (time.monotonic(), subjects, faces)
        return GalleryInfo(
            name, ModelTag(row[0], row[1], row[2]), counted[1], counted[2], self._state(name, row[3])
        )

    def _state(self, gallery: str, hnsw_valid: bool | None) -> str:
        """What searches of the gallery go through here: this replica's codes once loaded, else
        pgvector's HNSW index (or "building", or "exact" when there is none)."""
        return "codes" if self._codes.searched(gallery) else _INDEX_STATES[hnsw_valid]

    def _infos(self, name: str | None) -> list[GalleryInfo]:
        with self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT g.name, g.model, g.model_md5, g.dim, COUNT(DISTINCT f.subject), COUNT(f.id), "
                f"({_INDEX_VALID}) "
                "FROM facerest_galleries g LEFT JOIN facerest_faces f ON f.gallery = g.name "
                "WHERE %(name)s::text IS NULL OR g.name = %(name)s GROUP BY g.name ORDER BY g.name",
                {"name": name},
            ).fetchall()
        return [
            GalleryInfo(r[0], ModelTag(r[1], r[2], r[3]), r[4], r[5], self._state(r[0], r[6])) for r in rows
        ]

    def add_faces(self, gallery: str, subject: str, model: ModelTag, faces: list[NewFace]) -> list[int]:
        return self.add_many(gallery, model, [(subject, face) for face in faces])

    @_recounts
    def add_many(self, gallery: str, model: ModelTag, faces: list[tuple[str, NewFace]]) -> list[int]:
        now = time.time()
        with self._pool.connection() as conn, conn.transaction():
            conn.execute(
                "INSERT INTO facerest_galleries (name, model, model_md5, dim, created_at) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (name) DO NOTHING",
                (gallery, model.name, model.md5, model.dim, now),
            )
            self._locked(conn, gallery, model)
            if not faces:
                return []
            self._ensure_index(model.dim)
            ids = self._insert(conn, gallery, model, faces, now)
        return ids

    @staticmethod
    def _locked(conn: Any, gallery: str, model: ModelTag | None) -> None:
        """The gallery's row locked (a concurrent delete waits for this write, and the replicas'
        change log stays in commit order); NotFound or ModelMismatch otherwise."""
        row = replica_codes.lock_gallery(conn, gallery)
        if row is None:
            raise Conflict(f"gallery {gallery!r} was deleted while faces were being added; retry")
        if model is not None and ModelTag(*row) != model:
            raise ModelMismatch(mismatch_message(gallery, ModelTag(*row), model))

    @staticmethod
    def _insert(
        conn: Any, gallery: str, model: ModelTag, faces: list[tuple[str, NewFace]], now: float
    ) -> list[int]:
        """Faces and their crops, in the caller's transaction after `_locked`; their ids."""
        from psycopg.types.json import Jsonb

        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO facerest_faces "
                "(gallery, subject, embedding, image_hash, bbox, prob, model, added_at, quality, source) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                [
                    (
                        gallery,
                        subject,
                        np.asarray(face.embedding, np.float32),
                        face.image_hash,
                        _floats(face.bbox),
                        face.prob,
                        model.name,
                        now,
                        face.quality,
                        face.source,
                    )
                    for subject, face in faces
                ],
                returning=True,
            )
            ids = []
            while True:
                ids.append(int(cur.fetchone()[0]))  # type: ignore[index]
                if not cur.nextset():
                    break
            crops = [
                (face_id, face.crop.jpeg, face.crop.width, face.crop.height, Jsonb(face.crop.landmarks))
                for face_id, (_, face) in zip(ids, faces, strict=True)
                if face.crop is not None
            ]
            if crops:
                cur.executemany(
                    "INSERT INTO facerest_face_crops (face_id, jpeg, width, height, landmarks) "
                    "VALUES (%s, %s, %s, %s, %s)",
                    crops,
                )
        replica_codes.log_change(conn, gallery, ids, [])
        return ids

    def subjects(self, gallery: str) -> list[tuple[str, int]]:
        with self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT subject, COUNT(*) FROM facerest_faces WHERE gallery = %s "
                "GROUP BY subject ORDER BY subject",
                (gallery,),
            ).fetchall()
        return [(r[0], int(r[1])) for r in rows]

    def faces(self, gallery: str, subject: str, with_embeddings: bool = False) -> list[StoredFace]:
        vector = "f.embedding" if with_embeddings else "NULL"
        with self._pool.connection() as conn:
            rows = conn.execute(
                f"SELECT {FACE_COLUMNS}, {vector} FROM facerest_faces f "  # type: ignore[arg-type]
                "WHERE f.gallery = %s AND f.subject = %s ORDER BY f.id",
                (gallery, subject),
            ).fetchall()
        return [_stored(r, r[11]) for r in rows]

    def rename_subject(self, gallery: str, subject: str, new_name: str) -> int:
        with self._pool.connection() as conn, conn.transaction():
            # renames of one gallery run one at a time (the exclusive row lock), so the check holds
            conn.execute("SELECT 1 FROM facerest_galleries WHERE name = %s FOR UPDATE", (gallery,))
            taken = conn.execute(
                "SELECT 1 FROM facerest_faces WHERE gallery = %s AND subject = %s LIMIT 1",
                (gallery, new_name),
            ).fetchone()
            moved = checked_rename(
                gallery,
                subject,
                new_name,
                taken is not None,
                lambda: (
                    conn.execute(
                        "UPDATE facerest_faces SET subject = %s WHERE gallery = %s AND subject = %s",
                        (new_name, gallery, subject),
                    ).rowcount
                ),
            )
        return moved

    @_recounts
    def delete_subject(self, gallery: str, subject: str) -> int:
        return len(self._delete(gallery, "subject = %s", subject))

    @_recounts
    def delete_face(self, gallery: str, face_id: int) -> bool:
        return bool(self._delete(gallery, "id = %s", face_id))

    @_recounts
    def delete_faces(self, gallery: str, face_ids: list[int]) -> list[int]:
        return self._delete(gallery, "id = ANY(%s)", list(face_ids)) if face_ids else []

    def _delete(self, gallery: str, which: str, value: object) -> list[int]:
        """Delete the gallery's faces matching `which`; their ids, logged for the other replicas."""
        with self._pool.connection() as conn, conn.transaction():
            if replica_codes.lock_gallery(conn, gallery) is None:
                return []
            gone = [
                int(r[0])
                for r in conn.execute(
                    f"DELETE FROM facerest_faces WHERE gallery = %s AND {which} RETURNING id",  # type: ignore[arg-type]
                    (gallery, value),
                )
            ]
            replica_codes.log_change(conn, gallery, [], gone)
        return gone

    @_recounts
    def delete_gallery(self, gallery: str) -> bool:
        with self._pool.connection() as conn:
            deleted = conn.execute("DELETE FROM facerest_galleries WHERE name = %s", (gallery,)).rowcount
        return bool(deleted)

    def search(
        self, gallery: str, queries: np.ndarray, top_k: int, exact: bool = False, floor: float | None = None
    ) -> list[SearchResult]:
        results = []
        queries = np.asarray(queries, np.float32)
        count = max(self.candidates, 10 * top_k)
        dim = queries.shape[-1]
        with self._pool.connection() as conn, conn.transaction():
            coded = None if exact else self._codes.candidates(conn, gallery, queries, count)
            if coded is None and not exact:
                # the breadth of the graph search (at least the candidates asked for), and, should
                # the gallery filter drop some, the scan goes on in order (pgvector >= 0.8)
                conn.execute(
                    "SELECT set_config('hnsw.ef_search', %s, true), "
                    "set_config('hnsw.iterative_scan', 'strict_order', true)",
                    (str(min(max(self.ef_search, count), 1000)),),
                )
            for i, query in enumerate(queries):
                # <#> is the negative inner product: the cosine of unit vectors, negated
                exact_sql = (
                    "SELECT subject, MAX(-(embedding <#> %(q)s)) AS similarity FROM facerest_faces "
                    "WHERE gallery = %(gallery)s GROUP BY subject ORDER BY similarity DESC, subject "
                    "LIMIT %(k)s"
                )
                nearest_sql = (
                    f"SELECT subject, MAX(similarity) AS best FROM ({candidates_sql(dim)}) AS nearest "
                    "GROUP BY subject ORDER BY best DESC, subject LIMIT %(k)s"
                )
                args = {"q": query, "gallery": gallery, "n": count, "k": top_k}
                if coded is not None:
                    args["ids"] = coded[i].tolist()
                    rows = conn.execute(RERANK_SQL, args).fetchall()
                else:
                    rows = conn.execute(exact_sql if exact else nearest_sql, args).fetchall()  # type: ignore[arg-type]
                if not exact and floor is not None and (not rows or rows[0][1] < floor):
                    rows = conn.execute(exact_sql, args).fetchall()  # type: ignore[arg-type]
                results.append(SearchResult([SubjectMatch(r[0], float(r[1])) for r in rows]))
        return results

    def erase_deleted(self, vacuum: bool = False) -> list[str]:
        """Every facerest table (and its indexes: the HNSW graph holds the vectors too) rewritten
        without the deleted rows (VACUUM FULL: an exclusive lock on each table while it is
        rewritten, searches wait), then a checkpoint, which a superuser or pg_checkpoint member
        may ask for. The old files are emptied when each rewrite commits."""
        import psycopg

        done = []
        with psycopg.connect(self._url, autocommit=True) as conn:
            tables = [
                r[0]
                for r in conn.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
                    "AND tablename LIKE 'facerest\\_%' ORDER BY tablename"
                )
            ]
            for table in tables:
                started = time.perf_counter()
                conn.execute(f"VACUUM FULL {table}")  # type: ignore[arg-type]
                done.append(f"{table} rewritten (VACUUM FULL, {time.perf_counter() - started:.1f} s)")
            try:
                conn.execute("CHECKPOINT")
                done.append("checkpoint")
            except psycopg.errors.InsufficientPrivilege:
                done.append("no checkpoint (needs superuser or pg_checkpoint): old WAL stays until recycled")
        return done

    # --- pages, crops, merge and move (issue 29) ---

    def galleries_page(self, after: str | None, limit: int, q: str | None = None) -> list[GalleryInfo]:
        where, args = [], []
        if after is not None:
            where.append("g.name > %s")
            args.append(after)
        if q:
            where.append("g.name ILIKE %s ESCAPE '\\'")
            args.append(like_pattern(q))
        with self._pool.connection() as conn:
            rows = conn.execute(
                f"SELECT g.name, g.model, g.model_md5, g.dim, ({_INDEX_VALID}) FROM facerest_galleries g "  # type: ignore[arg-type]
                f"{'WHERE ' + ' AND '.join(where) if where else ''} ORDER BY g.name LIMIT %s",
                (*args, limit),
            ).fetchall()
            out = []
            for name, model, md5, dim, valid in rows:
                subjects, faces = self._count(conn, name)
                out.append(
                    GalleryInfo(name, ModelTag(model, md5, dim), subjects, faces, self._state(name, valid))
                )
        return out

    def _count(self, conn: Any, name: str) -> tuple[int, int]:
        """(subjects, faces) of the gallery, kept COUNTS_TTL_S (see `gallery`)."""
        counted = self._counts.get(name)
        if counted is None or time.monotonic() - counted[0] > COUNTS_TTL_S:
            subjects, faces = conn.execute(
                "SELECT COUNT(DISTINCT subject), COUNT(*) FROM facerest_faces WHERE gallery = %s", (name,)
            ).fetchone()
            counted = self._counts[name] = (time.monotonic(), int(subjects), int(faces))
        return counted[1], counted[2]

    def subjects_page(
        self, gallery: str, after: str | None, limit: int, q: str | None = None
    ) -> list[SubjectSummary]:
        # in the column's own collation (the database's), the same for the order and the cursor;
        # the index on (gallery, subject) is walked in order, a page of groups at a time
        where, args = ["gallery = %s", "subject <> %s"], [gallery, UNSORTED]
        if after is not None:
            where.append("subject > %s")
            args.append(after)
        if q:
            where.append("subject ILIKE %s ESCAPE '\\'")
            args.append(like_pattern(q))
        with self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT subject, COUNT(*), "  # type: ignore[arg-type]
                "(array_agg(id ORDER BY cover DESC, quality DESC NULLS LAST, id))[1] "
                f"FROM facerest_faces WHERE {' AND '.join(where)} GROUP BY subject ORDER BY subject LIMIT %s",
                (*args, limit),
            ).fetchall()
        return [SubjectSummary(r[0], int(r[1]), int(r[2])) for r in rows]

    def faces_page(
        self, gallery: str, subject: str, after: int | None, limit: int, q: str | None = None
    ) -> list[StoredFace]:
        where, args = "", [gallery, subject, after or 0]
        if q:
            where, args = " AND f.source ILIKE %s ESCAPE '\\'", [*args, like_pattern(q)]
        with self._pool.connection() as conn:
            rows = conn.execute(
                f"SELECT {FACE_COLUMNS} FROM facerest_faces f WHERE f.gallery = %s AND f.subject = %s "  # type: ignore[arg-type]
                f"AND f.id > %s{where} ORDER BY f.id LIMIT %s",
                (*args, limit),
            ).fetchall()
        return [_stored(r) for r in rows]

    def face(self, gallery: str, face_id: int) -> StoredFace | None:
        with self._pool.connection() as conn:
            row = conn.execute(
                f"SELECT {FACE_COLUMNS} FROM facerest_faces f WHERE f.gallery = %s AND f.id = %s",  # type: ignore[arg-type]
                (gallery, face_id),
            ).fetchone()
        return None if row is None else _stored(row)

    def face_crop(self, gallery: str, face_id: int) -> FaceCrop | None:
        with self._pool.connection() as conn:
            row = conn.execute(
                "SELECT c.jpeg, c.width, c.height, c.landmarks FROM facerest_face_crops c "
                "JOIN facerest_faces f ON f.id = c.face_id WHERE f.gallery = %s AND c.face_id = %s",
                (gallery, face_id),
            ).fetchone()
        return _crop(row)

    @staticmethod
    def _subject_exists(conn: Any, gallery: str, subject: str) -> bool:
        found = conn.execute(
            "SELECT 1 FROM facerest_faces WHERE gallery = %s AND subject = %s LIMIT 1", (gallery, subject)
        )
        return found.fetchone() is not None

    @_recounts
    def merge_subjects(self, gallery: str, subject: str, into: str) -> int:
        with self._pool.connection() as conn, conn.transaction():
            self._locked(conn, gallery, None)
            keep = "cover" if not self._subject_exists(conn, gallery, into) else "false"
            moved = conn.execute(
                f"UPDATE facerest_faces SET subject = %s, cover = {keep} WHERE gallery = %s AND subject = %s",  # type: ignore[arg-type]
                (into, gallery, subject),
            ).rowcount
            if moved == 0:
                raise NotFound(f"no subject {subject!r} in gallery {gallery!r}")
        return int(moved)

    @_recounts
    def move_faces(self, gallery: str, face_ids: list[int], subject: str, require_new: bool = False) -> int:
        ids = sorted(set(face_ids))
        with self._pool.connection() as conn, conn.transaction():
            self._locked(conn, gallery, None)
            if require_new and self._subject_exists(conn, gallery, subject):
                raise Conflict(f"subject {subject!r} already exists in gallery {gallery!r}")
            moved = {
                int(r[0])
                for r in conn.execute(
                    "UPDATE facerest_faces SET subject = %s, cover = false "
                    "WHERE gallery = %s AND id = ANY(%s) RETURNING id",
                    (subject, gallery, ids),
                )
            }
            if missing := [i for i in ids if i not in moved]:
                # raised inside the transaction: the faces that were found are not moved either
                raise NotFound(f"no face {', '.join(map(str, missing[:5]))} in gallery {gallery!r}")
        return len(ids)

    def set_representative(self, gallery: str, subject: str, face_id: int) -> None:
        with self._pool.connection() as conn, conn.transaction():
            self._locked(conn, gallery, None)
            row = conn.execute(
                "SELECT 1 FROM facerest_faces WHERE gallery = %s AND subject = %s AND id = %s",
                (gallery, subject, face_id),
            ).fetchone()
            if row is None:
                raise NotFound(f"no face {face_id} of subject {subject!r} in gallery {gallery!r}")
            conn.execute(
                "UPDATE facerest_faces SET cover = (id = %s) WHERE gallery = %s AND subject = %s",
                (face_id, gallery, subject),
            )

    # --- the review queue (issue 29) ---

    def add_review(
        self, gallery: str, item: NewReviewItem, group_threshold: float, bounds: ReviewBounds
    ) -> int | None:
        from psycopg.types.json import Jsonb

        now = time.time()
        dedupe = review_dedupe(item)
        with self._pool.connection() as conn, conn.transaction():
            # the gallery's row locked: items of one gallery are grouped one at a time
            if replica_codes.lock_gallery(conn, gallery) is None:
                return None
            conn.execute(
                "DELETE FROM facerest_review_items WHERE gallery = %s AND created_at < %s",
                (gallery, now - bounds.max_age_s),
            )
            if (
                dedupe is not None
                and conn.execute(
                    "SELECT 1 FROM facerest_review_items WHERE gallery = %s AND dedupe = %s",
                    (gallery, dedupe),
                ).fetchone()
            ):
                return None
            rows = conn.execute(
                "SELECT grp, embedding, image_hash FROM facerest_review_items WHERE gallery = %s", (gallery,)
            ).fetchall()
            vectors = (
                np.stack([np.asarray(r[1].to_numpy(), np.float32) for r in rows])
                if rows
                else np.zeros((0, len(item.embedding)), np.float32)
            )
            groups = np.array([int(r[0]) for r in rows], np.int64)
            group = review_group(vectors, groups, [r[2] for r in rows], item, group_threshold)
            crop = item.crop
            [review_id] = conn.execute(
                "INSERT INTO facerest_review_items (gallery, grp, embedding, jpeg, width, height, landmarks, "
                "image_hash, bbox, prob, quality, source, ref, created_at, candidates, names, dedupe) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                (
                    gallery,
                    -1 if group is None else group,
                    np.asarray(item.embedding, np.float32),
                    None if crop is None else crop.jpeg,
                    None if crop is None else crop.width,
                    None if crop is None else crop.height,
                    None if crop is None else Jsonb(crop.landmarks),
                    item.image_hash,
                    _floats(item.bbox),
                    item.prob,
                    item.quality,
                    item.source,
                    item.ref,
                    now,
                    Jsonb([[s, round(float(v), 6)] for s, v in item.candidates]),
                    "\n".join(s for s, _ in item.candidates),
                    dedupe,
                ),
            ).fetchone()  # type: ignore[misc]
            if group is None:
                conn.execute("UPDATE facerest_review_items SET grp = id WHERE id = %s", (review_id,))
            conn.execute(
                "DELETE FROM facerest_review_items WHERE id IN (SELECT id FROM facerest_review_items "
                "WHERE gallery = %s ORDER BY id DESC OFFSET %s)",
                (gallery, bounds.max_items),
            )
        return int(review_id)

    def review_page(
        self, gallery: str, after: tuple[int, int] | None, limit: int, q: str | None, max_age_s: float
    ) -> list[ReviewItem]:
        group, last = after or (-1, -1)
        where, args = "", [gallery, time.time() - max_age_s, group, last]
        if q:
            where, args = " AND names ILIKE %s ESCAPE '\\'", [*args, like_pattern(q)]
        with self._pool.connection() as conn:
            rows = conn.execute(
                f"SELECT {REVIEW_COLUMNS} FROM facerest_review_items WHERE gallery = %s AND created_at >= %s "  # type: ignore[arg-type]
                f"AND (grp, id) > (%s, %s){where} ORDER BY grp, id LIMIT %s",
                (*args, limit),
            ).fetchall()
        return [_review(r) for r in rows]

    def review_items(self, gallery: str, ids: list[int], with_embeddings: bool = False) -> list[ReviewItem]:
        vector = "embedding" if with_embeddings else "NULL"
        with self._pool.connection() as conn:
            rows = conn.execute(
                f"SELECT {REVIEW_COLUMNS}, {vector} FROM facerest_review_items "  # type: ignore[arg-type]
                "WHERE gallery = %s AND id = ANY(%s) ORDER BY id",
                (gallery, list(ids)),
            ).fetchall()
        return [_review(r, r[12]) for r in rows]

    def review_crop(self, gallery: str, review_id: int) -> FaceCrop | None:
        with self._pool.connection() as conn:
            row = conn.execute(
                "SELECT jpeg, width, height, landmarks FROM facerest_review_items "
                "WHERE gallery = %s AND id = %s",
                (gallery, review_id),
            ).fetchone()
        return _crop(row)

    def exclude_review(self, gallery: str, ids: list[int], subject: str) -> int:
        with self._pool.connection() as conn, conn.transaction():
            return int(
                conn.execute(
                    "UPDATE facerest_review_items SET excluded = array_append(excluded, %s) "
                    "WHERE gallery = %s AND id = ANY(%s) AND NOT (%s = ANY(excluded))",
                    (subject, gallery, list(ids), subject),
                ).rowcount
            )

    def delete_review(self, gallery: str, ids: list[int]) -> int:
        with self._pool.connection() as conn, conn.transaction():
            return int(
                conn.execute(
                    "DELETE FROM facerest_review_items WHERE gallery = %s AND id = ANY(%s)",
                    (gallery, list(ids)),
                ).rowcount
            )

    def expire_review(self, older_than: float) -> dict[str, int]:
        with self._pool.connection() as conn, conn.transaction():
            rows = conn.execute(
                "WITH gone AS (DELETE FROM facerest_review_items WHERE created_at < %s RETURNING gallery) "
                "SELECT gallery, COUNT(*) FROM gone GROUP BY gallery",
                (older_than,),
            ).fetchall()
        return {r[0]: int(r[1]) for r in rows}

    def forget_review_subject(self, gallery: str, subject: str, same_above: float | None) -> tuple[int, int]:
        from psycopg.types.json import Jsonb

        deleted = changed = 0
        with self._pool.connection() as conn, conn.transaction():
            # `names` holds the candidates' names, one a line
            rows = conn.execute(
                "SELECT id, candidates, excluded FROM facerest_review_items WHERE gallery = %s "
                "AND (%s = ANY(string_to_array(names, E'\\n')) OR %s = ANY(excluded)) FOR UPDATE",
                (gallery, subject, subject),
            ).fetchall()
            for review_id, candidates, excluded in rows:
                scores = [float(v) for name, v in candidates if name == subject]
                if scores and (same_above is None or max(scores) >= same_above):
                    conn.execute("DELETE FROM facerest_review_items WHERE id = %s", (review_id,))
                    deleted += 1
                    continue
                kept = [[name, v] for name, v in candidates if name != subject]
                conn.execute(
                    "UPDATE facerest_review_items SET candidates = %s, names = %s, excluded = %s "
                    "WHERE id = %s",
                    (
                        Jsonb(kept),
                        "\n".join(name for name, _ in kept),
                        [n for n in excluded if n != subject],
                        review_id,
                    ),
                )
                changed += 1
        return deleted, changed

    @_recounts
    def assign_review(
        self, gallery: str, ids: list[int], subject: str, model: ModelTag, require_new: bool = False
    ) -> list[int]:
        wanted = list(dict.fromkeys(ids))
        with self._pool.connection() as conn, conn.transaction():
            row = replica_codes.lock_gallery(conn, gallery)
            if row is None:
                raise NotFound(f"no gallery {gallery!r}")
            if ModelTag(*row) != model:
                raise ModelMismatch(mismatch_message(gallery, ModelTag(*row), model))
            if require_new and self._subject_exists(conn, gallery, subject):
                raise Conflict(f"subject {subject!r} already exists in gallery {gallery!r}")
            rows = {
                int(r[0]): r
                for r in conn.execute(
                    "DELETE FROM facerest_review_items WHERE gallery = %s AND id = ANY(%s) "
                    "RETURNING id, embedding, jpeg, width, height, landmarks, image_hash, bbox, prob, "
                    "quality, source",
                    (gallery, wanted),
                )
            }
            if missing := [i for i in wanted if i not in rows]:
                raise NotFound(f"no review item {', '.join(map(str, missing[:5]))} in gallery {gallery!r}")
            faces = [
                NewFace(
                    np.asarray(r[1].to_numpy(), np.float32),
                    r[6],
                    None if r[7] is None else [float(v) for v in r[7]],
                    r[8],
                    _crop(r[2:6]),
                    r[9],
                    r[10],
                )
                for r in (rows[i] for i in wanted)
            ]
            self._ensure_index(model.dim)
            return self._insert(conn, gallery, model, [(subject, f) for f in faces], time.time())

    # --- re-embedding: a gallery moving to another recognizer (issue 32) ---

    @staticmethod
    def _job(conn: Any, gallery: str, lock: bool = False) -> ReembedJob | None:
        r = conn.execute(
            f"SELECT {REEMBED_COLUMNS} FROM facerest_reembeds WHERE gallery = %s"  # type: ignore[arg-type]
            + (" FOR UPDATE" if lock else ""),
            (gallery,),
        ).fetchone()
        if r is None:
            return None
        return ReembedJob.from_row(r, missing=[int(i) for i in r[18]])

    @staticmethod
    def _missing(conn: Any, gallery: str, pending_only: bool) -> tuple[list[int], int]:
        """(the first MISSING_LISTED, the number of) faces without a crop to align from; with
        `pending_only`, of those also without a new embedding."""
        pending = " AND f.next_embedding IS NULL" if pending_only else ""
        ids = [
            int(r[0])
            for r in conn.execute(
                "SELECT f.id FROM facerest_faces f LEFT JOIN facerest_face_crops c ON c.face_id = f.id "  # type: ignore[arg-type]
                f"WHERE f.gallery = %s AND (c.face_id IS NULL OR NOT ({USABLE_CROP})){pending} ORDER BY f.id",
                (gallery,),
            )
        ]
        return ids[:MISSING_LISTED], len(ids)

    @staticmethod
    def _owned(conn: Any, gallery: str, owner: str) -> ReembedJob:
        """The running job, locked to the commit; Conflict when it is not `owner`'s."""
        job = PostgresStore._job(conn, gallery, lock=True)
        if job is None or job.state != "running" or job.owner != owner:
            raise NotOwner(f"the move of gallery {gallery!r} was cancelled or taken up by another runner")
        return job

    def reembed_begin(self, job: ReembedJob, owner: str, lease_s: float) -> ReembedJob:
        gallery, now = job.gallery, time.time()
        with self._pool.connection() as conn, conn.transaction():
            row = replica_codes.lock_gallery(conn, gallery)
            if row is None:
                raise NotFound(f"no gallery {gallery!r}")
            existing = self._job(conn, gallery, lock=True)
            if reembed_takes_up(existing, job, owner, lease_s, now):
                conn.execute(
                    "UPDATE facerest_reembeds SET owner = %s, updated_at = %s, state = 'running', "
                    "error = NULL, drop_missing = %s WHERE gallery = %s",
                    (owner, now, job.drop_missing, gallery),
                )
                return self._job(conn, gallery)  # type: ignore[return-value]
            if ModelTag(*row) != job.source:
                raise ModelMismatch(mismatch_message(gallery, ModelTag(*row), job.source))
            if job.into is not None:
                taken = conn.execute(
                    "SELECT 1 FROM facerest_galleries WHERE name = %s UNION ALL SELECT 1 FROM "
                    "facerest_reembeds WHERE into_gallery = %s AND state <> 'done'",
                    (job.into, job.into),
                ).fetchone()
                if taken:
                    raise Conflict(f"gallery {job.into!r} already exists (or is being made)")
            missing, count = self._missing(conn, gallery, pending_only=False)
            if count and job.into is None and not job.drop_missing:
                raise Conflict(missing_crops(gallery, missing, count))
            for table in ("facerest_faces", "facerest_review_items"):
                conn.execute(
                    f"UPDATE {table} SET next_embedding = NULL "  # type: ignore[arg-type]
                    "WHERE gallery = %s AND next_embedding IS NOT NULL",
                    (gallery,),
                )
            [review] = conn.execute(
                f"SELECT COUNT(*) FROM facerest_review_items WHERE gallery = %s AND {REVIEW_CROP}",  # type: ignore[arg-type]
                (gallery,),
            ).fetchone()  # type: ignore[misc]
            conn.execute("DELETE FROM facerest_reembeds WHERE gallery = %s", (gallery,))
            conn.execute(
                f"INSERT INTO facerest_reembeds ({REEMBED_COLUMNS}) VALUES ({', '.join(['%s'] * 23)})",  # type: ignore[arg-type]
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
                    job.drop_missing,
                    "running",
                    owner,
                    now,
                    now,
                    None,
                    None,
                    0,
                    0,
                    missing,
                    count,
                    0 if job.into is not None else int(review),
                    0,
                    0,
                ),
            )
            return self._job(conn, gallery)  # type: ignore[return-value]

    def reembed_job(self, gallery: str) -> ReembedJob | None:
        with self._pool.connection() as conn:
            job = self._job(conn, gallery)
            if job is not None and job.state != "done":
                job.faces = self._count(conn, gallery)[1]
                job.done = min(job.done, job.faces)
        return job

    def reembed_running(self) -> list[str]:
        with self._pool.connection() as conn:
            return [
                r[0] for r in conn.execute("SELECT gallery FROM facerest_reembeds WHERE state = 'running'")
            ]

    def reembed_todo(self, gallery: str, review: bool, after: int, limit: int) -> list[tuple[int, FaceCrop]]:
        if review:
            sql = (
                "SELECT id, jpeg, width, height, landmarks FROM facerest_review_items WHERE gallery = %s "
                f"AND id > %s AND next_embedding IS NULL AND {REVIEW_CROP} ORDER BY id LIMIT %s"
            )
        else:
            sql = (
                "SELECT f.id, c.jpeg, c.width, c.height, c.landmarks FROM facerest_faces f "
                "JOIN facerest_face_crops c ON c.face_id = f.id WHERE f.gallery = %s AND f.id > %s "
                f"AND f.next_embedding IS NULL AND {USABLE_CROP} ORDER BY f.id LIMIT %s"
            )
        with self._pool.connection() as conn:
            rows = conn.execute(sql, (gallery, after, limit)).fetchall()  # type: ignore[arg-type]
        return [(int(r[0]), _crop(r[1:5])) for r in rows]  # type: ignore[misc]

    def reembed_put(
        self, gallery: str, owner: str, review: bool, ids: list[int], vectors: np.ndarray
    ) -> None:
        table, counter = ("facerest_review_items", "review_done") if review else ("facerest_faces", "done")
        vectors = np.asarray(vectors, np.float32)
        with self._pool.connection() as conn, conn.transaction():
            job = self._owned(conn, gallery, owner)
            if vectors.shape[1] != job.target.dim:
                raise ModelMismatch(
                    f"{job.target.name} gave {vectors.shape[1]} values; the move expects {job.target.dim}"
                )
            written = 0
            for face_id, vector in zip(ids, vectors, strict=True):
                written += conn.execute(
                    f"UPDATE {table} SET next_embedding = %s WHERE gallery = %s AND id = %s",  # type: ignore[arg-type]
                    (vector, gallery, face_id),
                ).rowcount
            conn.execute(
                f"UPDATE facerest_reembeds SET updated_at = %s, {counter} = {counter} + %s "  # type: ignore[arg-type]
                "WHERE gallery = %s",
                (time.time(), written, gallery),
            )

    @_recounts
    def reembed_finish(self, gallery: str, owner: str) -> ReembedJob | None:
        now = time.time()
        with self._pool.connection() as conn, conn.transaction():
            # the gallery's row first (as every writer), then the job's
            row = replica_codes.lock_gallery(conn, gallery)
            job = self._owned(conn, gallery, owner)
            [left] = conn.execute(
                "SELECT COUNT(*) FROM facerest_faces f JOIN facerest_face_crops c ON c.face_id = f.id "  # type: ignore[arg-type]
                f"WHERE f.gallery = %s AND f.next_embedding IS NULL AND {USABLE_CROP}",
                (gallery,),
            ).fetchone()  # type: ignore[misc]
            if job.into is None:
                left += conn.execute(
                    "SELECT COUNT(*) FROM facerest_review_items WHERE gallery = %s "  # type: ignore[arg-type]
                    f"AND next_embedding IS NULL AND {REVIEW_CROP}",
                    (gallery,),
                ).fetchone()[0]  # type: ignore[index]
            if left:
                return None
            if row is None or ModelTag(*row) != job.source:
                raise ModelMismatch(f"gallery {gallery!r} is no longer built with {job.source.name}")
            missing, count = self._missing(conn, gallery, pending_only=True)
            moved, dropped = 0, 0
            if job.into is None:
                if count and not job.drop_missing:
                    raise Conflict(missing_crops(gallery, missing, count))
                conn.execute(
                    "DELETE FROM facerest_faces WHERE gallery = %s AND next_embedding IS NULL", (gallery,)
                )
                moved = conn.execute(
                    "UPDATE facerest_faces SET embedding = next_embedding, next_embedding = NULL, model = %s "
                    "WHERE gallery = %s",
                    (job.target.name, gallery),
                ).rowcount
                dropped = conn.execute(
                    "DELETE FROM facerest_review_items WHERE gallery = %s AND next_embedding IS NULL",
                    (gallery,),
                ).rowcount
                conn.execute(
                    "UPDATE facerest_review_items SET embedding = next_embedding, next_embedding = NULL "
                    "WHERE gallery = %s",
                    (gallery,),
                )
                # a new created_at: every replica loads the gallery's codes again (same ids, new vectors)
                conn.execute(
                    "UPDATE facerest_galleries SET model = %s, model_md5 = %s, dim = %s, created_at = %s "
                    "WHERE name = %s",
                    (job.target.name, job.target.md5, job.target.dim, now, gallery),
                )
            else:
                made = conn.execute(
                    "INSERT INTO facerest_galleries (name, model, model_md5, dim, created_at) "
                    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (name) DO NOTHING RETURNING name",
                    (job.into, job.target.name, job.target.md5, job.target.dim, now),
                ).fetchone()
                if made is None:
                    raise Conflict(
                        f"gallery {job.into!r} was made meanwhile; the move cannot be done into it"
                    )
                old = [
                    int(r[0])
                    for r in conn.execute(
                        "SELECT id FROM facerest_faces WHERE gallery = %s AND next_embedding IS NOT NULL "
                        "ORDER BY id",
                        (gallery,),
                    )
                ]
                new = sorted(
                    int(r[0])
                    for r in conn.execute(
                        "SELECT nextval(pg_get_serial_sequence('facerest_faces', 'id')) "
                        "FROM generate_series(1, %s)",
                        (len(old),),
                    )
                )
                mapping = {"old": old, "new": new, "into": job.into, "model": job.target.name}
                # each face and its crop copied inside the database, in the order they came
                conn.execute(
                    "INSERT INTO facerest_faces (id, gallery, subject, embedding, image_hash, bbox, prob, "
                    "model, added_at, quality, source, cover) SELECT m.new_id, %(into)s, f.subject, "
                    "f.next_embedding, f.image_hash, f.bbox, f.prob, %(model)s, f.added_at, f.quality, "
                    "f.source, f.cover FROM unnest(%(old)s::bigint[], %(new)s::bigint[]) "
                    "AS m(old_id, new_id) JOIN facerest_faces f ON f.id = m.old_id",
                    mapping,
                )
                conn.execute(
                    "INSERT INTO facerest_face_crops (face_id, jpeg, width, height, landmarks) "
                    "SELECT m.new_id, c.jpeg, c.width, c.height, c.landmarks "
                    "FROM unnest(%(old)s::bigint[], %(new)s::bigint[]) AS m(old_id, new_id) "
                    "JOIN facerest_face_crops c ON c.face_id = m.old_id",
                    mapping,
                )
                replica_codes.log_change(conn, job.into, new, [])
                moved = len(old)
                conn.execute(
                    "UPDATE facerest_faces SET next_embedding = NULL "
                    "WHERE gallery = %s AND next_embedding IS NOT NULL",
                    (gallery,),
                )
            conn.execute(
                "UPDATE facerest_reembeds SET state = 'done', owner = NULL, updated_at = %s, "
                "finished_at = %s, faces = %s, done = %s, missing = %s, missing_count = %s, "
                "review_dropped = %s WHERE gallery = %s",
                (now, now, moved, moved, missing, count, dropped, gallery),
            )
            done = self._job(conn, gallery)
        self._counts.pop(job.into or gallery, None)
        self._ensure_index(job.target.dim)
        return done

    def reembed_end(self, gallery: str, owner: str | None, error: str | None) -> bool:
        with self._pool.connection() as conn, conn.transaction():
            job = self._job(conn, gallery, lock=True)
            if job is None or job.state != "running" or owner not in (None, job.owner):
                return False
            conn.execute(
                "UPDATE facerest_reembeds SET owner = NULL, state = %s, error = %s, updated_at = %s "
                "WHERE gallery = %s",
                ("failed" if error else "running", error, time.time(), gallery),
            )
        return True

    def reembed_cancel(self, gallery: str) -> bool:
        with self._pool.connection() as conn, conn.transaction():
            job = self._job(conn, gallery, lock=True)
            if job is None or job.state == "done":
                return False
            for table in ("facerest_faces", "facerest_review_items"):
                conn.execute(
                    f"UPDATE {table} SET next_embedding = NULL "  # type: ignore[arg-type]
                    "WHERE gallery = %s AND next_embedding IS NOT NULL",
                    (gallery,),
                )
            conn.execute("DELETE FROM facerest_reembeds WHERE gallery = %s", (gallery,))
        return True

    def wait_for_indexes(self, timeout_s: float | None = None) -> bool:
        """Block until no gallery's codes are loading (tests, benchmarks); False when still loading."""
        return self._codes.wait(timeout_s)

    def close(self) -> None:
        self._closed.set()
        self._codes.close()
        self._pool.close()
