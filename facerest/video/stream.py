"""Live stream connections, opened under the same SSRF rules as image URLs.

Every protocol connects only to the address the URL's check resolved, and redirects and
credentials are handled here, once, for all of them (issue 28):

- HTTP(S) streams (MJPEG as multipart/x-mixed-replace, MPEG-TS, fragmented MP4...) are read
  through our own connection to the checked address, never a second DNS answer, and handed to
  FFmpeg as a file-like object.
- RTSP(S): FFmpeg's RTSP client talks to a relay on 127.0.0.1 (`RtspRelay`) that holds the one
  connection to the checked address (TLS verified against the URL's host for rtsps) and reads the
  camera's replies as they pass. FFmpeg follows an RTSP redirect to any address by itself (an
  allowed camera's 302 reached 127.0.0.1); the relay never passes one on. FFmpeg may open no
  other protocol (no UDP ports from `?udp` in a URL, no HTTP tunnel).
- A redirect of either protocol (HTTP 3xx, RTSP 3xx) is followed by `LiveConnection` like a new
  URL: checked, resolved and pinned again, at most FACEREST_URL_MAX_REDIRECTS times; credentials
  (`user:password@`) do not travel to another origin.
- A camera may send at most FACEREST_VIDEO_MAX_FRAME_BYTES between two decoded frames
  (`FrameBytes`): one endless frame (an MJPEG part declaring 2 GB) grew memory at the camera's
  rate until it stopped.
- Credentials are sent to the camera and shown nowhere: job descriptions, events, errors and log
  lines name the URL without them (`shown_url`), and FFmpeg's messages, which name the URL it
  opened, are reduced to their reason (`LiveConnection.describe`).

Private and loopback addresses are refused unless FACEREST_VIDEO_STREAM_ALLOWLIST names them
(cameras on the operator's LAN).
"""

from __future__ import annotations

import contextlib
import io
import logging
import socket
import ssl
import struct
import threading
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx

from facerest.config import Settings
from facerest.errors import FaceRestError, UrlFetchFailed, UrlRefused, VideoDecodeError
from facerest.imaging.sources import FetchPolicy, IPAddress, resolve_url, tls_context
from facerest.video.decode import LIVE_FORMATS, Clock, Sampling, VideoLimits, VideoSource

log = logging.getLogger(__name__)

STREAM_SCHEMES = ("http", "https", "rtsp", "rtsps")
#: the protocols FFmpeg's RTSP client may open: its TCP connection (to the relay), nothing else
RTSP_PROTOCOLS = "rtsp,tcp"
#: the longest reply head (status line and headers) a camera may send the relay
MAX_RTSP_HEAD = 65536
_REDIRECT_STATUSES = {301, 302, 303, 307, 308}


def stream_policy(settings: Settings) -> FetchPolicy:
    return FetchPolicy(
        max_bytes=settings.video_max_bytes,
        timeout_s=settings.url_timeout_s,
        max_redirects=settings.url_max_redirects,
        allowlist=tuple(settings.video_stream_allowlist),
        allowlist_setting="FACEREST_VIDEO_STREAM_ALLOWLIST",
    )


def check_stream_url(url: str, settings: Settings) -> list[IPAddress]:
    """The addresses the stream may be read from; raises UrlRefused for what is not allowed."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UrlRefused(f"malformed URL: {exc}") from exc
    if parts.scheme not in STREAM_SCHEMES:
        raise UrlRefused(
            f"streams are read over {', '.join(STREAM_SCHEMES)}, not {parts.scheme or 'a path'!r}"
        )
    if parts.scheme.startswith("rtsp"):
        # the same host checks, spelled as an http URL; the port defaults to RTSP's
        port = port or _default_port(parts.scheme)
        probe = urlunsplit(("http", f"{_host_literal(parts.hostname or '')}:{port}", "/", "", ""))
        return resolve_url(probe, stream_policy(settings))
    return resolve_url(url, stream_policy(settings))


def shown_url(url: str) -> str:
    """`url` without its credentials: what job descriptions, events, errors and logs show."""
    try:
        parts = urlsplit(url)
        if not (parts.username or parts.password):
            return url
        netloc = parts.netloc.rpartition("@")[2]
    except ValueError:
        return "(a malformed URL)"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def redact(text: str, url: str) -> str:
    """`text` with the URL's credentials taken out, wherever they appear in it."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return text
    for secret in (parts.netloc.rpartition("@")[0], parts.password, parts.username):
        if secret:
            text = text.replace(secret, "***")
    return text


def follow_redirect(current: str, location: str) -> str:
    """The URL a redirect points to (relative to `current`); the caller checks it as it checks
    any stream URL. Credentials of `current` go with it to the same origin only."""
    target = urljoin(current, location.strip())
    try:
        here, there = urlsplit(current), urlsplit(target)
        same_origin = (here.scheme, here.hostname, here.port) == (there.scheme, there.hostname, there.port)
    except ValueError as exc:
        raise UrlRefused(f"the stream redirected to a malformed URL: {exc}") from exc
    if there.scheme not in STREAM_SCHEMES:
        raise UrlRefused(f"the stream redirected to a {there.scheme or 'relative'!r} URL, not a stream")
    userinfo = here.netloc.rpartition("@")[0]
    if same_origin and userinfo and "@" not in there.netloc:
        return urlunsplit((there.scheme, f"{userinfo}@{there.netloc}", there.path, there.query, ""))
    return target


def _default_port(scheme: str) -> int:
    return {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443}[scheme]


def _host_literal(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class FrameBytes:
    """The bytes a live stream sent since the last decoded frame, against their limit: past it
    `add` raises OSError, which ends the connection (FFmpeg would buffer the frame for ever)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0

    def add(self, n: int) -> None:
        self.count += n
        if self.count > self.limit:
            raise OSError(
                f"the camera sent more than {self.limit} bytes without a frame "
                "(FACEREST_VIDEO_MAX_FRAME_BYTES)"
            )

    def reset(self) -> None:
        self.count = 0


class StreamRedirected(Exception):
    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.location = location


@dataclass
class OpenedStream:
    """What FFmpeg reads: a file-like object (HTTP) or the relay's URL (RTSP), with the demuxers
    and protocols it may use for it."""

    source: io.RawIOBase | str
    fmt: str | None
    options: dict[str, str]
    formats: tuple[str, ...]
    protocols: str
    frame_bytes: FrameBytes
    response: httpx.Response | None = None
    client: httpx.Client | None = None
    relay: RtspRelay | None = None

    @property
    def redirect(self) -> str | None:
        return None if self.relay is None else self.relay.redirect

    def close(self) -> None:
        if self.response is not None:
            _shutdown(self.response)
            self.response.close()
        if self.client is not None:
            self.client.close()
        if self.relay is not None:
            self.relay.close()


def open_stream(url: str, settings: Settings, read_timeout_s: float = 10.0) -> OpenedStream:
    """One connection to `url`, to its checked address. StreamRedirected for an HTTP redirect;
    an RTSP one surfaces when FFmpeg talks through the relay (`OpenedStream.redirect`)."""
    addresses = check_stream_url(url, settings)
    parts = urlsplit(url)
    shown = shown_url(url)
    formats = (*settings.video_formats, *LIVE_FORMATS)
    frame_bytes = FrameBytes(settings.video_max_frame_bytes)
    if parts.scheme.startswith("rtsp"):
        port = parts.port or _default_port(parts.scheme)
        tls_host = parts.hostname if parts.scheme == "rtsps" else None
        relay = RtspRelay(addresses[0], port, tls_host, settings.url_timeout_s, read_timeout_s, frame_bytes)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo + '@' if userinfo else ''}127.0.0.1:{relay.port}"
        relayed = urlunsplit(("rtsp", netloc, parts.path, parts.query, ""))
        options = {"rtsp_transport": "tcp", "timeout": str(int(read_timeout_s * 1_000_000))}
        return OpenedStream(relayed, "rtsp", options, ("rtsp",), RTSP_PROTOCOLS, frame_bytes, relay=relay)
    target = httpx.URL(url)
    pinned_url = target.copy_with(host=str(addresses[0]))
    headers = {"Host": target.netloc.decode("ascii"), "Accept-Encoding": "identity"}
    extensions: dict[str, object] = {}
    if target.scheme == "https":
        extensions["sni_hostname"] = target.raw_host.decode("ascii")
    client = httpx.Client(
        follow_redirects=False, trust_env=False, verify=tls_context(stream_policy(settings))
    )
    try:
        request = client.build_request(
            "GET",
            pinned_url,
            headers=headers,
            timeout=httpx.Timeout(settings.url_timeout_s, read=read_timeout_s),
            extensions=extensions,
        )
        response = client.send(request, stream=True)
    except httpx.HTTPError as exc:
        client.close()
        raise UrlFetchFailed(f"{shown} could not be opened: {redact(str(exc), url)}") from exc
    if response.status_code in _REDIRECT_STATUSES and "location" in response.headers:
        location = response.headers["location"]
        response.close()
        client.close()
        raise StreamRedirected(location)
    if response.status_code != 200:
        response.close()
        client.close()
        raise UrlFetchFailed(f"{shown} answered HTTP {response.status_code}")
    media = response.headers.get("content-type", "").split(";")[0].strip().lower()
    fmt = "mpjpeg" if media == "multipart/x-mixed-replace" else None
    reader = _ResponseReader(response, frame_bytes)
    return OpenedStream(reader, fmt, {}, formats, "none", frame_bytes, response, client)


class LiveConnection:
    """A live stream opened for decoding: connects (following redirects, each checked), opens
    FFmpeg on it, and can be closed from another thread to wake a blocked read."""

    def __init__(self, url: str, settings: Settings) -> None:
        self.url = url
        self.settings = settings
        self.stream: OpenedStream | None = None
        self.relay_error: str | None = None  # why the last RTSP relay ended, if it saw why
        self._closed = threading.Event()
        self._lock = threading.Lock()

    def open(self, limits: VideoLimits, sampling: Sampling, clock: Clock | None = None) -> VideoSource:
        url = self.url
        self.relay_error = None
        for _ in range(self.settings.url_max_redirects + 1):
            try:
                stream = open_stream(url, self.settings)
            except StreamRedirected as exc:
                url = self._next(url, exc.location)
                continue
            with self._lock:
                if self._closed.is_set():
                    stream.close()
                    raise UrlFetchFailed("the stream was closed")
                self.stream = stream
            try:
                return VideoSource(
                    stream.source,
                    limits,
                    sampling,
                    fmt=stream.fmt,
                    live=True,
                    clock=clock,
                    options=stream.options,
                    formats=stream.formats,
                    protocols=stream.protocols,
                    on_frame=stream.frame_bytes.reset,
                )
            except VideoDecodeError:
                redirect = stream.redirect
                self.close_stream()
                if redirect is None:
                    raise
                url = self._next(url, redirect)
        raise UrlFetchFailed(
            f"{shown_url(self.url)} redirected more than {self.settings.url_max_redirects} times"
        )

    def _next(self, current: str, location: str) -> str:
        target = follow_redirect(current, location)
        log.info("stream %s redirects to %s", shown_url(current), shown_url(target))
        return target

    def describe(self, exc: BaseException) -> str:
        """A reason for `exc` that is safe to show: no credentials, no FFmpeg file names."""
        if isinstance(exc, FaceRestError):
            text = exc.detail
        else:
            text = getattr(exc, "strerror", None) or str(exc)
            text = text.split(": '")[0]  # PyAV appends the file name it opened: our URL
        return redact(text, self.url)[:300]

    def close_stream(self) -> None:
        with self._lock:
            stream, self.stream = self.stream, None
        if stream is not None:
            stream.close()
            if stream.relay is not None and stream.relay.error:
                self.relay_error = redact(stream.relay.error, self.url)

    def close(self) -> None:
        """Close the connection (also from another thread: a blocked read wakes)."""
        self._closed.set()
        self.close_stream()


class _ResponseReader(io.RawIOBase):
    """An HTTP response body as a readable, unseekable file."""

    def __init__(self, response: httpx.Response, frame_bytes: FrameBytes) -> None:
        self._chunks = response.iter_raw()
        self._buffer = b""
        self._frame_bytes = frame_bytes

    def readable(self) -> bool:
        return True

    def readinto(self, target: memoryview) -> int:  # type: ignore[override]
        while not self._buffer:
            try:
                self._buffer = next(self._chunks)
            except StopIteration:
                return 0
            except (httpx.HTTPError, httpx.StreamError) as exc:  # StreamError: closed by a stop
                raise OSError(f"the stream broke: {exc}") from exc
            self._frame_bytes.add(len(self._buffer))
        n = min(len(target), len(self._buffer))
        target[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n


def _shutdown(response: httpx.Response) -> None:
    """Wake a read blocked on the response's socket (the job is being stopped)."""
    stream = response.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


class RedirectSeen(Exception):
    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.location = location


@dataclass
class RtspReplies:
    """What a camera sends, split into RTSP messages and interleaved binary frames (`$`, channel,
    16-bit length: RFC 2326 10.12). Messages pass unchanged, except a redirect reply (3xx), which
    raises RedirectSeen with its Location instead of reaching FFmpeg."""

    buffer: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> bytes:
        """The bytes that may go on to FFmpeg now (whole frames and messages only)."""
        self.buffer += data
        out = bytearray()
        while self.buffer:
            if self.buffer[0] == 0x24:  # '$': an interleaved frame
                if len(self.buffer) < 4:
                    break
                end = 4 + struct.unpack(">H", self.buffer[2:4])[0]
            else:
                head_end = self.buffer.find(b"\r\n\r\n")
                if head_end < 0:
                    if len(self.buffer) > MAX_RTSP_HEAD:
                        raise OSError(f"the camera sent a reply head of more than {MAX_RTSP_HEAD} bytes")
                    break
                head = bytes(self.buffer[:head_end]).decode("latin-1")
                lines = head.split("\r\n")
                fields = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    fields[name.strip().lower()] = value.strip()
                status = lines[0].split(" ", 2)
                code = status[1] if len(status) > 1 and status[0].startswith("RTSP/") else ""
                if len(code) == 3 and code.isascii() and code.isdigit() and code.startswith("3"):
                    raise RedirectSeen(fields.get("location", ""))
                length = fields.get("content-length", "0")
                if not (length.isascii() and length.isdigit() and len(length) < 9):
                    raise OSError("the camera sent a reply with a malformed Content-Length")
                end = head_end + 4 + int(length)
            if len(self.buffer) < end:
                break
            out += self.buffer[:end]
            del self.buffer[:end]
        return bytes(out)


class RtspRelay:
    """A loopback port for FFmpeg's RTSP client, relayed to one checked address.

    It accepts one connection (then stops listening), connects to `address`:`port` (TLS
    verified against `tls_host` when given) and copies bytes both ways, reading the camera's side
    with RtspReplies: a redirect ends the relay with `redirect` set, for LiveConnection to check
    and follow."""

    def __init__(
        self,
        address: IPAddress,
        port: int,
        tls_host: str | None,
        connect_timeout_s: float,
        read_timeout_s: float,
        frame_bytes: FrameBytes,
    ) -> None:
        self.address, self.remote_port, self.tls_host = address, port, tls_host
        self._frame_bytes = frame_bytes
        self.redirect: str | None = None
        self.error: str | None = None
        self._connect_timeout_s = connect_timeout_s
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(1)
        self._listener.settimeout(read_timeout_s)
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = [self._listener]
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._run, name=f"facerest-rtsp-relay-{self.port}", daemon=True).start()

    def _run(self) -> None:
        try:
            client, _ = self._listener.accept()
            self._keep(client)
            self._listener.close()
            upstream = socket.create_connection(
                (str(self.address), self.remote_port), self._connect_timeout_s
            )
            self._keep(upstream)
            upstream.settimeout(None)
            if self.tls_host is not None:
                context = tls_context(FetchPolicy(max_bytes=0, timeout_s=self._connect_timeout_s))
                upstream = context.wrap_socket(upstream, server_hostname=self.tls_host)
                self._keep(upstream)
            client.settimeout(None)
        except (OSError, ssl.SSLError) as exc:
            self.error = f"the camera could not be reached: {exc}"
            self.close()
            return
        threading.Thread(target=self._copy, args=(client, upstream), daemon=True).start()
        self._relay_replies(upstream, client)

    def _keep(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            closed = self._closed
        if closed:
            self.close()

    def _copy(self, source: socket.socket, target: socket.socket) -> None:
        """FFmpeg's requests to the camera, unchanged."""
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        self.close()

    def _relay_replies(self, source: socket.socket, target: socket.socket) -> None:
        replies = RtspReplies()
        try:
            while data := source.recv(65536):
                self._frame_bytes.add(len(data))
                target.sendall(replies.feed(data))
        except RedirectSeen as seen:
            self.redirect = seen.location or None
            if self.redirect is None:
                self.error = "the camera redirected without a Location"
        except OSError as exc:
            self.error = str(exc)
        self.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
