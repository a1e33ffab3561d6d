"""One stream of typed events inside a server process: what the rooms did, for whoever listens.

Searches, video requests and stream jobs publish here; the review queue subscribes (issue 29), and
so will MQTT, webhooks and SSE (issue 31). Publishing never blocks and never fails the emitter:
each subscriber has its own bounded queue, and an event that finds it full is dropped for that
subscriber alone and counted (`Subscription.dropped`, /metrics `facerest_events_dropped`), so a
slow listener costs requests nothing. The module sits beside errors and logs: every room may emit.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: events a subscriber may have waiting before new ones are dropped for it
DEFAULT_QUEUE = 1024


@dataclass(slots=True)
class Event:
    at: float = field(default_factory=time.time, kw_only=True)  # unix time it happened


@dataclass(slots=True)
class Candidate:
    subject: str
    similarity: float


@dataclass(slots=True)
class SeenFace:
    """One face a search or a video saw, with what the gallery said about it."""

    embedding: np.ndarray  # unit length, the gallery's recognizer
    bbox: list[float] | None
    prob: float | None
    quality: float | None  # 0..1 (facerest.imaging.quality), None when not measured
    subject: str | None  # named at the decision point, else None
    similarity: float | None  # of the best candidate
    threshold: float  # the decision point the answer used
    candidates: list[Candidate] = field(default_factory=list)
    image_hash: str | None = None  # the picture it came from (sha256 of its pixels)
    #: the crop (facerest.imaging.crops), only where a listener may keep the face: see `review`
    jpeg: bytes | None = None
    crop_size: tuple[int, int] | None = None  # (width, height) of the JPEG
    landmarks: list[list[float]] | None = None  # in crop pixels
    #: the emitter's judgement that a person should look at it (unknown, or named with little margin)
    review: bool = False


@dataclass(slots=True)
class FacesRecognized(Event):
    """A gallery search answered (`source` "search")."""

    gallery: str
    source: str
    faces: list[SeenFace]
    ref: str | None = None  # e.g. the request id


@dataclass(slots=True)
class TrackFinished(Event):
    """A track of a video request (`source` "video") or a stream job ("stream") ended, identified
    in `gallery` when the request named one."""

    gallery: str | None
    source: str
    ref: str  # the video file's name or the job id, and the track
    track: int
    first_s: float
    last_s: float
    face: SeenFace | None  # None without an embedding (no recognizer)


@dataclass(slots=True)
class StreamEvent(Event):
    """Anything a stream job publishes to its own listeners (`kind` "track", "status")."""

    job: str
    kind: str
    data: dict[str, Any]


@dataclass(slots=True)
class GalleryChanged(Event):
    """Faces or subjects of a gallery were added, moved, renamed or deleted."""

    gallery: str
    action: str  # enrol, delete_face, delete_subject, delete_gallery, rename, merge, move, review, reembed
    subject: str | None = None
    face_ids: list[int] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)


class Subscription:
    """One listener's queue: `get` what arrived, in order; `dropped` counts what did not fit."""

    def __init__(self, bus: EventBus, name: str, kinds: tuple[type[Event], ...], maxsize: int) -> None:
        self.bus = bus
        self.name = name
        self.kinds = kinds
        self._queue: queue.Queue[Event] = queue.Queue(maxsize)
        self.delivered = 0
        self.dropped = 0

    def offer(self, event: Event) -> None:
        try:
            self._queue.put_nowait(event)
            self.delivered += 1
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("event listener %s is behind: %d events dropped", self.name, self.dropped)

    def get(self, timeout_s: float | None = None) -> Event | None:
        """The next event, or None after `timeout_s`."""
        try:
            return self._queue.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def pending(self) -> int:
        return self._queue.qsize()

    def close(self) -> None:
        self.bus.unsubscribe(self)


class EventBus:
    """Typed events to bounded per-subscriber queues; `publish` never blocks."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscriptions: tuple[Subscription, ...] = ()

    def subscribe(
        self, name: str, kinds: tuple[type[Event], ...] = (Event,), maxsize: int = DEFAULT_QUEUE
    ) -> Subscription:
        subscription = Subscription(self, name, kinds, maxsize)
        with self._lock:
            self._subscriptions = (*self._subscriptions, subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            self._subscriptions = tuple(s for s in self._subscriptions if s is not subscription)

    def wants(self, kind: type[Event]) -> bool:
        """Whether anyone listens for `kind` (an emitter skips building what nobody reads)."""
        return any(issubclass(kind, s.kinds) for s in self._subscriptions)

    def publish(self, event: Event) -> None:
        for subscription in self._subscriptions:  # a tuple swapped whole: no lock on this path
            if isinstance(event, subscription.kinds):
                subscription.offer(event)

    def subscriptions(self) -> tuple[Subscription, ...]:
        return self._subscriptions
