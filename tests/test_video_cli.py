"""`facerest extract` with video files: one row per track, in-process and through a server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import ROOT, Server
from video_scenes import SCENES, Cast, make_cast, serve_mjpeg

from facerest.video.synthetic import Appearance, Script, render


@pytest.fixture(scope="module")
def cast(analyzer) -> Cast:  # type: ignore[no-untyped-def]
    return make_cast(analyzer)


def _cli(args: list[str], models_dir: Path, cwd: Path, **settings: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEREST_")}
    env.update({"FACEREST_MODELS_DIR": str(models_dir), "FACEREST_THREADS": "2", "PYTHONPATH": str(ROOT)})
    env.update(settings)
    done = subprocess.run(
        [sys.executable, "-m", "facerest.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stderr


def test_extract_writes_one_row_per_track(
    cast: Cast, models_dir: Path, tmp_path: Path, server: Server
) -> None:
    script = SCENES["scene_cut"](cast)
    video = render(script, tmp_path / "cut.mp4", "mpeg4")
    out = tmp_path / "tracks.jsonl"
    log = _cli(["extract", str(video), "--out", str(out)], models_dir, tmp_path)
    assert f"{len(script.appearances)} tracks" in log, log
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == len(script.appearances)
    for row in rows:
        vec = np.asarray(row["embedding"], np.float32)
        best = max(cast.stills.values(), key=lambda still: float(vec @ still))
        assert float(vec @ best) > 0.5 and row["source"] == str(video)

    remote = tmp_path / "tracks.parquet"
    _cli(["video", str(video), "--out", str(remote), "--url", server.url], models_dir, tmp_path)
    table = pq.read_table(remote)
    assert table.num_rows == len(script.appearances)
    assert sorted(table.column("first_s").to_pylist()) == sorted(r["first_s"] for r in rows)


def test_video_reads_a_live_stream_when_enabled(cast: Cast, models_dir: Path, tmp_path: Path) -> None:
    script = Script(
        fps=10.0,
        duration_s=3.0,
        appearances=[Appearance(cast.people["yao"], 0.3, 2.2, (60, 60), (260, 90))],
        seed=9,
    )
    out = tmp_path / "live.jsonl"
    with serve_mjpeg(script, drop_s=script.duration_s) as url:
        _cli(
            ["extract", url, "--out", str(out)],  # `facerest extract` takes stream URLs too
            models_dir,
            tmp_path,
            FACEREST_VIDEO_STREAMS_ENABLED="true",
            FACEREST_VIDEO_DEFAULT_FPS="5",
            FACEREST_VIDEO_STREAM_ALLOWLIST="127.0.0.1",
        )
    [row] = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["source"] == url and row["last_s"] - row["first_s"] > 1.0
    assert float(np.asarray(row["embedding"], np.float32) @ cast.stills["yao"]) > 0.5
