"""Writing and reading the frames of multi-frame assets (``asset_frames``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from indexer.db._sql import chunks, table_of
from indexer.db.assets import Asset, AssetStatus
from indexer.db.frames import AssetFrame
from indexer.db.vectors import encode_vectors
from indexer.frame_keys import FRAME_KEY_BASE, FRAMES_PER_ASSET

_frames = table_of(AssetFrame)
_assets = table_of(Asset)


@dataclass(frozen=True, slots=True)
class FrameResult:
    """What the model made of one frame.

    Attributes:
        idx: the frame's place in the asset (0.. in time order).
        timestamp_s: where it is in the file.
        scores: (T,) tag probabilities in logit order.
        embedding: (d,) unit-norm c.
    """

    idx: int
    timestamp_s: float
    scores: np.ndarray
    embedding: np.ndarray


@dataclass(frozen=True, slots=True)
class MediaFacts:
    """The asset columns a multi-frame or RAW file sets."""

    kind: str | None
    duration_s: float | None = None
    codec: str | None = None


def frame_counts(session: Session, asset_ids: Sequence[int]) -> dict[int, int]:
    """Frames stored per asset (assets without frames left out)."""
    out: dict[int, int] = {}
    for part in chunks([int(i) for i in asset_ids]):
        stmt = (
            sa.select(_frames.c.asset_id, sa.func.count())
            .where(_frames.c.asset_id.in_(part))
            .group_by(_frames.c.asset_id)
        )
        out.update({int(a): int(n) for a, n in session.execute(stmt)})
    return out


def _frame_rows(
    asset_id: int, frames: Sequence[FrameResult], tag_ids: np.ndarray, score_floor: float
) -> list[dict[str, object]]:
    """``asset_frames`` rows: c as float32, the scores at or above the floor compactly."""
    rows = []
    for frame in frames:
        scores = np.asarray(frame.scores, dtype=np.float32)
        keep = np.nonzero(scores >= score_floor)[0]
        rows.append(
            {
                "asset_id": asset_id,
                "idx": frame.idx,
                "timestamp_s": float(frame.timestamp_s),
                "embedding": encode_vectors(frame.embedding),
                "embedding_dim": int(np.asarray(frame.embedding).size),
                "score_tags": tag_ids[keep].astype("<i4").tobytes(),
                "score_values": scores[keep].astype("<f2").tobytes(),
            }
        )
    return rows


def replace_frame_slice(
    session: Session,
    asset_id: int,
    first_idx: int,
    count: int,
    frames: Sequence[FrameResult],
    *,
    tag_ids: np.ndarray,
    score_floor: float,
) -> None:
    """Frames ``first_idx .. first_idx + count - 1`` of one asset are replaced by ``frames``
    (a split video's part, :mod:`indexer.ingest.video_parts`), in the caller's transaction."""
    session.execute(
        sa.delete(_frames).where(
            _frames.c.asset_id == asset_id,
            _frames.c.idx >= first_idx,
            _frames.c.idx < first_idx + count,
        )
    )
    rows = _frame_rows(asset_id, frames, np.asarray(tag_ids, dtype=np.int64), score_floor)
    if rows:
        session.execute(sa.insert(_frames), rows)


def write_frames(
    session: Session,
    frames_by_asset: dict[int, Sequence[FrameResult]],
    facts: dict[int, MediaFacts],
    *,
    tag_ids: np.ndarray,
    score_floor: float,
) -> int:
    """Replace the frames of these assets and set their media facts, in the caller's
    transaction (the one :func:`indexer.db.asset_repo.write_asset_results` runs in).

    Returns:
        frame rows written.
    """
    tag_ids = np.asarray(tag_ids, dtype=np.int64)
    ids = sorted(set(frames_by_asset) | set(facts))
    if not ids:
        return 0
    session.execute(sa.delete(_frames).where(_frames.c.asset_id.in_(ids)))
    rows = [
        row
        for asset_id, frames in frames_by_asset.items()
        for row in _frame_rows(asset_id, frames, tag_ids, score_floor)
    ]
    if rows:
        session.execute(sa.insert(_frames), rows)
    update = (
        sa.update(_assets)
        .where(_assets.c.id == sa.bindparam("b_id"))
        .values(
            kind=sa.bindparam("b_kind"),
            duration_s=sa.bindparam("b_duration"),
            codec=sa.bindparam("b_codec"),
        )
    )
    params = [
        {
            "b_id": i,
            "b_kind": facts[i].kind if i in facts else None,
            "b_duration": facts[i].duration_s if i in facts else None,
            "b_codec": facts[i].codec if i in facts else None,
        }
        for i in ids
    ]
    session.execute(update, params)
    return len(rows)


@dataclass(frozen=True, slots=True)
class StoredFrame:
    """A frame as search reads it back."""

    asset_id: int
    idx: int
    timestamp_s: float
    tags: np.ndarray  # int32 tag ids scored at or above the floor
    scores: np.ndarray  # float32, aligned


def read_frames(session: Session, asset_ids: Sequence[int]) -> dict[int, list[StoredFrame]]:
    """The frames of these assets in time order (assets without frames left out)."""
    out: dict[int, list[StoredFrame]] = {}
    for part in chunks([int(i) for i in asset_ids]):
        stmt = (
            sa.select(
                _frames.c.asset_id,
                _frames.c.idx,
                _frames.c.timestamp_s,
                _frames.c.score_tags,
                _frames.c.score_values,
            )
            .where(_frames.c.asset_id.in_(part))
            .order_by(_frames.c.asset_id, _frames.c.idx)
        )
        for r in session.execute(stmt):
            out.setdefault(int(r.asset_id), []).append(
                StoredFrame(
                    int(r.asset_id),
                    int(r.idx),
                    float(r.timestamp_s),
                    np.frombuffer(r.score_tags or b"", dtype="<i4"),
                    np.frombuffer(r.score_values or b"", dtype="<f2").astype(np.float32),
                )
            )
    return out


# Frame keys computed in SQL (indexer.frame_keys.frame_key), so a filter's frames are read as
# keys without a round trip per asset.
_frame_key = (
    sa.literal(FRAME_KEY_BASE, sa.BigInteger)
    + _frames.c.asset_id * FRAMES_PER_ASSET
    + _frames.c.idx
)


def frame_keys_of(session: Session, asset_ids: Sequence[int]) -> np.ndarray:
    """The frame keys (:mod:`indexer.frame_keys`) of these assets' frames that have a c, in
    (asset, idx) order (int64; empty for still images)."""
    out: list[int] = []
    for part in chunks(sorted({int(i) for i in asset_ids})):
        stmt = (
            sa.select(_frame_key)
            .where(_frames.c.asset_id.in_(part), _frames.c.embedding.is_not(None))
            .order_by(_frames.c.asset_id, _frames.c.idx)
        )
        out += [int(k) for k in session.execute(stmt).scalars()]
    return np.array(out, np.int64)


def _frames_where(conditions: Sequence[Any]) -> sa.Select:
    """Frames (with a c) of the done assets passing ``conditions`` (SQL on ``assets``)."""
    return (
        sa.select(_frame_key)
        .select_from(_frames.join(_assets, _assets.c.id == _frames.c.asset_id))
        .where(
            _assets.c.status == AssetStatus.DONE.value,
            _frames.c.embedding.is_not(None),
            *conditions,
        )
    )


def count_matching_frames(session: Session, conditions: Sequence[Any]) -> int:
    """How many frames the done assets passing ``conditions`` have (a filtered vector search's
    selectivity counts them beside the assets: the index holds both)."""
    stmt = sa.select(sa.func.count()).select_from(_frames_where(conditions).subquery())
    return int(session.execute(stmt).scalar_one())


def matching_frame_keys(session: Session, conditions: Sequence[Any]) -> np.ndarray:
    """The frame keys of the done assets passing ``conditions``, in (asset, idx) order."""
    stmt = _frames_where(conditions).order_by(_frames.c.asset_id, _frames.c.idx)
    return np.fromiter((int(k) for k in session.execute(stmt).scalars()), np.int64)
