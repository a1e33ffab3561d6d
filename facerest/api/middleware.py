"""One ASGI middleware for what every request goes through before any route: a request id,
API keys (who the request acts as: facerest/api/access.py), the body-size limit, an access log
line and the request metrics.

It is plain ASGI (not Starlette's BaseHTTPMiddleware) so that bodies stream through untouched and
an oversized body is cut off while it arrives, whatever route (JSON, msgpack, multipart) reads it.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from facerest.api.access import PRINCIPAL_KEY, Access
from facerest.api.errors import ERROR_CODE_KEY, error_body
from facerest.api.http_protocol import decimal_header, drains_unread_body
from facerest.api.responses import JSONResponse
from facerest.config import Settings
from facerest.errors import BodyTooLarge
from facerest.logs import request_id

log = logging.getLogger("facerest.access")

# Paths answered without an API key: readiness probes, and the API's own documentation (the
# schema holds nothing secret and the docs page is where a user enters the key).
OPEN_PATHS = frozenset({"/health", "/", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
# the console's page and static files (issue 29): the page is where the key is typed; every call
# it then makes to the API carries the key
CONSOLE_PATHS = frozenset({"/console", "/console/"})
CONSOLE_FILES = "/console/static/"


def is_open(path: str) -> bool:
    """Whether `path` is answered without a key (its route's rule is `public()`)."""
    if path in OPEN_PATHS or path in CONSOLE_PATHS:
        return True
    # one file name under the console's folder, nothing deeper (the route serves a fixed list)
    return path.startswith(CONSOLE_FILES) and "/" not in path[len(CONSOLE_FILES) :]


_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


def incoming_request_id(headers: Headers) -> str:
    """The client's X-Request-ID when it is a sane token (it ends up in logs), else a new one."""
    given = headers.get("x-request-id", "")
    return given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


class HardeningMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings, access: Access) -> None:
        self.app = app
        self.settings = settings
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._startup_failure_in_one_line(scope, send))
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        rid = incoming_request_id(headers)
        token = request_id.set(rid)
        started = time.perf_counter()
        status = 500  # what the client saw if the app raised before answering
        body_limit_hit = False
        replaced = False  # our 413 went out instead of the app's answer

        async def send_with_id(message: Message) -> None:
            nonlocal status, replaced
            if replaced:
                return
            if message["type"] == "http.response.start":
                if body_limit_hit and message["status"] != 413:
                    # the route turned the cut-off body into some other error: answer the real cause
                    replaced = True
                    detail = self._too_large_detail()
                    await self._reject(scope, send_with_id_raw, 413, detail, "body_too_large")
                    return
                status = message["status"]
                MutableHeaders(scope=message)["X-Request-ID"] = rid
                if ends_connection and not body_read:  # answered with the body unread: see _reject
                    MutableHeaders(scope=message)["Connection"] = "close"
            await send(message)

        async def send_with_id_raw(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["X-Request-ID"] = rid
            await send(message)

        received = 0
        ends_connection = _unread_body_ends_connection(headers)
        body_read = False

        async def limited_receive() -> Message:
            nonlocal received, body_limit_hit, body_read
            message = await receive()
            if message["type"] == "http.request":
                body_read = not message.get("more_body", False)
                received += len(message.get("body", b""))
                if received > self.settings.max_body_bytes:
                    body_limit_hit = True
                    raise BodyTooLarge(self._too_large_detail())
            return message

        try:
            principal = scope[PRINCIPAL_KEY] = self.access.principal(headers)
            path = self._path(scope)
            # the compatibility APIs' rules answer a missing key themselves, in their own shape
            # (DeepStack's key is in the form): Access.keys_checked_by_rule
            if principal is None and not is_open(path) and not self.access.passes_without_key(path):
                self.access.refused_key(scope)
                await self._reject(
                    scope,
                    send_with_id_raw,
                    401,
                    "a valid API key is required in the X-API-Key header",
                    "unauthorized",
                    {"WWW-Authenticate": "ApiKey"},
                )
                return
            if scope["method"] == "POST" and self._pipeline_full(scope):
                # answered before the body is read: under overload, parsing megabytes of base64
                # only to refuse them would take the CPU the admitted requests need
                await self._reject(
                    scope,
                    send_with_id_raw,
                    503,
                    "the server is at its limit of requests in progress; retry shortly",
                    "overloaded",
                    {"Retry-After": "1"},
                )
                return
            declared = decimal_header(headers.get("content-length"))
            if declared is not None and declared > self.settings.max_body_bytes:
                await self._reject(scope, send_with_id_raw, 413, self._too_large_detail(), "body_too_large")
                return
            try:
                await self.app(scope, limited_receive, send_with_id)
            except BodyTooLarge:
                if status == 500 and not replaced:  # nothing was sent yet
                    await self._reject(
                        scope, send_with_id_raw, 413, self._too_large_detail(), "body_too_large"
                    )
                else:
                    raise
        finally:
            self._record(scope, status, time.perf_counter() - started)
            self.access.finish(scope, status)  # the audit record, with the outcome the client saw
            request_id.reset(token)

    @staticmethod
    def _startup_failure_in_one_line(scope: Scope, send: Send) -> Send:
        """Starlette reports a failed start with the traceback, which the server logs; the app's
        lifespan left the cause in app.state.startup_error: the log gets `error: <cause>`."""

        async def send_startup(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed":
                cause = getattr(getattr(scope.get("app"), "state", None), "startup_error", None)
                if cause:
                    message = {**message, "message": f"error: {cause}"}
            await send(message)

        return send_startup

    @staticmethod
    def _pipeline_full(scope: Scope) -> bool:
        state = getattr(getattr(scope.get("app"), "state", None), "facerest", None)
        if state is None:  # still starting
            return False
        admission = state.analyzer.admission
        return admission.inside >= admission.limit

    def _too_large_detail(self) -> str:
        return f"request body is larger than the limit of {self.settings.max_body_bytes} bytes"

    @staticmethod
    def _path(scope: Scope) -> str:
        path: str = scope["path"]
        root = scope.get("root_path", "")
        return path[len(root) :] or "/" if root and path.startswith(root) else path

    @staticmethod
    async def _reject(
        scope: Scope,
        send: Send,
        status: int,
        detail: str,
        code: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        scope[ERROR_CODE_KEY] = code
        headers = dict(headers or {})
        if _unread_body_ends_connection(Headers(scope=scope)):
            # the body is left unread, so the connection ends after this answer: saying so keeps
            # a client from sending its next request on a connection we are closing (a small body
            # is read and dropped instead, and the connection serves the next request)
            headers["Connection"] = "close"
        response = JSONResponse(error_body(detail, code), status, headers=headers)

        async def no_body() -> Message:
            return {"type": "http.disconnect"}

        await response(scope, no_body, send)

    def _record(self, scope: Scope, status: int, elapsed_s: float) -> None:
        route = scope.get("route")
        # the route template, never the raw path: ids in paths would make endless label values
        path = getattr(route, "path", None) or "unmatched"
        state = getattr(scope.get("app"), "state", None)
        app_state = getattr(state, "facerest", None) if state is not None else None
        if app_state is not None:
            metrics = app_state.metrics
            metrics.requests.labels(scope["method"], path, str(status)).inc()
            metrics.latency.labels(path).observe(elapsed_s)
            # an unexpected exception is answered outside this middleware, after this runs
            code = scope.get(ERROR_CODE_KEY) or ("internal_error" if status == 500 else None)
            if code is not None:
                metrics.errors.labels(code).inc()
        log.info(
            "%s %s %d %.1f ms",
            scope["method"],
            scope["path"],
            status,
            elapsed_s * 1000,
        )


def _unread_body_ends_connection(headers: Headers) -> bool:
    """A body left unread ends the connection unless the protocol drains it (http_protocol.py)."""
    if headers.get("content-length", "0") == "0" and "transfer-encoding" not in headers:
        return False  # no body at all
    return not drains_unread_body(headers.get("content-length"), "transfer-encoding" in headers)
