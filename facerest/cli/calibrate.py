"""`facerest calibrate PATH...`: genuine and impostor score distributions -> a calibration file.

Each PATH is a folder with one sub-folder per identity, or a CSV (`img,identity`, image paths
relative to the CSV) of labelled images; the largest face of each labelled image counts. Each
`--crowd PHOTO` adds every face found in it as a person of its own (faces in one photo are
different people): impostor pairs by the thousand from a few group photos.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import typer

from facerest.config import Settings
from facerest.errors import BadInput, FaceRestError, FeatureUnavailable

app = typer.Typer()

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".jfif"}
#: a pair of faces from two different crowd photos scoring this high is one person photographed
#: twice (e.g. a player in two team photos), not an impostor pair: it is left out, and listed.
#: Recognizers whose different people score higher than that (dlib's ResNet: its vectors share a
#: direction, strangers score 0.8-0.9) use the highest score of two labelled different people.
SAME_PERSON_ACROSS_PHOTOS = 0.5


@dataclass(slots=True)
class Dataset:
    """Unit embeddings with identity labels, and what went into them."""

    embeddings: list[np.ndarray] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # one per embedding (crowd faces: path#index)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, why)
    sources: list[dict[str, object]] = field(default_factory=list)
    merged: list[tuple[str, str, float]] = field(default_factory=list)  # crowd faces found twice
    same_person_score: float = SAME_PERSON_ACROSS_PHOTOS  # what made a crowd face someone seen before

    def matrix(self) -> np.ndarray:
        return np.stack(self.embeddings) if self.embeddings else np.zeros((0, 512), np.float32)


def display_path(path: Path) -> str:
    """How a source is named in the file: `package:inner/path` for files shipped in an installed
    package, `shared/...` for the shared test data beside a checkout, else the path as given."""
    resolved = path.resolve()
    parts = resolved.parts
    if "site-packages" in parts:
        inner = parts[parts.index("site-packages") + 1 :]
        return f"{inner[0]}:{'/'.join(inner[1:])}"
    if "shared" in parts and "testdata" in parts:
        return "/".join(parts[parts.index("shared") :])
    return str(path)


def resolve_source(name: str, shared_root: Path) -> Path:
    """The file `display_path` named (`shared_root` holds the shared test data's `shared/`)."""
    if name.startswith("shared/"):
        return shared_root / name
    if ":" in name and not Path(name).exists():
        from importlib import resources

        package, inner = name.split(":", 1)
        return Path(str(resources.files(package).joinpath(inner)))
    return Path(name)


def labelled_images(path: Path) -> list[tuple[Path, str]]:
    """(image, identity) from a CSV of `img,identity` or a folder of identity folders."""
    if path.is_file():
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        if not rows or not {"img", "identity"} <= set(rows[0]):
            raise BadInput(f"{path}: a labelled CSV needs the columns img,identity")
        return [(path.parent / row["img"], row["identity"]) for row in rows]
    if path.is_dir():
        return [
            (image, folder.name)
            for folder in sorted(p for p in path.iterdir() if p.is_dir())
            for image in sorted(folder.iterdir())
            if image.suffix.lower() in IMAGE_SUFFIXES
        ]
    raise BadInput(f"{path} is neither a labelled CSV nor a folder of identity folders")


class Embedder:
    """The configured detector and recognizer, in this process."""

    def __init__(self, settings: Settings | None = None) -> None:
        from facerest.pipeline import FaceAnalyzer
        from facerest.preparation import load_models

        self.settings = settings or Settings()
        self.analyzer = FaceAnalyzer(load_models(self.settings), self.settings)
        recognizer = self.analyzer.models.recognizer
        if recognizer is None:
            raise BadInput("calibration needs a face recognizer; set FACEREST_REC_NAME")
        self.model = recognizer.entry.name
        self.model_md5 = recognizer.entry.main_file.md5
        self.pipeline = {
            "detector": self.settings.det_name,
            "det_thresh": self.settings.det_thresh,
            "max_size": self.settings.max_size,
            "align_antialias": self.settings.align_antialias,
        }

    def faces(self, path: Path, largest_only: bool) -> list[np.ndarray] | str:
        """Unit embeddings of the faces of one image, or why there are none."""
        from facerest.imaging.decode import decode_image
        from facerest.pipeline import ExtractOptions

        try:
            image = decode_image(path.read_bytes(), max_pixels=self.settings.max_image_pixels)
        except OSError as exc:
            return f"cannot read the file: {exc.strerror or exc}"
        except FaceRestError as exc:
            return exc.detail
        options = ExtractOptions(threshold=self.settings.det_thresh, limit_faces=1 if largest_only else 0)
        result = self.analyzer.process([image], options)[0]
        if not result.ok:
            return result.error or "failed"
        if not result.faces:
            return "no face found"
        return [face.embedding for face in result.faces if face.embedding is not None]

    def close(self) -> None:
        self.analyzer.close()


def gather(embedder: Embedder, labelled: Sequence[Path], crowds: Sequence[Path]) -> Dataset:
    data = Dataset()
    for source in labelled:
        images = labelled_images(source)
        prefix = source.stem if source.is_file() and source.stem != "identities" else source.name
        if source.is_file() and source.stem == "identities":
            prefix = source.parent.name
        used = 0
        for image, identity in images:
            found = embedder.faces(image, largest_only=True)
            if isinstance(found, str):
                data.skipped.append((display_path(image), found))
                continue
            data.embeddings.append(found[0])
            data.labels.append(f"{prefix}/{identity}")
            data.files.append(str(image))
            used += 1
        data.sources.append(
            {
                "labelled": display_path(source),
                "images": len(images),
                "faces_used": used,
                "identities": len({i for _, i in images}),
            }
        )
    crowd_faces: list[tuple[str, np.ndarray]] = []
    for photo in crowds:
        found = embedder.faces(photo, largest_only=False)
        if isinstance(found, str):
            data.skipped.append((display_path(photo), found))
            continue
        crowd_faces += [(f"{photo.name}#{i}", vector) for i, vector in enumerate(found)]
        data.sources.append({"crowd": display_path(photo), "faces": len(found)})
    add_crowd(data, crowd_faces)
    return data


def same_person_score(data: Dataset) -> float:
    """The score from which two faces of different photos are one person: SAME_PERSON_ACROSS_PHOTOS,
    or the highest score of two labelled different people where that is higher."""
    if len(data.embeddings) < 2:
        return SAME_PERSON_ACROSS_PHOTOS
    matrix = np.stack(data.embeddings).astype(np.float64)
    labels = np.array(data.labels)
    scores = matrix @ matrix.T
    different = labels[:, None] != labels[None, :]
    return max(SAME_PERSON_ACROSS_PHOTOS, float(scores[different].max()) if different.any() else -1.0)


def add_crowd(data: Dataset, crowd_faces: list[tuple[str, np.ndarray]]) -> None:
    """Crowd faces, each a person of its own, unless it matches a face of another photo or a
    labelled face at a score no stranger reaches: then it is the same person, and takes its label
    (so the pair counts as genuine, not as a false match)."""
    same_person = same_person_score(data)
    data.same_person_score = same_person
    for name, vector in crowd_faces:
        label = f"crowd/{name}"
        photo = name.split("#")[0]
        for other_name, other_vector, other_label in zip(
            data.files, data.embeddings, data.labels, strict=True
        ):
            if other_name.split("#")[0] == photo:
                continue  # two faces of one photo are two people
            score = float(vector @ other_vector)
            if score >= same_person:
                label = other_label
                data.merged.append((name, other_name, round(score, 4)))
                break
        data.embeddings.append(vector)
        data.labels.append(label)
        data.files.append(name)


def made_from(data: Dataset, pipeline: dict[str, object]) -> dict[str, object]:
    return {
        "pipeline": pipeline,
        "sources": data.sources,
        "rule": "labelled images: the largest face, labelled by its identity; crowd photos: every "
        "face a person of its own, unless it scores >= "
        f"{round(data.same_person_score, 4):g} with a face of another photo (then the same person)",
        "same_person_across_photos": [list(m) for m in data.merged],
        "skipped": [list(s) for s in data.skipped],
    }


def build(  # type: ignore[no-untyped-def]
    labelled: Sequence[Path], crowds: Sequence[Path], settings: Settings | None = None
):
    """(calibration, dataset, all impostor scores) from the given data with the configured models."""
    from facerest.gallery.calibration import calibrate, pair_scores

    embedder = Embedder(settings)
    try:
        data = gather(embedder, labelled, crowds)
    finally:
        embedder.close()
    matrix = data.matrix()
    calibration = calibrate(
        matrix, data.labels, embedder.model, embedder.model_md5, made_from(data, embedder.pipeline)
    )
    return calibration, data, pair_scores(matrix.astype(np.float64), data.labels)[1]


@app.command()
def calibrate(
    paths: list[Path] = typer.Argument(..., help="Labelled CSVs (img,identity) or identity folders."),
    crowd: list[Path] = typer.Option([], "--crowd", help="A group photo: every face a different person."),
    out: Path = typer.Option(Path("calibration.json"), "--out", "-o", help="The calibration file to write."),
    plot_path: Path | None = typer.Option(None, "--plot", help="ROC plot PNG (default: OUT with .png)."),
) -> None:
    """Genuine and impostor similarity distributions of the configured recognizer -> thresholds for
    FMR 1e-2, 1e-3, 1e-4 with their TMR, in a file FACEREST_CALIBRATION_FILE can point at."""
    from rich.console import Console
    from rich.table import Table

    from facerest.gallery.calibration import plot

    console = Console(stderr=True)
    try:
        calibration, data, impostors = build(paths, crowd)
    except BadInput as exc:
        typer.secho(f"error: {exc.detail}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from exc
    for file, why in data.skipped:
        console.print(f"skipped {file}: {why}", soft_wrap=True, markup=False)
    calibration.save(out)
    picture = plot_path or out.with_suffix(".png")
    try:
        plot(calibration, picture, impostors)
    except FeatureUnavailable as exc:
        console.print(f"no plot: {exc.detail}")
        picture = None
    table = Table(
        title=f"{calibration.model}: {calibration.faces} faces, {calibration.identities} identities"
    )
    for column in ("FMR", "threshold", "TMR", "impostor pairs above / all", "FMR upper 95%", "basis"):
        table.add_column(column)
    for row in calibration.table():
        table.add_row(
            f"{row.fmr:g}",
            f"{row.threshold:.4f}",
            f"{row.tmr:.4f}",
            f"{row.impostor_pairs_above} / {row.impostor_pairs}" + (" (thin)" if row.thin else ""),
            f"{row.fmr_upper:.2e}",
            row.basis,
        )
    console.print(table)
    console.print(f"wrote {out}" + (f" and {picture}" if picture else ""))
