"""FACEREST_RUNTIME=auto: per model, ONNX Runtime or OpenVINO, measured once and remembered."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import package_photo, read_bgr
from helpers import assert_same_faces

from facerest.config import Settings
from facerest.pipeline import ExtractOptions, FaceAnalyzer
from facerest.preparation import load_models
from facerest.preparation.cpu_runtime import CHOICES_FILE

pytest.importorskip("openvino", reason="OpenVINO is an optional extra: pip install facerest[openvino]")

BACKENDS = {"onnx": "onnxruntime:CPUExecutionProvider", "openvino": "openvino:CPU"}


@pytest.fixture
def own_models(settings: Settings, tmp_path: Path) -> Path:
    """A models folder of its own, holding the session's installed default models."""
    load_models(settings.model_copy(update={"runtime": "onnx"}))  # installs them if no test has yet
    for name in ("scrfd_500m_bnkps", "w600k_mbf", "age_gender_dlib"):
        shutil.copytree(settings.models_dir / name, tmp_path / name)
    return tmp_path


def test_auto_measures_each_model_once_and_remembers(settings: Settings, own_models: Path):
    auto = settings.model_copy(update={"models_dir": own_models, "runtime": "auto"})
    first = load_models(auto)
    choices = json.loads((own_models / CHOICES_FILE).read_text())
    # one entry per model file (the dlib age/gender model has two), keyed by file, CPU, threads, versions
    assert len(choices) == 4 and set(choices.values()) <= {"onnx", "openvino"}
    assert all("threads=2" in key and "onnxruntime=" in key for key in choices)
    recognizer_choice = next(v for k, v in choices.items() if k.startswith("w600k_mbf.onnx:"))
    assert first.backends["w600k_mbf"] == BACKENDS[recognizer_choice]
    print(f"\nauto chose: {first.backends}")

    # a remembered choice is what loads: turn every choice around and load again
    flipped = {k: "onnx" if v == "openvino" else "openvino" for k, v in choices.items()}
    (own_models / CHOICES_FILE).write_text(json.dumps(flipped))
    again = load_models(auto)
    assert again.backends["w600k_mbf"] == BACKENDS[flipped[next(k for k in flipped if "w600k" in k)]]
    assert json.loads((own_models / CHOICES_FILE).read_text()) == flipped  # nothing measured anew


def test_auto_gives_the_same_faces_whichever_runtime_it_picks(settings: Settings, own_models: Path, analyzer):
    auto = settings.model_copy(update={"models_dir": own_models, "runtime": "auto"})
    image = read_bgr(package_photo("players.jpg"))
    [reference] = analyzer.process([image], ExtractOptions())
    for forced in ("onnx", "openvino"):
        (own_models / CHOICES_FILE).unlink(missing_ok=True)
        load_models(auto)  # measure, then force every model onto one runtime
        choices = json.loads((own_models / CHOICES_FILE).read_text())
        (own_models / CHOICES_FILE).write_text(json.dumps(dict.fromkeys(choices, forced)))
        other = FaceAnalyzer(load_models(auto), auto)
        try:
            assert set(other.models.backends.values()) == {BACKENDS[forced]}
            [result] = other.process([image], ExtractOptions())
        finally:
            other.close()
        assert_same_faces(reference.faces, result.faces)


def test_bf16_recognizer_where_the_cpu_has_it(settings: Settings, analyzer):
    from facerest.runtime.openvino import cpu_has_bf16

    if not cpu_has_bf16():
        pytest.skip("this CPU has no native bf16 (AVX512_BF16 or AMX): FACEREST_REC_PRECISION=bf16 runs f32")
    bf16 = settings.model_copy(update={"runtime": "auto", "rec_precision": "bf16", "ga_name": ""})
    other = FaceAnalyzer(load_models(bf16), bf16)
    try:
        assert other.models.backends["w600k_mbf"] == "openvino:CPU:bf16"
        image = read_bgr(package_photo("players.jpg"))
        [reference] = analyzer.process([image], ExtractOptions())
        [result] = other.process([image], ExtractOptions())
    finally:
        other.close()
    cosines = [float(a.embedding @ b.embedding) for a, b in zip(reference.faces, result.faces, strict=True)]
    print(f"\nbf16 recognizer against f32: lowest cosine {min(cosines):.5f} over {len(cosines)} faces")
    assert len(cosines) > 5 and min(cosines) >= 0.999


def test_bf16_needs_a_runtime_that_has_it():
    with pytest.raises(ValueError, match="needs FACEREST_RUNTIME=openvino or auto"):
        Settings(rec_precision="bf16", runtime="onnx")
