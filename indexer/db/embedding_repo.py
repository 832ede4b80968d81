"""Reading image embeddings back for the FAISS index (rebuild, drift check, sync).

The embedding set of a model is every asset with ``model_name = M`` and a stored embedding,
whatever its status (an asset being re-scored keeps its old, still valid, embedding).
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
from indexer.db.vectors import decode_vectors

_assets = table_of(Asset)


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
    return Watermark(int(count), int(max_id or 0), max_updated)


def embedding_ids(session: Session, model_name: str) -> np.ndarray:
    """Sorted int64 ids of the model's embedding set."""
    stmt = sa.select(_assets.c.id).where(*_in_set(model_name)).order_by(_assets.c.id)
    return np.fromiter(session.execute(stmt).scalars(), dtype=np.int64)


def ids_updated_since(session: Session, model_name: str, since: datetime) -> np.ndarray:
    """Ids in the model's embedding set updated at or after ``since``."""
    stmt = sa.select(_assets.c.id).where(*_in_set(model_name), _assets.c.updated_at >= since)
    return np.fromiter(session.execute(stmt).scalars(), dtype=np.int64)


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
    for part in chunks([int(i) for i in asset_ids]):
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
    return np.concatenate(out_ids), np.concatenate(out_vecs)


def iter_embeddings(
    session: Session, model_name: str, *, batch_size: int = 10_000
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The model's embedding set in id order, as (ids, (n, d) vectors) batches.

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
            return
        ids, vectors = _rows_to_arrays(rows)
        yield ids, vectors
        last = int(ids[-1])
