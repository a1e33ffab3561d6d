"""FACEREST_RUNTIME=openvino gives the same faces and embeddings as ONNX Runtime (when installed)."""

from __future__ import annotations

import pytest
from conftest import package_photo, read_bgr
from helpers import assert_same_faces

from facerest.config import Settings
from facerest.pipeline import ExtractOptions, FaceAnalyzer


def test_openvino_pipeline_matches_onnxruntime(settings, analyzer):
    pytest.importorskip("openvino", reason="OpenVINO is an optional extra: pip install facerest[openvino]")
    from facerest.preparation import load_models

    openvino_settings = Settings(models_dir=settings.models_dir, threads=2, runtime="openvino", ga_name="")
    other = FaceAnalyzer(load_models(openvino_settings), openvino_settings)
    try:
        assert other.models.backends[openvino_settings.det_name] == "openvino:CPU"
        image = read_bgr(package_photo("players.jpg"))
        [ours] = analyzer.process([image], ExtractOptions())
        [theirs] = other.process([image], ExtractOptions())
    finally:
        other.close()
    assert_same_faces(ours.faces, theirs.faces)
