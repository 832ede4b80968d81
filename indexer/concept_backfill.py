"""Concept backfill: turn a new concept into a real tag with a score for every archived asset.

Steps (one job of kind ``backfill``, progress = assets scored of the assets stored):

1. descriptions: the user's, optionally the LLM's (cached), and the prompt templates only when
   there is nothing else;
2. encode them with the text encoder into the concept's label bank; store the embeddings;
3. calibrate the concept's threshold on a background sample of the archive (unless the user gave
   one), so the promoted tag outputs assets that stand out, as the retroactive search does;
4. promote the concept to a tag (origin ``concept``);
5. split the stored assets into parts (ranges of asset ids, about one token-store shard each:
   :mod:`indexer.db.backfill_parts`) and hand them out: with a broker each part is a task on the
   model queue, so every model worker of the cluster takes parts at once; embedded, this process
   runs them one after the other;
6. each part (:func:`run_backfill_part`) streams its assets' E through the open-set head and
   stores the scores (>= the score floor) chunk by chunk; a chunk's scores, the part's cursor
   and the job's progress commit in one transaction, so a part that stops resumes after its
   cursor and counts nothing twice. The part that finishes last completes the job.

Steps 1-5 run under the job's lease, each part under its own; the reconciler resumes a run or a
part whose lease ran out (:mod:`indexer.ingest.backfills`). A Celery model worker runs steps 1-5
as ``ramdex.backfill_concept`` and a part as ``ramdex.backfill_part``; the API's embedded mode
runs everything in its background thread.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import numpy as np
import sqlalchemy as sa
import torch

from indexer.db.assets import Asset
from indexer.db.backfill_parts import (
    ClaimedPart,
    PartRange,
    add_parts,
    advance_part,
    claim_part,
    fail_parts,
    finish_part,
    part_lease_owner,
    part_numbers,
)
from indexer.db.concept_repo import (
    concept_embeddings,
    get_concept,
    promote_concept,
    update_concept,
)
from indexer.db.concepts import ConceptStatus
from indexer.db.job_repo import update_job
from indexer.db.jobs import Job, JobStatus
from indexer.db.session import session_scope
from indexer.db.tag_repo import write_tag_scores
from indexer.ingest.lease import is_dead_here, keeper_for, process_owner
from indexer.jobs import claim_job_run, finish_job_run, job_lease_owner
from indexer.settings import Settings
from indexer.token_store import DEFAULT_SHARD_BYTES, TokenStore
from ram_pp.concepts import LlmDescriber, encode_concepts, make_concept
from ram_pp.labels import LabelBank
from ram_pp.model import RamPlus
from ram_pp.text_encoder import TextEncoder

log = logging.getLogger(__name__)


def _untimed(_: str) -> AbstractContextManager[None]:
    return nullcontext()


DispatchParts = Callable[[int, int, Sequence[int]], None]
"""``dispatch(concept_id, job_id, parts)``: hand a job's unfinished parts to whoever runs them."""


@dataclass
class BackfillContext:
    """What a backfill needs, wherever it runs.

    Attributes:
        settings: database, LLM endpoint, score floor, part and chunk sizes, home (LLM cache).
        model: the model whose open-set head scores the concept.
        text_encoder: returns the model's text encoder (loaded on first call).
        token_store: returns the model's token store (None before any ingest).
        calibrate: a concept bank's calibrated threshold (probability) over the archive.
        timer: ``timer(operation)`` context manager timing model work (metrics).
        dispatch: sends the parts to other processes (the broker's model queue); None runs
            them here, one after the other (the embedded mode).
    """

    settings: Settings
    model: RamPlus
    text_encoder: Callable[[], TextEncoder]
    token_store: Callable[[], TokenStore | None]
    calibrate: Callable[[LabelBank], float]
    timer: Callable[[str], AbstractContextManager[None]] = field(default=_untimed)
    dispatch: DispatchParts | None = None


def backfill_concept(
    ctx: BackfillContext,
    concept_id: int,
    job_id: int,
    *,
    generate: bool = False,
    fixed_threshold: bool = False,
) -> None:
    """Describe, encode, calibrate and promote one concept, then score it over the whole archive
    in parts (sent to the model workers, or run here).

    Args:
        ctx: model, text encoder, token store and settings of the process running it.
        concept_id: the concept (created as ``draft``).
        job_id: the ``backfill`` job to report into.
        generate: ask the configured LLM for more descriptions.
        fixed_threshold: keep the concept's threshold (the user gave one) instead of calibrating.

    A run of a job whose parts exist already (its message redelivered, or the run resumed after
    its process died once the parts were made) only hands out the unfinished parts again.
    Errors mark the job and the concept failed with the reason, then re-raise.
    """
    settings = ctx.settings
    url = settings.database_url
    owner = process_owner()
    # The run is leased (renewed while it runs): if this process dies, the lease runs out and
    # the reconciler resumes the job (with these arguments) or fails it with a reason.
    resume = {"backfill": {"generate": generate, "fixed_threshold": fixed_threshold}}
    lease_s = settings.ingest.lease_s
    if not claim_job_run(url, job_id, owner, lease_s, resume):
        # A pool process killed mid-run puts its message back at once: its lease still looks
        # live, but this machine can tell that it is dead.
        holder = job_lease_owner(url, job_id)
        dead = [holder] if holder and is_dead_here(holder) else []
        if not dead or not claim_job_run(url, job_id, owner, lease_s, resume, dead=dead):
            log.info("backfill job %s: cancelled, or running in another process: skipped", job_id)
            return
    keeper = keeper_for(settings)
    keeper.hold_run(job_id)
    try:
        with session_scope(url) as session:
            parts = part_numbers(session, job_id, unfinished=True)
            planned = bool(parts) or bool(part_numbers(session, job_id))
        if not planned:
            parts = _prepare(ctx, concept_id, job_id, generate=generate, fixed=fixed_threshold)
        if not parts:
            finish_job_run(url, job_id, owner, JobStatus.DONE)  # nothing stored to score
            return
        _hand_over(url, job_id, owner)
    except Exception as exc:
        _fail(url, job_id, concept_id, f"{type(exc).__name__}: {exc}", owner)
        raise
    finally:
        keeper.drop_run(job_id)
    if ctx.dispatch is not None:
        ctx.dispatch(concept_id, job_id, parts)
    else:
        for part in parts:
            run_backfill_part(ctx, job_id, part)


def _prepare(
    ctx: BackfillContext, concept_id: int, job_id: int, *, generate: bool, fixed: bool
) -> list[int]:
    """Steps 1-5: the concept's bank, threshold and tag; the parts made. Returns their numbers."""
    settings = ctx.settings
    url = settings.database_url
    with session_scope(url) as session:
        concept = get_concept(session, concept_id)
        if concept is None:
            raise LookupError(f"concept {concept_id} was deleted before its backfill ran")
        name, descriptions = concept.name, list(concept.descriptions)
    _debug_pause()
    llm = None
    if generate:
        llm = LlmDescriber(
            settings.llm.url,
            settings.llm.model,
            settings.llm.api_key,
            settings.llm.timeout_s,
            cache_dir=settings.home / "llm-cache",
        )
    # Prompt templates stand in for descriptions only when there are none (as RAM++ scores
    # open-set concepts by their descriptions alone): "a photo of a navy." says little that
    # "navy, a dark deep blue colour" does not, and dilutes it.
    templates = not descriptions and llm is None
    full = make_concept(name, descriptions, use_templates=templates, llm=llm)
    encoder = ctx.text_encoder()
    with ctx.timer("encode_text"):
        bank = encode_concepts([full], encoder)
    embeddings = bank.embeddings[0][: len(full.descriptions)].float().numpy()
    store = ctx.token_store()
    threshold = None
    if not fixed and store is not None and len(store):
        threshold = ctx.calibrate(bank)
    ranges = plan_parts(store.ids() if store is not None else np.zeros(0, np.int64), ctx)
    with session_scope(url) as session:
        update_concept(
            session,
            concept_id,
            descriptions=list(full.descriptions),
            embeddings=embeddings,
            text_encoder=getattr(encoder, "name", None),
            threshold=threshold,
        )
        promote_concept(session, concept_id)
        add_parts(session, job_id, ranges)
        update_job(session, job_id, total=sum(r.total for r in ranges), reset_progress=True)
    return list(range(len(ranges)))


def part_size(ctx: BackfillContext, store: TokenStore | None = None) -> int:
    """Assets per part: the setting, else one token-store shard's worth of records (so a part
    reads one shard front to back)."""
    configured = ctx.settings.index.backfill_part_assets
    if configured:
        return configured
    store = store if store is not None else ctx.token_store()
    record = store.bytes_per_asset if store is not None else 148_480
    return max(1, DEFAULT_SHARD_BYTES // record)


def plan_parts(ids: np.ndarray, ctx: BackfillContext) -> list[PartRange]:
    """Split sorted stored asset ids into consecutive ranges of :func:`part_size` assets."""
    if not len(ids):
        return []
    size = part_size(ctx)
    return [
        PartRange(int(ids[a]), int(ids[min(a + size, len(ids)) - 1]), min(size, len(ids) - a))
        for a in range(0, len(ids), size)
    ]


def _hand_over(url: str, job_id: int, owner: str) -> None:
    """The job's run ends its part: the job stays ``running`` without a lease; its parts carry
    it from now on (and complete it)."""
    with session_scope(url) as session:
        session.execute(
            sa.update(Job.__table__)
            .where(Job.id == job_id, Job.lease_owner == owner)
            .values(lease_owner=None, lease_until=None)
        )


def _fail(url: str, job_id: int, concept_id: int | None, reason: str, owner: str) -> None:
    """The job, its unfinished parts and its concept are failed with the reason."""
    log.warning("backfill job %s failed: %s", job_id, reason)
    finish_job_run(url, job_id, owner, JobStatus.FAILED, reason)
    with session_scope(url) as session:
        fail_parts(session, job_id, reason)
        if concept_id is not None and get_concept(session, concept_id) is not None:
            update_concept(session, concept_id, status=ConceptStatus.FAILED, error=reason)


def run_backfill_part(ctx: BackfillContext, job_id: int, part: int) -> bool:
    """Score one part of a backfill job: its assets after its cursor, chunk by chunk.

    Returns:
        Whether the part ran to its end (False: finished already, its job stopped, or another
        live process runs it). Errors fail the job, its parts and its concept, then re-raise.
    """
    settings = ctx.settings
    url = settings.database_url
    owner = process_owner()
    lease_s = settings.ingest.lease_s
    with session_scope(url) as session:
        claimed = claim_part(session, job_id, part, owner, lease_s)
        if claimed is None:
            holder = part_lease_owner(session, job_id, part)
            if holder and is_dead_here(holder):
                claimed = claim_part(session, job_id, part, owner, lease_s, dead=[holder])
        job = session.get(Job, job_id)
        concept_id = (job.params or {}).get("concept_id") if job is not None else None
    if claimed is None:
        log.info("backfill job %s part %s: finished, stopped or running elsewhere", job_id, part)
        return False
    keeper = keeper_for(settings)
    keeper.hold_part(job_id, part)
    try:
        tag_id, bank = _concept_bank(url, concept_id)
        store = ctx.token_store()
        if store is None:
            raise LookupError("the token store is gone: no stored embeddings to score")
        store.refresh()
        completed = _score_part(ctx, store, bank, tag_id, claimed, owner)
    except _LeaseLost:
        log.warning("backfill job %s part %s: taken over by another process", job_id, part)
        return False
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc} (part {part})"
        _fail(url, job_id, concept_id, reason, owner)
        raise
    finally:
        keeper.drop_part(job_id, part)
    if completed:
        log.info("backfill job %s: its last part finished; the concept is a tag", job_id)
    return True


class _LeaseLost(RuntimeError):
    """Another process took this part over (its lease ran out) or the job stopped."""


def _concept_bank(url: str, concept_id: object) -> tuple[int, LabelBank]:
    """The promoted concept's tag and its label bank, from the embeddings stored at step 2."""
    with session_scope(url) as session:
        concept = get_concept(session, int(concept_id)) if concept_id is not None else None
        if concept is None or concept.tag_id is None or concept.embeddings is None:
            raise LookupError(f"concept {concept_id} was deleted or never promoted")
        rows = concept_embeddings(concept)
        return int(concept.tag_id), LabelBank.from_ragged([torch.from_numpy(rows)])


def _score_part(
    ctx: BackfillContext,
    store: TokenStore,
    bank: LabelBank,
    tag_id: int,
    claimed: ClaimedPart,
    owner: str,
) -> bool:
    """Exact open-set scores of the part's stored assets after its cursor, written chunk by
    chunk with the cursor; then the part is done. Returns whether it completed the job."""
    from ram_pp.openset import OpenSetScorer

    scorer = OpenSetScorer(ctx.model)
    url = ctx.settings.database_url
    floor = ctx.settings.index.score_floor
    chunk = ctx.settings.index.backfill_chunk_assets
    ids = store.ids()
    start = claimed.id_lo if claimed.cursor is None else claimed.cursor + 1
    ids = ids[(ids >= start) & (ids <= claimed.id_hi)]
    for a in range(0, len(ids), chunk):
        chunk_ids = ids[a : a + chunk]
        # Ids ascend as they were appended, so this reads the part's shard front to back.
        chunk_ids = chunk_ids[store.storage_order(chunk_ids)]
        with ctx.timer("backfill_chunk"):
            logits = scorer.logits(store.get(chunk_ids), bank)[:, 0].numpy().astype(np.float64)
        probs = (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
        with session_scope(url) as session:
            rows = session.execute(sa.select(Asset.id).where(Asset.id.in_(chunk_ids.tolist())))
            existing = np.fromiter((int(i) for i in rows.scalars()), np.int64)
            keep = np.isin(chunk_ids, existing)  # assets deleted meanwhile have no row to score
            done, failed = int(keep.sum()), int((~keep).sum())
            if not advance_part(session, claimed, owner, int(chunk_ids.max()), done, failed):
                session.rollback()
                raise _LeaseLost()
            write_tag_scores(session, tag_id, chunk_ids[keep], probs[keep], score_floor=floor)
        _debug_chunk_pause()
    with session_scope(url) as session:
        return finish_part(session, claimed, owner)


DEBUG_PAUSE_ENV = "RAMDEX_DEBUG_BACKFILL_PAUSE_S"  # tests only: sleep once the run is leased
DEBUG_CHUNK_PAUSE_ENV = "RAMDEX_DEBUG_BACKFILL_CHUNK_PAUSE_S"  # tests only: after each chunk


def _debug_pause() -> None:
    """Fault injection for tests of a backfill whose process dies mid-run (never set in
    production)."""
    pause = os.environ.get(DEBUG_PAUSE_ENV)
    if pause:
        time.sleep(float(pause))


def _debug_chunk_pause() -> None:
    """Fault injection for tests of a part whose process dies between chunks (never set in
    production)."""
    pause = os.environ.get(DEBUG_CHUNK_PAUSE_ENV)
    if pause:
        time.sleep(float(pause))
