"""`facerest triton export DIR`: deployment commands (issue 8)."""

from __future__ import annotations

from pathlib import Path

import typer

from facerest.cli.common import fail, setup_logging
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
    from facerest.preparation import prepare_models
    from facerest.tools.triton_export import export_repository

    settings = Settings()
    setup_logging(settings)
    try:
        exported = export_repository(directory, settings, prepare_models(settings))
    except FaceRestError as exc:
        fail(exc.detail)
        return
    for model in exported:
        batching = f"max batch {model.max_batch_size}" if model.max_batch_size else "no batching"
        typer.echo(f"{model.name}: {model.path} ({batching})")
    typer.echo(f"start Triton with --model-repository={directory.resolve()}")


ray_app = typer.Typer(help="Ray Serve: the service as a Ray deployment.", no_args_is_help=True)


@ray_app.command("serve")
def ray_serve(
    replicas: int | None = typer.Option(
        None, help="Replicas at start [env FACEREST_RAY_REPLICAS, default 2]."
    ),
    max_replicas: int | None = typer.Option(
        None, help="Autoscaling upper bound; 0 = fixed [env FACEREST_RAY_MAX_REPLICAS, default 0]."
    ),
    address: str | None = typer.Option(None, help="Ray cluster to join [env FACEREST_RAY_ADDRESS]."),
) -> None:
    """Serve the REST API from Ray Serve replicas on FACEREST_HOST:FACEREST_PORT (models prepared first)."""
    import signal

    from facerest.preparation import prepare_models
    from facerest.serving.ray_serve import run

    overrides = {"ray_replicas": replicas, "ray_max_replicas": max_replicas, "ray_address": address}
    settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    setup_logging(settings)
    try:
        # once, before the replicas start (they share the models folder on this machine)
        prepare_models(settings)
    except FaceRestError as exc:
        fail(exc.detail)
        return
    # a SIGTERM (docker stop, a supervisor) shuts Ray down like Ctrl-C does
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    run(settings)


def add_deploy_commands(app: typer.Typer) -> None:
    app.add_typer(triton_app, name="triton")
    app.add_typer(ray_app, name="ray")
