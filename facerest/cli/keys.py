"""`facerest keys create | list | revoke`: API keys with a role and, optionally, galleries.

The key is printed once, when it is made; the key file (FACEREST_ACCESS_KEYS_FILE, default
data_dir/keys.json) keeps only its SHA-256. A running server reads the file again at its next
request, in every worker: a new key works and a revoked one is refused at once.
"""

from __future__ import annotations

import datetime as dt
import json

import typer

from facerest.access.keys import KeyFile, key_file_path, new_record
from facerest.access.roles import ROLES
from facerest.cli.common import fail
from facerest.config import Settings
from facerest.errors import FaceRestError

app = typer.Typer(help="API keys: roles (viewer, operator, admin) and galleries.", no_args_is_help=True)


def _when(ts: float | None) -> str:
    return "-" if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@app.command()
def create(
    name: str = typer.Argument(..., help="The key's name: what logs and the audit trail call it."),
    role: str = typer.Option(..., "--role", "-r", help=f"One of {', '.join(ROLES)}."),
    gallery: list[str] = typer.Option(
        [], "--gallery", "-g", help="A gallery the key may touch (repeat for more); none: every gallery."
    ),
    env: bool = typer.Option(
        False, "--env", help="Print the record for FACEREST_ACCESS_KEYS instead of writing the key file."
    ),
) -> None:
    """Make a key and print it (once: only its SHA-256 is kept)."""
    settings = Settings()
    try:
        if env:
            record, key = new_record(name, role, gallery or None)  # type: ignore[arg-type]
            entry = {
                "name": record.name,
                "role": record.role,
                "galleries": record.galleries,
                "sha256": record.sha256,
            }
            typer.echo(f"key: {key}")
            typer.echo(f"FACEREST_ACCESS_KEYS entry: {json.dumps(entry)}")
            return
        path = key_file_path(settings)
        record, key = KeyFile(path).create(name, role, gallery or None)  # type: ignore[arg-type]
    except FaceRestError as exc:
        fail(exc.detail)
        return
    scope = ", ".join(record.galleries) if record.galleries else "every gallery"
    typer.echo(f"key: {key}")
    typer.echo(
        f"{record.name}: {record.role} of {scope}; stored hashed in {path} (the key is shown only now)"
    )


@app.command("list")
def list_(as_json: bool = typer.Option(False, "--json", help="One JSON object per key.")) -> None:
    """Every key of the key file: name, role, galleries, made, revoked (never the key)."""
    settings = Settings()
    try:
        records = KeyFile(key_file_path(settings)).read()
    except FaceRestError as exc:
        fail(exc.detail)
        return
    for r in records:
        if as_json:
            typer.echo(json.dumps({k: v for k, v in r.to_json().items() if k != "sha256"}))
        else:
            scope = ",".join(r.galleries) if r.galleries else "*"
            state = f"revoked {_when(r.revoked_at)}" if r.revoked_at else "active"
            typer.echo(f"{r.name}\t{r.role}\t{scope}\tmade {_when(r.created_at)}\t{state}")


@app.command()
def revoke(name: str = typer.Argument(..., help="The key's name.")) -> None:
    """Refuse the key from now on, in every worker of a running server (the record stays, revoked)."""
    settings = Settings()
    try:
        record = KeyFile(key_file_path(settings)).revoke(name)
    except FaceRestError as exc:
        fail(exc.detail)
        return
    typer.echo(f"{record.name}: revoked {_when(record.revoked_at)}")
