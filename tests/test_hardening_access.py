"""A server started with the access settings an operator would use in production: API keys, CORS,
JSON logs, a URL allowlist, a local files root and a small body limit. One server for the module."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import Server, package_photo, start_server, stop_server
from helpers import b64
from test_urls import serve_loopback

YAO = package_photo("yaoming.jpg")
KEYS = ("first-key-0123456789", "second-key-abcdefghij")
ORIGIN = "https://app.example"
BODY_LIMIT = 2_000_000


@pytest.fixture(scope="module")
def files_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("local_root")
    (root / "yao.jpg").write_bytes(YAO.read_bytes())
    (root.parent / "secret.jpg").write_bytes(YAO.read_bytes())
    (root / "escape.jpg").symlink_to(root.parent / "secret.jpg")
    return root


@pytest.fixture(scope="module")
def locked(models_dir: Path, files_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log_dir = tmp_path_factory.mktemp("locked_server")
    env = {
        "FACEREST_MODELS_DIR": str(models_dir),
        "FACEREST_API_KEYS": ",".join(KEYS),
        "FACEREST_CORS_ORIGINS": ORIGIN,
        "FACEREST_LOG_JSON": "true",
        "FACEREST_URL_ALLOWLIST": "127.0.0.1",
        "FACEREST_LOCAL_FILES_ROOT": str(files_root),
        "FACEREST_MAX_BODY_BYTES": str(BODY_LIMIT),
    }
    server = start_server(env, log_dir / "server.log")
    yield server
    stop_server(server)
    assert "Traceback" not in server.log(), server.log()[-5000:]


@pytest.fixture(scope="module")
def image_origin() -> Iterator[str]:
    for url, _ in serve_loopback():
        yield url


def keyed(key: str = KEYS[0]) -> dict[str, str]:
    return {"X-API-Key": key}


def assert_unauthorized(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.json() == {
        "detail": "a valid API key is required in the X-API-Key header",
        "code": "unauthorized",
    }


def test_requests_without_a_valid_key_are_refused(locked):
    body = {"images": {"data": [b64(YAO)]}}
    with locked.client() as client:
        assert_unauthorized(client.post("/extract", json=body))
        assert_unauthorized(client.post("/extract", json=body, headers=keyed("wrong")))
        assert_unauthorized(client.post("/extract", json=body, headers=keyed(KEYS[0][:-1])))
        assert_unauthorized(client.post("/extract", json=body, headers=keyed(KEYS[0] + "x")))
        assert_unauthorized(client.post("/extract", json=body, headers=keyed("")))
        assert_unauthorized(client.post("/extract", json=body, headers={"Authorization": f"Basic {KEYS[0]}"}))
        assert_unauthorized(client.get("/info"))
        assert_unauthorized(client.get("/metrics"))
        assert_unauthorized(client.post("/multipart/extract", files=[("files", ("a.jpg", YAO.read_bytes()))]))
        assert_unauthorized(client.get("/nowhere"))  # no probing of which paths exist


def test_each_configured_key_is_accepted(locked):
    body = {"images": {"data": [b64(YAO)]}, "extract_embedding": False}
    with locked.client() as client:
        for key in KEYS:
            response = client.post("/extract", json=body, headers=keyed(key))
            assert response.status_code == 200 and len(response.json()["data"][0]["faces"]) == 1
        # what a Prometheus scraper can send
        metrics = client.get("/metrics", headers={"Authorization": f"Bearer {KEYS[1]}"})
        assert metrics.status_code == 200 and "facerest_requests_total" in metrics.text
        assert "unauthorized" in metrics.text  # the refusals above are counted by code


def test_health_and_docs_stay_open(locked):
    with locked.client() as client:
        assert client.get("/health").status_code == 200
        assert client.get("/openapi.json").status_code == 200
        assert client.get("/docs").status_code == 200


def test_cors_preflight_for_the_configured_origin_only(locked):
    asks = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "x-api-key,content-type",
    }
    with locked.client() as client:
        allowed = client.options("/extract", headers={"Origin": ORIGIN, **asks})
        assert allowed.status_code == 200  # answered before (and without) the key check
        assert allowed.headers["access-control-allow-origin"] == ORIGIN
        assert "x-api-key" in allowed.headers["access-control-allow-headers"].lower()
        refused = client.options("/extract", headers={"Origin": "https://evil.example", **asks})
        assert refused.status_code == 400
        assert "access-control-allow-origin" not in refused.headers
        # an actual cross-origin call gets the header and may read the request id
        answer = client.get("/info", headers={"Origin": ORIGIN, **keyed()})
        assert answer.headers["access-control-allow-origin"] == ORIGIN
        assert "x-request-id" in answer.headers["access-control-expose-headers"].lower()


def test_log_lines_are_json_with_the_request_id(locked):
    with locked.client() as client:
        client.get("/info", headers={"X-Request-ID": "json-log-probe-1", **keyed()})
        client.get("/info", headers={"X-Request-ID": "json-log-probe-2"})  # refused: logged as well
    log = locked.log_once_it_has("json-log-probe-1", "json-log-probe-2")
    lines = [line for line in log.splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    assert len(entries) >= len(lines) - 2, lines[:20]  # every line is JSON (tolerating a stray print)
    by_id = {e["request_id"]: e for e in entries}
    assert by_id["json-log-probe-1"]["msg"].startswith("GET /info 200")
    assert by_id["json-log-probe-2"]["msg"].startswith("GET /info 401")
    assert {"ts", "level", "logger", "msg"} <= set(by_id["json-log-probe-1"])


def test_allowlisted_loopback_urls_are_fetched(locked, image_origin):
    urls = [
        f"{image_origin}/yao.jpg",
        f"{image_origin}/redirect?to=http://10.0.0.1/x.jpg",
        f"{image_origin}/redirect?to=http://127.0.0.2:1/x.jpg",
        f"{image_origin}/big",
    ]
    with locked.client(headers=keyed()) as client:
        data = client.post("/extract", json={"images": {"urls": urls}, "extract_embedding": False}).json()[
            "data"
        ]
    assert [(d["status"], d.get("code")) for d in data] == [
        ("ok", None),
        ("failed", "url_refused"),
        ("failed", "url_refused"),
        ("failed", "image_too_large"),
    ]
    assert len(data[0]["faces"]) == 1
    # headers the client asks us to send are checked before any connection
    body = {"images": {"urls": urls[:1]}, "img_req_headers": {"X-Note": "café"}}
    with locked.client(headers=keyed()) as client:
        [item] = client.post("/extract", json=body).json()["data"]
    assert (item["status"], item["code"]) == ("failed", "bad_input")


def test_local_files_confined_to_the_root(locked):
    urls = ["yao.jpg", "/yao.jpg", "../secret.jpg", "escape.jpg", "/etc/passwd", "file:///yao.jpg"]
    with locked.client(headers=keyed()) as client:
        data = client.post("/extract", json={"images": {"urls": urls}, "extract_embedding": False}).json()[
            "data"
        ]
    assert [(d["status"], d.get("code")) for d in data] == [
        ("ok", None),
        ("ok", None),
        ("failed", "url_refused"),
        ("failed", "url_refused"),
        ("failed", "bad_input"),  # /etc/passwd is looked for inside the root, where it is not
        ("ok", None),
    ]


def test_body_limit_declared_streamed_and_multipart(locked):
    big = b"x" * (BODY_LIMIT + 1000)
    with locked.client(headers=keyed()) as client:
        declared = client.post("/extract", content=big, headers={"Content-Type": "application/json"})
        assert declared.status_code == 413 and declared.json()["code"] == "body_too_large"
        # the unread body ends the connection, and the answer says so (a client that reused it
        # sent its next request into a connection the server was closing)
        assert declared.headers["connection"] == "close"

        def chunks(data: bytes = big) -> Iterator[bytes]:  # no Content-Length: counted as it arrives
            for start in range(0, len(data), 65536):
                yield data[start : start + 65536]

        streamed = client.post("/extract", content=chunks(), headers={"Content-Type": "application/json"})
        assert streamed.status_code == 413 and streamed.json()["code"] == "body_too_large"
        # any answer given before the body was read (here: no such route) ends the connection
        unread = client.post("/no-such-route", content=big[: BODY_LIMIT - 1000])
        assert unread.status_code == 404 and unread.headers["connection"] == "close"
        upload = client.post("/multipart/extract", files=[("files", ("big.jpg", big))])
        assert upload.status_code == 413 and upload.json()["code"] == "body_too_large"
        form = (
            b'--xyz\r\nContent-Disposition: form-data; name="files"; filename="big.jpg"\r\n\r\n'
            + big
            + b"\r\n--xyz--\r\n"
        )
        streamed_upload = client.post(
            "/multipart/extract",
            content=chunks(form),
            headers={"Content-Type": "multipart/form-data; boundary=xyz"},
        )
        assert streamed_upload.status_code == 413
        assert client.get("/health").status_code == 200
