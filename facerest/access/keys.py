"""API keys kept hashed: the key file, keys in the environment, and the lookup every request makes.

A key is made by `facerest keys create` from 32 random bytes (`frk_` + 43 base64url characters)
and shown once; what is kept is its SHA-256, with the key's name, role and galleries. Why a plain
SHA-256 and not a slow password hash (measured by benchmarks/key_hashing.py, docs/privacy.md):
slow hashes (scrypt, argon2, PBKDF2) exist to make guessing a *low-entropy* password from its
hash costly; a 256-bit random key cannot be guessed from its SHA-256 at any speed, while a slow
hash would cost every request its full time (benchmarks/key_hashing.py on the 2-core machines:
scrypt n=2^14 69 ms, PBKDF2 600k 273 ms, more than detecting a face) or a cache of keys in clear in
memory. The lookup is one digest (SHA-256 1.1 us) and one dictionary probe (the whole check, stat
of the key file included: 6.5 us); the digest, not the key, is what is compared, so its timing
tells nothing about the key.

The key file is JSON, written whole to a temporary file and renamed over the old one (a reader
sees the old file or the new one), mode 0600, under a lock so two `facerest keys` runs do not
lose each other's change. The server looks at the file's identity (inode, size, mtime) on every
request (one stat, ~1 us) and reads it again when it changed: a key revoked by any process is
refused by every worker from its next request on.

The plain FACEREST_API_KEYS keep working as admin keys of every gallery, named api-key-1, -2, ...
by their position (the name appears in the audit trail; nothing derived from the key does).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facerest.access.roles import ANONYMOUS, ROLES, Principal, Role
from facerest.config import Settings
from facerest.errors import BadInput, Conflict, NotFound

log = logging.getLogger(__name__)

KEY_PREFIX = "frk_"
NAME_PATTERN = re.compile(r"[A-Za-z0-9._:@\-]{1,100}")
FILE_VERSION = 1


def new_key() -> str:
    """A fresh key: 256 random bits."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_digest(key: str) -> str:
    """What is stored and compared: the key's SHA-256, hex."""
    return hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()


def check_key_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise BadInput("a key name is 1 to 100 letters, digits and . _ : @ -")
    return name


@dataclass(slots=True)
class KeyRecord:
    name: str
    role: Role
    sha256: str
    galleries: list[str] | None = None  # None: every gallery
    created_at: float = field(default_factory=time.time)
    revoked_at: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def principal(self) -> Principal:
        galleries = None if self.galleries is None else frozenset(self.galleries)
        return Principal(self.name, self.role, galleries)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "galleries": self.galleries,
            "sha256": self.sha256,
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KeyRecord:
        role = data.get("role")
        digest = data.get("sha256")
        galleries = data.get("galleries")
        if (
            role not in ROLES
            or not isinstance(digest, str)
            or not re.fullmatch(r"[0-9a-f]{64}", digest)
            or not (
                galleries is None
                or (isinstance(galleries, list) and all(isinstance(g, str) for g in galleries))
            )
        ):
            raise BadInput(f"not a key record: {sorted(data)}")
        return cls(
            name=check_key_name(str(data.get("name", ""))),
            role=role,
            sha256=digest,
            galleries=galleries,
            created_at=float(data.get("created_at") or 0.0),
            revoked_at=None if data.get("revoked_at") is None else float(data["revoked_at"]),
        )


def parse_records(text: str, where: str) -> list[KeyRecord]:
    try:
        data = json.loads(text)
        return [KeyRecord.from_json(item) for item in data["keys"]]
    except (ValueError, KeyError, TypeError, BadInput) as exc:
        raise BadInput(f"{where} is not a facerest key file: {exc}") from exc


class KeyFile:
    """The hashed keys on disk (`facerest keys ...` writes it, the server reads it)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> list[KeyRecord]:
        try:
            text = self.path.read_text("utf-8")
        except FileNotFoundError:
            return []
        return parse_records(text, str(self.path))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[list[KeyRecord]]:
        """The records, under an exclusive lock held while the caller changes and writes them."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield self.read()
        finally:
            os.close(lock)  # closing releases the lock

    def _write(self, records: Sequence[KeyRecord]) -> None:
        body = json.dumps({"version": FILE_VERSION, "keys": [r.to_json() for r in records]}, indent=1)
        temporary = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(body + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temporary, self.path)
        folder = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)

    def create(self, name: str, role: Role, galleries: list[str] | None = None) -> tuple[KeyRecord, str]:
        """A new key (returned once, in clear, for the caller to hand over) and its stored record.
        Names are never reused, even a revoked key's: the audit trail names keys."""
        record, key = new_record(name, role, galleries)
        with self._locked() as records:
            if any(r.name == name for r in records):
                raise Conflict(f"a key named {name!r} exists (or existed) already")
            self._write([*records, record])
        return record, key

    def revoke(self, name: str) -> KeyRecord:
        with self._locked() as records:
            found = next((r for r in records if r.name == name), None)
            if found is None:
                raise NotFound(f"no key named {name!r}")
            if found.active:
                found.revoked_at = time.time()
                self._write(records)
        return found


def new_record(name: str, role: Role, galleries: list[str] | None) -> tuple[KeyRecord, str]:
    check_key_name(name)
    if role not in ROLES:
        raise BadInput(f"role must be one of {', '.join(ROLES)}")
    if galleries is not None and (not galleries or any(not g for g in galleries)):
        raise BadInput("a key limited to galleries names at least one, none empty")
    key = new_key()
    return KeyRecord(name, role, key_digest(key), sorted(set(galleries)) if galleries else None), key


def key_file_path(settings: Settings) -> Path:
    return settings.access_keys_file or settings.data_dir / "keys.json"


class KeyRing:
    """What the server checks presented keys against, read again when the key file changes."""

    def __init__(
        self, path: Path | None, entries: Sequence[KeyRecord] = (), plain: Sequence[str] = ()
    ) -> None:
        self.path = path
        self._from_env = {r.sha256: r.principal() for r in entries if r.active}
        self._plain = [
            (key.encode("utf-8"), Principal(f"api-key-{i}", "admin")) for i, key in enumerate(plain, 1)
        ]
        self._signature: tuple[int, int, int] | None = None
        self._from_file: dict[str, Principal] = {}
        self._file_exists = False

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        entries = [
            KeyRecord(e.name, e.role, e.sha256, sorted(set(e.galleries)) if e.galleries else None)
            for e in settings.access_keys
        ]
        return cls(key_file_path(settings), entries, settings.api_keys)

    def _refresh(self) -> None:
        """Read the key file again when it is another file than last time (one stat a request)."""
        if self.path is None:
            return
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            self._signature, self._from_file, self._file_exists = None, {}, False
            return
        except OSError as exc:  # cannot look (permissions): what was read last stays in force
            log.error("the key file cannot be looked at: %s", exc)
            return
        signature = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if signature == self._signature:
            return
        self._signature, self._file_exists = signature, True
        try:
            records = KeyFile(self.path).read()
        except (BadInput, OSError) as exc:
            # fail closed: a damaged file accepts none of its keys until it is readable again
            log.error("the key file cannot be read, its keys are refused: %s", exc)
            self._from_file = {}
            return
        self._from_file = {r.sha256: r.principal() for r in records if r.active}
        log.info("key file read: %d active keys", len(self._from_file))

    @property
    def required(self) -> bool:
        """Whether requests need a key: some key is configured somewhere (an empty key file counts)."""
        self._refresh()
        return bool(self._plain or self._from_env or self._file_exists)

    def principal(self, presented: str) -> Principal | None:
        """Who `presented` is; None for a wrong or revoked key. Without any key configured every
        request is an anonymous admin."""
        if not self.required:
            return ANONYMOUS
        if not presented:
            return None
        digest = key_digest(presented)
        found = self._from_file.get(digest) or self._from_env.get(digest)
        if found is not None:
            return found
        given = presented.encode("utf-8", "replace")
        matched = None
        for key, principal in self._plain:  # constant time over every plain key: no early exit
            if hmac.compare_digest(given, key):
                matched = principal
        return matched
