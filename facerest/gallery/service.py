"""Enrol, identify (1:N) and verify (1:1): the pipeline's embeddings against a gallery store.

Every method blocks (inference, database): call it from a worker thread, never the event loop.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from facerest.config import Settings
from facerest.errors import (
    BadInput,
    FaceRestError,
    FeatureUnavailable,
    ModelMismatch,
    NoFace,
    NotFound,
    Overloaded,
    SearchTooLarge,
    StorageUnavailable,
    TooManyEmbeddings,
    TooManyFaces,
)
from facerest.events import Candidate, EventBus, FacesRecognized, GalleryChanged, SeenFace
from facerest.gallery import calibration as calib
from facerest.gallery import erasure
from facerest.gallery.calibration import Calibration, Decision
from facerest.gallery.pages import Page, decode_cursor, paged
from facerest.gallery.people import UNSORTED, FeedbackStore, PersonCluster, check_faces, cluster_unsorted
from facerest.gallery.reembed import Reembedder, recognizer_tag
from facerest.gallery.review import ReviewQueue, wants_review
from facerest.gallery.store import (
    GalleryInfo,
    GalleryStore,
    ModelTag,
    NewFace,
    ReembedJob,
    ReviewBounds,
    ReviewItem,
    SearchResult,
    StoredFace,
    SubjectMatch,
    SubjectSummary,
    check_page,
    mismatch_message,
)
from facerest.imaging.crops import FaceCrop, face_crop
from facerest.imaging.marks import FaceMark
from facerest.imaging.quality import Floors, Quality, shortfalls
from facerest.logs import request_id
from facerest.models.catalog import Catalog
from facerest.models.faces import Face
from facerest.models.recognition import Recognizer
from facerest.pipeline import ExtractOptions, FaceAnalyzer, ImageInput

log = logging.getLogger(__name__)

#: for recognizers the catalogue gives no calibrated threshold: a cautious cosine for ArcFace models
FALLBACK_THRESHOLD = 0.35

# One rule for gallery and subject names, wherever a name comes in (path, body, CLI): a name
# must survive a round trip through a URL path segment, or it would be stored but unreachable
# (a "/" splits the segment; "." and ".." are removed by clients that normalise paths; "\\"
# is a separator to some proxies). The API schema declares the same rule (api/schemas.py).
MAX_NAME_LENGTH = 200
NAME_PATTERN = r"^[^/\\\x00-\x1f\x7f]+$"
NAME_RULE = f"1 to {MAX_NAME_LENGTH} printable characters, without '/' or '\\', and not '.' or '..'"


def name_problem(name: str) -> str | None:
    """Why `name` cannot name a gallery or subject, or None."""
    if (
        not name
        or len(name) > MAX_NAME_LENGTH
        or not name.isprintable()
        or "/" in name
        or "\\" in name
        or name in (".", "..")
    ):
        return f"must be {NAME_RULE}"
    return None


#: subjects a search proposes per face when a cluster's name is suggested
SUGGEST_TOP_K = 5
#: how long GET .../clusters reuses a clustering of unchanged faces
CLUSTERS_KEEP_S = 30.0

#: queries x gallery faces compared per call into the store: bounds the similarity matrix of
#: one search to 16 MB however many queries it holds (FACEREST_MAX_SEARCH_COMPARISONS bounds the work)
SEARCH_CHUNK_COMPARISONS = 4_000_000


def check_name(kind: str, name: str) -> str:
    problem = name_problem(name)
    if problem is not None:
        raise BadInput(f"{kind} name {problem}")
    return name


def check_embedding_count(count: int, settings: Settings) -> None:
    if count > settings.max_embeddings_per_body:
        raise TooManyEmbeddings(
            f"{count} embeddings in one body; the limit is {settings.max_embeddings_per_body}"
        )


def unit_vector(values: Sequence[float]) -> np.ndarray | None:
    """`values` scaled to unit length, as float32; None when zero or not finite.

    Computed in float64 after dividing by the largest component, so finite vectors of any
    magnitude (1e20 overflows a float32 norm, 1e-30 underflows it) normalise correctly."""
    array = np.asarray(values, np.float64)
    if array.ndim != 1 or array.size == 0 or not np.isfinite(array).all():
        return None
    largest = float(np.abs(array).max())
    if largest == 0.0:
        return None
    array = array / largest
    return (array / np.linalg.norm(array)).astype(np.float32)


def image_hash(image: np.ndarray) -> str:
    """sha256 of the decoded pixels: the same picture sent as base64 or by URL hashes the same."""
    digest = hashlib.sha256(str(image.shape).encode())
    digest.update(np.ascontiguousarray(image).data)
    return digest.hexdigest()


@dataclass(slots=True)
class FoundFace:
    embedding: np.ndarray
    bbox: list[float] | None
    prob: float | None
    quality: Quality | None = None
    issues: list[str] = field(default_factory=list)  # why it is below the enrolment floors
    landmarks: np.ndarray | None = None  # (5, 2), image pixels
    #: the pipeline's record (attributes, landmarks) when the caller chose the detection options
    face: Face | None = None


@dataclass(slots=True)
class ImageFaces:
    """The faces found in one input (an image or a posted embedding), or why it failed."""

    faces: list[FoundFace] = field(default_factory=list)
    image_hash: str | None = None
    error: FaceRestError | None = None
    image: np.ndarray | None = None  # the pixels, while crops may still be cut from them


@dataclass(slots=True)
class Enrolled:
    added: list[tuple[int, FoundFace]]
    failed: list[tuple[int, str]]
    #: pairs of the subject's face ids from one picture: two people in one subject (move one)
    same_photo: list[tuple[int, int]] = field(default_factory=list)


@dataclass(slots=True)
class Identified:
    face: FoundFace
    subject: str | None  # the best match when at or above the threshold
    matches: list[SubjectMatch]
    fmrs: list[float | None] = field(default_factory=list)  # estimated FMR at each match's score
    image_hash: str | None = None  # of the picture it is in ("not X" feedback names it)


@dataclass(slots=True)
class Moved:
    subject: str | None  # None: back to the unsorted faces
    moved: int
    same_photo: list[tuple[int, int]] = field(default_factory=list)
    face_ids: list[int] = field(default_factory=list)  # of assigned review items: the new faces


def same_photo(faces: Sequence[StoredFace]) -> list[tuple[int, int]]:
    """Pairs of faces (ids) taken from one picture: one person appears once in a photo."""
    first: dict[str, int] = {}
    pairs = []
    for face in faces:
        if face.image_hash is None:
            continue
        if face.image_hash in first:
            pairs.append((first[face.image_hash], face.face_id))
        else:
            first[face.image_hash] = face.face_id
    return pairs


#: one clustering at a time per process: each holds memory in the square of its faces
_CLUSTERING = threading.Lock()


class GalleryService:
    def __init__(
        self,
        store: GalleryStore | None,
        analyzer: FaceAnalyzer,
        settings: Settings,
        store_error: str = "the gallery storage is not open",
        events: EventBus | None = None,
    ) -> None:
        """`store` None: the storage could not be opened (`store_error` says why); verifying two
        images or embeddings still works, everything that needs the gallery answers 503. `events`:
        where searches publish what they saw and writes what they changed (the review queue,
        started here when FACEREST_PEOPLE_REVIEW is on, listens)."""
        self._store = store
        self._store_error = store_error
        self.analyzer = analyzer
        self.settings = settings
        self.events = events or EventBus()
        recognizer = analyzer.models.recognizer
        self.model: ModelTag | None = None
        self.default_threshold = FALLBACK_THRESHOLD
        if isinstance(recognizer, Recognizer):
            entry = recognizer.entry
            self.model = recognizer_tag(recognizer, settings)
            if entry.verify_threshold is None:
                log.warning(
                    "%s has no calibrated verify_threshold in the catalogue; using %.2f",
                    entry.name,
                    FALLBACK_THRESHOLD,
                )
            else:
                self.default_threshold = entry.verify_threshold
        self.calibration = self._calibration(settings)
        self._people: FeedbackStore | None = None
        #: writes through this server (a kept clustering is stale after one)
        self._generation = 0
        self._clusters: dict[str, tuple[tuple, float, Decision, list[PersonCluster]]] = {}
        #: galleries moving to another recognizer (issue 32): its own threads, the target loaded
        #: for a move and released after, batches through this server's scheduler
        self.reembeds = Reembedder(
            lambda: self.store,
            settings,
            analyzer.scheduler,
            self._moved,
            own=recognizer if isinstance(recognizer, Recognizer) else None,
        )
        self.review: ReviewQueue | None = None
        if settings.people_review and store is not None and self.model is not None:
            self.review = ReviewQueue(
                self.events,
                lambda: self.store,
                self.review_bounds,
                self.decision(fmr=settings.verify_fmr).threshold,
                self._review_candidates,
                settings.people_review_margin,
                self.model,
            )

    @property
    def review_bounds(self) -> ReviewBounds:
        return ReviewBounds(self.settings.people_review_max_items, self.settings.people_review_max_age_s)

    def _calibration(self, settings: Settings) -> Calibration | None:
        """The user's calibration file, else the one the catalogue ships for the recognizer."""
        if self.model is None:
            return None
        if settings.calibration_file is not None:
            found = calib.load(settings.calibration_file)
            if found.model != self.model.name:
                raise BadInput(
                    f"FACEREST_CALIBRATION_FILE {settings.calibration_file} calibrates {found.model}, "
                    f"not the recognizer in use ({self.model.name})"
                )
            found.source = f"FACEREST_CALIBRATION_FILE:{settings.calibration_file.name}"
            return found
        found = calib.shipped(self.model.name)
        if found is None:
            log.warning("no calibration for %s: fmr/fpir unavailable, decisions by cosine", self.model.name)
        return found

    @property
    def store(self) -> GalleryStore:
        if self._store is None:
            raise StorageUnavailable(f"gallery storage unavailable: {self._store_error}")
        return self._store

    def close(self) -> None:
        self.reembeds.close()
        if self.review is not None:
            self.review.close()
        if self._store is not None:
            self._store.close()
        if self._people is not None:
            self._people.close()

    # --- helpers ---

    def _model(self) -> ModelTag:
        if self.model is None:
            raise FeatureUnavailable("galleries need a face recognizer; set FACEREST_REC_NAME")
        return self.model

    def threshold(self, asked: float | None) -> float:
        return self.decision(threshold=asked).threshold

    def decision(
        self,
        threshold: float | None = None,
        fmr: float | None = None,
        fpir: float | None = None,
        subjects: int | None = None,
    ) -> Decision:
        """The decision point a request asked for, else the server's default error rate
        (FACEREST_VERIFY_FMR 1:1; FACEREST_SEARCH_FPIR over `subjects` 1:N)."""
        return calib.decide(
            self.calibration,
            threshold=threshold,
            fmr=fmr,
            fpir=fpir,
            subjects=subjects,
            default_fmr=self.settings.verify_fmr,
            default_fpir=self.settings.search_fpir,
            fallback_threshold=self.default_threshold,
        )

    def fmr_at(self, similarity: float) -> float | None:
        return None if self.calibration is None else self.calibration.fmr_at(similarity)

    def require(self, gallery: str) -> GalleryInfo:
        """The gallery, built with the recognizer in use; NotFound or ModelMismatch otherwise."""
        model = self._model()
        info = self.store.gallery(gallery)
        if info is None:
            raise NotFound(f"no gallery {gallery!r}")
        if info.model != model:
            raise ModelMismatch(mismatch_message(gallery, info.model, model))
        return info

    def embeddings(self, vectors: Sequence[Sequence[float]]) -> list[np.ndarray]:
        """Posted embeddings, checked against the recognizer in use and scaled to unit length."""
        dim = self._model().dim
        check_embedding_count(len(vectors), self.settings)
        out = []
        for i, vector in enumerate(vectors):
            if len(vector) != dim:
                raise BadInput(f"embedding {i} has {len(vector)} values; {self._model().name} gives {dim}")
            unit = unit_vector(vector)
            if unit is None:
                raise BadInput(f"embedding {i} is zero or not finite")
            out.append(unit)
        return out

    def detect(
        self,
        images: Sequence[ImageInput],
        largest_only: bool,
        marks: list[list[FaceMark] | None] | None = None,
        options: ExtractOptions | None = None,
    ) -> list[ImageFaces]:
        """Faces with embeddings in each image (only the largest one when asked); `marks`: per
        image, the faces a client chose (facerest/imaging/marks.py), taken instead of detected.
        `options`: the caller's detection options (threshold, limit, attributes: the compatibility
        APIs); each face then keeps its pipeline record in `FoundFace.face`."""
        self._model()
        if not images:
            return []
        keep = options is not None
        if options is None:
            options = ExtractOptions(threshold=self.settings.det_thresh)
        options = replace(
            options,
            limit_faces=1 if largest_only else options.limit_faces,
            return_quality=True,
            extract_embedding=True,
            embed_only=False,
            marks=marks,
        )
        results = self.analyzer.process(list(images), options)
        out = []
        for image, result in zip(images, results, strict=True):
            if isinstance(image, FaceRestError):
                out.append(ImageFaces(error=image))
            elif not result.ok:
                out.append(ImageFaces(error=FaceRestError(result.error or "failed")))
            else:
                found = [self._found(f, keep) for f in result.faces]
                out.append(ImageFaces(found, image_hash(image), image=image))
        return out

    def _crop(self, found: ImageFaces, face: FoundFace) -> FaceCrop | None:
        """The crop kept with a face (FACEREST_GALLERY_KEEP_CROPS), cut from its image."""
        if not self.settings.gallery_keep_crops or found.image is None or face.bbox is None:
            return None
        return face_crop(found.image, face.bbox, face.landmarks, self.settings.gallery_crop_size)

    @property
    def floors(self) -> Floors:
        s = self.settings
        return Floors(
            s.enrol_min_sharpness,
            s.enrol_min_face_size,
            s.enrol_max_yaw,
            s.enrol_max_cut,
            s.enrol_min_quality,
        )

    def _found(self, face: Face, keep: bool = False) -> FoundFace:
        assert face.embedding is not None  # the recognizer ran: extract_embedding is on
        issues = shortfalls(face.quality, self.floors) if face.quality is not None else []
        return FoundFace(
            face.embedding,
            [float(v) for v in face.bbox],
            float(face.score),
            face.quality,
            issues,
            face.landmarks,
            face if keep else None,
        )

    def one_face(self, images: Sequence[ImageInput]) -> list[np.ndarray]:
        """The largest face's embedding of each image; NoFace (or the image's error) otherwise."""
        vectors = []
        for i, found in enumerate(self.detect(images, largest_only=True)):
            if found.error is not None:
                raise found.error
            if not found.faces:
                raise NoFace(f"no face found in image {i}")
            vectors.append(found.faces[0].embedding)
        return vectors

    # --- what the endpoints do ---

    @property
    def people(self) -> FeedbackStore:
        """Feedback and cluster labels (opened on first use, beside the SQLite gallery)."""
        if self._people is None:
            self._people = FeedbackStore(self.settings.data_dir / "people.db")
        return self._people

    def feedback_store(self) -> FeedbackStore | None:
        """The feedback file when there is one (a deletion has nothing to forget otherwise)."""
        return self.people if self._feedback_given() else None

    def enrol(
        self,
        gallery: str,
        subject: str | None,
        images: Sequence[ImageInput] = (),
        embeddings: Sequence[Sequence[float]] = (),
        all_faces: bool = False,
        force: bool = False,
        marks: list[list[FaceMark] | None] | None = None,
    ) -> Enrolled:
        """Faces below the quality floors (FACEREST_ENROL_*) are refused with the reason, listed
        in `failed` by image index, unless `force`. Each face keeps its crop (cut here, while the
        image is in memory); `same_photo` names faces of the subject that share a picture."""
        check_name("gallery", gallery)
        if subject is None:  # unsorted: to be grouped into people by clustering
            subject = UNSORTED
        else:
            check_name("subject", subject)
        model = self._model()
        if not images and not embeddings:
            raise BadInput("nothing to enrol: send images or embeddings")
        posted = self.embeddings(embeddings)
        new: list[FoundFace] = []
        records: list[NewFace] = []
        failed: list[tuple[int, str]] = []
        for i, found in enumerate(self.detect(images, largest_only=not all_faces, marks=marks)):
            if found.error is not None:
                failed.append((i, found.error.detail))
            elif not found.faces:
                failed.append((i, "no face found"))
            for face in found.faces:
                if face.issues and not force:
                    failed.append((i, "; ".join(face.issues)))
                    continue
                new.append(face)
                score = None if face.quality is None else face.quality.score
                crop = self._crop(found, face)
                records.append(
                    NewFace(face.embedding, found.image_hash, face.bbox, face.prob, crop, score, "image")
                )
            found.image = None  # the crops are cut: the pixels can go
        for vector in posted:
            new.append(FoundFace(vector, None, None))
            records.append(NewFace(vector, source="embedding"))
        ids = self.store.add_faces(gallery, subject, model, records) if records else []
        warnings: list[tuple[int, int]] = []
        if ids:
            self._changed(gallery, "enrol", subject, ids)
            if subject != UNSORTED and any(r.image_hash for r in records):
                mine = set(ids)
                warnings = [p for p in same_photo(self.store.faces(gallery, subject)) if mine & set(p)]
        return Enrolled(list(zip(ids, new, strict=True)), failed, warnings)

    def _moved(self, job: ReembedJob) -> None:
        """A gallery moved to another recognizer (or a new gallery made by moving one)."""
        self._changed(
            job.into or job.gallery, "reembed", model=job.target.name, source=job.gallery, faces=job.faces
        )

    def _changed(
        self, gallery: str, action: str, subject: str | None = None, ids: Sequence[int] = (), **detail: object
    ) -> None:
        self._generation += 1
        self.events.publish(
            GalleryChanged(gallery, action, None if subject == UNSORTED else subject, list(ids), dict(detail))
        )

    def search(
        self,
        gallery: str,
        images: Sequence[ImageInput] = (),
        embeddings: Sequence[Sequence[float]] = (),
        top_k: int = 5,
        threshold: float | None = None,
        fmr: float | None = None,
        fpir: float | None = None,
        exact: bool = False,
        detect_options: ExtractOptions | None = None,
        emit: bool = True,
    ) -> tuple[Decision, list[list[Identified] | FaceRestError]]:
        """The decision point in force, and one entry per image, then one per posted embedding:
        its faces identified, or its error. `detect_options`: see `detect`. `emit`: publish what
        was seen (FacesRecognized); off where the caller publishes its own event (video tracks)."""
        info = self.require(gallery)
        decision = self.decision(threshold, fmr, fpir, subjects=info.subjects)
        limit = decision.threshold
        inputs: list[ImageFaces] = self.detect(images, largest_only=False, options=detect_options)
        inputs += [ImageFaces([FoundFace(v, None, None)]) for v in self.embeddings(embeddings)]
        queries = [face for found in inputs for face in found.faces]
        # one more than asked: unsorted faces (one reserved subject) are never a match. A face the
        # index would leave unnamed is searched again exactly: an index miss never turns a known
        # face into an unknown one
        results = self._search(gallery, info.faces, [f.embedding for f in queries], top_k + 1, exact, limit)
        hashes = {found.image_hash for found in inputs if found.image_hash is not None}
        # "not X" feedback; a server that never took any (no people.db) reads nothing, so search
        # works on a read-only data folder too
        refused = (
            self.people.excluded_for_hashes(gallery, hashes) if hashes and self._feedback_given() else {}
        )
        answers = iter(results)
        out: list[list[Identified] | FaceRestError] = []
        for found in inputs:
            if found.error is not None:
                out.append(found.error)
                continue
            faces = []
            for face in found.faces:
                banned = refused.get(found.image_hash or "", set()) | {UNSORTED}
                matches = [m for m in next(answers).matches if m.subject not in banned][:top_k]
                best = matches[0] if matches and matches[0].similarity >= limit else None
                fmrs = [self.fmr_at(m.similarity) for m in matches]
                faces.append(
                    Identified(face, best.subject if best else None, matches, fmrs, found.image_hash)
                )
            out.append(faces)
        if emit:
            self._publish_seen(gallery, inputs, out, limit)
        return decision, out

    def _publish_seen(
        self,
        gallery: str,
        inputs: list[ImageFaces],
        answers: list[list[Identified] | FaceRestError],
        threshold: float,
    ) -> None:
        """What the search saw, for the event stream; the faces a person should look at (unknown,
        or named with little margin, and good enough to enrol) carry their crop for the review
        queue. Nothing is built when nobody listens."""
        if not self.events.wants(FacesRecognized):
            return
        margin = self.settings.people_review_margin
        seen = []
        for found, answer in zip(inputs, answers, strict=False):
            if isinstance(answer, FaceRestError):
                continue
            for hit in answer:
                face = hit.face
                best = hit.matches[0].similarity if hit.matches else None
                review = (
                    found.image is not None
                    and not face.issues
                    and wants_review(hit.subject, best, threshold, margin)
                )
                item = SeenFace(
                    face.embedding,
                    face.bbox,
                    face.prob,
                    None if face.quality is None else face.quality.score,
                    hit.subject,
                    best,
                    threshold,
                    [Candidate(m.subject, m.similarity) for m in hit.matches],
                    found.image_hash,
                    review=review,
                )
                if review and (crop := self._crop(found, face)) is not None:
                    item.jpeg, item.crop_size, item.landmarks = (
                        crop.jpeg,
                        (crop.width, crop.height),
                        crop.landmarks,
                    )
                seen.append(item)
            found.image = None
        if seen:
            self.events.publish(FacesRecognized(gallery, "search", seen, ref=request_id.get()))

    def _review_candidates(self, gallery: str, face: SeenFace) -> list[tuple[str, float]]:
        """The closest subjects of a face the review queue got without them (a video track)."""
        info = self.store.gallery(gallery)
        if info is None:
            return []
        [result] = self._search(gallery, info.faces, [face.embedding], 4, floor=None)
        return [(m.subject, m.similarity) for m in result.matches if m.subject != UNSORTED]

    # --- people: unsorted faces, clustering, feedback (issue 20) ---

    def _suggestions(
        self, gallery: str, faces: int, threshold: float
    ) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
        """For a group of faces, the enrolled faces of the subjects it could be: those a search
        names for one of its faces at the decision point (the suggestion is the subject closest
        on average; a subject no face of the group reaches cannot be). Searched, not read whole:
        a gallery of 100,000 subjects costs a search per group, not 100,000 reads."""

        def candidates(vectors: np.ndarray) -> dict[str, np.ndarray]:
            results = self._search(gallery, faces, list(vectors), SUGGEST_TOP_K, floor=None)
            names = {m.subject for r in results for m in r.matches if m.similarity >= threshold} - {UNSORTED}
            enrolled = {}
            for name in sorted(names):
                vectors_of = [f.embedding for f in self.store.faces(gallery, name, with_embeddings=True)]
                if vectors_of:
                    enrolled[name] = np.stack([v for v in vectors_of if v is not None])
            return enrolled

        return candidates

    def cluster(
        self,
        gallery: str,
        threshold: float | None = None,
        fmr: float | None = None,
        recluster: bool = False,
    ) -> tuple[Decision, list[PersonCluster]]:
        """The gallery's unsorted faces grouped into people. The default decision follows their
        number, as search follows its subjects: FACEREST_SEARCH_FPIR over the comparisons of a
        face with all the others."""
        info = self.require(gallery)
        # issue 28: its memory grows with the square of the faces (10,000: +1.6 GB); counted before
        # any is read, and one clustering at a time per process
        count = dict(self.store.subjects(gallery)).get(UNSORTED, 0)
        if count > self.settings.cluster_max_faces:
            raise TooManyFaces(
                f"gallery {gallery!r} has {count} unsorted faces; one clustering groups at most "
                f"{self.settings.cluster_max_faces} (FACEREST_CLUSTER_MAX_FACES)"
            )
        if not _CLUSTERING.acquire(blocking=False):
            raise Overloaded("another clustering is running on this server; retry shortly")
        try:
            return self._cluster(gallery, info, threshold, fmr, recluster)
        finally:
            _CLUSTERING.release()

    def _cluster(
        self, gallery: str, info: GalleryInfo, threshold: float | None, fmr: float | None, recluster: bool
    ) -> tuple[Decision, list[PersonCluster]]:
        unsorted = self.store.faces(gallery, UNSORTED, with_embeddings=True)
        decision = self.decision(threshold, fmr, subjects=max(len(unsorted) - 1, 1))
        suggest = self._suggestions(gallery, info.faces, decision.threshold)
        return decision, cluster_unsorted(unsorted, suggest, decision, self.people, gallery, recluster)

    def feedback(
        self,
        gallery: str,
        different: Sequence[tuple[int, int]],
        not_subject: Sequence[tuple[int, str]],
        not_in_picture: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Store "these two faces are different people", "this face is not X" and "no face of
        this picture (its `image_hash`, as search answers it) is X"; NotFound for faces or subjects
        the gallery does not have (nothing is stored then)."""
        self.require(gallery)
        asked = {i for pair in different for i in pair} | {i for i, _ in not_subject}
        faces = {i: face for i in asked if (face := self.store.face(gallery, i)) is not None}
        check_faces(set(faces), sorted(asked), gallery)
        named = {s for _, s in not_subject} | {s for _, s in not_in_picture}
        unknown = sorted(s for s in named if s == UNSORTED or not self.store.faces_page(gallery, s, None, 1))
        if unknown:
            raise NotFound(f"no subject {', '.join(repr(s) for s in unknown[:5])} in gallery {gallery!r}")
        if any(a == b for a, b in different):
            raise BadInput("a face cannot be a different person from itself")
        self.people.add_different(gallery, different)
        self.people.add_not(
            gallery,
            [(i, subject, faces[i].image_hash) for i, subject in not_subject]
            + [(picture_key(digest), subject, digest) for digest, subject in not_in_picture],
        )

    def _search(
        self,
        gallery: str,
        gallery_faces: int,
        queries: list[np.ndarray],
        top_k: int,
        exact: bool = False,
        floor: float | None = None,
    ) -> list[SearchResult]:
        """The store's search, the work bounded and the similarity matrix made in slices."""
        if not queries:
            return []
        comparisons = len(queries) * gallery_faces
        if comparisons > self.settings.max_search_comparisons:
            raise SearchTooLarge(
                f"{len(queries)} queries against {gallery_faces} faces are {comparisons} comparisons; "
                f"the limit is {self.settings.max_search_comparisons}: send fewer queries per search"
            )
        step = max(1, SEARCH_CHUNK_COMPARISONS // max(1, gallery_faces))
        results: list[SearchResult] = []
        for start in range(0, len(queries), step):
            results += self.store.search(
                gallery, np.stack(queries[start : start + step]), top_k, exact, floor=floor
            )
        return results

    def subject_similarity(self, gallery: str, subject: str, vector: np.ndarray) -> float:
        """Similarity of `vector` to the subject's closest face."""
        self.require(gallery)
        faces = self.store.faces(gallery, subject, with_embeddings=True)
        if not faces:
            raise NotFound(f"no subject {subject!r} in gallery {gallery!r}")
        stacked = np.stack([f.embedding for f in faces if f.embedding is not None])
        return float((stacked @ vector).max())

    # --- the people API: pages, pictures, one deletion path, merge and move (issue 29) ---

    def create_gallery(self, gallery: str) -> tuple[GalleryInfo, bool]:
        """An empty gallery for the recognizer in use (a gallery is also made by its first
        enrolment); whether it is new."""
        check_name("gallery", gallery)
        model = self._model()
        existed = self.store.gallery(gallery) is not None
        self.store.add_faces(gallery, UNSORTED, model, [])  # ModelMismatch for another model's
        if not existed:
            self._changed(gallery, "create")
        return self.info(gallery), not existed

    def info(self, gallery: str) -> GalleryInfo:
        found = self.store.gallery(gallery)
        if found is None:
            raise NotFound(f"no gallery {gallery!r}")
        return found

    def galleries_page(
        self, limit: int, cursor: str | None, q: str | None, only: frozenset[str] | None = None
    ) -> Page[GalleryInfo]:
        """`only`: the galleries a key is limited to (issue 30); the page holds those alone."""
        after = decode_cursor(cursor, "galleries", [str])
        start = None if after is None else after[0]
        check_page(limit)
        if only is None:
            rows = self.store.galleries_page(start, limit + 1, q or None)
        else:  # a key names few galleries: each looked up, in the order the pages walk
            needle = (q or "").casefold()
            names = sorted(n for n in only if (start is None or n > start) and needle in n.casefold())
            rows = []
            for name in names:
                if (info := self.store.gallery(name)) is not None:
                    rows.append(info)
                    if len(rows) > limit:
                        break
        return paged(rows, limit, "galleries", lambda g: (g.name,))

    def subjects_page(
        self, gallery: str, limit: int, cursor: str | None, q: str | None
    ) -> Page[SubjectSummary]:
        after = decode_cursor(cursor, "subjects", [str])
        self.require(gallery)
        rows = self.store.subjects_page(
            gallery, None if after is None else after[0], check_page(limit) + 1, q or None
        )
        return paged(rows, limit, "subjects", lambda s: (s.subject,))

    def faces_page(
        self, gallery: str, subject: str | None, limit: int, cursor: str | None, q: str | None = None
    ) -> Page[StoredFace]:
        """A subject's faces (None: the unsorted ones) by id; NotFound for a subject without faces."""
        after = decode_cursor(cursor, "faces", [int])
        self.require(gallery)
        name = UNSORTED if subject is None else subject
        rows = self.store.faces_page(
            gallery, name, None if after is None else after[0], check_page(limit) + 1, q or None
        )
        if not rows and after is None and not q and subject is not None:
            raise NotFound(f"no subject {subject!r} in gallery {gallery!r}")
        return paged(rows, limit, "faces", lambda f: (f.face_id,))

    def clusters_page(
        self, gallery: str, limit: int, cursor: str | None, q: str | None
    ) -> tuple[Decision, Page[PersonCluster]]:
        """The unsorted faces' clusters (as `cluster`, incrementally), largest first, by (size,
        cluster id); `q`: the suggested subject's name contains it. The clustering is kept while
        the unsorted faces and the gallery's size stay as they are (and no write went through
        this server), at most CLUSTERS_KEEP_S: turning pages costs a clustering once."""
        after = decode_cursor(cursor, "clusters", [int, int])
        check_page(limit)
        info = self.require(gallery)
        ids = tuple(f.face_id for f in self.store.faces(gallery, UNSORTED))
        key = (ids, info.faces, info.subjects, self._generation)
        kept = self._clusters.get(gallery)
        if kept is not None and kept[0] == key and time.monotonic() < kept[1]:
            decision, clusters = kept[2], kept[3]
        else:
            decision, clusters = self.cluster(gallery)
            for group in clusters:  # kept for the ids and pictures only: the vectors can go
                for face in (*group.faces, *group.representatives):
                    face.embedding = None
            self._clusters[gallery] = (key, time.monotonic() + CLUSTERS_KEEP_S, decision, clusters)
        rows = sorted(clusters, key=lambda c: (-len(c.faces), c.cluster_id))
        if after is not None:
            rows = [c for c in rows if (-len(c.faces), c.cluster_id) > (-after[0], after[1])]
        if q:
            needle = q.casefold()
            rows = [c for c in rows if c.suggested_subject and needle in c.suggested_subject.casefold()]
        return decision, paged(rows[: limit + 1], limit, "clusters", lambda c: (len(c.faces), c.cluster_id))

    def face(self, gallery: str, face_id: int) -> StoredFace:
        found = self.store.face(gallery, face_id)
        if found is None:
            raise NotFound(f"no face {face_id} in gallery {gallery!r}")
        return found

    def face_image(self, gallery: str, face_id: int) -> FaceCrop:
        crop = self.store.face_crop(gallery, face_id)
        if crop is None:
            self.face(gallery, face_id)  # no such face: says so
            raise NotFound(
                f"face {face_id} of gallery {gallery!r} has no picture (enrolled from an embedding, "
                "or with FACEREST_GALLERY_KEEP_CROPS off)"
            )
        return crop

    # deleting goes through the one deletion path (facerest/gallery/erasure.py, issue 30): rows,
    # crops, review items, index entries, feedback and the bytes on disk; then the event

    def delete_face(self, gallery: str, face_id: int) -> erasure.Removed:
        """The face, its crop, its index entry and what was said about it."""
        removed = erasure.delete_faces(self.store, self.feedback_store(), gallery, [face_id])
        if not removed.faces:
            raise NotFound(f"no face {face_id} in gallery {gallery!r}")
        self._changed(gallery, "delete_face", ids=removed.faces)
        return removed

    def delete_faces(self, gallery: str, face_ids: Sequence[int]) -> erasure.Removed:
        """Those of `face_ids` that are faces of the gallery (the others are skipped: CompreFace's
        "delete several examples"), each as `delete_face` deletes one."""
        removed = erasure.delete_faces(self.store, self.feedback_store(), gallery, face_ids)
        if removed.faces:
            self._changed(gallery, "delete_face", ids=removed.faces)
        return removed

    def delete_subject(self, gallery: str, subject: str) -> erasure.Removed:
        """Every face of the subject, the review items naming it, and the feedback about both."""
        removed = erasure.delete_subject(
            self.store, self.feedback_store(), gallery, subject, same_person=self.decision().threshold
        )
        if not removed.faces:
            raise NotFound(f"no subject {subject!r} in gallery {gallery!r}")
        self._changed(gallery, "delete_subject", subject, removed.faces)
        return removed

    def delete_gallery(self, gallery: str) -> erasure.Removed:
        """Every face, crop, review item and index entry of the gallery, and its feedback."""
        removed = erasure.delete_gallery(self.store, self.feedback_store(), gallery)
        if removed is None:
            raise NotFound(f"no gallery {gallery!r}")
        self._changed(gallery, "delete_gallery")
        return removed

    def _feedback_given(self) -> bool:
        """Whether people.db exists (a server that never took feedback need not create it)."""
        return self._people is not None or (self.settings.data_dir / "people.db").exists()

    def rename(self, gallery: str, subject: str, new_name: str) -> int:
        check_name("subject", new_name)
        moved = self.store.rename_subject(gallery, subject, new_name)
        self._changed(gallery, "rename", new_name, renamed_from=subject)
        return moved

    def merge(self, gallery: str, subject: str, into: str) -> Moved:
        """Every face of `subject` into `into` (created when new)."""
        check_name("subject", into)
        if subject == into:
            raise BadInput("a subject cannot be merged into itself")
        moved = self.store.merge_subjects(gallery, subject, into)
        self._changed(gallery, "merge", into, merged_from=subject)
        return Moved(into, moved, same_photo(self.store.faces(gallery, into)))

    def move(
        self, gallery: str, face_ids: Sequence[int], subject: str | None, require_new: bool = False
    ) -> Moved:
        """The faces to `subject` (created when new; `require_new`: Conflict when it exists), or
        back to the unsorted faces (None): a split when the subject is new."""
        if subject is not None:
            check_name("subject", subject)
        if not face_ids:
            raise BadInput("name at least one face to move")
        target = UNSORTED if subject is None else subject
        moved = self.store.move_faces(gallery, list(face_ids), target, require_new)
        self._changed(gallery, "move", target, face_ids)
        pairs = [] if subject is None else same_photo(self.store.faces(gallery, subject))
        mine = set(face_ids)
        return Moved(subject, moved, [p for p in pairs if mine & set(p)])

    def set_representative(self, gallery: str, subject: str, face_id: int) -> None:
        self.store.set_representative(gallery, subject, face_id)

    # --- the review queue (issue 29) ---

    def review_page(self, gallery: str, limit: int, cursor: str | None, q: str | None) -> Page[ReviewItem]:
        after = decode_cursor(cursor, "review", [int, int])
        self.require(gallery)
        rows = self.store.review_page(
            gallery, after, check_page(limit) + 1, q or None, self.settings.people_review_max_age_s
        )
        return paged(rows, limit, "review", lambda r: (r.group, r.review_id))

    def review_image(self, gallery: str, review_id: int) -> FaceCrop:
        crop = self.store.review_crop(gallery, review_id)
        if crop is None:
            raise NotFound(f"no picture of review item {review_id} in gallery {gallery!r}")
        return crop

    def _review_items(self, gallery: str, ids: Sequence[int]) -> list[ReviewItem]:
        if not ids:
            raise BadInput("name at least one review item")
        items = self.store.review_items(gallery, list(ids))
        missing = sorted(set(ids) - {i.review_id for i in items})
        if missing:
            raise NotFound(f"no review item {', '.join(map(str, missing[:5]))} in gallery {gallery!r}")
        return items

    def review_assign(
        self, gallery: str, ids: Sequence[int], subject: str, require_new: bool = False
    ) -> Moved:
        """The items enrolled into `subject` (a new subject with `require_new`), off the queue."""
        check_name("subject", subject)
        if not ids:
            raise BadInput("name at least one review item")
        face_ids = self.store.assign_review(gallery, list(ids), subject, self._model(), require_new)
        self._changed(gallery, "review", subject, face_ids)
        mine = set(face_ids)
        pairs = [p for p in same_photo(self.store.faces(gallery, subject)) if mine & set(p)]
        return Moved(subject, len(face_ids), pairs, face_ids)

    def review_not(self, gallery: str, ids: Sequence[int], subject: str) -> int:
        """ "Not `subject`": kept on the items (never suggested again), and searches of the same
        pictures never name `subject`."""
        check_name("subject", subject)
        items = self._review_items(gallery, ids)
        changed = self.store.exclude_review(gallery, [i.review_id for i in items], subject)
        pictures = [(picture_key(i.image_hash), subject, i.image_hash) for i in items if i.image_hash]
        if pictures:
            self.people.add_not(gallery, pictures)
        return changed

    def review_dismiss(self, gallery: str, ids: Sequence[int]) -> int:
        self._review_items(gallery, ids)
        return self.store.delete_review(gallery, list(ids))


def same_person_threshold(settings: Settings, model: str) -> float:
    """The 1:1 decision point (FACEREST_VERIFY_FMR) of a gallery built with `model`, without
    loading the model (`facerest gallery erase-subject`): what `GalleryService.decision()` gives a
    server running it, from the same calibration file, shipped calibration or catalogue value."""
    calibration = None
    if settings.calibration_file is not None:
        found = calib.load(settings.calibration_file)
        calibration = found if found.model == model else None
    if calibration is None:
        calibration = calib.shipped(model)
    entry = Catalog.load(settings.models_dir / "catalog.json").get(model)
    fallback = entry.verify_threshold if entry is not None else None
    return calib.decide(
        calibration,
        default_fmr=settings.verify_fmr,
        default_fpir=settings.search_fpir,
        fallback_threshold=FALLBACK_THRESHOLD if fallback is None else fallback,
    ).threshold


def picture_key(image_hash: str) -> int:
    """The id a "not X" said of a whole picture is kept under in the feedback store: negative, so
    it is never a face's (face ids start at 1), and the same for every word said of one picture."""
    return -int(image_hash[:15], 16)
