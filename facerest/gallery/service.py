"""Enrol, identify (1:N) and verify (1:1): the pipeline's embeddings against a gallery store.

Every method blocks (inference, database): call it from a worker thread, never the event loop.
"""

from __future__ import annotations

import hashlib
import logging
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
    StorageUnavailable,
)
from facerest.faces import Face
from facerest.gallery.store import (
    GalleryInfo,
    GalleryStore,
    ModelTag,
    NewFace,
    SubjectMatch,
    mismatch_message,
)
from facerest.models.store import ModelStore, md5_of
from facerest.pipeline import ExtractOptions, FaceAnalyzer, ImageInput

log = logging.getLogger(__name__)

#: for recognizers the catalogue gives no calibrated threshold: a cautious cosine for ArcFace models
FALLBACK_THRESHOLD = 0.35
MAX_NAME_LENGTH = 200


def check_name(kind: str, name: str) -> str:
    if not name or len(name) > MAX_NAME_LENGTH or not name.isprintable():
        raise BadInput(f"{kind} name must be 1 to {MAX_NAME_LENGTH} printable characters")
    return name


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

    @property
    def store(self) -> GalleryStore:
        if self._store is None:
            raise StorageUnavailable(f"gallery storage unavailable: {self._store_error}")
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()

    # --- helpers ---

    def _model(self) -> ModelTag:
        if self.model is None:
            raise FeatureUnavailable("galleries need a face recognizer; set FACEREST_REC_NAME")
        return self.model

    def threshold(self, asked: float | None) -> float:
        return self.default_threshold if asked is None else asked

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
        out = []
        for i, vector in enumerate(vectors):
            array = np.asarray(vector, np.float32)
            if array.shape != (dim,):
                raise BadInput(f"embedding {i} has {array.size} values; {self._model().name} gives {dim}")
            norm = float(np.linalg.norm(array))
            if not np.isfinite(norm) or norm == 0.0:
                raise BadInput(f"embedding {i} is zero or not finite")
            out.append(array / norm)
        return out

    def detect(self, images: Sequence[ImageInput], largest_only: bool) -> list[ImageFaces]:
        """Faces with embeddings in each image (only the largest one when asked)."""
        self._model()
        if not images:
            return []
        options = ExtractOptions(threshold=self.settings.det_thresh, limit_faces=1 if largest_only else 0)
        results = self.analyzer.process(list(images), options)
        out = []
        for image, result in zip(images, results, strict=True):
            if isinstance(image, FaceRestError):
                out.append(ImageFaces(error=image))
            elif not result.ok:
                out.append(ImageFaces(error=FaceRestError(result.error or "failed")))
            else:
                out.append(ImageFaces([_found(f) for f in result.faces], image_hash(image)))
        return out

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

    def enrol(
        self,
        gallery: str,
        subject: str,
        images: Sequence[ImageInput] = (),
        embeddings: Sequence[Sequence[float]] = (),
        all_faces: bool = False,
    ) -> Enrolled:
        check_name("gallery", gallery)
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
        exact: bool = False,
    ) -> list[list[Identified] | FaceRestError]:
        """One entry per image, then one per posted embedding: its faces identified, or its error."""
        self.require(gallery)
        limit = self.threshold(threshold)
        inputs: list[ImageFaces] = self.detect(images, largest_only=False)
        inputs += [ImageFaces([FoundFace(v, None, None)]) for v in self.embeddings(embeddings)]
        queries = [face for found in inputs for face in found.faces]
        # a face the index would leave unnamed is searched again exactly: an index miss never
        # turns a known face into an unknown one
        results = (
            self.store.search(gallery, np.stack([f.embedding for f in queries]), top_k, exact, floor=limit)
            if queries
            else []
        )
        answers = iter(results)
        out: list[list[Identified] | FaceRestError] = []
        for found in inputs:
            if found.error is not None:
                out.append(found.error)
                continue
            faces = []
            for face in found.faces:
                matches = next(answers).matches
                best = matches[0] if matches and matches[0].similarity >= limit else None
                faces.append(Identified(face, best.subject if best else None, matches))
            out.append(faces)
        return out

    def subject_similarity(self, gallery: str, subject: str, vector: np.ndarray) -> float:
        """Similarity of `vector` to the subject's closest face."""
        self.require(gallery)
        faces = self.store.faces(gallery, subject, with_embeddings=True)
        if not faces:
            raise NotFound(f"no subject {subject!r} in gallery {gallery!r}")
        stacked = np.stack([f.embedding for f in faces if f.embedding is not None])
        return float((stacked @ vector).max())


def _found(face: Face) -> FoundFace:
    assert face.embedding is not None  # the recognizer ran: extract_embedding is on
    return FoundFace(face.embedding, [float(v) for v in face.bbox], float(face.score))
