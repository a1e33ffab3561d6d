"""The audit trail: one JSON line per gallery read or write and per refused request, append-only.

A record says who (the key's name and role, never the key), what (the action, the route template,
the gallery), whom (the subjects touched, as pseudonyms, and the face ids), when, which request
(its id) and how it ended (`ok`, `refused`, or the error code), and which process answered. It
never holds an image, an embedding, a key or a subject's name: subjects are written as keyed
pseudonyms (HMAC-SHA256 under a secret kept beside the trail), so that erasing a person leaves no
name in the trail while `facerest audit --subject NAME` still finds every record about them.

Files: one per UTC day (`audit-YYYY-MM-DD.jsonl`), opened O_APPEND by every worker (each record
is one write(2), so the processes' lines never interleave), never rewritten; the server erases
whole files older than FACEREST_ACCESS_AUDIT_KEEP_DAYS.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from facerest.config import Settings

log = logging.getLogger(__name__)

SECRET_NAME = "pseudonyms.key"
PREFIX, SUFFIX = "audit-", ".jsonl"
#: the fields a record may have: nothing else is ever written (tests hold the trail to it)
FIELDS = frozenset(
    {
        "time",
        "key",
        "role",
        "action",
        "method",
        "route",
        "gallery",
        "subjects",
        "candidates",
        "faces",
        "review_items",  # how many review items a retention sweep erased (a count, no ids)
        "request_id",
        "outcome",
        "status",
        "missing",
        "pid",
    }
)


def audit_dir(settings: Settings) -> Path:
    return settings.access_audit_dir or settings.data_dir / "audit"


def _day(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d")


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def load_secret(folder: Path, create: bool = True) -> bytes | None:
    """The pseudonym secret: made once (by whichever worker comes first), then read by all."""
    path = folder / SECRET_NAME
    try:
        return path.read_bytes()
    except FileNotFoundError:
        if not create:
            return None
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / f".{SECRET_NAME}.{os.getpid()}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(secrets.token_bytes(32))
        fh.flush()
        os.fsync(fh.fileno())
    try:
        os.link(temporary, path)  # atomic and refuses to replace: the first worker's secret wins
    except FileExistsError:
        pass
    finally:
        temporary.unlink(missing_ok=True)
    return path.read_bytes()


def pseudonym(secret: bytes, subject: str) -> str:
    return hmac.new(secret, subject.encode("utf-8"), hashlib.sha256).hexdigest()[:24]


class AuditTrail:
    """The writer, one per process. Writing never fails a request: an unwritable trail is logged."""

    def __init__(self, folder: Path, keep_days: int = 0, enabled: bool = True) -> None:
        self.folder = folder
        self.keep_days = keep_days
        self.enabled = enabled
        self._secret: bytes | None = None
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._day = ""
        self._failed_at = 0.0

    @classmethod
    def from_settings(cls, settings: Settings) -> AuditTrail:
        return cls(audit_dir(settings), settings.access_audit_keep_days, settings.access_audit)

    def pseudonym(self, subject: str) -> str:
        if self._secret is None:
            self._secret = load_secret(self.folder)
        assert self._secret is not None
        return pseudonym(self._secret, subject)

    def pseudonyms(self, subjects: Iterable[str]) -> list[str]:
        return sorted({self.pseudonym(s) for s in subjects})

    def write(self, record: dict[str, Any], at: float | None = None) -> None:
        if not self.enabled:
            return
        at = time.time() if at is None else at
        unknown = set(record) - FIELDS
        if unknown:  # a programming error, never a reason to write something unplanned
            raise ValueError(f"audit records have no field {sorted(unknown)}")
        line = json.dumps({"time": _iso(at), **record, "pid": os.getpid()}, ensure_ascii=False)
        data = (line + "\n").encode("utf-8")
        try:
            with self._lock:
                fd = self._file(_day(at))
                os.write(fd, data)
        except OSError as exc:
            self.failed(exc)

    def failed(self, exc: OSError) -> None:
        """The trail (or its secret) cannot be written: said once a minute, never failing a request."""
        if time.monotonic() - self._failed_at > 60:
            self._failed_at = time.monotonic()
            log.error("the audit trail cannot be written in %s: %s", self.folder, exc)

    def _file(self, day: str) -> int:
        if self._fd is None or day != self._day:
            self.folder.mkdir(parents=True, exist_ok=True)
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            self._fd = os.open(
                self.folder / f"{PREFIX}{day}{SUFFIX}", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600
            )
            self._day = day
        return self._fd

    def prune(self, now: float | None = None) -> list[Path]:
        """Erase the files of days older than `keep_days` (0: keep every one); the ones erased."""
        if self.keep_days <= 0:
            return []
        oldest = _day((time.time() if now is None else now) - self.keep_days * 86_400)
        gone = []
        for path in files(self.folder):
            if path.name[len(PREFIX) : -len(SUFFIX)] < oldest:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    gone.append(path)
        return gone

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def files(folder: Path) -> list[Path]:
    """The trail's day files, oldest first."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.startswith(PREFIX) and p.name.endswith(SUFFIX))


def records(folder: Path, since: str | None = None, until: str | None = None) -> Iterator[dict[str, Any]]:
    """Every record, oldest first; `since`/`until`: ISO dates or times (UTC), compared as text."""
    for path in files(folder):
        day = path.name[len(PREFIX) : -len(SUFFIX)]
        if (since and day < since[:10]) or (until and day > until[:10]):
            continue
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a line cut by a crash mid-write
                stamp = record.get("time", "")
                if (since and stamp < since) or (until and stamp[: len(until)] > until):
                    continue
                yield record
