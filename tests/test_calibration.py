"""Calibrated decisions (issue 20): the shipped calibration, its arithmetic, `facerest calibrate`."""

from __future__ import annotations

import itertools
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, shared_path
from typer.testing import CliRunner

from facerest.cli import app
from facerest.cli.calibrate import build, resolve_source
from facerest.config import Settings
from facerest.errors import BadInput, OutsideCalibration
from facerest.gallery import calibration as calib

SHIPPED = ROOT / "facerest" / "models" / "calibration" / "w600k_mbf.json"
#: every recognizer of the catalogue that installs here ships a calibration (issue 32)
SHIPPED_ALL = sorted((ROOT / "facerest" / "models" / "calibration").glob("*.json"))


def test_every_installable_recognizer_ships_a_calibration() -> None:
    from facerest.models.catalog import Catalog
    from facerest.models.store import embedded_path

    installable = {
        e.name
        for e in Catalog.load()
        if e.task == "recognition" and all(f.embedded and embedded_path(f.embedded) for f in e.files)
    }
    assert installable >= {"w600k_mbf", "sface_2021dec_int8bq", "dlib_resnet_v1"}
    assert {p.stem for p in SHIPPED_ALL} >= installable


@pytest.mark.parametrize("path", SHIPPED_ALL, ids=lambda p: p.stem)
def test_shipped_calibration_is_what_its_data_gives(path: Path, models_dir: Path) -> None:
    """Must show 1 (issue 20), and 2 of issue 32: each of the catalogue's calibrations recomputed
    from the data its file names, with the detector it names."""
    shared_path("verify")  # skips without the shared test data
    shipped = json.loads(path.read_text())
    labelled, crowds = [], []
    for source in shipped["made_from"]["sources"]:
        if "labelled" in source:
            labelled.append(resolve_source(source["labelled"], ROOT.parent))
        else:
            crowds.append(resolve_source(source["crowd"], ROOT.parent))
    pipeline = shipped["made_from"]["pipeline"]
    settings = Settings(
        models_dir=models_dir,
        threads=2,
        det_name=pipeline["detector"],
        det_thresh=pipeline["det_thresh"],
        max_size=pipeline["max_size"],
        align_antialias=pipeline["align_antialias"],
        rec_name=shipped["model"],
    )
    again, data, _ = build(labelled, crowds, settings)
    rebuilt = again.to_json()
    assert data.skipped == []
    assert rebuilt["made_from"]["sources"] == shipped["made_from"]["sources"]
    assert rebuilt["made_from"]["same_person_across_photos"] == [
        [a, b, pytest.approx(s, abs=2e-3)] for a, b, s in shipped["made_from"]["same_person_across_photos"]
    ]
    for key in ("faces", "identities", "genuine_pairs", "impostor_pairs", "model", "model_md5"):
        assert rebuilt[key] == shipped[key], key
    print(f"\n{shipped['model']}: {shipped['faces']} faces of {shipped['identities']} identities")
    print("   FMR   threshold(file) threshold(now)    TMR   impostor pairs above / all   FMR upper 95%")
    for old, new in zip(shipped["thresholds"], rebuilt["thresholds"], strict=True):
        print(
            f"{old['fmr']:>6g}   {old['threshold']:>10.4f}   {new['threshold']:>12.4f}   {new['tmr']:.4f}"
            f"   {new['impostor_pairs_above']:>6} / {new['impostor_pairs']}{' (thin)' if new['thin'] else ''}"
            f"   {new['fmr_upper_95']:.2e}  {new['basis']}"
        )
        assert new["fmr"] == old["fmr"]
        # the same photos through the same models: only float rounding of the embeddings differs
        assert new["threshold"] == pytest.approx(old["threshold"], abs=2e-3)
        assert new["tmr"] == pytest.approx(old["tmr"], abs=1.5 / shipped["genuine_pairs"])
        assert abs(new["impostor_pairs_above"] - old["impostor_pairs_above"]) <= 1
        assert new["impostor_pairs_above"] <= old["fmr"] * old["impostor_pairs"] + 1
    thresholds = [row["threshold"] for row in shipped["thresholds"]]
    assert thresholds == sorted(thresholds), "a smaller FMR must need a higher threshold"
    # FMR 1e-3, the verify default: w600k_mbf separates the shared sets; the commercial
    # recognizers do less well (docs/models.md), dlib's ResNet least
    assert shipped["thresholds"][1]["tmr"] >= {"w600k_mbf": 0.99, "sface_2021dec_int8bq": 0.9}.get(
        path.stem, 0.5
    )
    assert (path.with_suffix(".png")).stat().st_size > 10_000


def synthetic(n_ids: int = 60, per_id: int = 4, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Unit vectors clustered by identity: impostors near 0, genuine pairs near 0.6."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_ids, 128))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rows, labels = [], []
    for i, centre in enumerate(centres):
        for _ in range(per_id):
            v = centre + rng.normal(scale=0.08, size=128)
            rows.append(v / np.linalg.norm(v))
            labels.append(f"id{i}")
    return np.stack(rows), labels


def test_thresholds_hold_their_false_match_rate() -> None:
    vectors, labels = synthetic()
    cal = calib.calibrate(vectors, labels, "toy")
    genuine, impostor = calib.pair_scores(vectors, labels)
    for fmr in (1e-2, 1e-3):
        t = cal.threshold_for(fmr)
        observed = float(np.mean(impostor >= t))
        assert observed <= fmr, (fmr, observed)
        assert observed > fmr / 3  # the threshold is not needlessly strict
        assert cal.fmr_at(t) <= fmr * 1.01
    # the estimate falls as the score rises, through the join with the tail model
    scores = np.linspace(-0.2, 1.0, 400)
    estimates = [cal.fmr_at(s) for s in scores]
    assert all(a >= b for a, b in itertools.pairwise(estimates))
    assert cal.tmr_at(cal.threshold_for(1e-3)) == pytest.approx(
        float(np.mean(genuine >= cal.threshold_for(1e-3)))
    )
    with pytest.raises(OutsideCalibration):
        cal.threshold_for(cal.min_fmr / 10)
    with pytest.raises(OutsideCalibration):
        cal.threshold_for(0.9)


def test_fpir_and_fmr_convert_both_ways() -> None:
    for n in (1, 10, 1000, 10**6):
        fmr = calib.fmr_for_fpir(0.01, n)
        assert calib.fpir_for_fmr(fmr, n) == pytest.approx(0.01, rel=1e-9)
    assert calib.fmr_for_fpir(0.01, 100) == pytest.approx(1 - 0.99 ** (1 / 100))
    assert calib.fpir_for_fmr(5.6e-4, 1000) == pytest.approx(0.43, abs=0.01)  # the example


def test_decision_follows_the_gallery_size() -> None:
    cal = calib.load(SHIPPED)
    small = calib.decide(cal, subjects=10, default_fmr=1e-3, default_fpir=0.01, fallback_threshold=0.3)
    large = calib.decide(cal, subjects=1000, default_fmr=1e-3, default_fpir=0.01, fallback_threshold=0.3)
    assert small.basis == large.basis == "fpir"
    assert large.threshold > small.threshold
    assert small.fpir == pytest.approx(0.01) and small.fpir_asked is None
    huge = calib.decide(cal, subjects=10**8, default_fmr=1e-3, default_fpir=0.01, fallback_threshold=0.3)
    assert huge.fmr == pytest.approx(cal.min_fmr) and huge.fpir_asked == 0.01 and huge.fpir > 0.01
    with pytest.raises(OutsideCalibration):
        calib.decide(cal, fpir=0.01, subjects=10**8, default_fmr=1e-3, fallback_threshold=0.3)
    with pytest.raises(BadInput):
        calib.decide(cal, fmr=1e-3, threshold=0.3, default_fmr=1e-3, fallback_threshold=0.3)
    verify = calib.decide(cal, default_fmr=1e-3, fallback_threshold=0.3)
    assert verify.threshold == pytest.approx(cal.threshold_for(1e-3)) and verify.fmr == 1e-3


def test_too_little_data_is_named() -> None:
    vectors, labels = synthetic(n_ids=1)
    with pytest.raises(BadInput, match="at least 2 identities"):
        calib.calibrate(vectors, labels, "toy")
    vectors, labels = synthetic(n_ids=5, per_id=1)
    with pytest.raises(BadInput, match="no genuine pair"):
        calib.calibrate(vectors, labels, "toy")
    vectors, labels = synthetic(n_ids=6, per_id=2)
    with pytest.raises(
        BadInput, match=r"needs at least \d+ impostor pairs; the 12 faces of 6 identities give 60"
    ):
        calib.calibrate(vectors, labels, "toy", fmrs=(1e-2, 1e-3, 1e-4))


def test_cli_calibrates_identity_folders_and_lists_unreadable_images(
    tmp_path: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = shared_path("verify", "deepface")
    people = tmp_path / "people"
    for line in (root / "identities.csv").read_text().splitlines()[1:]:
        image, identity = line.split(",")
        (people / identity).mkdir(parents=True, exist_ok=True)
        shutil.copy(root / image, people / identity / Path(image).name)
    (people / "id00" / "broken.jpg").write_bytes(b"not an image")
    monkeypatch.setenv("FACEREST_MODELS_DIR", str(models_dir))
    monkeypatch.setenv("FACEREST_THREADS", "2")
    out = tmp_path / "cal.json"
    two = tmp_path / "two"
    for identity in ("id00", "id01"):
        shutil.copytree(people / identity, two / identity)
    result = CliRunner().invoke(app, ["calibrate", str(two), "--out", str(out)])
    assert result.exit_code == 1 and "impostor pairs" in result.output, result.output
    assert not out.exists()
    crowd = shared_path("anchor", "lumia.jpg")
    result = CliRunner().invoke(app, ["calibrate", str(people), "--crowd", str(crowd), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "broken.jpg" in result.output and "skipped" in result.output
    written = json.loads(out.read_text())
    assert written["faces"] == 61 + 85 and written["identities"] == 13 + 85
    assert [r["fmr"] for r in written["thresholds"]] == [1e-2, 1e-3, 1e-4]
    assert any("broken.jpg" in s[0] for s in written["made_from"]["skipped"])
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert math.isclose(sum(1 for _ in written["genuine_scores"]), written["genuine_pairs"])


def test_decisions_over_http_name_their_error_rates(server) -> None:  # type: ignore[no-untyped-def]
    cal = calib.load(SHIPPED)
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(2, 512))
    pair = [a.tolist(), (a + 0.9 * b).tolist()]  # cosine about 0.74
    with server.client() as client:
        decisions = client.get("/info").json()["decisions"]
        assert decisions["verify_fmr"] == 1e-3 and decisions["search_fpir"] == 0.01
        assert decisions["calibration"]["source"] == "catalogue:w600k_mbf.json"
        assert [r["threshold"] for r in decisions["calibration"]["thresholds"]] == [
            r["threshold"] for r in json.loads(SHIPPED.read_text())["thresholds"]
        ]
        r = client.post("/verify", json={"embeddings": pair})
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["decision"]["basis"] == "fmr" and answer["decision"]["fmr"] == 1e-3
        assert answer["threshold"] == pytest.approx(cal.threshold_for(1e-3))
        assert answer["same"] is True and 0 < answer["fmr"] < cal.empirical_min_fmr
        r = client.post("/verify", json={"embeddings": pair, "fmr": 1e-2})
        assert r.json()["threshold"] == pytest.approx(cal.threshold_for(1e-2))
        r = client.post("/verify", json={"embeddings": pair, "threshold": 0.5})
        assert r.json()["decision"]["basis"] == "threshold" and r.json()["threshold"] == 0.5
        # outside the calibrated range: 422 naming the range; both a cosine and a rate: 400
        r = client.post("/verify", json={"embeddings": pair, "fmr": 1e-9})
        assert r.status_code == 422 and r.json()["code"] == "outside_calibration", r.text
        assert "calibrated range" in r.json()["detail"]
        r = client.post("/verify", json={"embeddings": pair, "fmr": 1e-3, "threshold": 0.3})
        assert r.status_code == 400 and "one of threshold, fmr and fpir" in r.text
        client.delete("/gallery/rates")
        r = client.post("/gallery/rates/subjects/someone/faces", json={"embeddings": [pair[0]]})
        assert r.status_code == 200
        for body, status in (({"fmr": 1e-9}, 422), ({"fpir": 1e-12}, 422), ({"fpir": 0.05}, 200), ({}, 200)):
            r = client.post("/gallery/rates/search", json={"embeddings": [pair[1]], **body})
            assert r.status_code == status, (body, r.text)
        decision = r.json()["decision"]
        assert decision == {
            "basis": "fpir",
            "threshold": pytest.approx(cal.threshold_for(0.01)),
            "fmr": pytest.approx(0.01),
            "fpir": pytest.approx(0.01),
            "subjects": 1,
            "calibration": "catalogue:w600k_mbf.json",
        }
        [face] = r.json()["data"][0]["faces"]
        assert (
            face["subject"] == "someone"
            and face["unknown"] is False
            and face["fmr"] == face["matches"][0]["fmr"]
        )
        r = client.post("/gallery/rates/search", json={"embeddings": [b.tolist()]})
        [face] = r.json()["data"][0]["faces"]
        assert face["subject"] is None and face["unknown"] is True and face["fmr"] > 0.01
        assert client.delete("/gallery/rates").status_code == 200


def test_without_a_calibration_decisions_are_cosines() -> None:
    d = calib.decide(None, default_fmr=1e-3, default_fpir=0.01, subjects=5, fallback_threshold=0.35)
    assert (d.basis, d.threshold, d.fmr) == ("threshold", 0.35, None)
    with pytest.raises(BadInput, match="need a calibration"):
        calib.decide(None, fmr=1e-3, default_fmr=1e-3, fallback_threshold=0.35)


def test_a_users_calibration_file_overrides_the_shipped_one(
    analyzer, settings: Settings, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from facerest.gallery.service import GalleryService

    vectors, labels = synthetic(n_ids=80)
    mine = calib.calibrate(vectors, labels, "w600k_mbf")
    mine.save(tmp_path / "mine.json")
    own = settings.model_copy(update={"calibration_file": tmp_path / "mine.json", "data_dir": tmp_path})
    service = GalleryService(None, analyzer, own)
    assert (
        service.calibration is not None
        and service.calibration.source == "FACEREST_CALIBRATION_FILE:mine.json"
    )
    assert service.decision().threshold == pytest.approx(mine.threshold_for(1e-3))
    assert service.decision().threshold != pytest.approx(calib.load(SHIPPED).threshold_for(1e-3), abs=1e-3)
    calib.calibrate(vectors, labels, "another_model").save(tmp_path / "other.json")
    with pytest.raises(BadInput, match="calibrates another_model, not the recognizer in use"):
        GalleryService(None, analyzer, own.model_copy(update={"calibration_file": tmp_path / "other.json"}))
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(BadInput, match="cannot be read"):
        GalleryService(None, analyzer, own.model_copy(update={"calibration_file": tmp_path / "broken.json"}))
