"""Faces enrolled without a subject, grouped into people, and what users say about them.

Unsorted faces live in the gallery under a reserved subject name no client can give (it is not
printable), so every backend stores them as it stores any face. Feedback and the last clustering
(for incremental updates) live in a small SQLite file beside the gallery (data_dir/people.db):
"these two faces are different people" (cannot-link, respected by every later clustering) and
"this face is not X" (X is never suggested for a cluster holding it, and search never names X for
a probe of the same picture). With a PostgreSQL gallery shared by replicas this file is per
replica: feedback given to one is not seen by another.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facerest.errors import NotFound
from facerest.gallery import clustering
from facerest.gallery.calibration import Decision
from facerest.gallery.store import UNSORTED, StoredFace

__all__ = ["UNSORTED", "FeedbackStore", "PersonCluster", "check_faces", "cluster_unsorted"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS different (gallery TEXT, face_a INTEGER, face_b INTEGER,
    PRIMARY KEY (gallery, face_a, face_b));
CREATE TABLE IF NOT EXISTS not_subject (gallery TEXT, face_id INTEGER, subject TEXT, image_hash TEXT,
    PRIMARY KEY (gallery, face_id, subject));
CREATE TABLE IF NOT EXISTS clustered (gallery TEXT, face_id INTEGER, label INTEGER,
    PRIMARY KEY (gallery, face_id));
"""


class FeedbackStore:
    """Feedback and cluster labels per gallery, in one SQLite file (each write one transaction)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # what is forgotten is overwritten, not only unlinked from the tree (issue 30)
        self._db.execute("PRAGMA secure_delete=ON")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    def add_different(self, gallery: str, pairs: Sequence[tuple[int, int]]) -> None:
        rows = [(gallery, min(a, b), max(a, b)) for a, b in pairs]
        with self._lock, self._db:
            self._db.executemany("INSERT OR IGNORE INTO different VALUES (?, ?, ?)", rows)

    def add_not(self, gallery: str, items: Sequence[tuple[int, str, str | None]]) -> None:
        with self._lock, self._db:
            self._db.executemany(
                "INSERT OR IGNORE INTO not_subject VALUES (?, ?, ?, ?)", [(gallery, *item) for item in items]
            )

    def different(self, gallery: str) -> list[tuple[int, int]]:
        with self._lock:
            return self._db.execute(
                "SELECT face_a, face_b FROM different WHERE gallery = ?", (gallery,)
            ).fetchall()

    def not_subjects(self, gallery: str) -> list[tuple[int, str, str | None]]:
        with self._lock:
            return self._db.execute(
                "SELECT face_id, subject, image_hash FROM not_subject WHERE gallery = ?", (gallery,)
            ).fetchall()

    def excluded_for_hashes(self, gallery: str, hashes: set[str]) -> dict[str, set[str]]:
        """image hash -> subjects a face of that picture was said not to be."""
        out: dict[str, set[str]] = {}
        for _, subject, digest in self.not_subjects(gallery):
            if digest in hashes:
                out.setdefault(digest, set()).add(subject)
        return out

    def labels(self, gallery: str) -> dict[int, int]:
        with self._lock:
            rows = self._db.execute("SELECT face_id, label FROM clustered WHERE gallery = ?", (gallery,))
            return dict(rows.fetchall())

    def save_labels(self, gallery: str, labels: dict[int, int]) -> None:
        with self._lock, self._db:
            self._db.execute("DELETE FROM clustered WHERE gallery = ?", (gallery,))
            self._db.executemany(
                "INSERT INTO clustered VALUES (?, ?, ?)", [(gallery, f, label) for f, label in labels.items()]
            )

    def forget(self, gallery: str) -> int:
        """Everything said about the gallery; the rows removed (then gone from the files too)."""
        with self._lock, self._db:
            removed = sum(
                self._db.execute(f"DELETE FROM {table} WHERE gallery = ?", (gallery,)).rowcount
                for table in ("different", "not_subject", "clustered")
            )
        self.erase_deleted()
        return removed

    def forget_faces(self, gallery: str, face_ids: Sequence[int]) -> int:
        """What was said about faces that are deleted goes with them; the rows removed."""
        rows = [(gallery, i) for i in face_ids]
        removed = 0
        with self._lock, self._db:
            for row in rows:
                removed += self._db.execute(
                    "DELETE FROM different WHERE gallery = ?1 AND (face_a = ?2 OR face_b = ?2)", row
                ).rowcount
                for table in ("not_subject", "clustered"):
                    removed += self._db.execute(
                        f"DELETE FROM {table} WHERE gallery = ? AND face_id = ?", row
                    ).rowcount
        if removed:
            self.erase_deleted()
        return removed

    def forget_subject(self, gallery: str, subject: str) -> int:
        """Every "face F is not X" once X is deleted: the name goes with the subject."""
        with self._lock, self._db:
            removed = self._db.execute(
                "DELETE FROM not_subject WHERE gallery = ? AND subject = ?", (gallery, subject)
            ).rowcount
        if removed:
            self.erase_deleted()
        return removed

    def erase_deleted(self) -> list[str]:
        """The WAL emptied into the file (secure_delete zeroed the rows there): what was done."""
        with self._lock:
            busy = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        return ["people.db: WAL emptied" if not busy else "people.db: WAL busy, emptied at the next delete"]

    def close(self) -> None:
        self._db.close()


@dataclass(slots=True)
class PersonCluster:
    cluster_id: int  # kept by incremental updates (new faces join, ids stay)
    faces: list[StoredFace]
    representatives: list[StoredFace]
    suggested_subject: str | None  # the enrolled subject these faces match, at the decision point
    similarity: float | None  # the suggestion's mean similarity to the cluster's faces


def cluster_unsorted(
    faces: list[StoredFace],
    subjects: Callable[[np.ndarray], dict[str, np.ndarray]],
    decision: Decision,
    feedback: FeedbackStore,
    gallery: str,
    recluster: bool,
) -> list[PersonCluster]:
    """The unsorted faces grouped at the decision threshold; incrementally (new faces join the
    last clustering's groups) unless `recluster`. `subjects(vectors)`: the enrolled faces of the
    subjects a group of faces could be (facerest/gallery/service.py searches for them)."""
    if not faces:
        feedback.save_labels(gallery, {})
        return []
    vectors = np.stack([f.embedding for f in faces if f.embedding is not None])
    position = {f.face_id: i for i, f in enumerate(faces)}
    links = [
        (position[a], position[b]) for a, b in feedback.different(gallery) if a in position and b in position
    ]
    # one person appears once in a photo: two faces of one picture are never grouped
    by_photo: dict[str, list[int]] = {}
    for i, face in enumerate(faces):
        if face.image_hash is not None:
            by_photo.setdefault(face.image_hash, []).append(i)
    links += [(a, b) for group in by_photo.values() for k, a in enumerate(group) for b in group[k + 1 :]]
    before = {} if recluster else feedback.labels(gallery)
    old = [i for i, f in enumerate(faces) if f.face_id in before]
    new = [i for i, f in enumerate(faces) if f.face_id not in before]
    labels = np.empty(len(faces), np.int64)
    if old and not _violated(before, faces, links):
        old_labels = np.array([before[faces[i].face_id] for i in old], np.int64)
        labels[old] = old_labels
        if new:
            order = {face: k for k, face in enumerate(old + new)}
            moved = [(order[a], order[b]) for a, b in links]
            labels[new] = clustering.assign(vectors[old], old_labels, vectors[new], decision.threshold, moved)
    else:  # first time, asked to, or new feedback splits a kept group: all at once
        labels = clustering.cluster(vectors, decision.threshold, links)
    feedback.save_labels(gallery, {f.face_id: int(labels[i]) for i, f in enumerate(faces)})
    refused: dict[int, set[str]] = {}
    for face_id, subject, _ in feedback.not_subjects(gallery):
        refused.setdefault(face_id, set()).add(subject)
    out = []
    for group in clustering.groups(vectors, labels):
        members = [faces[i] for i in group.members]
        banned = set().union(*(refused.get(f.face_id, set()) for f in members))
        centre = vectors[group.members]
        best, best_score = None, None
        # the candidates come from the group's most central faces; every face counts in the score
        for subject, enrolled in subjects(vectors[group.representatives]).items():
            if subject in banned:
                continue
            score = float((centre @ enrolled.T).max(axis=1).mean())
            if score >= decision.threshold and (best_score is None or score > best_score):
                best, best_score = subject, score
        representatives = [faces[i] for i in group.representatives]
        out.append(PersonCluster(group.label, members, representatives, best, best_score))
    return out


def _violated(before: dict[int, int], faces: list[StoredFace], links: list[tuple[int, int]]) -> bool:
    """A cannot-link pair that the kept clustering holds in one group."""
    return any(
        faces[a].face_id in before
        and faces[b].face_id in before
        and before[faces[a].face_id] == before[faces[b].face_id]
        for a, b in links
    )


def check_faces(known: set[int], asked: Sequence[int], gallery: str) -> None:
    missing = sorted(set(asked) - known)
    if missing:
        raise NotFound(f"no face {', '.join(map(str, missing[:5]))} in gallery {gallery!r}")
