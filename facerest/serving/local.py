"""`facerest serve` as a child process on a free loopback port, for the bench command and tests."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_local_server(
    env: dict[str, str], log_path: Path, *, timeout_s: float = 180.0, cwd: Path | None = None
) -> tuple[str, subprocess.Popen]:
    """Start the server with environment `env` (host and port are chosen here); return its URL and
    process once /health answers. Its output goes to `log_path`, quoted in the error if it fails."""
    port = free_port()
    env = {**env, "FACEREST_HOST": "127.0.0.1", "FACEREST_PORT": str(port)}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "facerest.cli", "serve"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            if httpx.get(f"{url}/health", timeout=5, trust_env=False).status_code == 200:
                return url, process
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    process.kill()
    raise RuntimeError(f"the server did not become healthy in {timeout_s} s:\n{log_path.read_text()}")


def stop_local_server(process: subprocess.Popen, timeout_s: float = 30.0) -> None:
    """SIGTERM (in-flight requests finish), then SIGKILL if it does not exit in time."""
    process.terminate()
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
