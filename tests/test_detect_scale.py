"""The adaptive detector scale finds the reference scale's faces with near-equal embeddings (issue 18).

Every photo is analysed twice on the same analyzer, once per policy (ExtractOptions.detect_scale):
`reference` (InsightFace's scale; tests/test_correctness.py holds it equal to InsightFace's own
pipeline) and `adaptive` (the default). `native` is printed beside them to show what the adaptive
policy's second pass buys. Photos: the shared anchor and verify sets, the package photos, and the
crowd photos lumia.jpg and players.jpg downscaled to 1/2 and 1/3 (faces of 12-40 px).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import SHARED, package_photo, read_bgr
from test_correctness import iou

from facerest.config import Settings
from facerest.pipeline import ExtractOptions, FaceAnalyzer
from facerest.pipeline.scale import DIRECT_GAIN, RELIABLE_FACE_PX, plan_scale

#: reference faces at least this wide (image pixels) must all be found
MIN_FACE_PX = 16
POLICIES = ("reference", "adaptive", "native")


@dataclass
class Tally:
    images: int = 0
    reference_faces: int = 0  # every face the reference scale finds
    guarded: int = 0  # of those, at least MIN_FACE_PX wide
    missed: list[str] = field(default_factory=list)  # guarded faces the policy does not find
    extra: int = 0  # faces the policy finds that the reference does not
    cosines: list[float] = field(default_factory=list)  # per matched face, to the reference's


def _photo_sets() -> dict[str, list[tuple[str, np.ndarray]]]:
    sets: dict[str, list[tuple[str, np.ndarray]]] = {}
    if SHARED.exists():
        anchor = SHARED / "anchor"
        sets["anchor"] = [(p.name, read_bgr(p)) for p in sorted(anchor.iterdir()) if p.suffix != ".md"]
        for root in sorted((SHARED / "verify").iterdir()):
            if (root / "images").is_dir():
                images = sorted((root / "images").iterdir())
                sets[f"verify/{root.name}"] = [(p.name, read_bgr(p)) for p in images]
    sets["package"] = [(n, read_bgr(package_photo(n))) for n in ("players.jpg", "yaoming.jpg", "gdp.jpg")]
    crowds = [("players.jpg", read_bgr(package_photo("players.jpg")))]
    if SHARED.exists():
        crowds.append(("lumia.jpg", read_bgr(SHARED / "anchor" / "lumia.jpg")))
    for divisor in (2, 3):
        sets[f"crowds 1/{divisor}"] = [
            (
                f"{name} 1/{divisor}",
                cv2.resize(
                    image,
                    (image.shape[1] // divisor, image.shape[0] // divisor),
                    interpolation=cv2.INTER_AREA,
                ),
            )
            for name, image in crowds
        ]
    return sets


def _run(analyzer: FaceAnalyzer, images: list[np.ndarray], policy: str) -> list:  # type: ignore[type-arg]
    options = ExtractOptions(detect_scale=policy)  # type: ignore[arg-type]
    return [r for at in range(0, len(images), 16) for r in analyzer.process(images[at : at + 16], options)]


def _compare(names: list[str], reference: list, other: list, tally: Tally) -> None:  # type: ignore[type-arg]
    for name, ref, got in zip(names, reference, other, strict=True):
        tally.images += 1
        tally.reference_faces += len(ref.faces)
        got_boxes = np.stack([f.bbox for f in got.faces]) if got.faces else np.zeros((0, 4))
        ref_boxes = np.stack([f.bbox for f in ref.faces]) if ref.faces else np.zeros((0, 4))
        for face in ref.faces:
            overlap = iou(face.bbox, got_boxes) if len(got_boxes) else np.zeros(1)
            if overlap.max() > 0.5:
                twin = got.faces[int(np.argmax(overlap))]
                tally.cosines.append(float(face.embedding @ twin.embedding))
            tally.guarded += face.width >= MIN_FACE_PX
            if face.width >= MIN_FACE_PX and overlap.max() <= 0.5:
                tally.missed.append(f"{name}: {face.width:.0f} px at {np.round(face.bbox).tolist()}")
        for face in got.faces:
            if not len(ref_boxes) or iou(face.bbox, ref_boxes).max() <= 0.5:
                tally.extra += 1


def _pair_accuracy(set_dir: Path, results: dict[str, object]) -> float:
    with (set_dir / "pairs.csv").open() as fh:
        pairs = [(r["img_a"], r["img_b"], int(r["same"])) for r in csv.DictReader(fh)]

    def largest(name: str) -> np.ndarray:
        faces = results[Path(name).name].faces  # type: ignore[attr-defined]
        return max(faces, key=lambda f: (f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1])).embedding

    right = [(float(largest(a) @ largest(b)) >= 0.33) == bool(same) for a, b, same in pairs]
    return float(np.mean(right))


@dataclass
class Study:
    tallies: dict[str, dict[str, Tally]]  # set -> policy -> compared with the reference
    accuracy: dict[str, dict[str, float]]  # verify set -> policy -> pair accuracy


@pytest.fixture(scope="module")
def study(analyzer: FaceAnalyzer) -> Study:
    tallies: dict[str, dict[str, Tally]] = {}
    accuracy: dict[str, dict[str, float]] = {}
    for set_name, photos in _photo_sets().items():
        names = [n for n, _ in photos]
        images = [image for _, image in photos]
        results = {policy: _run(analyzer, images, policy) for policy in POLICIES}
        tallies[set_name] = {}
        for policy in POLICIES[1:]:
            tallies[set_name][policy] = Tally()
            _compare(names, results["reference"], results[policy], tallies[set_name][policy])
        if set_name.startswith("verify/"):
            set_dir = SHARED / set_name
            accuracy[set_name] = {
                policy: _pair_accuracy(set_dir, dict(zip(names, results[policy], strict=True)))
                for policy in POLICIES
            }
    print(f"\nfaces >= {MIN_FACE_PX} px found at the reference scale, by policy (IoU > 0.5):")
    print(
        f"{'set':<24}{'policy':<10}{'images':>7}{'ref faces':>10}{'>=16px':>8}"
        f"{'missed':>8}{'extra':>7}{'min cos':>9}"
    )
    for set_name, by_policy in tallies.items():
        for policy, t in by_policy.items():
            low = min(t.cosines) if t.cosines else float("nan")
            print(
                f"{set_name:<24}{policy:<10}{t.images:>7}{t.reference_faces:>10}{t.guarded:>8}"
                f"{len(t.missed):>8}{t.extra:>7}{low:>9.4f}"
            )
            for miss in t.missed[:5]:
                print(f"    missed: {miss}")
    for set_name, by_policy in accuracy.items():
        print(
            f"pair accuracy at 0.33, {set_name}: " + ", ".join(f"{p} {a:.4f}" for p, a in by_policy.items())
        )
    return Study(tallies, accuracy)


def test_adaptive_finds_the_reference_faces(study: Study) -> None:
    adaptive = [by_policy["adaptive"] for by_policy in study.tallies.values()]
    missed = [m for t in adaptive for m in t.missed]
    assert not missed, missed
    reference_faces = sum(t.reference_faces for t in adaptive)
    extra = sum(t.extra for t in adaptive)
    assert extra <= 0.02 * reference_faces, (extra, reference_faces)
    cosines = [c for t in adaptive for c in t.cosines]
    print(f"\nadaptive: {extra} extra of {reference_faces}; cosine to the reference min {min(cosines):.4f}")
    assert min(cosines) >= 0.95


def test_pair_accuracy_does_not_move(study: Study) -> None:
    if not study.accuracy:
        pytest.skip(f"{SHARED} is absent: the verify sets live there")
    for set_name, by_policy in study.accuracy.items():
        assert by_policy["adaptive"] == by_policy["reference"], (set_name, by_policy)


@pytest.mark.parametrize("family", ["scrfd", "retinaface", "yolov5face", "centerface"])
def test_first_canvas_is_never_larger_than_the_reference(family: str) -> None:
    """So GPU profiles built for the reference canvases (runtime/shapes.py) cover every pass."""
    settings = Settings()
    box = (settings.max_size[0], settings.max_size[1])
    for width in (24, 112, 220, 500, 640, 900, 1600, 4000):
        for height in (24, 269, 640, 898, 3000):
            plan = plan_scale(width, height, box, policy="adaptive", fixed=None, stride=32, family=family)
            assert plan.first.canvas[0] <= plan.reference.canvas[0], (width, height)
            assert plan.first.canvas[1] <= plan.reference.canvas[1], (width, height)
            assert min(plan.first.canvas) >= 32
            # images larger than the box are shrunk exactly as the reference shrinks them, and
            # images it would enlarge only a little are enlarged as it does
            if plan.reference.scale < DIRECT_GAIN:
                assert plan.first == plan.reference and not plan.may_enlarge
            else:
                assert plan.first.scale == 1.0 and plan.may_enlarge


def test_fixed_input_and_mtcnn_keep_the_reference_scale() -> None:
    fixed = plan_scale(220, 269, (640, 640), policy="adaptive", fixed=(640, 640), stride=32, family="scrfd")
    pyramid = plan_scale(220, 269, (640, 640), policy="adaptive", fixed=None, stride=1, family="mtcnn")
    for plan in (fixed, pyramid):
        assert plan.first == plan.reference and not plan.may_enlarge


def test_reference_pass_only_for_small_or_no_faces(analyzer: FaceAnalyzer) -> None:
    """Stallone.jpg (one big face) costs one native-scale pass; a small face triggers the second."""
    from facerest.models.detection.base import Detections

    plan = plan_scale(220, 269, (640, 640), policy="adaptive", fixed=None, stride=32, family="scrfd")
    assert plan.first.canvas == (288, 352) and plan.reference.canvas == (608, 640)
    nothing = Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), None, {})
    big = Detections(np.array([[20, 30, 150, 250]], np.float32), np.ones(1, np.float32), None, {})
    small = Detections(
        np.array([[20, 30, 150, 250], [5, 5, 5 + RELIABLE_FACE_PX - 1, 80]], np.float32),
        np.ones(2, np.float32),
        None,
        {},
    )
    assert plan.needs_reference_pass(nothing) and plan.needs_reference_pass(small)
    assert not plan.needs_reference_pass(big)


def test_detector_runs_per_policy(analyzer: FaceAnalyzer) -> None:
    """A portrait costs one native-scale run; small faces add the reference run; nothing found adds
    the close-up pass after both. The reference policy never runs the native scale."""
    portrait = read_bgr(package_photo("yaoming.jpg"))  # 233x287, one face of about 100 px
    players = read_bgr(package_photo("players.jpg"))
    crowd = cv2.resize(players, (players.shape[1] // 3, players.shape[0] // 3), interpolation=cv2.INTER_AREA)
    blank = np.full((200, 300, 3), 127, np.uint8)
    runs = analyzer.scheduler.stats.by_model.setdefault(analyzer.models.detector.name, [0, 0])

    def detector_items(image: np.ndarray, policy: str) -> int:
        before = runs[1]
        options = ExtractOptions(extract_embedding=False, detect_scale=policy)  # type: ignore[arg-type]
        analyzer.process([image], options)
        return runs[1] - before

    assert [detector_items(portrait, p) for p in POLICIES] == [1, 1, 1]
    assert [detector_items(crowd, p) for p in POLICIES] == [1, 2, 1]
    assert [detector_items(blank, p) for p in POLICIES] == [2, 3, 2]


def test_refined_landmarks_come_nearer_the_reference(settings: Settings) -> None:
    """FACEREST_DETECT_REFINE: faces found at native scale re-detected on a crop at the reference
    scale embed nearer the same face in the full photo than native-scale landmarks do."""
    from facerest.preparation import load_models

    root = SHARED / "verify" / "facerec_ageitgey" / "images"
    if not root.exists():
        pytest.skip(f"{root} is absent")
    refined_settings = settings.model_copy(update={"detect_refine": True})
    plain, refining = (FaceAnalyzer(load_models(s), s) for s in (settings, refined_settings))
    try:
        photos = [read_bgr(p) for p in sorted(root.iterdir())]
        full = _run(plain, photos, "reference")
        small = [cv2.resize(p, None, fx=200 / max(p.shape[:2]), fy=200 / max(p.shape[:2])) for p in photos]
        gains = []
        for big, native, refined in zip(
            full, _run(plain, small, "native"), _run(refining, small, "native"), strict=True
        ):
            if len(big.faces) == 1 and len(native.faces) == 1 and len(refined.faces) == 1:
                target = big.faces[0].embedding
                gains.append(float(refined.faces[0].embedding @ target - native.faces[0].embedding @ target))
        print(
            f"\nrefined - native cosine to the full photo over {len(gains)} faces: mean {np.mean(gains):+.4f}"
        )
        assert len(gains) >= 10 and np.mean(gains) > 0
    finally:
        plain.close()
        refining.close()
