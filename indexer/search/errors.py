"""Why a search cannot run as asked. Each error's message names what to change; the API maps
them to HTTP statuses (``api.services``), the command line to one-line errors (exit 2)."""

from __future__ import annotations

from indexer.db.errors import (
    CursorOutOfRangeError,
    InvalidCursorError,
    NotFoundError,
    UnknownTagError,
)

__all__ = [
    "AssetNotFoundError",
    "BadImageError",
    "CursorOutOfRangeError",
    "InvalidCursorError",
    "InvalidQueryError",
    "NotIndexedError",
    "SearchError",
    "UnknownTagError",
]


class SearchError(ValueError):
    """A search request that cannot be answered as asked (base class)."""


class InvalidQueryError(SearchError):
    """Contradictory or out-of-range parameters (text and similar together, an empty date
    range, a concept name that is blank once cleaned, ...)."""


class BadImageError(SearchError):
    """The query image cannot be decoded or is too large to use."""


class NotIndexedError(SearchError):
    """The asset to search similar to has no image embedding yet (not processed, or failed)."""


class AssetNotFoundError(NotFoundError):
    """The asset named by the search does not exist."""
