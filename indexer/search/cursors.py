"""Offset cursors for relevance-ranked lists (concept and similar search).

A ranked list is recalled once and cached; its pages are offsets into it. The cursor carries the
offset and a digest of the query, so a cursor cannot continue a different search. Tag-only
searches page by keyset instead (:mod:`indexer.db.search`); the prefix tells the kinds apart.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from datetime import datetime
from typing import Any

from indexer.search.errors import CursorOutOfRangeError, InvalidCursorError
from indexer.search.request import SearchRequest

OFFSET_PREFIX = "o."


def query_digest(req: SearchRequest, extra: str) -> str:
    """A short digest of everything that decides a search's ranked list (not the page)."""

    def plain(value: Any) -> Any:
        if isinstance(value, datetime):
            return value.isoformat()
        if isinstance(value, tuple):
            return list(value)
        return value

    body = {
        name: plain(getattr(req, name))
        for name in (
            "text",
            "descriptions",
            "all",
            "any",
            "none",
            "similar_to",
            "min_score",
            "sort",
            "mime",
            "created_after",
            "created_before",
        )
    }
    raw = json.dumps(body, sort_keys=True) + "|" + extra
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def is_offset_cursor(cursor: str) -> bool:
    """Whether ``cursor`` pages a ranked list (else it is a tag search's keyset cursor)."""
    return cursor.startswith(OFFSET_PREFIX)


def encode_offset(offset: int, digest: str) -> str:
    """The cursor of the page starting at ``offset`` of the query with ``digest``."""
    raw = json.dumps({"o": offset, "q": digest}, separators=(",", ":")).encode()
    return OFFSET_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_offset(cursor: str, digest: str, recall: int) -> int:
    """The offset a cursor of the query with ``digest`` continues from.

    Raises:
        InvalidCursorError: malformed, or made by another query.
        CursorOutOfRangeError: an offset that is not an integer in 0..``recall``.
    """
    try:
        raw = cursor.removeprefix(OFFSET_PREFIX)
        data = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        offset, query = data["o"], data["q"]
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise InvalidCursorError("invalid cursor") from exc
    if query != digest:
        raise InvalidCursorError("the cursor belongs to another query; start again without it")
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset <= recall:
        raise CursorOutOfRangeError(f"cursor offset out of range 0..{recall}")
    return offset
