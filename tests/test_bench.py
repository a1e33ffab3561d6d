"""`facerest bench` prints its table (a tiny run against the session's server, a few seconds)."""

from __future__ import annotations

import asyncio

import pytest
import typer
from conftest import package_photo
from typer.testing import CliRunner

from facerest.cli import app
from facerest.cli.bench import check_loopback, extract_body, run_load


def test_bench_prints_the_table(server, models_dir):
    photo = package_photo("yaoming.jpg")
    args = ["bench", "--url", server.url, "--label", "ours", "--image", str(photo), "--requests", "2"]
    args += [
        "--clients",
        "1",
        "--clients",
        "2",
        "--warmup",
        "0",
        "--seconds",
        "20",
        "--model-iterations",
        "1",
    ]
    result = CliRunner().invoke(
        app, args, env={"FACEREST_MODELS_DIR": str(models_dir), "FACEREST_THREADS": "2"}
    )
    print(result.output)
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if line.startswith("| ours | yaoming.jpg")]
    assert len(rows) == 4  # embeddings on/off x 1 and 2 clients
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        requests, failed, images_per_s, faces_per_s = (
            int(cells[4]),
            int(cells[5]),
            float(cells[6]),
            float(cells[7]),
        )
        assert requests >= 2 and failed == 0
        assert images_per_s > 0 and faces_per_s == pytest.approx(images_per_s, rel=0.01)  # one face each
    assert any(
        line.startswith("| w600k_mbf |") and "| 112x112 | 8 |" in line for line in result.output.splitlines()
    )
    assert "% of fp32 peak" in result.output


def test_load_client_counts_faces_and_failures(server):
    body = extract_body(package_photo("players.jpg").read_bytes(), embeddings=False)
    good = asyncio.run(run_load(f"{server.url}/extract", body, clients=2, requests=3, max_seconds=30))
    assert good.requests == 3 and good.failures == 0
    assert good.faces / good.requests >= 5  # a team photo
    bad = asyncio.run(run_load(f"{server.url}/extract", b"{not json", clients=1, requests=2, max_seconds=30))
    assert bad.failures == 2 and bad.images_per_s == 0


def test_load_client_stays_on_this_machine():
    check_loopback("http://127.0.0.1:1/extract")
    check_loopback("http://localhost:1/extract")
    with pytest.raises(typer.BadParameter):
        check_loopback("http://192.0.2.1:18081/extract")
