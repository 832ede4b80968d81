"""Data access for assets: dedup by content hash, sources, status, batch results, deletion.

Every function takes the caller's :class:`~sqlalchemy.orm.Session` and runs inside the caller's
transaction; none commits. Use one session per unit of work (``session_scope``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from indexer.db._sql import bulk_insert, chunks, rowcount, table_of, truncate_text, upsert_insert
from indexer.db.assets import MAX_URI_BYTES, Asset, AssetSource, AssetStatus
from indexer.db.base import db_now, utcnow
from indexer.db.event_repo import record_asset_event
from indexer.db.events import EventType
from indexer.db.job_repo import complete_jobs, credit_assets
from indexer.db.jobs import JobOutcome
from indexer.db.tags import AssetTag, Tag, TagOrigin
from indexer.db.vectors import encode_vectors

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_assets = table_of(Asset)
_sources = table_of(AssetSource)
_asset_tags = table_of(AssetTag)


class AssetRef(NamedTuple):
    """An asset id and whether this call created the asset."""

    id: int
    created: bool


@dataclass(frozen=True, slots=True)
class AssetResult:
    """What the model produced for one asset, as written by :func:`write_asset_results`.

    Attributes:
        asset_id: the asset.
        scores: (T,) tag probabilities in logit order (same order as ``tag_ids``).
        embedding: (d,) unit-norm image embedding c, or None.
        width, height, mime: decoded image facts; None keeps the stored value.
        thumbnail, thumbnail_path: thumbnail bytes and/or where the thumbnail file is.
        token_shard, token_offset: where the token store put E (None: not stored).
    """

    asset_id: int
    scores: np.ndarray
    embedding: np.ndarray | None = None
    width: int | None = None
    height: int | None = None
    mime: str | None = None
    thumbnail: bytes | None = None
    thumbnail_path: str | None = None
    token_shard: int | None = None
    token_offset: int | None = None


@dataclass(frozen=True, slots=True)
class WriteSummary:
    """Outcome of :func:`write_asset_results`.

    Attributes:
        written: asset ids now ``done``.
        missing: asset ids skipped because the asset no longer exists (deleted meanwhile).
        score_rows: asset_tags rows inserted.
    """

    written: list[int]
    missing: list[int]
    score_rows: int


@dataclass(frozen=True, slots=True)
class DeletedAsset:
    """What a deleted asset left outside the database, for the caller to clean up."""

    id: int
    sha256: str
    storage_path: str | None
    thumbnail_path: str | None
    token_shard: int | None
    token_offset: int | None
    model_name: str | None


def normalize_sha256(sha256: str) -> str:
    """Lower-case hex digest; raises ValueError unless it is 64 hex characters."""
    digest = sha256.strip().lower()
    if not _SHA256.match(digest):
        raise ValueError(f"not a SHA-256 hex digest: {sha256!r}")
    return digest


def get_or_create_asset_by_sha(
    session: Session,
    *,
    sha256: str,
    size_bytes: int | None = None,
    mime: str | None = None,
    storage_path: str | None = None,
) -> AssetRef:
    """The asset with this content hash, created as ``pending`` if new. Race-safe.

    Two sessions submitting the same bytes at once get the same asset: ``INSERT .. ON CONFLICT
    DO NOTHING`` lets exactly one insert win (the other waits for it on the unique index), then
    the loser re-selects the winner's row.

    Args:
        session: the unit of work.
        sha256: hex SHA-256 of the file content (any case).
        size_bytes: file size; mime: sniffed media type; storage_path: where the original is kept.
            Used only when the asset is created.

    Returns:
        ``AssetRef(id, created)``.

    Raises:
        ValueError: bad digest or negative size.
    """
    digest = normalize_sha256(sha256)
    if size_bytes is not None and size_bytes < 0:
        raise ValueError(f"size_bytes must be >= 0, got {size_bytes}")
    stmt = (
        upsert_insert(session, _assets)
        .values(sha256=digest, size_bytes=size_bytes, mime=mime, storage_path=storage_path)
        .on_conflict_do_nothing(index_elements=["sha256"])
        .returning(_assets.c.id)
    )
    new_id = session.execute(stmt).scalar_one_or_none()
    if new_id is not None:
        return AssetRef(int(new_id), True)
    existing = session.execute(sa.select(_assets.c.id).where(_assets.c.sha256 == digest))
    return AssetRef(int(existing.scalar_one()), False)


def add_source(
    session: Session, *, asset_id: int, uri: str, seen_at: datetime | None = None
) -> None:
    """Record that ``uri`` (a path or URL) held the asset; refreshes ``last_seen`` if known.

    Raises:
        ValueError: empty URI or longer than ``MAX_URI_BYTES`` UTF-8 bytes.
    """
    if not uri:
        raise ValueError("source URI is empty")
    if len(uri.encode("utf-8", "surrogateescape")) > MAX_URI_BYTES:
        raise ValueError(f"source URI longer than {MAX_URI_BYTES} bytes: {uri[:80]!r}...")
    when = seen_at or utcnow()
    stmt = upsert_insert(session, _sources).values(
        asset_id=asset_id, uri=uri, first_seen=when, last_seen=when
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=["asset_id", "uri"], set_={"last_seen": stmt.excluded.last_seen}
    )
    session.execute(stmt)


def list_sources(session: Session, asset_id: int) -> list[AssetSource]:
    """Every source seen for the asset, oldest first."""
    stmt = (
        sa.select(AssetSource)
        .where(AssetSource.asset_id == asset_id)
        .order_by(AssetSource.first_seen, AssetSource.id)
    )
    return list(session.scalars(stmt))


def get_asset(session: Session, asset_id: int) -> Asset | None:
    """The asset row, or None."""
    return session.get(Asset, asset_id)


def get_asset_by_sha(session: Session, sha256: str) -> Asset | None:
    """The asset with this content hash, or None."""
    digest = normalize_sha256(sha256)
    return session.scalars(sa.select(Asset).where(Asset.sha256 == digest)).one_or_none()


def set_status(
    session: Session,
    asset_ids: Sequence[int],
    status: AssetStatus | str,
    *,
    only_from: Sequence[AssetStatus | str] | None = None,
) -> int:
    """Set the status of assets (``error`` cleared unless the status is ``failed``).

    Args:
        asset_ids: assets to change.
        status: the new status.
        only_from: change only assets currently in one of these statuses (for claiming work:
            ``set_status(s, ids, "processing", only_from=["pending"])``).

    Returns:
        The number of assets changed.
    """
    status = AssetStatus(status)
    values: dict[str, object] = {"status": status.value, "updated_at": db_now()}
    if status is not AssetStatus.FAILED:
        values["error"] = None
    if status is AssetStatus.PENDING:
        values["attempts"] = 0  # queued afresh (retry of a failed asset): a clean slate
    if status is not AssetStatus.PROCESSING:
        values.update(lease_owner=None, lease_until=None, dispatched_at=None)
    changed = 0
    for part in chunks(list(asset_ids)):
        stmt = sa.update(_assets).where(_assets.c.id.in_(part)).values(**values)
        if only_from is not None:
            stmt = stmt.where(_assets.c.status.in_([AssetStatus(s).value for s in only_from]))
        changed += rowcount(session.execute(stmt))
    return changed


def mark_failed(session: Session, asset_ids: int | Sequence[int], error: str) -> int:
    """Mark assets ``failed`` with a reason (long reasons are truncated). Returns rows changed.

    Raises:
        ValueError: if ``error`` is empty (every failure needs a reason).
    """
    if not error or not error.strip():
        raise ValueError("a failed asset needs a reason")
    ids = [asset_ids] if isinstance(asset_ids, int) else list(asset_ids)
    changed = 0
    for part in chunks(ids):
        stmt = (
            sa.update(_assets)
            .where(_assets.c.id.in_(part))
            .values(
                status=AssetStatus.FAILED.value,
                error=truncate_text(error),
                lease_owner=None,
                lease_until=None,
                dispatched_at=None,
                updated_at=db_now(),
            )
        )
        changed += rowcount(session.execute(stmt))
    if changed:
        record_asset_event(session, EventType.ASSET_FAILED, ids, error=truncate_text(error, 500))
    return changed


def _validate_results(results: Sequence[AssetResult], num_tags: int) -> np.ndarray:
    ids = [r.asset_id for r in results]
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate asset ids in one batch of results")
    scores = np.empty((len(results), num_tags), dtype=np.float32)
    for row, result in enumerate(results):
        s = np.asarray(result.scores, dtype=np.float32)
        if s.shape != (num_tags,):
            raise ValueError(
                f"asset {result.asset_id}: {s.shape} scores for a vocabulary of {num_tags} tags"
            )
        scores[row] = s
    if not np.isfinite(scores).all() or scores.min(initial=0.0) < 0 or scores.max(initial=0.0) > 1:
        raise ValueError("tag scores must be probabilities in [0, 1] (apply the sigmoid)")
    for result in results:
        e = result.embedding
        if e is not None and np.asarray(e).ndim != 1:
            raise ValueError(f"asset {result.asset_id}: embedding must be 1-D")
    return scores


def write_asset_results(
    session: Session,
    results: Sequence[AssetResult],
    *,
    model_name: str,
    tag_ids: np.ndarray,
    score_floor: float | None = None,
) -> WriteSummary:
    """Write a whole batch of model results in the caller's transaction.

    For each asset: status ``done``, error cleared, ``model_name``, decoded facts, embedding,
    thumbnail, token location; its previous scores are replaced by every score >= ``score_floor``
    (bulk insert). Scores of promoted-concept tags of the same model are kept (they derive from
    E, which the same model reproduces); everything else is replaced.

    Args:
        session: the unit of work; commit it to make the batch visible atomically.
        results: one entry per asset.
        model_name: the model that produced the scores.
        tag_ids: (T,) tag ids in logit order, from :func:`ensure_vocabulary`.
        score_floor: smallest score stored; None means ``settings.index.score_floor``.

    Returns:
        Which assets were written and which had been deleted meanwhile (skipped).

    Raises:
        ValueError: malformed scores (shape, NaN, outside [0, 1]) or embeddings.
    """
    if score_floor is None:
        from indexer.settings import get_settings

        score_floor = get_settings().index.score_floor
    tag_ids = np.asarray(tag_ids, dtype=np.int64)
    if tag_ids.ndim != 1 or tag_ids.size == 0:
        raise ValueError("tag_ids must be a non-empty 1-D array")
    if not results:
        return WriteSummary([], [], 0)
    scores = _validate_results(results, tag_ids.size)
    ids = [r.asset_id for r in results]

    # Lock the rows (PostgreSQL) so a concurrent delete cannot slip in between check and insert;
    # in id order, so two writers of overlapping batches cannot deadlock.
    found_stmt = (
        sa.select(_assets.c.id)
        .where(_assets.c.id.in_(ids))
        .order_by(_assets.c.id)
        .with_for_update()
    )
    found = set(session.execute(found_stmt).scalars())
    keep = [i for i, r in enumerate(results) if r.asset_id in found]
    missing = [r.asset_id for r in results if r.asset_id not in found]
    if not keep:
        return WriteSummary([], missing, 0)
    kept_ids = [ids[i] for i in keep]

    concept_tags = sa.select(Tag.id).where(
        Tag.model_name == model_name, Tag.origin == TagOrigin.CONCEPT.value
    )
    session.execute(
        sa.delete(_asset_tags).where(
            _asset_tags.c.asset_id.in_(kept_ids), _asset_tags.c.tag_id.not_in(concept_tags)
        )
    )
    kept_scores = scores[keep]
    rows, cols = np.nonzero(kept_scores >= score_floor)
    asset_col = np.asarray(kept_ids, dtype=np.int64)[rows].tolist()
    tag_col = tag_ids[cols].tolist()
    score_col = kept_scores[rows, cols].tolist()
    score_rows = list(zip(asset_col, tag_col, score_col, strict=True))
    bulk_insert(session, _asset_tags, ("asset_id", "tag_id", "score"), score_rows)

    update = (
        sa.update(_assets)
        .where(_assets.c.id == sa.bindparam("b_id"))
        .values(
            status=AssetStatus.DONE.value,
            error=None,
            model_name=model_name,
            width=sa.func.coalesce(sa.bindparam("b_width"), _assets.c.width),
            height=sa.func.coalesce(sa.bindparam("b_height"), _assets.c.height),
            mime=sa.func.coalesce(sa.bindparam("b_mime"), _assets.c.mime),
            embedding=sa.bindparam("b_embedding", type_=sa.LargeBinary),
            embedding_dim=sa.bindparam("b_embedding_dim"),
            thumbnail=sa.func.coalesce(
                sa.bindparam("b_thumbnail", type_=sa.LargeBinary), _assets.c.thumbnail
            ),
            thumbnail_path=sa.func.coalesce(sa.bindparam("b_thumb_path"), _assets.c.thumbnail_path),
            token_shard=sa.bindparam("b_token_shard"),
            token_offset=sa.bindparam("b_token_offset"),
            lease_owner=None,
            lease_until=None,
            dispatched_at=None,
            updated_at=db_now(),
        )
    )
    rows_params = []
    for i in keep:
        r = results[i]
        emb = None if r.embedding is None else encode_vectors(r.embedding)
        dim = None if r.embedding is None else int(np.asarray(r.embedding).size)
        rows_params.append(
            {
                "b_id": r.asset_id,
                "b_width": r.width,
                "b_height": r.height,
                "b_mime": r.mime,
                "b_embedding": emb,
                "b_embedding_dim": dim,
                "b_thumbnail": r.thumbnail,
                "b_thumb_path": r.thumbnail_path,
                "b_token_shard": r.token_shard,
                "b_token_offset": r.token_offset,
            }
        )
    session.execute(update, rows_params)
    record_asset_event(session, EventType.ASSET_DONE, kept_ids, model=model_name)
    return WriteSummary(kept_ids, missing, len(score_rows))


def delete_asset(session: Session, asset_id: int) -> DeletedAsset | None:
    """Delete an asset with its sources and scores (ON DELETE CASCADE).

    The FAISS index, the token store and thumbnail/original files are not touched: the returned
    record says what to clean up there. Jobs still waiting for the asset count it as failed.
    Returns None if the asset did not exist.
    """
    # The asset row first, then the jobs: the order every writer takes them in (no deadlock
    # with a worker committing the asset at the same time).
    session.execute(sa.select(_assets.c.id).where(_assets.c.id == asset_id).with_for_update())
    complete_jobs(session, credit_assets(session, [asset_id], JobOutcome.FAILED))
    stmt = (
        sa.delete(_assets)
        .where(_assets.c.id == asset_id)
        .returning(
            _assets.c.id,
            _assets.c.sha256,
            _assets.c.storage_path,
            _assets.c.thumbnail_path,
            _assets.c.token_shard,
            _assets.c.token_offset,
            _assets.c.model_name,
        )
    )
    row = session.execute(stmt).one_or_none()
    if row is None:
        return None
    return DeletedAsset(*row)


def count_by_status(session: Session) -> dict[str, int]:
    """Number of assets per status (every status present, zero if none)."""
    counts = {s.value: 0 for s in AssetStatus}
    stmt = sa.select(_assets.c.status, sa.func.count()).group_by(_assets.c.status)
    for status, n in session.execute(stmt):
        counts[status] = int(n)
    return counts


def assets_scored_by_other_model(
    session: Session, model_name: str, *, after_id: int = 0, limit: int = 1000
) -> list[int]:
    """Ids of ``done`` assets scored by a model other than ``model_name``, ascending.

    Resumable: pass the last id of the previous page as ``after_id``.
    """
    if limit < 1:
        raise ValueError("limit must be >= 1")
    stmt = (
        sa.select(_assets.c.id)
        .where(
            _assets.c.status == AssetStatus.DONE.value,
            _assets.c.model_name != model_name,
            _assets.c.id > after_id,
        )
        .order_by(_assets.c.id)
        .limit(limit)
    )
    return [int(i) for i in session.execute(stmt).scalars()]


def count_assets_scored_by_other_model(session: Session, model_name: str) -> int:
    """How many ``done`` assets were scored by a model other than ``model_name``."""
    stmt = sa.select(sa.func.count()).where(
        _assets.c.status == AssetStatus.DONE.value, _assets.c.model_name != model_name
    )
    return int(session.execute(stmt).scalar_one())
