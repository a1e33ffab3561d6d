"""URL fetching against real HTTP(S) servers on 127.0.0.1: what is refused, what is stopped.

Every server here is a thread of this process listening on loopback; nothing leaves the machine.
"""

from __future__ import annotations

import http.server
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import package_photo
from helpers import b64

from facerest.config import Settings
from facerest.errors import BadInput, ImageTooLarge, UrlFetchFailed, UrlRefused
from facerest.imaging.loader import load_images
from facerest.imaging.sources import FetchPolicy, fetch_url, load_source, read_local, resolve_url

YAO = package_photo("yaoming.jpg").read_bytes()


class _Handler(http.server.BaseHTTPRequestHandler):
    """Routes: /yao.jpg, /big (declared), /endless (undeclared), /drip, /stall, /redirect?to=URL,
    /flaky (503 on odd calls), /host (echoes the Host and Authorization headers)."""

    protocol_version = "HTTP/1.1"
    calls: dict[str, int]

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass

    def _send(self, body: bytes, status: int = 200, **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        self.calls[path] = self.calls.get(path, 0) + 1
        try:
            if path == "/yao.jpg":
                self._send(YAO, Content_Type="image/jpeg")
            elif path == "/host":
                echo = f"{self.headers.get('Host', '')}|{self.headers.get('Authorization', '')}"
                self._send(echo.encode())
            elif path == "/redirect":
                self._send(b"", 302, Location=query.removeprefix("to="))
            elif path == "/flaky":
                if self.calls[path] % 2:
                    self._send(b"busy", 503)
                else:
                    self._send(YAO)
            elif path == "/big":
                self.send_response(200)
                self.send_header("Content-Length", str(10**9))
                self.end_headers()
                self.wfile.write(b"\xff" * 65536)
            elif path == "/endless":  # no length declared: only counting the bytes stops it
                self.send_response(200)
                self.send_header("Connection", "close")
                self.end_headers()
                for _ in range(2000):
                    self.wfile.write(b"\xff" * 65536)
            elif path == "/drip":  # a byte every 50 ms: no read ever times out
                self.send_response(200)
                self.send_header("Content-Length", "100000")
                self.end_headers()
                for _ in range(100000):
                    self.wfile.write(b"\xff")
                    self.wfile.flush()
                    time.sleep(0.05)
            elif path == "/pause":  # a byte, a pause just short of the limit, a byte, a long pause
                self.send_response(200)
                self.send_header("Content-Length", "100000")
                self.end_headers()
                for pause in (0.8, 30):
                    self.wfile.write(b"\xff")
                    self.wfile.flush()
                    time.sleep(pause)
            elif path == "/stall":
                time.sleep(30)
            else:
                self._send(b"no", 404)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up, as it should


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


def serve_loopback(tls: ssl.SSLContext | None = None) -> Iterator[tuple[str, dict[str, int]]]:
    handler = type("Handler", (_Handler,), {"calls": {}})
    server = _Server(("127.0.0.1", 0), handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    yield f"{'https' if tls else 'http'}://127.0.0.1:{port}", handler.calls
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def origin() -> Iterator[tuple[str, dict[str, int]]]:
    yield from serve_loopback()


def policy(**overrides: object) -> FetchPolicy:
    values: dict[str, object] = {"max_bytes": 2_000_000, "timeout_s": 3.0, "allowlist": ("127.0.0.1",)}
    values.update(overrides)
    return FetchPolicy(**values)  # type: ignore[arg-type]


def test_loopback_refused_by_default(origin):
    url, calls = origin
    before = calls.get("/yao.jpg", 0)
    with pytest.raises(UrlRefused, match="non-public"):
        fetch_url(f"{url}/yao.jpg", policy(allowlist=()))
    assert calls.get("/yao.jpg", 0) == before  # refused before any connection


@pytest.mark.parametrize("allow", ["127.0.0.1", "127.0.0.0/8", "localhost"])
def test_loopback_allowed_when_allowlisted(origin, allow):
    url, _ = origin
    target = f"{url}/yao.jpg" if allow != "localhost" else f"{url.replace('127.0.0.1', 'localhost')}/yao.jpg"
    if allow == "localhost" and not _resolves_to_loopback_only("localhost"):
        pytest.skip("localhost does not resolve to 127.0.0.1 only on this machine")
    assert fetch_url(target, policy(allowlist=(allow,))) == YAO


def _resolves_to_loopback_only(name: str) -> bool:
    try:
        return {i[4][0] for i in socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)} == {"127.0.0.1"}
    except socket.gaierror:
        return False


@pytest.mark.parametrize(
    "url",
    [
        "http://10.1.2.3/x.jpg",
        "http://192.168.0.1/x.jpg",
        "http://169.254.169.254/latest/meta-data/",
        "http://metadata.google.internal/",
        "http://[::1]/x.jpg",
        "http://[::ffff:127.0.0.1]/x.jpg",
        "http://0.0.0.0/x.jpg",
        "http://100.64.0.1/x.jpg",
        "ftp://example.com/x.jpg",
        "gopher://127.0.0.1:70/",
        "http:///nohost",
        "http://127.0.0.1:99999/",
    ],
)
def test_special_addresses_and_schemes_refused(url):
    with pytest.raises(UrlRefused):
        resolve_url(url, policy(allowlist=()))


@pytest.mark.parametrize(
    "url",
    [
        "http://[::1",
        "http://127.0.0.1/\x00x",
        "http://127.0.0.1:9/" + "a" * 70000,
        "http://a\udc80/",
        "https://127.0.0.1:9\\@10.0.0.1/",
        "http://0x7f.1/",
        "http://2130706433/",
        "\x00",
        "//127.0.0.1/x",
    ],
)
def test_malformed_urls_fail_as_bad_input(url):
    """Odd spellings and broken URLs end in a refusal or a fetch failure, never another exception
    (which the service would answer with a 500), and never reach loopback without the allowlist."""
    with pytest.raises((UrlRefused, UrlFetchFailed)):
        load_source(url, policy(allowlist=(), timeout_s=1.0))


def test_metadata_address_refused_even_when_private_ranges_allowed():
    with pytest.raises(UrlRefused, match="metadata"):
        resolve_url("http://169.254.169.254/", policy(allowlist=("169.254.0.0/16",)))


def test_redirect_to_a_refused_address_is_refused(origin):
    url, calls = origin
    # allowlisted origin -> a private address that is not allowlisted
    with pytest.raises(UrlRefused, match="non-public"):
        fetch_url(f"{url}/redirect?to=http://10.0.0.1/secret", policy())
    # allowlisted origin -> cloud metadata
    with pytest.raises(UrlRefused, match="metadata"):
        fetch_url(f"{url}/redirect?to=http://169.254.169.254/latest/", policy())
    # allowlisted origin -> loopback on another port is fine only because 127.0.0.1 is allowlisted
    assert fetch_url(f"{url}/redirect?to={url}/yao.jpg", policy()) == YAO
    # and a relative redirect is resolved against the URL that sent it
    assert fetch_url(f"{url}/redirect?to=/yao.jpg", policy()) == YAO
    assert calls["/redirect"] >= 4


def test_redirect_chain_is_bounded(origin):
    url, _ = origin
    loop = f"{url}/redirect?to=/redirect?to=/redirect?to=/yao.jpg"
    with pytest.raises(UrlFetchFailed, match="redirected more than"):
        fetch_url(loop, policy(max_redirects=1))
    assert fetch_url(loop, policy(max_redirects=3)) == YAO


def test_oversized_image_stopped(origin):
    url, _ = origin
    with pytest.raises(ImageTooLarge, match="1000000000 bytes"):  # declared length: refused at once
        fetch_url(f"{url}/big", policy())
    started = time.monotonic()
    with pytest.raises(ImageTooLarge):  # undeclared: stopped after max_bytes, not 131 MB later
        fetch_url(f"{url}/endless", policy(max_bytes=1_000_000))
    assert time.monotonic() - started < 3


def test_slow_drip_stopped_by_the_total_deadline(origin):
    url, _ = origin
    started = time.monotonic()
    with pytest.raises(UrlFetchFailed, match=r"within 1\.0 s"):
        fetch_url(f"{url}/drip", policy(timeout_s=1.0))
    elapsed = time.monotonic() - started
    assert 0.9 < elapsed < 2.0, elapsed


@pytest.mark.parametrize("tls", [False, True])
def test_pause_late_in_the_body_stopped_at_the_deadline(origin, tls_origin, tls):
    """Without a deadline of its own, the read after the 0.8 s byte would wait a whole read
    timeout more; the connection is cut when the 1 s are spent instead."""
    if tls:
        url, trusting = tls_origin
        fetch = policy(timeout_s=1.0, tls_verify=trusting, allowlist=("127.0.0.1",), retries=0)
        url = url.replace("127.0.0.1", "localhost")
    else:
        url, fetch = origin[0], policy(timeout_s=1.0)
    started = time.monotonic()
    with pytest.raises(UrlFetchFailed, match=r"within 1\.0 s"):
        fetch_url(f"{url}/pause", fetch)
    assert time.monotonic() - started < 1.5


def test_stalled_server_stopped(origin):
    url, _ = origin
    started = time.monotonic()
    with pytest.raises(UrlFetchFailed):
        fetch_url(f"{url}/stall", policy(timeout_s=1.0, retries=3))
    assert time.monotonic() - started < 2.0  # retries share the one deadline


def test_retries_are_bounded(origin):
    url, calls = origin
    calls.pop("/flaky", None)
    assert fetch_url(f"{url}/flaky", policy(retries=1)) == YAO  # 503, then 200
    assert calls["/flaky"] == 2
    with pytest.raises(UrlFetchFailed, match="503"):
        fetch_url(f"{url}/flaky", policy(retries=0))  # call 3: 503, no second try
    assert calls["/flaky"] == 3


def test_name_resolved_once_and_host_header_kept(origin, monkeypatch):
    """The connection goes to the address that was checked: the name is never resolved again."""
    if not _resolves_to_loopback_only("localhost"):
        pytest.skip("localhost does not resolve to 127.0.0.1 only on this machine")
    url, _ = origin
    real = socket.getaddrinfo
    names: list[str] = []

    def counting(host, *args, **kwargs):  # type: ignore[no-untyped-def]
        names.append(host if isinstance(host, str) else host.decode())
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", counting)
    named = url.replace("127.0.0.1", "localhost")
    echoed = fetch_url(f"{named}/host", policy(allowlist=("127.0.0.0/8",))).decode()
    assert echoed == named.split("//")[1] + "|"
    assert names.count("localhost") == 1, names


def test_client_headers_do_not_follow_a_redirect_to_another_origin(origin):
    url, _ = origin
    other = url.replace("127.0.0.1", "localhost")
    if not _resolves_to_loopback_only("localhost"):
        pytest.skip("localhost does not resolve to 127.0.0.1 only on this machine")
    headers = {"Authorization": "secret", "Host": "evil.example"}
    # same origin: the Host the client tried to set is ignored, its Authorization is sent
    assert fetch_url(f"{url}/host", policy(), headers).decode() == url.split("//")[1] + "|secret"
    # another origin (a different host name): the credentials stay behind
    moved = fetch_url(f"{url}/redirect?to={other}/host", policy(allowlist=("127.0.0.0/8",)), headers)
    assert moved.decode() == other.split("//")[1] + "|"


@pytest.mark.parametrize(
    "headers",
    [
        {"X-A": "é"},
        {"X-A": "b\r\nX-Injected: y"},
        {"a b": "c"},
        {"": "x"},
        {"X-A": "\x00"},
        {"X": "y" * 9000},
        {f"X-{n}": "v" for n in range(40)},
    ],
)
def test_bad_client_headers_are_bad_input(origin, headers):
    url, calls = origin
    before = calls.get("/yao.jpg", 0)
    with pytest.raises(BadInput, match="img_req_headers"):
        fetch_url(f"{url}/yao.jpg", policy(), headers)
    assert calls.get("/yao.jpg", 0) == before


@pytest.fixture(scope="module")
def tls_origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, ssl.SSLContext]]:
    """An HTTPS server whose self-signed certificate names `localhost` only (no IP address)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    trusting = ssl.create_default_context(cafile=str(cert))
    for url, _ in serve_loopback(server_ctx):
        yield url, trusting


def test_tls_verified_against_the_name_while_connecting_to_the_checked_address(tls_origin):
    if not _resolves_to_loopback_only("localhost"):
        pytest.skip("localhost does not resolve to 127.0.0.1 only on this machine")
    url, trusting = tls_origin
    named = url.replace("127.0.0.1", "localhost")
    # SNI and the certificate check use "localhost" although the socket goes to 127.0.0.1
    assert fetch_url(f"{named}/yao.jpg", policy(allowlist=("127.0.0.1",), tls_verify=trusting)) == YAO
    # by IP the certificate does not match: verification is really on
    with pytest.raises(UrlFetchFailed):
        fetch_url(f"{url}/yao.jpg", policy(tls_verify=trusting, retries=0))
    # and a certificate nobody vouches for is refused with the default (system) trust
    with pytest.raises(UrlFetchFailed):
        fetch_url(f"{named}/yao.jpg", policy(allowlist=("127.0.0.1",), retries=0))


def test_all_downloads_of_a_request_share_its_time_limit(origin):
    url, _ = origin
    settings = Settings(request_timeout_s=1.5, url_timeout_s=10, url_allowlist=["127.0.0.1"])
    started = time.monotonic()
    loaded = load_images(None, [f"{url}/drip"] * 24 + [f"{url}/yao.jpg"], settings)
    elapsed = time.monotonic() - started
    assert elapsed < 5, elapsed  # not 3 rounds of 8 downloads x 10 s
    assert all(isinstance(item, UrlFetchFailed) for item in loaded[:24])
    assert isinstance(loaded[24], UrlFetchFailed)  # its turn came after the time was spent


# --- local files ---


@pytest.fixture
def local_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "yao.jpg").write_bytes(YAO)
    (tmp_path / "outside.jpg").write_bytes(YAO)
    (root / "link.jpg").symlink_to(tmp_path / "outside.jpg")
    (root / "inner_link.jpg").symlink_to(root / "sub" / "yao.jpg")
    return root


def test_local_paths_refused_without_a_root(local_root):
    for source in ("sub/yao.jpg", str(local_root / "sub" / "yao.jpg"), "file:///etc/passwd"):
        with pytest.raises(UrlRefused, match="FACEREST_LOCAL_FILES_ROOT"):
            load_source(source, policy())


def test_local_paths_confined_to_the_root(local_root):
    confined = policy(local_root=local_root)
    assert load_source("sub/yao.jpg", confined) == YAO
    assert load_source("/sub/yao.jpg", confined) == YAO  # absolute paths are taken inside the root
    assert load_source("file:///sub/yao.jpg", confined) == YAO
    assert load_source("inner_link.jpg", confined) == YAO  # a link that stays inside is fine
    for escape in ("../outside.jpg", "sub/../../outside.jpg", "link.jpg", "file://../outside.jpg"):
        with pytest.raises(UrlRefused, match="escapes"):
            read_local(escape, confined)
    with pytest.raises(ImageTooLarge):
        read_local("sub/yao.jpg", policy(local_root=local_root, max_bytes=1000))


# --- end to end through the service ---


def test_service_refuses_loopback_urls_by_default(client, origin):
    url, _ = origin
    answer = client.post(
        "/extract", json={"images": {"urls": [f"{url}/yao.jpg", "file:///etc/passwd"], "data": [b64(YAO)]}}
    ).json()
    statuses = [(d["status"], d.get("code")) for d in answer["data"]]
    assert statuses == [("ok", None), ("failed", "url_refused"), ("failed", "url_refused")]
    assert "127.0.0.1" in answer["data"][1]["traceback"]
