"""Reading image embeddings back for the FAISS index (rebuild, drift check, sync).

The embedding set of a model is every asset with ``model_name = M`` and a stored embedding,
whatever its status (an asset being re-scored keeps its old, still valid, embedding), plus the
frames of those assets (videos, animations) under their frame keys (:mod:`indexer.frame_keys`:
above every asset id, so "ids in order" is assets first, then frames in (asset, idx) order).
Frames are written in the transaction that updates their asset, so the asset's ``updated_at``
dates them too.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from indexer.db._sql import chunks, table_of
from indexer.db.assets import Asset
from indexer.db.frames import AssetFrame
from indexer.db.vectors import decode_vectors
from indexer.frame_keys import FRAME_KEY_BASE, FRAMES_PER_ASSET, asset_of, is_frame_key

_assets = table_of(Asset)
_frames = table_of(AssetFrame)
_frame_key = (
    sa.literal(FRAME_KEY_BASE, sa.BigInteger)
    + _frames.c.asset_id * FRAMES_PER_ASSET
    + _frames.c.idx
)


def _frames_in_set(model_name: str) -> sa.Select:
    """Frames of the model's embedding set, joined to their asset."""
    return (
        sa.select(_frame_key.label("key"), _frames.c.embedding, _frames.c.embedding_dim)
        .select_from(_frames.join(_assets, _assets.c.id == _frames.c.asset_id))
        .where(*_in_set(model_name), _frames.c.embedding.is_not(None))
    )


@dataclass(frozen=True, slots=True)
class Watermark:
    """Summary of a model's embedding set, to detect a stale index."""

    count: int
    max_id: int
    max_updated_at: datetime | None


def _in_set(model_name: str) -> list[sa.ColumnElement[bool]]:
    return [_assets.c.model_name == model_name, _assets.c.embedding.is_not(None)]


def embedding_watermark(session: Session, model_name: str) -> Watermark:
    """Count, highest id and latest update of the model's embedding set."""
    stmt = sa.select(
        sa.func.count(), sa.func.max(_assets.c.id), sa.func.max(_assets.c.updated_at)
    ).where(*_in_set(model_name))
    count, max_id, max_updated = session.execute(stmt).one()
    frames = session.execute(
        sa.select(sa.func.count()).select_from(_frames_in_set(model_name).subquery())
    ).scalar_one()
    return Watermark(int(count) + int(frames), int(max_id or 0), max_updated)


def _frame_keys(session: Session, stmt: sa.Select) -> np.ndarray:
    keys = stmt.with_only_columns(_frame_key).order_by(_frames.c.asset_id, _frames.c.idx)
    return np.fromiter(session.execute(keys).scalars(), dtype=np.int64)


def embedding_ids(session: Session, model_name: str) -> np.ndarray:
    """Sorted int64 ids of the model's embedding set."""
    stmt = sa.select(_assets.c.id).where(*_in_set(model_name)).order_by(_assets.c.id)
    ids = np.fromiter(session.execute(stmt).scalars(), dtype=np.int64)
    return np.concatenate([ids, _frame_keys(session, _frames_in_set(model_name))])


def ids_updated_since(session: Session, model_name: str, since: datetime) -> np.ndarray:
    """Ids in the model's embedding set updated at or after ``since``."""
    stmt = sa.select(_assets.c.id).where(*_in_set(model_name), _assets.c.updated_at >= since)
    ids = np.fromiter(session.execute(stmt).scalars(), dtype=np.int64)
    frames = _frames_in_set(model_name).where(_assets.c.updated_at >= since)
    return np.concatenate([ids, _frame_keys(session, frames)])


def _rows_to_arrays(rows: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    if not rows:
        return np.empty(0, np.int64), np.empty((0, 0), np.float32)
    dims = {int(r[2]) for r in rows}
    if len(dims) != 1:
        raise ValueError(f"embeddings of one model have different dimensions: {sorted(dims)}")
    dim = dims.pop()
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    vectors = decode_vectors(b"".join(r[1] for r in rows), dim)
    return ids, vectors


def get_embeddings(
    session: Session, model_name: str, asset_ids: Sequence[int] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(ids, (n, d) vectors) for those of ``asset_ids`` in the model's embedding set."""
    out_ids: list[np.ndarray] = []
    out_vecs: list[np.ndarray] = []
    wanted = np.asarray(asset_ids, dtype=np.int64).reshape(-1)
    frame_mask = is_frame_key(wanted)
    keys = wanted[frame_mask]
    for part in chunks(np.unique(asset_of(keys)).tolist()):
        stmt = _frames_in_set(model_name).where(_frames.c.asset_id.in_(part))
        ids, vecs = _rows_to_arrays(session.execute(stmt.order_by(_frame_key)).all())
        hit = np.isin(ids, keys)
        if hit.any():
            out_ids.append(ids[hit])
            out_vecs.append(vecs[hit])
    for part in chunks(wanted[~frame_mask].tolist()):
        stmt = (
            sa.select(_assets.c.id, _assets.c.embedding, _assets.c.embedding_dim)
            .where(*_in_set(model_name), _assets.c.id.in_(part))
            .order_by(_assets.c.id)
        )
        ids, vecs = _rows_to_arrays(session.execute(stmt).all())
        if ids.size:
            out_ids.append(ids)
            out_vecs.append(vecs)
    if not out_ids:
        return np.empty(0, np.int64), np.empty((0, 0), np.float32)
    ids, vecs = np.concatenate(out_ids), np.concatenate(out_vecs)
    order = np.argsort(ids, kind="stable")
    return ids[order], vecs[order]


def iter_embeddings(
    session: Session, model_name: str, *, batch_size: int = 10_000
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The model's embedding set in id order (assets, then frames), as (ids, (n, d) vectors)
    batches.

    Keyset paging (``id > last``) keeps memory flat and each query short.
    """
    last = 0
    while True:
        stmt = (
            sa.select(_assets.c.id, _assets.c.embedding, _assets.c.embedding_dim)
            .where(*_in_set(model_name), _assets.c.id > last)
            .order_by(_assets.c.id)
            .limit(batch_size)
        )
        rows = session.execute(stmt).all()
        if not rows:
            break
        ids, vectors = _rows_to_arrays(rows)
        yield ids, vectors
        last = int(ids[-1])
    last_asset, last_idx = 0, -1
    while True:
        stmt = (
            _frames_in_set(model_name)
            .where(sa.tuple_(_frames.c.asset_id, _frames.c.idx) > (last_asset, last_idx))
            .order_by(_frames.c.asset_id, _frames.c.idx)
            .limit(batch_size)
        )
        rows = session.execute(stmt).all()
        if not rows:
            return
        ids, vectors = _rows_to_arrays(rows)
        yield ids, vectors
        last_key = int(ids[-1]) - FRAME_KEY_BASE
        last_asset, last_idx = last_key // FRAMES_PER_ASSET, last_key % FRAMES_PER_ASSET
