"""The review queue: faces a search, a video request or a stream job could not name, kept (with
their crop, where they came from and when) for a person to assign, name, refuse or dismiss.

It listens on the event stream (facerest/events.py) rather than being called by the searches: a
search answers without waiting for it, and a queue that falls behind drops events (counted) instead
of slowing anything. Items live in the gallery store (`review_items`), bounded per gallery by count
and age (FACEREST_PEOPLE_REVIEW_*), grouped as they arrive: an item joins the group of the queued
item it most resembles at the 1:1 decision point (FACEREST_VERIFY_FMR), never one holding a face of
the same picture.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from facerest.events import EventBus, FacesRecognized, SeenFace, TrackFinished
from facerest.gallery.store import GalleryStore, ModelTag, NewReviewItem, ReviewBounds
from facerest.imaging.crops import FaceCrop

log = logging.getLogger(__name__)

#: candidates kept with an item (the closest subjects)
CANDIDATES = 3


def wants_review(subject: str | None, similarity: float | None, threshold: float, margin: float) -> bool:
    """Unknown, or named with less than `margin` to spare above the decision threshold."""
    if subject is None:
        return True
    return similarity is not None and similarity < threshold + margin


class ReviewQueue:
    """The listener: one thread taking faces off the event stream into the store."""

    def __init__(
        self,
        bus: EventBus,
        store: Callable[[], GalleryStore],
        bounds: ReviewBounds,
        group_threshold: float,
        candidates: Callable[[str, SeenFace], list[tuple[str, float]]],
        margin: float = 0.0,
        model: ModelTag | None = None,
    ) -> None:
        """`candidates(gallery, face)`: the closest subjects of a face that came without them (a
        video track identified with top_k 1). `model`: the recognizer the faces come from; a
        gallery built with another (moved to it meanwhile, issue 32) keeps none of them."""
        self._store = store
        self.model = model
        self.bounds = bounds
        self.group_threshold = group_threshold
        self.margin = margin
        self._candidates = candidates
        self._subscription = bus.subscribe("review-queue", (FacesRecognized, TrackFinished))
        self._stop = threading.Event()
        self.queued = 0
        self._thread = threading.Thread(target=self._run, name="facerest-review", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            event = self._subscription.get(timeout_s=0.5)
            if event is None:
                continue
            try:
                self._take(event)
            except Exception:  # one bad event never stops the queue
                log.exception("the review queue could not keep a face")

    def _take(self, event: object) -> None:
        if isinstance(event, FacesRecognized):
            for face in event.faces:
                if face.review:
                    self._keep(event.gallery, face, event.source, event.ref)
        elif isinstance(event, TrackFinished) and event.gallery and event.face is not None:
            face = event.face  # a track's identity came with its threshold: judged here
            if face.review or wants_review(face.subject, face.similarity, face.threshold, self.margin):
                self._keep(event.gallery, face, event.source, f"{event.ref} track {event.track}")

    def _keep(self, gallery: str, face: SeenFace, source: str, ref: str | None) -> None:
        if self.model is not None:
            info = self._store().gallery(gallery)
            if info is None or info.model != self.model:
                return
        crop = None
        if face.jpeg is not None and face.crop_size is not None:
            crop = FaceCrop(face.jpeg, face.crop_size[0], face.crop_size[1], face.landmarks)
        candidates = [(c.subject, c.similarity) for c in face.candidates[:CANDIDATES]]
        if not candidates:
            candidates = self._candidates(gallery, face)[:CANDIDATES]
        item = NewReviewItem(
            face.embedding,
            crop,
            source,
            ref,
            candidates,
            face.image_hash,
            face.bbox,
            face.prob,
            face.quality,
        )
        if self._store().add_review(gallery, item, self.group_threshold, self.bounds) is not None:
            self.queued += 1

    def idle(self) -> bool:
        """Nothing waiting (tests)."""
        return self._subscription.pending() == 0

    def close(self) -> None:
        self._stop.set()
        self._subscription.close()
        self._thread.join(timeout=5)
