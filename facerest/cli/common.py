"""What every command group shares: one way to fail, one way to set up logging."""

from __future__ import annotations

import typer
from pydantic import ValidationError

from facerest.config import Settings
from facerest.logs import configure_logging


def fail(message: str) -> None:
    """One clear line on stderr and a non-zero exit."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def settings_errors(exc: ValidationError) -> str:
    """pydantic's errors as one line: `FACEREST_MODEL_PACK: Input should be ... (got 'x')`."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"])
        name = f"FACEREST_{where.upper()}" if where else "settings"
        parts.append(f"{name}: {error['msg']} (got {error.get('input')!r})" if where else f"{error['msg']}")
    return "; ".join(parts)


def setup_logging(settings: Settings) -> None:
    configure_logging(settings.log_level, json_lines=settings.log_json)
