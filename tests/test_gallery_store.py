"""Both gallery backends against the real thing (SQLite file, PostgreSQL + pgvector): same answers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from gallery_pg import postgres_url

from facerest.errors import Conflict, ModelMismatch, NotFound
from facerest.gallery import open_store
from facerest.gallery.store import UNSORTED, GalleryStore, ModelTag, NewFace, NewReviewItem, ReviewBounds
from facerest.imaging.crops import FaceCrop

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


# --- issue 29: crops, pages, merge and move, the review queue ---------------------------------------


def _crop(tag: int) -> FaceCrop:
    return FaceCrop(b"\xff\xd8" + bytes([tag]) * 50 + b"\xff\xd9", 10, 12, [[1.5, 2.0]] * 5)


def _count_crops(url: str, face_ids: list[int]) -> int:
    """Crop rows of these faces, read straight from the database (the store's own view aside)."""
    if url.startswith("sqlite:///"):
        import sqlite3

        with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
            marks = ",".join("?" * len(face_ids))
            return db.execute(
                f"SELECT COUNT(*) FROM face_crops WHERE face_id IN ({marks})", face_ids
            ).fetchone()[0]
    import psycopg

    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT COUNT(*) FROM facerest_face_crops WHERE face_id = ANY(%s)", (face_ids,)
        ).fetchone()[0]  # type: ignore[index]


def test_crops_live_and_die_with_their_faces(url: str, store: GalleryStore) -> None:
    """Each face's crop is stored with it, read back as written, and deleted by whichever path
    deletes the face: the face, its subject, or its gallery."""
    rng = np.random.default_rng(11)
    vectors = unit(rng, 6)
    ids = store.add_faces(
        "g",
        "alice",
        MODEL,
        [NewFace(v, "h", crop=_crop(i), quality=0.5, source="image") for i, v in enumerate(vectors[:3])],
    )
    bob = store.add_faces("g", "bob", MODEL, [NewFace(vectors[3], crop=_crop(7)), NewFace(vectors[4])])
    other = store.add_faces("h", "carol", MODEL, [NewFace(vectors[5], crop=_crop(9))])
    assert store.face_crop("g", ids[1]) == _crop(1)
    assert store.face_crop("h", ids[1]) is None  # another gallery's face
    assert store.face_crop("g", bob[1]) is None  # no crop kept
    face = store.face("g", ids[0])
    assert (
        face is not None and face.has_crop and face.quality == pytest.approx(0.5) and face.source == "image"
    )
    assert _count_crops(url, ids + bob + other) == 5

    assert store.delete_face("g", ids[0])
    assert store.face_crop("g", ids[0]) is None and _count_crops(url, ids[:1]) == 0
    assert store.delete_subject("g", "alice") == 2
    assert _count_crops(url, ids) == 0
    assert store.delete_gallery("g")
    assert _count_crops(url, bob) == 0
    assert _count_crops(url, other) == 1  # the other gallery keeps its own


def test_pages_walk_every_row_once_while_others_write(store: GalleryStore) -> None:
    """Keyset pages of subjects and faces: a subject that exists throughout is listed exactly once
    however many are added and deleted between two pages."""
    rng = np.random.default_rng(12)
    names = [f"p{i:03d}" for i in range(60)]
    store.add_many("g", MODEL, [(n, NewFace(v)) for n, v in zip(names, unit(rng, 60), strict=True)])
    store.add_faces("g", UNSORTED, MODEL, [NewFace(v) for v in unit(rng, 3)])
    seen: list[str] = []
    after = None
    extra = 0
    while True:
        page = store.subjects_page("g", after, 7)
        seen += [s.subject for s in page]
        if len(page) < 7:
            break
        after = page[-1].subject
        # between pages: a name before the cursor and one after it appear, one of the rest goes
        store.add_faces("g", f"a{extra:03d}", MODEL, [NewFace(unit(rng, 1)[0])])
        store.add_faces("g", f"q{extra:03d}", MODEL, [NewFace(unit(rng, 1)[0])])
        extra += 1
    assert len(seen) == len(set(seen))
    assert set(names) <= set(seen)  # none skipped, none twice, unsorted never listed
    assert not any(s.startswith("a") for s in seen) and all(f"q{i:03d}" in seen for i in range(extra))
    assert [s.subject for s in store.subjects_page("g", None, 10, "P00")] == [f"p00{i}" for i in range(10)]
    assert store.subjects_page("g", None, 10, "%") == []  # LIKE's own characters are plain text
    faces = store.faces_page("g", UNSORTED, None, 2)
    assert (
        len(faces) == 2
        and store.faces_page("g", UNSORTED, faces[-1].face_id, 2)[0].face_id > faces[-1].face_id
    )


def test_merge_move_and_representative(store: GalleryStore) -> None:
    rng = np.random.default_rng(13)
    v = unit(rng, 8)
    a = store.add_faces("g", "ann", MODEL, [NewFace(v[0], quality=0.2), NewFace(v[1], quality=0.9)])
    b = store.add_faces("g", "ben", MODEL, [NewFace(v[2]), NewFace(v[3])])
    c = store.add_faces("g", "cat", MODEL, [NewFace(v[4])])
    # the best quality face shows a subject until one is chosen
    assert {s.subject: s.representative for s in store.subjects_page("g", None, 10)}["ann"] == a[1]
    store.set_representative("g", "ann", a[0])
    assert {s.subject: s.representative for s in store.subjects_page("g", None, 10)}["ann"] == a[0]
    with pytest.raises(NotFound):
        store.set_representative("g", "ann", b[0])

    assert store.merge_subjects("g", "ben", "ann") == 2  # ann keeps her picture
    assert [(s.subject, s.faces, s.representative) for s in store.subjects_page("g", None, 10)] == [
        ("ann", 4, a[0]),
        ("cat", 1, c[0]),
    ]
    assert store.search("g", v[2:3], 1)[0].matches[0].subject == "ann"
    with pytest.raises(NotFound):
        store.merge_subjects("g", "ben", "ann")
    assert store.merge_subjects("g", "cat", "dan") == 1  # into a new name: a rename
    assert store.search("g", v[4:5], 1)[0].matches[0].subject == "dan"

    # a split: two of ann's faces to a new subject; all or nothing
    with pytest.raises(NotFound):
        store.move_faces("g", [a[1], 10**9], "eve")
    assert store.face("g", a[1]).subject == "ann"  # type: ignore[union-attr]
    assert store.move_faces("g", [a[1], b[0]], "eve", require_new=True) == 2
    with pytest.raises(Conflict):
        store.move_faces("g", [b[1]], "eve", require_new=True)
    assert {m.subject for m in store.search("g", v[[1, 2]], 1)[0].matches} == {"eve"}
    assert store.search("g", v[2:3], 1)[0].matches[0].subject == "eve"
    assert store.search("g", v[0:1], 1)[0].matches[0].subject == "ann"
    assert store.move_faces("g", [a[0]], UNSORTED) == 1  # back to the unsorted faces
    assert [(s.subject, s.faces) for s in store.subjects_page("g", None, 10)] == [
        ("ann", 1),
        ("dan", 1),
        ("eve", 2),
    ]
    [info] = store.galleries()
    assert info.faces == 5


def test_review_queue_groups_bounds_and_assignment(store: GalleryStore) -> None:
    rng = np.random.default_rng(14)
    people = unit(rng, 3)
    bounds = ReviewBounds(max_items=5, max_age_s=3600)

    def item(person: int, picture: str, box: float = 0.0) -> NewReviewItem:
        noisy = people[person] + 0.05 * unit(rng, 1)[0]
        return NewReviewItem(
            noisy / np.linalg.norm(noisy),
            _crop(person),
            "search",
            None,
            [("x", 0.2)],
            picture,
            [box, 0, 9, 9],
        )

    store.add_faces("g", "x", MODEL, [NewFace(unit(rng, 1)[0])])
    assert store.add_review("nope", item(0, "p1"), 0.5, bounds) is None  # no such gallery
    first = store.add_review("g", item(0, "p1"), 0.5, bounds)
    assert store.add_review("g", item(0, "p1"), 0.5, bounds) is None  # the same face of the same picture
    same_person = store.add_review("g", item(0, "p2"), 0.5, bounds)
    other = store.add_review("g", item(1, "p3"), 0.5, bounds)
    # a second face of picture p2 never joins the group holding p2's other face
    same_picture = store.add_review("g", item(0, "p2", box=500), 0.5, bounds)
    page = store.review_page("g", None, 10, None, 3600)
    groups = {i.review_id: i.group for i in page}
    assert groups[first] == groups[same_person] == first and groups[other] == other
    assert groups[same_picture] == same_picture
    assert [i.review_id for i in page] == sorted(groups, key=lambda r: (groups[r], r))
    assert store.review_crop("g", other) == _crop(1)
    assert store.exclude_review("g", [other], "x") == 1
    assert store.review_items("g", [other])[0].excluded == ["x"]
    assert [i.review_id for i in store.review_page("g", None, 10, "X", 3600)] == [i.review_id for i in page]

    # bounded: the oldest go first
    newest = [store.add_review("g", item(2, f"q{i}"), 0.5, bounds) for i in range(3)]
    kept = {i.review_id for i in store.review_page("g", None, 10, None, 3600)}
    assert len(kept) == 5 and first not in kept and same_person not in kept and set(newest) <= kept
    assert store.review_page("g", None, 10, None, max_age_s=1e-9) == []  # older than asked: not shown

    # assignment: all or nothing, crops go along, the queue forgets them
    with pytest.raises(NotFound):
        store.assign_review("g", [other, 10**9], "zed", MODEL)
    with pytest.raises(Conflict):
        store.assign_review("g", [other], "x", MODEL, require_new=True)
    face_ids = store.assign_review("g", [newest[0], other], "zed", MODEL)
    assert [store.face_crop("g", f) for f in face_ids] == [_crop(2), _crop(1)]
    assert {i.review_id for i in store.review_page("g", None, 10, None, 3600)} == kept - {newest[0], other}
    assert store.search("g", people[1:2], 1)[0].matches[0].subject == "zed"
    assert store.delete_review("g", [newest[1]]) == 1
    assert store.delete_gallery("g")
    store.add_faces("g", "x", MODEL, [NewFace(unit(rng, 1)[0])])
    assert store.review_page("g", None, 10, None, 3600) == []  # went with the gallery


def test_review_items_forget_an_erased_subject_and_expire(store: GalleryStore, url: str) -> None:
    """Issue 30 on the review queue of issue 29: erasing a subject deletes the items that scored it
    at the line or above (likely its face), takes its name out of the others (candidates and "not
    X"), and leaves every other item as it was; retention deletes the items queued before a time."""
    rng = np.random.default_rng(15)
    bounds = ReviewBounds(max_items=100, max_age_s=3600)
    store.add_faces("g", "Ann", MODEL, [NewFace(unit(rng, 1)[0])])
    store.add_faces("h", "Ann", MODEL, [NewFace(unit(rng, 1)[0])])

    def queue(gallery: str, candidates: list[tuple[str, float]], picture: str) -> int:
        item = NewReviewItem(unit(rng, 1)[0], _crop(0), "search", None, candidates, picture, [0, 0, 9, 9])
        review_id = store.add_review(gallery, item, 0.99, bounds)
        assert review_id is not None
        return review_id

    likely = queue("g", [("Ann", 0.8), ("Bob", 0.1)], "p1")
    mentions = queue("g", [("Bob", 0.5), ("Ann", 0.2)], "p2")
    refused = queue("g", [("Bob", 0.4)], "p3")
    store.exclude_review("g", [refused], "Ann")
    annabel = queue("g", [("Annabel", 0.9)], "p4")  # a name holding the subject's: untouched
    elsewhere = queue("h", [("Ann", 0.9)], "p5")  # another gallery's Ann: untouched

    assert store.forget_review_subject("g", "Ann", 0.5) == (1, 2)
    items = {i.review_id: i for i in store.review_page("g", None, 10, None, 3600)}
    assert set(items) == {mentions, refused, annabel} and likely not in items
    assert items[mentions].candidates == [("Bob", 0.5)] and items[refused].excluded == []
    assert items[annabel].candidates == [("Annabel", 0.9)]
    assert store.review_page("g", None, 10, "Ann", 3600) == [items[annabel]]  # the name filter agrees
    assert [i.review_id for i in store.review_page("h", None, 10, None, 3600)] == [elsewhere]
    assert store.forget_review_subject("g", "Ann", 0.5) == (0, 0)
    # None: every item naming it goes (the caller knows no line)
    assert store.forget_review_subject("h", "Ann", None) == (1, 0)
    if url.startswith("sqlite:///"):  # the bytes too: secure_delete, and the WAL emptied
        path = Path(url.removeprefix("sqlite:///"))
        held = b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*") if p.is_file())
        assert b'"Ann"' not in held and b"Ann\n" not in held

    # retention: everything queued before the time given, in every gallery
    queue("h", [("Cid", 0.3)], "p6")
    assert store.expire_review(0.0) == {}
    assert store.expire_review(time.time() + 1) == {"g": 3, "h": 1}
    assert store.review_page("g", None, 10, None, 3600) == store.review_page("h", None, 10, None, 3600) == []


def _walk_subjects(store: GalleryStore, gallery: str, page: int) -> dict[int, str]:
    """Every face's subject, read back through the pages (unsorted faces under UNSORTED)."""
    where: dict[int, str] = {}
    names = []
    after = None
    while rows := store.subjects_page(gallery, after, page):
        names += [s.subject for s in rows]
        after = rows[-1].subject
    for name in [*names, UNSORTED]:
        last = None
        while faces := store.faces_page(gallery, name, last, page):
            for face in faces:
                assert face.face_id not in where, f"face {face.face_id} listed twice"
                where[face.face_id] = name
            last = faces[-1].face_id
    return where


def test_concurrent_merges_moves_deletes_and_assignments_keep_the_truth(url: str) -> None:
    """Issue 29, must show 3 (the store): four writers (each its own store object, as separate
    replicas or workers are) merge, move, delete and assign review items at once, each on its own
    subjects in one shared gallery; afterwards every face is where its writer put it, read back
    through the pages and through search, and nothing was invented."""
    import random
    import threading

    dim = 32
    model = ModelTag("w600k_mbf", "c5b029527cb6f874e057613fc10bae1b", dim)
    rng = np.random.default_rng(15)
    writers = 4
    setup = open_store(url)
    truth: dict[int, str] = {}
    vectors: dict[int, np.ndarray] = {}
    review: dict[int, list[int]] = {}
    review_vectors: dict[int, np.ndarray] = {}
    for w in range(writers):
        for s in range(6):
            vs = unit(rng, 4, dim)
            ids = setup.add_faces("shared", f"w{w}s{s}", model, [NewFace(v) for v in vs])
            truth.update(dict.fromkeys(ids, f"w{w}s{s}"))
            vectors.update(zip(ids, vs, strict=True))
        review[w] = []
        for v in unit(rng, 4, dim):
            item = NewReviewItem(v, _crop(w), "search", None, [], f"pic-{w}-{len(review[w])}", [0, 0, 1, 1])
            review_id = setup.add_review("shared", item, 0.99, ReviewBounds(1000, 3600))
            assert review_id is not None
            review[w].append(review_id)
            review_vectors[review_id] = v
    setup.close()
    lock = threading.Lock()
    problems: list[str] = []
    done: dict[str, int] = {}

    def writer(w: int) -> None:
        store = open_store(url)
        pick = random.Random(w)
        mine = lambda: sorted({s for f, s in truth.items() if s.startswith(f"w{w}")})  # noqa: E731
        try:
            for step in range(30):
                with lock:
                    subjects = mine()
                    faces = [f for f, s in truth.items() if s.startswith(f"w{w}")]
                op = pick.choice(
                    ["merge", "merge", "move", "move", "move", "delete_face", "assign", "assign"]
                )
                if step % 12 == 11:
                    op = "delete_subject"
                if op == "merge" and len(subjects) >= 2:
                    a, b = pick.sample(subjects, 2)
                    store.merge_subjects("shared", a, b)
                    with lock:
                        truth.update({f: b for f, s in truth.items() if s == a})
                elif op == "move" and faces:
                    chosen = pick.sample(faces, min(len(faces), pick.randint(1, 3)))
                    target = f"w{w}n{step}" if pick.random() < 0.5 or not subjects else pick.choice(subjects)
                    store.move_faces("shared", chosen, target)
                    with lock:
                        truth.update(dict.fromkeys(chosen, target))
                elif op == "delete_face" and faces:
                    face = pick.choice(faces)
                    assert store.delete_face("shared", face)
                    with lock:
                        del truth[face]
                elif op == "delete_subject" and subjects:
                    subject = pick.choice(subjects)
                    store.delete_subject("shared", subject)
                    with lock:
                        for f in [f for f, s in truth.items() if s == subject]:
                            del truth[f]
                elif op == "assign" and review[w]:
                    item = review[w].pop()
                    target = pick.choice(subjects) if subjects else f"w{w}r{step}"
                    [face] = store.assign_review("shared", [item], target, model)
                    with lock:
                        truth[face] = target
                        vectors[face] = review_vectors[item]
                else:
                    continue
                with lock:
                    done[op] = done.get(op, 0) + 1
                # search follows at once: a face this writer owns is found under its subject now
                with lock:
                    owned = [f for f, s in truth.items() if s.startswith(f"w{w}")]
                if owned:
                    face = pick.choice(owned)
                    found = store.search("shared", vectors[face][None], 1, exact=True)[0].matches[0]
                    if found.subject != truth[face]:
                        problems.append(
                            f"after {op}: face {face} searched as {found.subject}, not {truth[face]}"
                        )
        except Exception as exc:
            problems.append(f"writer {w}: {type(exc).__name__}: {exc}")
        finally:
            store.close()

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not problems, problems
    check = open_store(url)
    try:
        stored = _walk_subjects(check, "shared", page=3)
        assert stored == truth  # nothing lost, nothing invented, every face where its writer put it
        left = {i.review_id for i in check.review_page("shared", None, 100, None, 3600)}
        assert left == {i for items in review.values() for i in items}
        for face, subject in truth.items():
            assert check.search("shared", vectors[face][None], 1, exact=True)[0].matches[0].subject == subject
        print(
            f"\n{url.split(':')[0]}: {len(truth)} faces in {len(set(truth.values()))} subjects as stored "
            f"after {sum(done.values())} concurrent operations {done}"
        )
    finally:
        check.close()
