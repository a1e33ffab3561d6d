"""Enrol, identify (1:N) and verify (1:1): the pipeline's embeddings against a gallery store.

Every method blocks (inference, database): call it from a worker thread, never the event loop.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

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
from facerest.gallery import calibration as calib
from facerest.gallery.calibration import Calibration, Decision
from facerest.gallery.people import UNSORTED, FeedbackStore, PersonCluster, check_faces, cluster_unsorted
from facerest.gallery.store import (
    GalleryInfo,
    GalleryStore,
    ModelTag,
    NewFace,
    SearchResult,
    StoredFace,
    SubjectMatch,
    mismatch_message,
)
from facerest.imaging.quality import Floors, Quality, shortfalls
from facerest.models.faces import Face
from facerest.models.store import ModelStore, md5_of
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


@dataclass(slots=True)
class ImageFaces:
    """The faces found in one input (an image or a posted embedding), or why it failed."""

    faces: list[FoundFace] = field(default_factory=list)
    image_hash: str | None = None
    error: FaceRestError | None = None


@dataclass(slots=True)
class Enrolled:
    added: list[tuple[int, FoundFace]]
    failed: list[tuple[int, str]]


@dataclass(slots=True)
class Identified:
    face: FoundFace
    subject: str | None  # the best match when at or above the threshold
    matches: list[SubjectMatch]
    fmrs: list[float | None] = field(default_factory=list)  # estimated FMR at each match's score


#: one clustering at a time per process: each holds memory in the square of its faces
_CLUSTERING = threading.Lock()


class GalleryService:
    def __init__(
        self,
        store: GalleryStore | None,
        analyzer: FaceAnalyzer,
        settings: Settings,
        store_error: str = "the gallery storage is not open",
    ) -> None:
        """`store` None: the storage could not be opened (`store_error` says why); verifying two
        images or embeddings still works, everything that needs the gallery answers 503."""
        self._store = store
        self._store_error = store_error
        self.analyzer = analyzer
        self.settings = settings
        recognizer = analyzer.models.recognizer
        self.model: ModelTag | None = None
        self.default_threshold = FALLBACK_THRESHOLD
        if recognizer is not None:
            entry = recognizer.entry
            md5 = entry.main_file.md5 or md5_of(ModelStore(settings.models_dir).path(entry))
            dim = getattr(recognizer, "dim", None)
            self.model = ModelTag(entry.name, md5, dim if isinstance(dim, int) else 512)
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

    def detect(self, images: Sequence[ImageInput], largest_only: bool) -> list[ImageFaces]:
        """Faces with embeddings in each image (only the largest one when asked)."""
        self._model()
        if not images:
            return []
        options = ExtractOptions(
            threshold=self.settings.det_thresh, limit_faces=1 if largest_only else 0, return_quality=True
        )
        results = self.analyzer.process(list(images), options)
        out = []
        for image, result in zip(images, results, strict=True):
            if isinstance(image, FaceRestError):
                out.append(ImageFaces(error=image))
            elif not result.ok:
                out.append(ImageFaces(error=FaceRestError(result.error or "failed")))
            else:
                out.append(ImageFaces([self._found(f) for f in result.faces], image_hash(image)))
        return out

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

    def _found(self, face: Face) -> FoundFace:
        assert face.embedding is not None  # the recognizer ran: extract_embedding is on
        issues = shortfalls(face.quality, self.floors) if face.quality is not None else []
        return FoundFace(
            face.embedding, [float(v) for v in face.bbox], float(face.score), face.quality, issues
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

    def enrol(
        self,
        gallery: str,
        subject: str | None,
        images: Sequence[ImageInput] = (),
        embeddings: Sequence[Sequence[float]] = (),
        all_faces: bool = False,
        force: bool = False,
    ) -> Enrolled:
        """Faces below the quality floors (FACEREST_ENROL_*) are refused with the reason, listed
        in `failed` by image index, unless `force`."""
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
        hashes: list[str | None] = []
        failed: list[tuple[int, str]] = []
        for i, found in enumerate(self.detect(images, largest_only=not all_faces)):
            if found.error is not None:
                failed.append((i, found.error.detail))
            elif not found.faces:
                failed.append((i, "no face found"))
            for face in found.faces:
                if face.issues and not force:
                    failed.append((i, "; ".join(face.issues)))
                    continue
                new.append(face)
                hashes.append(found.image_hash)
        for vector in posted:
            new.append(FoundFace(vector, None, None))
            hashes.append(None)
        records = [
            NewFace(face.embedding, digest, face.bbox, face.prob)
            for face, digest in zip(new, hashes, strict=True)
        ]
        ids = self.store.add_faces(gallery, subject, model, records) if records else []
        return Enrolled(list(zip(ids, new, strict=True)), failed)

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
    ) -> tuple[Decision, list[list[Identified] | FaceRestError]]:
        """The decision point in force, and one entry per image, then one per posted embedding:
        its faces identified, or its error."""
        info = self.require(gallery)
        decision = self.decision(threshold, fmr, fpir, subjects=info.subjects)
        limit = decision.threshold
        inputs: list[ImageFaces] = self.detect(images, largest_only=False)
        inputs += [ImageFaces([FoundFace(v, None, None)]) for v in self.embeddings(embeddings)]
        queries = [face for found in inputs for face in found.faces]
        # one more than asked: unsorted faces (one reserved subject) are never a match. A face the
        # index would leave unnamed is searched again exactly: an index miss never turns a known
        # face into an unknown one
        results = self._search(gallery, info.faces, [f.embedding for f in queries], top_k + 1, exact, limit)
        hashes = {found.image_hash for found in inputs if found.image_hash is not None}
        # "not X" feedback; a server that never took any (no people.db) reads nothing, so search
        # works on a read-only data folder too
        feedback_given = self._people is not None or (self.settings.data_dir / "people.db").exists()
        refused = self.people.excluded_for_hashes(gallery, hashes) if hashes and feedback_given else {}
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
                faces.append(Identified(face, best.subject if best else None, matches, fmrs))
            out.append(faces)
        return decision, out

    # --- people: unsorted faces, clustering, feedback (issue 20) ---

    def _all_faces(self, gallery: str) -> dict[str, list[StoredFace]]:
        return {
            subject: self.store.faces(gallery, subject, with_embeddings=True)
            for subject, _ in self.store.subjects(gallery)
        }

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
        self.require(gallery)
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
            return self._cluster(gallery, threshold, fmr, recluster)
        finally:
            _CLUSTERING.release()

    def _cluster(
        self, gallery: str, threshold: float | None, fmr: float | None, recluster: bool
    ) -> tuple[Decision, list[PersonCluster]]:
        by_subject = self._all_faces(gallery)
        unsorted = by_subject.pop(UNSORTED, [])
        decision = self.decision(threshold, fmr, subjects=max(len(unsorted) - 1, 1))
        enrolled = {
            subject: np.stack([f.embedding for f in faces if f.embedding is not None])
            for subject, faces in by_subject.items()
            if faces
        }
        return decision, cluster_unsorted(unsorted, enrolled, decision, self.people, gallery, recluster)

    def feedback(
        self, gallery: str, different: Sequence[tuple[int, int]], not_subject: Sequence[tuple[int, str]]
    ) -> None:
        """Store "these two faces are different people" and "this face is not X"; NotFound for
        faces or subjects the gallery does not have (nothing is stored then)."""
        self.require(gallery)
        by_subject = self._all_faces(gallery)
        faces = {f.face_id: f for group in by_subject.values() for f in group}
        check_faces(
            set(faces), [i for pair in different for i in pair] + [i for i, _ in not_subject], gallery
        )
        unknown = sorted({s for _, s in not_subject} - (set(by_subject) - {UNSORTED}))
        if unknown:
            raise NotFound(f"no subject {', '.join(repr(s) for s in unknown[:5])} in gallery {gallery!r}")
        if any(a == b for a, b in different):
            raise BadInput("a face cannot be a different person from itself")
        self.people.add_different(gallery, different)
        self.people.add_not(gallery, [(i, subject, faces[i].image_hash) for i, subject in not_subject])

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
