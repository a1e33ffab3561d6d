"""`facerest models convert-mxnet PREFIX EPOCH --out NAME.onnx`: MXNet checkpoints to registered ONNX models.

`convert_mxnet` is a plain function that the `models` group registers (facerest/cli/models.py).
"""

from __future__ import annotations

from pathlib import Path

import typer

from facerest.cli.common import fail
from facerest.config import Settings
from facerest.errors import FaceRestError


def _shape(text: str | None) -> list[int] | None:
    """'112,112' / '112x112' (H, W) or '1,3,112,112' -> [1, 3, H, W]."""
    if not text:
        return None
    parts = [int(p) for p in text.replace("x", ",").split(",") if p.strip()]
    if len(parts) == 2:
        return [1, 3, *parts]
    if len(parts) == 4:
        return parts
    raise typer.BadParameter("give H,W or N,C,H,W")


def convert_mxnet(
    prefix: Path = typer.Argument(..., help="Checkpoint prefix: PREFIX-symbol.json, PREFIX-EPOCH.params."),
    epoch: int = typer.Argument(..., help="Epoch of the .params file (0 for PREFIX-0000.params)."),
    out: str = typer.Option(..., "--out", help="NAME.onnx: registered as NAME in the models folder."),
    input_size: str | None = typer.Option(
        None, help="Input H,W (or N,C,H,W); default: the catalogue's, else 640,640 for detectors, 112,112."
    ),
    task: str | None = typer.Option(None, help="Catalogue task (detection, recognition, genderage, ...)."),
    family: str | None = typer.Option(None, help="Catalogue family (retinaface, arcface, ...)."),
) -> None:
    """Convert an MXNet checkpoint to ONNX, check it against MXNet, and register it by name."""
    from facerest.tools.mxnet_convert import convert

    settings = Settings()
    name = Path(out).name.removesuffix(".onnx")
    if not name:
        fail("--out needs a name, e.g. --out arcface_r100_v1.onnx")
    try:
        report = convert(
            prefix,
            epoch,
            name,
            settings.models_dir,
            settings.mxnet_env,
            input_shape=_shape(input_size),
            task=task,
            family=family,
        )
    except FaceRestError as exc:
        fail(exc.detail)
        return
    typer.echo(f"{report.name}: {report.path} (input {report.input_shape}, outputs {report.outputs})")
    for repair in report.repairs:
        typer.echo(f"  repaired: {repair}")
    typer.echo(f"max abs diff ONNX Runtime vs MXNet: {report.max_abs_diff:.3g} ({report.seconds:.1f} s)")
