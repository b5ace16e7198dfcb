"""Keyset (cursor) pagination shared by the lookups.

A cursor is the base64url (unpadded) of a small JSON array: a tag naming the list it
belongs to, then the sort key of the last row of the page. The next page starts strictly
after that key, so rows inserted meanwhile never shift a page and no page needs an OFFSET
or a COUNT. Cursors are opaque to clients: anything that does not decode to a key of the
expected shape is refused with a 422 rather than guessed at.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from api.errors import InvalidInput

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
MAX_CURSOR_LENGTH = 512
# Sort-key columns are unix seconds, ids and block positions: BIGINT in the database.
MAX_KEY_INT = 2**63 - 1
_HEX32 = re.compile(r"^0x[0-9a-f]{64}$")

T = TypeVar("T")
Key = tuple[Any, ...]


def hex32(value: Any) -> bool:
    return isinstance(value, str) and bool(_HEX32.match(value))


def key_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_KEY_INT


def encode_cursor(tag: str, key: Key) -> str:
    raw = json.dumps([tag, *key], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(
    cursor: str | None, tag: str, checks: Sequence[Callable[[Any], bool]]
) -> Key | None:
    """The sort key a cursor carries (None when there is no cursor: the first page)."""
    if cursor is None:
        return None
    bad = InvalidInput(
        "cursor is not a cursor of this list: pass back the next_cursor of a previous page",
        field="cursor",
    )
    if len(cursor) > MAX_CURSOR_LENGTH or not re.fullmatch(r"[A-Za-z0-9_-]+", cursor):
        raise bad
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError):
        raise bad from None
    if (
        not isinstance(value, list)
        or len(value) != len(checks) + 1
        or value[0] != tag
        or not all(check(part) for check, part in zip(checks, value[1:], strict=True))
    ):
        raise bad
    return tuple(value[1:])


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None


def page_of(rows: list[T], limit: int, tag: str, key_of: Callable[[T], Key]) -> Page[T]:
    """A page from `rows` fetched with `limit + 1`: the extra row only tells that there is
    a next page (whose cursor is the key of this page's last row)."""
    if len(rows) <= limit:
        return Page(rows, None)
    items = rows[:limit]
    return Page(items, encode_cursor(tag, key_of(items[-1])))
