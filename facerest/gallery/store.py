"""What every gallery backend stores and answers: the records and the one interface."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from facerest.errors import Conflict, NotFound


@dataclass(slots=True, frozen=True)
class ModelTag:
    """The recognizer a gallery was built with; embeddings of another model never mix with it."""

    name: str
    md5: str
    dim: int


@dataclass(slots=True)
class NewFace:
    embedding: np.ndarray  # (D,) float32, unit length
    image_hash: str | None = None  # sha256 of the decoded pixels; None for posted embeddings
    bbox: list[float] | None = None
    prob: float | None = None


@dataclass(slots=True)
class StoredFace:
    face_id: int
    subject: str
    image_hash: str | None
    bbox: list[float] | None
    prob: float | None
    model: str
    added_at: float  # unix time
    embedding: np.ndarray | None = None


@dataclass(slots=True)
class GalleryInfo:
    name: str
    model: ModelTag
    subjects: int
    faces: int
    #: how it is searched: "exact" (a scan), "codes" (through the sign codes this process holds:
    #: SQLite's, or a PostgreSQL replica's), "hnsw" (PostgreSQL: through pgvector's HNSW index),
    #: or "building" (its index is being built; scanned until then)
    index: str = "exact"


@dataclass(slots=True)
class SubjectMatch:
    subject: str
    similarity: float


@dataclass(slots=True)
class SearchResult:
    """Top subjects of one query, best first (similarity of each subject's closest face)."""

    matches: list[SubjectMatch] = field(default_factory=list)


#: most subjects one search lists per face (the API's documented limit)
MAX_TOP_K = 100


class GalleryStore(ABC):
    """Galleries of subjects, each with faces; cosine search by subject.

    Every write is one transaction: once a method returns, what it wrote survives a crash of the
    process, and a write interrupted by one leaves nothing behind. Methods are blocking and safe
    to call from several threads.
    """

    @abstractmethod
    def galleries(self) -> list[GalleryInfo]: ...

    @abstractmethod
    def gallery(self, name: str) -> GalleryInfo | None: ...

    @abstractmethod
    def add_faces(self, gallery: str, subject: str, model: ModelTag, faces: list[NewFace]) -> list[int]:
        """Insert faces (creating the gallery for `model` if new); their ids, in order.

        Raises ModelMismatch when the gallery exists with another model.
        """

    @abstractmethod
    def subjects(self, gallery: str) -> list[tuple[str, int]]:
        """(subject, number of faces), sorted by subject."""

    @abstractmethod
    def faces(self, gallery: str, subject: str, with_embeddings: bool = False) -> list[StoredFace]: ...

    @abstractmethod
    def rename_subject(self, gallery: str, subject: str, new_name: str) -> int:
        """Number of faces moved; raises Conflict when `new_name` exists, NotFound when `subject` does not."""

    @abstractmethod
    def delete_subject(self, gallery: str, subject: str) -> int:
        """Number of faces deleted (0: no such subject)."""

    @abstractmethod
    def delete_face(self, gallery: str, face_id: int) -> bool: ...

    @abstractmethod
    def delete_gallery(self, gallery: str) -> bool: ...

    @abstractmethod
    def search(
        self, gallery: str, queries: np.ndarray, top_k: int, exact: bool = False, floor: float | None = None
    ) -> list[SearchResult]:
        """For each row of `queries` (N, D), the `top_k` closest subjects by their closest face.

        Large galleries are searched through an approximate index unless `exact`; small ones, and
        every one with `exact`, by comparing every face. `floor`: a query whose best approximate
        match is below it (nobody would be named) is searched again exactly, so an index miss
        can never turn a known face into an unknown one.
        """

    def delete_faces(self, gallery: str, face_ids: list[int]) -> list[int]:
        """The ids of those of `face_ids` that were faces of `gallery` and are deleted now
        (backends do it in one transaction; this default, one face at a time)."""
        return [face_id for face_id in face_ids if self.delete_face(gallery, face_id)]

    def erase_deleted(self, vacuum: bool = False) -> list[str]:
        """Make the bytes of what was deleted so far gone from the files (issue 30): what was done.
        `vacuum`: also rewrite what only a full rewrite cleans (facerest/gallery/erasure.py)."""
        return []

    @abstractmethod
    def close(self) -> None: ...


def top_subjects(similarities: np.ndarray, codes: np.ndarray, names: list[str], top_k: int) -> SearchResult:
    """Best similarity per subject (`codes[i]` = subject index of face i), the `top_k` best first."""
    best = np.full(len(names), -np.inf, np.float32)
    np.maximum.at(best, codes, similarities)
    k = min(top_k, int(np.isfinite(best).sum()))
    if k == 0:
        return SearchResult()
    chosen = np.argpartition(-best, k - 1)[:k]
    chosen = chosen[np.argsort(-best[chosen], kind="stable")]
    return SearchResult([SubjectMatch(names[i], float(best[i])) for i in chosen])


def mismatch_message(gallery: str, stored: ModelTag, current: ModelTag) -> str:
    return (
        f"gallery {gallery!r} was built with {stored.name} (md5 {stored.md5}, {stored.dim} dims); this "
        f"request uses {current.name} (md5 {current.md5}, {current.dim} dims): embeddings of different "
        "models do not compare"
    )


def checked_rename(gallery: str, subject: str, new_name: str, taken: bool, move: Callable[[], int]) -> int:
    """The rules of a rename, for every backend (inside its transaction): `move` returns the faces moved."""
    if taken and new_name != subject:
        raise Conflict(f"subject {new_name!r} already exists in gallery {gallery!r}")
    moved = move()
    if moved == 0:
        raise NotFound(f"no subject {subject!r} in gallery {gallery!r}")
    return moved
