"""ONNX Runtime execution providers: preference order, per-provider options, what is in use."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from facerest.config import Settings
from facerest.errors import BackendUnavailable
from facerest.models.store import ModelStore
from facerest.preparation import open_session, prepare_runtime
from facerest.runtime.onnx import PREFERENCE, OnnxSession, provider_plan


@pytest.fixture(scope="module")
def recognizer_path(models_dir: Path) -> Path:
    return ModelStore(models_dir).ensure("w600k_mbf")[0]


def test_auto_means_the_fastest_first(tmp_path: Path) -> None:
    providers, _ = provider_plan(Settings(models_dir=tmp_path, providers="auto"))
    assert providers == PREFERENCE
    assert providers[-1] == "CPUExecutionProvider"


def test_provider_options_follow_settings_and_json_overrides(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv(
        "FACEREST_PROVIDER_OPTIONS",
        '{"CUDAExecutionProvider": {"device_id": 1, "cudnn_conv_algo_search": "HEURISTIC"}}',
    )
    monkeypatch.setenv(
        "FACEREST_PROVIDERS", "TensorrtExecutionProvider,CUDAExecutionProvider,CPUExecutionProvider"
    )
    settings = Settings(models_dir=tmp_path, trt_workspace_mb=512)
    providers, options = provider_plan(settings)
    assert providers == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert {"device_id": 1, "cudnn_conv_algo_search": "HEURISTIC"}.items() <= options[
        "CUDAExecutionProvider"
    ].items()
    trt = options["TensorrtExecutionProvider"]
    assert trt["trt_fp16_enable"] is False  # never FP16 unless asked for
    assert trt["trt_max_workspace_size"] == 512 << 20
    assert trt["trt_engine_cache_path"].startswith(str(tmp_path))
    fp16 = provider_plan(settings.model_copy(update={"force_fp16": True}))[1]
    assert fp16["TensorrtExecutionProvider"]["trt_fp16_enable"] is True


def test_providers_missing_here_are_skipped_and_said(recognizer_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    missing = "CUDAExecutionProvider"
    if missing in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: nothing is skipped")
    with caplog.at_level(logging.INFO, logger="facerest.runtime.onnx"):
        session = OnnxSession(
            recognizer_path,
            providers=[missing, "CPUExecutionProvider"],
            provider_options={"CPUExecutionProvider": {"arena_extend_strategy": "kSameAsRequested"}},
            model_name="w600k_mbf",
        )
    assert session.providers == ["CPUExecutionProvider"]
    assert session.backend == "onnxruntime:CPUExecutionProvider"
    text = caplog.text
    assert f"skipped: {missing}" in text
    assert "w600k_mbf runs on CPUExecutionProvider" in text
    assert "arena_extend_strategy" in text  # options in use are logged
    out = session.run({session.inputs[0].name: np.zeros((2, 3, 112, 112), np.float32)})
    assert next(iter(out.values())).shape == (2, 512)


def test_no_usable_provider_is_a_clear_error(recognizer_path: Path) -> None:
    with pytest.raises(BackendUnavailable, match="none of the execution providers"):
        OnnxSession(recognizer_path, providers=["NoSuchExecutionProvider"])


def test_open_session_uses_the_settings(recognizer_path: Path, tmp_path: Path) -> None:
    session = open_session(recognizer_path, Settings(models_dir=tmp_path, providers="auto", threads=1))
    assert session.backend.startswith("onnxruntime:")
    assert session.providers[-1] == "CPUExecutionProvider"  # type: ignore[attr-defined]


def test_trt_runtime_without_tensorrt_says_why(recognizer_path: Path, tmp_path: Path) -> None:
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here: tests/test_gpu.py covers it")
    except ImportError:
        pass
    settings = Settings(models_dir=tmp_path, runtime="trt")
    with pytest.raises(BackendUnavailable, match="TensorRT"):
        open_session(recognizer_path, settings, model_name="w600k_mbf")
    with pytest.raises(BackendUnavailable, match="TensorRT"):
        prepare_runtime(settings.model_copy(update={"ga_name": "", "models_dir": recognizer_path.parents[1]}))


def test_prepare_runtime_is_nothing_for_onnx(tmp_path: Path) -> None:
    prepare_runtime(Settings(models_dir=tmp_path / "never-created"))
    assert not (tmp_path / "never-created").exists()
