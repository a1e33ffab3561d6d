"""Synthetic videos with known ground truth, made from still photos: for tests and benchmarks.

A scene is a background and people (a face patch cut from a photo) who appear for a while and
move along a straight line; a script is scenes one after another (a cut between them). Rendering
knows where every face is at every frame, so tests can count tracks, identity switches and
timestamps exactly. Encoding goes through PyAV with the codec asked for.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import av
import cv2
import numpy as np

#: codec -> (container suffix, pixel format) for the encoders PyAV's wheels ship
CODECS = {
    "libx264": (".mp4", "yuv420p"),
    "libvpx-vp9": (".webm", "yuv420p"),
    "mjpeg": (".avi", "yuvj420p"),
    "mpeg4": (".mp4", "yuv420p"),
}


@dataclass(frozen=True)
class Person:
    name: str
    patch: np.ndarray  # BGR, the face with some margin around it
    face_box: tuple[float, float, float, float]  # the face inside the patch, x1, y1, x2, y2


@dataclass(frozen=True)
class Appearance:
    person: Person
    start_s: float
    end_s: float
    start_xy: tuple[float, float]  # the patch's top-left corner at start_s
    end_xy: tuple[float, float]  # ... and at end_s
    z: int = 0  # higher is drawn over lower (who hides whom when crossing)

    def position(self, t: float) -> tuple[int, int]:
        span = max(self.end_s - self.start_s, 1e-6)
        k = min(max((t - self.start_s) / span, 0.0), 1.0)
        x = self.start_xy[0] + k * (self.end_xy[0] - self.start_xy[0])
        y = self.start_xy[1] + k * (self.end_xy[1] - self.start_xy[1])
        return round(x), round(y)

    def visible(self, t: float) -> bool:
        return self.start_s <= t < self.end_s

    def face_box(self, t: float) -> np.ndarray:
        x, y = self.position(t)
        fx1, fy1, fx2, fy2 = self.person.face_box
        return np.array([x + fx1, y + fy1, x + fx2, y + fy2], np.float32)


@dataclass
class Script:
    width: int = 640
    height: int = 360
    fps: float = 15.0
    duration_s: float = 4.0
    appearances: list[Appearance] = field(default_factory=list)
    cuts: list[float] = field(default_factory=list)  # times where the background changes
    seed: int = 0

    def backgrounds(self) -> list[np.ndarray]:
        rng = np.random.default_rng(self.seed)
        out = []
        for _ in range(len(self.cuts) + 1):
            # a smooth random colour field: a textured scene that is not a face and codes cheaply
            small = rng.integers(40, 200, (9, 16, 3), dtype=np.uint8)
            out.append(cv2.resize(small, (self.width, self.height), interpolation=cv2.INTER_CUBIC))
        return out

    def frames(self) -> Iterator[tuple[float, np.ndarray]]:
        backgrounds = self.backgrounds()
        count = round(self.duration_s * self.fps)
        for n in range(count):
            t = n / self.fps
            scene = sum(1 for c in self.cuts if t >= c)
            frame = backgrounds[scene].copy()
            for app in sorted(self.appearances, key=lambda a: a.z):
                if app.visible(t):
                    _paste(frame, app.person.patch, app.position(t))
            yield t, frame

    def visible_at(self, t: float) -> list[Appearance]:
        return [a for a in self.appearances if a.visible(t)]


def _paste(frame: np.ndarray, patch: np.ndarray, xy: tuple[int, int]) -> None:
    x, y = xy
    h, w = patch.shape[:2]
    fh, fw = frame.shape[:2]
    x1, y1, x2, y2 = max(x, 0), max(y, 0), min(x + w, fw), min(y + h, fh)
    if x2 > x1 and y2 > y1:
        frame[y1:y2, x1:x2] = patch[y1 - y : y2 - y, x1 - x : x2 - x]


def person_from_photo(
    name: str, image: np.ndarray, bbox: np.ndarray, face_width: float | None = None, margin: float = 0.6
) -> Person:
    """The face at `bbox` in `image` with `margin` (a fraction of its size) around it, scaled so
    the face is `face_width` pixels wide (default: as it is)."""
    x1, y1, x2, y2 = (float(v) for v in bbox)
    w, h = x2 - x1, y2 - y1
    cx1, cy1 = int(max(0, x1 - margin * w)), int(max(0, y1 - margin * h))
    cx2, cy2 = int(min(image.shape[1], x2 + margin * w)), int(min(image.shape[0], y2 + margin * h))
    patch = image[cy1:cy2, cx1:cx2]
    scale = 1.0 if face_width is None else face_width / w
    if scale != 1.0:
        size = (max(1, round(patch.shape[1] * scale)), max(1, round(patch.shape[0] * scale)))
        patch = cv2.resize(patch, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    box = ((x1 - cx1) * scale, (y1 - cy1) * scale, (x2 - cx1) * scale, (y2 - cy1) * scale)
    return Person(name, np.ascontiguousarray(patch), box)


def encode(frames: Iterator[tuple[float, np.ndarray]], path: Path, codec: str, fps: float) -> Path:
    """Write BGR frames to `path` with `codec` (see CODECS); returns the path."""
    _, pix_fmt = CODECS[codec]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=round(fps))
        first = True
        for _, image in frames:
            if first:
                stream.height, stream.width = image.shape[:2]
                stream.pix_fmt = pix_fmt
                if codec == "libx264":
                    stream.options = {"preset": "ultrafast"}
                elif codec == "libvpx-vp9":
                    stream.options = {"deadline": "realtime", "cpu-used": "8"}
                first = False
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def render(script: Script, path: Path, codec: str) -> Path:
    return encode(script.frames(), path, codec, script.fps)
