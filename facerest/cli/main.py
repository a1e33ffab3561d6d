"""`facerest` command line: serve, models, extract, bench."""

from __future__ import annotations

import os
import sys

import typer
from pydantic import ValidationError

from facerest.cli import audit as cli_audit
from facerest.cli import calibrate as cli_calibrate
from facerest.cli import cluster as cli_cluster
from facerest.cli import config as cli_config
from facerest.cli import extract as cli_extract
from facerest.cli import models as cli_models
from facerest.cli import video as cli_video
from facerest.cli.bench import app as bench_app
from facerest.cli.common import fail, settings_errors, setup_logging
from facerest.cli.deploy import add_deploy_commands
from facerest.cli.gallery import app as gallery_app
from facerest.cli.keys import app as keys_app
from facerest.config import Settings, settings_table
from facerest.errors import FaceRestError

app = typer.Typer(help="facerest: face detection and recognition REST service.", no_args_is_help=True)


@app.callback()
def _group() -> None:
    """facerest: face detection and recognition REST service."""


def _settings_epilog() -> str:
    lines = ["Settings (environment variables, or a .env file):\n\n"]
    for env, default, description in settings_table():
        lines.append(f"  {env} [default: {default or '(empty)'}]  {description}\n\n")
    return "".join(lines)


app.add_typer(cli_models.app, name="models")
app.add_typer(cli_extract.app)
app.add_typer(cli_video.app)  # `facerest video` (issue 17)
app.add_typer(cli_calibrate.app)
app.add_typer(cli_cluster.app)
app.add_typer(cli_config.app)
app.add_typer(gallery_app, name="gallery")
app.add_typer(keys_app, name="keys")  # issue 30
app.add_typer(cli_audit.app)  # `facerest audit` (issue 30)
app.add_typer(bench_app, name="bench")
add_deploy_commands(app)  # `facerest triton ...`, `facerest ray ...`


@app.command(epilog=_settings_epilog())
def serve(
    host: str | None = typer.Option(None, help="Bind address [env FACEREST_HOST, default 0.0.0.0]."),
    port: int | None = typer.Option(None, help="Port [env FACEREST_PORT, default 18081]."),
    workers: int | None = typer.Option(None, help="Server processes [env FACEREST_WORKERS, default 1]."),
) -> None:
    """Start the REST service (models are checked and installed once before workers start)."""
    overrides = {k: v for k, v in {"host": host, "port": port, "workers": workers}.items() if v is not None}
    # workers are separate processes that read their settings from the environment
    for key, value in overrides.items():
        os.environ[f"FACEREST_{key.upper()}"] = str(value)
    try:
        settings = Settings()
    except ValidationError as exc:  # every bad variable, in one line
        fail(f"invalid settings: {settings_errors(exc)}")
        return
    setup_logging(settings)
    from facerest.preparation import prepare_models
    from facerest.runtime.factory import check_runtime

    try:
        prepare_models(settings)
        check_runtime(settings)
    except FaceRestError as exc:
        fail(exc.detail)
    if settings.gpus:  # one process group per GPU (facerest/serving/gpus.py), engines built in each
        from facerest.serving.gpus import serve_on_gpus

        raise typer.Exit(serve_on_gpus(settings))
    from facerest.preparation import prepare_runtime_apart

    try:
        prepare_runtime_apart(settings)  # e.g. TensorRT engines, built once before the workers start
    except FaceRestError as exc:
        fail(exc.detail)
    from facerest.serving.workers import serve_workers

    raise typer.Exit(serve_workers(settings))


def main() -> None:
    try:
        app()
    except FaceRestError as exc:
        typer.secho(f"error: {exc.detail}", fg=typer.colors.RED, err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
