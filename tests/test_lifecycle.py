"""Back-pressure, request timeout and graceful shutdown, on a server with a small queue.

The tests run in file order on one server: a burst, a request that outlives its time limit, and
at the end SIGTERM while a request is in flight.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import Server, package_photo, start_server, stop_server
from helpers import b64

PLAYERS = b64(package_photo("players.jpg"))
QUEUE_SIZE = 2
TIMEOUT_S = 6


@pytest.fixture(scope="module")
def small_server(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log_dir = tmp_path_factory.mktemp("small_server")
    env = {
        "FACEREST_MODELS_DIR": str(models_dir),
        "FACEREST_QUEUE_SIZE": str(QUEUE_SIZE),
        "FACEREST_REQUEST_TIMEOUT_S": str(TIMEOUT_S),
    }
    server = start_server(env, log_dir / "server.log")
    yield server
    if server.process.poll() is None:
        stop_server(server)
    assert "Traceback" not in server.log(), server.log()[-5000:]


def test_burst_beyond_the_queue_gets_503_with_retry_after(small_server):
    body = {"images": {"data": [PLAYERS]}}
    start = threading.Barrier(8)
    answers: list[httpx.Response] = []

    def one() -> None:
        with small_server.client() as client:
            start.wait()
            answers.append(client.post("/extract", json=body))

    threads = [threading.Thread(target=one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    statuses = sorted(a.status_code for a in answers)
    assert len(statuses) == 8 and set(statuses) == {200, 503}, statuses
    assert statuses.count(200) >= QUEUE_SIZE
    for answer in answers:
        if answer.status_code == 503:
            assert answer.json()["code"] == "overloaded"
            assert int(answer.headers["retry-after"]) >= 1
        else:
            assert len(answer.json()["data"][0]["faces"]) >= 10
    with small_server.client() as client:  # the burst is over: the server answers normally again
        assert client.post("/extract", json=body).status_code == 200
        metrics = client.get("/metrics").text
    assert f'facerest_errors_total{{code="overloaded"}} {float(statuses.count(503))}' in metrics


def test_request_over_its_time_limit_gets_504(small_server):
    # group photos blown up to 4096 px, detection only; as many as it takes (timed here, as the
    # machine's speed varies) to need three times the limit, so the 504 does not hang on timing.
    # Timed warm and two at a time: a request's images overlap decoding with inference.
    def body(count: int) -> dict:
        return {"images": {"data": [PLAYERS] * count}, "max_size": [4096, 4096], "extract_embedding": False}

    with small_server.client() as client:
        client.post("/extract", json=body(1))  # the first run at a new canvas size costs more
        started = time.monotonic()
        one = client.post("/extract", json=body(2))
        per_image_s = (time.monotonic() - started) / 2
        if one.status_code == 200:
            count = min(64, math.ceil(3 * TIMEOUT_S / per_image_s) + 1)
            started = time.monotonic()
            response = client.post("/extract", json=body(count))
            elapsed = time.monotonic() - started
        else:  # a slow machine: one image was already too much
            response, elapsed = one, per_image_s
        assert response.status_code == 504, response.text[:300]
        expected = {"detail": f"the request took longer than {TIMEOUT_S:.1f} s", "code": "timeout"}
        assert response.json() == expected
        assert elapsed < TIMEOUT_S * 2.5  # answered at the limit, not when the work would be done
        # work already queued for the abandoned request drains; then the server is ready again
        deadline = time.monotonic() + 120
        while client.get("/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.5)


def test_sigterm_lets_the_request_in_flight_finish(small_server):
    result: dict[str, httpx.Response] = {}

    def in_flight() -> None:  # a dozen photos: still running well after the signal, on any CPU
        with small_server.client() as client:
            result["answer"] = client.post("/extract", json={"images": {"data": [PLAYERS] * 12}})

    thread = threading.Thread(target=in_flight)
    thread.start()
    with small_server.client() as probe:  # wait until the request is inside the pipeline
        deadline = time.monotonic() + 10
        while "facerest_requests_in_flight 1.0" not in probe.get("/metrics").text:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    small_server.process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    with pytest.raises(httpx.ConnectError):  # no new connections once shutting down
        httpx.get(f"{small_server.url}/health", timeout=2)
    thread.join(60)
    answer = result["answer"]
    assert answer.status_code == 200, answer.text[:300]
    assert [len(image["faces"]) >= 10 for image in answer.json()["data"]] == [True] * 12
    # uvicorn re-raises the SIGTERM it caught once it is done, hence the signal as exit status
    assert small_server.process.wait(30) in (0, -signal.SIGTERM)
    log = small_server.log()
    assert log.index("Shutting down") < log.index("POST /extract 200", log.index("Shutting down"))
    assert "Application shutdown complete" in log
