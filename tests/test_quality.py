"""Must show 4 (issue 20): face quality falls with damage; enrolment refuses damaged faces; the
default floors refuse none of the shared photos, so verification on the shared pairs is unchanged."""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import Server, read_bgr, shared_path
from helpers import b64

from facerest.config import Settings
from facerest.gallery.calibration import shipped
from facerest.imaging.quality import Floors, pose, shortfalls
from facerest.pipeline import ExtractOptions

PHOTOS = [
    ("deepface", "images/img1.jpg"),
    ("deepface", "images/img20.jpg"),
    ("deepface", "images/img5.jpg"),
    ("facerec_ageitgey", "images/biden__examples_knn_examples_train_biden_biden.jpg"),
]
BLUR = (0.0, 0.5, 1.0, 2.0, 4.0)  # Gaussian sigma, in hundredths of the face's width
SHRINK = (1.0, 0.5, 0.25)  # and last, to a 20-pixel face
CUT = (0.0, 0.25, 0.4)  # share of the face's width cut off at the image's left edge


def default_floors() -> Floors:
    s = Settings.model_fields
    return Floors(
        min_sharpness=s["enrol_min_sharpness"].default,
        min_face_size=s["enrol_min_face_size"].default,
        max_yaw=s["enrol_max_yaw"].default,
        max_cut=s["enrol_max_cut"].default,
        min_score=s["enrol_min_quality"].default,
    )


def face_of(analyzer, image: np.ndarray):  # type: ignore[no-untyped-def]
    [result] = analyzer.process([image], ExtractOptions(limit_faces=1, return_quality=True))
    return result.faces[0] if result.faces else None


def damaged(image: np.ndarray, bbox: np.ndarray, kind: str, amount: float) -> np.ndarray:
    width = float(bbox[2] - bbox[0])
    if amount == 0 or (kind == "shrink" and amount == 1.0):
        return image
    if kind == "blur":
        return cv2.GaussianBlur(image, (0, 0), amount * width / 100)
    if kind == "shrink":
        return cv2.resize(image, None, fx=amount, fy=amount, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(image[:, int(bbox[0] + amount * width) :])


@pytest.mark.parametrize("set_name,image", PHOTOS)
def test_quality_falls_with_the_damage(set_name: str, image: str, analyzer) -> None:  # type: ignore[no-untyped-def]
    original = read_bgr(shared_path("verify", set_name, image))
    face = face_of(analyzer, original)
    assert face is not None and shortfalls(face.quality, default_floors()) == []
    lines = [f"\n{image}: original {face.quality.to_json()}"]
    to_20_px = 20 / float(face.bbox[2] - face.bbox[0])
    for kind, amounts, part in (
        ("blur", BLUR, "sharpness"),
        ("shrink", (*SHRINK, round(to_20_px, 4)), "face_size"),
        ("cut", CUT, "cut"),
    ):
        found = [face_of(analyzer, damaged(original, face.bbox, kind, a)) for a in amounts]
        assert all(f is not None for f in found), (kind, amounts)
        scores = [f.quality.score for f in found]
        parts = [getattr(f.quality, part) for f in found]
        rounded = [round(p, 3) for p in parts]
        lines.append(f"  {kind:6} {amounts}: score {[round(s, 3) for s in scores]}, {part} {rounded}")
        assert all(a > b for a, b in itertools.pairwise(scores)), (kind, scores)
        if part == "cut":
            assert all(a < b for a, b in itertools.pairwise(parts)), (kind, parts)
        else:
            assert all(a > b for a, b in itertools.pairwise(parts)), (kind, parts)
        worst = found[-1].quality
        assert shortfalls(worst, default_floors()), (kind, worst)
    print("\n".join(lines))


def test_pose_from_landmarks_follows_a_turned_template() -> None:
    from facerest.imaging.quality import TEMPLATE

    assert [round(v) for v in pose(TEMPLATE)[:3]] == [0, 0, 0]
    yaws = []
    for angle in (0, 15, 30, 45):
        # the template turned about a vertical axis: x of points off the midline shrinks, the nose shifts
        turned = TEMPLATE.copy()
        depth = np.array([0.0, 0.0, 18.0, 0.0, 0.0])  # the nose stands out of the face
        c, s = np.cos(np.radians(angle)), np.sin(np.radians(angle))
        turned[:, 0] = 56 + (TEMPLATE[:, 0] - 56) * c + depth * s
        yaws.append(pose(turned)[0])
    assert all(a < b for a, b in itertools.pairwise(yaws)), yaws
    rotated = TEMPLATE @ np.array([[np.cos(0.3), np.sin(0.3)], [-np.sin(0.3), np.cos(0.3)]], np.float32)
    assert pose(rotated)[2] == pytest.approx(np.degrees(0.3), abs=0.5)


def test_enrolment_refuses_damaged_faces_and_force_overrides(server: Server, tmp_path: Path) -> None:
    path = shared_path("verify", "deepface", "images/img1.jpg")
    original = read_bgr(path)
    with server.client() as client:
        r = client.post(
            "/extract", json={"images": {"data": [b64(path)]}, "limit_faces": 1, "return_quality": True}
        )
        [face] = r.json()["data"][0]["faces"]
        bbox = np.array(face["bbox"], np.float32)
        assert set(face["quality"]) >= {"score", "face_size", "sharpness", "yaw", "pitch", "roll", "cut"}
        bad = {
            "face too blurred (sharpness": damaged(original, bbox, "blur", 4.0),
            "face too small (": damaged(original, bbox, "shrink", 0.03),
            "face cut by the image edge": damaged(original, bbox, "cut", 0.4),
        }
        images = [
            b64(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes())
            for img in bad.values()
        ]
        client.delete("/gallery/quality")
        r = client.post(
            "/gallery/quality/subjects/someone/faces", json={"images": {"data": [b64(path), *images]}}
        )
        assert r.status_code == 200, r.text
        answer = r.json()
        print(f"\nrefused: {answer['failed']}")
        assert len(answer["added"]) == 1
        assert [f["index"] for f in answer["failed"]] == [1, 2, 3]
        for failed, reason in zip(answer["failed"], bad, strict=True):
            assert failed["detail"].startswith(reason) or reason in failed["detail"], failed
        r = client.post(
            "/gallery/quality/subjects/someone/faces",
            json={"images": {"data": images}, "force": True, "return_quality": True},
        )
        assert len(r.json()["added"]) == 3 and r.json()["failed"] == []
        assert all("quality" in a for a in r.json()["added"])
        # a blurred probe is said to be one
        r = client.post("/gallery/quality/search", json={"images": {"data": [images[0], b64(path)]}})
        low, good = (item["faces"][0] for item in r.json()["data"])
        assert low["low_quality"] is True and "blurred" in low["quality_issues"][0]
        assert good["low_quality"] is False and good["quality_issues"] == []
        assert client.delete("/gallery/quality").status_code == 200


def test_default_floors_keep_every_shared_photo(analyzer) -> None:  # type: ignore[no-untyped-def]
    """No shared photo is refused at the default floors, so no pair is lost: verification accuracy
    on the shared pairs is what it is without floors."""
    calibration = shipped("w600k_mbf")
    assert calibration is not None
    threshold = calibration.threshold_for(Settings.model_fields["verify_fmr"].default)
    for set_name in ("deepface", "facerec_ageitgey"):
        root = shared_path("verify", set_name)
        with (root / "identities.csv").open() as fh:
            images = [row["img"] for row in csv.DictReader(fh)]
        faces = {img: face_of(analyzer, read_bgr(root / img)) for img in images}
        refused = {img: shortfalls(f.quality, default_floors()) for img, f in faces.items()}
        refused = {img: why for img, why in refused.items() if why}
        with (root / "pairs.csv").open() as fh:
            pairs = [(r["img_a"], r["img_b"], r["same"] == "1") for r in csv.DictReader(fh)]
        right = [
            (float(faces[a].embedding @ faces[b].embedding) >= threshold) == same for a, b, same in pairs
        ]
        kept = [
            ok for ok, (a, b, _) in zip(right, pairs, strict=True) if a not in refused and b not in refused
        ]
        print(
            f"\n{set_name}: {len(images)} photos, {len(refused)} refused at the default floors; verification "
            f"accuracy {np.mean(right):.4f} over {len(pairs)} pairs, {np.mean(kept):.4f} over the "
            f"{len(kept)} pairs the floors keep; lowest sharpness "
            f"{min(f.quality.sharpness for f in faces.values()):.0f}"
        )
        assert refused == {}
        assert np.mean(kept) >= np.mean(right)
