"""`facerest extract`: rows match /extract's, errors are recorded, SIGINT then a rerun finishes cleanly."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import Server, package_photo, shared_path, start_server, stop_server
from helpers import b64


def run_extract(args: list[str], models_dir: Path, cwd: Path, **popen: object) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEREST_")}
    env.update({"FACEREST_MODELS_DIR": str(models_dir), "FACEREST_THREADS": "2", "COLUMNS": "120"})
    return subprocess.Popen(
        [sys.executable, "-m", "facerest.cli", "extract", *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,  # type: ignore[arg-type]
    )


def finish(process: subprocess.Popen, timeout: float = 600) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output
    return output


def server_faces(server: Server, files: list[Path]) -> dict[str, list[dict]]:
    """What /extract answers for each file, one request per file."""
    out = {}
    with httpx.Client(base_url=server.url, timeout=120) as client:
        for path in files:
            body = {"images": {"data": [b64(path)]}, "return_landmarks": True}
            [item] = client.post("/extract", json=body).json()["data"]
            assert item["status"] == "ok", item
            out[str(path)] = item["faces"]
    return out


def assert_rows_match(rows: list[dict], expected: dict[str, list[dict]]) -> None:
    """Same faces per file, in the same order, with the same embeddings and boxes."""
    by_file: dict[str, list[dict]] = {}
    for row in rows:
        by_file.setdefault(row["file"], []).append(row)
    for file, faces in expected.items():
        got = sorted(by_file.get(file, []), key=lambda r: r["face"])
        assert [r["face"] for r in got] == list(range(len(faces))), file
        for row, face in zip(got, faces, strict=True):
            assert float(np.dot(row["embedding"], face["vec"])) > 0.999, (file, row["face"])
            assert np.abs(np.round(row["bbox"]) - face["bbox"]).max() <= 1, (file, row["bbox"], face["bbox"])
            assert np.abs(np.array(row["landmarks"]) - np.array(face["landmarks"])).max() <= 1
            assert abs(row["score"] - face["prob"]) < 1e-3


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three package photos (one in a subfolder), a broken JPEG and a text file that is skipped."""
    folder = tmp_path_factory.mktemp("photos")
    (folder / "sub").mkdir()
    shutil.copy(package_photo("yaoming.jpg"), folder / "yaoming.jpg")
    shutil.copy(package_photo("players.jpg"), folder / "players.jpg")
    shutil.copy(package_photo("gdp.jpg"), folder / "sub" / "gdp.jpg")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (folder / "notes.txt").write_text("not an image, not walked")
    return folder


def test_local_npz_and_remote_jsonl_match_extract(
    photo_dir: Path, models_dir: Path, server: Server, tmp_path
):
    good = sorted(p for p in photo_dir.rglob("*.jpg") if p.name != "broken.jpg")
    expected = server_faces(server, good)

    output = finish(
        run_extract([str(photo_dir), "--out", "faces.npz", "--batch-size", "2"], models_dir, tmp_path)
    )
    assert "1 files failed" in output
    npz = np.load(tmp_path / "faces.npz")
    assert npz["embedding"].shape == (len(npz["file"]), 512) and npz["landmarks"].shape[1:] == (5, 2)
    rows = [
        {
            "file": str(npz["file"][i]),
            "face": int(npz["face"][i]),
            "bbox": npz["bbox"][i],
            "score": float(npz["score"][i]),
            "landmarks": npz["landmarks"][i],
            "embedding": npz["embedding"][i],
        }
        for i in range(len(npz["file"]))
    ]
    assert_rows_match(rows, expected)
    assert len(rows) == sum(len(f) for f in expected.values())
    [error] = [json.loads(line) for line in (tmp_path / "faces.npz.errors.jsonl").read_text().splitlines()]
    assert error["file"].endswith("broken.jpg") and error["error"]
    assert not (tmp_path / "faces.npz.parts").exists()

    args = [str(photo_dir / "yaoming.jpg"), str(photo_dir / "sub"), str(photo_dir / "players.jpg")]
    finish(run_extract([*args, "--out", "faces.jsonl", "--url", server.url], models_dir, tmp_path))
    remote = [json.loads(line) for line in (tmp_path / "faces.jsonl").read_text().splitlines()]
    assert_rows_match(remote, expected)
    assert not (tmp_path / "faces.jsonl.errors.jsonl").exists()

    # a finished output is not overwritten by accident
    again = run_extract([*args, "--out", "faces.jsonl"], models_dir, tmp_path)
    output, _ = again.communicate(timeout=120)
    assert again.returncode == 1 and "--overwrite" in output


def test_shared_testdata_parquet_interrupted_and_resumed(models_dir: Path, server: Server, tmp_path):
    testdata = shared_path()
    images = [p for p in sorted(testdata.rglob("*")) if p.suffix.lower() in {".jpg", ".jpeg", ".png"}]
    args = [str(testdata), "--out", "faces.parquet", "--batch-size", "4"]
    parts = tmp_path / "faces.parquet.parts"

    first = run_extract(args, models_dir, tmp_path)
    deadline = time.monotonic() + 300
    while len(list(parts.glob("part-*.parquet"))) < 2:
        assert first.poll() is None, first.communicate()[0]
        assert time.monotonic() < deadline, "no batch finished in 300 s"
        time.sleep(0.05)
    first.send_signal(signal.SIGINT)
    output, _ = first.communicate(timeout=120)
    assert first.returncode == 130, output
    assert "run the same command again" in output
    assert not (tmp_path / "faces.parquet").exists()
    kept = list(parts.glob("part-*.parquet"))
    done_before = sum(len(json.loads(pq.read_schema(p).metadata[b"files"])) for p in kept)
    assert 0 < done_before < len(images)

    output = finish(run_extract(args, models_dir, tmp_path))
    assert f"resuming: {done_before} of {len(images)} files already done" in output
    table = pq.read_table(tmp_path / "faces.parquet")
    assert table.column_names == ["file", "face", "bbox", "score", "landmarks", "embedding"]
    rows = table.to_pylist()
    keys = [(r["file"], r["face"]) for r in rows]
    assert len(keys) == len(set(keys)), "a face was written twice"
    expected = server_faces(server, images)
    assert {r["file"] for r in rows} == {f for f, faces in expected.items() if faces}
    assert len(rows) == sum(len(faces) for faces in expected.values())
    assert len(expected[str(testdata / "anchor" / "lumia.jpg")]) > 80  # the crowd photo
    assert_rows_match(rows, expected)


def test_remote_request_refused_as_a_whole_fails_only_the_culprit(
    photo_dir: Path, models_dir: Path, tmp_path: Path
):
    """A server with a 200 kB body limit: the batch is refused (413), then each file is sent alone."""
    srv = start_server(
        {"FACEREST_MODELS_DIR": str(models_dir), "FACEREST_MAX_BODY_BYTES": "200000"}, tmp_path / "server.log"
    )
    try:
        args = [str(photo_dir), "--out", "faces.jsonl", "--url", srv.url, "--batch-size", "4"]
        output = finish(run_extract(args, models_dir, tmp_path))
    finally:
        stop_server(srv)
    assert "2 files failed" in output
    rows = [json.loads(line) for line in (tmp_path / "faces.jsonl").read_text().splitlines()]
    assert {Path(r["file"]).name for r in rows} == {"yaoming.jpg", "gdp.jpg"}
    errors = [json.loads(line) for line in (tmp_path / "faces.jsonl.errors.jsonl").read_text().splitlines()]
    by_name = {Path(e["file"]).name: e["error"] for e in errors}
    assert set(by_name) == {"players.jpg", "broken.jpg"}
    assert by_name["players.jpg"].startswith("body_too_large")
