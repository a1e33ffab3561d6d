"""What every command group shares: one way to fail, one way to set up logging."""

from __future__ import annotations

import typer

from facerest.config import Settings
from facerest.logs import configure_logging


def fail(message: str) -> None:
    """One clear line on stderr and a non-zero exit."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def setup_logging(settings: Settings) -> None:
    configure_logging(settings.log_level, json_lines=settings.log_json)
