"""One deletion path (issue 30): a face, a subject or a gallery goes with everything kept about it.

`GalleryService.delete_*` (the API), retention, `facerest gallery erase-subject` and every other
caller delete through these functions, so "deleted" means the same everywhere:

- the face rows, in one transaction of the store (the store's own tables hang off them: a face's
  crop is deleted with it, a gallery's review items with the gallery, `ON DELETE CASCADE`);
- for a subject, the review items that name it: those that scored it at the 1:1 decision point
  or above (likely the person's own face) are deleted, the others lose the name (from their
  candidates and from what they were said not to be) and stay queued as the unknown faces they are;
- their entries in the search indexes: this process's codes at once, the SQLite index file
  rewritten, every other worker's and PostgreSQL replica's codes at its next search (the store's
  change detection, facerest/gallery/sqlite.py and replica_codes.py);
- the feedback about them (people.db): pairs naming the faces, "not X" naming the faces or,
  for a subject, naming X;
- the bytes: SQLite runs with `secure_delete` (deleted rows are overwritten with zeros) and each
  delete empties the WAL into the database (`wal_checkpoint(TRUNCATE)`), so no file under the data
  folder keeps them. PostgreSQL never overwrites a deleted row in place: its bytes stay in the
  table's and indexes' pages until they are rewritten, which `erase_subject` (and `facerest
  gallery compact`) does with VACUUM FULL; docs/privacy.md says what that means for its WAL,
  backups and standbys.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from facerest.gallery.people import UNSORTED, FeedbackStore
from facerest.gallery.store import MAX_PAGE, GalleryStore
from facerest.imaging.crops import FaceCrop


@dataclass(slots=True)
class Removed:
    """What one deletion took away."""

    gallery: str
    subject: str | None = None
    faces: list[int] = field(default_factory=list)
    feedback: int = 0  # feedback rows about them
    review: int = 0  # review items deleted because they were likely the subject's face
    review_cleaned: int = 0  # review items that named the subject, its name taken out
    erased: list[str] = field(default_factory=list)  # what was done so the bytes are gone from disk


def delete_faces(
    store: GalleryStore, feedback: FeedbackStore | None, gallery: str, face_ids: Sequence[int]
) -> Removed:
    """The faces of `gallery` among `face_ids` (others are ignored); `faces` lists those deleted."""
    gone = store.delete_faces(gallery, list(face_ids))
    removed = Removed(gallery, faces=gone)
    if gone and feedback is not None:
        removed.feedback = feedback.forget_faces(gallery, gone)
    return removed


def delete_subject(
    store: GalleryStore,
    feedback: FeedbackStore | None,
    gallery: str,
    subject: str,
    same_person: float | None = None,
) -> Removed:
    """Every face of the subject, the review items that are likely its face (a candidate score
    of `same_person` or more, the 1:1 decision point; None: every item naming it), its name in the
    other items, and whatever feedback names the subject or its faces."""
    ids = [f.face_id for f in store.faces(gallery, subject)]
    deleted = store.delete_subject(gallery, subject)
    removed = Removed(gallery, subject, ids if deleted else [])
    # after the faces: a review item queued meanwhile names a subject that is gone
    removed.review, removed.review_cleaned = store.forget_review_subject(gallery, subject, same_person)
    if feedback is not None:
        removed.feedback = feedback.forget_faces(gallery, ids) + feedback.forget_subject(gallery, subject)
    return removed


def delete_gallery(store: GalleryStore, feedback: FeedbackStore | None, gallery: str) -> Removed | None:
    """The whole gallery (None: there is none)."""
    if not store.delete_gallery(gallery):
        return None
    removed = Removed(gallery)
    if feedback is not None:
        removed.feedback = feedback.forget(gallery)
    return removed


def erase_subject(
    store: GalleryStore,
    feedback: FeedbackStore | None,
    gallery: str,
    subject: str,
    same_person: float | None = None,
    vacuum: bool = False,
) -> Removed:
    """`delete_subject`, then whatever the store must still do so no file holds the bytes
    (PostgreSQL: VACUUM FULL of facerest's tables; SQLite with `vacuum`: the whole file rewritten)."""
    removed = delete_subject(store, feedback, gallery, subject, same_person)
    removed.erased = store.erase_deleted(vacuum=vacuum)
    if feedback is not None:
        removed.erased += feedback.erase_deleted()
    return removed


def expire_unsorted(
    store: GalleryStore, feedback: FeedbackStore | None, older_than_s: float, now: float | None = None
) -> list[Removed]:
    """Retention: the faces enrolled without a subject more than `older_than_s` ago, erased."""
    cutoff = (time.time() if now is None else now) - older_than_s
    out = []
    for info in store.galleries():
        expired = [f.face_id for f in store.faces(info.name, UNSORTED) if f.added_at < cutoff]
        if expired:
            removed = delete_faces(store, feedback, info.name, expired)
            removed.subject = UNSORTED
            out.append(removed)
    return out


def expire_review(store: GalleryStore, older_than_s: float, now: float | None = None) -> list[Removed]:
    """Retention: the review items queued more than `older_than_s` ago (FACEREST_PEOPLE_REVIEW_MAX_AGE_S),
    erased from every gallery (new items also push old ones out as they arrive, but a gallery
    nobody searches any more gets none)."""
    cutoff = (time.time() if now is None else now) - older_than_s
    return [Removed(gallery, review=n) for gallery, n in sorted(store.expire_review(cutoff).items())]


def export_subject(
    store: GalleryStore, feedback: FeedbackStore | None, gallery: str, subject: str
) -> dict[str, Any]:
    """What the server holds about one person (a data-subject access export): every face with its
    embedding and where it came from, and the feedback naming them. Empty `faces`: none held."""
    info = store.gallery(gallery)
    faces = store.faces(gallery, subject, with_embeddings=True)
    ids = {f.face_id for f in faces}
    said: dict[str, Any] = {"not_this_subject": [], "different_from": [], "not_other_subject": []}
    if feedback is not None:
        for face_id, named, _ in feedback.not_subjects(gallery):
            if named == subject:
                said["not_this_subject"].append(face_id)
            elif face_id in ids:
                said["not_other_subject"].append({"face_id": face_id, "subject": named})
        said["different_from"] = [[a, b] for a, b in feedback.different(gallery) if a in ids or b in ids]
    return {
        "gallery": gallery,
        "subject": subject,
        "exported_at": time.time(),
        "model": None
        if info is None
        else {"name": info.model.name, "md5": info.model.md5, "dim": info.model.dim},
        "faces": [
            {
                "face_id": f.face_id,
                "added_at": f.added_at,
                "image_hash": f.image_hash,
                "bbox": f.bbox,
                "prob": f.prob,
                "model": f.model,
                "quality": f.quality,
                "source": f.source,
                "embedding": None if f.embedding is None else [float(v) for v in f.embedding],
                "image": _image(store.face_crop(gallery, f.face_id) if f.has_crop else None),
            }
            for f in faces
        ],
        "review_items": _review_naming(store, gallery, subject),
        "feedback": said,
    }


def _image(crop: FaceCrop | None) -> dict[str, Any] | None:
    """The picture kept with a face (issue 29), as the export carries it: base64 JPEG."""
    if crop is None:
        return None
    return {
        "jpeg_base64": base64.b64encode(crop.jpeg).decode("ascii"),
        "width": crop.width,
        "height": crop.height,
        "landmarks": crop.landmarks,
    }


def _review_naming(store: GalleryStore, gallery: str, subject: str) -> list[dict[str, Any]]:
    """The review items that name the subject among their candidates: faces the server thought
    might be the person (each with its picture); every item, whatever its age."""
    out: list[dict[str, Any]] = []
    after: tuple[int, int] | None = None
    while True:
        page = store.review_page(gallery, after, MAX_PAGE, subject, float("inf"))
        for item in page:
            similarity = next((v for name, v in item.candidates if name == subject), None)
            if similarity is None:  # the name only contains `subject`
                continue
            out.append(
                {
                    "review_id": item.review_id,
                    "created_at": item.created_at,
                    "source": item.source,
                    "ref": item.ref,
                    "similarity": similarity,
                    "image_hash": item.image_hash,
                    "bbox": item.bbox,
                    "image": _image(store.review_crop(gallery, item.review_id) if item.has_crop else None),
                }
            )
        if len(page) < MAX_PAGE:
            return out
        after = (page[-1].group, page[-1].review_id)
