"""Live stream connections, opened under the same SSRF rules as image URLs.

HTTP(S) streams (MJPEG as multipart/x-mixed-replace, MPEG-TS, fragmented MP4...) are read through
our own connection to the address the URL's check resolved, never a second DNS answer, and handed
to FFmpeg as a file-like object. RTSP goes through FFmpeg's own client, pointed at the checked
address. Private and loopback addresses are refused unless FACEREST_VIDEO_STREAM_ALLOWLIST names
them (cameras on the operator's LAN).
"""

from __future__ import annotations

import contextlib
import io
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx

from facerest.config import Settings
from facerest.errors import UrlFetchFailed, UrlRefused
from facerest.imaging.sources import FetchPolicy, IPAddress, resolve_url

STREAM_SCHEMES = ("http", "https", "rtsp", "rtsps")


def stream_policy(settings: Settings) -> FetchPolicy:
    return FetchPolicy(
        max_bytes=settings.video_max_bytes,
        timeout_s=settings.url_timeout_s,
        allowlist=tuple(settings.video_stream_allowlist),
    )


def check_stream_url(url: str, settings: Settings) -> list[IPAddress]:
    """The addresses the stream may be read from; raises UrlRefused for what is not allowed."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise UrlRefused(f"malformed URL: {exc}") from exc
    if parts.scheme not in STREAM_SCHEMES:
        raise UrlRefused(
            f"streams are read over {', '.join(STREAM_SCHEMES)}, not {parts.scheme or 'a path'!r}"
        )
    if parts.scheme.startswith("rtsp"):
        # the same host checks, spelled as an http URL; the port defaults to RTSP's
        port = parts.port or (322 if parts.scheme == "rtsps" else 554)
        probe = urlunsplit(("http", f"{_host_literal(parts.hostname or '')}:{port}", "/", "", ""))
        return resolve_url(probe, stream_policy(settings))
    return resolve_url(url, stream_policy(settings))


def _host_literal(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@dataclass
class OpenedStream:
    """What FFmpeg reads: a file-like object (HTTP) or a URL it connects to itself (RTSP)."""

    source: io.RawIOBase | str
    fmt: str | None
    options: dict[str, str]
    response: httpx.Response | None = None
    client: httpx.Client | None = None

    def close(self) -> None:
        if self.response is not None:
            _shutdown(self.response)
            self.response.close()
        if self.client is not None:
            self.client.close()


def open_stream(url: str, settings: Settings, read_timeout_s: float = 10.0) -> OpenedStream:
    addresses = check_stream_url(url, settings)
    parts = urlsplit(url)
    if parts.scheme.startswith("rtsp"):
        netloc = _host_literal(str(addresses[0]))
        if parts.port:
            netloc += f":{parts.port}"
        if parts.username:
            netloc = f"{parts.username}:{parts.password or ''}@{netloc}"
        pinned = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
        options = {"rtsp_transport": "tcp", "timeout": str(int(read_timeout_s * 1_000_000))}
        return OpenedStream(pinned, "rtsp", options)
    target = httpx.URL(url)
    pinned_url = target.copy_with(host=str(addresses[0]))
    headers = {"Host": target.netloc.decode("ascii"), "Accept-Encoding": "identity"}
    extensions: dict[str, object] = {}
    if target.scheme == "https":
        extensions["sni_hostname"] = target.raw_host.decode("ascii")
    client = httpx.Client(follow_redirects=False, trust_env=False)
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
        raise UrlFetchFailed(f"{url} could not be opened: {exc}") from exc
    if response.status_code != 200:
        response.close()
        client.close()
        raise UrlFetchFailed(f"{url} answered HTTP {response.status_code}")
    media = response.headers.get("content-type", "").split(";")[0].strip().lower()
    fmt = "mpjpeg" if media == "multipart/x-mixed-replace" else None
    return OpenedStream(_ResponseReader(response), fmt, {}, response, client)


class _ResponseReader(io.RawIOBase):
    """An HTTP response body as a readable, unseekable file."""

    def __init__(self, response: httpx.Response) -> None:
        self._chunks = response.iter_raw()
        self._buffer = b""

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
