"""Faces of successive frames linked into tracks: one track per appearance of a person.

ByteTrack's shape, with appearance: each frame, the live tracks and the new faces are matched by
one assignment (scipy's linear_sum_assignment) over a cost mixing the overlap of the face with the
track's predicted box (constant velocity) and the cosine of the face's embedding to the track's.
Sure detections are matched first, weak ones then only to tracks still unmatched, and only weak
ones never start a track. A pair is allowed only when the embedding agrees (or, without
embeddings, the boxes overlap), so two people crossing keep their own tracks even while their
boxes overlap. A track unseen for `max_gap_s` ends.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from facerest.imaging.crops import FaceCrop, RawCrop
from facerest.video.decode import Sampling

#: how many of its best observations a track keeps to aggregate its embedding
TOP_K = 5


@dataclass(slots=True)
class Observation:
    """One face in one sampled frame."""

    t: float
    frame: int
    bbox: np.ndarray  # (4,) x1, y1, x2, y2
    score: float
    quality: float
    embedding: np.ndarray | None = None  # unit length
    landmarks: np.ndarray | None = None
    gender: str | None = None
    age: int | None = None
    crop: RawCrop | None = None  # the face's picture, kept only while it is its track's best


@dataclass(slots=True)
class Track:
    id: int
    first: Observation
    last: Observation
    best: Observation
    frames: int = 1
    keep_boxes: bool = False
    boxes: list[tuple[float, list[float], float]] = field(default_factory=list)  # (t, bbox, score)
    top: list[Observation] = field(default_factory=list)  # the TOP_K best, embeddings kept
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4, np.float32))  # bbox change per s
    genders: dict[str, int] = field(default_factory=dict)
    ages: list[int] = field(default_factory=list)
    _embedding: np.ndarray | None = None
    _best_jpeg: FaceCrop | None = None

    @classmethod
    def start(cls, track_id: int, obs: Observation, keep_boxes: bool) -> Track:
        track = cls(track_id, obs, obs, obs, keep_boxes=keep_boxes)
        track._observe(obs)
        return track

    def add(self, obs: Observation) -> None:
        dt = obs.t - self.last.t
        if dt > 0:
            moved = (obs.bbox - self.last.bbox) / dt
            self.velocity = moved if self.frames == 1 else 0.5 * self.velocity + 0.5 * moved
        self.last = obs
        self.frames += 1
        if obs.quality > self.best.quality:
            self.best.crop = None  # one picture per track: the best face's
            self.best = obs
            self._best_jpeg = None
        else:
            obs.crop = None
        self._observe(obs)

    def _observe(self, obs: Observation) -> None:
        if self.keep_boxes:
            self.boxes.append((obs.t, [round(float(v), 1) for v in obs.bbox], round(obs.score, 4)))
        if obs.gender is not None:
            self.genders[obs.gender] = self.genders.get(obs.gender, 0) + 1
        if obs.age is not None and len(self.ages) < 256:
            self.ages.append(obs.age)
        if obs.embedding is not None:
            self.top.append(obs)
            self.top.sort(key=lambda o: -o.quality)
            del self.top[TOP_K:]
            self._embedding = None
        # the frames that stay referenced are the first, last, best and TOP_K: memory is bounded
        # per track whatever its length (boxes only when asked for)

    def predict(self, t: float) -> np.ndarray:
        return self.last.bbox + self.velocity * min(t - self.last.t, 1.0)

    @property
    def embedding(self) -> np.ndarray | None:
        """The quality-weighted mean of its best observations' embeddings, unit length."""
        if self._embedding is None and self.top:
            weights = np.array([max(o.quality, 1e-3) for o in self.top], np.float32)
            mean = (np.stack([o.embedding for o in self.top]) * weights[:, None]).sum(0)  # type: ignore[misc]
            self._embedding = (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)
        return self._embedding

    @property
    def best_crop(self) -> FaceCrop | None:
        """The best face's picture as JPEG (encoded once, when first asked)."""
        if self._best_jpeg is None and self.best.crop is not None:
            self._best_jpeg = self.best.crop.encode()
        return self._best_jpeg

    @property
    def gender(self) -> str | None:
        return max(self.genders, key=self.genders.__getitem__) if self.genders else None

    @property
    def age(self) -> int | None:
        return int(np.median(self.ages)) if self.ages else None


def track_gap(gap_s: float, sampling: Sampling) -> float:
    """The gap after which a track ends: the operator's, but never under two and a half sampling
    intervals, so that one missed detection (or sampling at 1 fps) does not cut a track."""
    return max(gap_s, 2.5 * sampling.interval_s)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) intersection over union of x1, y1, x2, y2 boxes."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float32)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-6)


@dataclass
class TrackerConfig:
    max_gap_s: float = 1.0
    min_similarity: float = 0.3  # below it, a face is never the same person as a track
    sure_similarity: float = 0.5  # at or above it, a face joins a track wherever it moved
    min_iou: float = 0.2  # without embeddings: the overlap that links a face to a track
    high_score: float = 0.6  # detections under it only continue tracks (ByteTrack's second pass)
    max_tracks: int = 256  # live tracks at once, bounding memory on crowds


class FaceTracker:
    def __init__(self, config: TrackerConfig | None = None, keep_boxes: bool = False) -> None:
        self.config = config or TrackerConfig()
        self.keep_boxes = keep_boxes
        self.live: list[Track] = []
        self._next_id = 0

    def update(self, t: float, observations: Iterable[Observation]) -> list[Track]:
        """Link one sampled frame's faces; returns the tracks that ended (unseen for the gap)."""
        faces = list(observations)
        ended = [tr for tr in self.live if t - tr.last.t > self.config.max_gap_s]
        self.live = [tr for tr in self.live if t - tr.last.t <= self.config.max_gap_s]
        sure = [f for f in faces if f.score >= self.config.high_score]
        weak = [f for f in faces if f.score < self.config.high_score]
        unmatched = self._associate(t, self.live, sure)
        matched_ids = {id(tr) for tr in self.live if tr.last.t == t}
        rest = [tr for tr in self.live if id(tr) not in matched_ids]
        self._associate(t, rest, weak)
        for face in unmatched:
            if len(self.live) >= self.config.max_tracks:
                break
            self.live.append(Track.start(self._next_id, face, self.keep_boxes))
            self._next_id += 1
        return ended

    def expire(self, t: float) -> list[Track]:
        """End the tracks unseen for the gap at time `t` (no frame came: a stream dropped)."""
        ended = [tr for tr in self.live if t - tr.last.t > self.config.max_gap_s]
        self.live = [tr for tr in self.live if t - tr.last.t <= self.config.max_gap_s]
        return ended

    def finish(self) -> list[Track]:
        """End every live track (the video is over)."""
        ended, self.live = self.live, []
        return ended

    def _associate(self, t: float, tracks: list[Track], faces: list[Observation]) -> list[Observation]:
        """Match faces to tracks in place; returns the faces no track took."""
        if not tracks or not faces:
            return faces
        predicted = np.stack([tr.predict(t) for tr in tracks])
        overlap = iou_matrix(predicted, np.stack([f.bbox for f in faces]))
        similarity = np.full(overlap.shape, np.nan, np.float32)
        for i, track in enumerate(tracks):
            mine = track.embedding
            if mine is None:
                continue
            for j, face in enumerate(faces):
                if face.embedding is not None:
                    similarity[i, j] = float(mine @ face.embedding)
        cfg = self.config
        known = ~np.isnan(similarity)
        sim = np.nan_to_num(similarity, nan=0.0)
        allowed = np.where(
            known,
            (sim >= cfg.sure_similarity) | ((sim >= cfg.min_similarity) & (overlap >= cfg.min_iou)),
            overlap >= cfg.min_iou,
        )
        cost = np.where(known, 1.0 - sim, 1.0) + (1.0 - overlap)
        cost = np.where(allowed, cost, 1e6)
        rows, cols = linear_sum_assignment(cost)
        taken = set()
        for r, c in zip(rows, cols, strict=True):
            if allowed[r, c]:
                tracks[r].add(faces[c])
                taken.add(c)
        return [f for j, f in enumerate(faces) if j not in taken]


def face_quality(
    bbox: np.ndarray, score: float, landmarks: np.ndarray | None, gray_face: np.ndarray | None
) -> float:
    """0..1, higher for faces the recognizer sees best: large, sharp, frontal, surely detected."""
    width = float(min(bbox[2] - bbox[0], bbox[3] - bbox[1]))
    size = min(width / 112.0, 1.0)  # the recognizer's input: bigger adds no detail
    sharpness = 1.0
    if gray_face is not None and gray_face.size >= 64:
        import cv2

        # variance of the Laplacian, a standard focus measure; ~300+ on a sharp 112 px face
        variance = float(cv2.Laplacian(gray_face, cv2.CV_32F).var())
        sharpness = min(variance / 300.0, 1.0)
    pose = 1.0
    if landmarks is not None:
        left_eye, right_eye, nose = landmarks[0], landmarks[1], landmarks[2]
        eye_span = float(np.linalg.norm(right_eye - left_eye))
        if eye_span > 1e-3:
            # the nose's offset from the eyes' midpoint, along the eye line: 0 when frontal
            off = abs(float(nose[0] - (left_eye[0] + right_eye[0]) / 2)) / eye_span
            pose = max(0.0, 1.0 - 2.0 * off)
    return float(score) * (0.25 + 0.75 * size) * (0.25 + 0.75 * sharpness) * (0.25 + 0.75 * pose)
