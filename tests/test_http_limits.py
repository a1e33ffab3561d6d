"""HTTP limits on a real socket (issue 14, findings 4, 5, 7, 8, 9, 12): head and URL size, read
timeouts, the connection cap, pipelining, log lines, msgpack keys and names, against a real server
with an API key, the defaults for sizes and short timeouts (so the module stays quick)."""

from __future__ import annotations

import re
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import numpy as np
import orjson
import pytest
from conftest import Server, package_photo, start_server, stop_server
from helpers import b64

KEY = "http-limits-key-0123456789"
HEADER_TIMEOUT_S = 2.0
BODY_TIMEOUT_S = 2.0
KEEP_ALIVE_S = 1.0
MAX_CONNECTIONS = 12
HEAD_LIMIT = 16_384  # the defaults of FACEREST_MAX_HEADER_BYTES and _MAX_REQUEST_LINE_BYTES
LINE_LIMIT = 8_192
# how long past a timeout the server may take to act on it (a shared, busy machine)
SLACK_S = 5.0


@pytest.fixture(scope="module")
def guarded(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log_dir = tmp_path_factory.mktemp("http_limits")
    env = {
        "FACEREST_MODELS_DIR": str(models_dir),
        "FACEREST_DATA_DIR": str(log_dir / "data"),
        "FACEREST_API_KEYS": KEY,
        "FACEREST_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
        "FACEREST_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
        "FACEREST_KEEP_ALIVE_TIMEOUT_S": str(KEEP_ALIVE_S),
        "FACEREST_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
    }
    server = start_server(env, log_dir / "server.log")
    yield server
    stop_server(server)
    assert "Traceback" not in server.log(), server.log()[-5000:]


def address(server: Server) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


def connect(server: Server, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(address(server), timeout=timeout)


def read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, bool]:
    """Everything the server sends until it closes (True) or `timeout` passes (False)."""
    sock.settimeout(timeout)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except TimeoutError:
        return received, False
    except ConnectionResetError:
        pass
    return received, True


def statuses(raw: bytes) -> list[int]:
    return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", raw)]


def exchange(server: Server, data: bytes, *, half_close: bool = False, timeout: float = 20.0) -> bytes:
    with connect(server) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        return read_until_closed(sock, timeout)[0]


def request(method: str, target: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body or method in ("POST", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


HEALTH = request("GET", "/health", headers={"Connection": "close"})


def stream_until_answered(sock: socket.socket, start: bytes, filler: bytes, most: int) -> int:
    """Send `start`, then `filler` until the server answers or `most` bytes went; bytes sent."""
    sock.sendall(start)
    sent = len(start)
    while sent < most:
        try:
            sock.sendall(filler)
        except (BrokenPipeError, ConnectionResetError):
            break
        sent += len(filler)
        if select.select([sock], [], [], 0.05)[0]:
            break
    return sent


# --- finding 4: head and request line size ---


def test_a_head_growing_past_the_limit_is_431_before_the_key_check(guarded):
    with connect(guarded) as sock:
        sent = stream_until_answered(
            sock, b"GET /info HTTP/1.1\r\nHost: x\r\nX-Big: ", b"a" * 65536, most=4 << 20
        )
        answer, closed = read_until_closed(sock, 10)
    assert statuses(answer) == [431], answer[:300]
    assert b'"headers_too_large"' in answer and closed
    # answered after the first read past 16 KiB, not after megabytes (64 MiB were read, then 200)
    assert sent <= 1 << 20, sent
    assert statuses(exchange(guarded, HEALTH)) == [200]  # the server is as it was


def test_a_whole_head_over_the_limit_in_one_write_is_431(guarded):
    # h11 bounds a head only while it is incomplete: this one arrives complete in one read
    head = request("GET", "/info", headers={"X-Big": "b" * (HEAD_LIMIT + 1000), "Connection": "close"})
    answer = exchange(guarded, head)
    assert statuses(answer) == [431], answer[:300]


def test_a_request_line_past_the_limit_is_414(guarded):
    with connect(guarded) as sock:
        sent = stream_until_answered(sock, b"GET /health?q=", b"c" * 65536, most=4 << 20)
        answer, closed = read_until_closed(sock, 10)
    assert statuses(answer) == [414], answer[:300]
    assert closed and sent <= 1 << 20
    # a target over 8 KiB in a head that fits 16 KiB
    answer = exchange(
        guarded, request("GET", "/health?q=" + "d" * LINE_LIMIT, headers={"Connection": "close"})
    )
    assert statuses(answer) == [414], answer[:300]
    assert b'"uri_too_long"' in answer


def test_heads_within_the_limits_are_served(guarded):
    head = request(
        "GET", "/health?q=" + "e" * (LINE_LIMIT - 200), headers={"X-Pad": "f" * 6000, "Connection": "close"}
    )
    assert statuses(exchange(guarded, head)) == [200]


def test_a_body_left_unread_by_an_early_answer_ends_the_connection(guarded):
    # no key, and a body declared at 10 GB: 401 at once; the server does not read the rest
    head = request("POST", "/extract", headers={"Content-Type": "application/json"})
    head = head.replace(b"Content-Length: 0", b"Content-Length: 10000000000")
    with connect(guarded) as sock:
        stream_until_answered(sock, head, b"x" * 65536, most=16 << 20)
        sent, started = 0, time.monotonic()
        while sent < 256 << 20 and time.monotonic() - started < 20:
            try:
                sock.sendall(b"x" * 65536)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += 65536
        answer, _ = read_until_closed(sock, 5)
    assert sent < 64 << 20, f"the server read {sent >> 20} MiB of a body nobody wanted"
    assert statuses(answer)[:1] == [401], answer[:300]


# --- finding 5: timeouts and the connection cap ---


def test_a_connection_that_sends_nothing_is_closed(guarded):
    with connect(guarded) as sock:
        started = time.monotonic()
        answer, closed = read_until_closed(sock, HEADER_TIMEOUT_S + SLACK_S)
    assert closed, f"still open after {time.monotonic() - started:.1f} s"
    assert answer == b""


def test_a_half_sent_head_is_answered_408_and_closed(guarded):
    with connect(guarded) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        answer, closed = read_until_closed(sock, HEADER_TIMEOUT_S + SLACK_S)
    assert closed and statuses(answer) == [408], answer[:300]


def test_a_head_sent_one_byte_at_a_time_cannot_outlast_the_header_timeout(guarded):
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 200
    with connect(guarded) as sock:
        started = time.monotonic()
        for byte in head:  # every byte well inside any idle timeout
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            if select.select([sock], [], [], 0.05)[0]:
                break
        answer, closed = read_until_closed(sock, SLACK_S)
    assert closed and statuses(answer) == [408], answer[:300]
    assert time.monotonic() - started < HEADER_TIMEOUT_S + SLACK_S


def test_a_stalled_body_is_cut_off(guarded):
    head = request("POST", "/extract", headers={"X-API-Key": KEY, "Content-Type": "application/json"})
    head = head.replace(b"Content-Length: 0", b"Content-Length: 1000")
    with connect(guarded) as sock:
        sock.sendall(head + b'{"images": ')
        _, closed = read_until_closed(sock, BODY_TIMEOUT_S + SLACK_S)
    assert closed
    assert statuses(exchange(guarded, HEALTH)) == [200]


def test_an_idle_keep_alive_connection_is_closed(guarded):
    with connect(guarded) as sock:
        sock.sendall(request("GET", "/health"))
        answer, closed = read_until_closed(sock, KEEP_ALIVE_S + 3.0)  # uvicorn's default: 5 s
    assert statuses(answer) == [200] and closed


def test_connections_past_the_cap_are_refused_at_once(guarded):
    held = [connect(guarded) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.3)  # accepted by the server
        with connect(guarded) as extra:
            answer, closed = read_until_closed(extra, HEADER_TIMEOUT_S - 0.5)
        assert closed and statuses(answer) == [503], answer[:300]
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.3)
    assert statuses(exchange(guarded, HEALTH)) == [200]


# --- finding 12: pipelining ---


@pytest.mark.parametrize("half_close", [False, True], ids=["open", "half-closed"])
def test_pipelined_requests_in_one_packet_are_all_answered(guarded, half_close):
    body = orjson.dumps({"images": {"data": [b64(package_photo("yaoming.jpg"))]}})
    extract = request("POST", "/extract", body, {"X-API-Key": KEY, "Content-Type": "application/json"})
    info = request("GET", "/info", headers={"X-API-Key": KEY})
    last = HEALTH if not half_close else request("GET", "/health")
    answer = exchange(guarded, extract + info + last, half_close=half_close)
    assert statuses(answer) == [200, 200, 200], answer[-500:]
    assert answer.count(b'"norm"') == 1  # the extract answer is whole


# --- finding 8: log lines ---


def test_a_path_with_encoded_line_breaks_cannot_forge_a_log_line(guarded):
    forged = "2026-01-01 00:00:00,000 INFO facerest.access [x] GET /admin 200 1.0 ms"
    target = "/x%0A" + forged.replace(" ", "%20") + "%0D%E2%80%A8"
    answer = exchange(guarded, request("GET", target, headers={"Connection": "close"}))
    assert statuses(answer) == [401]
    log = guarded.log_once_it_has("\\x0a2026-01-01")
    assert not any(line.startswith("2026-01-01") for line in log.splitlines()), log[-2000:]
    assert "GET /x\\x0a2026-01-01" in log and "\\x0d\\u2028" in log


# --- finding 7: msgpack map keys ---

HASHLESS_KEYS = {
    "array key": b"\x81\x92\x01\x02\xc3",  # {[1, 2]: true}
    "map key": b"\x82\xa6images\x80\x80\xc3",  # {"images": {}, {}: true}
    "int key": msgpack.packb({"images": {"data": []}, 7: True}),
    "bytes key": msgpack.packb({b"images": {"data": []}}, use_bin_type=True),
}
BODY_ENDPOINTS = [
    ("POST", "/extract"),
    ("POST", "/draw_detections"),
    ("POST", "/gallery/keys/subjects/someone/faces"),
    ("PATCH", "/gallery/keys/subjects/someone"),
    ("POST", "/gallery/keys/search"),
    ("POST", "/verify"),
]


@pytest.mark.parametrize("method,path", BODY_ENDPOINTS)
def test_msgpack_maps_with_keys_other_than_strings_are_400(guarded, method, path):
    with guarded.client(headers={"X-API-Key": KEY, "Content-Type": "application/msgpack"}) as client:
        for name, body in HASHLESS_KEYS.items():
            rid = f"msgpack-{path.strip('/').replace('/', '-')}-{name.replace(' ', '-')}"
            response = client.request(method, path, content=body, headers={"X-Request-ID": rid})
            assert response.status_code == 400, (name, response.text)
            assert response.json()["code"] == "bad_input"
            assert "map key" in response.json()["detail"], response.text
            log = guarded.log_once_it_has(f"[{rid}] {method} {path} 400")
            assert f"[{rid}] {method} {path} 400" in log


# --- finding 9: one rule for names ---

BAD_NAMES = ["a/b", "a\\b", "..", ".", "tab\there", "new\nline", "x" * 201, ""]


def test_names_follow_one_rule_everywhere(guarded):
    vector = np.random.default_rng(9).normal(size=512).astype(np.float32).tolist()
    with guarded.client(headers={"X-API-Key": KEY}) as client:
        enrolled = client.post("/gallery/names/subjects/yao/faces", json={"embeddings": [vector]})
        assert enrolled.status_code == 200, enrolled.text
        for bad in BAD_NAMES:
            renamed = client.patch("/gallery/names/subjects/yao", json={"new_name": bad})
            assert renamed.status_code == 422, (bad, renamed.text)
            verified = client.post(
                "/verify", json={"embeddings": [vector], "gallery": "names", "subject": bad}
            )
            assert verified.status_code == 422, (bad, verified.text)
        # in a path: what survives the URL's encoding is checked by the same rule
        for bad in ["a%5Cb", "tab%09here", "x" * 201]:  # sent encoded, as a client would
            assert (
                client.post(f"/gallery/names/subjects/{bad}/faces", json={"embeddings": [vector]}).status_code
                == 422
            )
            assert client.get(f"/gallery/{bad}/subjects").status_code == 422
        assert client.get("/gallery/names/subjects/yao").status_code == 200  # untouched
        assert (
            client.patch("/gallery/names/subjects/yao", json={"new_name": "Yao Ming (2004)"}).status_code
            == 200
        )
        found = client.post("/gallery/names/search", json={"embeddings": [vector]})
        assert found.status_code == 200, found.text
        subjects = {
            m["subject"] for item in found.json()["data"] for face in item["faces"] for m in face["matches"]
        }
        assert subjects == {"Yao Ming (2004)"}
        for subject in subjects:  # every subject search names can be reached by its path
            assert client.get(f"/gallery/names/subjects/{subject}").status_code == 200
        schema = client.get("/openapi.json").json()
        rename = schema["components"]["schemas"]["RenameRequest"]["properties"]["new_name"]
        assert rename["maxLength"] == 200 and "/" in rename["pattern"]


def test_info_reports_the_http_limits(guarded):
    with guarded.client(headers={"X-API-Key": KEY}) as client:
        limits = client.get("/info").json()["http_limits"]
    assert limits == {
        "max_header_bytes": HEAD_LIMIT,
        "max_request_line_bytes": LINE_LIMIT,
        "header_timeout_s": HEADER_TIMEOUT_S,
        "body_timeout_s": BODY_TIMEOUT_S,
        "keep_alive_timeout_s": KEEP_ALIVE_S,
        "max_connections": MAX_CONNECTIONS,
    }
