"""`facerest extract PATH... --out FILE`: every face of a folder of photos into Parquet, JSONL or NPZ.

Runs the models in this process, or sends the images to a server with `--url`. One row per face:
file, face (its index in the image), bbox, score, landmarks (5x2), embedding.

Resuming: finished batches are kept in `<out>.parts/`, one Parquet file per batch that also
lists (in its metadata) every file of the batch, with or without faces, and the per-file errors.
Each part appears by an atomic rename, so whatever the moment of an interrupt (Ctrl-C, SIGTERM,
a crash), a part is either whole or absent: running the same command again skips the files of
the whole parts and redoes the rest, and the final file, written from the parts alone, never
holds a face twice.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from facerest.cli.video import extract_videos, is_video_file, stream_url_of
from facerest.errors import FaceRestError

app = typer.Typer()

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".jfif"}
OutputFormat = Literal["parquet", "jsonl", "npz"]
_SUFFIX_FORMATS: dict[str, OutputFormat] = {".parquet": "parquet", ".jsonl": "jsonl", ".npz": "npz"}
EMBEDDING_DIM = 512


def face_schema(dim: int) -> pa.Schema:
    return pa.schema(
        [
            ("file", pa.string()),
            ("face", pa.int32()),
            ("bbox", pa.list_(pa.float32(), 4)),
            ("score", pa.float32()),
            ("landmarks", pa.list_(pa.list_(pa.float32(), 2), 5)),
            ("embedding", pa.list_(pa.float32(), dim)),
        ]
    )


# --- what each file gave ------------------------------------------------------------------------


@dataclass(slots=True)
class FaceRow:
    bbox: list[float]
    score: float
    landmarks: list[list[float]]
    embedding: np.ndarray


@dataclass(slots=True)
class FileResult:
    file: str
    faces: list[FaceRow]
    error: str | None = None


class Extractor(Protocol):
    """Turns a batch of files into one FileResult each, in order."""

    def run(self, files: Sequence[Path]) -> list[FileResult]: ...

    def close(self) -> None: ...


class LocalExtractor:
    """The models in this process (facerest.models.load_models + FaceAnalyzer)."""

    def __init__(self, threshold: float | None, max_size: tuple[int, int] | None) -> None:
        from facerest.config import Settings
        from facerest.pipeline import ExtractOptions, FaceAnalyzer
        from facerest.preparation import load_models

        self.settings = Settings()
        self.analyzer = FaceAnalyzer(load_models(self.settings), self.settings)
        self.options = ExtractOptions(
            threshold=self.settings.det_thresh if threshold is None else threshold,
            return_landmarks=True,
            max_size=max_size,
        )
        # the files of a batch are read and decoded two at a time (decoding is small next to inference)
        self.reader = ThreadPoolExecutor(max_workers=2)

    def _load(self, path: Path) -> np.ndarray | FaceRestError:
        from facerest.errors import ImageDecodeError
        from facerest.imaging.decode import decode_image

        try:
            return decode_image(path.read_bytes(), max_pixels=self.settings.max_image_pixels)
        except FaceRestError as exc:
            return exc
        except OSError as exc:
            return ImageDecodeError(f"cannot read the file: {exc.strerror or exc}")

    def run(self, files: Sequence[Path]) -> list[FileResult]:
        images = list(self.reader.map(self._load, files))
        results = self.analyzer.process(images, self.options)
        out = []
        for path, result in zip(files, results, strict=True):
            if not result.ok:
                out.append(FileResult(str(path), [], result.error))
                continue
            rows = [
                FaceRow(
                    bbox=face.bbox.astype(float).tolist(),
                    score=face.score,
                    landmarks=face.landmarks.astype(float).tolist() if face.landmarks is not None else [],
                    embedding=face.embedding,  # type: ignore[arg-type]
                )
                for face in result.faces
            ]
            out.append(FileResult(str(path), rows))
        return out

    def close(self) -> None:
        self.reader.shutdown(wait=False, cancel_futures=True)
        self.analyzer.close()


class RemoteExtractor:
    """A facerest server, through facerest.client (msgpack, raw bytes)."""

    def __init__(self, url: str, threshold: float | None, max_size: tuple[int, int] | None) -> None:
        from facerest.client import Client

        # a long run rides out busy spells of a shared server
        self.client = Client(url, timeout=600, retries=10, max_backoff=30)
        self.threshold = threshold
        self.max_size = max_size

    def run(self, files: Sequence[Path]) -> list[FileResult]:
        out: dict[str, FileResult] = {}
        payload: list[tuple[Path, bytes]] = []
        for path in files:
            try:
                payload.append((path, path.read_bytes()))
            except OSError as exc:
                out[str(path)] = FileResult(str(path), [], f"cannot read the file: {exc.strerror or exc}")
        self._extract_into(out, payload)
        return [out[str(p)] for p in files]

    def _extract_into(self, out: dict[str, FileResult], payload: list[tuple[Path, bytes]]) -> None:
        from facerest.client import APIError, FaceRestClientError

        if not payload:
            return
        try:
            result = self.client.extract(
                [data for _, data in payload],
                threshold=self.threshold,
                return_landmarks=True,
                max_size=self.max_size,
            )
        except APIError as exc:
            if exc.status >= 500:  # the server is failing or still overloaded: stop, resume later
                raise FaceRestError(f"the server failed: {exc}") from exc
            if len(payload) == 1:
                out[str(payload[0][0])] = FileResult(str(payload[0][0]), [], f"{exc.code}: {exc.detail}")
                return
            # the whole request was refused (a body over the limit...): one file per request finds which
            for item in payload:
                self._extract_into(out, [item])
            return
        except FaceRestClientError as exc:  # unreachable, timed out
            raise FaceRestError(str(exc)) from exc
        for (path, _), image in zip(payload, result.images, strict=True):
            if not image.ok:
                out[str(path)] = FileResult(str(path), [], image.error or image.code or "failed")
                continue
            rows = [
                FaceRow(
                    bbox=[float(v) for v in face.bbox],
                    score=face.prob,
                    landmarks=face.landmarks.tolist() if face.landmarks is not None else [],
                    embedding=face.vec,  # type: ignore[arg-type]
                )
                for face in image.faces
            ]
            out[str(path)] = FileResult(str(path), rows)

    def close(self) -> None:
        self.client.close()


# --- inputs ---------------------------------------------------------------------------------------


def find_images(paths: Iterable[Path]) -> list[Path]:
    """Files given as such, and the images under the folders given; sorted, without repeats."""
    found: dict[str, Path] = {}
    for path in paths:
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                if child.is_file() and child.suffix.lower() in IMAGE_SUFFIXES:
                    found.setdefault(str(child), child)
        else:
            found.setdefault(str(path), path)  # named explicitly: tried whatever its suffix
    return list(found.values())


def batches(items: Sequence[Path], size: int) -> Iterator[list[Path]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


# --- the resumable state ------------------------------------------------------------------------


class RunState:
    """`<out>.parts/`: `run.json` (the options) and `part-NNNNNN.parquet`, each whole or absent."""

    def __init__(self, out: Path, options: dict[str, Any]) -> None:
        self.dir = out.with_name(out.name + ".parts")
        self.options = options

    def open(self, restart: bool) -> None:
        if restart and self.dir.exists():
            self.clear()
        self.dir.mkdir(parents=True, exist_ok=True)
        for leftover in self.dir.glob("*.tmp"):  # a write cut short by the interrupt
            leftover.unlink()
        run_file = self.dir / "run.json"
        if run_file.exists():
            before = json.loads(run_file.read_text())
            if before != self.options:
                raise FaceRestError(
                    f"{self.dir} holds an interrupted run with other options ({before}); "
                    "run it with those, or pass --restart to start over"
                )
        else:
            _atomic_write(run_file, json.dumps(self.options, sort_keys=True).encode())

    def parts(self) -> list[Path]:
        return sorted(self.dir.glob("part-*.parquet"))

    def done(self) -> set[str]:
        """Files finished in earlier runs."""
        files: set[str] = set()
        for part in self.parts():
            meta = pq.read_schema(part).metadata or {}
            files.update(json.loads(meta[b"files"]))
        return files

    def save(self, results: list[FileResult], dim: int) -> int:
        """Write one batch as the next part; returns the number of faces in it."""
        table = to_table(results, dim)
        errors = {r.file: r.error for r in results if r.error is not None}
        table = table.replace_schema_metadata(
            {"files": json.dumps([r.file for r in results]), "errors": json.dumps(errors)}
        )
        number = len(self.parts()) + 1
        target = self.dir / f"part-{number:06d}.parquet"
        tmp = target.with_name(target.name + ".tmp")
        pq.write_table(table, tmp)
        _fsync_rename(tmp, target)
        return table.num_rows

    def merged(self, dim: int) -> tuple[pa.Table, dict[str, str]]:
        tables, errors = [], {}
        for part in self.parts():
            table = pq.read_table(part)
            errors.update(json.loads((table.schema.metadata or {}).get(b"errors", b"{}")))
            tables.append(table.replace_schema_metadata(None))
        if not tables:
            return face_schema(dim).empty_table(), errors
        return pa.concat_tables(tables), errors

    def clear(self) -> None:
        """Forget the run. The folder is renamed away first (atomic), so an interrupt while its
        files are deleted cannot leave a partial state that a later run would resume from."""
        if not self.dir.exists():
            return
        trash = self.dir.with_name(self.dir.name + ".deleting")
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(self.dir, trash)
        shutil.rmtree(trash, ignore_errors=True)


def _fsync_rename(tmp: Path, target: Path) -> None:
    with tmp.open("rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, target)


def _atomic_write(target: Path, data: bytes) -> None:
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_bytes(data)
    _fsync_rename(tmp, target)


def to_table(results: list[FileResult], dim: int) -> pa.Table:
    rows = [(r.file, i, face) for r in results for i, face in enumerate(r.faces)]
    embeddings = (
        np.stack([face.embedding for _, _, face in rows]).astype(np.float32)
        if rows
        else np.zeros((0, dim), np.float32)
    )
    landmarks = [face.landmarks if len(face.landmarks) == 5 else None for _, _, face in rows]
    return pa.table(
        {
            "file": pa.array([f for f, _, _ in rows], pa.string()),
            "face": pa.array([i for _, i, _ in rows], pa.int32()),
            "bbox": pa.array([face.bbox for _, _, face in rows], pa.list_(pa.float32(), 4)),
            "score": pa.array([face.score for _, _, face in rows], pa.float32()),
            "landmarks": pa.array(landmarks, pa.list_(pa.list_(pa.float32(), 2), 5)),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(embeddings.reshape(-1)), dim),
        },
        schema=face_schema(dim),
    )


# --- writers --------------------------------------------------------------------------------------


def write_output(table: pa.Table, out: Path, fmt: OutputFormat) -> None:
    """The final file, written beside and renamed into place (never half-written)."""
    tmp = out.with_name(out.name + ".tmp")
    if fmt == "parquet":
        pq.write_table(table, tmp)
    elif fmt == "jsonl":
        with tmp.open("wb") as fh:
            for row in table.to_pylist():
                fh.write(json.dumps(row).encode() + b"\n")
    else:
        n = table.num_rows
        landmarks = np.array(
            [v if v is not None else [[np.nan, np.nan]] * 5 for v in table.column("landmarks").to_pylist()],
            np.float32,
        ).reshape(n, 5, 2)
        arrays = {
            "file": np.array(table.column("file").to_pylist(), dtype=str),
            "face": table.column("face").to_numpy(),
            "bbox": np.array(table.column("bbox").to_pylist(), np.float32).reshape(n, 4),
            "score": table.column("score").to_numpy(),
            "landmarks": landmarks,
            "embedding": np.array(table.column("embedding").to_pylist(), np.float32).reshape(n, -1),
        }
        # np.savez cannot take a key named "file" (its own first parameter); this is what it writes
        with zipfile.ZipFile(tmp, "w") as archive:
            for name, array in arrays.items():
                with archive.open(f"{name}.npy", "w") as member:
                    np.lib.format.write_array(member, array, allow_pickle=False)
    _fsync_rename(tmp, out)


# --- progress -------------------------------------------------------------------------------------


class RateColumn(ProgressColumn):
    """images/s and faces/s over this run's elapsed time."""

    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0.0
        if elapsed <= 0:
            return Text("- images/s, - faces/s")
        images = task.completed - task.fields.get("skipped", 0)
        return Text(f"{images / elapsed:.1f} images/s, {task.fields.get('faces', 0) / elapsed:.1f} faces/s")


# --- the command ----------------------------------------------------------------------------------


def _output_format(out: Path, fmt: str | None) -> OutputFormat:
    if fmt:
        if fmt not in ("parquet", "jsonl", "npz"):
            raise FaceRestError(f"--format must be parquet, jsonl or npz, not {fmt!r}")
        return fmt  # type: ignore[return-value]
    chosen = _SUFFIX_FORMATS.get(out.suffix.lower())
    if chosen is None:
        raise FaceRestError(
            f"cannot tell the format from {out.name!r}: use .parquet, .jsonl, .npz or --format"
        )
    return chosen


@app.command()
def extract(
    paths: list[Path] = typer.Argument(..., help="Image files and folders (walked recursively)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output file: .parquet, .jsonl or .npz."),
    url: str | None = typer.Option(
        None, help="A facerest server to send the images to; default: in-process."
    ),
    fmt: str | None = typer.Option(None, "--format", help="parquet | jsonl | npz (default: from --out)."),
    batch_size: int = typer.Option(16, min=1, help="Images per batch (and per request with --url)."),
    threshold: float | None = typer.Option(None, min=0.0, max=1.0, help="Detection threshold."),
    max_size: str | None = typer.Option(None, help="Detector input WIDTHxHEIGHT (default: the server's)."),
    restart: bool = typer.Option(False, help="Forget an interrupted run of this --out and start over."),
    overwrite: bool = typer.Option(False, help="Replace --out if it exists."),
) -> None:
    """Every face of the given images, one row each: file, face, bbox, score, landmarks, embedding.

    Video files instead give one row per track (see `facerest video`, which also reads streams).

    Interrupted (Ctrl-C)? Run the same command again: it finishes the rest, redoing nothing.

    Files that cannot be read or decoded are listed in OUT.errors.jsonl.
    """
    console = Console(stderr=True)
    # issue 17: video files and stream URLs give tracks, one row per person's appearance
    videos = [
        stream_url_of(p) or str(p) for p in paths if stream_url_of(p) or (p.is_file() and is_video_file(p))
    ]
    if videos:
        if len(videos) != len(paths):
            raise FaceRestError(
                "give video files and images in separate runs (videos give tracks, not faces)"
            )
        if out.exists() and not overwrite:
            raise FaceRestError(f"{out} exists: pass --overwrite to replace it")
        extract_videos(videos, out, url=url, threshold=threshold)
        return
    output_format = _output_format(out, fmt)
    size = _parse_size(max_size)
    state = RunState(
        out, {"paths": [str(p) for p in paths], "url": url, "threshold": threshold, "max_size": size}
    )
    if out.exists() and not overwrite and not state.dir.exists():
        raise FaceRestError(f"{out} exists: pass --overwrite to replace it")
    files = find_images(paths)
    if not files:
        raise FaceRestError("no image files found in the given paths")
    state.open(restart)
    done = state.done()
    todo = [f for f in files if str(f) not in done]
    if done:
        console.print(f"resuming: {len(files) - len(todo)} of {len(files)} files already done")
    # SIGTERM ends the run like Ctrl-C: the current batch is dropped, finished parts stay
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    extractor: Extractor | None = None
    try:
        with Progress(
            TextColumn("[bold]extract"),
            BarColumn(bar_width=20),
            MofNCompleteColumn(),
            TextColumn("images"),
            RateColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        ) as progress:
            task = progress.add_task("extract", total=len(files), completed=len(files) - len(todo), faces=0)
            extractor = RemoteExtractor(url, threshold, size) if url else LocalExtractor(threshold, size)
            # rates count from here, not from model loading
            progress.reset(task, total=len(files), completed=len(files) - len(todo), faces=0)
            progress.update(task, skipped=len(files) - len(todo))
            faces = 0
            for batch in batches(todo, batch_size):
                results = extractor.run(batch)
                faces += state.save(results, EMBEDDING_DIM)
                progress.update(task, advance=len(batch), faces=faces)
    except KeyboardInterrupt:
        console.print(
            f"[yellow]interrupted[/]: finished batches are kept in {state.dir}; "
            "run the same command again to finish the rest"
        )
        raise typer.Exit(130) from None
    finally:
        if extractor is not None:
            extractor.close()
    try:
        table, errors_file, error_map = _finish(state, out, output_format)
    except KeyboardInterrupt:
        # the parts are still whole: the next run rewrites the output from them
        console.print("[yellow]interrupted[/] while writing the output: run the same command again")
        raise typer.Exit(130) from None
    summary = f"{table.num_rows} faces from {len(files)} files written to {out}"
    if error_map:
        summary += f"; {len(error_map)} files failed, listed in {errors_file}"
    console.print(summary)


def _finish(state: RunState, out: Path, fmt: OutputFormat) -> tuple[pa.Table, Path, dict[str, str]]:
    """The output and its error list from the parts; then the parts go."""
    table, error_map = state.merged(EMBEDDING_DIM)
    write_output(table, out, fmt)
    errors_file = out.with_name(out.name + ".errors.jsonl")
    if error_map:
        _atomic_write(
            errors_file,
            b"".join(json.dumps({"file": f, "error": e}).encode() + b"\n" for f, e in error_map.items()),
        )
    elif errors_file.exists():
        errors_file.unlink()
    state.clear()
    return table, errors_file, error_map


def _parse_size(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    parts = [int(p) for p in value.lower().replace("x", ",").split(",") if p.strip()]
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 0:
        raise FaceRestError("--max-size is WIDTHxHEIGHT, e.g. 640x640 (0x0: do not resize)")
    return parts[0], parts[1]
