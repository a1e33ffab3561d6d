"""Galleries that move to another recognizer (issue 32, must show 3), against the real stores.

The store's part with made-up vectors (fast, both backends, two store objects on one database
standing for two processes), then real moves: w600k_mbf galleries embedded again by SFace (and
dlib's ResNet, the other alignment) from the crops they keep, in-process on both backends.
tests/test_gallery_reembed_http.py drives the same through the server, the CLI and a killed run.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import simplejpeg
from conftest import read_bgr, shared_people
from gallery_pg import postgres_url

from facerest.config import Settings
from facerest.errors import BadInput, Conflict, FeatureUnavailable, ModelMismatch, NotFound
from facerest.gallery import open_store
from facerest.gallery.index import IndexOptions
from facerest.gallery.reembed import Reembedder, shown_state
from facerest.gallery.service import GalleryService
from facerest.gallery.store import (
    GalleryStore,
    ModelTag,
    NewFace,
    NewReviewItem,
    NotOwner,
    ReembedJob,
    ReviewBounds,
)
from facerest.imaging.crops import FaceCrop
from facerest.models.align import arcface_matrix
from facerest.models.recognition import Recognizer
from facerest.pipeline import ExtractOptions, FaceAnalyzer
from facerest.pipeline.scheduler import InferenceScheduler
from facerest.preparation import load_models

SOURCE = ModelTag("w600k_mbf", "c5b029527cb6f874e057613fc10bae1b", 8)
TARGET = ModelTag("sface_2021dec_int8bq", "605fd41aea0d81883ea90b78b62a5bea", 4)
LANDMARKS = [[3.0, 3.0], [5.0, 3.0], [4.0, 4.0], [3.0, 5.0], [5.0, 5.0]]
#: the index on from the first face: the moves must keep each process's index true
INDEXED = IndexOptions(min_faces=1)
SFACE = "sface_2021dec_int8bq"
BOUNDS = ReviewBounds(100, 3600.0)


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (8, 8, 3), np.uint8)
    return simplejpeg.encode_jpeg(pixels, quality=90, colorspace="BGR")


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'gallery.db'}" if request.param == "sqlite" else postgres_url()


@pytest.fixture
def stores(url: str) -> Iterator[tuple[GalleryStore, GalleryStore]]:
    """Two stores on one database: the process that moves the gallery and another that searches it."""
    first, second = open_store(url, INDEXED), open_store(url, INDEXED)
    yield first, second
    first.close()
    second.close()


def fill(store: GalleryStore, rng: np.random.Generator) -> dict[str, list[int]]:
    """Six faces with crops in three subjects, one posted (no crop), one crop without landmarks,
    two review items (one with a crop)."""
    vectors = unit(rng, 8, SOURCE.dim)
    ids = {}
    for n, subject in enumerate(["ann", "bob", "cy"]):
        ids[subject] = store.add_faces(
            "g",
            subject,
            SOURCE,
            [
                NewFace(vectors[2 * n + k], f"h{n}{k}", crop=FaceCrop(jpeg(2 * n + k), 8, 8, LANDMARKS))
                for k in (0, 1)
            ],
        )
    ids["posted"] = store.add_faces("g", "posted", SOURCE, [NewFace(vectors[6], source="embedding")])
    ids["nolm"] = store.add_faces(
        "g", "nolm", SOURCE, [NewFace(vectors[7], crop=FaceCrop(jpeg(9), 8, 8, None))]
    )
    for n, crop in enumerate([FaceCrop(jpeg(10), 8, 8, LANDMARKS), None]):
        item = NewReviewItem(unit(rng, 1, SOURCE.dim)[0], crop, "search", f"r{n}", [("ann", 0.3)], f"x{n}")
        assert store.add_review("g", item, 0.99, BOUNDS) is not None
    return ids


def wait_for_codes(*stores: GalleryStore) -> None:
    for store in stores:
        assert store.wait_for_indexes(timeout_s=60)  # type: ignore[attr-defined]


def test_a_move_in_place_switches_in_one_transaction_and_every_process_follows(
    stores: tuple[GalleryStore, GalleryStore],
) -> None:
    mover, other = stores
    rng = np.random.default_rng(32)
    ids = fill(mover, rng)
    old = {
        f.face_id: f.embedding
        for s in ("ann", "bob", "cy")
        for f in mover.faces("g", s, with_embeddings=True)
    }
    probe = old[ids["bob"][1]][None]
    other.search("g", probe, 3)  # its codes (index) are made from the old vectors
    wait_for_codes(mover, other)
    before = other.search("g", probe, 3)[0].matches
    assert before[0].subject == "bob" and before[0].similarity == pytest.approx(1.0, abs=1e-5)
    held = getattr(other, "_matrices", {}).get("g")  # SQLite: the other process's copy of the faces

    # faces that keep no crop to align from would be lost: refused, nothing changed
    with pytest.raises(
        Conflict, match=r"2 faces .* keep no crop .* face ids {}, {}".format(ids["posted"][0], ids["nolm"][0])
    ):
        mover.reembed_begin(ReembedJob("g", TARGET, "arcface", SOURCE), "A", 60.0)
    assert mover.reembed_job("g") is None
    with pytest.raises(ModelMismatch):
        mover.reembed_begin(ReembedJob("g", TARGET, "arcface", TARGET, drop_missing=True), "A", 60.0)
    with pytest.raises(NotFound):
        mover.reembed_begin(ReembedJob("nope", TARGET, "arcface", SOURCE), "A", 60.0)

    job = mover.reembed_begin(ReembedJob("g", TARGET, "arcface", SOURCE, drop_missing=True), "A", 60.0)
    assert (job.state, job.owner, job.missing, job.missing_count) == (
        "running",
        "A",
        ids["posted"] + ids["nolm"],
        2,
    )
    assert job.review_items == 1 and shown_state(job, 60.0) == "running"
    with pytest.raises(Conflict, match=r"being moved .* by A"):  # its runner is alive
        other.reembed_begin(ReembedJob("g", TARGET, "arcface", SOURCE, drop_missing=True), "B", 60.0)

    todo = mover.reembed_todo("g", False, 0, 100)
    with_crops = sorted(ids["ann"] + ids["bob"] + ids["cy"])
    assert [i for i, _ in todo] == with_crops and todo[0][1].landmarks == LANDMARKS
    [(review_id, review_crop)] = mover.reembed_todo("g", True, 0, 100)
    assert review_crop.jpeg == jpeg(10)
    new = dict(zip(with_crops, unit(rng, 6, TARGET.dim), strict=True))
    mover.reembed_put("g", "A", False, with_crops[:3], np.stack([new[i] for i in with_crops[:3]]))
    assert [i for i, _ in mover.reembed_todo("g", False, 0, 100)] == with_crops[3:]
    assert mover.reembed_finish("g", "A") is None  # faces left: not yet
    with pytest.raises(NotOwner):
        mover.reembed_put("g", "B", False, with_crops[3:], np.stack([new[i] for i in with_crops[3:]]))
    # mid-way every process still answers from the old model
    assert other.gallery("g").model == SOURCE  # type: ignore[union-attr]
    assert other.search("g", probe, 3)[0].matches == before
    assert other.reembed_job("g").done == 3  # type: ignore[union-attr]
    if held is not None:  # the move's steps did not make it read every face again
        assert other._matrices["g"] is held  # type: ignore[attr-defined]

    mover.reembed_put("g", "A", False, with_crops[3:], np.stack([new[i] for i in with_crops[3:]]))
    mover.reembed_put("g", "A", True, [review_id], unit(rng, 1, TARGET.dim))
    done = mover.reembed_finish("g", "A")
    assert done is not None and (done.state, done.faces, done.done, done.review_dropped) == ("done", 6, 6, 1)
    assert done.missing == ids["posted"] + ids["nolm"]
    info = mover.gallery("g")
    assert info is not None and (info.model, info.faces, info.subjects) == (TARGET, 6, 3)
    # the other process follows (a PostgreSQL replica's counts may lag COUNTS_TTL_S); its index
    # is not the old vectors'
    for store in (mover, other):
        assert store.gallery("g").model == TARGET  # type: ignore[union-attr]
        for face_id, vector in new.items():
            [match] = store.search("g", vector[None], 1)[0].matches
            assert match.similarity == pytest.approx(1.0, abs=1e-5)
            assert face_id in [f.face_id for f in store.faces("g", match.subject)]
    wait_for_codes(mover, other)
    assert other.search("g", new[ids["bob"][1]][None], 1)[0].matches[0].subject == "bob"
    # face ids kept; the review item moved with the gallery, the one without a crop is gone
    assert sorted(f.face_id for s in ("ann", "bob", "cy") for f in other.faces("g", s)) == with_crops
    [item] = other.review_items("g", [review_id, review_id + 1], with_embeddings=True)
    assert item.review_id == review_id and item.embedding.shape == (TARGET.dim,)  # type: ignore[union-attr]
    assert other.reembed_job("g").state == "done"  # type: ignore[union-attr]


def test_a_move_into_a_new_gallery_leaves_the_old_one_as_it_was(
    stores: tuple[GalleryStore, GalleryStore],
) -> None:
    mover, other = stores
    rng = np.random.default_rng(33)
    ids = fill(mover, rng)
    mover.set_representative("g", "bob", ids["bob"][1])
    before = {s: other.faces("g", s, with_embeddings=True) for s, _ in other.subjects("g")}
    mover.add_faces("taken", "x", SOURCE, [])
    with pytest.raises(Conflict, match="'taken' already exists"):
        mover.reembed_begin(ReembedJob("g", TARGET, "arcface", SOURCE, into="taken"), "A", 60.0)
    # into a new gallery, faces without a usable crop stay behind (listed), none is lost
    job = mover.reembed_begin(ReembedJob("g", TARGET, "arcface", SOURCE, into="g2"), "A", 60.0)
    assert job.missing_count == 2 and job.review_items == 0
    with pytest.raises(Conflict, match="being made"):
        other.reembed_begin(ReembedJob("taken", TARGET, "arcface", SOURCE, into="g2"), "B", 60.0)
    todo = mover.reembed_todo("g", False, 0, 100)
    vectors = unit(rng, len(todo), TARGET.dim)
    mover.reembed_put("g", "A", False, [i for i, _ in todo], vectors)
    assert other.gallery("g2") is None
    done = mover.reembed_finish("g", "A")
    assert done is not None and (done.faces, done.missing_count, done.into) == (6, 2, "g2")
    for store in (mover, other):
        info = store.gallery("g2")
        assert info is not None and (info.model, info.faces, info.subjects) == (TARGET, 6, 3)
        assert store.gallery("g").model == SOURCE  # type: ignore[union-attr]
    after = {s: other.faces("g", s, with_embeddings=True) for s, _ in other.subjects("g")}
    assert after.keys() == before.keys()
    for subject, faces in before.items():
        assert [f.face_id for f in faces] == [f.face_id for f in after[subject]]
        assert all(
            np.array_equal(a.embedding, b.embedding) for a, b in zip(faces, after[subject], strict=True)
        )
    copied = {s: other.faces("g2", s, with_embeddings=True) for s in ("ann", "bob", "cy")}
    by_old = dict(zip([i for i, _ in todo], vectors, strict=True))
    for subject, faces in copied.items():
        originals = before[subject]
        assert len(faces) == 2 and [f.representative for f in faces] == [f.representative for f in originals]
        for face, original in zip(faces, originals, strict=True):
            assert (face.image_hash, face.added_at, face.model) == (
                original.image_hash,
                original.added_at,
                TARGET.name,
            )
            assert np.allclose(face.embedding, by_old[original.face_id], atol=1e-6)  # type: ignore[arg-type]
            assert other.face_crop("g2", face.face_id) == other.face_crop("g", original.face_id)
    assert other.reembed_todo("g", False, 0, 100)  # the old gallery keeps nothing of the move


def test_a_silent_runners_move_is_taken_up_and_a_cancelled_one_forgotten(
    stores: tuple[GalleryStore, GalleryStore],
) -> None:
    mover, other = stores
    rng = np.random.default_rng(34)
    fill(mover, rng)
    job = ReembedJob("g", TARGET, "arcface", SOURCE, into="g2")
    mover.reembed_begin(job, "A", 60.0)
    todo = [i for i, _ in mover.reembed_todo("g", False, 0, 100)]
    mover.reembed_put("g", "A", False, todo[:2], unit(rng, 2, TARGET.dim))
    # A is gone without a word (a crash): within its lease nobody may take over; after it, B does
    with pytest.raises(Conflict):
        other.reembed_begin(job, "B", 60.0)
    time.sleep(0.05)
    taken = other.reembed_begin(job, "B", 0.01)
    assert (taken.owner, taken.done) == ("B", 2)
    assert [i for i, _ in other.reembed_todo("g", False, 0, 100)] == todo[2:]  # nothing twice
    with pytest.raises(NotOwner):  # A wakes up: its write is refused
        mover.reembed_put("g", "A", False, todo[2:], unit(rng, len(todo) - 2, TARGET.dim))
    with pytest.raises(Conflict, match=r"unfinished move .* cancel it first"):
        other.reembed_begin(ReembedJob("g", TARGET, "arcface", SOURCE), "B", 0.01)
    # B stops politely: anyone takes it up at once
    assert other.reembed_end("g", "B", None) and shown_state(other.reembed_job("g"), 60.0) == "interrupted"  # type: ignore[arg-type]
    assert mover.reembed_begin(job, "A", 60.0).owner == "A"
    assert mover.reembed_end("g", "A", "it broke")
    assert (other.reembed_job("g").state, other.reembed_job("g").error) == ("failed", "it broke")  # type: ignore[union-attr]

    assert other.reembed_cancel("g")
    assert other.reembed_job("g") is None and not other.reembed_cancel("g")
    assert [i for i, _ in mover.reembed_todo("g", False, 0, 100)] == todo  # the new vectors are gone
    with pytest.raises(NotOwner):
        mover.reembed_put("g", "A", False, todo[:1], unit(rng, 1, TARGET.dim))
    assert mover.gallery("g").model == SOURCE and mover.gallery("g2") is None  # type: ignore[union-attr]
    # a gallery deleted mid-way takes its move with it
    mover.reembed_begin(job, "A", 60.0)
    mover.delete_gallery("g")
    assert other.reembed_job("g") is None


# --- real moves: w600k_mbf galleries embedded again from their crops ---


@pytest.fixture
def service(url: str, analyzer, tmp_path: Path) -> Iterator[GalleryService]:  # type: ignore[no-untyped-def]
    settings = analyzer.settings.model_copy(update={"data_dir": tmp_path, "reembed_batch_size": 5})
    gallery = GalleryService(open_store(url), analyzer, settings)
    yield gallery
    gallery.close()


def enrol_shared_set(service: GalleryService) -> dict[str, list[Path]]:
    people = shared_people("facerec_ageitgey")
    for who, paths in people.items():
        done = service.enrol("people", who, [read_bgr(p) for p in paths])
        assert len(done.added) == len(paths), done.failed
    return people


def test_a_gallery_moves_to_sface_and_dlib_from_its_crops(service: GalleryService) -> None:
    people = enrol_shared_set(service)
    faces = sum(len(p) for p in people.values())
    [posted] = service.enrol("people", "posted", embeddings=[np.ones(512).tolist()]).added
    store, mover = service.store, service.reembeds
    info = store.gallery("people")

    # refused before anything changes: the answer says why
    for model, error, says in [
        ("no_such_model", BadInput, "unknown model 'no_such_model'"),
        ("scrfd_500m_bnkps", BadInput, "is a detection model, not a face recognizer"),
        ("w600k_mbf", BadInput, "is built with w600k_mbf already"),
        ("sface_2021dec_int8bq", Conflict, f"keep no crop .* face ids {posted[0]}"),
    ]:
        with pytest.raises(error, match=says):
            mover.prepare("people", model)
    with pytest.raises(NotFound):
        mover.prepare("nobody", "sface_2021dec_int8bq")
    store.add_faces("taken", "x", info.model, [])  # type: ignore[union-attr]
    with pytest.raises(Conflict, match="'taken' already exists"):
        mover.prepare("people", "sface_2021dec_int8bq", into="taken")
    assert store.gallery("people") == info and store.reembed_job("people") is None

    # a recognizer of an alignment no kept crop gives (the base class aligns nothing)
    def unaligned(name: str, settings: Settings) -> Recognizer:
        sface = service.reembeds.load_target("sface_2021dec_int8bq").recognizer
        return Recognizer(sface.entry, sface.session)

    odd = Reembedder(lambda: store, service.settings, service.analyzer.scheduler, load=unaligned)
    with pytest.raises(BadInput, match="aligns faces as nothing known"):
        odd.prepare("people", "sface_2021dec_int8bq", into="odd")
    assert store.reembed_job("people") is None

    seen: list[int] = []
    job, target = mover.prepare("people", "sface_2021dec_int8bq", into="people-sface")
    assert (job.target.dim, job.alignment, job.missing, job.missing_count) == (128, "arcface", [posted[0]], 1)
    done = mover.run(job, target, progress=lambda j: seen.append(j.done))
    assert seen == sorted(seen) and seen[-1] == faces and len(seen) == -(-faces // 5)
    assert (done.state, done.faces, done.missing_count) == ("done", faces, 1)
    assert "reembed:sface_2021dec_int8bq" not in {
        k[0] for k in service.analyzer.scheduler._queues
    }  # released

    same_as_on_the_crops(mover, people, "people-sface", "sface_2021dec_int8bq")

    # the other alignment: dlib's 150 px chip, cut from the same crops
    try:
        mover.release(mover.load_target("dlib_resnet_v1"))
    except FeatureUnavailable as exc:
        pytest.skip(f"dlib_resnet_v1 is not installable here: {exc.detail}")
    job, target = mover.prepare("people", "dlib_resnet_v1", into="people-dlib", drop_missing=True)
    done = mover.run(job, target)
    assert (done.target.dim, done.alignment, done.faces) == (128, "dlib_chip", faces)
    same_as_on_the_crops(mover, people, "people-dlib", "dlib_resnet_v1")


def same_as_on_the_crops(mover: Reembedder, people: dict[str, list[Path]], moved: str, model: str) -> None:
    """Each new vector is the target run on its face's own crop, aligned on the landmarks kept
    with it (and each face's nearest other face is one of its own person's)."""
    store = mover.store
    target = mover.load_target(model)
    vectors, names = [], []
    for who in people:
        old = store.faces("people", who)
        new = store.faces(moved, who, with_embeddings=True)
        assert len(old) == len(new) == len(people[who])
        crops = [store.face_crop("people", f.face_id) for f in old]
        aligned = [target.recognizer.align(c.pixels(), np.asarray(c.landmarks, np.float32)) for c in crops]  # type: ignore[union-attr]
        for face, vector in zip(new, mover._embed(target, aligned), strict=True):
            assert face.embedding.shape == (128,) and float(face.embedding @ vector) > 0.99999  # type: ignore[union-attr]
            vectors.append(face.embedding)
            names.append(who)
    mover.release(target)
    scores = np.stack(vectors) @ np.stack(vectors).T
    np.fill_diagonal(scores, -1)
    nearest = [names[j] for j in scores.argmax(axis=1)]
    # faces of people with another photo: their nearest other face should be that person's
    others = [i for i, who in enumerate(names) if len(people[who]) > 1]
    right = sum(names[i] == nearest[i] for i in others)
    print(f"\n{model} from the kept crops: nearest other face of the same person for {right}/{len(others)}")
    assert right == len(others)


def alias_free(image: np.ndarray, landmarks: np.ndarray, factor: int = 8) -> np.ndarray:
    """The ArcFace 112 crop of a face, warped at `factor` times the size and averaged down: no
    source pixel skipped however large the face (the pipeline's one bilinear warp samples a face
    hundreds of pixels wide every few pixels; docs/architecture.md, "Alignment")."""
    matrix = arcface_matrix(np.asarray(landmarks, np.float32), 112) * factor
    big = cv2.warpAffine(image, matrix, (112 * factor, 112 * factor), flags=cv2.INTER_LINEAR)
    return cv2.resize(big, (112, 112), interpolation=cv2.INTER_AREA)


def test_moved_vectors_are_sface_on_the_original_photos(analyzer, models_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Every face of the shared sets enrolled by w600k_mbf (SCRFD's landmarks), moved to SFace from
    its crop; each new vector compared with SFace on the original photo: at the same landmarks
    without aliasing (what the crop should give: >= 0.99), with the pipeline's plain warp, and as
    the commercial pack enrols it (YuNet's landmarks, plain warp)."""
    settings = analyzer.settings.model_copy(update={"data_dir": tmp_path})
    service = GalleryService(open_store(f"sqlite:///{tmp_path / 'gallery.db'}"), analyzer, settings)
    commercial_settings = Settings(models_dir=models_dir, threads=2, model_pack="commercial")
    commercial = FaceAnalyzer(load_models(commercial_settings), commercial_settings)
    try:
        photos = [
            p
            for set_name in ("deepface", "facerec_ageitgey")
            for ps in shared_people(set_name).values()
            for p in ps
        ]
        enrolled = {}
        for n, path in enumerate(photos):
            image = read_bgr(path)
            [(_, face)] = service.enrol("shared", f"face-{n}", [image]).added
            enrolled[f"face-{n}"] = (image, face.landmarks)
        job, target = service.reembeds.prepare("shared", SFACE, into="shared-sface")
        assert service.reembeds.run(job, target).faces == len(photos)
        sface = service.reembeds.load_target(SFACE)
        rows: dict[str, list[float]] = {"alias-free": [], "plain warp": [], "the commercial pack": []}
        redetected: list[float] = []
        aliasing: list[float] = []  # the photo's plain warp to its alias-free one: the reference's own noise
        for subject, (image, landmarks) in enrolled.items():
            [moved] = service.store.faces("shared-sface", subject, with_embeddings=True)
            crops = [alias_free(image, landmarks), sface.recognizer.align(image, landmarks)]
            clean, plain = service.reembeds._embed(sface, crops)
            rows["alias-free"].append(float(moved.embedding @ clean))  # type: ignore[operator]
            rows["plain warp"].append(float(moved.embedding @ plain))  # type: ignore[operator]
            aliasing.append(float(clean @ plain))
            [direct] = commercial.process([image], ExtractOptions(limit_faces=1))
            rows["the commercial pack"].append(float(moved.embedding @ direct.faces[0].embedding))  # type: ignore[operator]
            # the alternative not taken: YuNet run again on the crop for its own landmarks
            [source] = service.store.faces("shared", subject)
            crop = service.store.face_crop("shared", source.face_id)
            [again] = commercial.process([crop.pixels()], ExtractOptions(limit_faces=1))  # type: ignore[union-attr]
            redetected.append(float(again.faces[0].embedding @ direct.faces[0].embedding))  # type: ignore[operator]
        service.reembeds.release(sface)
        print(f"\ncosine of the {len(photos)} moved vectors to SFace on the original photos:")
        for name, values in rows.items():
            v = np.array(values)
            print(
                f"  {name:20s} mean {v.mean():.4f}  min {v.min():.4f}  "
                f"5th percentile {np.percentile(v, 5):.4f}  below 0.99: {(v < 0.99).sum()}/{len(v)}"
            )
        v = np.array(aliasing)
        print(
            f"  (the plain warp of the photo to its alias-free warp: mean {v.mean():.4f}  min {v.min():.4f})"
        )
        v = np.array(redetected)
        print(
            "  (YuNet's landmarks found again on the crop instead, to the commercial pack's: "
            f"mean {v.mean():.4f}  min {v.min():.4f})"
        )
        assert min(rows["alias-free"]) >= 0.99
        assert np.mean(rows["the commercial pack"]) > v.mean()  # why the stored landmarks are used
    finally:
        commercial.close()
        service.close()


def test_the_cli_moves_says_how_it_went_and_refuses_in_one_line(models_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from facerest.cli import app

    url = f"sqlite:///{tmp_path / 'gallery.db'}"
    store = open_store(url)
    ids = fill(store, np.random.default_rng(35))
    store.close()
    env = {"FACEREST_MODELS_DIR": str(models_dir), "FACEREST_GALLERY_URL": url, "FACEREST_THREADS": "2"}
    runner = CliRunner()

    def cli(*args: str) -> tuple[int, str]:
        result = runner.invoke(app, ["gallery", "reembed", "g", *args], env=env)
        return result.exit_code, result.output

    assert cli("--model", "nope")[0] == 1 and "error: unknown model 'nope'" in cli("--model", "nope")[1]
    code, output = cli("--model", SFACE)
    assert code == 1 and "error: 2 faces of gallery 'g' keep no crop" in output, output
    assert cli("--status") == (1, "error: gallery 'g' has not been moved to another recognizer\n")
    code, output = cli("--model", SFACE, "--into", "g2")
    assert code == 0, output
    assert "2 faces keep no picture and stay in the gallery" in output
    assert f"faces without a picture: {ids['posted'][0]}, {ids['nolm'][0]}" in output
    code, output = cli("--status")
    assert (
        code == 0
        and f"g: done, w600k_mbf -> {SFACE} (128 dims, arcface alignment) into 'g2'; 6/6 faces" in output
    )
    assert cli("--cancel") == (1, "error: gallery 'g' has no unfinished move to cancel\n")


def test_a_server_start_takes_up_a_move_whose_runner_died(url: str, models_dir: Path) -> None:
    """What a server does at start (`Reembedder.resume_interrupted`): a move left running by a runner
    that went silent is taken up once its lease has run out, and finished."""
    sface = ModelTag(SFACE, "605fd41aea0d81883ea90b78b62a5bea", 128)
    store = open_store(url)
    scheduler = InferenceScheduler()
    try:
        fill(store, np.random.default_rng(36))
        store.reembed_begin(ReembedJob("g", sface, "arcface", SOURCE, into="g2"), "dead", 60.0)
        first = store.reembed_todo("g", False, 0, 2)
        written = unit(np.random.default_rng(0), 2, 128)
        store.reembed_put("g", "dead", False, [i for i, _ in first], written)
        settings = Settings(models_dir=models_dir, threads=2, reembed_lease_s=2.0)
        mover = Reembedder(lambda: store, settings, scheduler)
        started = time.monotonic()
        mover.resume_interrupted().join(60)
        assert time.monotonic() - started > 1.0  # it waited for the dead runner's lease
        deadline = time.monotonic() + 60
        while (job := store.reembed_job("g")).state == "running" and time.monotonic() < deadline:  # type: ignore[union-attr]
            time.sleep(0.1)
        assert (job.state, job.faces, job.owner) == ("done", 6, None)  # type: ignore[union-attr]
        assert store.gallery("g2").faces == 6  # type: ignore[union-attr]
        # the two vectors the dead runner wrote were kept, not embedded again
        kept = np.stack([f.embedding for f in store.faces("g2", "ann", with_embeddings=True)])  # ann's two
        assert np.allclose(kept, written, atol=1e-6)
        mover.close()
    finally:
        scheduler.close()
        store.close()
