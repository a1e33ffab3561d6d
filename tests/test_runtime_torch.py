"""The torch runtime (FACEREST_RUNTIME=torch): every ONNX operator of the default models converts,
each graph equals ONNX Runtime's, and the whole pipeline on torch gives the same boxes and
embeddings (cosine >= 0.999 per face) as on ONNX Runtime. On the CPU here; on CUDA (FP16, CUDA
graphs) in tests/test_gpu.py. Needs torch (`make test` installs the pinned CPU build).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import package_photo, read_bgr, shared_path

from facerest.config import Settings
from facerest.errors import BackendUnavailable
from facerest.models.store import ModelStore

# the runtime first: it sets OpenMP's wait policy before torch loads
pytest.importorskip(
    "facerest.runtime.pytorch", reason="torch is not installed here: `pip install facerest[torch]`"
)
import torch

from facerest.runtime.pytorch import OnnxGraphModule, TorchSession, unsupported_ops

#: the default models (detector, recognizer, gender/age) and the dense landmark model
DEFAULT_MODELS = ["scrfd_500m_bnkps", "w600k_mbf", "age_gender_dlib", "2d106det", "mtcnn"]


def _feed(session: ort.InferenceSession, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    feeds = {}
    for arg in session.get_inputs():
        if arg.shape[-1] == 3 and not isinstance(arg.shape[1], int):  # MTCNN P-Net: [N, W, H, 3]
            shape = [batch, 97, 61, 3]
        else:
            shape = [
                batch if i == 0 else (d if isinstance(d, int) else (352 if i == 2 else 480))
                for i, d in enumerate(arg.shape)
            ]
        feeds[arg.name] = (rng.random(shape, dtype=np.float32) * 2 - 1).astype(np.float32)
    return feeds


@pytest.mark.parametrize("name", DEFAULT_MODELS)
def test_each_graph_converts_op_by_op_and_equals_onnxruntime(name: str, models_dir: Path) -> None:
    rng = np.random.default_rng(0)
    for path in ModelStore(models_dir).ensure(name):
        model = onnx.load(str(path))
        assert unsupported_ops(model) == [], path.name
        reference = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        session = TorchSession(path, threads=2)
        assert session.backend == "torch:cpu"
        for batch in (1, 3):
            feeds = _feed(reference, batch, rng)
            want = reference.run(None, feeds)
            got = session.run(feeds)
            assert list(got) == [o.name for o in reference.get_outputs()]
            for value, expected in zip(got.values(), want, strict=True):
                assert value.shape == expected.shape
                scale = max(1.0, float(np.abs(expected).max()))
                assert float(np.abs(value - expected).max()) <= 1e-4 * scale, path.name


def test_an_unknown_operator_is_refused_by_name() -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Erf", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    with pytest.raises(BackendUnavailable, match="does not convert ONNX operators Erf"):
        OnnxGraphModule(helper.make_model(graph))


def test_require_gpu_refuses_a_cpu_torch(models_dir: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available to torch here")
    path = ModelStore(models_dir).ensure("w600k_mbf")[0]
    settings = Settings(models_dir=models_dir, runtime="torch", require_gpu=True)
    with pytest.raises(BackendUnavailable, match="FACEREST_REQUIRE_GPU: FACEREST_RUNTIME=torch"):
        TorchSession.from_settings(path, settings, "w600k_mbf")


def _photos() -> list[tuple[str, np.ndarray]]:
    photos = [("players.jpg", read_bgr(package_photo("players.jpg")))]
    for name in ("Stallone.jpg", "lumia.jpg"):
        try:
            photos.append((name, read_bgr(shared_path("anchor", name))))
        except pytest.skip.Exception:
            print(f"{name}: ../shared/testdata is absent, compared on the package photo only")
    return photos


def test_pipeline_on_torch_equals_onnxruntime(models_dir: Path) -> None:
    """Same boxes (within 0.5 px), same faces, cosine >= 0.999 per face, same gender and age."""
    from facerest.pipeline import ExtractOptions, FaceAnalyzer
    from facerest.preparation import load_models

    options = ExtractOptions(extract_ga=True)
    results = {}
    for runtime in ("onnx", "torch"):
        settings = Settings(models_dir=models_dir, runtime=runtime, threads=2, require_gpu=False)
        analyzer = FaceAnalyzer(load_models(settings), settings)
        try:
            assert set(analyzer.models.backends.values()) == (
                {"torch:cpu"} if runtime == "torch" else {"onnxruntime:CPUExecutionProvider"}
            )
            results[runtime] = [analyzer.process([image], options)[0] for _, image in _photos()]
        finally:
            analyzer.close()
    for (name, _), want, got in zip(_photos(), results["onnx"], results["torch"], strict=True):
        assert len(got.faces) == len(want.faces) > 0, name
        for a, b in zip(want.faces, got.faces, strict=True):
            assert np.abs(a.bbox - b.bbox).max() <= 0.5, name
            assert float(np.dot(a.embedding, b.embedding)) >= 0.999, name
            assert (a.gender, a.age) == (b.gender, b.age), name


def test_fixed_batch_padding_answers_each_row(models_dir: Path) -> None:
    """Calls of fewer rows than the CUDA-graph batch are padded to it and sliced back: each row's
    answer is the one it gets alone (checked on the CPU, where only the padding runs)."""
    path = ModelStore(models_dir).ensure("w600k_mbf")[0]
    plain = TorchSession(path, threads=2)
    padded = TorchSession(path, threads=2, cuda_graph_batch=8)
    rng = np.random.default_rng(1)
    for rows in (1, 5, 8, 11):  # 11: beyond the fixed batch, run as it is
        feeds = {"input.1": rng.random((rows, 3, 112, 112), dtype=np.float32)}
        want, got = plain.run(feeds), padded.run(feeds)
        for key in want:
            assert got[key].shape == want[key].shape == (rows, 512)
            np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-4)


def test_fp16_is_kept_only_where_the_outputs_hold() -> None:
    from facerest.runtime.pytorch import fp16_outputs_hold

    rng = np.random.default_rng(2)
    embedding = rng.standard_normal((4, 512)).astype(np.float32)
    assert fp16_outputs_hold([embedding], [embedding.astype(np.float16).astype(np.float32)])
    drifted = embedding + 0.05 * rng.standard_normal(embedding.shape).astype(np.float32)
    assert not fp16_outputs_hold([embedding], [drifted])  # drifts beyond 2% of the output scale
    scores = rng.random((1, 3200, 1)).astype(np.float32)
    assert not fp16_outputs_hold([scores], [scores + 0.1])
    assert not fp16_outputs_hold([scores], [np.full_like(scores, np.inf)])
