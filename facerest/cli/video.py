"""`facerest video SOURCE... --out FILE`: the face tracks of video files or live streams.

One row per track (a person's continuous appearance): source, track, first_s, last_s, frames,
the best frame's time, box and score, and the track's aggregated embedding; JSONL (written as
tracks end, so a live stream's file grows while it runs) or Parquet. Models run in this process,
or the files go to a server with `--url`. `facerest extract` hands video files here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from facerest.errors import FaceRestError

app = typer.Typer()

VIDEO_SUFFIXES = {
    ".mp4",
    ".m4v",
    ".mov",
    ".mkv",
    ".webm",
    ".avi",
    ".mpg",
    ".mpeg",
    ".ts",
    ".mjpeg",
    ".flv",
    ".3gp",
}
STREAM_PREFIXES = ("rtsp://", "rtsps://", "http://", "https://")


def is_video_file(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def stream_url_of(path: Path) -> str | None:
    """A stream URL given where a path was expected (`facerest extract rtsp://...`): Path folds
    the `//` after the scheme into one `/`, which is put back."""
    text = str(path)
    for prefix in STREAM_PREFIXES:
        folded = prefix[:-1]  # "rtsp:/"
        if text.startswith(folded) and not path.exists():
            return prefix + text[len(folded) :]
    return None


class TrackWriter:
    """Rows to JSONL as they come, or to Parquet at the end."""

    def __init__(self, out: Path) -> None:
        if out.suffix.lower() not in (".jsonl", ".parquet"):
            raise FaceRestError("video tracks are written to .jsonl or .parquet")
        self.out = out
        self.rows: list[dict[str, Any]] = []
        self._fh = out.open("w", encoding="utf-8") if out.suffix.lower() == ".jsonl" else None

    def add(self, source: str, track: dict[str, Any]) -> None:
        row = {
            "source": source,
            "track": track["track"],
            "first_s": track["first_s"],
            "last_s": track["last_s"],
            "frames": track["frames"],
            "best_t": track["best"]["t"],
            "bbox": track["best"]["bbox"],
            "score": track["best"]["prob"],
            "embedding": track.get("vec", []),
        }
        for key in ("gender", "age"):
            if key in track:
                row[key] = track[key]
        if self._fh is not None:
            self._fh.write(json.dumps(row) + "\n")
            self._fh.flush()
        else:
            self.rows.append(row)

    def close(self) -> int:
        if self._fh is not None:
            self._fh.close()
            return sum(1 for _ in self.out.open(encoding="utf-8"))
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(self.rows), self.out)
        return len(self.rows)


def _local(
    sources: list[str], fps: float | None, threshold: float | None, duration_s: float | None, emit: Callable
) -> None:
    from facerest.config import Settings
    from facerest.pipeline import ExtractOptions, FaceAnalyzer
    from facerest.preparation import load_models
    from facerest.video.analyze import VideoAnalyzer, VideoOptions, track_body
    from facerest.video.decode import Sampling, VideoLimits, VideoSource
    from facerest.video.stream import LiveConnection
    from facerest.video.tracker import TrackerConfig, track_gap

    settings = Settings()
    analyzer = FaceAnalyzer(load_models(settings), settings)
    sampling = Sampling(settings.video_default_fps if fps is None else fps)
    extract = ExtractOptions(threshold=settings.det_thresh if threshold is None else threshold)
    gap = track_gap(settings.video_track_gap_s, sampling)
    options = VideoOptions(extract, tracker=TrackerConfig(gap, high_score=extract.threshold))
    video = VideoAnalyzer(analyzer, settings.video_frames_in_flight)
    try:
        for source in sources:
            live = source.startswith(STREAM_PREFIXES)

            def publish(tracks: list, source: str = source) -> None:
                for track in tracks:
                    emit(source, track_body(track, None, embedding=True))

            if live:
                if not settings.video_streams_enabled:
                    raise FaceRestError(f"{source}: live streams need FACEREST_VIDEO_STREAMS_ENABLED=true")
                connection = LiveConnection(source, settings)  # redirects checked, as for jobs
                started = time.monotonic()
                stop_at = None if duration_s is None else started + duration_s
                frames = connection.open(
                    VideoLimits.from_settings(settings),
                    sampling,
                    clock=lambda started=started: time.monotonic() - started,
                )

                def until(frames: VideoSource = frames, stop_at: float | None = stop_at):  # type: ignore[no-untyped-def]
                    for frame in frames.frames():
                        if stop_at is not None and time.monotonic() > stop_at:
                            return
                        yield frame

                try:
                    tracker = video.run(until(), options, publish)
                    publish(tracker.finish())
                finally:
                    frames.close()
                    connection.close()
                continue
            with VideoSource(
                Path(source).read_bytes(), VideoLimits.from_settings(settings), sampling
            ) as frames:
                tracker = video.run(frames.frames(), options, publish)
                publish(tracker.finish())
    finally:
        analyzer.close()


def _remote(url: str, sources: list[str], fps: float | None, threshold: float | None, emit: Callable) -> None:
    import httpx

    form: dict[str, str] = {}
    if fps is not None:
        form["fps"] = str(fps)
    if threshold is not None:
        form["threshold"] = str(threshold)
    with httpx.Client(base_url=url, timeout=None) as client:
        for source in sources:
            if source.startswith(STREAM_PREFIXES):
                raise FaceRestError(
                    f"{source}: with --url, start a stream job on the server (POST /video/jobs)"
                )
            path = Path(source)
            response = client.post(
                "/multipart/video/extract", files={"file": (path.name, path.read_bytes())}, data=form
            )
            if response.status_code != 200:
                raise FaceRestError(
                    f"{source}: the server answered {response.status_code}: {response.text[:300]}"
                )
            for track in response.json()["tracks"]:
                emit(source, track)


def extract_videos(
    sources: list[str],
    out: Path,
    *,
    url: str | None = None,
    fps: float | None = None,
    threshold: float | None = None,
    duration_s: float | None = None,
) -> int:
    """Every source's tracks into `out`; returns the number of tracks written."""
    console = Console(stderr=True)
    writer = TrackWriter(out)
    try:
        if url:
            _remote(url, sources, fps, threshold, writer.add)
        else:
            _local(sources, fps, threshold, duration_s, writer.add)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: the tracks that ended so far are written")
    finally:
        count = writer.close()
    console.print(f"{count} tracks from {len(sources)} videos written to {out}")
    return count


@app.command()
def video(
    sources: list[str] = typer.Argument(..., help="Video files, or stream URLs (rtsp://, http://...)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output file: .jsonl or .parquet."),
    url: str | None = typer.Option(None, help="A facerest server to send the files to; default: in-process."),
    fps: float | None = typer.Option(None, min=0.0, help="Frames sampled per second (0: all)."),
    threshold: float | None = typer.Option(None, min=0.0, max=1.0, help="Detection threshold."),
    duration: float | None = typer.Option(
        None, min=0.0, help="Stop reading a live stream after this many s."
    ),
) -> None:
    """The face tracks of each video: one row per person's appearance, with its embedding.

    Live streams (FACEREST_VIDEO_STREAMS_ENABLED=true) run until --duration or Ctrl-C; their
    tracks are written as they end.
    """
    extract_videos(sources, out, url=url, fps=fps, threshold=threshold, duration_s=duration)
