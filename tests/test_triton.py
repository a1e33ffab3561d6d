"""Triton: the exported model repository, and the Triton runtime against a real tritonserver.

The server is the tritonserver bundled in nvidia-pytriton (Python backend only), serving the
exported repository with deploy/triton/pytriton_onnx.py. pytriton pins numpy<2, so it lives in
its own environment, `.venv-triton` (`make triton-env`); the tests skip with that hint without it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from conftest import ROOT, free_port, package_photo

from facerest.config import Settings
from facerest.errors import BackendUnavailable

pytest.importorskip("tritonclient.grpc", reason="the Triton client is not installed (facerest[triton])")

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from facerest.preparation import prepare_models
from facerest.runtime.triton import TritonSession, parse_uri
from facerest.tools.triton_export import export_repository

TRITON_PYTHON = Path(os.environ.get("FACEREST_TEST_TRITON_PYTHON", ROOT / ".venv-triton" / "bin" / "python"))


def test_uri_parsing() -> None:
    assert parse_uri("grpc://triton:8001") == ("grpc", "triton:8001")
    assert parse_uri("http://10.0.0.5") == ("http", "10.0.0.5:8000")
    assert parse_uri("localhost:9001") == ("grpc", "localhost:9001")
    with pytest.raises(BackendUnavailable, match="grpc://host:port"):
        parse_uri("ftp://x:1")


@pytest.fixture(scope="module")
def repository(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("triton") / "repo"
    settings = Settings(models_dir=models_dir, rec_batch_size=16, det_batch_size=2)
    export_repository(directory, settings, prepare_models(settings))
    return directory


def _config(repository: Path, name: str):  # type: ignore[no-untyped-def]
    text = (repository / name / "config.pbtxt").read_text()
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_export_writes_a_repository_triton_parses(repository: Path) -> None:
    assert sorted(p.name for p in repository.iterdir()) == [
        "age_gender_dlib",
        "age_gender_dlib_1",
        "scrfd_500m_bnkps",
        "w600k_mbf",
    ]
    rec = _config(repository, "w600k_mbf")
    assert rec.platform == "onnxruntime_onnx"
    assert rec.max_batch_size == 16
    assert list(rec.input[0].dims) == [3, 112, 112]
    assert list(rec.output[0].dims) == [512]
    assert rec.HasField("dynamic_batching")
    assert rec.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    det = _config(repository, "scrfd_500m_bnkps")
    assert det.max_batch_size == 2
    assert list(det.input[0].dims) == [3, -1, -1]
    assert [o.name for o in det.output][:3] == ["score_8", "score_16", "score_32"]
    # the recognizer declares an output batch of 1; the exported copy must say "any batch"
    import onnx

    model = onnx.load(str(repository / "w600k_mbf" / "1" / "model.onnx"))
    assert model.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_export_instance_groups_follow_the_gpus(models_dir: Path, tmp_path: Path) -> None:
    settings = Settings(models_dir=models_dir, gpus="0,1", triton_instances=2, ga_name="")
    export_repository(tmp_path, settings, prepare_models(settings))
    group = _config(tmp_path, "w600k_mbf").instance_group[0]
    assert group.kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert list(group.gpus) == [0, 1]
    assert group.count == 2


@dataclass
class TritonServer:
    grpc: str
    http: str
    process: subprocess.Popen
    log_path: Path


@pytest.fixture(scope="module")
def triton(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    if not TRITON_PYTHON.is_file():
        pytest.skip(f"{TRITON_PYTHON} is absent: run `make triton-env` (nvidia-pytriton in its own venv)")
    grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
    folder = tmp_path_factory.mktemp("tritonserver")
    env = dict(os.environ)
    # the bundled Python backend stub links against libpython of the interpreter that runs it
    env["LD_LIBRARY_PATH"] = ":".join(
        p for p in (sysconfig.get_config_var("LIBDIR"), env.get("LD_LIBRARY_PATH")) if p
    )
    log_path = folder / "triton.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                str(TRITON_PYTHON),
                str(ROOT / "deploy" / "triton" / "pytriton_onnx.py"),
                str(repository),
                f"--grpc-port={grpc_port}",
                f"--http-port={http_port}",
                f"--metrics-port={metrics_port}",
                f"--workspace={folder / 'workspace'}",  # must not exist yet
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = TritonServer(f"grpc://127.0.0.1:{grpc_port}", f"http://127.0.0.1:{http_port}", process, log_path)
    deadline = time.monotonic() + 120
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"tritonserver exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                models_ready = [
                    httpx.get(f"{server.http}/v2/models/{name}/ready", timeout=2).status_code == 200
                    for name in ("scrfd_500m_bnkps", "w600k_mbf", "age_gender_dlib", "age_gender_dlib_1")
                ]
                if all(models_ready):
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"tritonserver not ready in 120 s:\n{log_path.read_text()}")
            time.sleep(0.5)
        yield server
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_triton_runtime_gives_the_in_process_answers(
    protocol: str, triton: TritonServer, settings: Settings, analyzer
) -> None:  # type: ignore[no-untyped-def]
    from facerest.pipeline import ExtractOptions, FaceAnalyzer
    from facerest.preparation import load_models

    uri = triton.grpc if protocol == "grpc" else triton.http
    remote_settings = settings.model_copy(update={"runtime": "triton", "triton_uri": uri})
    remote = FaceAnalyzer(load_models(remote_settings), remote_settings)
    try:
        assert all(b.startswith(f"triton:{protocol}://") for b in remote.models.backends.values())
        images = [cv2.imread(str(package_photo(name))) for name in ("players.jpg", "yaoming.jpg")]
        options = ExtractOptions(extract_ga=True)
        local_results = analyzer.process(images, options)
        remote_results = remote.process(images, options)
    finally:
        remote.close()
    for local, there in zip(local_results, remote_results, strict=True):
        assert there.ok and len(there.faces) == len(local.faces) > 0
        for a, b in zip(local.faces, there.faces, strict=True):
            np.testing.assert_allclose(a.bbox, b.bbox, atol=0.5)
            assert float(a.embedding @ b.embedding) >= 0.999
            assert (a.gender, a.age) == (b.gender, b.age)


def test_a_model_triton_does_not_serve_is_a_clear_error(triton: TritonServer, settings: Settings) -> None:
    remote_settings = settings.model_copy(update={"runtime": "triton", "triton_uri": triton.grpc})
    with pytest.raises(BackendUnavailable, match="facerest triton export"):
        TritonSession("no_such_model", remote_settings, wait_ready_s=0.5)


def test_a_failed_triton_call_is_a_503_error(triton: TritonServer, settings: Settings) -> None:
    from facerest.errors import InferenceBackendError

    remote_settings = settings.model_copy(update={"runtime": "triton", "triton_uri": triton.http})
    session = TritonSession("w600k_mbf", remote_settings)
    with pytest.raises(InferenceBackendError, match="w600k_mbf") as failure:
        session.run({"not_an_input": np.zeros((1, 3, 112, 112), np.float32)})
    assert failure.value.status_code == 503
    # a batch above the model's max_batch_size (16 in this export) goes in slices
    out = session.run({"input.1": np.zeros((40, 3, 112, 112), np.float32)})
    assert out["516"].shape == (40, 512)
    session.close()
