"""`facerest cluster FILE`: the faces of `facerest extract` output (Parquet, JSONL, NPZ) grouped
into people at the calibrated decision point (by default one that follows the number of faces,
as gallery search follows its number of subjects: see `decision_threshold`).

Faces are named `FILE#FACE` (the image and the face's index in it, as `extract` wrote them).
`--feedback` takes a JSON file `{"different": [["a.jpg#0", "b.jpg#1"], ...]}`: those pairs are
never put in one cluster. `--previous` takes an earlier answer of this command: its clusters are
kept and the faces not in it are added to them incrementally (or form new ones).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import typer

from facerest.errors import BadInput

app = typer.Typer()


def read_faces(path: Path) -> tuple[list[str], np.ndarray]:
    """(`file#face` names, unit embeddings) of an extract output file."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path, columns=["file", "face", "embedding"])
            files, faces = table.column("file").to_pylist(), table.column("face").to_pylist()
            vectors = np.array(table.column("embedding").to_pylist(), np.float32)
        elif suffix == ".jsonl":
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            files, faces = [r["file"] for r in rows], [r["face"] for r in rows]
            vectors = np.array([r["embedding"] for r in rows], np.float32)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                files, faces = archive["file"].tolist(), archive["face"].tolist()
                vectors = archive["embedding"].astype(np.float32)
        else:
            raise BadInput(f"{path}: expected .parquet, .jsonl or .npz (the output of facerest extract)")
    except (OSError, KeyError, ValueError) as exc:
        raise BadInput(f"{path} cannot be read as facerest extract output: {exc}") from exc
    if len(files) == 0:
        return [], np.zeros((0, 0), np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return [f"{f}#{i}" for f, i in zip(files, faces, strict=True)], vectors / np.maximum(norms, 1e-12)


def decision_threshold(
    fmr: float | None, threshold: float | None, faces: int
) -> tuple[float, dict[str, Any]]:
    """The cosine at which two faces are one person. By default it follows the collection's size
    as gallery search does: each face is compared with all the others, so the per-comparison FMR
    is the one that gives FACEREST_SEARCH_FPIR (the chance a face is linked to a stranger) over
    `faces` comparisons."""
    from facerest.config import Settings
    from facerest.gallery.calibration import decide, load, shipped

    settings = Settings()
    calibration = (
        load(settings.calibration_file)
        if settings.calibration_file is not None
        else shipped(settings.rec_name)
    )
    decision = decide(
        calibration,
        threshold=threshold,
        fmr=fmr,
        subjects=max(faces - 1, 1),
        default_fmr=settings.verify_fmr,
        default_fpir=settings.search_fpir,
        fallback_threshold=0.35,
    )
    return decision.threshold, decision.to_json()


def run(
    names: list[str],
    vectors: np.ndarray,
    threshold: float,
    different: list[tuple[str, str]],
    previous: dict[str, int] | None = None,
    method: str = "average",
) -> np.ndarray:
    """A cluster label per face; with `previous` (face name -> label), those faces keep theirs."""
    from facerest.gallery.clustering import assign, cluster

    index = {name: i for i, name in enumerate(names)}
    missing = [n for pair in different for n in pair if n not in index]
    if missing:
        raise BadInput(
            f"feedback names faces that are not in the file: {', '.join(sorted(set(missing))[:5])}"
        )
    links = [(index[a], index[b]) for a, b in different]
    if not previous:
        return cluster(vectors, threshold, links, method=method)  # type: ignore[arg-type]
    old = [i for i, n in enumerate(names) if n in previous]
    new = [i for i, n in enumerate(names) if n not in previous]
    position = {face: k for k, face in enumerate(old + new)}
    labels = np.empty(len(names), np.int64)
    old_labels = np.array([previous[names[i]] for i in old], np.int64)
    labels[old] = old_labels
    if new:
        moved = [(position[a], position[b]) for a, b in links]
        labels[new] = assign(vectors[old], old_labels, vectors[new], threshold, moved)
    return labels


@app.command()
def cluster(
    path: Path = typer.Argument(..., help="facerest extract output (.parquet, .jsonl, .npz)."),
    out: Path = typer.Option(Path("clusters.json"), "--out", "-o", help="Where the clusters go (JSON)."),
    fmr: float | None = typer.Option(
        None, help="Decision point as a false-match rate [FACEREST_VERIFY_FMR]."
    ),
    threshold: float | None = typer.Option(None, help="Decision point as a cosine (instead of --fmr)."),
    method: str = typer.Option("average", help="average (default), single or hdbscan."),
    feedback: Path | None = typer.Option(None, help='JSON {"different": [["a.jpg#0", "b.jpg#1"], ...]}.'),
    previous: Path | None = typer.Option(None, help="An earlier clusters.json to add the new faces to."),
) -> None:
    """Group the faces of an extract output into people (one cluster per person)."""
    from facerest.gallery.clustering import groups

    try:
        names, vectors = read_faces(path)
        limit, decision = decision_threshold(fmr, threshold, len(names))
        different = (
            [tuple(p) for p in json.loads(feedback.read_text()).get("different", [])] if feedback else []
        )
        before = None
        if previous is not None:
            earlier = json.loads(previous.read_text())
            before = {face: c["cluster_id"] for c in earlier["clusters"] for face in c["faces"]}
        labels = run(names, vectors, limit, different, before, method)  # type: ignore[arg-type]
    except BadInput as exc:
        typer.secho(f"error: {exc.detail}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from exc
    clusters = groups(vectors, labels) if len(names) else []
    answer = {
        "decision": decision,
        "method": method,
        "faces": len(names),
        "clusters": [
            {
                "cluster_id": c.label,
                "faces": [names[i] for i in c.members],
                "representatives": [names[i] for i in c.representatives],
            }
            for c in clusters
        ],
    }
    out.write_text(json.dumps(answer, indent=1) + "\n")
    typer.echo(f"{len(names)} faces -> {len(clusters)} clusters (threshold {limit:.4f}); wrote {out}")
