"""Frames in search results: frame keys turned into their video with the best timestamps.

The FAISS index and the token store hold a video's (or an animation's) frames under frame keys
(:mod:`indexer.frame_keys`) beside asset ids, so concept and similar rankings may name frames.
:func:`fold_frames` maps such a ranking onto assets: each asset once, at its best position
(its best frame or its own vector), with the frames that ranked, best first, as
``(timestamp_s, score)``. Tag hits get their frames from the stored per-frame scores
(:func:`tag_frames`): the frames whose score passes the tag's threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from indexer.db.frame_repo import read_frames
from indexer.db.frames import AssetFrame
from indexer.db.tags import Tag
from indexer.frame_keys import asset_of, index_of, is_frame_key

MAX_FRAMES_PER_HIT = 5  # timestamps a hit carries at most


@dataclass(frozen=True, slots=True)
class FrameHit:
    """A moment of a video that matched: where, and how well."""

    timestamp_s: float
    score: float


def fold_frames(
    session: Session,
    ids: np.ndarray,
    scores: np.ndarray,
    *,
    exclude: int | None = None,
    min_score: float | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[int, tuple[FrameHit, ...]]]:
    """A ranking over assets and frame keys as a ranking over assets (best first kept).

    Args:
        ids, scores: the ranking, best first.
        exclude: an asset to leave out with its frames (the query asset of a similar search).
        min_score: frames scoring under this are not listed (the concept's threshold), unless
            none pass (then the best one is).

    Returns:
        (asset ids, their scores, asset id -> its matching frames best first).
    """
    ids = np.asarray(ids, dtype=np.int64)
    mask = is_frame_key(ids)
    assets = ids.copy()
    assets[mask] = asset_of(ids[mask])
    keep = assets != (exclude if exclude is not None else -1)
    if not mask.any():
        return assets[keep], np.asarray(scores)[keep], {}
    _, first = np.unique(assets, return_index=True)
    order = np.sort(first[keep[first]])
    wanted: dict[int, list[tuple[int, float]]] = {}
    chosen = mask & keep
    keys = ids[chosen]
    for asset_id, idx, score in zip(
        asset_of(keys).tolist(),
        index_of(keys).tolist(),
        np.asarray(scores)[chosen].tolist(),
        strict=True,
    ):
        wanted.setdefault(int(asset_id), []).append((int(idx), float(score)))
    times = _timestamps(session, list(wanted))
    frames: dict[int, tuple[FrameHit, ...]] = {}
    for asset_id, found in wanted.items():
        hits = [FrameHit(times[(asset_id, i)], s) for i, s in found if (asset_id, i) in times]
        passing = [h for h in hits if min_score is None or h.score > min_score] or hits[:1]
        frames[asset_id] = tuple(passing[:MAX_FRAMES_PER_HIT])
    return assets[order], np.asarray(scores)[order], frames


def _timestamps(session: Session, asset_ids: Sequence[int]) -> dict[tuple[int, int], float]:
    if not asset_ids:
        return {}
    table = AssetFrame.__table__.c
    rows = session.execute(
        sa.select(table.asset_id, table.idx, table.timestamp_s).where(
            table.asset_id.in_(list(asset_ids))
        )
    )
    return {(int(a), int(i)): float(t) for a, i, t in rows}


def tag_frames(
    session: Session, asset_ids: Sequence[int], tag_ids: Sequence[int]
) -> dict[int, tuple[FrameHit, ...]]:
    """For tag hits: each multi-frame asset's frames that pass every one of ``tag_ids``'
    thresholds (score: the weakest of those tags in the frame), best first; when no frame
    passes all, the frames passing any."""
    stored = read_frames(session, asset_ids)
    if not stored or not tag_ids:
        return {}
    thresholds = {
        int(t): float(o if o is not None else th)
        for t, th, o in session.execute(
            sa.select(Tag.id, Tag.threshold, Tag.threshold_override).where(
                Tag.id.in_(list(tag_ids))
            )
        )
    }
    out: dict[int, tuple[FrameHit, ...]] = {}
    for asset_id, frames in stored.items():
        every: list[FrameHit] = []
        some: list[FrameHit] = []
        for frame in frames:
            got = dict(zip(frame.tags.tolist(), frame.scores.tolist(), strict=True))
            passing = [got[t] for t in thresholds if got.get(t, 0.0) > thresholds[t]]
            if passing and len(passing) == len(thresholds):
                every.append(FrameHit(frame.timestamp_s, min(passing)))
            elif passing:
                some.append(FrameHit(frame.timestamp_s, max(passing)))
        chosen = sorted(every or some, key=lambda h: -h.score)
        if chosen:
            out[asset_id] = tuple(chosen[:MAX_FRAMES_PER_HIT])
    return out
