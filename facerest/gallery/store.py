"""What every gallery backend stores and answers: the records and the one interface."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from facerest.errors import BadInput, Conflict, NotFound
from facerest.imaging.crops import FaceCrop


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
    crop: FaceCrop | None = None  # kept beside the face (FACEREST_GALLERY_KEEP_CROPS)
    quality: float | None = None  # 0..1, facerest.imaging.quality
    source: str | None = None  # how it came: "image", "embedding", "search", "video", "stream"


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
    quality: float | None = None
    source: str | None = None
    has_crop: bool = False
    representative: bool = False  # chosen as its subject's picture


@dataclass(slots=True)
class SubjectSummary:
    subject: str
    faces: int
    #: the face that shows the subject: the one chosen, else its best quality face (then lowest id)
    representative: int | None


@dataclass(slots=True)
class NewReviewItem:
    """A face nobody could name, for a person to look at (the review queue)."""

    embedding: np.ndarray
    crop: FaceCrop | None
    source: str  # "search", "video", "stream"
    ref: str | None  # where in the source: a request id, a file and track, a job and track
    candidates: list[tuple[str, float]]  # the closest subjects, best first
    image_hash: str | None = None
    bbox: list[float] | None = None
    prob: float | None = None
    quality: float | None = None


@dataclass(slots=True)
class ReviewItem:
    review_id: int
    group: int  # items of one group look like one person (the id of the group's first item)
    source: str
    ref: str | None
    created_at: float
    candidates: list[tuple[str, float]]
    excluded: list[str]  # subjects it was said not to be
    image_hash: str | None
    bbox: list[float] | None
    prob: float | None
    quality: float | None
    has_crop: bool
    embedding: np.ndarray | None = None


#: faces without a usable crop that a re-embed lists by id (their number is always given)
MISSING_LISTED = 100


@dataclass(slots=True)
class ReembedJob:
    """A gallery moving to another recognizer (issue 32; facerest/gallery/reembed.py).

    The new embeddings are written beside the old ones (each row's `next_embedding`) while searches
    keep using the old; the switch to them is one transaction. `into`: a new gallery is made from
    them instead, and the gallery itself stays as it is."""

    gallery: str
    target: ModelTag
    alignment: str  # the target's (Recognizer.alignment): how it was cut from each crop
    source: ModelTag  # the gallery's model when the move began
    into: str | None = None
    drop_missing: bool = False  # in place: faces without a usable crop are deleted at the switch
    state: str = "running"  # running | done | failed
    owner: str | None = None  # the runner holding it (None: nobody; the next run takes it up)
    started_at: float = 0.0
    updated_at: float = 0.0  # the runner's last write: its heartbeat
    finished_at: float | None = None
    error: str | None = None
    faces: int = 0  # the gallery's faces now (when done: those moved)
    done: int = 0  # faces given their new embedding
    #: faces that cannot be re-embedded (no crop: enrolled from an embedding or with
    #: FACEREST_GALLERY_KEEP_CROPS off; or a crop without landmarks): the first MISSING_LISTED
    #: ids and their number, as of the start (when done: as of the switch)
    missing: list[int] = field(default_factory=list)
    missing_count: int = 0
    review_items: int = 0  # in place: queued review items with a crop, as of the start
    review_done: int = 0
    #: in place: review items without a crop deleted at the switch (their old embedding cannot stay)
    review_dropped: int = 0

    @classmethod
    def from_row(cls, r: Sequence[Any], missing: list[int]) -> ReembedJob:
        """The job from a row of REEMBED_COLUMNS; `missing` decoded as the store keeps it."""
        return cls(
            gallery=r[0],
            target=ModelTag(r[1], r[2], r[3]),
            alignment=r[4],
            source=ModelTag(r[5], r[6], r[7]),
            into=r[8],
            drop_missing=bool(r[9]),
            state=r[10],
            owner=r[11],
            started_at=r[12],
            updated_at=r[13],
            finished_at=r[14],
            error=r[15],
            faces=int(r[16]),
            done=int(r[17]),
            missing=missing,
            missing_count=int(r[19]),
            review_items=int(r[20]),
            review_done=int(r[21]),
            review_dropped=int(r[22]),
        )


#: a re-embedding job's row in both stores, in the order `ReembedJob.from_row` reads it
REEMBED_COLUMNS = (
    "gallery, model, model_md5, dim, alignment, source_model, source_md5, source_dim, into_gallery, "
    "drop_missing, state, owner, started_at, updated_at, finished_at, error, faces, done, missing, "
    "missing_count, review_items, review_done, review_dropped"
)


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


#: the subject unsorted faces are stored under (a control character: no client can name a subject
#: so), so every backend keeps them as it keeps any face; listed apart, never a search match
UNSORTED = "\x1funsorted"

#: most subjects one search lists per face (the API's documented limit)
MAX_TOP_K = 100
#: most rows one page of a list holds (the API's documented limit)
MAX_PAGE = 1000


@dataclass(slots=True, frozen=True)
class ReviewBounds:
    """How many review items a gallery keeps and for how long (FACEREST_PEOPLE_REVIEW_*)."""

    max_items: int
    max_age_s: float


def like_pattern(q: str) -> str:
    """`q` as a LIKE pattern for "contains", its own % _ and \\ escaped (with ESCAPE '\\')."""
    escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


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

    # --- crops, pages, merge and move, the review queue (issue 29) ---

    @abstractmethod
    def add_many(self, gallery: str, model: ModelTag, faces: list[tuple[str, NewFace]]) -> list[int]:
        """Faces of many subjects in one transaction (bulk imports); their ids, in order."""

    @abstractmethod
    def galleries_page(self, after: str | None, limit: int, q: str | None = None) -> list[GalleryInfo]:
        """Galleries sorted by name after `after`, names containing `q` (case-insensitive)."""

    @abstractmethod
    def subjects_page(
        self, gallery: str, after: str | None, limit: int, q: str | None = None
    ) -> list[SubjectSummary]:
        """Named subjects (never the unsorted faces) sorted by name after `after`, containing `q`."""

    @abstractmethod
    def faces_page(
        self, gallery: str, subject: str, after: int | None, limit: int, q: str | None = None
    ) -> list[StoredFace]:
        """The subject's faces by id after `after`; `q`: their source contains it."""

    @abstractmethod
    def face(self, gallery: str, face_id: int) -> StoredFace | None: ...

    @abstractmethod
    def face_crop(self, gallery: str, face_id: int) -> FaceCrop | None: ...

    @abstractmethod
    def merge_subjects(self, gallery: str, subject: str, into: str) -> int:
        """Every face of `subject` moved to `into` (created when new); the number moved.
        NotFound when `subject` has no faces; `into`'s chosen picture stays."""

    @abstractmethod
    def move_faces(self, gallery: str, face_ids: list[int], subject: str, require_new: bool = False) -> int:
        """The faces moved to `subject` (created when new) in one transaction: NotFound (and nothing
        moved) when one of them is not in the gallery; Conflict when `require_new` and it exists."""

    @abstractmethod
    def set_representative(self, gallery: str, subject: str, face_id: int) -> None:
        """NotFound when the face is not one of the subject's."""

    @abstractmethod
    def add_review(
        self, gallery: str, item: NewReviewItem, group_threshold: float, bounds: ReviewBounds
    ) -> int | None:
        """Queue the item; its id, or None (no such gallery, or the same face of the same picture
        is queued already). It joins the group of the queued item it is most similar to at
        `group_threshold` or above (never one holding a face of the same picture); the oldest
        items past `bounds` go."""

    @abstractmethod
    def review_page(
        self, gallery: str, after: tuple[int, int] | None, limit: int, q: str | None, max_age_s: float
    ) -> list[ReviewItem]:
        """Queued items by (group, id) after `after`, younger than `max_age_s`; `q`: a candidate's
        name contains it."""

    @abstractmethod
    def review_items(
        self, gallery: str, ids: list[int], with_embeddings: bool = False
    ) -> list[ReviewItem]: ...

    @abstractmethod
    def review_crop(self, gallery: str, review_id: int) -> FaceCrop | None: ...

    @abstractmethod
    def exclude_review(self, gallery: str, ids: list[int], subject: str) -> int:
        """Record "not `subject`" on the items; the number changed."""

    @abstractmethod
    def delete_review(self, gallery: str, ids: list[int]) -> int: ...

    @abstractmethod
    def expire_review(self, older_than: float) -> dict[str, int]:
        """Retention (issue 30): every gallery's items queued before `older_than` (unix time),
        deleted; the number per gallery."""

    @abstractmethod
    def forget_review_subject(self, gallery: str, subject: str, same_above: float | None) -> tuple[int, int]:
        """Erasure of a subject (issue 30): the items whose candidate `subject` scored
        `same_above` or more (the 1:1 decision point: likely the person's own face; None: every
        item naming it) are deleted; every other item loses the name, from its candidates and from
        what it was said not to be. (items deleted, items changed)."""

    @abstractmethod
    def assign_review(
        self, gallery: str, ids: list[int], subject: str, model: ModelTag, require_new: bool = False
    ) -> list[int]:
        """The items enrolled into `subject` as faces (with their crops) and taken off the queue,
        in one transaction; the new face ids in the order of `ids`. NotFound (nothing done) when an
        item is not queued; Conflict when `require_new` and the subject exists."""

    # --- re-embedding: a gallery moving to another recognizer (issue 32) ---

    @abstractmethod
    def reembed_begin(self, job: ReembedJob, owner: str, lease_s: float) -> ReembedJob:
        """In one transaction: `job` recorded for `owner`, or the gallery's unfinished job to the
        same target taken up (its runner silent for `lease_s`, or gone); the job as stored.
        NotFound (no gallery), ModelMismatch (the gallery is no longer `job.source`), Conflict (a
        runner is at it, another move is unfinished, `into` exists or is being made, or in place
        faces without a usable crop would be lost without `drop_missing`): nothing changed then."""

    @abstractmethod
    def reembed_job(self, gallery: str) -> ReembedJob | None:
        """The gallery's last re-embed, with its progress."""

    @abstractmethod
    def reembed_running(self) -> list[str]:
        """The galleries whose move is running (its runner alive or not)."""

    @abstractmethod
    def reembed_todo(self, gallery: str, review: bool, after: int, limit: int) -> list[tuple[int, FaceCrop]]:
        """Up to `limit` faces (review items with `review`) by id after `after` that keep a crop with
        landmarks and have no new embedding yet, with their crops."""

    @abstractmethod
    def reembed_put(
        self, gallery: str, owner: str, review: bool, ids: list[int], vectors: np.ndarray
    ) -> None:
        """The new embeddings of those rows that still exist, with the runner's heartbeat, in one
        transaction; Conflict (nothing written) when the job is no longer `owner`'s (cancelled,
        taken up by another runner, the gallery deleted)."""

    @abstractmethod
    def reembed_finish(self, gallery: str, owner: str) -> ReembedJob | None:
        """The switch, in one transaction: in place, every face takes its new embedding and the
        gallery the target model (faces without a usable crop deleted, with `drop_missing`; review
        items without a crop deleted); with `into`, the new gallery made of the faces with new
        embeddings (subjects, crops, quality, source, chosen pictures copied). None (nothing done)
        while rows with a crop still lack a new embedding (enrolled meanwhile): embed them and
        call again. Conflict when faces without a usable crop appeared and would be lost, or
        `into` exists now; ModelMismatch when the gallery changed model meanwhile."""

    @abstractmethod
    def reembed_end(self, gallery: str, owner: str | None, error: str | None) -> bool:
        """The runner lets go: `error` set, the job failed (its new embeddings are kept: a run to
        the same target resumes it); None, it stays running for the next run to take up at once.
        `owner` None: whoever holds it. False when it was not the owner's."""

    @abstractmethod
    def reembed_cancel(self, gallery: str) -> bool:
        """The unfinished job and every new embedding written for it gone; False when none."""

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


def check_page(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE:
        raise BadInput(f"limit must be 1 to {MAX_PAGE}")
    return limit


def review_group(
    vectors: np.ndarray, groups: np.ndarray, hashes: list[str | None], item: NewReviewItem, threshold: float
) -> int | None:
    """The group a new review item joins: that of the queued item most similar to it at `threshold`
    or above, skipping groups holding a face of the same picture (two faces of one photo are two
    people); None: a group of its own."""
    if not len(vectors):
        return None
    similarity = vectors @ np.asarray(item.embedding, np.float32)
    banned = {
        int(g) for g, h in zip(groups.tolist(), hashes, strict=True) if h is not None and h == item.image_hash
    }
    for row in np.argsort(-similarity):
        if similarity[row] < threshold:
            return None
        if int(groups[row]) not in banned:
            return int(groups[row])
    return None


def review_dedupe(item: NewReviewItem) -> str | None:
    """The same face of the same picture (or the same track of the same source) is queued once."""
    if item.image_hash is not None and item.bbox is not None:
        return f"{item.image_hash}:{','.join(str(round(v / 4)) for v in item.bbox)}"
    return None if item.ref is None else f"{item.source}:{item.ref}"


def checked_rename(gallery: str, subject: str, new_name: str, taken: bool, move: Callable[[], int]) -> int:
    """The rules of a rename, for every backend (inside its transaction): `move` returns the faces moved."""
    if taken and new_name != subject:
        raise Conflict(f"subject {new_name!r} already exists in gallery {gallery!r}")
    moved = move()
    if moved == 0:
        raise NotFound(f"no subject {subject!r} in gallery {gallery!r}")
    return moved


# --- re-embedding (issue 32): the rules every backend applies in its transaction ---


class NotOwner(Conflict):
    """A re-embed's runner wrote after losing its job (cancelled, taken up by another runner, the
    gallery deleted): it stops, and nothing of that write is kept."""


def reembed_takes_up(
    existing: ReembedJob | None, job: ReembedJob, owner: str, lease_s: float, now: float
) -> bool:
    """Whether `job` continues the gallery's `existing` one (True) or starts anew (False);
    Conflict when a runner is at it or another move is unfinished."""
    if existing is None or existing.state == "done":
        return False
    gallery = job.gallery
    if existing.owner not in (None, owner) and now - existing.updated_at < lease_s:
        raise Conflict(
            f"gallery {gallery!r} is being moved to {existing.target.name} by {existing.owner} "
            f"(last heard {now - existing.updated_at:.0f} s ago); GET /gallery/{gallery}/reembed follows it"
        )
    if (existing.target, existing.into) != (job.target, job.into):
        where = "in place" if existing.into is None else f"into {existing.into!r}"
        raise Conflict(
            f"gallery {gallery!r} has an unfinished move to {existing.target.name} ({where}, "
            f"{existing.state}); cancel it first (DELETE /gallery/{gallery}/reembed, or "
            f"`facerest gallery reembed {gallery} --cancel`)"
        )
    return True


def missing_crops(gallery: str, ids: list[int], count: int) -> str:
    shown = ", ".join(map(str, ids[:10])) + (", ..." if count > 10 else "")
    return (
        f"{count} faces of gallery {gallery!r} keep no crop to embed again (enrolled from embeddings, "
        f"with FACEREST_GALLERY_KEEP_CROPS off, or without landmarks; face ids {shown}): moved in "
        "place they would be deleted. Send drop_missing: true (--drop-missing) to delete them at the "
        "switch, or move into a new gallery (they stay in this one)"
    )
