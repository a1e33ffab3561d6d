"""A missing or corrupt model file stops the server with one clear line and a non-zero exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import free_port


def serve(models_dir: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FACEREST_")}
    environ.update(
        {
            "FACEREST_MODELS_DIR": str(models_dir),
            "FACEREST_PORT": str(free_port()),
            "FACEREST_HOST": "127.0.0.1",
            **env,
        }
    )
    return subprocess.run(
        [sys.executable, "-m", "facerest.cli", "serve"],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_corrupt_model_file(tmp_path):
    target = tmp_path / "w600k_mbf" / "w600k_mbf.onnx"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"not a model")
    result = serve(tmp_path)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert str(target) in line and "c5b029527cb6f874e057613fc10bae1b" in line and "corrupt" in line
    assert "delete it" in line


def test_missing_model_without_source(tmp_path):
    catalog = tmp_path / "catalog.json"
    catalog.write_text(
        '{"models": [{"name": "w600k_mbf", "task": "recognition", "family": "arcface", '
        '"files": [{"name": "w600k_mbf.onnx", "md5": "c5b029527cb6f874e057613fc10bae1b", '
        '"sources": ["https://example.invalid/w600k_mbf.onnx"]}]}]}'
    )
    result = serve(tmp_path)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    assert (
        "w600k_mbf.onnx" in lines[0]
        and "missing" in lines[0]
        and "facerest models pull w600k_mbf" in lines[0]
    )


def test_unknown_model_name(tmp_path):
    result = serve(tmp_path, FACEREST_DET_NAME="no_such_detector")
    assert result.returncode != 0
    assert "no_such_detector" in result.stderr and "Known models" in result.stderr
