"""The wire formats of requests and answers: msgpack (raw bytes) or JSON."""

from __future__ import annotations

from typing import Any, Literal

import httpx
import msgpack
import orjson

Format = Literal["msgpack", "json"]
MSGPACK = "application/msgpack"
MSGPACK_ANSWER = "application/x-msgpack"


def decode_body(response: httpx.Response) -> Any:
    media = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if media in (MSGPACK, MSGPACK_ANSWER):
        return msgpack.unpackb(response.content, raw=False, strict_map_key=False)
    if media == "application/json":
        return orjson.loads(response.content)
    return response.content
