"""`facerest triton export DIR`: deployment commands (issue 8)."""

from __future__ import annotations

from pathlib import Path

import typer

from facerest.config import Settings
from facerest.errors import FaceRestError

triton_app = typer.Typer(help="Triton Inference Server: model repository export.", no_args_is_help=True)


@triton_app.command("export")
def export(
    directory: Path = typer.Argument(..., help="Model repository folder to write (created if needed)."),
) -> None:
    """Write config.pbtxt + model.onnx for every configured model (FACEREST_DET_NAME, _REC_NAME...).

    Batch limits come from FACEREST_DET_BATCH_SIZE / FACEREST_REC_BATCH_SIZE, instance groups
    from FACEREST_GPUS (KIND_GPU on those GPUs, KIND_CPU when empty) and FACEREST_TRITON_INSTANCES.
    """
    from facerest.cli import fail, setup_logging
    from facerest.tools.triton_export import export_repository

    settings = Settings()
    setup_logging(settings)
    try:
        exported = export_repository(directory, settings)
    except FaceRestError as exc:
        fail(exc.detail)
        return
    for model in exported:
        batching = f"max batch {model.max_batch_size}" if model.max_batch_size else "no batching"
        typer.echo(f"{model.name}: {model.path} ({batching})")
    typer.echo(f"start Triton with --model-repository={directory.resolve()}")
