"""`facerest` command line: serve, models, extract, bench."""

from __future__ import annotations

import os
import sys

import typer

from facerest import cli_calibrate, cli_cluster, cli_config, cli_extract, cli_models
from facerest.cli_bench import app as bench_app
from facerest.cli_deploy import add_deploy_commands
from facerest.cli_gallery import app as gallery_app
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


def fail(message: str) -> None:
    """One clear line on stderr and a non-zero exit."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def setup_logging(settings: Settings) -> None:
    from facerest.logs import configure_logging

    configure_logging(settings.log_level, json_lines=settings.log_json)


app.add_typer(cli_models.app, name="models")
app.add_typer(cli_extract.app)
app.add_typer(cli_calibrate.app)
app.add_typer(cli_cluster.app)
app.add_typer(cli_config.app)
app.add_typer(gallery_app, name="gallery")
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
    except Exception as exc:  # pydantic's error lists every bad variable
        fail(f"invalid settings: {exc}")
        return
    setup_logging(settings)
    from facerest.models import prepare_models

    try:
        prepare_models(settings)
    except FaceRestError as exc:
        fail(exc.detail)
    if settings.gpus:  # one process group per GPU (facerest/serve_gpus.py), engines built in each
        from facerest.serve_gpus import serve_on_gpus

        raise typer.Exit(serve_on_gpus(settings))
    from facerest.runtime.base import prepare_runtime

    try:
        prepare_runtime(settings)  # e.g. TensorRT engines, built once before the workers start
    except FaceRestError as exc:
        fail(exc.detail)
    import uvicorn

    from facerest.logs import uvicorn_log_config

    uvicorn.run(
        "facerest.api.app:factory",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
        log_config=uvicorn_log_config(settings.log_level, settings.log_json),
        access_log=False,  # facerest.access logs every request, with its latency and request id
        timeout_graceful_shutdown=int(settings.request_timeout_s),
        proxy_headers=True,
    )


def main() -> None:
    try:
        app()
    except FaceRestError as exc:
        typer.secho(f"error: {exc.detail}", fg=typer.colors.RED, err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
