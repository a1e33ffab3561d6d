"""TensorRT engine cache: what the key holds, when an engine is stale, the optimisation profile.

Pure logic, runs anywhere; building and running engines needs a GPU (tests/test_gpu.py).
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from facerest.config import Settings
from facerest.models.store import ModelStore, md5_of
from facerest.tools.tensorrt_build import (
    EngineKey,
    engine_path,
    make_key,
    onnx_inputs,
    stale_reason,
)


@pytest.fixture(scope="module")
def store(models_dir: Path) -> ModelStore:
    store = ModelStore(models_dir)
    store.ensure("w600k_mbf")
    store.ensure("scrfd_500m_bnkps")
    return store


def _key(store: ModelStore, name: str, **settings: object) -> EngineKey:
    entry = store.entry(name)
    path = store.path(entry)
    return make_key(
        path,
        Settings(models_dir=store.models_dir, **settings),
        entry,
        gpu="NVIDIA GeForce RTX 4090",
        trt_version="10.8.0",
        capability="8.9",
    )


def test_key_holds_md5_gpu_version_and_build_options(store: ModelStore) -> None:
    key = _key(store, "w600k_mbf", rec_batch_size=64)
    assert key.model_md5 == md5_of(store.path(store.entry("w600k_mbf"))) == "c5b029527cb6f874e057613fc10bae1b"
    assert (key.gpu_name, key.compute_capability, key.tensorrt_version, key.fp16, key.max_batch) == (
        "NVIDIA GeForce RTX 4090",
        "8.9",
        "10.8.0",
        False,
        64,
    )
    assert key.profiles == {"input.1": [[1, 3, 112, 112], [64, 3, 112, 112], [64, 3, 112, 112]]}
    assert _key(store, "w600k_mbf", rec_batch_size=64) == key  # stable


@pytest.mark.parametrize(
    "change",
    [
        {"gpu_name": "NVIDIA A100-SXM4-80GB"},
        {"compute_capability": "9.0"},
        {"tensorrt_version": "10.9.0"},
        {"model_md5": "0" * 32},
        {"fp16": True},
        {"max_batch": 16},
    ],
)
def test_any_change_means_a_rebuild_that_says_why(store: ModelStore, tmp_path: Path, change: dict) -> None:
    key = _key(store, "w600k_mbf")
    path = engine_path(tmp_path, "w600k_mbf", key)
    path.write_bytes(b"engine")
    path.with_suffix(".json").write_text(json.dumps(asdict(key)))
    assert stale_reason(path, key) is None
    other = replace(key, **change)
    field = next(iter(change))
    names = {
        "gpu_name": "w600k_mbf.nvidia-a100-sxm4-80gb.sm8.9.trt10.8.0.plan",
        "compute_capability": "w600k_mbf.nvidia-geforce-rtx-4090.sm9.0.trt10.8.0.plan",
        "tensorrt_version": "w600k_mbf.nvidia-geforce-rtx-4090.sm8.9.trt10.9.0.plan",
    }
    if field in names:  # another GPU or TensorRT gets an engine of its own beside this one
        assert engine_path(tmp_path, "w600k_mbf", other).name == names[field]
        assert stale_reason(engine_path(tmp_path, "w600k_mbf", other), other) == "no engine built yet"
    else:  # the same file is rebuilt, and the log says what changed
        assert engine_path(tmp_path, "w600k_mbf", other) == path
        assert path.name == "w600k_mbf.nvidia-geforce-rtx-4090.sm8.9.trt10.8.0.plan"
        assert f"{field}: {getattr(key, field)!r} -> {getattr(other, field)!r}" == stale_reason(path, other)


def test_missing_or_broken_metadata_is_stale(store: ModelStore, tmp_path: Path) -> None:
    key = _key(store, "w600k_mbf")
    path = engine_path(tmp_path, "w600k_mbf", key)
    assert stale_reason(path, key) == "no engine built yet"
    path.write_bytes(b"engine")
    path.with_suffix(".json").write_text("{not json")
    assert stale_reason(path, key) == "its metadata is unreadable"


def test_fp16_and_batch_sizes_come_from_the_settings(store: ModelStore) -> None:
    assert _key(store, "w600k_mbf", force_fp16=True).fp16 is True
    det = _key(store, "scrfd_500m_bnkps", det_batch_size=4, max_size="640,480")
    assert det.max_batch == 4
    # batch 1..4, sides 32..the largest canvas the pipeline makes: the close-up pass's 512 px
    # canvas is taller than max_size's 480 (tests/test_gpu_planning.py covers every family)
    assert det.profiles == {"input.1": [[1, 3, 32, 32], [4, 3, 480, 640], [4, 3, 512, 640]]}


def test_profile_keeps_fixed_dims(store: ModelStore) -> None:
    from facerest.runtime.shapes import ModelRole, ShapeLimits, profile_shapes

    assert onnx_inputs(store.path(store.entry("scrfd_500m_bnkps"))) == [("input.1", [None, 3, None, None])]
    role = ModelRole("detection", "scrfd")
    assert profile_shapes(role, [("x", [1, 3, 640, 640])], ShapeLimits((640, 640), 8, 8)) == {
        "x": [[1, 3, 640, 640], [1, 3, 640, 640], [1, 3, 640, 640]]
    }
