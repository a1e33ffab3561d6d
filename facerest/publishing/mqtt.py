"""Recognitions to an MQTT broker (FACEREST_MQTT_URL): a listener of the event stream.

Requests never wait for the broker. The event stream hands events to this listener's bounded queue
without blocking (facerest/events.py: a full queue drops the event and counts it); one thread of
ours turns them into messages and gives them to paho-mqtt, whose own network thread connects,
reconnects with back-off (1 s to 30 s) and sends. Messages published while the broker is away
are dropped and counted (QoS 0) or held for the reconnection up to FACEREST_MQTT_QUEUE (QoS 1, 2),
then dropped and counted. /metrics: facerest_mqtt_connected, facerest_mqtt_published,
facerest_mqtt_dropped{reason}, and facerest_events_dropped{listener="mqtt"}.

Topics (prefix FACEREST_MQTT_TOPIC_PREFIX, "facerest"):
  <prefix>/status                          "online" / "offline" (retained; the broker's will)
  <prefix>/recognized/<gallery>            one message per face a search saw or per video or
                                           stream track identified in the gallery
  <prefix>/matches/<gallery>/<subject>     the same message, for each face that was named
  <prefix>/tracks                          tracks of videos read without a gallery
  <prefix>/jobs/<job id>/<kind>            every event of a stream job (its SSE events: track, status)
  <homeassistant>/sensor/<id>/config       with FACEREST_MQTT_HOMEASSISTANT: one sensor per gallery
Payloads are JSON without embeddings or pictures.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import socket
import ssl
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson
import paho.mqtt.client as mqtt
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from facerest.config import Settings
from facerest.errors import BadInput
from facerest.events import EventBus, FacesRecognized, SeenFace, StreamEvent, TrackFinished

log = logging.getLogger(__name__)

#: the event kinds published
KINDS = (FacesRecognized, TrackFinished, StreamEvent)
#: seconds between the first reconnection attempts, growing to the second
RECONNECT_DELAY_S = (1, 30)
KEEPALIVE_S = 30
#: QoS 1/2 messages sent but not yet acknowledged by the broker
MAX_INFLIGHT = 100


@dataclass(frozen=True, slots=True)
class Broker:
    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None


def broker_of(settings: Settings) -> Broker:
    """FACEREST_MQTT_URL (and the user/password settings) as connection parameters."""
    url = settings.mqtt_url or ""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not parts.hostname:
        raise BadInput(f"FACEREST_MQTT_URL must be mqtt://host[:port] or mqtts://host[:port], not {url!r}")
    tls = scheme in ("mqtts", "ssl")
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError as exc:
        raise BadInput(f"FACEREST_MQTT_URL has a bad port: {exc}") from exc
    username = settings.mqtt_username or (unquote(parts.username) if parts.username else None)
    password = settings.mqtt_password or (unquote(parts.password) if parts.password else None)
    return Broker(parts.hostname, port, tls, username, password)


_WILDCARDS = re.compile(r"[+#\x00]")


def level(name: str) -> str:
    """A gallery or subject name as one topic level (names hold no "/"; the wildcards go)."""
    return _WILDCARDS.sub("_", name) or "_"


def _face(face: SeenFace | None) -> dict[str, Any]:
    if face is None:
        return {"subject": None, "unknown": True}
    return {
        "subject": face.subject,
        "unknown": face.subject is None,
        "similarity": None if face.similarity is None else round(float(face.similarity), 5),
        "threshold": round(float(face.threshold), 6),
        "bbox": None if face.bbox is None else [round(float(v), 1) for v in face.bbox],
        "prob": None if face.prob is None else round(float(face.prob), 5),
        "quality": None if face.quality is None else round(float(face.quality), 4),
        "candidates": [
            {"subject": c.subject, "similarity": round(float(c.similarity), 5)} for c in face.candidates
        ],
    }


class MqttPublisher:
    """Publishes the event stream to one broker; `start` and `close` from the app's lifespan."""

    def __init__(self, settings: Settings, bus: EventBus) -> None:
        self.settings = settings
        self.broker = broker_of(settings)
        self.prefix = settings.mqtt_topic_prefix.strip("/") or "facerest"
        self.status_topic = f"{self.prefix}/status"
        self.published = 0
        self.dropped: Counter[str] = Counter()
        self.connected = False
        self._galleries: set[str] = set()  # announced to Home Assistant
        self._stop = threading.Event()
        self._subscription = bus.subscribe("mqtt", KINDS, maxsize=settings.mqtt_queue)
        self.client = self._client()
        self._thread = threading.Thread(target=self._run, name="facerest-mqtt", daemon=True)

    def _client(self) -> mqtt.Client:
        s, broker = self.settings, self.broker
        client_id = s.mqtt_client_id or f"facerest-{socket.gethostname()[:40]}-{os.getpid()}"
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, reconnect_on_failure=True)
        client.max_queued_messages_set(s.mqtt_queue)
        client.max_inflight_messages_set(MAX_INFLIGHT)
        client.reconnect_delay_set(*RECONNECT_DELAY_S)
        client.will_set(self.status_topic, "offline", qos=1, retain=True)
        if broker.username is not None:
            client.username_pw_set(broker.username, broker.password)
        if broker.tls:
            client.tls_set(
                ca_certs=None if s.mqtt_tls_ca_file is None else str(s.mqtt_tls_ca_file),
                certfile=None if s.mqtt_tls_cert_file is None else str(s.mqtt_tls_cert_file),
                keyfile=None if s.mqtt_tls_key_file is None else str(s.mqtt_tls_key_file),
                cert_reqs=ssl.CERT_REQUIRED,
            )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        return client

    # --- life ---

    def start(self) -> None:
        """Never blocks on the broker: the connection is made (and remade) by paho's thread."""
        self.client.connect_async(self.broker.host, self.broker.port, keepalive=KEEPALIVE_S)
        self.client.loop_start()
        self._thread.start()
        log.info("MQTT: publishing to %s:%d under %s/", self.broker.host, self.broker.port, self.prefix)

    def close(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        self._subscription.close()
        if self.connected:
            with contextlib.suppress(RuntimeError, ValueError):  # the broker went meanwhile
                self.client.publish(self.status_topic, "offline", qos=1, retain=True).wait_for_publish(
                    timeout_s
                )
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            log.warning("MQTT: %s:%d refused the connection: %s", self.broker.host, self.broker.port, reason)
            return
        self.connected = True
        log.info("MQTT: connected to %s:%d", self.broker.host, self.broker.port)
        client.publish(self.status_topic, "online", qos=1, retain=True)
        for gallery in sorted(self._galleries):  # the broker may have lost the retained configs
            self._announce(gallery)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if self.connected:
            log.warning("MQTT: lost %s:%d (%s); reconnecting", self.broker.host, self.broker.port, reason)
        self.connected = False

    def _run(self) -> None:
        while not self._stop.is_set():
            event = self._subscription.get(timeout_s=0.25)
            if event is None:
                continue
            try:
                for topic, payload, retain in self.messages(event):
                    self._publish(topic, payload, retain)
            except Exception:  # a malformed event must not end publishing
                log.exception("MQTT: could not publish %s", type(event).__name__)

    def _publish(self, topic: str, payload: bytes | str, retain: bool, qos: int | None = None) -> None:
        qos = self.settings.mqtt_qos if qos is None else qos
        rc = self.client.publish(topic, payload, qos=qos, retain=retain).rc
        if rc == mqtt.MQTT_ERR_SUCCESS:
            self.published += 1
        elif rc == mqtt.MQTT_ERR_NO_CONN and qos > 0:
            self.published += 1  # held by paho until the broker is back (within FACEREST_MQTT_QUEUE)
        elif rc == mqtt.MQTT_ERR_NO_CONN:
            self.dropped["disconnected"] += 1
        elif rc == mqtt.MQTT_ERR_QUEUE_SIZE:
            self.dropped["queue_full"] += 1
        else:
            self.dropped["error"] += 1

    # --- events to messages ---

    def messages(self, event: object) -> Iterator[tuple[str, bytes, bool]]:
        """(topic, payload, retain) for each message an event makes."""
        retain = self.settings.mqtt_retain
        if isinstance(event, FacesRecognized):
            self._seen(event.gallery)
            for face in event.faces:
                body = {"gallery": event.gallery, "source": event.source, "ref": event.ref, "at": event.at}
                yield from self._recognized(event.gallery, {**body, **_face(face)}, retain)
        elif isinstance(event, TrackFinished):
            body = {
                "gallery": event.gallery,
                "source": event.source,
                "ref": event.ref,
                "at": event.at,
                "track": {"id": event.track, "first_s": event.first_s, "last_s": event.last_s},
                **_face(event.face),
            }
            if event.gallery is None:
                yield f"{self.prefix}/tracks", orjson.dumps(body), retain
            else:
                self._seen(event.gallery)
                yield from self._recognized(event.gallery, body, retain)
        elif isinstance(event, StreamEvent):
            data = {k: v for k, v in event.data.items() if k != "vec"}  # no embeddings on the wire
            body = {"job": event.job, "kind": event.kind, "at": event.at, "data": data}
            yield f"{self.prefix}/jobs/{level(event.job)}/{level(event.kind)}", orjson.dumps(body), False

    def _recognized(
        self, gallery: str, body: dict[str, Any], retain: bool
    ) -> Iterator[tuple[str, bytes, bool]]:
        payload = orjson.dumps(body)
        yield f"{self.prefix}/recognized/{level(gallery)}", payload, retain
        if body.get("subject"):
            yield f"{self.prefix}/matches/{level(gallery)}/{level(body['subject'])}", payload, retain

    # --- Home Assistant discovery ---

    def _seen(self, gallery: str) -> None:
        if self.settings.mqtt_homeassistant and gallery not in self._galleries:
            self._galleries.add(gallery)
            self._announce(gallery)

    def discovery(self, gallery: str) -> tuple[str, bytes]:
        """Home Assistant's discovery message of the gallery's sensor: its last recognition."""
        slug = re.sub(r"[^a-zA-Z0-9_-]", "_", gallery)[:40]
        object_id = f"facerest_{slug}_{hashlib.sha256(gallery.encode()).hexdigest()[:8]}"
        state = f"{self.prefix}/recognized/{level(gallery)}"
        config = {
            "name": f"facerest {gallery}",
            "unique_id": object_id,
            "object_id": object_id,
            "state_topic": state,
            "value_template": "{{ value_json.subject if value_json.subject else 'unknown' }}",
            "json_attributes_topic": state,
            "availability_topic": self.status_topic,
            "icon": "mdi:face-recognition",
        }
        return f"{self.settings.mqtt_homeassistant_prefix}/sensor/{object_id}/config", orjson.dumps(config)

    def _announce(self, gallery: str) -> None:
        topic, payload = self.discovery(gallery)
        self._publish(topic, payload, retain=True, qos=1)


class MqttCollector(Collector):
    """The publisher's state for /metrics, read when scraped."""

    def __init__(self, publisher: MqttPublisher) -> None:
        self.publisher = publisher

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        p = self.publisher
        yield GaugeMetricFamily(
            "facerest_mqtt_connected", "1 while connected to the MQTT broker", int(p.connected)
        )
        yield CounterMetricFamily(
            "facerest_mqtt_published",
            "Messages handed to the MQTT broker (or held for it, QoS 1/2)",
            p.published,
        )
        dropped = CounterMetricFamily(
            "facerest_mqtt_dropped",
            "Messages dropped: broker away (QoS 0), queue full, or refused",
            labels=["reason"],
        )
        for reason in ("disconnected", "queue_full", "error"):
            dropped.add_metric([reason], p.dropped[reason])
        yield dropped


def start_publishing(settings: Settings, bus: EventBus, registry: CollectorRegistry) -> MqttPublisher | None:
    """The MQTT publisher, started, its metrics in `registry`; None without FACEREST_MQTT_URL."""
    if not settings.mqtt_url:
        return None
    publisher = MqttPublisher(settings, bus)
    registry.register(MqttCollector(publisher))
    publisher.start()
    return publisher
