"""Long videos shared by several workers: plan the parts, run one, turn the parts into the asset.

In broker mode a video longer than ``media.split_s`` is split by the worker that claimed it
(:meth:`indexer.ingest.process.AssetProcessor`): :func:`plan_parts` cuts the indexed length
(at most ``media.max_duration_s``) into equal time ranges and gives each its own slice of the
asset's frame indices (``max_frames // parts`` each, so the frame count per video stays bounded
by ``media.max_frames`` and every frame key is fixed by its part). One ``ramdex.video_part`` task
per part goes to the model queue, where any model worker takes it (:func:`run_video_part`):

1. claim the part's lease (a duplicate message, or a part another live worker runs, is skipped);
2. decode its range (:func:`indexer.frames.video.decode_video` with ``start_s``/``end_s``), run
   the model over its frames, append their token records under their frame keys;
3. one transaction, with the asset row locked: the part's frames replace its slice of
   ``asset_frames``, the part is done with its tags' maxima and its poster candidate; if it was
   the last unfinished part, the asset gets its result here (:func:`finish_asset`): every tag's
   maximum over the parts (exactly an unsplit run's maximum over frames), the poster frame's c
   and E (of the first part that found frames), status ``done``, its jobs credited.

A part that cannot be decoded is ``failed`` with its reason; the asset is done with the frames
of the others, or failed with the first reason when no part found a frame. A worker killed mid
part leaves its lease to run out; the reconciler (:func:`watch_video_parts`) sends the part again
(up to :data:`MAX_PART_ATTEMPTS` runs, then it is failed as a file that kills its decoder).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import numpy as np
import sqlalchemy as sa

from indexer.celery_app import VIDEO_PART_TASK, producer_app
from indexer.db.asset_repo import AssetResult, mark_failed, write_asset_results
from indexer.db.assets import Asset, AssetStatus
from indexer.db.frame_repo import FrameResult, replace_frame_slice
from indexer.db.frames import AssetFrame
from indexer.db.session import session_scope
from indexer.db.vectors import decode_vector
from indexer.db.video_parts import (
    ClaimedVideoPart,
    PartOutcome,
    PartPlan,
    VideoPartStatus,
    claim_video_part,
    fail_video_part,
    finish_video_part,
    lock_asset,
    part_outcomes,
    release_video_part,
    requeue_video_parts,
    stopped_video_parts,
)
from indexer.frame_keys import frame_key, frame_keys
from indexer.frames import decode_media
from indexer.ingest.lease import keeper_for
from indexer.ingest.queue_mark import lost_before, redispatch_after_s, send_headers
from indexer.jobs import settle
from indexer.settings import MediaSettings, Settings
from ram_pp.preprocess import ImageDecodeError

if TYPE_CHECKING:
    from indexer.ingest.process import AssetProcessor

log = logging.getLogger(__name__)

MAX_PART_ATTEMPTS = 3  # runs of one part that may end without a commit (killed) before it fails
STOPPED_PART = (
    "the process decoding {start:.0f}-{end:.0f} s of this video stopped {n} times before it "
    "finished (a range that crashes the decoder?); not retried: check the file"
)
_frames = AssetFrame.__table__


def plan_parts(duration_s: float | None, media: MediaSettings) -> list[PartPlan] | None:
    """The time ranges of a video worth splitting (None: index it in one piece).

    The indexed length (up to ``max_duration_s``) is cut into ``ceil(length / split_s)`` equal
    ranges, at most ``max_frames`` of them; each gets ``max_frames // parts`` frame indices.
    """
    if not duration_s or duration_s <= media.split_s:
        return None
    length = min(float(duration_s), media.max_duration_s)
    count = min(math.ceil(length / media.split_s), media.max_frames)
    if count < 2:
        return None
    per_part = max(1, media.max_frames // count)
    step = length / count
    return [
        PartPlan(
            start_s=n * step,
            end_s=length if n == count - 1 else (n + 1) * step,
            first_idx=n * per_part,
            max_frames=per_part,
        )
        for n in range(count)
    ]


def send_video_parts(settings: Settings, asset_id: int, parts: list[int]) -> None:
    """Queue parts of a split video for any model worker."""
    app = producer_app(settings)
    for part in parts:
        app.send_task(
            VIDEO_PART_TASK,
            args=[asset_id, part],
            queue=settings.broker.model_queue,
            headers=send_headers(),
        )


@dataclass(frozen=True)
class PartRun:
    """What :func:`run_video_part` did: ``status`` is done, failed, skipped or gone."""

    status: str
    frames: int = 0
    finished_asset: str | None = None  # the asset's status when this part finished it
    reason: str | None = None


def run_video_part(proc: AssetProcessor, asset_id: int, part: int) -> PartRun:
    """Decode, tag and store one part of a split video (idempotent; see the module doc).

    Raises:
        Transient errors (database, broker, GPU memory): the part is given back (pending) when
            the database allows it, else its lease runs out; calling again is safe.
    """
    settings = proc.settings
    owner = proc.owner
    with session_scope(proc.url) as session:
        claimed = claim_video_part(session, asset_id, part, owner, settings.ingest.lease_s)
    if claimed is None:
        return PartRun("skipped")  # finished, gone, or another live worker runs it
    keeper = keeper_for(settings)
    keeper.hold_video_part(asset_id, part)
    try:
        if claimed.attempts > MAX_PART_ATTEMPTS:
            reason = STOPPED_PART.format(
                start=claimed.start_s, end=claimed.end_s, n=claimed.attempts - 1
            )
            return _fail_part(proc, claimed, reason)
        return _run_claimed(proc, claimed)
    except ImageDecodeError as exc:
        return _fail_part(proc, claimed, exc.reason)
    except BaseException:
        try:
            with session_scope(proc.url) as session:
                release_video_part(session, asset_id, part, owner)
        except Exception as exc:  # the database is the problem: the lease runs out instead
            log.warning("could not give video part %s/%s back (%s)", asset_id, part, exc)
        raise
    finally:
        keeper.drop_video_part(asset_id, part)


def _run_claimed(proc: AssetProcessor, claimed: ClaimedVideoPart) -> PartRun:
    with session_scope(proc.url) as session:
        row = session.execute(
            sa.select(Asset.sha256, Asset.storage_path, Asset.mime).where(
                Asset.id == claimed.asset_id
            )
        ).one_or_none()
    if row is None:
        return PartRun("gone")
    original, problem = proc.original_of(row.sha256, row.storage_path)
    if original is None:
        return _fail_part(proc, claimed, problem or "the original file is missing")
    label = str(claimed.asset_id)
    media = decode_media(
        original,
        row.mime,
        proc.frame_options,
        label,
        start_s=claimed.start_s,
        end_s=claimed.end_s,
        max_frames=claimed.max_frames,
    )
    if media is None:  # not a video after all (the type was changed under us)
        raise ImageDecodeError(label, "not a video")
    for note in media.notes:
        log.info("asset %s part %s: %s", claimed.asset_id, claimed.part, note)
    frames = media.frames[: claimed.max_frames]
    results = proc.score_images([proc.model_input(f.image) for f in frames], [label] * len(frames))
    keys = frame_keys(claimed.asset_id, len(results), start=claimed.first_idx)
    # Tokens first (as for any asset): a death before the commit below leaves the part
    # unfinished, and its next run replaces these records.
    proc.token_store().add(keys, np.stack([r.tokens for r in results]))
    if proc.before_commit is not None:  # fault injection (tests): die between E and the commit
        proc.before_commit(keys)
    poster = media.poster_index()
    poster = poster if poster < len(frames) else 0
    thumbnail = None
    if claimed.part == 0:
        thumbnail = proc.put_thumbnail(row.sha256, media.poster_image())
    tag_ids = proc.tag_ids()
    floor = proc.settings.index.score_floor
    best = np.max(np.stack([r.probabilities for r in results]), axis=0)
    keep = np.nonzero(best >= floor)[0]
    rows = [
        FrameResult(claimed.first_idx + i, f.timestamp_s, r.probabilities, r.embedding)
        for i, (f, r) in enumerate(zip(frames, results, strict=True))
    ]
    with session_scope(proc.url) as session:
        if lock_asset(session, claimed.asset_id) is None:
            return PartRun("gone")
        replace_frame_slice(
            session,
            claimed.asset_id,
            claimed.first_idx,
            claimed.max_frames,
            rows,
            tag_ids=tag_ids,
            score_floor=floor,
        )
        if thumbnail is not None:  # part 0: the poster, and the size as displayed (a phone
            # video's header gives the coded size, a quarter turn from what is shown)
            session.execute(
                sa.update(Asset)
                .where(Asset.id == claimed.asset_id)
                .values(thumbnail_path=thumbnail, width=media.width, height=media.height)
            )
        if not finish_video_part(
            session,
            claimed,
            proc.owner,
            frames=len(rows),
            poster_idx=claimed.first_idx + poster,
            tag_ids=tag_ids[keep],
            maxima=best[keep],
        ):
            session.rollback()  # another worker took the part over after our lease ran out
            return PartRun("skipped")
        finished = _finish_if_last(session, proc, claimed.asset_id)
    _after_commit(proc, claimed.asset_id, finished)
    return PartRun("done", len(rows), finished)


def _fail_part(proc: AssetProcessor, claimed: ClaimedVideoPart, reason: str) -> PartRun:
    with session_scope(proc.url) as session:
        if lock_asset(session, claimed.asset_id) is None:
            return PartRun("gone")
        if not fail_video_part(session, claimed.asset_id, claimed.part, reason, proc.owner):
            return PartRun("skipped")
        finished = _finish_if_last(session, proc, claimed.asset_id)
    log.warning("asset %s part %s failed: %s", claimed.asset_id, claimed.part, reason)
    _after_commit(proc, claimed.asset_id, finished)
    return PartRun("failed", finished_asset=finished, reason=reason)


def _finish_if_last(session: sa.orm.Session, proc: AssetProcessor, asset_id: int) -> str | None:
    """In the caller's transaction (asset row locked): when no part is left, the asset's
    result. Returns the asset's new status, or None while parts are still running."""
    outcomes = part_outcomes(session, asset_id)
    if any(o.status in (VideoPartStatus.PENDING, VideoPartStatus.RUNNING) for o in outcomes):
        return None
    return finish_asset(session, proc, asset_id, outcomes)


def finish_asset(
    session: sa.orm.Session, proc: AssetProcessor, asset_id: int, outcomes: list[PartOutcome]
) -> str:
    """Turn the finished parts into the asset's result (in the caller's transaction, the asset
    row locked): done with every tag's maximum over the parts and the poster frame's c and E,
    or failed with the first part's reason when no part found a frame. Frames beyond the
    parts' slices (left by an earlier, longer split or an unsplit run) are removed.

    Args:
        outcomes: every part of the asset (:func:`indexer.db.video_parts.part_outcomes`).
    """
    done = [o for o in outcomes if o.status == VideoPartStatus.DONE and o.frames > 0]
    slices_end = max((o.first_idx + o.max_frames for o in outcomes), default=0)
    _drop_frames_from(session, proc, asset_id, slices_end)
    if not done:
        reason = next((o.error for o in outcomes if o.error), None) or "no decodable video frame"
        mark_failed(session, [asset_id], reason)
        settle(session, failed=[asset_id])
        return AssetStatus.FAILED.value
    tag_ids = proc.tag_ids()
    position = {int(t): i for i, t in enumerate(tag_ids)}
    scores = np.zeros(tag_ids.size, dtype=np.float32)
    for o in done:
        at = np.array([position[int(t)] for t in o.tag_ids], dtype=np.int64)
        if at.size:
            scores[at] = np.maximum(scores[at], o.maxima)
    poster_idx = done[0].poster_idx if done[0].poster_idx is not None else 0
    frame = session.execute(
        sa.select(_frames.c.embedding, _frames.c.embedding_dim).where(
            _frames.c.asset_id == asset_id, _frames.c.idx == poster_idx
        )
    ).one()
    embedding = decode_vector(frame.embedding, int(frame.embedding_dim))
    store = proc.token_store()
    store.refresh()  # the poster frame's record may be another worker's commit
    store.add(
        np.array([asset_id], dtype=np.int64),
        store.get(np.array([frame_key(asset_id, poster_idx)], dtype=np.int64)),
    )
    facts = session.execute(
        sa.select(Asset.width, Asset.height, Asset.mime, Asset.thumbnail_path).where(
            Asset.id == asset_id
        )
    ).one()
    write_asset_results(
        session,
        [
            AssetResult(
                asset_id=asset_id,
                scores=scores,
                embedding=embedding,
                width=int(facts.width or 0),
                height=int(facts.height or 0),
                mime=facts.mime,
                thumbnail_path=facts.thumbnail_path,
                token_shard=0,
            )
        ],
        model_name=proc.model_id,
        tag_ids=tag_ids,
        score_floor=proc.settings.index.score_floor,
    )
    settle(session, done=[asset_id])
    return AssetStatus.DONE.value


def _drop_frames_from(
    session: sa.orm.Session, proc: AssetProcessor, asset_id: int, first_idx: int
) -> None:
    stale = [
        int(i)
        for i in session.execute(
            sa.select(_frames.c.idx).where(
                _frames.c.asset_id == asset_id, _frames.c.idx >= first_idx
            )
        ).scalars()
    ]
    if not stale:
        return
    session.execute(
        sa.delete(_frames).where(_frames.c.asset_id == asset_id, _frames.c.idx >= first_idx)
    )
    proc.token_store().delete(np.array([frame_key(asset_id, i) for i in stale], dtype=np.int64))


def _after_commit(proc: AssetProcessor, asset_id: int, finished: str | None) -> None:
    if finished != AssetStatus.DONE.value or proc.on_committed is None:
        return
    try:
        proc.on_committed([asset_id], True)
    except Exception as exc:  # the index is derived data; it is resynced from the database
        log.warning("after-commit hook failed for video %s (%s)", asset_id, exc)


def watch_video_parts(settings: Settings, *, queue_empty: bool) -> int:
    """Reconciler pass: send again the parts whose run stopped (a lease that ran out) or whose
    message was lost (pending, sent before what the queue has delivered since, or, with an
    empty queue, sent longer ago than ``ingest.redispatch_after_s``). Returns parts sent."""
    if not settings.broker.url:
        return 0
    with session_scope(settings.database_url) as session:
        if queue_empty:
            before: datetime | None = datetime.now(UTC) - timedelta(
                seconds=redispatch_after_s(settings)
            )
        else:
            before = lost_before(settings, session)
        stopped = stopped_video_parts(session, queued_before=before)
        requeue_video_parts(session, stopped)
    by_asset: dict[int, list[int]] = {}
    for asset_id, part in stopped:
        by_asset.setdefault(asset_id, []).append(part)
    for asset_id, parts in by_asset.items():
        log.warning("video %s: parts %s stopped or were lost; sending them again", asset_id, parts)
        try:
            send_video_parts(settings, asset_id, parts)
        except Exception as exc:  # broker away: still pending, a later pass sends them
            log.warning("video %s: could not send its parts (%s)", asset_id, exc)
    return len(stopped)
