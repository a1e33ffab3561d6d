"""Pages of a list: `limit` rows after an opaque cursor, and the cursor of the next page.

Every list of the people API is a keyset page: rows sorted by a key (a name, an id, a pair), the
next page starting after the last key seen (`WHERE key > last ORDER BY key`), so rows written or
deleted between two pages never make the pages repeat or skip a row that existed throughout (an
offset would shift). The cursor is that key, JSON in URL-safe base64, tagged with the list it
belongs to; clients pass it back unread.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from facerest.errors import BadInput

T = TypeVar("T")

#: rows a page holds unless asked (`limit`)
DEFAULT_PAGE = 100
#: the longest cursor accepted (a name is at most 200 characters)
MAX_CURSOR = 2048


@dataclass(slots=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None


def encode_cursor(kind: str, *key: Any) -> str:
    raw = json.dumps([kind, *key], separators=(",", ":"), ensure_ascii=False).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(cursor: str | None, kind: str, types: Sequence[type]) -> tuple[Any, ...] | None:
    """The key a cursor of list `kind` holds (one value per type), None for no cursor; BadInput
    for a cursor this list did not give."""
    if cursor is None or cursor == "":
        return None
    problem = BadInput(f"cursor {cursor[:40]!r} is not one this list gave (pass `next_cursor` back as it is)")
    if len(cursor) > MAX_CURSOR:
        raise problem
    try:
        key = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise problem from None
    if not isinstance(key, list) or len(key) != len(types) + 1 or key[0] != kind:
        raise problem
    values = key[1:]
    # bool is an int to Python: a cursor of `true` is not an id
    if not all(
        isinstance(v, t) and not (t is int and isinstance(v, bool))
        for v, t in zip(values, types, strict=True)
    ):
        raise problem
    return tuple(values)


def paged(rows: list[T], limit: int, kind: str, key: Callable[[T], tuple[Any, ...]]) -> Page[T]:
    """`rows` fetched with limit + 1: the page, and the cursor after its last row when more follow."""
    if len(rows) <= limit:
        return Page(rows, None)
    rows = rows[:limit]
    return Page(rows, encode_cursor(kind, *key(rows[-1])))
