"""A server that cannot start says why in one `error:` line and exits non-zero, with one worker
and with several (issue 14): a provider asked for and absent (caught before any worker starts),
and a failure only a worker's start-up finds (an unreachable Triton server)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from facerest.serving.local import free_port


def serve(env: dict[str, str], cwd: Path) -> tuple[int, str]:
    """`facerest serve` until it exits (it should, quickly); its status and output."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("FACEREST_")}
    full.update(
        {"FACEREST_HOST": "127.0.0.1", "FACEREST_PORT": str(free_port()), "FACEREST_THREADS": "1", **env}
    )
    done = subprocess.run(
        [sys.executable, "-m", "facerest.cli", "serve"],
        env=full,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
    )
    return done.returncode, done.stdout + done.stderr


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if "error: " in line]


@pytest.mark.parametrize("workers", [1, 2])
def test_an_absent_provider_stops_the_start_in_one_line(models_dir, tmp_path, workers):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider: it is not absent here")
    env = {
        "FACEREST_MODELS_DIR": str(models_dir),
        "FACEREST_RUNTIME": "onnx",
        "FACEREST_PROVIDERS": "CUDAExecutionProvider",
        "FACEREST_WORKERS": str(workers),
    }
    status, output = serve(env, tmp_path)
    assert status != 0, output
    assert "Traceback" not in output, output
    lines = error_lines(output)
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    assert "CUDAExecutionProvider" in lines[0]
    assert "Started server process" not in output  # refused before any worker started


@pytest.mark.parametrize("workers", [1, 2])
def test_a_worker_that_cannot_start_says_why_in_one_line(models_dir, tmp_path, workers):
    env = {
        "FACEREST_MODELS_DIR": str(models_dir),
        "FACEREST_RUNTIME": "triton",
        "FACEREST_TRITON_URI": f"http://127.0.0.1:{free_port()}",  # nothing listens there
        "FACEREST_TRITON_TIMEOUT_S": "2",
        "FACEREST_WORKERS": str(workers),
    }
    status, output = serve(env, tmp_path)
    assert status != 0, output  # uvicorn's supervisor exited 0 after a worker failed to start
    assert "Traceback" not in output, output
    lines = error_lines(output)
    # each worker that got as far as loading its models says it once, the same cause
    assert 1 <= len(lines) <= workers, output
    assert len({line.split("error: ", 1)[1] for line in lines}) == 1, output
    assert "127.0.0.1" in lines[0]
