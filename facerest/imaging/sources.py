"""Where image bytes come from: base64 strings, raw bytes, URLs (fetched safely), local files."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import socket
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
    timeout_s: float
    max_redirects: int = 3
    allowlist: tuple[str, ...] = ()
    local_root: Path | None = None
    retries: int = 1


def _allowlisted(
    host: str, addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address], allow: tuple[str, ...]
) -> bool:
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


def _is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def check_url(url: str, policy: FetchPolicy) -> None:
    """Refuse URLs the operator did not allow: other schemes, private or special addresses."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise UrlRefused(f"only http and https URLs are fetched, not {parts.scheme or 'a bare path'!r}")
    host = parts.hostname
    if not host:
        raise UrlRefused("URL has no host")
    if host.lower() in _METADATA_HOSTS:
        raise UrlRefused(f"{host} is a cloud metadata address")
    try:
        infos = socket.getaddrinfo(
            host, parts.port or (443 if parts.scheme == "https" else 80), type=socket.SOCK_STREAM
        )
    except (socket.gaierror, UnicodeError) as exc:
        raise UrlFetchFailed(f"cannot resolve {host}: {exc}") from exc
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    if any(str(a) in _METADATA_HOSTS for a in addresses):
        raise UrlRefused(f"{host} resolves to a cloud metadata address")
    if _allowlisted(host, addresses, policy.allowlist):
        return
    refused = [str(a) for a in addresses if not _is_public(a)]
    if refused:
        raise UrlRefused(
            f"{host} resolves to a non-public address ({', '.join(refused)}); "
            "an operator can allow it with FACEREST_URL_ALLOWLIST"
        )


def fetch_url(url: str, policy: FetchPolicy, headers: dict[str, str] | None = None) -> bytes:
    """GET an image, re-checking every redirect, within the size and time limits."""
    attempt = 0
    while True:
        try:
            return _fetch_once(url, policy, headers or {})
        except UrlFetchFailed:
            attempt += 1
            if attempt > policy.retries:
                raise


def _fetch_once(url: str, policy: FetchPolicy, headers: dict[str, str]) -> bytes:
    timeout = httpx.Timeout(policy.timeout_s)
    with httpx.Client(timeout=timeout, follow_redirects=False, verify=True, trust_env=False) as client:
        for _ in range(policy.max_redirects + 1):
            check_url(url, policy)
            try:
                with client.stream("GET", url, headers=headers) as response:
                    if response.is_redirect:
                        location = response.headers.get("location", "")
                        url = urljoin(url, location)
                        continue
                    if response.status_code != 200:
                        raise UrlFetchFailed(f"{url} answered HTTP {response.status_code}")
                    declared = response.headers.get("content-length")
                    if declared and declared.isdigit() and int(declared) > policy.max_bytes:
                        raise ImageTooLarge(
                            f"{url} is {declared} bytes, more than the limit of {policy.max_bytes}"
                        )
                    body = bytearray()
                    for chunk in response.iter_bytes():
                        body += chunk
                        if len(body) > policy.max_bytes:
                            raise ImageTooLarge(f"{url} is more than the limit of {policy.max_bytes} bytes")
                    return bytes(body)
            except httpx.TimeoutException as exc:
                raise UrlFetchFailed(f"{url} did not answer within {policy.timeout_s} s") from exc
            except httpx.HTTPError as exc:
                raise UrlFetchFailed(f"{url} could not be fetched: {exc}") from exc
        raise UrlFetchFailed(f"{url} redirected more than {policy.max_redirects} times")


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
    if path.stat().st_size > policy.max_bytes:
        raise ImageTooLarge(f"file is larger than the limit of {policy.max_bytes} bytes")
    return path.read_bytes()


def load_source(source: str, policy: FetchPolicy, headers: dict[str, str] | None = None) -> bytes:
    """Bytes of one entry of `images.urls`: an http(s) URL, or a local path when allowed."""
    scheme = urlsplit(source).scheme
    if scheme in ("http", "https"):
        return fetch_url(source, policy, headers)
    if scheme in ("", "file"):
        return read_local(source, policy)
    raise UrlRefused(f"unsupported URL scheme {scheme!r}")
