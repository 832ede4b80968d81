"""Why a search cannot run as asked. Each error's message names what to change; the API maps
them to HTTP statuses (``api.services``), the command line to one-line errors (exit 2)."""

from __future__ import annotations

from indexer.db.errors import NotFoundError, UnknownTagError

__all__ = [
    "AssetNotFoundError",
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


class InvalidCursorError(SearchError):
    """A cursor that is malformed, out of range, or belongs to another query."""


class NotIndexedError(SearchError):
    """The asset to search similar to has no image embedding yet (not processed, or failed)."""


class AssetNotFoundError(NotFoundError):
    """The asset named by the search does not exist."""
