"""Must show 3 (issue 20): unlabelled faces grouped into people at the calibrated decision point.

`facerest extract` over the shared verification photos, then `facerest cluster` over its output;
the identities are known to the test, not to the algorithm.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import package_photo, read_bgr, shared_path
from typer.testing import CliRunner

from facerest.cli import app
from facerest.gallery import clustering
from facerest.gallery.calibration import fmr_for_fpir, shipped
from facerest.pipeline import ExtractOptions

SETS = ["deepface", "facerec_ageitgey"]


@pytest.fixture(scope="module")
def extracted(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> tuple[Path, dict[str, str]]:
    """The largest face of every shared verification photo, as `facerest extract` writes it
    (JSONL), and each photo's identity."""
    shared_path("verify")
    folder = tmp_path_factory.mktemp("clustering")
    truth: dict[str, str] = {}
    images = []
    for set_name in SETS:
        root = shared_path("verify", set_name)
        with (root / "identities.csv").open() as fh:
            for row in csv.DictReader(fh):
                truth[str(root / row["img"])] = f"{set_name}/{row['identity']}"
                images.append(str(root / row["img"]))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FACEREST_MODELS_DIR", str(models_dir))
        env.setenv("FACEREST_THREADS", "2")
        result = CliRunner().invoke(app, ["extract", *images, "--out", str(folder / "all.parquet")])
    assert result.exit_code == 0, result.output
    table = pq.read_table(folder / "all.parquet").to_pylist()
    largest: dict[str, dict] = {}
    for row in table:
        x1, y1, x2, y2 = row["bbox"]
        if row["file"] not in largest or (x2 - x1) * (y2 - y1) > largest[row["file"]]["area"]:
            largest[row["file"]] = {**row, "area": (x2 - x1) * (y2 - y1)}
    assert len(largest) == len(images)
    out = folder / "faces.jsonl"
    with out.open("w") as fh:
        for row in largest.values():
            row.pop("area")
            fh.write(json.dumps(row) + "\n")
    return out, truth


def run_cli(*args: str) -> dict:
    result = CliRunner().invoke(app, ["cluster", *args])
    assert result.exit_code == 0, result.output
    out = args[args.index("--out") + 1]
    return json.loads(Path(out).read_text())


def labels_of(answer: dict, names: list[str]) -> np.ndarray:
    where = {face: k for k, c in enumerate(answer["clusters"]) for face in c["faces"]}
    return np.array([where[n] for n in names])


def test_clusters_are_the_identities(extracted, tmp_path: Path, analyzer) -> None:  # type: ignore[no-untyped-def]
    path, truth = extracted
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    names = [f"{r['file']}#{r['face']}" for r in rows]
    people = [truth[r["file"]] for r in rows]
    identities = len(set(people))
    answer = run_cli(str(path), "--out", str(tmp_path / "clusters.json"))
    labels = labels_of(answer, names)
    precision, recall, f = clustering.bcubed(labels, people)
    pair_p, pair_r = clustering.pairwise(labels, people)
    print(
        f"\n{len(names)} faces of {identities} identities -> {len(answer['clusters'])} clusters at "
        f"{answer['decision']}: BCubed P {precision:.4f} R {recall:.4f} F {f:.4f}; pairwise P {pair_p:.4f} "
        f"R {pair_r:.4f}"
    )
    assert f >= 0.95
    assert abs(len(answer["clusters"]) - identities) <= 0.1 * identities
    for c in answer["clusters"]:
        assert c["representatives"] and set(c["representatives"]) <= set(c["faces"])

    # the methods side by side on the same faces, and with 110 crowd faces (each a person of
    # their own) mixed in: a harder test of precision
    vectors = np.array([r["embedding"] for r in rows], np.float32)
    crowd = []
    for photo in (shared_path("anchor", "lumia.jpg"), package_photo("players.jpg"), package_photo("gdp.jpg")):
        crowd += [f.embedding for f in analyzer.process([read_bgr(photo)], ExtractOptions())[0].faces]
    mixed = np.concatenate([vectors, np.stack(crowd)])
    mixed_people = people + [f"crowd{i}" for i in range(len(crowd))]
    calibration = shipped("w600k_mbf")
    assert calibration is not None
    print("method   faces  identities  threshold clusters  BCubed P   R       F")
    for faces, who in ((vectors, people), (mixed, mixed_people)):
        # the CLI's default: FACEREST_SEARCH_FPIR (0.01) over the faces' number of comparisons
        threshold = calibration.threshold_for(fmr_for_fpir(0.01, len(faces) - 1))
        for method in ("average", "single", "hdbscan"):
            found = clustering.cluster(faces, threshold, method=method)  # type: ignore[arg-type]
            p, r, score = clustering.bcubed(found, who)
            count = len(set(found))
            print(
                f"{method:8} {len(faces):5}  {len(set(who)):10}  {threshold:9.4f} {count:8}  "
                f"{p:.4f}  {r:.4f}  {score:.4f}"
            )
            if method == "average":
                assert score >= 0.95
                assert abs(count - len(set(who))) <= 0.1 * len(set(who))

    # incremental on the mixed faces: half clustered, the other half assigned, in 3 random orders
    threshold = calibration.threshold_for(fmr_for_fpir(0.01, len(mixed) - 1))
    batch = clustering.cluster(mixed, threshold)
    for seed in range(3):
        order = np.random.default_rng(seed).permutation(len(mixed))
        half = len(mixed) // 2
        old = clustering.cluster(mixed[order[:half]], threshold)
        grown = np.empty(len(mixed), np.int64)
        grown[order[:half]] = old
        grown[order[half:]] = clustering.assign(mixed[order[:half]], old, mixed[order[half:]], threshold)
        agreement = clustering.bcubed(grown, [str(b) for b in batch])[2]
        score = clustering.bcubed(grown, mixed_people)[2]
        print(
            f"incremental, order {seed}: {len(set(grown))} clusters (batch {len(set(batch))}), BCubed F "
            f"{score:.4f}, agreement with batch {agreement:.4f}"
        )
        assert score >= 0.95 and agreement >= 0.95


def test_incremental_equals_batch_and_feedback_is_respected(extracted, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path, truth = extracted
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    names = [f"{r['file']}#{r['face']}" for r in rows]
    people = [truth[r["file"]] for r in rows]
    batch = labels_of(run_cli(str(path), "--out", str(tmp_path / "batch.json")), names)

    # the first half clustered, then every face: the second half joins the first half's clusters
    order = np.random.default_rng(7).permutation(len(rows))
    first = tmp_path / "first.jsonl"
    first.write_text("".join(json.dumps(rows[i]) + "\n" for i in order[: len(rows) // 2]))
    run_cli(str(first), "--out", str(tmp_path / "first.json"))
    grown = run_cli(
        str(path), "--previous", str(tmp_path / "first.json"), "--out", str(tmp_path / "grown.json")
    )
    incremental = labels_of(grown, names)
    agreement = clustering.bcubed(incremental, [str(b) for b in batch])[2]
    f_incremental = clustering.bcubed(incremental, people)[2]
    print(
        f"\nincremental (half, then the rest added): {len(set(incremental))} clusters, "
        f"BCubed F {f_incremental:.4f}; batch {len(set(batch))} clusters; "
        f"agreement with batch (BCubed F) {agreement:.4f}"
    )
    assert f_incremental >= 0.95
    assert agreement >= 0.95

    # "these two are different people": two photos of one identity are kept apart
    person = max(set(people), key=people.count)
    a, b = [n for n, p in zip(names, people, strict=True) if p == person][:2]
    assert batch[names.index(a)] == batch[names.index(b)]
    feedback = tmp_path / "feedback.json"
    feedback.write_text(json.dumps({"different": [[a, b]]}))
    apart = labels_of(
        run_cli(str(path), "--feedback", str(feedback), "--out", str(tmp_path / "apart.json")), names
    )
    assert apart[names.index(a)] != apart[names.index(b)]
    feedback.write_text(json.dumps({"different": [[a, "nobody.jpg#0"]]}))
    result = CliRunner().invoke(
        app, ["cluster", str(path), "--feedback", str(feedback), "--out", str(tmp_path / "x")]
    )
    assert result.exit_code == 1 and "nobody.jpg#0" in result.output


def test_empty_and_single_face_files(extracted, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path, _ = extracted
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert run_cli(str(empty), "--out", str(tmp_path / "e.json"))["clusters"] == []
    one = tmp_path / "one.jsonl"
    one.write_text(path.read_text().splitlines()[0] + "\n")
    answer = run_cli(str(one), "--out", str(tmp_path / "o.json"))
    assert len(answer["clusters"]) == 1 and len(answer["clusters"][0]["faces"]) == 1


def test_large_groupings_run_in_a_lower_priority_worker_with_the_same_labels() -> None:
    """Issue 28: scipy's linkage holds the GIL for its whole run, so a grouping of thousands of
    faces runs in a worker process at a lower priority; what it answers is what this process
    would have answered (constraints included)."""
    rng = np.random.default_rng(28)
    count = clustering.WORKER_FROM
    faces = rng.normal(size=(40, 512))[rng.integers(0, 40, count)] + rng.normal(size=(count, 512))
    faces = (faces / np.linalg.norm(faces, axis=1, keepdims=True)).astype(np.float32)
    links = [(0, 1), (2, 3)]
    here = clustering._linked(faces, 0.3, links, "average")
    assert len(np.unique(here)) > 1
    assert np.array_equal(clustering.cluster(faces, 0.3, links), here)
    assert not clustering._worker_failed
    worker_pid = clustering.worker().submit(os.getpid).result(timeout=60)
    assert worker_pid != os.getpid()
    assert os.getpriority(os.PRIO_PROCESS, worker_pid) > os.getpriority(os.PRIO_PROCESS, 0)
