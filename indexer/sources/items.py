"""An object of a source as the registrar takes it (:meth:`Registrar.register_item`): how to
open its bytes, whether to copy them, and what to record when it became an asset.

``str(item)`` is its URI, so a scan's items pass through :func:`indexer.ingest.pipeline.ingest`
like paths and URLs (job params, failures and progress name them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO

from sqlalchemy.orm import Session

from indexer.db.collection_repo import add_assets_to_collection
from indexer.db.source_repo import record_object


@dataclass(frozen=True, eq=False)
class SourceItem:
    """One new or changed object of a source.

    Attributes:
        uri: ``s3://bucket/key`` or the file's path (its asset's source row).
        key: the key in ``source_objects`` (relative to the source).
        source_id, collection_id: its source and the collection its asset joins.
        etag, size, mtime: what the listing said (recorded with the asset).
        opener: opens the bytes (a GET of that ETag, or the file).
        storage: what ``assets.storage_path`` holds when not copied (the URI or the path).
        copy: copy the original into the media store (``copy_originals``).
    """

    uri: str
    key: str
    source_id: int
    collection_id: int
    etag: str | None
    size: int
    mtime: datetime | None
    opener: Callable[[], BinaryIO]
    storage: str
    copy: bool = False

    def __str__(self) -> str:
        return self.uri

    def recorded(self, session: Session, asset_id: int) -> None:
        """In the registration's transaction: the object's row points at its asset, which
        joins the source's collection."""
        record_object(
            session,
            self.source_id,
            self.key,
            etag=self.etag,
            size=self.size,
            mtime=self.mtime,
            asset_id=asset_id,
        )
        add_assets_to_collection(session, self.collection_id, [asset_id])

    def failed(self, session: Session, reason: str) -> None:
        """The object could not be read: recorded with the reason, read again next scan."""
        record_object(
            session,
            self.source_id,
            self.key,
            etag=None,
            size=None,
            mtime=None,
            asset_id=None,
            error=reason,
        )
