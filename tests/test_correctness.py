"""Embeddings equal the reference InsightFace pipeline's; identities come out right."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from conftest import package_photo, read_bgr, shared_path
from helpers import b64, vectors

from facerest.pipeline import ExtractOptions


@pytest.fixture(scope="module")
def reference(settings, analyzer):
    """InsightFace's own SCRFD + ArcFaceONNX + norm_crop on the same model files."""
    pytest.importorskip("skimage", reason="the reference pipeline needs scikit-image (make test installs it)")
    insightface_scrfd = pytest.importorskip("insightface.model_zoo.scrfd")
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX
    from insightface.utils.face_align import norm_crop

    models = settings.models_dir
    detector = insightface_scrfd.SCRFD(str(models / "scrfd_500m_bnkps" / "scrfd_500m_bnkps.onnx"))
    detector.prepare(-1, input_size=(640, 640), det_thresh=0.6)
    recognizer = ArcFaceONNX(str(models / "w600k_mbf" / "w600k_mbf.onnx"))
    recognizer.prepare(-1)

    def embed(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        boxes, landmarks = detector.detect(image, input_size=(640, 640))
        if len(boxes) == 0:
            return boxes, np.zeros((0, 512), np.float32)
        feats = np.stack([recognizer.get_feat(norm_crop(image, points))[0] for points in landmarks])
        return boxes, feats / np.linalg.norm(feats, axis=1, keepdims=True)

    return embed


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (area + areas - inter)


def _verify_set(name: str) -> tuple[Path, list[tuple[str, str, int]]]:
    root = shared_path("verify", name)
    with (root / "pairs.csv").open() as fh:
        pairs = [(r["img_a"], r["img_b"], int(r["same"])) for r in csv.DictReader(fh)]
    return root, pairs


def _largest(faces) -> np.ndarray:  # type: ignore[no-untyped-def]
    areas = [(f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]) for f in faces]
    return faces[int(np.argmax(areas))].embedding


@pytest.mark.parametrize("set_name", ["deepface", "facerec_ageitgey"])
def test_embeddings_match_reference_pipeline(set_name, analyzer, reference):
    root = shared_path("verify", set_name)
    worst = 1.0
    for path in sorted((root / "images").iterdir()):
        image = read_bgr(path)
        # the reference scale: the default adaptive scale trades bit-equality for speed (issue 18,
        # guarded by tests/test_detect_scale.py)
        [result] = analyzer.process([image], ExtractOptions(detect_scale="reference"))
        ref_boxes, ref_vecs = reference(image)
        # every face we return is a reference face with the same embedding...
        ours = np.stack([f.embedding for f in result.faces]) if result.faces else np.zeros((0, 512))
        for face, vec in zip(result.faces, ours, strict=True):
            overlap = iou(face.bbox, ref_boxes[:, :4])
            match = int(np.argmax(overlap))
            assert overlap[match] > 0.5, (path.name, face.bbox)
            cosine = float(vec @ ref_vecs[match])
            worst = min(worst, cosine)
            assert cosine >= 0.99, (path.name, cosine)
        # ...and every reference face clear of the threshold (scores move by +-0.01 with padding) is ours
        clear = ref_boxes[ref_boxes[:, 4] > 0.62]
        for box in clear:
            assert any(iou(box[:4], f.bbox[None])[0] > 0.5 for f in result.faces), (path.name, box)
    print(f"\n{set_name}: lowest cosine to the reference over every face = {worst:.5f}")


@pytest.mark.parametrize("set_name", ["deepface", "facerec_ageitgey"])
def test_pair_verification_accuracy(set_name, analyzer):
    root, pairs = _verify_set(set_name)
    names = sorted({a for a, _, _ in pairs} | {b for _, b, _ in pairs})
    images = [read_bgr(root / n) for n in names]
    results = analyzer.process(images, ExtractOptions())
    embedding = {n: _largest(r.faces) for n, r in zip(names, results, strict=True)}
    sims = np.array([float(embedding[a] @ embedding[b]) for a, b, _ in pairs])
    same = np.array([s for _, _, s in pairs], dtype=bool)
    threshold = 0.33
    accuracy = float(((sims >= threshold) == same).mean())
    best_t = max(np.unique(sims), key=lambda t: ((sims >= t) == same).mean())
    best_acc = float(((sims >= best_t) == same).mean())
    print(
        f"\n{set_name}: {len(pairs)} pairs, accuracy {accuracy:.4f} at 0.33; "
        f"best {best_acc:.4f} at {best_t:.3f}; "
        f"same-person min {sims[same].min():.3f}, different max {sims[~same].max():.3f}"
    )
    assert accuracy >= 0.995


def test_yao_ming_is_number_13(client):
    """The face in yaoming.jpg best matches the player wearing 13 in players.jpg."""
    yao = client.post("/extract", json={"images": {"data": [b64(package_photo("yaoming.jpg"))]}}).json()
    players = client.post("/extract", json={"images": {"data": [b64(package_photo("players.jpg"))]}}).json()
    query = vectors(yao["data"][0]["faces"])[0]
    faces = players["data"][0]["faces"]
    sims = vectors(faces) @ query
    best = faces[int(np.argmax(sims))]
    # #13 (Yao Ming) is the tallest player, his face the highest in the team photo
    highest = min(faces, key=lambda f: f["bbox"][1])
    ordered = np.sort(sims)[::-1]
    print(f"\nbest match {ordered[0]:.3f} at {best['bbox']}, runner-up {ordered[1]:.3f}")
    assert best["bbox"] == highest["bbox"]
    assert ordered[0] > 0.5 and ordered[0] - ordered[1] > 0.2


def test_tom_hanks_aligned_crop(client):
    th = client.post(
        "/extract", json={"images": {"data": [b64(shared_path("anchor", "TH.png"))]}, "embed_only": True}
    ).json()
    th1 = client.post("/extract", json={"images": {"data": [b64(shared_path("anchor", "TH1.jpg"))]}}).json()
    stallone = client.post(
        "/extract", json={"images": {"data": [b64(shared_path("anchor", "Stallone.jpg"))]}}
    ).json()
    crop = vectors(th["data"][0]["faces"])[0]
    same = float(vectors(th1["data"][0]["faces"])[0] @ crop)
    other = float(vectors(stallone["data"][0]["faces"])[0] @ crop)
    print(f"\nTH.png vs TH1.jpg {same:.3f}, vs Stallone.jpg {other:.3f}")
    assert same > 0.4
    assert other < 0.2


def test_lumia_crowd(client):
    answer = client.post(
        "/extract", json={"images": {"data": [b64(shared_path("anchor", "lumia.jpg"))]}, "threshold": 0.6}
    ).json()
    faces = answer["data"][0]["faces"]
    print(f"\nlumia.jpg: {len(faces)} faces")
    assert len(faces) >= 80
    vecs = vectors(faces)
    assert vecs.shape == (len(faces), 512)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-4)
