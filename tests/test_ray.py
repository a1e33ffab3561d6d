"""Ray Serve: `facerest ray serve` with 2 replicas on 127.0.0.1 answers /extract from both."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from conftest import free_port, package_photo
from helpers import b64, vectors

from facerest.config import Settings
from facerest.pipeline import ExtractOptions

pytest.importorskip("ray.serve", reason="Ray Serve is not installed (facerest[ray])")

from facerest.serving.ray_serve import autoscaling


def test_autoscaling_settings() -> None:
    assert autoscaling(Settings(ray_replicas=2)) is None
    config = autoscaling(Settings(ray_replicas=1, ray_max_replicas=4, ray_target_requests=3))
    assert config == {
        "min_replicas": 1,
        "initial_replicas": 1,
        "max_replicas": 4,
        "target_ongoing_requests": 3,
    }


@pytest.mark.slow
def test_two_replicas_answer_extract(models_dir: Path, tmp_path: Path, analyzer) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEREST_")}
    env.update(
        {
            "FACEREST_HOST": "127.0.0.1",
            "FACEREST_PORT": str(port),
            "FACEREST_MODELS_DIR": str(models_dir),
            "FACEREST_GA_NAME": "",
            "RAY_USAGE_STATS_ENABLED": "0",
        }
    )
    log_path = tmp_path / "ray.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "facerest.cli", "ray", "serve", "--replicas", "2"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ray's own processes join this group: one signal reaches all
        )
    url = f"http://127.0.0.1:{port}"
    photo = package_photo("yaoming.jpg")
    body = {"images": {"data": [b64(photo)]}}
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                pytest.fail(f"`facerest ray serve` exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"Ray Serve did not answer in 180 s:\n{log_path.read_text()[-5000:]}")
            time.sleep(1)

        expected = analyzer.process([cv2.imread(str(photo))], ExtractOptions())
        reference = expected[0].faces[0].embedding
        replicas: dict[str, int] = {}
        with httpx.Client(base_url=url, timeout=60) as client:
            for _ in range(30):  # Ray picks replicas at random among the least busy: both show soon
                reply = client.post("/extract", json=body)
                assert reply.status_code == 200, reply.text
                faces = reply.json()["data"][0]["faces"]
                assert len(faces) == 1
                assert float(vectors(faces)[0] @ reference) >= 0.999
                np.testing.assert_allclose(faces[0]["bbox"], expected[0].faces[0].bbox, atol=1)
                replica = reply.headers["x-facerest-replica"]
                replicas[replica] = replicas.get(replica, 0) + 1
                if len(replicas) == 2 and min(replicas.values()) >= 2:
                    break
        assert len(replicas) == 2, f"answers came from {replicas}"
    finally:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(60)
        with contextlib.suppress(ProcessLookupError):  # whatever Ray left in the session this test started
            os.killpg(process.pid, signal.SIGKILL)
