"""A stream job's events POSTed to a client's URL, beside the SSE stream.

The URL follows the image URL rules (FACEREST_URL_ALLOWLIST for private addresses), checked when
the job is created; every POST goes to the address that check resolved. A thread per webhook
sends the events in order from a bounded queue: a receiver that is slow or down costs the job
nothing but dropped events (counted), never memory or time in the frame loop; its answers are
not read past their status line and headers.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from typing import Any

import httpx
import orjson

from facerest.imaging.sources import FetchPolicy, resolve_url

log = logging.getLogger(__name__)

QUEUE_SIZE = 256
TIMEOUT_S = 5.0


class Webhook:
    def __init__(self, url: str, policy: FetchPolicy) -> None:
        self.url = url
        self.addresses = resolve_url(url, policy)  # UrlRefused: the creating request's 400
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(QUEUE_SIZE)
        self._thread = threading.Thread(target=self._run, name="facerest-webhook", daemon=True)
        self._thread.start()

    def send(self, event: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.dropped += 1

    def close(self, timeout_s: float = 5.0) -> None:
        """Send what is queued (within the timeout), then stop."""
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout_s)
        self._thread.join(timeout_s)

    def _run(self) -> None:
        target = httpx.URL(self.url)
        pinned = target.copy_with(host=str(self.addresses[0]))
        headers = {"Host": target.netloc.decode("ascii"), "Content-Type": "application/json"}
        extensions: dict[str, object] = {}
        if target.scheme == "https":
            extensions["sni_hostname"] = target.raw_host.decode("ascii")
        with httpx.Client(follow_redirects=False, trust_env=False, timeout=TIMEOUT_S) as client:
            while (event := self._queue.get()) is not None:
                for attempt in range(2):
                    try:
                        request = client.build_request(
                            "POST",
                            pinned,
                            content=orjson.dumps(event),
                            headers=headers,
                            extensions=extensions,
                        )
                        # only the status is read: a receiver's body (of any size, at any pace)
                        # never is (issue 28: an endless answer grew memory at the receiver's rate)
                        response = client.send(request, stream=True)
                        response.close()
                        if response.status_code < 500:
                            self.sent += 1
                            break
                    except httpx.HTTPError as exc:
                        log.info("webhook %s: %s (try %d)", target.host, exc, attempt + 1)
                else:
                    self.failed += 1
