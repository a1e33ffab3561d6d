"""Clustering methods at scale: time and BCubed F on synthetic people (unit vectors).

    .venv/bin/python benchmarks/cluster_bench.py [--faces 500,2000] [--per-person 4]

Each synthetic person is a random 512-d direction; their faces are that direction plus noise
scaled so genuine pairs score about 0.55 and impostors about 0 (as w600k_mbf does on the shared
photos). The threshold is the shipped calibration's for FACEREST_SEARCH_FPIR (0.01) over the
faces, as `facerest cluster` uses by default. Incremental: 90% clustered, the last 10% assigned.
Prints a table; asserts nothing (the machine this ran on may be shared: compare rows, not runs).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from facerest.gallery import clustering
from facerest.gallery.calibration import fmr_for_fpir, shipped


def people(rng: np.random.Generator, faces: int, per_person: int) -> tuple[np.ndarray, list[str]]:
    count = faces // per_person
    centres = rng.standard_normal((count, 512))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    noise = rng.standard_normal((count * per_person, 512)) * 0.036
    vectors = np.repeat(centres, per_person, axis=0) + noise
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32), [f"p{i // per_person}" for i in range(count * per_person)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--faces", default="500,2000")
    parser.add_argument("--per-person", type=int, default=4)
    args = parser.parse_args()
    calibration = shipped("w600k_mbf")
    assert calibration is not None
    rng = np.random.default_rng(0)
    for method in ("average", "hdbscan"):  # imports and first-call set-up stay out of the table
        clustering.cluster(people(rng, 40, 4)[0], 0.4, method=method)  # type: ignore[arg-type]
    print(f"{'faces':>6} {'method':>12} {'seconds':>8} {'clusters':>8} {'people':>6} {'BCubed F':>8}")
    for faces in (int(f) for f in args.faces.split(",")):
        vectors, truth = people(rng, faces, args.per_person)
        threshold = calibration.threshold_for(max(fmr_for_fpir(0.01, faces - 1), calibration.min_fmr))
        for method in ("average", "single", "hdbscan"):
            start = time.perf_counter()
            labels = clustering.cluster(vectors, threshold, method=method)  # type: ignore[arg-type]
            took = time.perf_counter() - start
            f = clustering.bcubed(labels, truth)[2]
            print(f"{faces:6} {method:>12} {took:8.3f} {len(set(labels)):8} {len(set(truth)):6} {f:8.4f}")
        cut = int(0.9 * faces)
        old = clustering.cluster(vectors[:cut], threshold)
        start = time.perf_counter()
        new = clustering.assign(vectors[:cut], old, vectors[cut:], threshold)
        took = time.perf_counter() - start
        labels = np.concatenate([old, new])
        f = clustering.bcubed(labels, truth)[2]
        print(f"{faces:6} {'+10% assign':>12} {took:8.3f} {len(set(labels)):8} {len(set(truth)):6} {f:8.4f}")


if __name__ == "__main__":
    main()
