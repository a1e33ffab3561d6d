"""Sampled frames -> faces (through the shared FaceAnalyzer and its scheduler) -> tracks.

Every frame goes through `FaceAnalyzer.process`, the same batching scheduler image requests use,
a few frames at a time (FACEREST_VIDEO_FRAMES_IN_FLIGHT): enough to keep the models busy while the
next frames decode, few enough that an image request arriving meanwhile waits behind at most
that many detector calls.
"""

from __future__ import annotations

import base64
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from facerest.errors import FaceRestError, RequestTimeout
from facerest.events import Candidate, SeenFace, TrackFinished
from facerest.imaging.crops import cut_crop
from facerest.models.faces import ImageResult
from facerest.pipeline import ExtractOptions, FaceAnalyzer
from facerest.video.decode import SampledFrame
from facerest.video.tracker import FaceTracker, Observation, Track, TrackerConfig, face_quality

#: identification of a finished track: its embedding -> {"subject": ..., "similarity": ...}
Identify = Callable[[list[np.ndarray]], list[dict[str, Any]]]


@dataclass(slots=True)
class VideoOptions:
    extract: ExtractOptions = field(default_factory=ExtractOptions)
    return_boxes: bool = False
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    #: keep each track's best face as a picture of at most this many pixels (0: none)
    crop_size: int = 0


@dataclass(slots=True)
class TrackSummary:
    """A finished track as the API reports it."""

    track: Track
    identity: dict[str, Any] | None = None


class Cancelled(FaceRestError):
    status_code = 499
    code = "cancelled"


class VideoAnalyzer:
    def __init__(self, analyzer: FaceAnalyzer, frames_in_flight: int = 1) -> None:
        self.analyzer = analyzer
        self.frames_in_flight = frames_in_flight

    def run(
        self,
        frames: Iterable[SampledFrame],
        options: VideoOptions,
        on_tracks: Callable[[list[Track]], None],
        *,
        deadline: float | None = None,
        stop: threading.Event | None = None,
        tracker: FaceTracker | None = None,
        on_frame: Callable[[SampledFrame, ImageResult], None] | None = None,
    ) -> FaceTracker:
        """Feed every frame to the models and the tracker; `on_tracks` gets tracks as they end,
        then (when `frames` is exhausted) the rest. Returns the tracker (live tracks kept when
        stopped, for a stream job that reconnects)."""
        tracker = tracker or FaceTracker(options.tracker, keep_boxes=options.return_boxes)
        for frame, result in self._analysed(frames, options.extract, deadline, stop):
            if on_frame is not None:
                on_frame(frame, result)
            if result.error is not None:
                continue
            ended = tracker.update(frame.t, self._observations(frame, result, options.crop_size))
            if ended:
                on_tracks(ended)
        return tracker

    def _analysed(
        self,
        frames: Iterable[SampledFrame],
        options: ExtractOptions,
        deadline: float | None,
        stop: threading.Event | None,
    ) -> Iterator[tuple[SampledFrame, ImageResult]]:
        pending: deque[tuple[SampledFrame, Future]] = deque()
        with ThreadPoolExecutor(self.frames_in_flight, thread_name_prefix="facerest-video") as pool:
            try:
                for frame in frames:
                    if stop is not None and stop.is_set():
                        raise Cancelled("the job was stopped")
                    if deadline is not None and time.monotonic() > deadline:
                        raise RequestTimeout("the video took longer than FACEREST_VIDEO_TIMEOUT_S")
                    pending.append((frame, pool.submit(self._one, frame, options, deadline)))
                    if len(pending) >= self.frames_in_flight:
                        done_frame, future = pending.popleft()
                        yield done_frame, future.result()
                while pending:
                    done_frame, future = pending.popleft()
                    yield done_frame, future.result()
            finally:
                for _, future in pending:
                    future.cancel()

    def _one(self, frame: SampledFrame, options: ExtractOptions, deadline: float | None) -> ImageResult:
        return self.analyzer.process([frame.image], options, deadline=deadline)[0]

    @staticmethod
    def _observations(frame: SampledFrame, result: ImageResult, crop_size: int = 0) -> list[Observation]:
        gray = None
        out = []
        for face in result.faces:
            x1, y1, x2, y2 = (round(float(v)) for v in face.bbox)
            h, w = frame.image.shape[:2]
            x1, y1, x2, y2 = max(0, x1), max(0, y1), min(w, x2), min(h, y2)
            patch = None
            if x2 - x1 >= 8 and y2 - y1 >= 8:
                if gray is None:
                    gray = cv2.cvtColor(frame.image, cv2.COLOR_BGR2GRAY)
                patch = cv2.resize(gray[y1:y2, x1:x2], (112, 112), interpolation=cv2.INTER_AREA)
            out.append(
                Observation(
                    t=frame.t,
                    frame=frame.index,
                    bbox=face.bbox.astype(np.float32),
                    score=face.score,
                    quality=face_quality(face.bbox, face.score, face.landmarks, patch),
                    embedding=face.embedding,
                    landmarks=face.landmarks,
                    gender=face.gender,
                    age=face.age,
                    # a view-free copy, small: the tracker keeps only its tracks' best ones
                    crop=cut_crop(frame.image, face.bbox, face.landmarks, crop_size) if crop_size else None,
                )
            )
        return out


def track_event(
    track: Track, identity: dict[str, Any] | None, gallery: str | None, source: str, ref: str
) -> TrackFinished:
    """A finished track for the event stream, with its best face's picture when one was kept."""
    face = None
    if track.embedding is not None:
        best = track.best
        crop = track.best_crop
        subject = None if identity is None else identity.get("subject")
        similarity = None if identity is None else identity.get("similarity")
        face = SeenFace(
            track.embedding,
            [float(v) for v in best.bbox],
            float(best.score),
            float(best.quality),
            subject,
            similarity,
            float(identity.get("threshold", 1.0)) if identity else 1.0,
            [Candidate(subject, similarity)] if subject is not None and similarity is not None else [],
            jpeg=None if crop is None else crop.jpeg,
            crop_size=None if crop is None else (crop.width, crop.height),
            landmarks=None if crop is None else crop.landmarks,
        )
    return TrackFinished(
        gallery, source, ref, track.id, round(track.first.t, 4), round(track.last.t, 4), face
    )


def track_body(
    track: Track, identity: dict[str, Any] | None, *, embedding: bool, crop: bool = False
) -> dict[str, Any]:
    """One track as JSON; `crop`: the best face's picture (JPEG, base64) as `best.image`."""
    best = track.best
    body: dict[str, Any] = {
        "track": track.id,
        "first_s": round(track.first.t, 4),
        "last_s": round(track.last.t, 4),
        "frames": track.frames,
        "best": {
            "t": round(best.t, 4),
            "frame": best.frame,
            "bbox": [round(float(v), 1) for v in best.bbox],
            "prob": round(best.score, 4),
            "quality": round(best.quality, 4),
        },
    }
    if crop and (picture := track.best_crop) is not None:
        body["best"]["image"] = base64.b64encode(picture.jpeg).decode()
    if embedding and track.embedding is not None:
        body["vec"] = [round(float(v), 6) for v in track.embedding]
    if track.gender is not None:
        body["gender"] = track.gender
    if track.age is not None:
        body["age"] = track.age
    if identity is not None:
        body["identity"] = identity
    if track.keep_boxes:
        body["boxes"] = [{"t": round(t, 4), "bbox": b, "prob": s} for t, b, s in track.boxes]
    return body
