"""The HTTP/1.1 connection protocol uvicorn runs for us, with the limits uvicorn leaves open.

What uvicorn 0.54 enforces by itself (read in its source): `timeout_keep_alive` (idle time after a
response) and, with the h11 parser, `h11_max_incomplete_event_size` (h11 refuses a request head
that outgrows it). What it does not: with httptools (its default when installed) head and URL
size are unbounded (a 64 MiB header was read for 9 s and answered 200); a connection that never
sends a byte, or sends half a head, stays open forever (the keep-alive timer only starts after a
response); `limit_concurrency` answers 503 only once a whole request head has been read, so idle
connections are never refused; and h11's oversize error goes out as a plain 400.

So the service runs uvicorn's own h11 protocol (h11 bounds the head while it is buffered, before a
byte reaches the app or the API key check) with what is missing added at the connection level:

- a head larger than `max_header_bytes` -> 431, a request line with no end within
  `max_request_line_bytes` (or a longer target) -> 414; both close the connection;
- the whole head must arrive within `header_timeout_s` of the connection (or of its first byte
  after a keep-alive pause): else 408 and close, or just close when nothing came;
- a body that pauses longer than `body_timeout_s` (while the server is reading it) is cut off;
- past `max_connections` open connections a new one is answered 503 and closed at once;
- a request answered before its body was read (401, 413, 503) ends the connection, rather than
  uvicorn reading and dropping a body of any declared size.

Pipelined requests are answered in order by uvicorn's h11 protocol, also when the client shuts
its side of the connection after sending them (uvicorn closed then, answering none), and after a
request answered before its small body was read (the body is read and dropped, see
`drains_unread_body`, instead of the connection ending with the requests behind it unanswered).

Before the app sees a request (issue 28): an HTTP version other than 1.0/1.1 (`HTTP/9.9`, the
HTTP/2 preface `PRI * HTTP/2.0`) is 505, a method the service has no use for (`CONNECT`,
`TRACE`, ...) 501, a header value with a control character 400, all closing the connection; a
chunk declared larger than the body limit is 413 at once (h11 would wait for its 2^72 bytes).
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

if TYPE_CHECKING:
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    from facerest.config import Settings


# how long, and for how many more bytes, a refused connection is kept half-open so that the
# client reads our answer
LINGER_S = 2.0
LINGER_BYTES = 1 << 20

#: the methods some route or middleware of the service answers; others are 501 before the app
SERVED_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
HTTP_VERSIONS = frozenset({"1.0", "1.1"})
# C0 controls but horizontal tab, and DEL: h11 lets every byte but NUL and whitespace through
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_DECIMAL = re.compile(r"[0-9]{1,18}")


def decimal_header(value: str | bytes | None) -> int | None:
    """A header's non-negative decimal number (Content-Length, Last-Event-ID), or None when it is
    not one: ASCII digits only, at most 18 of them. `str.isdigit` accepts other Unicode digits
    that `int` refuses ("²"), and `int` refuses more than 4300 digits: both raised (500s)."""
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    return int(text) if _DECIMAL.fullmatch(text) else None


def drains_unread_body(content_length: str | bytes | None, chunked: bool) -> bool:
    """Whether a body left unread by an early answer is read and dropped, keeping the connection
    (and the requests pipelined behind it), rather than ending the connection: a declared length
    of at most LINGER_BYTES. One rule for the middleware's `Connection: close` and for
    `on_response_complete` below, which disagreed: a 404 to a POST of 5 bytes dropped the request
    behind it."""
    declared = decimal_header(content_length)
    return not chunked and declared is not None and declared <= LINGER_BYTES


@dataclass(frozen=True)
class HttpLimits:
    max_header_bytes: int
    max_request_line_bytes: int
    header_timeout_s: float
    body_timeout_s: float
    keep_alive_timeout_s: float
    max_connections: int
    max_body_bytes: int

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpLimits:
        return cls(
            max_header_bytes=settings.max_header_bytes,
            max_request_line_bytes=settings.max_request_line_bytes,
            header_timeout_s=settings.header_timeout_s,
            body_timeout_s=settings.body_timeout_s,
            keep_alive_timeout_s=settings.keep_alive_timeout_s,
            max_connections=settings.max_connections,
            max_body_bytes=settings.max_body_bytes,
        )


def _error_json(detail: str, code: str) -> bytes:
    return json.dumps({"detail": detail, "code": code}).encode()


def _canned(status: int, reason: str, detail: str, code: str) -> bytes:
    """A complete response written straight to the socket (no request cycle exists yet)."""
    body = _error_json(detail, code)
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"connection: close\r\n\r\n%s" % (status, reason.encode(), len(body), body)
    )


class _GentleClose:
    """The transport as uvicorn's request cycle sees it: a close while the client is still sending
    a body we answered early (a 413 on a declared length, a 401) becomes the gentle close of
    `_refuse`, so the unread input does not turn into a reset that destroys our answer."""

    def __init__(self, transport: asyncio.Transport, protocol: LimitedH11Protocol) -> None:
        self._transport = transport
        self._protocol = protocol

    def close(self) -> None:
        protocol = self._protocol
        if not protocol._refused and protocol.conn.their_state is h11.SEND_BODY:
            protocol._refuse(b"")
        else:
            self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class LimitedH11Protocol(H11Protocol):
    """uvicorn's H11Protocol plus head/URL size answers, read timeouts and a connection cap."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: HttpLimits,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits
        self.app = _HeadLimit(self.app, limits)
        self._read_timer: asyncio.TimerHandle | None = None
        self._refused = False
        self._dropped = 0
        self._client_done = False  # the client half-closed: close once its requests are answered

    def _refuse(self, answer: bytes) -> None:
        """Answer, then close gently: closing a socket with unread input makes the kernel send a
        reset, which can destroy the answer before the client reads it. So the write side is
        shut, what still arrives is dropped, and the socket closes when the client closes or
        after LINGER_S at most."""
        if self._refused:
            return
        self._refused = True
        self._disarm()
        self._unset_keepalive_if_required()
        if answer:
            self.transport.write(answer)
        if self.transport.can_write_eof():
            self.transport.write_eof()
            # uvicorn pauses reading while an unread body passes 64 KiB: the client would then
            # block sending it, never read our answer, and get the reset at LINGER_S instead
            self.flow.resume_reading()
            self._read_timer = self.loop.call_later(LINGER_S, self.transport.close)
        else:
            self.transport.close()

    def eof_received(self) -> bool | None:
        """The client shut its sending side (as a script does after writing its requests).

        uvicorn lets asyncio close the connection then, so requests already received went
        unanswered (issue 14: two pipelined requests, then a half-close: none answered). Here
        the connection stays open until every complete request is answered; a request whose
        head or body can no longer complete is dropped with the connection."""
        if self._refused:
            self.transport.close()
            return None
        answering = self.cycle is not None and not self.cycle.response_complete
        if answering and self.conn.their_state is not h11.SEND_BODY:
            self._client_done = True
            return True  # keep the transport open for our answer
        return None  # asyncio closes it

    def _close_if_client_done(self) -> None:
        if self._client_done and (self.cycle is None or self.cycle.response_complete):
            self.transport.close()

    # --- connection cap and read timers ---

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.transport = _GentleClose(transport, self)  # type: ignore[assignment]
        if len(self.connections) > self.limits.max_connections:
            self.connections.discard(self)
            self.logger.warning("refused a connection: %d open", len(self.connections))
            self._refuse(_canned(503, "Service Unavailable", "too many open connections", "overloaded"))
            return
        self._arm(self.limits.header_timeout_s, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            # what the client still sends after our answer is dropped, not parsed, up to a bound
            self._dropped += len(data)
            if self._dropped > LINGER_BYTES:
                self.transport.close()
            return
        if self.conn.their_state is h11.IDLE and self._read_timer is None:
            # the first byte of a head after a keep-alive pause: the head's own clock starts
            self._arm(self.limits.header_timeout_s, self._head_timed_out)
        super().data_received(data)
        self._refuse_oversized_chunk()
        self._follow_state()

    def _refuse_oversized_chunk(self) -> None:
        """413 as soon as a chunk declares more than the body limit: h11 (0.16) reads chunk sizes
        of up to 20 hex digits and waits for every byte, so a size line of 2^72 held the
        connection until the body timeout instead of an answer. h11 keeps the size of the chunk
        being read in its reader; without that attribute (another h11) the body limit still cuts
        the body as it arrives."""
        if self._refused or self.conn.their_state is not h11.SEND_BODY:
            return
        left = getattr(getattr(self.conn, "_reader", None), "_bytes_in_chunk", 0)
        if not isinstance(left, int) or left <= self.limits.max_body_bytes:
            return
        cycle = self.cycle
        if cycle is not None:
            if cycle.response_started:
                self.transport.close()
                return
            # the app stops waiting for the body (it reads a disconnect) and its answer is dropped
            cycle.disconnected = True
            cycle.message_event.set()
        self.logger.warning("refused a chunk of %d bytes", left)
        detail = f"request body is larger than the limit of {self.limits.max_body_bytes} bytes"
        self._refuse(_canned(413, "Content Too Large", detail, "body_too_large"))

    def on_response_complete(self) -> None:
        if (
            self.conn.their_state is h11.SEND_BODY
            and not self.transport.is_closing()
            and not self._small_body_left()
        ):
            # answered before the body was read (401, 413, 503): uvicorn would read and drop the
            # rest however large it is declared; the connection ends instead. A body declared
            # small is read and dropped as uvicorn does: ending the connection under a client
            # still sending makes some clients (httpx) report a disconnect instead of our answer
            self.server_state.total_requests += 1
            self._refuse(b"")
            return
        super().on_response_complete()
        self._close_if_client_done()  # after a pipelined request that was buffered has started
        # uvicorn's keep-alive timer now watches the idle connection (a pipelined request that
        # was already buffered may have started: _follow_state sees to its body)
        self._follow_state()

    def _small_body_left(self) -> bool:
        """The request declares a body of at most LINGER_BYTES (chunked bodies declare none)."""
        if self.cycle is None:
            return False
        headers = dict(self.cycle.scope["headers"])
        return drains_unread_body(headers.get(b"content-length"), b"transfer-encoding" in headers)

    def _follow_state(self) -> None:
        if self._refused:
            return  # the linger timer stays
        state = self.conn.their_state
        if self.transport.is_closing():
            self._disarm()
        elif state is h11.SEND_BODY:
            self._arm(self.limits.body_timeout_s, self._body_timed_out)  # re-armed per chunk
        elif state is not h11.IDLE or self.timeout_keep_alive_task is not None:
            self._disarm()

    def _arm(self, delay_s: float, callback: Any) -> None:
        self._disarm()
        self._read_timer = self.loop.call_later(delay_s, callback)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _head_timed_out(self) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        received = bool(self.conn.trailing_data[0])
        if received and self.conn.our_state is h11.IDLE:
            detail = f"the request head did not arrive within {self.limits.header_timeout_s:g} s"
            self._refuse(_canned(408, "Request Timeout", detail, "request_timeout"))
        else:
            self.transport.close()

    def _body_timed_out(self) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        if self.flow.read_paused:  # we stopped reading (the app is busy): not the client's pause
            self._arm(self.limits.body_timeout_s, self._body_timed_out)
            return
        self.logger.warning(
            "closed a connection whose request body paused over %g s", self.limits.body_timeout_s
        )
        self.transport.close()

    # --- head size: h11 stops buffering past max_incomplete_event_size and raises ---

    def send_400_response(self, msg: str) -> None:
        buffered, _ = self.conn.trailing_data
        # our side still IDLE: the error is in a head (in a body, uvicorn's answer stands)
        in_head = self.conn.our_state is h11.IDLE
        if not in_head or len(buffered) <= self.limits.max_header_bytes:
            super().send_400_response(msg)
            return
        line_end = buffered.find(b"\n", 0, self.limits.max_request_line_bytes + 2)
        if line_end < 0:
            answer = _canned(
                414,
                "URI Too Long",
                f"the request line is longer than {self.limits.max_request_line_bytes} bytes",
                "uri_too_long",
            )
        else:
            answer = _canned(
                431,
                "Request Header Fields Too Large",
                f"the request head is larger than {self.limits.max_header_bytes} bytes",
                "headers_too_large",
            )
        self.logger.warning("refused a request head over %d bytes", self.limits.max_header_bytes)
        self._refuse(answer)


class _HeadLimit:
    """The same limits for a head that came complete in one read: h11 bounds only a head still
    incomplete, so a 20 KiB head sent at once gets this far (before the app and its key check);
    and what h11 lets through that no request of ours may be (issue 28): another HTTP version,
    a method the service has no use for, a control character in a header value."""

    def __init__(self, app: Any, limits: HttpLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            target = len(scope["raw_path"]) + len(scope["query_string"]) + 1
            head = target + sum(len(name) + len(value) + 4 for name, value in scope["headers"])
            if target > self.limits.max_request_line_bytes:
                limit = self.limits.max_request_line_bytes
                await _answer(send, 414, f"the request line is longer than {limit} bytes", "uri_too_long")
                return
            if head > self.limits.max_header_bytes:
                limit = self.limits.max_header_bytes
                detail = f"the request head is larger than {limit} bytes"
                await _answer(send, 431, detail, "headers_too_large")
                return
            if scope["http_version"] not in HTTP_VERSIONS:
                detail = f"HTTP/{scope['http_version']} is not supported: this server speaks HTTP/1.1"
                await _answer(send, 505, detail, "http_version_not_supported")
                return
            if scope["method"] not in SERVED_METHODS:
                detail = f"the method {scope['method'][:32]} is not implemented by this server"
                await _answer(send, 501, detail, "method_not_implemented")
                return
            for name, value in scope["headers"]:
                if _CONTROL.search(value):
                    shown = name[:64].decode("latin-1")
                    await _answer(send, 400, f"the header {shown} holds a control character", "bad_input")
                    return
        await self.app(scope, receive, send)


async def _answer(send: Any, status: int, detail: str, code: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": _error_json(detail, code)})


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """What `uvicorn.run` / `uvicorn.Config` get for the limits (the protocol travels to workers
    by pickling, so it is a partial of a module-level class, not a class made here)."""
    import functools

    limits = HttpLimits.from_settings(settings)
    return {
        "http": functools.partial(LimitedH11Protocol, limits=limits),
        "h11_max_incomplete_event_size": limits.max_header_bytes,
        "timeout_keep_alive": limits.keep_alive_timeout_s,
    }
