"""Both gallery backends against the real thing (SQLite file, PostgreSQL + pgvector): same answers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from gallery_pg import postgres_url

from facerest.errors import Conflict, ModelMismatch, NotFound
from facerest.gallery import open_store
from facerest.gallery.store import GalleryStore, ModelTag, NewFace

MODEL = ModelTag("w600k_mbf", "c5b029527cb6f874e057613fc10bae1b", 8)
OTHER = ModelTag("glintr100", "0" * 32, 8)


def unit(rng: np.random.Generator, n: int, dim: int = 8) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'gallery.db'}"
    return postgres_url()


@pytest.fixture
def store(url: str) -> Iterator[GalleryStore]:
    opened = open_store(url)
    yield opened
    opened.close()


def test_enrol_list_search_and_exact_similarities(store: GalleryStore) -> None:
    rng = np.random.default_rng(1)
    vectors = unit(rng, 6)
    ids_a = store.add_faces("g", "alice", MODEL, [NewFace(v, "hash", [1, 2, 3, 4], 0.9) for v in vectors[:2]])
    ids_b = store.add_faces("g", "bob", MODEL, [NewFace(vectors[2])])
    store.add_faces("g", "carol", MODEL, [NewFace(vectors[3])])
    assert len(set(ids_a + ids_b)) == 3
    [info] = store.galleries()
    assert (info.name, info.model, info.subjects, info.faces) == ("g", MODEL, 3, 4)
    assert store.subjects("g") == [("alice", 2), ("bob", 1), ("carol", 1)]
    faces = store.faces("g", "alice", with_embeddings=True)
    assert [f.face_id for f in faces] == ids_a
    assert faces[0].image_hash == "hash" and faces[0].bbox == [1, 2, 3, 4] and faces[0].model == "w600k_mbf"
    assert np.allclose(faces[1].embedding, vectors[1])

    queries = np.stack([vectors[1], vectors[4]])
    results = store.search("g", queries, top_k=2)
    assert results[0].matches[0].subject == "alice"
    assert results[0].matches[0].similarity == pytest.approx(1.0, abs=1e-5)
    # the second query: each subject scored by its closest face, exactly
    expected = {
        "alice": max(vectors[0] @ vectors[4], vectors[1] @ vectors[4]),
        "bob": vectors[2] @ vectors[4],
        "carol": vectors[3] @ vectors[4],
    }
    best = sorted(expected, key=lambda s: -expected[s])[:2]
    assert [m.subject for m in results[1].matches] == best
    for m in results[1].matches:
        assert m.similarity == pytest.approx(expected[m.subject], abs=1e-5)
    assert store.search("nope", queries, top_k=3)[0].matches == []


def test_rename_delete_and_model_mismatch(store: GalleryStore) -> None:
    rng = np.random.default_rng(2)
    vectors = unit(rng, 4)
    [face_a] = store.add_faces("g", "alice", MODEL, [NewFace(vectors[0])])
    store.add_faces("g", "bob", MODEL, [NewFace(vectors[1]), NewFace(vectors[2])])
    with pytest.raises(ModelMismatch):
        store.add_faces("g", "eve", OTHER, [NewFace(vectors[3])])
    with pytest.raises(Conflict):
        store.rename_subject("g", "alice", "bob")
    with pytest.raises(NotFound):
        store.rename_subject("g", "nobody", "x")
    assert store.rename_subject("g", "alice", "alicia") == 1
    assert store.search("g", vectors[:1], 1)[0].matches[0].subject == "alicia"
    assert store.delete_face("g", face_a)
    assert not store.delete_face("g", face_a)
    assert [m.subject for m in store.search("g", vectors[:1], 5)[0].matches] == ["bob"]
    assert store.delete_subject("g", "bob") == 2
    assert store.search("g", vectors[:1], 5)[0].matches == []
    assert store.delete_gallery("g")
    assert store.galleries() == []
    # the name is free again, for any model
    store.add_faces("g", "eve", OTHER, [NewFace(vectors[3])])
    assert store.gallery("g").model == OTHER  # type: ignore[union-attr]


def test_reopened_store_and_other_writers_are_seen(url: str) -> None:
    """What one store object wrote, another (another process, another replica) finds and searches."""
    rng = np.random.default_rng(3)
    vectors = unit(rng, 3)
    first, second = open_store(url), open_store(url)
    try:
        first.add_faces("g", "alice", MODEL, [NewFace(vectors[0])])
        assert second.search("g", vectors[:1], 1)[0].matches[0].subject == "alice"
        second.add_faces("g", "bob", MODEL, [NewFace(vectors[1])])
        first.delete_subject("g", "alice")
        assert [m.subject for m in second.search("g", vectors[:1], 5)[0].matches] == ["bob"]
        assert [m.subject for m in first.search("g", vectors[1:2], 5)[0].matches] == ["bob"]
    finally:
        first.close()
        second.close()


def test_search_equals_brute_force_after_many_changes(store: GalleryStore) -> None:
    """Hundreds of faces added, some deleted: both backends still rank exactly as numpy does."""
    rng = np.random.default_rng(4)
    vectors = unit(rng, 300)
    kept: dict[int, tuple[str, np.ndarray]] = {}
    for s in range(60):
        chunk = vectors[s * 5 : (s + 1) * 5]
        for face_id, v in zip(
            store.add_faces("g", f"s{s}", MODEL, [NewFace(v) for v in chunk]), chunk, strict=True
        ):
            kept[face_id] = (f"s{s}", v)
    for face_id in list(kept)[::7]:
        assert store.delete_face("g", face_id)
        del kept[face_id]
    for s in range(0, 60, 9):
        store.delete_subject("g", f"s{s}")
        kept = {k: v for k, v in kept.items() if v[0] != f"s{s}"}
    queries = unit(rng, 20)
    for query, result in zip(queries, store.search("g", queries, top_k=4), strict=True):
        best: dict[str, float] = {}
        for subject, v in kept.values():
            best[subject] = max(best.get(subject, -2.0), float(v @ query))
        expected = sorted(best.items(), key=lambda item: -item[1])[:4]
        assert [m.subject for m in result.matches] == [s for s, _ in expected]
        assert np.allclose([m.similarity for m in result.matches], [v for _, v in expected], atol=1e-5)


def test_sqlite_rows_by_id_follow_ids_in_any_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """The embedded matrix's id -> row table: ids arrive out of order when a gallery is read back
    (sorted by subject), rows move when a face is deleted, ids spread far wider than the faces
    turn the table into a dict and back once the faces fill their span; every step finds exactly
    the faces held, with their own vectors."""
    from facerest.gallery.sqlite import _Matrix, _RowsById

    monkeypatch.setattr(_RowsById, "SPARE_IDS", 64)  # spans wider than 8 ids a face + 64: a dict

    rng = np.random.default_rng(5)
    matrix = _Matrix(MODEL)
    held: dict[int, np.ndarray] = {}

    def enrol(subject: str, ids: list[int]) -> None:
        vectors = unit(rng, len(ids))
        matrix.add(subject, ids, vectors)
        held.update(zip(ids, vectors, strict=True))

    def forget(ids: list[int]) -> None:
        for face_id in ids:
            matrix.delete(face_id)
            held.pop(face_id, None)

    def check(asked: np.ndarray) -> None:
        ids, vectors = matrix.fetch(asked)
        assert sorted(ids.tolist()) == sorted(held)
        for face_id, vector in zip(ids.tolist(), vectors, strict=True):
            assert np.array_equal(vector, held[face_id])

    for subject, ids in (("m", [500, 501]), ("a", [7, 9000]), ("z", [3, 4, 5])):
        enrol(subject, ids)
    forget([501, 3, 12345])  # the last was never held
    check(np.array([1, 3, 4, 5, 7, 500, 501, 9000, 10**9], np.int64))
    assert matrix.rows_by_id.sparse is not None  # 9,000 ids' span for 4 faces
    enrol("b", list(range(10_000, 10_300)))
    forget([*range(10_000, 10_300, 3), 4])
    check(np.arange(0, 11_000, dtype=np.int64))
    enrol("far", [10**9])  # a span of a billion ids for ~200 faces: a dict, not a table
    assert matrix.rows_by_id.sparse is not None
    forget([10_001, 7])
    check(np.concatenate([np.arange(0, 11_000, dtype=np.int64), [10**9, 10**9 + 1]]))
    forget([10**9])
    enrol("near", [10**9 - 5])
    check(np.concatenate([np.arange(0, 11_000, dtype=np.int64), [10**9 - 5, 10**9]]))

    matrix, held = _Matrix(MODEL), {}
    enrol("first", [1, 2_000])  # as a gallery read back by subject begins: a dict
    assert matrix.rows_by_id.sparse is not None
    enrol("rest", list(range(2, 2_000)))
    check(np.arange(0, 2_100, dtype=np.int64))  # the span is full: a table again
    assert matrix.rows_by_id.sparse is None
    forget([1, 1_000])
    enrol("below", [0])  # below the table's first id: it grows downwards
    check(np.arange(0, 2_100, dtype=np.int64))
    assert matrix.rows_by_id.sparse is None
