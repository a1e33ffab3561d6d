"""Fake cameras on 127.0.0.x for the stream tests (issue 28): an RTSP server that streams H.264
over RTP interleaved in its TCP connection (RFC 2326 10.12, RFC 6184), or answers a redirect or
an authentication challenge; an HTTP camera (MJPEG as multipart, or a redirect); a UDP sender of
the same RTP packets; and a listener that counts who connects to it."""

from __future__ import annotations

import base64
import contextlib
import http.server
import itertools
import random
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np
import psutil

RTP_CLOCK = 90_000
MAX_PAYLOAD = 1400


def h264_access_units(
    frames: int = 20, size: tuple[int, int] = (160, 96), fps: int = 10
) -> list[list[bytes]]:
    """`frames` frames of a moving gradient as H.264 access units, each a list of NAL units
    (start codes removed), with SPS and PPS repeated before every key frame (every 10 frames)."""
    width, height = size
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
    encoder.time_base = Fraction(1, fps)
    encoder.options = {
        "preset": "ultrafast",
        "tune": "zerolatency",
        "x264-params": "keyint=10:min-keyint=10:repeat-headers=1:bframes=0",
    }
    ramp = np.tile(np.linspace(0, 255, width, dtype=np.float32), (height, 1))
    units: list[list[bytes]] = []
    for n in range(frames):
        grey = ((ramp + n * 12) % 256).astype(np.uint8)
        frame = av.VideoFrame.from_ndarray(np.dstack([grey, grey, grey]), format="bgr24")
        frame.pts = n
        units += [_nal_units(bytes(p)) for p in encoder.encode(frame)]
    units += [_nal_units(bytes(p)) for p in encoder.encode(None)]
    return units


def _nal_units(annex_b: bytes) -> list[bytes]:
    parts = annex_b.replace(b"\x00\x00\x00\x01", b"\x00\x00\x01").split(b"\x00\x00\x01")
    return [p.rstrip(b"\x00") for p in parts if p]


@dataclass
class RtpPacketizer:
    """RTP packets of H.264 access units: single NAL unit packets, FU-A past MAX_PAYLOAD."""

    payload_type: int = 96
    ssrc: int = field(default_factory=lambda: random.getrandbits(32))
    sequence: int = 0

    def packets(self, unit: list[bytes], timestamp: int) -> list[bytes]:
        payloads: list[bytes] = []
        for nal in unit:
            if len(nal) <= MAX_PAYLOAD:
                payloads.append(nal)
                continue
            header, body = nal[0], nal[1:]
            indicator = (header & 0xE0) | 28
            chunks = [body[i : i + MAX_PAYLOAD] for i in range(0, len(body), MAX_PAYLOAD)]
            for k, chunk in enumerate(chunks):
                fu = (header & 0x1F) | (0x80 if k == 0 else 0) | (0x40 if k == len(chunks) - 1 else 0)
                payloads.append(bytes([indicator, fu]) + chunk)
        out = []
        for k, payload in enumerate(payloads):
            marker = 0x80 if k == len(payloads) - 1 else 0
            head = struct.pack(
                ">BBHII", 0x80, marker | self.payload_type, self.sequence & 0xFFFF, timestamp, self.ssrc
            )
            self.sequence += 1
            out.append(head + payload)
        return out


SDP = (
    "v=0\r\no=- 0 0 IN IP4 {host}\r\ns=fake camera\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\na=control:*\r\n"
    "m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=fmtp:96 packetization-mode=1\r\n"
    "a=control:trackID=0\r\n"
)


class RtspCamera:
    """An RTSP server on `host`:port streaming `units` (looped, `fps` a second) over RTP in its
    TCP connection; or answering DESCRIBE with `redirect` (a 302 to that URL), or a 401 unless
    the request carries `credentials` ("user:password", Basic)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        units: list[list[bytes]] | None = None,
        fps: int = 10,
        redirect: str | None = None,
        credentials: str | None = None,
        not_found: bool = False,
    ) -> None:
        self.units = units if units is not None else h264_access_units()
        self.fps = fps
        self.redirect = redirect
        self.credentials = credentials
        self.not_found = not_found
        self.requests: list[str] = []  # "METHOD url" of every request, in order
        self.connections = 0
        camera = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                camera._serve(self.request)

        self._server = socketserver.ThreadingTCPServer((host, 0), Handler, bind_and_activate=False)
        self._server.daemon_threads = True
        self._server.allow_reuse_address = True
        self._server.server_bind()
        self._server.server_activate()
        self.host, self.port = self._server.server_address[:2]
        self._stop = threading.Event()
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def url(self, path: str = "/live", userinfo: str = "") -> str:
        return f"rtsp://{userinfo + '@' if userinfo else ''}{self.host}:{self.port}{path}"

    def close(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> RtspCamera:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _serve(self, sock: socket.socket) -> None:
        self.connections += 1
        lock = threading.Lock()
        playing = threading.Event()
        reader = sock.makefile("rb")
        try:
            while not self._stop.is_set():
                line = reader.readline(8192)
                if not line:
                    return
                if not line.strip():
                    continue
                method, url, _ = line.decode("latin-1").split(" ", 2)
                headers = {}
                while (header := reader.readline(8192).decode("latin-1").strip()) != "":
                    name, _, value = header.partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = reader.read(int(headers.get("content-length", "0")))
                del body
                self.requests.append(f"{method} {url}")
                answer = self._answer(method, url, headers)
                with lock:
                    sock.sendall(answer)
                if method == "PLAY" and answer.startswith(b"RTSP/1.0 200") and not playing.is_set():
                    playing.set()
                    threading.Thread(target=self._stream, args=(sock, lock), daemon=True).start()
                if method == "TEARDOWN":
                    return
        except (OSError, ValueError):
            return
        finally:
            with contextlib.suppress(OSError):
                sock.close()

    def _answer(self, method: str, url: str, headers: dict[str, str]) -> bytes:
        cseq = headers.get("cseq", "0")

        def reply(status: str, fields: dict[str, str] | None = None, body: str = "") -> bytes:
            lines = [f"RTSP/1.0 {status}", f"CSeq: {cseq}"] + [f"{k}: {v}" for k, v in (fields or {}).items()]
            return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()

        session = {"Session": "12345678"}
        if method == "OPTIONS":
            return reply("200 OK", {"Public": "OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN, GET_PARAMETER"})
        if method == "DESCRIBE":
            if self.credentials is not None:
                wanted = "Basic " + base64.b64encode(self.credentials.encode()).decode()
                if headers.get("authorization", "") != wanted:
                    return reply("401 Unauthorized", {"WWW-Authenticate": 'Basic realm="cam"'})
            if self.not_found:
                return reply("404 Not Found")
            if self.redirect is not None:
                return reply("302 Moved Temporarily", {"Location": self.redirect})
            body = SDP.format(host=self.host)
            fields = {
                "Content-Base": url if url.endswith("/") else url + "/",
                "Content-Type": "application/sdp",
                "Content-Length": str(len(body)),
            }
            return reply("200 OK", fields, body)
        if method == "SETUP":
            transport = "RTP/AVP/TCP;unicast;interleaved=0-1"
            return reply("200 OK", {"Transport": transport, "Session": "12345678;timeout=60"})
        if method in ("PLAY", "GET_PARAMETER", "TEARDOWN"):
            return reply("200 OK", session)
        return reply("501 Not Implemented")

    def _stream(self, sock: socket.socket, lock: threading.Lock) -> None:
        packetizer = RtpPacketizer()
        started = time.monotonic()
        for n in itertools.count():
            if self._stop.is_set():
                return
            unit = self.units[n % len(self.units)]
            timestamp = int(n / self.fps * RTP_CLOCK) & 0xFFFFFFFF
            try:
                with lock:
                    for packet in packetizer.packets(unit, timestamp):
                        sock.sendall(b"$\x00" + struct.pack(">H", len(packet)) + packet)
            except OSError:
                return
            time.sleep(max(0.0, started + (n + 1) / self.fps - time.monotonic()))


def send_rtp(host: str, port: int, seconds: float, fps: int = 10) -> int:
    """The fake camera's RTP packets sent over UDP to `host`:`port` for `seconds`; how many."""
    units = h264_access_units()
    packetizer = RtpPacketizer()
    sent = 0
    started = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for n in itertools.count():
            if time.monotonic() - started > seconds:
                return sent
            for packet in packetizer.packets(units[n % len(units)], int(n / fps * RTP_CLOCK)):
                sock.sendto(packet, (host, port))
                sent += 1
            time.sleep(max(0.0, started + (n + 1) / fps - time.monotonic()))
    return sent


class Listener:
    """A TCP port on `host` that counts the connections made to it (and closes them)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket()
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.host, self.port = self.sock.getsockname()[:2]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class HttpCamera:
    """An HTTP camera on `host`: `/mjpeg` streams `frames` (JPEG bytes, looped, `fps` a second)
    as multipart/x-mixed-replace; `/redirect` answers 302 to `redirect`; `/custom` is answered by
    `serve(handler)` when set; anything else 503."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        frames: list[bytes] | None = None,
        fps: int = 10,
        redirect: str | None = None,
    ) -> None:
        camera = self
        self.frames = frames or []
        self.requests: list[str] = []
        self.serve: Callable[[http.server.BaseHTTPRequestHandler], None] | None = None

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                camera.requests.append(self.path)
                if self.path.startswith("/custom") and camera.serve is not None:
                    camera.serve(self)
                    return
                if self.path.startswith("/redirect") and redirect is not None:
                    self.send_response(302)
                    self.send_header("Location", redirect)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if not self.path.startswith("/mjpeg") or not camera.frames:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                try:
                    for n in itertools.count():
                        jpeg = camera.frames[n % len(camera.frames)]
                        self.wfile.write(
                            b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg)
                        )
                        self.wfile.write(jpeg + b"\r\n")
                        time.sleep(1 / fps)
                except OSError:
                    return

        self._server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self._server.daemon_threads = True
        self.host, self.port = self._server.server_address[:2]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def url(self, path: str = "/mjpeg", userinfo: str = "") -> str:
        return f"http://{userinfo + '@' if userinfo else ''}{self.host}:{self.port}{path}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> HttpCamera:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def udp_ports_bound(pid: int) -> Iterator[set[int]]:
    """Yields a set that a thread fills, while the block runs, with the UDP ports process `pid`
    has bound (read from the system's socket table, not by binding them)."""
    bound: set[int] = set()
    stop = threading.Event()
    process = psutil.Process(pid)

    def watch() -> None:
        while not stop.is_set():
            with contextlib.suppress(psutil.Error):
                bound.update(c.laddr.port for c in process.net_connections(kind="udp") if c.laddr)
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield bound
    finally:
        stop.set()
        thread.join(2)
