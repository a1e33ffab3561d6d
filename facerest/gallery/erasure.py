"""One deletion path (issue 30): a face, a subject or a gallery goes with everything kept about it.

`GalleryService.delete_*` (the API), retention, `facerest gallery erase-subject` and every other
caller delete through these functions, so "deleted" means the same everywhere:

- the face rows, in one transaction of the store (the store's own tables hang off them: crops and
  review items are deleted with them, `ON DELETE CASCADE`);
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

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from facerest.gallery.people import UNSORTED, FeedbackStore
from facerest.gallery.store import GalleryStore


@dataclass(slots=True)
class Removed:
    """What one deletion took away."""

    gallery: str
    subject: str | None = None
    faces: list[int] = field(default_factory=list)
    feedback: int = 0  # feedback rows about them
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
    store: GalleryStore, feedback: FeedbackStore | None, gallery: str, subject: str
) -> Removed:
    """Every face of the subject, and whatever feedback names the subject or its faces."""
    ids = [f.face_id for f in store.faces(gallery, subject)]
    deleted = store.delete_subject(gallery, subject)
    removed = Removed(gallery, subject, ids if deleted else [])
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
    store: GalleryStore, feedback: FeedbackStore | None, gallery: str, subject: str, vacuum: bool = False
) -> Removed:
    """`delete_subject`, then whatever the store must still do so no file holds the bytes
    (PostgreSQL: VACUUM FULL of facerest's tables; SQLite with `vacuum`: the whole file rewritten)."""
    removed = delete_subject(store, feedback, gallery, subject)
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
                "embedding": None if f.embedding is None else [float(v) for v in f.embedding],
            }
            for f in faces
        ],
        "feedback": said,
    }
