"""Where image bytes come from: base64 strings, raw bytes, URLs (fetched safely), local files."""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import ipaddress
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx

from facerest.errors import BadInput, ImageTooLarge, UrlFetchFailed, UrlRefused

# cloud metadata endpoints are refused even when private ranges are allowlisted
_METADATA_HOSTS = {"169.254.169.254", "fd00:ec2::254", "metadata.google.internal"}


def decode_base64(text: str, *, max_bytes: int) -> bytes:
    """Base64 (standard or URL-safe, `data:...;base64,` prefix allowed) -> bytes."""
    if text.startswith("data:"):
        _, sep, text = text.partition(",")
        if not sep:
            raise BadInput("data URI without a comma")
    text = text.strip()
    if len(text) * 3 // 4 > max_bytes:
        raise ImageTooLarge(f"image is larger than the limit of {max_bytes} bytes")
    try:
        if "-" in text or "_" in text:
            return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadInput(f"invalid base64 data: {exc}") from exc


@dataclass(frozen=True, slots=True)
class FetchPolicy:
    max_bytes: int
    timeout_s: float  # the whole download: every redirect, retry and byte, not one read
    max_redirects: int = 3
    allowlist: tuple[str, ...] = ()
    local_root: Path | None = None
    retries: int = 1  # extra attempts after a connection failure or a 502/503/504
    # the service always verifies against the system CAs; tests pass a context trusting their own CA
    tls_verify: ssl.SSLContext | bool = True
    allowlist_setting: str = "FACEREST_URL_ALLOWLIST"  # named in the refusal's detail


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_RETRY_STATUSES = {502, 503, 504}
_REDIRECT_STATUSES = {301, 302, 303, 307, 308}
# headers a client may not set on our fetches: they belong to the connection we make
_FORBIDDEN_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "accept-encoding"}


def _allowlisted(host: str, addresses: list[IPAddress], allow: tuple[str, ...]) -> bool:
    for item in allow:
        if item.lower() == host.lower():
            return True
        try:
            network = ipaddress.ip_network(item, strict=False)
        except ValueError:
            continue
        if addresses and all(a in network for a in addresses):
            return True
    return False


def _is_public(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def resolve_url(url: str, policy: FetchPolicy) -> list[IPAddress]:
    """The addresses `url` may be fetched from, resolved once; refuses what the operator did not allow.

    The fetch connects to one of these addresses, never resolving the name again, so a DNS answer
    that changes between the check and the connection (DNS rebinding) cannot reach a refused address.
    """
    try:
        parts = urlsplit(url)
        httpx.URL(url)  # the parser that will send the request must accept it too
    except (ValueError, httpx.InvalidURL) as exc:
        raise UrlRefused(f"malformed URL: {exc}") from exc
    if parts.scheme not in ("http", "https"):
        raise UrlRefused(f"only http and https URLs are fetched, not {parts.scheme or 'a bare path'!r}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError as exc:  # a port that is not a number or out of range
        raise UrlRefused(f"malformed URL: {exc}") from exc
    if not host:
        raise UrlRefused("URL has no host")
    if host.lower().rstrip(".") in _METADATA_HOSTS:
        raise UrlRefused(f"{host} is a cloud metadata address")
    try:
        infos = socket.getaddrinfo(
            host, port or (443 if parts.scheme == "https" else 80), type=socket.SOCK_STREAM
        )
    except (socket.gaierror, UnicodeError) as exc:
        raise UrlFetchFailed(f"cannot resolve {host}: {exc}") from exc
    addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos))
    if not addresses:
        raise UrlFetchFailed(f"{host} has no address")
    if any(str(a) in _METADATA_HOSTS for a in addresses):
        raise UrlRefused(f"{host} resolves to a cloud metadata address")
    if _allowlisted(host, addresses, policy.allowlist):
        return addresses
    if not all(_is_public(a) for a in addresses):
        # the address is not named: an answer must not map the internal network for the client
        raise UrlRefused(
            f"{host} resolves to a non-public address; an operator can allow it with "
            f"{policy.allowlist_setting}"
        )
    return addresses


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds

    def left(self, url: str) -> float:
        remaining = self.at - time.monotonic()
        if remaining <= 0:
            raise UrlFetchFailed(f"{url} was not downloaded within {self.seconds} s")
        return remaining


def fetch_url(url: str, policy: FetchPolicy, headers: dict[str, str] | None = None) -> bytes:
    """GET an image within one total deadline and the size limit, re-checking every redirect."""
    deadline = _Deadline(policy.timeout_s)
    sent = _client_headers(headers or {})
    origin = _origin(url)
    for _ in range(policy.max_redirects + 1):
        if _origin(url) != origin:  # credentials meant for one site never travel to another
            sent = {k: v for k, v in sent.items() if k.lower() == "user-agent"}
            origin = _origin(url)
        # a client per hop: a pooled connection (and its TLS session, made for one name) is
        # never reused for another name that happens to share the address
        with httpx.Client(follow_redirects=False, verify=tls_context(policy), trust_env=False) as client:
            outcome = _fetch_with_retries(client, url, policy, sent, deadline)
        if isinstance(outcome, bytes):
            return outcome
        url = outcome
    raise UrlFetchFailed(f"{url} redirected more than {policy.max_redirects} times")


@functools.cache
def _system_tls_context() -> ssl.SSLContext:
    """httpx's verifying context, built once (loading the CA bundle costs more than a request)."""
    return httpx.create_ssl_context()


def tls_context(policy: FetchPolicy) -> ssl.SSLContext:
    """The TLS context every fetch verifies with (URLs, webhooks, streams)."""
    if isinstance(policy.tls_verify, ssl.SSLContext):
        return policy.tls_verify
    if policy.tls_verify is not True:
        raise ValueError("TLS verification cannot be turned off for URL fetches")
    return _system_tls_context()


_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")
_MAX_CLIENT_HEADERS = 32
_MAX_CLIENT_HEADER_BYTES = 8192


def _client_headers(headers: dict[str, str]) -> dict[str, str]:
    """The client's `img_req_headers`, checked (HTTP tokens, printable ASCII, bounded size), minus
    those that belong to the connection we make."""
    if len(headers) > _MAX_CLIENT_HEADERS:
        raise BadInput(f"img_req_headers: at most {_MAX_CLIENT_HEADERS} headers")
    if sum(len(k) + len(v) for k, v in headers.items()) > _MAX_CLIENT_HEADER_BYTES:
        raise BadInput(f"img_req_headers: at most {_MAX_CLIENT_HEADER_BYTES} bytes in all")
    for name, value in headers.items():
        if not _HEADER_NAME.fullmatch(name) or not _HEADER_VALUE.fullmatch(value):
            raise BadInput(f"img_req_headers: {name[:40]!r} is not a valid header name and ASCII value")
    return {k: v for k, v in headers.items() if k.lower() not in _FORBIDDEN_HEADERS}


def _origin(url: str) -> tuple[str, str | None, int | None]:
    parts = urlsplit(url)
    return parts.scheme, parts.hostname, parts.port


def _fetch_with_retries(
    client: httpx.Client, url: str, policy: FetchPolicy, headers: dict[str, str], deadline: _Deadline
) -> bytes | str:
    """The body, or the URL a redirect points to. Retries connection failures and 502/503/504."""
    addresses = resolve_url(url, policy)
    failure: UrlFetchFailed | None = None
    for attempt in range(policy.retries + 1):
        address = addresses[attempt % len(addresses)]  # a second try also tries a second address
        try:
            return _fetch_from(client, url, address, policy, headers, deadline)
        except _Retryable as exc:
            failure = UrlFetchFailed(str(exc))
        if attempt < policy.retries:
            time.sleep(min(0.2 * (attempt + 1), max(0.0, deadline.left(url) / 2)))
    assert failure is not None
    raise failure


class _Retryable(Exception):
    pass


def _fetch_from(
    client: httpx.Client,
    url: str,
    address: IPAddress,
    policy: FetchPolicy,
    headers: dict[str, str],
    deadline: _Deadline,
) -> bytes | str:
    """One GET sent to `address` (already checked) while TLS still verifies the certificate of
    the URL's host name: the host travels in the Host header and in SNI, not through DNS."""
    target = httpx.URL(url)
    host_name = target.raw_host.decode("ascii")
    pinned = target.copy_with(host=str(address))
    extensions: dict[str, object] = {}
    if target.scheme == "https":
        extensions["sni_hostname"] = host_name
    request_headers = {**headers, "Host": target.netloc.decode("ascii"), "Accept-Encoding": "identity"}
    remaining = deadline.left(url)
    request = client.build_request(
        "GET",
        pinned,
        headers=request_headers,
        timeout=httpx.Timeout(remaining),
        extensions=extensions,
    )
    try:
        response = client.send(request, stream=True)
    except httpx.TimeoutException as exc:
        raise UrlFetchFailed(f"{url} did not answer within {policy.timeout_s} s") from exc
    except (httpx.ConnectError, httpx.RemoteProtocolError) as exc:
        raise _Retryable(f"{url} could not be fetched: {exc}") from exc
    except httpx.HTTPError as exc:
        raise UrlFetchFailed(f"{url} could not be fetched: {exc}") from exc
    # The read timeout applies per read; this cuts the connection when the whole budget is spent,
    # however the server paces its bytes (the blocked read then fails at once).
    watchdog = _Watchdog(response, deadline)
    try:
        if response.status_code in _REDIRECT_STATUSES and "location" in response.headers:
            return urljoin(url, response.headers["location"])
        if response.status_code in _RETRY_STATUSES:
            raise _Retryable(f"{url} answered HTTP {response.status_code}")
        if response.status_code != 200:
            raise UrlFetchFailed(f"{url} answered HTTP {response.status_code}")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > policy.max_bytes:
            raise ImageTooLarge(f"{url} is {declared} bytes, more than the limit of {policy.max_bytes}")
        body = bytearray()
        # raw bytes (we asked for no content coding): the limit counts what crosses the wire, and
        # the deadline is checked after every read, so a server dripping bytes is cut off on time
        for chunk in response.iter_raw():
            body += chunk
            if len(body) > policy.max_bytes:
                raise ImageTooLarge(f"{url} is more than the limit of {policy.max_bytes} bytes")
            deadline.left(url)
        return bytes(body)
    except httpx.TimeoutException as exc:
        raise UrlFetchFailed(f"{url} was not downloaded within {policy.timeout_s} s") from exc
    except httpx.HTTPError as exc:
        if watchdog.fired:
            raise UrlFetchFailed(f"{url} was not downloaded within {policy.timeout_s} s") from exc
        raise UrlFetchFailed(f"{url} could not be fetched: {exc}") from exc
    finally:
        watchdog.cancel()
        response.close()


class _Watchdog:
    """Shuts the response's socket down when the deadline passes."""

    def __init__(self, response: httpx.Response, deadline: _Deadline) -> None:
        self.fired = False
        stream = response.extensions.get("network_stream")
        self._socket = stream.get_extra_info("socket") if stream is not None else None
        self._timer: threading.Timer | None = None
        if isinstance(self._socket, socket.socket):
            self._timer = threading.Timer(max(0.0, deadline.at - time.monotonic()), self._cut)
            self._timer.daemon = True
            self._timer.start()

    def _cut(self) -> None:
        self.fired = True
        # the plain socket's shutdown, also under TLS: it wakes a blocked read in any thread,
        # whereas SSLSocket.shutdown would also drop the TLS state that read is using
        with contextlib.suppress(OSError):  # already closed
            socket.socket.shutdown(self._socket, socket.SHUT_RDWR)  # type: ignore[arg-type]

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


def read_local(path_text: str, policy: FetchPolicy) -> bytes:
    """A file under the operator's local root; refuses everything when no root is set."""
    if policy.local_root is None:
        raise UrlRefused("local paths are not read by this server (FACEREST_LOCAL_FILES_ROOT is not set)")
    root = policy.local_root.resolve()
    path = (root / path_text.removeprefix("file://").lstrip("/")).resolve()
    if not path.is_relative_to(root):
        raise UrlRefused("path escapes the local files root")
    if not path.is_file():
        raise BadInput(f"no such file under the local files root: {path_text}")
    with path.open("rb") as fh:  # bounded read: the size may change after a stat
        data = fh.read(policy.max_bytes + 1)
    if len(data) > policy.max_bytes:
        raise ImageTooLarge(f"file is larger than the limit of {policy.max_bytes} bytes")
    return data


def load_source(source: str, policy: FetchPolicy, headers: dict[str, str] | None = None) -> bytes:
    """Bytes of one entry of `images.urls`: an http(s) URL, or a local path when allowed."""
    try:
        scheme = urlsplit(source).scheme
    except ValueError as exc:
        raise UrlRefused(f"malformed URL: {exc}") from exc
    if scheme in ("http", "https"):
        return fetch_url(source, policy, headers)
    if scheme in ("", "file"):
        return read_local(source, policy)
    raise UrlRefused(f"unsupported URL scheme {scheme!r}")
