"""Issue 31, must show 3: recognitions published to a real MQTT broker (Debian's mosquitto, started
here on a free loopback port) and read back by a subscriber: a search, a video request and a stream
job; the broker stopped mid-run (requests answer as before, the drops are counted in /metrics) and
started again (publishing resumes). Skips with the reason where mosquitto is not installed
(scripts/ensure-mosquitto.sh installs it; `make test` runs that)."""

from __future__ import annotations

import base64
import os
import re
import shutil
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import orjson
import paho.mqtt.client as mqtt
import pytest
from conftest import Server, free_port, package_photo, start_server, stop_server
from video_scenes import Cast, make_cast, serve_mjpeg

from facerest.config import Settings
from facerest.errors import BadInput
from facerest.events import (
    Candidate,
    EventBus,
    FacesRecognized,
    SeenFace,
    StreamEvent,
    TrackFinished,
)
from facerest.publishing.mqtt import MqttPublisher, broker_of, level
from facerest.video.synthetic import Appearance, Script, render

MOSQUITTO = Path("/usr/sbin/mosquitto")
PREFIX = "facerest"


class Mosquitto:
    """A throwaway broker on 127.0.0.1:`port`, no persistence, stopped and started at will."""

    def __init__(self, root: Path, port: int) -> None:
        self.port = port
        self.config = root / "mosquitto.conf"
        # its log goes to stderr, into a file of ours: run as root, mosquitto drops to its own user
        self.config.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\n"
        )
        self.log = root / "mosquitto.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([str(MOSQUITTO), "-c", str(self.config)], stderr=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start listening")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


class Subscriber:
    """Every message under the prefix and Home Assistant's, kept in order; resubscribes on reconnect."""

    def __init__(self, port: int) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="facerest-test-reader")
        self.client.on_connect = lambda c, *_: c.subscribe([(f"{PREFIX}/#", 1), ("homeassistant/#", 1)])
        self.client.on_message = self._keep
        self.client.reconnect_delay_set(0.2, 1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _keep(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((message.topic, message.payload, bool(message.retain)))

    def wait_for(
        self, want: Callable[[list[tuple[str, bytes, bool]]], bool], timeout_s: float = 30
    ) -> list[tuple[str, bytes, bool]]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                seen = list(self.messages)
            if want(seen):
                return seen
            time.sleep(0.05)
        raise AssertionError(f"the messages did not come in {timeout_s} s; got {[t for t, _, _ in seen]}")

    def since(self, start: int) -> list[tuple[str, bytes, bool]]:
        with self.lock:
            return self.messages[start:]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    if not MOSQUITTO.exists():
        pytest.skip(f"{MOSQUITTO} is absent: scripts/ensure-mosquitto.sh installs Debian's mosquitto")
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto"), free_port())
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def mqtt_server(
    models_dir: Path, broker: Mosquitto, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    log_dir = tmp_path_factory.mktemp("mqtt-server")
    env = {
        "FACEREST_MODELS_DIR": str(models_dir),
        "FACEREST_MQTT_URL": f"mqtt://127.0.0.1:{broker.port}",
        "FACEREST_MQTT_HOMEASSISTANT": "true",
        "FACEREST_VIDEO_STREAMS_ENABLED": "true",
        "FACEREST_VIDEO_STREAM_ALLOWLIST": "127.0.0.1",
        "FACEREST_VIDEO_STREAM_BACKOFF_S": "0.2",
        "FACEREST_VIDEO_STREAM_RETRIES": "1",
    }
    srv = start_server(env, log_dir / "server.log")
    yield srv
    stop_server(srv)
    assert "Traceback" not in srv.log(), srv.log()


@pytest.fixture(scope="module")
def subscriber(broker: Mosquitto) -> Iterator[Subscriber]:
    reader = Subscriber(broker.port)
    yield reader
    reader.close()


@pytest.fixture(scope="module")
def cast(analyzer) -> Cast:  # type: ignore[no-untyped-def]
    return make_cast(analyzer)


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _payloads(messages: list[tuple[str, bytes, bool]], topic: str) -> list[dict]:
    return [orjson.loads(p) for t, p, _ in messages if t == topic]


def _metric(server: Server, name: str, labels: str = "") -> float:
    with server.client() as client:
        text = client.get("/metrics").text
    match = re.search(rf"^{re.escape(name)}(\{{{re.escape(labels)}\}})? (\S+)$", text, re.MULTILINE)
    return float(match.group(2)) if match else 0.0


def test_a_search_a_video_and_a_stream_job_publish_their_recognitions(
    mqtt_server: Server, subscriber: Subscriber, cast: Cast, tmp_path: Path
) -> None:
    subscriber.wait_for(lambda m: (f"{PREFIX}/status", b"online", True) in m)
    gallery = "mqtt-home"
    with mqtt_server.client(timeout=60) as client:
        client.delete(f"/gallery/{gallery}")
        enrolled = client.post(
            f"/gallery/{gallery}/subjects/yao/faces",
            json={"images": {"data": [_b64(package_photo("yaoming.jpg"))]}},
        )
        assert enrolled.status_code == 200, enrolled.text

        # a search: one message per face, a match message for the face that was named
        start = len(subscriber.messages)
        photos = [package_photo("yaoming.jpg"), package_photo("gdp.jpg")]
        found = client.post(
            f"/gallery/{gallery}/search", json={"images": {"data": [_b64(p) for p in photos]}}
        )
        assert found.status_code == 200, found.text
        faces = [f for item in found.json()["data"] for f in item["faces"]]
        topic = f"{PREFIX}/recognized/{gallery}"
        seen = subscriber.wait_for(lambda m: len(_payloads(m[start:], topic)) == len(faces))
        published = _payloads(seen[start:], topic)
        assert sorted(str(p["subject"]) for p in published) == sorted(str(f["subject"]) for f in faces)
        assert all(p["source"] == "search" and p["gallery"] == gallery for p in published)
        assert all("embedding" not in p and "vec" not in p for p in published)
        yao = _payloads(seen[start:], f"{PREFIX}/matches/{gallery}/yao")
        assert len(yao) == 1 and yao[0]["similarity"] >= yao[0]["threshold"]
        # Home Assistant discovery: one sensor for the gallery, retained, on its state topic
        config = subscriber.wait_for(lambda m: any(t.startswith("homeassistant/sensor/") for t, _, _ in m))
        announced = [orjson.loads(p) for t, p, _ in config if t.startswith("homeassistant/sensor/")]
        assert any(
            c["state_topic"] == topic and c["availability_topic"] == f"{PREFIX}/status" for c in announced
        )

        # a video request identified in the gallery: one message per track
        p = cast.people
        script = Script(
            fps=10.0,
            duration_s=4.0,
            appearances=[  # 1.4 s without faces at the end: the stream's last track ends before it does
                Appearance(p["yao"], 0.0, 1.2, (40, 60), (200, 60)),
                Appearance(p["gdp0"], 1.4, 2.6, (300, 100), (200, 120)),
            ],
            seed=3,
        )
        video = render(script, tmp_path / "two.mp4", "libx264")
        start = len(subscriber.messages)
        answer = client.post(
            "/multipart/video/extract",
            files={"file": ("two.mp4", video.read_bytes())},
            data={"fps": "5", "gallery": gallery, "return_embedding": "false"},
        )
        assert answer.status_code == 200, answer.text
        tracks = answer.json()["tracks"]
        assert len(tracks) == 2
        seen = subscriber.wait_for(lambda m: len(_payloads(m[start:], topic)) == 2)
        published = _payloads(seen[start:], topic)
        assert [x["source"] for x in published] == ["video", "video"]
        assert (
            [x["subject"] for x in published] == [t["identity"]["subject"] for t in tracks] == ["yao", None]
        )
        assert [x["track"]["id"] for x in published] == [t["track"] for t in tracks]

        # a stream job: its events (status, track) on the job's topics, its tracks as recognitions
        start = len(subscriber.messages)
        with serve_mjpeg(script, drop_s=script.duration_s) as url:
            created = client.post("/video/jobs", json={"url": url, "fps": 5, "gallery": gallery})
            assert created.status_code == 201, created.text
            job = created.json()["id"]
            seen = subscriber.wait_for(
                lambda m: len(_payloads(m[start:], f"{PREFIX}/jobs/{job}/track")) >= 2, timeout_s=60
            )
            client.delete(f"/video/jobs/{job}")
        job_tracks = _payloads(seen[start:], f"{PREFIX}/jobs/{job}/track")
        assert [t["data"]["identity"]["subject"] for t in job_tracks[:2]] == ["yao", None]
        assert all("vec" not in t["data"] for t in job_tracks)
        assert _payloads(seen[start:], f"{PREFIX}/jobs/{job}/status")[0]["data"]["status"] in (
            "connecting",
            "running",
        )
        streamed = [x for x in _payloads(seen[start:], topic) if x["source"] == "stream"]
        assert [x["subject"] for x in streamed[:2]] == ["yao", None]
        client.delete(f"/gallery/{gallery}")
    assert _metric(mqtt_server, "facerest_mqtt_connected") == 1


def test_a_stopped_broker_costs_requests_nothing_and_publishing_resumes(
    mqtt_server: Server, broker: Mosquitto, subscriber: Subscriber
) -> None:
    gallery = "mqtt-outage"
    photo = {"images": {"data": [_b64(package_photo("yaoming.jpg"))]}}
    topic = f"{PREFIX}/recognized/{gallery}"
    with mqtt_server.client(timeout=60) as client:
        client.delete(f"/gallery/{gallery}")
        assert client.post(f"/gallery/{gallery}/subjects/yao/faces", json=photo).status_code == 200

        def timed_searches(count: int) -> list[float]:
            took = []
            for _ in range(count):
                started = time.perf_counter()
                assert client.post(f"/gallery/{gallery}/search", json=photo).status_code == 200
                took.append(time.perf_counter() - started)
            return took

        timed_searches(2)  # warm
        with_broker = timed_searches(10)
        dropped_before = _metric(mqtt_server, "facerest_mqtt_dropped_total", 'reason="disconnected"')
        broker.stop()
        deadline = time.monotonic() + 10
        while _metric(mqtt_server, "facerest_mqtt_connected") != 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _metric(mqtt_server, "facerest_mqtt_connected") == 0
        without_broker = timed_searches(10)
        deadline = time.monotonic() + 5  # the publisher thread counts them a moment after the answers
        while (
            _metric(mqtt_server, "facerest_mqtt_dropped_total", 'reason="disconnected"') - dropped_before < 20
            and time.monotonic() < deadline
        ):
            time.sleep(0.1)
        dropped = (
            _metric(mqtt_server, "facerest_mqtt_dropped_total", 'reason="disconnected"') - dropped_before
        )
        up, down = statistics.median(with_broker), statistics.median(without_broker)
        print(
            f"\nsearch latency, median of 10: broker up {up * 1000:.1f} ms, broker stopped "
            f"{down * 1000:.1f} ms (slowest {max(without_broker) * 1000:.1f} ms); "
            f"messages dropped while it was away: {dropped:.0f}"
        )
        assert dropped == 20  # one face a search, named: 2 messages each, QoS 0: counted, none waited for
        # not a timing test: a publish that waited for the broker would cost whole seconds
        # (paho's connection attempts), far beyond this bound
        assert down < 3 * up + 0.25

        broker.start()
        deadline = time.monotonic() + 45  # paho's back-off: 1, 2, 4... s between attempts
        while _metric(mqtt_server, "facerest_mqtt_connected") != 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _metric(mqtt_server, "facerest_mqtt_connected") == 1
        deadline = time.monotonic() + 15
        while not subscriber.client.is_connected() and time.monotonic() < deadline:
            time.sleep(0.1)
        start = len(subscriber.messages)
        timed_searches(1)
        seen = subscriber.wait_for(lambda m: len(_payloads(m[start:], topic)) == 1)
        assert _payloads(seen[start:], topic)[0]["subject"] == "yao"
        client.delete(f"/gallery/{gallery}")


# --- the publisher in process: never blocks, bounded, its topics and payloads ---


def _face(subject: str | None) -> SeenFace:
    return SeenFace(
        np.ones(512, np.float32) / np.sqrt(512),
        [1.0, 2.0, 30.0, 40.0],
        0.9,
        0.8,
        subject,
        0.7 if subject else 0.1,
        0.3,
        [Candidate(subject or "x", 0.7 if subject else 0.1)],
    )


def test_the_event_queue_is_bounded_and_publishing_never_blocks() -> None:
    """No broker listens on the port: 5,000 events are handed over at once, 10 wait, the rest are
    dropped and counted; the emitter never waits."""
    bus = EventBus()
    settings = Settings(mqtt_url=f"mqtt://127.0.0.1:{free_port()}", mqtt_queue=10)
    publisher = MqttPublisher(settings, bus)  # not started: nothing takes from its queue
    started = time.perf_counter()
    for _ in range(5000):
        bus.publish(FacesRecognized("g", "search", [_face("a")]))
    took = time.perf_counter() - started
    subscription = bus.subscriptions()[0]
    assert subscription.name == "mqtt" and subscription.pending() == 10 and subscription.dropped == 4990
    print(f"\n5000 events handed to a stalled MQTT listener in {took * 1000:.1f} ms")
    publisher.start()  # nobody listens on that port: publishing goes on, counted as drops
    deadline = time.monotonic() + 10
    while publisher.dropped["disconnected"] < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    publisher.close()
    assert publisher.dropped["disconnected"] == 20 and publisher.connected is False  # 10 events x 2 topics


def test_events_become_topics_without_embeddings() -> None:
    settings = Settings(
        mqtt_url="mqtt://127.0.0.1:1", mqtt_topic_prefix="home/faces", mqtt_homeassistant=True
    )
    publisher = MqttPublisher(settings, EventBus())
    search = FacesRecognized("front door", "search", [_face("al+ice"), _face(None)], ref="r1")
    out = list(publisher.messages(search))
    topics = [t for t, _, _ in out]
    assert topics == [
        "home/faces/recognized/front door",
        "home/faces/matches/front door/al_ice",
        "home/faces/recognized/front door",
    ]
    first = orjson.loads(out[0][1])
    assert first["subject"] == "al+ice" and first["unknown"] is False and first["ref"] == "r1"
    assert "embedding" not in first and orjson.loads(out[2][1])["unknown"] is True
    track = TrackFinished(None, "video", "clip.mp4", 3, 0.0, 1.5, _face(None))
    assert [t for t, _, _ in publisher.messages(track)] == ["home/faces/tracks"]
    job = StreamEvent("abc", "track", {"track": 1, "vec": [0.1, 0.2], "identity": {"subject": "x"}})
    ((topic, payload, retain),) = publisher.messages(job)
    assert topic == "home/faces/jobs/abc/track" and "vec" not in orjson.loads(payload)["data"] and not retain
    topic, config = publisher.discovery("front door")
    assert topic.startswith("homeassistant/sensor/facerest_front_door_") and topic.endswith("/config")
    assert orjson.loads(config)["state_topic"] == "home/faces/recognized/front door"
    assert level("a#b+c") == "a_b_c"
    publisher.close()


def test_broker_urls() -> None:
    secure = broker_of(Settings(mqtt_url="mqtts://u%40x:p%3Aw@broker.example"))
    assert (secure.host, secure.port, secure.tls, secure.username, secure.password) == (
        "broker.example",
        8883,
        True,
        "u@x",
        "p:w",
    )
    plain = broker_of(Settings(mqtt_url="mqtt://127.0.0.1:1884", mqtt_username="a", mqtt_password="b"))
    assert (plain.port, plain.tls, plain.username, plain.password) == (1884, False, "a", "b")
    for bad in ("http://x", "mqtt://", "mqtt://host:99999"):
        with pytest.raises(BadInput):
            broker_of(Settings(mqtt_url=bad))


def _certificates(root: Path) -> Path:
    """A throwaway CA and a server certificate for 127.0.0.1 (openssl); the CA's file."""
    run = lambda *args: subprocess.run(args, cwd=root, check=True, capture_output=True)  # noqa: E731
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
        "-days", "1", "-subj", "/CN=facerest-test-ca")  # fmt: skip
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=127.0.0.1")  # fmt: skip
    (root / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.crt", "-days", "1", "-extfile", "san.ext")  # fmt: skip
    return root / "ca.crt"


def test_tls_and_credentials(tmp_path: Path) -> None:
    """mqtts:// with the broker's CA and a user name and password: published; a wrong password is
    refused by the broker and the messages are counted as dropped."""
    if not MOSQUITTO.exists() or not shutil.which("openssl") or not shutil.which("mosquitto_passwd"):
        pytest.skip("needs Debian's mosquitto and mosquitto_passwd (scripts/ensure-mosquitto.sh) and openssl")
    ca = _certificates(tmp_path)
    (tmp_path / "passwd").touch()
    subprocess.run(["mosquitto_passwd", "-b", str(tmp_path / "passwd"), "cam", "s3cret"], check=True)
    port = free_port()
    broker = Mosquitto(tmp_path, port)
    # root drops to the mosquitto user, who cannot read pytest's folders: stay (a loopback test broker)
    user = "user root\n" if os.geteuid() == 0 else ""
    broker.config.write_text(
        f"{user}listener {port} 127.0.0.1\ncafile {ca}\ncertfile {tmp_path / 'server.crt'}\n"
        f"keyfile {tmp_path / 'server.key'}\nallow_anonymous false\npassword_file {tmp_path / 'passwd'}\n"
        "log_dest stderr\n"
    )
    broker.start()
    reader = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="tls-reader")
    reader.tls_set(ca_certs=str(ca))
    reader.username_pw_set("cam", "s3cret")
    got: list[str] = []
    reader.on_message = lambda c, u, m: got.append(m.topic)
    reader.connect("127.0.0.1", port)
    reader.subscribe(f"{PREFIX}/#")
    reader.loop_start()
    try:
        for password, should_arrive in (("s3cret", True), ("wrong", False)):
            bus = EventBus()
            settings = Settings(mqtt_url=f"mqtts://cam:{password}@127.0.0.1:{port}", mqtt_tls_ca_file=ca)
            publisher = MqttPublisher(settings, bus)
            publisher.start()
            deadline = time.monotonic() + 5
            while not publisher.connected and time.monotonic() < deadline:
                time.sleep(0.05)
            assert publisher.connected is should_arrive
            got.clear()
            bus.publish(FacesRecognized("tls", "search", [_face(None)]))
            deadline = time.monotonic() + 5
            while not got and publisher.dropped["disconnected"] == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            if should_arrive:
                assert got == [f"{PREFIX}/recognized/tls"]
            else:
                assert got == [] and publisher.dropped["disconnected"] == 1
            publisher.close()
    finally:
        reader.disconnect()
        reader.loop_stop()
        broker.stop()
