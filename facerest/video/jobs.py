"""Live-stream jobs: a thread per job reads the stream, tracks faces, publishes finished tracks.

Memory per job is bounded: the frames in flight (FACEREST_VIDEO_FRAMES_IN_FLIGHT), the live tracks
(each keeps a fixed number of observations, no per-frame boxes), and the last
FACEREST_VIDEO_JOB_EVENTS events. A dropped stream is reopened with doubling back-off; a job whose
stream stays away for FACEREST_VIDEO_STREAM_RETRIES tries fails with the reason. Deleting a job
stops its thread, closes its connection and drops everything it held.

Issue 28: a job's listeners wait without a thread (`subscribe`: the job calls them back when it
changes), their number is bounded (FACEREST_VIDEO_MAX_LISTENERS), and so is the number of
finished jobs kept (FACEREST_VIDEO_FINISHED_JOBS): jobs that fail at once no longer pile up.
Redirects and credentials are handled by facerest.video.stream; an address refused there (a
redirect's target) fails the job at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from facerest.config import Settings
from facerest.errors import FaceRestError, NotFound, TooManyJobs, TooManyListeners, UrlRefused
from facerest.events import EventBus, StreamEvent, TrackFinished
from facerest.imaging.loader import fetch_policy
from facerest.models.faces import ImageResult
from facerest.pipeline import FaceAnalyzer
from facerest.video.analyze import Cancelled, Identify, VideoAnalyzer, VideoOptions, track_body, track_event
from facerest.video.decode import SampledFrame, Sampling, VideoLimits, VideoSource
from facerest.video.stream import LiveConnection, check_stream_url, shown_url
from facerest.video.tracker import FaceTracker, Track
from facerest.video.webhook import Webhook

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0
FINAL = ("stopped", "failed")


@dataclass
class JobEvent:
    id: int
    type: str  # "track" | "status"
    data: dict[str, Any]


@dataclass
class VideoJob:
    id: str
    url: str
    sampling: Sampling
    options: VideoOptions
    return_embedding: bool
    identify: Identify | None
    created: float = field(default_factory=time.time)
    status: str = "connecting"  # connecting | running | reconnecting | stopped | failed
    error: dict[str, str] | None = None
    frames_decoded: int = 0
    frames_sampled: int = 0
    tracks: int = 0
    reconnects: int = 0
    live_tracks: int = 0
    events: deque[JobEvent] = field(default_factory=deque)
    next_event: int = 1
    stop: threading.Event = field(default_factory=threading.Event)
    changed: threading.Condition = field(default_factory=threading.Condition)
    thread: threading.Thread | None = None
    connection: LiveConnection | None = None
    webhook: Webhook | None = None
    gallery: str | None = None  # where its tracks are identified
    return_crops: bool = False  # each track event carries its best face's picture
    bus: EventBus | None = None  # the server's event stream (issue 29)
    finished_at: float | None = None
    listeners: set[Callable[[], None]] = field(default_factory=set)
    #: who made it, as the API names its keys (issue 30: only they, and admins, see and stop it)
    owner: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINAL

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        with self.changed:
            event = JobEvent(self.next_event, kind, data)
            self.events.append(event)
            self.next_event += 1
            self.changed.notify_all()
            listeners = list(self.listeners)
        for wake in listeners:
            wake()
        if self.webhook is not None:
            self.webhook.send({"job": self.id, "id": event.id, "event": kind, "data": data})
        if self.bus is not None:
            self.bus.publish(StreamEvent(self.id, kind, data))

    def set_status(self, status: str, **detail: Any) -> None:
        with self.changed:
            self.status = status
            if status in FINAL:
                self.finished_at = time.monotonic()
        self.publish("status", {"status": status, **detail})

    def events_after(self, last: int) -> list[JobEvent]:
        with self.changed:
            return [e for e in self.events if e.id > last]

    def subscribe(self, wake: Callable[[], None]) -> Callable[[], None]:
        """Call `wake` (from the job's thread: it must not block) after every event; returns the
        function that unsubscribes. A listener waits on its own loop, not in a thread."""
        with self.changed:
            self.listeners.add(wake)

        def unsubscribe() -> None:
            with self.changed:
                self.listeners.discard(wake)

        return unsubscribe

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "url": shown_url(self.url),
            "status": self.status,
            "error": self.error,
            "created": self.created,
            "fps": self.sampling.fps,
            "frames_decoded": self.frames_decoded,
            "frames_sampled": self.frames_sampled,
            "tracks": self.tracks,
            "live_tracks": self.live_tracks,
            "reconnects": self.reconnects,
            "events": {"first": self.events[0].id if self.events else None, "last": self.next_event - 1},
            "webhook": None
            if self.webhook is None
            else {"sent": self.webhook.sent, "failed": self.webhook.failed, "dropped": self.webhook.dropped},
        }


class Listener:
    """One open event stream's place among FACEREST_VIDEO_MAX_LISTENERS; `close` frees it (more
    than once is harmless: the stream's end and its garbage collection both call it)."""

    def __init__(self, manager: JobManager) -> None:
        self._manager: JobManager | None = manager

    def close(self) -> None:
        manager, self._manager = self._manager, None
        if manager is not None:
            with manager._lock:
                manager._listeners -= 1


class JobManager:
    def __init__(self, analyzer: FaceAnalyzer, settings: Settings, events: EventBus | None = None) -> None:
        self.analyzer = analyzer
        self.settings = settings
        self.events = events
        self._jobs: dict[str, VideoJob] = {}
        self._lock = threading.Lock()
        self._listeners = 0

    def listen(self) -> Listener:
        """A place for one more event stream; TooManyListeners past the limit."""
        with self._lock:
            if self._listeners >= self.settings.video_max_listeners:
                raise TooManyListeners(
                    f"this server holds at most {self.settings.video_max_listeners} event streams open; "
                    "retry later"
                )
            self._listeners += 1
        return Listener(self)

    def create(
        self,
        url: str,
        sampling: Sampling,
        options: VideoOptions,
        *,
        return_embedding: bool = True,
        identify: Identify | None = None,
        webhook: str | None = None,
        gallery: str | None = None,
        return_crops: bool = False,
        owner: str | None = None,
    ) -> VideoJob:
        check_stream_url(url, self.settings)  # a refused address is the request's 4xx, not a failed job
        options.return_boxes = False  # per-frame boxes would grow without end on a live stream
        job = VideoJob(
            uuid.uuid4().hex,
            url,
            sampling,
            options,
            return_embedding,
            identify,
            events=deque(maxlen=self.settings.video_job_events),
            gallery=gallery,
            return_crops=return_crops,
            bus=self.events,
            owner=owner,
        )
        with self._lock:
            self._check_room()
        if webhook is not None:
            job.webhook = Webhook(webhook, fetch_policy(self.settings))
        with self._lock:  # again: another job may have started while the webhook was checked
            self._check_room()
            self._jobs[job.id] = job
        job.thread = threading.Thread(
            target=self._run, args=(job,), name=f"facerest-job-{job.id[:8]}", daemon=True
        )
        job.thread.start()
        return job

    def _check_room(self) -> None:
        """TooManyJobs when FACEREST_VIDEO_MAX_JOBS jobs run already (call holding the lock)."""
        running = sum(1 for j in self._jobs.values() if not j.finished)
        if running >= self.settings.video_max_jobs:
            raise TooManyJobs(
                f"this server runs at most {self.settings.video_max_jobs} stream jobs; "
                "delete one (DELETE /video/jobs/{id}) or retry later"
            )

    def _forget_oldest_finished(self) -> None:
        """Keep the FACEREST_VIDEO_FINISHED_JOBS most recently finished jobs (called as each one
        ends): a job that failed at once held its events and its place in every listing for ever."""
        with self._lock:
            finished = sorted(
                (j for j in self._jobs.values() if j.finished), key=lambda j: j.finished_at or j.created
            )
            for job in finished[: max(0, len(finished) - self.settings.video_finished_jobs)]:
                del self._jobs[job.id]

    def get(self, job_id: str) -> VideoJob:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"no video job {job_id!r}")
        return job

    def list(self) -> list[VideoJob]:
        with self._lock:
            return list(self._jobs.values())

    def delete(self, job_id: str, timeout_s: float = 15.0) -> VideoJob:
        """Stop the job, wait for its thread, and forget it (blocking: call off the event loop)."""
        job = self.get(job_id)
        self._stop(job, timeout_s)
        with self._lock:
            self._jobs.pop(job_id, None)
        _return_freed_memory()
        return job

    def close(self) -> None:
        for job in self.list():
            self._stop(job, 5.0)
        with self._lock:
            self._jobs.clear()

    @staticmethod
    def _stop(job: VideoJob, timeout_s: float) -> None:
        job.stop.set()
        connection = job.connection
        if connection is not None:
            connection.close()  # wakes a read blocked on the socket
        if job.thread is not None:
            job.thread.join(timeout_s)

    # --- the job's thread ---

    def _run(self, job: VideoJob) -> None:
        settings = self.settings
        video = VideoAnalyzer(self.analyzer, settings.video_frames_in_flight)
        tracker = FaceTracker(job.options.tracker)
        limits = VideoLimits.from_settings(settings)
        started = time.monotonic()
        failures = 0
        reason = ""
        connection = LiveConnection(job.url, settings)
        job.connection = connection
        try:
            while not job.stop.is_set():
                sampled_before = job.frames_sampled
                try:
                    with connection.open(
                        limits, job.sampling, clock=lambda: time.monotonic() - started
                    ) as source:
                        job.set_status("running")
                        video.run(
                            self._counted(job, source),
                            job.options,
                            lambda ended: self._emit(job, ended),
                            stop=job.stop,
                            tracker=tracker,
                            on_frame=lambda frame, result: self._frame_seen(job, tracker, frame, result),
                        )
                    reason = connection.relay_error or "the stream ended"
                except Cancelled:
                    break
                except UrlRefused as exc:  # a redirect to an address the operator did not allow
                    job.error = {"code": exc.code, "detail": connection.describe(exc)}
                    break
                except (FaceRestError, OSError, ValueError) as exc:  # FFmpeg's errors are ValueErrors
                    reason = connection.describe(exc)
                    if not isinstance(exc, FaceRestError):
                        reason = f"the stream broke: {reason}"
                    connection.close_stream()
                    reason = connection.relay_error or reason
                finally:
                    connection.close_stream()
                if job.stop.is_set():
                    break
                # tracks whose face left before the drop end now, not when frames come back
                self._emit(job, tracker.expire(time.monotonic() - started))
                failures = 0 if job.frames_sampled > sampled_before else failures + 1
                if failures > settings.video_stream_retries:
                    job.error = {
                        "code": "stream_unavailable",
                        "detail": f"{reason}; no frames after "
                        f"{settings.video_stream_retries} reconnection tries",
                    }
                    break
                wait = min(settings.video_stream_backoff_s * 2 ** max(failures - 1, 0), MAX_BACKOFF_S)
                job.reconnects += 1
                job.set_status("reconnecting", reason=reason, retry_in_s=round(wait, 3))
                log.info("video job %s: %s; reconnecting in %.1f s", job.id, reason, wait)
                job.stop.wait(wait)
        except Exception as exc:  # a job must end with a reason, whatever happened in it
            if not job.stop.is_set():  # a stop closes the connection under the decoder: no failure
                log.exception("video job %s failed", job.id)
                detail = f"{type(exc).__name__}: {connection.describe(exc)}"
                job.error = {"code": "internal_error", "detail": detail}
        finally:
            connection.close()
            self._emit(job, tracker.finish())
            job.live_tracks = 0
            if job.error is not None:
                job.set_status("failed", error=job.error)
            else:
                job.set_status("stopped")
            if job.webhook is not None:
                job.webhook.close()
            self._forget_oldest_finished()

    @staticmethod
    def _counted(job: VideoJob, source: VideoSource):  # type: ignore[no-untyped-def]
        for frame in source.frames():
            job.frames_decoded = source.info.frames_decoded
            job.frames_sampled += 1
            yield frame

    @staticmethod
    def _frame_seen(job: VideoJob, tracker: FaceTracker, frame: SampledFrame, result: ImageResult) -> None:
        job.live_tracks = len(tracker.live)

    def _emit(self, job: VideoJob, ended: list[Track]) -> None:
        if not ended:
            return
        identities: list[dict[str, Any] | None] = [None] * len(ended)
        if job.identify is not None:
            embedded = [i for i, t in enumerate(ended) if t.embedding is not None]
            try:
                found = job.identify([ended[i].embedding for i in embedded])  # type: ignore[misc]
                for i, identity in zip(embedded, found, strict=True):
                    identities[i] = identity
            except FaceRestError as exc:
                log.warning("video job %s: identification failed: %s", job.id, exc.detail)
        finished = job.bus is not None and job.gallery is not None and job.bus.wants(TrackFinished)
        for track, identity in zip(ended, identities, strict=True):
            job.tracks += 1
            job.publish(
                "track", track_body(track, identity, embedding=job.return_embedding, crop=job.return_crops)
            )
            if finished:
                job.bus.publish(track_event(track, identity, job.gallery, "stream", f"job {job.id}"))  # type: ignore[union-attr]


def _return_freed_memory() -> None:
    """Give the heap the stopped job freed back to the system: glibc keeps freed blocks of the
    job's threads (decoder buffers, frames) in its arenas otherwise, and RSS never goes down."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
