"""The approximate index changes nothing a user can see: same identities, deletes and renames at once.

Both backends with the index forced on from the first face (IndexOptions(min_faces=1); the
PostgreSQL HNSW index is awaited, and PostgreSQL is tested through the replica's codes and through
HNSW alone): the shared photos' real embeddings among synthetic
distractors, rank-1 equal to the exact scan's (1.000), no left-out identity above the threshold;
and the SQLite index's own life: saved, reused, caught up when stale, rebuilt when damaged.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest
from gallery_pg import postgres_url
from test_gallery import SETS, calibrated_threshold, embeddings, identities

from facerest.gallery import open_store
from facerest.gallery.index import IndexOptions
from facerest.gallery.postgres import PostgresStore, candidates_sql, index_name
from facerest.gallery.sqlite import SQLiteStore
from facerest.gallery.store import GalleryStore, ModelTag, NewFace

__all__ = ["embeddings"]  # the fixture, shared with test_gallery

MODEL = ModelTag("w600k_mbf", "c5b029527cb6f874e057613fc10bae1b", 512)
DISTRACTORS = 3000
FORCED = IndexOptions(min_faces=1)
HNSW_ONLY = IndexOptions(min_faces=1, pg_codes=False)


def unit(rng: np.random.Generator, n: int, dim: int = 512) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def wait_for_pg_index(store: PostgresStore, dim: int = 512, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    # autocommit: an open transaction's snapshot would make CREATE INDEX CONCURRENTLY wait for it
    with psycopg.connect(store._url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "WHERE c.relname = %s",
                (index_name(dim),),
            ).fetchone()
            if row is not None and row[0]:
                return
            time.sleep(0.2)
    raise AssertionError("the HNSW index was not built in time")


def pg_plan(store: PostgresStore, gallery: str) -> str:
    """EXPLAIN of the candidate query (the query vector shown as '...')."""
    with store._pool.connection() as conn:
        conn.execute("ANALYZE facerest_faces")
        rows = conn.execute(
            "EXPLAIN " + candidates_sql(512),  # type: ignore[operator]
            {"q": np.ones(512, np.float32) / np.sqrt(512), "gallery": gallery, "n": 100},
        ).fetchall()
    return re.sub(r"'\[[^']*\]'", "'...'", "\n".join(r[0] for r in rows))


def indexed(store: GalleryStore, gallery: str, planned: bool = True) -> None:
    """Make sure the index exists; with `planned`, that PostgreSQL's planner serves searches from it
    (for small galleries it rightly scans the gallery's rows instead)."""
    if isinstance(store, PostgresStore):
        wait_for_pg_index(store)
        plan = pg_plan(store, gallery)
        if planned:
            assert f"Index Scan using {index_name(512)}" in plan, plan
        if store._codes.enabled:  # the replica's codes: the first search starts their load
            store.search(gallery, unit(np.random.default_rng(0), 1), 1)
            assert store.wait_for_indexes(timeout_s=60)
            assert store.gallery(gallery).index == "codes"  # type: ignore[union-attr]
    else:
        assert isinstance(store, SQLiteStore) and gallery in store._indexes, "no index was built"


@pytest.fixture(params=["sqlite", "postgresql", "postgresql-hnsw"])
def forced_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[GalleryStore]:
    """SQLite's codes; PostgreSQL through the replica's codes; PostgreSQL through pgvector's HNSW
    index alone (what answers while a replica loads)."""
    url = f"sqlite:///{tmp_path / 'gallery.db'}" if request.param == "sqlite" else postgres_url()
    store = open_store(url, FORCED if request.param != "postgresql-hnsw" else HNSW_ONLY)
    yield store
    store.close()


def test_identification_through_the_index_equals_exact(forced_store: GalleryStore, embeddings) -> None:  # type: ignore[no-untyped-def]
    store = forced_store
    threshold = calibrated_threshold()
    rng = np.random.default_rng(16)
    for set_name in SETS:
        _, people = identities(set_name)
        vectors = embeddings[set_name]
        reference: dict[str, str] = {}
        for img, who in people:
            reference.setdefault(who, img)
        probes = [(img, who) for img, who in people if reference[who] != img]
        gallery = f"index-{set_name}"
        noise = unit(rng, DISTRACTORS)
        for start in range(0, DISTRACTORS, 3):
            store.add_faces(
                gallery, f"distractor-{start}", MODEL, [NewFace(v) for v in noise[start : start + 3]]
            )
        for who, img in reference.items():
            store.add_faces(gallery, who, MODEL, [NewFace(vectors[img])])
        indexed(store, gallery)
        queries = np.stack([vectors[img] for img, _ in probes])
        approximate = store.search(gallery, queries, 5)
        exact = store.search(gallery, queries, 5, exact=True)
        rank1 = np.mean(
            [r.matches[0].subject == who for r, (_, who) in zip(approximate, probes, strict=True)]
        )
        rank1_exact = np.mean(
            [r.matches[0].subject == who for r, (_, who) in zip(exact, probes, strict=True)]
        )
        for a, e in zip(approximate, exact, strict=True):
            assert a.matches[0].subject == e.matches[0].subject
            assert a.matches[0].similarity == pytest.approx(e.matches[0].similarity, abs=1e-5)
        # each identity left out in turn (deleted: the index must drop it at once)
        worst = -1.0
        for who, img in reference.items():
            assert store.delete_subject(gallery, who) == 1
            mine = [vectors[i] for i, person in probes if person == who]
            if mine:
                for result in store.search(gallery, np.stack(mine), 5):
                    assert all(m.subject != who for m in result.matches)
                    worst = max(worst, result.matches[0].similarity)
                    assert result.matches[0].similarity < threshold, (who, result.matches[0])
            store.add_faces(gallery, who, MODEL, [NewFace(vectors[img])])
        print(
            f"\n{type(store).__name__} {set_name}: {len(reference)} identities + {DISTRACTORS} distractors, "
            f"{len(probes)} probes: rank-1 {rank1:.3f} via the index, {rank1_exact:.3f} exact; "
            f"left-out identities: highest similarity {worst:.3f} < {threshold}"
        )
        assert rank1 == rank1_exact == 1.0


def test_renames_and_deletes_take_effect_at_once(forced_store: GalleryStore) -> None:
    store = forced_store
    rng = np.random.default_rng(3)
    faces = unit(rng, 600)
    for s in range(200):
        store.add_faces("g", f"s{s}", MODEL, [NewFace(v) for v in faces[3 * s : 3 * s + 3]])
    indexed(store, "g", planned=False)
    probe = faces[30:31]  # subject s10's first face
    assert store.search("g", probe, 1)[0].matches[0].subject == "s10"
    store.rename_subject("g", "s10", "renamed")
    assert store.search("g", probe, 1)[0].matches[0].subject == "renamed"
    face = store.faces("g", "renamed")[0]
    assert store.delete_face("g", face.face_id)
    hit = store.search("g", probe, 1)[0].matches[0]
    assert hit.similarity < 0.5  # the face itself (similarity 1) is gone; its two siblings are random
    store.delete_subject("g", "renamed")
    assert all(m.subject != "renamed" for m in store.search("g", probe, 10)[0].matches)


def test_top_k_and_exact_over_http_limits(forced_store: GalleryStore) -> None:
    """Many subjects asked for: the index answers as many as exact does, in the same order."""
    store = forced_store
    faces = unit(np.random.default_rng(5), 400)
    for s in range(400):
        store.add_faces("k", f"s{s}", MODEL, [NewFace(faces[s])])
    indexed(store, "k", planned=False)
    query = faces[7:8]
    approximate = store.search("k", query, 100)[0].matches
    exact = store.search("k", query, 100, exact=True)[0].matches
    assert len(approximate) == len(exact) == 100
    assert approximate[0].subject == "s7"
    overlap = len({m.subject for m in approximate} & {m.subject for m in exact})
    print(f"\n{type(store).__name__}: top-100 overlap with exact {overlap}/100")
    assert overlap >= 90


def test_sqlite_index_is_reused_caught_up_and_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "gallery.db"
    faces = unit(np.random.default_rng(7), 900)
    store = SQLiteStore(path, FORCED)
    for s in range(300):
        store.add_faces("g", f"s{s}", MODEL, [NewFace(v) for v in faces[3 * s : 3 * s + 3]])
    store.close()
    [index_file] = (tmp_path / "gallery.db-index").glob("*.codes")
    saved = index_file.stat().st_mtime_ns

    # stale: faces added by a process that kept no index
    plain = SQLiteStore(path, IndexOptions(min_faces=0))
    plain.add_faces("g", "late", MODEL, [NewFace(faces[0] * -1)])
    plain.close()
    assert index_file.stat().st_mtime_ns == saved
    store = SQLiteStore(path, FORCED)
    assert len(store._indexes["g"]) == 900 + 1
    assert store.search("g", -faces[:1], 1)[0].matches[0].subject == "late"
    store.close()

    # faces deleted by a process that kept no index: the file holding their codes goes with them
    # (issue 30: erasure leaves no byte), and the next start builds it anew
    plain = SQLiteStore(path, IndexOptions(min_faces=0))
    plain.delete_subject("g", "s5")
    plain.close()
    assert not index_file.exists()
    store = SQLiteStore(path, FORCED)
    assert len(store._indexes["g"]) == 900 - 3 + 1
    assert all(m.subject != "s5" for m in store.search("g", faces[15:16], 5)[0].matches)
    store.close()

    # damaged: garbage in place of the index -> rebuilt from SQLite, same answers
    index_file.write_bytes(b"\0garbage" * 1000)
    store = SQLiteStore(path, FORCED)
    assert len(store._indexes["g"]) == 898
    assert store.search("g", faces[30:31], 1)[0].matches[0].subject == "s10"
    store.close()

    # truncated (a crash mid-copy elsewhere): the description no longer matches -> rebuilt
    data = index_file.read_bytes()
    index_file.write_bytes(data[: len(data) // 2])
    store = SQLiteStore(path, FORCED)
    assert store.search("g", faces[30:31], 1)[0].matches[0].subject == "s10"
    store.close()
    assert not list((tmp_path / "gallery.db-index").glob("*.tmp"))


def test_small_galleries_are_scanned(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "gallery.db", IndexOptions(min_faces=50))
    faces = unit(np.random.default_rng(9), 60)
    for s in range(49):
        store.add_faces("g", f"s{s}", MODEL, [NewFace(faces[s])])
    assert not store._indexes
    store.add_faces("g", "s49", MODEL, [NewFace(faces[49])])
    assert "g" in store._indexes and len(store._indexes["g"]) == 50
    store.close()


def test_a_face_the_index_leaves_unnamed_is_searched_exactly(forced_store: GalleryStore) -> None:
    """`floor`: below it the approximate answer is replaced by the exact one (the service passes
    its threshold), here forced for every query by a floor no similarity reaches."""
    store = forced_store
    faces = unit(np.random.default_rng(11), 300)
    for s in range(300):
        store.add_faces("f", f"s{s}", MODEL, [NewFace(faces[s])])
    indexed(store, "f", planned=False)
    queries = unit(np.random.default_rng(12), 20)  # nobody enrolled: nothing near
    exact = store.search("f", queries, 100, exact=True)
    floored = store.search("f", queries, 100, floor=1.01)
    assert [[m.subject for m in r.matches] for r in floored] == [
        [m.subject for m in r.matches] for r in exact
    ]


def test_a_large_gallery_is_indexed_in_the_background(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Large galleries are indexed by a background thread: searches scan exactly meanwhile, and
    the writes made during the build are in the index it puts in use."""
    from facerest.gallery import index as index_module

    monkeypatch.setattr(index_module, "BUILD_CHUNK", 100)  # many chunks: writes land mid-build
    path = tmp_path / "gallery.db"
    faces = unit(np.random.default_rng(13), 2400)
    plain = SQLiteStore(path, IndexOptions(min_faces=0))
    for s in range(1999):
        plain.add_faces("g", f"s{s}", MODEL, [NewFace(faces[s])])
    plain.close()
    store = SQLiteStore(path, IndexOptions(min_faces=2000, background_from=1))
    assert not store._indexes and not store.indexing("g")
    with store._lock:  # the builder cannot read a vector while we hold the lock
        store.add_faces("g", "s1999", MODEL, [NewFace(faces[1999])])
        assert store.indexing("g") and "g" not in store._indexes
        assert store.gallery("g").index == "building"  # type: ignore[union-attr]
        answer = store.search("g", faces[5:6], 3)[0].matches
        assert [m.subject for m in answer] == [
            m.subject for m in store.search("g", faces[5:6], 3, exact=True)[0].matches
        ]
        assert answer[0].subject == "s5"
    for s in range(2000, 2400):  # while the builder runs
        store.add_faces("g", f"s{s}", MODEL, [NewFace(faces[s])])
        if s % 4 == 0:
            store.delete_subject("g", f"s{s - 2000}")
    assert store.wait_for_indexes(timeout_s=120)
    info = store.gallery("g")
    assert info is not None and (info.index, info.faces, info.subjects) == ("codes", 2300, 2300)
    index = store._indexes["g"]
    matrix = store._matrices["g"]
    assert sorted(index.keys().tolist()) == sorted(matrix.ids[: matrix.count].tolist())
    assert store.search("g", faces[2399:2400], 1)[0].matches[0].subject == "s2399"
    assert store.search("g", faces[0:1], 1)[0].matches[0].subject != "s0"  # deleted mid-build
    store.close()
    reopened = SQLiteStore(path, IndexOptions(min_faces=2000, background_from=1))
    assert reopened.wait_for_indexes(timeout_s=120)
    assert len(reopened._indexes["g"]) == 2400 - 100
    reopened.close()


def test_postgresql_replicas_search_their_codes_in_step_with_each_other() -> None:
    """Two replicas on one database, each searching its own codes: the other's enrolments,
    deletions, renames and a gallery made again are in the next answer, and what the codes
    propose is re-ranked by the rows that exist."""
    url = postgres_url()
    first, second = PostgresStore(url, FORCED), PostgresStore(url, FORCED)
    try:
        faces = unit(np.random.default_rng(21), 600)
        for s in range(200):
            first.add_faces("g", f"s{s}", MODEL, [NewFace(v) for v in faces[3 * s : 3 * s + 3]])
        assert second.search("g", faces[:1], 1)[0].matches[0].subject == "s0"  # starts the load
        assert second.wait_for_indexes(timeout_s=60)
        assert second.gallery("g").index == "codes"  # type: ignore[union-attr]
        loaded = second._codes._loaded["g"]
        assert len(loaded.index) == 600

        late = unit(np.random.default_rng(22), 1)
        first.add_faces("g", "late", MODEL, [NewFace(late[0])])
        assert second.search("g", late, 1)[0].matches[0].subject == "late"
        assert len(loaded.index) == 601 and second._codes._loaded["g"] is loaded  # caught up

        first.delete_subject("g", "s5")
        first.delete_face("g", first.faces("g", "s6")[0].face_id)
        answer = second.search("g", faces[15:16], 5)[0].matches
        assert all(m.subject != "s5" for m in answer)
        assert len(loaded.index) == 601 - 4
        assert first.rename_subject("g", "s7", "seven") == 3
        assert second.search("g", faces[21:22], 1)[0].matches[0].subject == "seven"
        noisy = faces[30:90] + 0.6 * unit(np.random.default_rng(23), 60)  # cosine ~0.85 to its face
        approximate = second.search("g", noisy, 1)
        exact = second.search("g", noisy, 1, exact=True)
        for a, e in zip(approximate, exact, strict=True):  # the codes' best is the exact scan's
            assert (a.matches[0].subject, a.matches[0].similarity) == pytest.approx(
                (e.matches[0].subject, e.matches[0].similarity)
            )

        # the log pruned past where the replica last looked: it loads the gallery again
        behind = second._codes._loaded["g"]
        first.add_faces("g", "pruned-a", MODEL, [NewFace(faces[1] * -1)])
        first.add_faces("g", "pruned-b", MODEL, [NewFace(faces[2] * -1)])
        with first._pool.connection() as conn:
            conn.execute(
                "DELETE FROM facerest_changes WHERE gallery = 'g' AND version = %s", (behind.version + 1,)
            )
        assert second.search("g", -faces[2:3], 1)[0].matches[0].subject == "pruned-b"
        assert "g" not in second._codes._loaded or second._codes._loaded["g"] is not behind
        assert second.wait_for_indexes(timeout_s=60)
        assert len(second._codes._loaded["g"].index) == 601 - 4 + 2
        assert second.search("g", -faces[1:2], 1)[0].matches[0].subject == "pruned-a"

        # the gallery deleted and made again: the replica loads it again
        assert first.delete_gallery("g")
        first.add_faces("g", "new", MODEL, [NewFace(faces[0])])
        assert second.search("g", faces[:1], 1)[0].matches[0].subject == "new"
        assert second.wait_for_indexes(timeout_s=60)
        assert second.search("g", faces[:1], 3)[0].matches[0].subject == "new"
        assert len(second._codes._loaded["g"].index) == 1
    finally:
        first.close()
        second.close()
