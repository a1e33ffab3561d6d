"""Which MQTT client publishes facerest's events: paho-mqtt vs aiomqtt, against a local mosquitto.

    PYTHONPATH=. python benchmarks/mqtt_clients.py [--messages 20000]

Both are well kept (paho-mqtt is Eclipse's client; aiomqtt is the asyncio client built on it).
What matters here is what a publisher thread pays to hand a message over, the throughput until a
subscriber has read every message, what a publish costs while the broker is away, and how each
gets back to the broker: paho reconnects by itself with back-off in its own network thread; with
aiomqtt the caller writes the reconnection loop around `async with Client(...)` and drives the
client from an asyncio loop (in facerest, one more thread and loop beside uvicorn's). Messages are
300-byte JSON payloads, QoS 0 and 1. Needs Debian's mosquitto (scripts/ensure-mosquitto.sh).
Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import paho.mqtt.client as mqtt

PAYLOAD = (
    b'{"gallery":"home","source":"search","subject":"alice","similarity":0.71234,' + b'"x":0' * 44 + b"}"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.config = root / "mosquitto.conf"
        self.config.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.process = subprocess.Popen([binary, "-c", str(self.config)], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


class Counter:
    """A subscriber that counts what arrives on the topic."""

    def __init__(self, port: int, topic: str) -> None:
        self.count = 0
        self.done = threading.Event()
        self.want = 0
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"counter-{topic}")
        self.client.on_message = self._count
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()
        time.sleep(0.3)

    def _count(self, *_: object) -> None:
        self.count += 1
        if self.count >= self.want:
            self.done.set()

    def expect(self, n: int) -> None:
        self.count, self.want = 0, n
        self.done.clear()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextlib.contextmanager
def paho_client(port: int) -> Iterator[mqtt.Client]:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-paho", reconnect_on_failure=True)
    client.max_queued_messages_set(1_000_000)
    client.max_inflight_messages_set(100)
    client.reconnect_delay_set(1, 30)
    client.connect("127.0.0.1", port)
    client.loop_start()
    time.sleep(0.3)
    try:
        yield client
    finally:
        client.disconnect()
        client.loop_stop()


def bench_paho(broker: Broker, counter: Counter, n: int, qos: int) -> dict[str, float]:
    with paho_client(broker.port) as client:
        counter.expect(n)
        started = time.perf_counter()
        for _ in range(n):
            client.publish(f"bench/paho{qos}", PAYLOAD, qos=qos)
        handed = time.perf_counter() - started
        counter.done.wait(120)
        total = time.perf_counter() - started
        return {"hand_us": handed / n * 1e6, "per_s": counter.count / total, "received": counter.count}


def paho_outage(broker: Broker, n: int) -> dict[str, float]:
    with paho_client(broker.port) as client:
        broker.stop()
        time.sleep(0.5)
        started = time.perf_counter()
        refused = sum(
            client.publish("bench/down", PAYLOAD, qos=0).rc != mqtt.MQTT_ERR_SUCCESS for _ in range(n)
        )
        down_us = (time.perf_counter() - started) / n * 1e6
        time.sleep(2.5)
        broker.start()
        back = time.perf_counter()
        while not client.is_connected() and time.perf_counter() - back < 60:
            time.sleep(0.05)
        return {"down_us": down_us, "refused": refused, "back_s": time.perf_counter() - back}


class AioPublisher:
    """aiomqtt driven from its own asyncio loop in a thread; another thread hands messages over as
    facerest's publisher thread would. Reconnection is this class's loop, not the library's."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.loop = asyncio.new_event_loop()
        self.client: aiomqtt.Client | None = None
        self.connected = threading.Event()
        self.stopping = False
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.task = asyncio.run_coroutine_threadsafe(self._keep_connected(), self.loop)
        self.connected.wait(10)

    async def _keep_connected(self) -> None:
        delay = 1.0
        while not self.stopping:
            try:
                async with aiomqtt.Client(
                    "127.0.0.1", self.port, identifier="bench-aio", max_queued_outgoing_messages=1_000_000
                ) as client:
                    self.client, delay = client, 1.0
                    self.connected.set()
                    while not self.stopping and client._client.is_connected():
                        await asyncio.sleep(0.05)
            except aiomqtt.MqttError:
                pass
            self.connected.clear()
            self.client = None
            if not self.stopping:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    def publish(self, topic: str, qos: int) -> asyncio.Future | None:
        client = self.client
        if client is None:
            return None
        return asyncio.run_coroutine_threadsafe(client.publish(topic, PAYLOAD, qos=qos), self.loop)  # type: ignore[return-value]

    def close(self) -> None:
        self.stopping = True
        with contextlib.suppress(Exception):
            self.task.result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def bench_aiomqtt(broker: Broker, counter: Counter, n: int, qos: int) -> dict[str, float]:
    publisher = AioPublisher(broker.port)
    try:
        counter.expect(n)
        started = time.perf_counter()
        futures = [publisher.publish(f"bench/aio{qos}", qos) for _ in range(n)]
        handed = time.perf_counter() - started
        for future in futures:
            if future is not None:
                with contextlib.suppress(Exception):
                    future.result(120)
        counter.done.wait(120)
        total = time.perf_counter() - started
        return {"hand_us": handed / n * 1e6, "per_s": counter.count / total, "received": counter.count}
    finally:
        publisher.close()


def aiomqtt_outage(broker: Broker, n: int) -> dict[str, float]:
    publisher = AioPublisher(broker.port)
    try:
        broker.stop()
        time.sleep(0.5)
        started = time.perf_counter()
        refused = 0
        for _ in range(n):
            future = publisher.publish("bench/down", 0)
            if future is None:
                refused += 1
                continue
            try:
                future.result(5)
            except Exception:
                refused += 1
        down_us = (time.perf_counter() - started) / n * 1e6
        time.sleep(2.5)
        broker.start()
        back = time.perf_counter()
        while not publisher.connected.is_set() and time.perf_counter() - back < 60:
            time.sleep(0.05)
        return {"down_us": down_us, "refused": refused, "back_s": time.perf_counter() - back}
    finally:
        publisher.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=20000)
    args = parser.parse_args()
    if not (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()):
        raise SystemExit("mosquitto is not installed: bash scripts/ensure-mosquitto.sh")
    n = args.messages
    with tempfile.TemporaryDirectory() as root:
        broker = Broker(Path(root))
        broker.start()
        try:
            rows = []
            # QoS 1 in facerest's regime: at most FACEREST_MQTT_QUEUE (1000) messages waiting for
            # acknowledgements (paho walks its queue at every acknowledgement: 20,000 queued at
            # once cost it seconds per thousand)
            for qos, count in ((0, n), (1, min(n, 1000))):
                counter = Counter(broker.port, f"bench/paho{qos}")
                rows.append(("paho-mqtt 2.2.0", qos, count, bench_paho(broker, counter, count, qos)))
                counter.close()
                counter = Counter(broker.port, f"bench/aio{qos}")
                rows.append(("aiomqtt 2.5.1", qos, count, bench_aiomqtt(broker, counter, count, qos)))
                counter.close()
            print(f"\nmessages of {len(PAYLOAD)} bytes to mosquitto on 127.0.0.1, one subscriber\n")
            print(f"{'client':<18}{'QoS':>4}{'messages':>9}{'hand-over µs/msg':>18}{'delivered msg/s':>17}")
            for name, qos, count, r in rows:
                print(f"{name:<18}{qos:>4}{count:>9}{r['hand_us']:>18.1f}{r['per_s']:>17.0f}")
            outages = [
                ("paho-mqtt 2.2.0", paho_outage(broker, 2000)),
                ("aiomqtt 2.5.1", aiomqtt_outage(broker, 2000)),
            ]
            print("\nbroker stopped: 2000 publishes (QoS 0), then the broker started again after 2.5 s\n")
            print(
                f"{'client':<18}{'µs/publish while down':>22}{'refused':>9}{'back after s':>14}"
                "  reconnects by"
            )
            for (name, r), how in zip(
                outages, ("itself (its network thread)", "the caller's loop"), strict=True
            ):
                print(f"{name:<18}{r['down_us']:>22.1f}{r['refused']:>9.0f}{r['back_s']:>14.2f}  {how}")
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
