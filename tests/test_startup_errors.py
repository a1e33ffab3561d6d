"""A server that cannot start says why in one `error:` line and exits non-zero, with one worker
and with several (issue 14): a provider asked for and absent (caught before any worker starts),
and a failure only a worker's start-up finds (an unreachable Triton server)."""

from __future__ import annotations

import pytest
from helpers import error_lines, serve_until_exit

from facerest.serving.local import free_port


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
    status, output = serve_until_exit(env, tmp_path)
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
    status, output = serve_until_exit(env, tmp_path)
    assert status != 0, output  # uvicorn's supervisor exited 0 after a worker failed to start
    assert "Traceback" not in output, output
    lines = error_lines(output)
    # each worker that got as far as loading its models says it once, the same cause
    assert 1 <= len(lines) <= workers, output
    assert len({line.split("error: ", 1)[1] for line in lines}) == 1, output
    assert "127.0.0.1" in lines[0]
