"""Video bytes or streams -> sampled BGR frames with timestamps, within the operator's limits.

PyAV (FFmpeg's libraries) decodes: it reads from memory and from file-like objects, so an upload
never touches the disk and a stream can be read through our own SSRF-checked connection; it gives
each frame's timestamp and key-frame flag; and its wheels ship the encoders the tests need to make
videos (libx264, libvpx-vp9, MJPEG, MPEG-4 Part 2), which OpenCV's wheels lack for H.264.
Measured against OpenCV's FFmpeg backend in docs/performance.md.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import av
import av.error
import numpy as np

from facerest.config import Settings
from facerest.errors import RequestTimeout, VideoDecodeError, VideoTooLarge

log = logging.getLogger(__name__)

# FFmpeg logs every damaged packet on stderr; our errors say what matters
av.logging.set_level(av.logging.PANIC)


Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class VideoLimits:
    max_duration_s: float
    max_pixels: int
    max_frames: int  # frames sampled (each goes to the models)
    decode_threads: int = 1  # 0: FFmpeg's choice

    @classmethod
    def from_settings(cls, settings: Settings) -> VideoLimits:
        return cls(
            settings.video_max_duration_s,
            settings.video_max_pixels,
            settings.video_max_frames,
            settings.video_decode_threads,
        )


@dataclass(frozen=True, slots=True)
class Sampling:
    """Which frames go to the models: `fps` per second of video (0: every frame), or key frames."""

    fps: float = 3.0
    keyframes: bool = False

    @property
    def interval_s(self) -> float:
        return 0.0 if self.keyframes or self.fps <= 0 else 1.0 / self.fps


@dataclass(slots=True)
class VideoInfo:
    codec: str
    container: str
    width: int
    height: int
    fps: float | None  # the stream's average rate, when it declares one
    duration_s: float | None  # declared; None for live streams and some containers
    frames_decoded: int = 0
    frames_sampled: int = 0


@dataclass(frozen=True, slots=True)
class SampledFrame:
    index: int  # position among the decoded frames
    t: float  # seconds from the start of the video (or of the stream job)
    image: np.ndarray  # (H, W, 3) uint8 BGR


class VideoSource:
    """One opened video: its description, and its frames sampled as asked (iterate once)."""

    def __init__(
        self,
        data: bytes | BinaryIO | str,
        limits: VideoLimits,
        sampling: Sampling,
        *,
        fmt: str | None = None,
        live: bool = False,
        clock: Clock | None = None,
        options: dict[str, str] | None = None,
    ) -> None:
        """`data`: the file's bytes, a readable file, or a URL FFmpeg opens itself (RTSP; only
        after facerest.video.stream checked it)."""
        self.limits = limits
        self.sampling = sampling
        self.live = live
        self._clock = clock
        fileobj = io.BytesIO(data) if isinstance(data, bytes | bytearray) else data
        try:
            self._container = av.open(fileobj, mode="r", format=fmt, options=options or {}, timeout=None)
        except (av.error.FFmpegError, ValueError, OSError) as exc:
            raise VideoDecodeError(f"not a video FFmpeg can read: {_reason(exc)}") from exc
        try:
            if not self._container.streams.video:
                raise VideoDecodeError("the file has no video track")
            form = self._container.format.name
            # FFmpeg reads a photo as a one-frame video (a live stream may be raw JPEGs in a row)
            if not live and (form == "image2" or form.endswith("_pipe")):
                raise VideoDecodeError(
                    f"a still image ({form.removesuffix('_pipe')}), not a video: use /extract"
                )
            self._stream = self._container.streams.video[0]
            if limits.decode_threads != 1:
                self._stream.thread_type = "AUTO"
                self._stream.codec_context.thread_count = limits.decode_threads
            self.info = self._describe()
            self._check_limits()
        except BaseException:
            self._container.close()
            raise

    def _describe(self) -> VideoInfo:
        stream, container = self._stream, self._container
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000
        rate = stream.average_rate
        return VideoInfo(
            codec=stream.codec_context.name,
            container=container.format.name,
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            fps=float(rate) if rate else None,
            duration_s=None if self.live else duration,
        )

    def _check_limits(self) -> None:
        info, limits = self.info, self.limits
        if info.width * info.height > limits.max_pixels:
            raise VideoTooLarge(
                f"frames of {info.width}x{info.height} exceed the limit of {limits.max_pixels} pixels"
            )
        if info.duration_s is not None and info.duration_s > limits.max_duration_s:
            raise VideoTooLarge(
                f"the video lasts {info.duration_s:.1f} s, more than the limit of {limits.max_duration_s} s"
            )
        if not self.live and info.duration_s is not None and self.sampling.interval_s > 0:
            expected = int(info.duration_s / self.sampling.interval_s) + 1
            if expected > limits.max_frames:
                raise VideoTooLarge(
                    f"{self.sampling.fps} frames/s over {info.duration_s:.1f} s samples {expected} frames, "
                    f"more than the limit of {limits.max_frames}; ask for a lower fps"
                )

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> VideoSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def frames(self, deadline: float | None = None) -> Iterator[SampledFrame]:
        """The sampled frames in order. Decoding errors after the first frame end the video there
        (a file cut short keeps the frames before the cut); before it, they are the input's fault.
        `deadline` (time.monotonic()) bounds the decoding too, also between sampled frames."""
        interval = self.sampling.interval_s
        next_t = 0.0
        decoded = 0
        start: float | None = None  # some containers start their clock late (MPEG-TS at 1.4 s)
        info = self.info
        try:
            for frame in self._container.decode(self._stream):
                decoded += 1
                info.frames_decoded = decoded
                if deadline is not None and time.monotonic() > deadline:
                    raise RequestTimeout("decoding the video took longer than its time limit")
                t = self._clock() if self._clock is not None else _timestamp(frame, decoded, info)
                if start is None:
                    start = t
                t -= start
                if not self.live and t > self.limits.max_duration_s:
                    raise VideoTooLarge(
                        f"the video lasts more than the limit of {self.limits.max_duration_s} s"
                    )
                if frame.width * frame.height > self.limits.max_pixels:
                    raise VideoTooLarge(
                        f"a frame of {frame.width}x{frame.height} exceeds the limit of "
                        f"{self.limits.max_pixels} pixels"
                    )
                if self.sampling.keyframes and not frame.key_frame:
                    continue
                if interval > 0:
                    if t + 1e-6 < next_t:
                        continue
                    # the grid stays on multiples of the interval: sampled times never drift
                    next_t = (int(t / interval + 1e-6) + 1) * interval
                if not self.live and info.frames_sampled >= self.limits.max_frames:
                    raise VideoTooLarge(
                        f"the video has more than the limit of {self.limits.max_frames} frames to sample"
                    )
                info.frames_sampled += 1
                yield SampledFrame(decoded - 1, t, frame.to_ndarray(format="bgr24"))
        except (av.error.FFmpegError, ValueError) as exc:
            if info.frames_sampled == 0 and decoded == 0:
                raise VideoDecodeError(f"the video cannot be decoded: {_reason(exc)}") from exc
            if self.live:
                raise
            log.info("video ends early after %d frames: %s", decoded, _reason(exc))
        if decoded == 0 and not self.live:
            raise VideoDecodeError("the video has no frame that can be decoded")


def _timestamp(frame: av.VideoFrame, decoded: int, info: VideoInfo) -> float:
    if frame.pts is not None and frame.time_base is not None:
        return max(0.0, float(frame.pts * frame.time_base))
    return (decoded - 1) / (info.fps or 25.0)


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return text.split(": '<")[0][:200]
