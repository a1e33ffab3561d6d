"""`facerest audit`: the audit trail, filtered (who looked up this person, and when)."""

from __future__ import annotations

import json

import typer

from facerest.access.audit import audit_dir, load_secret, pseudonym, records
from facerest.config import Settings

app = typer.Typer()


@app.command("audit")
def audit(
    subject: str | None = typer.Option(
        None, "--subject", "-s", help="Records about this subject: named by a search, enrolled, read..."
    ),
    candidates: bool = typer.Option(
        False, "--candidates", help="With --subject: also searches that listed it below the threshold."
    ),
    key: str | None = typer.Option(None, "--key", "-k", help="Records of this key (its name)."),
    gallery: str | None = typer.Option(None, "--gallery", "-g", help="Records of this gallery."),
    action: str | None = typer.Option(None, "--action", "-a", help="search, verify, enrol, delete, ..."),
    outcome: str | None = typer.Option(
        None, "--outcome", help="ok, refused, unauthorized, or an error code."
    ),
    since: str | None = typer.Option(
        None, help="From this UTC date or time (2026-01-31 or 2026-01-31T12:00)."
    ),
    until: str | None = typer.Option(None, help="Up to this UTC date or time."),
    as_json: bool = typer.Option(False, "--json", help="The records as JSON lines."),
) -> None:
    """Print the matching audit records, oldest first. Subjects are kept as pseudonyms: --subject
    finds a person's records by name, and shows that name in them."""
    settings = Settings()
    folder = audit_dir(settings)
    wanted = None
    if subject is not None:
        secret = load_secret(folder, create=False)
        if secret is None:  # no trail was ever written here: nothing about anyone
            return
        wanted = pseudonym(secret, subject)
    for record in records(folder, since, until):
        if wanted is not None:
            about = record.get("subjects") or []
            if candidates:
                about = about + (record.get("candidates") or [])
            if wanted not in about:
                continue
        if key is not None and record.get("key") != key:
            continue
        if gallery is not None and record.get("gallery") != gallery:
            continue
        if action is not None and record.get("action") != action:
            continue
        if outcome is not None and record.get("outcome") != outcome:
            continue
        if wanted is not None:  # the name asked for, where its pseudonym stands
            for field in ("subjects", "candidates"):
                record[field] = [subject if p == wanted else p for p in record.get(field) or []]
        if as_json:
            typer.echo(json.dumps(record, ensure_ascii=False))
            continue
        whom = ",".join(record.get("subjects") or []) or "-"
        faces = ",".join(str(f) for f in record.get("faces") or []) or "-"
        typer.echo(
            f"{record.get('time')}\t{record.get('key') or '-'}\t{record.get('role') or '-'}\t"
            f"{record.get('action') or '-'}\t{record.get('gallery') or '-'}\t{whom}\tfaces {faces}\t"
            f"{record.get('outcome')}\t{record.get('request_id') or '-'}"
        )
