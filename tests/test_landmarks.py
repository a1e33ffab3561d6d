"""2d106det dense landmarks: asked by `return_dense_landmarks` or `return_landmarks: 106`."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import Server, package_photo, start_server, stop_server

#: the 106-point markup's points nearest SCRFD's five: pupils, nose tip, mouth corners
DENSE_FOR_FIVE = [38, 88, 86, 52, 61]


@pytest.fixture(scope="module")
def dense_server(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log_dir = tmp_path_factory.mktemp("dense")
    server = start_server(
        {"FACEREST_MODELS_DIR": str(models_dir), "FACEREST_LANDMARKS_NAME": "2d106det"},
        log_dir / "server.log",
    )
    yield server
    stop_server(server)
    assert "Traceback" not in server.log(), server.log()


def extract(server: Server, photo: str, **flags: object) -> list[dict]:
    data = base64.b64encode(package_photo(photo).read_bytes()).decode()
    with server.client() as client:
        response = client.post(
            "/extract", json={"images": {"data": [data]}, "extract_embedding": False, **flags}
        )
    assert response.status_code == 200, response.text
    return response.json()["data"][0]["faces"]


@pytest.mark.parametrize("photo", ["yaoming.jpg", "players.jpg"])
def test_106_points_line_up_with_the_5_points(dense_server: Server, photo: str) -> None:
    # both models are unreliable on faces of ~20 px (one in the back of players.jpg): skip those
    faces = [
        f for f in extract(dense_server, photo, return_landmarks=106) if f["bbox"][2] - f["bbox"][0] >= 40
    ]
    assert len(faces) >= (1 if photo == "yaoming.jpg" else 10)
    for face in faces:
        five = np.asarray(face["landmarks"], float)
        dense = np.asarray(face["landmarks106"], float)
        assert five.shape == (5, 2) and dense.shape == (106, 2)
        width = face["bbox"][2] - face["bbox"][0]
        gaps = np.linalg.norm(dense[DENSE_FOR_FIVE] - five, axis=1)
        # eyes and nose within 4 px (or 5% of the face width), the mouth corners, which the two
        # markups place a little differently, within 5 px (or 6%); the 5 points come rounded
        limits = [max(4.0, 0.05 * width)] * 3 + [max(5.0, 0.06 * width)] * 2
        assert np.all(gaps <= limits), (photo, width, gaps.round(1))
        x1, x2 = face["bbox"][0], face["bbox"][2]
        inside = (dense[:, 0] > x1 - 0.2 * width) & (dense[:, 0] < x2 + 0.2 * width)
        assert inside.mean() > 0.95


def test_dense_flag_alone_and_five_points_alone(dense_server: Server) -> None:
    dense_only = extract(dense_server, "yaoming.jpg", return_dense_landmarks=True)[0]
    # InsightFace-REST's face fields: `landmarks` is there, null, when not asked for
    assert "landmarks106" in dense_only and dense_only["landmarks"] is None
    five_only = extract(dense_server, "yaoming.jpg", return_landmarks=True)[0]
    assert "landmarks" in five_only and "landmarks106" not in five_only
    also_five = extract(dense_server, "yaoming.jpg", return_landmarks=5)[0]
    assert "landmarks" in also_five and "landmarks106" not in also_five


def test_other_point_counts_are_refused(dense_server: Server) -> None:
    with dense_server.client() as client:
        response = client.post("/extract", json={"images": {"data": []}, "return_landmarks": 68})
    assert response.status_code in (400, 422) and "return_landmarks" in response.text
