"""Recording and reading companion files (:mod:`indexer.db.companions`)."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from indexer.db._sql import table_of, upsert_insert
from indexer.db.assets import MAX_URI_BYTES
from indexer.db.base import utcnow
from indexer.db.companions import AssetCompanion, CompanionRole

_companions = table_of(AssetCompanion)


@dataclass(frozen=True)
class CompanionFile:
    """What was read of a companion file: where it is and what it held."""

    uri: str
    mime: str | None
    sha256: str | None
    size_bytes: int | None
    role: CompanionRole = CompanionRole.JPEG


def record_companion(session: Session, asset_id: int, companion: CompanionFile) -> None:
    """Record ``companion`` with the asset (idempotent: seen again, its facts and ``last_seen``
    are refreshed; a file that was another asset's companion moves to this one).

    Raises:
        ValueError: empty URI or longer than ``MAX_URI_BYTES`` UTF-8 bytes.
    """
    if not companion.uri:
        raise ValueError("companion URI is empty")
    if len(companion.uri.encode("utf-8", "surrogateescape")) > MAX_URI_BYTES:
        raise ValueError(f"companion URI longer than {MAX_URI_BYTES} bytes")
    now = utcnow()
    values = {
        "asset_id": asset_id,
        "role": companion.role.value,
        "mime": companion.mime,
        "sha256": companion.sha256,
        "size_bytes": companion.size_bytes,
    }
    stmt = upsert_insert(session, _companions).values(
        uri=companion.uri, first_seen=now, last_seen=now, **values
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=["uri"],
        set_={**{k: stmt.excluded[k] for k in values}, "last_seen": stmt.excluded.last_seen},
    )
    session.execute(stmt)


def list_companions(session: Session, asset_id: int) -> list[AssetCompanion]:
    """The asset's companion files, oldest first."""
    stmt = (
        sa.select(AssetCompanion)
        .where(AssetCompanion.asset_id == asset_id)
        .order_by(AssetCompanion.first_seen, AssetCompanion.id)
    )
    return list(session.scalars(stmt))
