"""Video bytes or streams -> sampled BGR frames with timestamps, within the operator's limits.

PyAV (FFmpeg's libraries) decodes: it reads from memory and from file-like objects, so an upload
never touches the disk and a stream can be read through our own SSRF-checked connection; it gives
each frame's timestamp and key-frame flag; and its wheels ship the encoders the tests need to make
videos (libx264, libvpx-vp9, MJPEG, MPEG-4 Part 2), which OpenCV's wheels lack for H.264.
Measured against OpenCV's FFmpeg backend in docs/performance.md.

Hostile files (issue 28): FFmpeg reads whatever it recognises, and decodes before our checks see a
frame. So it is told the limits itself, before any work: only the demuxers of `VideoLimits.formats`
may open an upload (an SDP file made an upload a UDP receiver; HLS and concat playlists fetch
other URLs) and no nested protocol at all; decoders refuse a frame over the pixel limit from its
header, before allocating it (a 1 MB file whose second frame was a 16000x16000 12-bit JPEG cost
0.5-1.5 GB before the 413); stream probing decodes nothing. Decode work is bounded per second of
video, per byte of the file and per sampled frame, from the headers first and then as frames
come (a 1.1 MB MP4 of 10,200 4K frames in 0.34 s held a core for 34-57 s to sample 2).
"""

from __future__ import annotations

import io
import logging
import math
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import av
import av.error
import numpy as np

from facerest.config import DEFAULT_VIDEO_FORMATS, Settings
from facerest.errors import RequestTimeout, VideoDecodeError, VideoTooLarge

log = logging.getLogger(__name__)

# FFmpeg logs every damaged packet on stderr; our errors say what matters
av.logging.set_level(av.logging.PANIC)


Clock = Callable[[], float]


#: what else a live HTTP stream may be: MJPEG as multipart or as JPEGs in a row, raw H.264/HEVC
LIVE_FORMATS = ("mpjpeg", "mjpeg", "jpeg_pipe", "h264", "hevc")
#: a protocol name FFmpeg has not: as the protocol allowlist, it allows none (nested opens by a
#: demuxer: HLS segments, concat entries, SDP's RTP sockets, MOV references)
NO_PROTOCOLS = "none"
#: decoders FFmpeg's stream probe may open: none (it decodes before our limits are known to it
#: for streams that appear while reading, as in MPEG-TS); sizes then come from the headers and
#: parsers, and our own decoder, which has the limits, decodes every frame
NO_DECODERS = "none"

_REFUSED_SIZE = re.compile(r"Picture size (\d+)x(\d+) exceeds specified max pixel count")


@dataclass(frozen=True, slots=True)
class VideoLimits:
    max_duration_s: float
    max_pixels: int
    max_frames: int  # frames sampled (each goes to the models)
    decode_threads: int = 1  # 0: FFmpeg's choice
    max_fps: float = 240.0  # frames decoded per second of video (of wall clock, live)
    max_pixels_per_byte: float = 20_000.0  # pixels decoded per byte of a file
    max_frames_per_sample: int = 600  # frames decoded between two sampled frames
    formats: tuple[str, ...] = DEFAULT_VIDEO_FORMATS

    @classmethod
    def from_settings(cls, settings: Settings) -> VideoLimits:
        return cls(
            settings.video_max_duration_s,
            settings.video_max_pixels,
            settings.video_max_frames,
            settings.video_decode_threads,
            settings.video_max_fps,
            settings.video_max_pixels_per_byte,
            settings.video_max_frames_per_sample,
            tuple(settings.video_formats),
        )

    @property
    def decoder_max_pixels(self) -> int:
        """The pixel limit FFmpeg's decoders get: ours plus the row alignment they add to a
        frame's width when they allocate it (up to 64 pixels a row), so a frame within our limit
        is never refused by theirs; ours is checked exactly on every decoded frame."""
        return self.max_pixels + 128 * (math.isqrt(self.max_pixels) + 1)


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
        formats: tuple[str, ...] | None = None,
        protocols: str = NO_PROTOCOLS,
        on_frame: Callable[[], None] | None = None,
    ) -> None:
        """`data`: the file's bytes, a readable file, or a URL FFmpeg opens itself (RTSP, only
        through facerest.video.stream's relay). `formats`: the demuxers allowed (default: the
        limits'); `protocols`: the protocols FFmpeg may open itself (default: none)."""
        self.limits = limits
        self.sampling = sampling
        self.live = live
        self._clock = clock
        self._on_frame = on_frame  # called after each decoded frame (a live stream's byte budget)
        self._bytes = len(data) if isinstance(data, bytes | bytearray) else None
        allowed = formats if formats is not None else limits.formats
        fileobj = io.BytesIO(data) if isinstance(data, bytes | bytearray) else data
        # the demuxer allowlist is checked once FFmpeg has probed the input, before it reads the
        # header (where an SDP file opens its sockets); the decoders' pixel limit travels as a
        # codec option to the probe of the streams a header declares
        container_options = {"format_whitelist": ",".join(allowed), "protocol_whitelist": protocols}
        if fmt is None:  # probed formats include those whose streams appear while reading
            container_options["codec_whitelist"] = NO_DECODERS
        codec_options = {"max_pixels": str(limits.decoder_max_pixels)}
        try:
            self._container = av.open(
                fileobj,
                mode="r",
                format=fmt,
                options={**(options or {}), **codec_options},
                container_options=container_options,
                timeout=None,
            )
        except (av.error.FFmpegError, ValueError, OSError) as exc:
            log_line = _log_text(exc)
            if "not on whitelist" in log_line and "Format" in log_line:
                raise VideoDecodeError(
                    "not a video file this server reads: the container must be one of "
                    f"{', '.join(allowed)} (a photo goes to /extract)"
                ) from exc
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
            context = self._stream.codec_context
            context.options = {**context.options, **codec_options}
            if sampling.keyframes:
                context.skip_frame = "NONKEY"  # the frames between key frames are not decoded at all
            if limits.decode_threads != 1:
                self._stream.thread_type = "AUTO"
                context.thread_count = limits.decode_threads
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
        # the decode work the headers declare, refused before a frame is decoded
        declared = self._stream.frames  # 0 when the container does not count them
        if self.live or not declared:
            return
        if info.duration_s is not None and declared > limits.max_fps * (info.duration_s + 1.0):
            raise VideoTooLarge(
                f"{declared} frames in {info.duration_s:.2f} s: more than the limit of "
                f"{limits.max_fps:g} frames per second of video"
            )
        budget = self._pixel_budget()
        if budget is not None and declared * info.width * info.height > budget:
            raise VideoTooLarge(
                f"{declared} frames of {info.width}x{info.height} from {self._bytes} bytes: more than "
                f"the limit of {limits.max_pixels_per_byte:g} decoded pixels per byte of the file"
            )
        rate = declared / info.duration_s if info.duration_s else None
        interval = self.sampling.interval_s
        if rate is not None and interval > 0 and rate * interval > limits.max_frames_per_sample:
            raise VideoTooLarge(
                f"{rate:.0f} frames/s sampled at {self.sampling.fps:g} per second decodes "
                f"{rate * interval:.0f} frames per sampled frame, more than the limit of "
                f"{limits.max_frames_per_sample}; ask for a higher fps or key frames"
            )

    def _pixel_budget(self) -> float | None:
        """Pixels a file may decode, in all (None for streams: they are bounded per second)."""
        if self._bytes is None:
            return None
        return max(self._bytes, 1) * self.limits.max_pixels_per_byte

    def _check_work(self, decoded: int, pixels: int, t: float, since_sample: int) -> None:
        """The decode work so far, against the limits per second, per byte and per sample."""
        limits = self.limits
        if decoded > limits.max_fps * (max(t, 0.0) + 1.0):
            raise VideoTooLarge(
                f"{decoded} frames by {t:.2f} s: more than the limit of {limits.max_fps:g} frames per "
                "second of video"
            )
        budget = self._pixel_budget()
        if budget is not None and pixels > budget:
            raise VideoTooLarge(
                f"decoding took more than the limit of {limits.max_pixels_per_byte:g} pixels per byte "
                f"of the file ({self._bytes} bytes)"
            )
        if since_sample > limits.max_frames_per_sample:
            raise VideoTooLarge(
                f"more than {limits.max_frames_per_sample} frames decoded for one sampled frame; "
                "ask for a higher fps or key frames"
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
        pixels = 0  # decoded, all frames together
        since_sample = 0  # frames decoded since the last sampled one
        start: float | None = None  # some containers start their clock late (MPEG-TS at 1.4 s)
        info = self.info
        try:
            for frame in self._container.decode(self._stream):
                decoded += 1
                since_sample += 1
                info.frames_decoded = decoded
                if self._on_frame is not None:
                    self._on_frame()
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
                pixels += frame.width * frame.height
                self._check_work(decoded, pixels, t, since_sample)
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
                since_sample = 0
                yield SampledFrame(decoded - 1, t, frame.to_ndarray(format="bgr24"))
        except (av.error.FFmpegError, ValueError) as exc:
            refused = _refused_size(exc)
            if refused is not None:  # the decoder's own pixel limit: before the frame was allocated
                raise VideoTooLarge(
                    f"a frame of {refused} exceeds the limit of {self.limits.max_pixels} pixels "
                    "(refused from its header, before decoding it)"
                ) from exc
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
    """FFmpeg's reason without the file name PyAV appends (a URL, with its credentials)."""
    text = getattr(exc, "strerror", None) or str(exc)
    return text.split(": '<")[0][:200]


def _log_text(exc: BaseException) -> str:
    """The FFmpeg error log line PyAV attached to the exception, if any."""
    log_entry = getattr(exc, "log", None)
    return str(log_entry[2]) if isinstance(log_entry, tuple) and len(log_entry) == 3 else ""


def _refused_size(exc: BaseException) -> str | None:
    """`WxH` when the error is a decoder refusing a frame over its pixel limit (FFmpeg's
    av_image_check_size2 says so in the log line PyAV attaches), else None."""
    found = _REFUSED_SIZE.search(_log_text(exc))
    return f"{found.group(1)}x{found.group(2)}" if found else None
