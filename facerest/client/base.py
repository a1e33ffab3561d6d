"""What the sync and async clients share: settings, retry policy, error mapping."""

from __future__ import annotations

import logging
from typing import Any

import httpx

from facerest.client.calls import Call
from facerest.client.codec import Format, decode_body
from facerest.client.errors import (
    ClientTimeout,
    ConnectionFailed,
    FaceRestClientError,
    error_from,
    retry_after,
)

log = logging.getLogger("facerest.client")

#: httpx's defaults, but idle connections given up after 2 s: the server closes them after its
#: FACEREST_KEEP_ALIVE_TIMEOUT_S (5 s, httpx's own expiry too), and a request sent on one as it
#: closes ends in a connection error, unanswered
CONNECTION_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=2.0)


class BaseClient:
    """Settings, the retry policy and the error mapping; the subclasses own the transport."""

    def __init__(
        self,
        base_url: str = "http://localhost:18081",
        *,
        fmt: Format = "msgpack",
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 10.0,
        api_key: str | None = None,
    ) -> None:
        if fmt not in ("msgpack", "json"):
            raise ValueError("fmt must be 'msgpack' or 'json'")
        self.base_url = base_url.rstrip("/")
        self.fmt: Format = fmt
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.headers = {"X-API-Key": api_key} if api_key else {}

    def _retry_delay(self, call: Call, attempt: int, response: httpx.Response) -> float | None:
        """Seconds to wait before trying a 503 again (Retry-After when given, else doubling);
        None when this answer is final."""
        if response.status_code != 503 or not call.retry or attempt >= self.retries:
            return None
        asked = retry_after(response)
        delay = min(self.backoff * (2**attempt) if asked is None else asked, self.max_backoff)
        log.warning(
            "%s %s: server overloaded, retry %d in %.2f s", call.method, call.path, attempt + 1, delay
        )
        return delay

    def _transport_error(self, call: Call, exc: httpx.HTTPError) -> FaceRestClientError:
        if isinstance(exc, httpx.TimeoutException):
            return ClientTimeout(f"{call.method} {call.path}: no answer in {self.timeout} s")
        return ConnectionFailed(f"{call.method} {self.base_url}{call.path}: {exc}")

    @staticmethod
    def _check(response: httpx.Response) -> Any:
        if response.status_code >= 400:
            raise error_from(response)
        return decode_body(response)
