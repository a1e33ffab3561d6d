"""Do landmarks found at native scale align worse than at the reference scale? (issue 18)

    PYTHONPATH=$PWD .venv/bin/python benchmarks/detect_scale_alignment.py [--sides 120,200,320,480]

Every photo of the shared verify sets is shrunk so its longer side is `side` px; its largest face
is then embedded with the detector at the reference scale (the image enlarged to max_size), at
native scale, and at native scale with FACEREST_DETECT_REFINE, and each embedding is compared
with the same face's in the full photo (reference scale: the photo is shrunk to max_size, the
face stays large). Prints, per side and face width,
the mean cosine to the full photo of each policy and their difference; asserts nothing.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cv2
import numpy as np

from facerest.config import Settings
from facerest.pipeline import ExtractOptions, FaceAnalyzer
from facerest.preparation import load_models

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "testdata"
WIDTH_BINS = ((0, 48), (48, 64), (64, 96), (96, 128), (128, 100_000))


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x1, y1 = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
    x2, y2 = np.minimum(box[2], boxes[:, 2]), np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return inter / (area(box) + area(boxes) - inter)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", default="120,200,320,480")
    parser.add_argument("--models-dir", type=Path, default=None)
    args = parser.parse_args()
    models_dir = args.models_dir or Path(tempfile.mkdtemp(prefix="facerest-models-"))
    settings = Settings(models_dir=models_dir, threads=2)
    analyzer = FaceAnalyzer(load_models(settings), settings)
    refined_settings = settings.model_copy(update={"detect_refine": True})
    refining = FaceAnalyzer(load_models(refined_settings), refined_settings)

    def run(images: list[np.ndarray], policy: str) -> list:  # type: ignore[type-arg]
        """`native+refine`: native scale, each face's landmarks refined at the reference scale."""
        options = ExtractOptions(detect_scale=policy.split("+")[0])  # type: ignore[arg-type]
        which = refining if policy.endswith("+refine") else analyzer
        chunks = (images[at : at + 16] for at in range(0, len(images), 16))
        return [r for chunk in chunks for r in which.process(chunk, options)]

    photos = [cv2.imread(str(p)) for p in sorted((SHARED / "verify").glob("*/images/*"))]
    full = run(photos, "reference")
    print(
        "side  faces  width px   reference  native  native-reference (mean, worst)"
        "  refined  refined-reference"
    )
    for side in (int(s) for s in args.sides.split(",")):
        small, largest = [], []
        for photo, result in zip(photos, full, strict=True):
            k = side / max(photo.shape[:2])
            if result.faces and k < 1:
                size = (round(photo.shape[1] * k), round(photo.shape[0] * k))
                small.append(cv2.resize(photo, size, interpolation=cv2.INTER_AREA))
                big = max(result.faces, key=lambda f: f.width)
                largest.append((big.bbox * k, big.embedding))
        cosines = {}
        for policy in ("reference", "native", "native+refine"):
            found = []
            for (box, embedding), result in zip(largest, run(small, policy), strict=True):
                boxes = np.stack([f.bbox for f in result.faces]) if result.faces else np.zeros((0, 4))
                overlap = iou(box, boxes) if len(boxes) else np.zeros(1)
                twin = result.faces[int(np.argmax(overlap))] if overlap.max() > 0.5 else None
                found.append(float(embedding @ twin.embedding) if twin is not None else np.nan)
            cosines[policy] = np.array(found)
        widths = np.array([box[2] - box[0] for box, _ in largest])
        both = ~np.isnan(cosines["reference"]) & ~np.isnan(cosines["native"])
        for low, high in WIDTH_BINS:
            rows = both & (widths >= low) & (widths < high)
            if rows.any():
                diff = cosines["native"][rows] - cosines["reference"][rows]
                refined = cosines["native+refine"][rows] - cosines["reference"][rows]
                print(
                    f"{side:>4} {rows.sum():>6}  {low:>3}-{min(high, 9999):<5} "
                    f"{cosines['reference'][rows].mean():>10.4f} {cosines['native'][rows].mean():>7.4f}"
                    f"  {diff.mean():+.4f}, {diff.min():+.4f}"
                    f"  {np.nanmean(cosines['native+refine'][rows]):>7.4f}  {np.nanmean(refined):+.4f}"
                )
        diff = cosines["native"][both] - cosines["reference"][both]
        better = int((diff > 0).sum())
        print(f"{side:>4} {both.sum():>6}  all        native better on {better}, mean {diff.mean():+.4f}")
    analyzer.close()
    refining.close()


if __name__ == "__main__":
    main()
