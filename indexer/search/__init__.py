"""Search over an archive: tag filters, free-text concepts and similar images, one way for all.

:class:`SearchService` is what the API, the command line, ``ramdex demo`` and Python callers
use; the SQL of tag search stays in :mod:`indexer.db.search`::

    with Archive(get_settings()) as archive:
        page = SearchService(archive).search(SearchRequest(text="navy", none=["circle"]))
        for hit in page.hits:
            print(hit.asset_id, hit.source, hit.score, [r.name for r in hit.reasons])
"""

from indexer.search.errors import (
    AssetNotFoundError,
    BadImageError,
    CursorOutOfRangeError,
    InvalidCursorError,
    InvalidQueryError,
    NotIndexedError,
    SearchError,
    UnknownTagError,
)
from indexer.search.request import QueryImage, Reason, SearchHit, SearchPage, SearchRequest
from indexer.search.service import SearchService

__all__ = [
    "AssetNotFoundError",
    "BadImageError",
    "CursorOutOfRangeError",
    "InvalidCursorError",
    "InvalidQueryError",
    "NotIndexedError",
    "QueryImage",
    "Reason",
    "SearchError",
    "SearchHit",
    "SearchPage",
    "SearchRequest",
    "SearchService",
    "UnknownTagError",
]
