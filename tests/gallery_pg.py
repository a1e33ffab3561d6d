"""A real PostgreSQL with pgvector for the gallery tests: Debian's server, pgvector built generically.

`scripts/ensure-pgvector.sh` (run by `make test`) installs PostgreSQL and builds pgvector for plain
x86-64; tests/test_pgvector_generic.py checks its machine code. One throwaway server per test run
(initdb in a temporary folder, 127.0.0.1 on a free port, trust authentication; started on first
use, stopped at exit); each caller gets a fresh database. Tests skip, saying why, when it cannot
start. The gallery benchmark uses the same server.
"""

from __future__ import annotations

import atexit
import functools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

PG_ROOT = Path("/usr/lib/postgresql")


def pg_bindir() -> Path | None:
    """The newest installed PostgreSQL whose extension folder has pgvector, or None."""
    for version in sorted((p.name for p in PG_ROOT.glob("*") if p.name.isdigit()), key=int, reverse=True):
        if (Path("/usr/share/postgresql") / version / "extension" / "vector.control").exists():
            return PG_ROOT / version / "bin"
    return None


def vector_library() -> Path | None:
    """The pgvector shared object that server loads."""
    bindir = pg_bindir()
    return None if bindir is None else bindir.parent / "lib" / "vector.so"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_postgres(root: Path) -> tuple[str, subprocess.Popen]:
    """initdb + postgres in `root`; the superuser URL and the server process.

    PostgreSQL refuses to run as root: as root, the server runs as Debian's `postgres` user.
    """
    bindir = pg_bindir()
    if bindir is None:
        raise RuntimeError(
            "no PostgreSQL with pgvector under /usr/lib/postgresql (run scripts/ensure-pgvector.sh)"
        )
    user: str | None = None
    if os.geteuid() == 0:
        user = "postgres"
        pwd.getpwnam(user)  # KeyError when absent
        shutil.chown(root, user)
    data = root / "data"
    subprocess.run(
        [bindir / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"],
        check=True,
        capture_output=True,
        user=user,
    )
    port = _free_port()
    process = subprocess.Popen(
        [
            bindir / "postgres",
            "-D",
            data,
            "-p",
            str(port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={root}",
            "-c",
            "max_connections=200",
            "-c",
            "shared_buffers=256MB",
            "-c",
            "maintenance_work_mem=1GB",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(root / "postgres.log", "wb"),  # noqa: SIM115 - the server's lifetime
        user=user,
    )
    uri = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    import psycopg

    deadline = time.monotonic() + 60
    while True:
        try:
            with psycopg.connect(uri, autocommit=True, connect_timeout=2) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            return uri, process
        except psycopg.OperationalError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError((root / "postgres.log").read_text(errors="replace")[-2000:]) from None
            time.sleep(0.2)


def stop_postgres(process: subprocess.Popen, root: Path) -> None:
    process.terminate()  # SIGTERM: "smart" shutdown would wait for clients; this is "fast"
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
    shutil.rmtree(root, ignore_errors=True)


def new_database(uri: str, prefix: str = "gallery") -> str:
    """A fresh empty database on the server at `uri`; its URL."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(uri, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return f"{uri.rsplit('/', 1)[0]}/{name}"


@functools.cache
def _server_uri() -> str | Exception:
    try:
        # a short path: the Unix socket lives there, and socket paths are short
        root = Path(tempfile.mkdtemp(prefix="facerest-pg-"))
        uri, process = start_postgres(root)
        atexit.register(stop_postgres, process, root)
        return uri
    except Exception as exc:  # any failure to start means: skip, with the reason
        return exc


def postgres_url() -> str:
    """The URL of a new, empty database on the test PostgreSQL; skips if none can run here."""
    uri = _server_uri()
    if isinstance(uri, Exception):
        pytest.skip(f"PostgreSQL with pgvector could not start (see scripts/ensure-pgvector.sh): {uri!r}")
    return new_database(uri)
