"""Concept backfill: turn a new concept into a real tag with a score for every archived asset.

Steps (one job of kind ``backfill``, progress = assets scored of the assets stored):

1. descriptions: the user's, optionally the LLM's (cached), and the prompt templates only when
   there is nothing else;
2. encode them with the text encoder into the concept's label bank; store the embeddings;
3. calibrate the concept's threshold on a background sample of the archive (unless the user gave
   one), so the promoted tag outputs assets that stand out, as the retroactive search does;
4. promote the concept to a tag (origin ``concept``);
5. stream every asset's E from the token store through the open-set head and store the scores
   (>= the score floor) in chunks, each in its own transaction, counting progress.

The run is one blocking function over a :class:`BackfillContext`; the API builds one from its
services (embedded mode), a Celery model worker from its processor (``ramdex.backfill_concept``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import numpy as np
import sqlalchemy as sa

from indexer.db.assets import Asset
from indexer.db.concept_repo import get_concept, promote_concept, update_concept
from indexer.db.concepts import ConceptStatus
from indexer.db.job_repo import add_job_progress, update_job
from indexer.db.jobs import JobStatus
from indexer.db.session import session_scope
from indexer.db.tag_repo import write_tag_scores
from indexer.ingest.lease import is_dead_here, keeper_for, process_owner
from indexer.jobs import claim_job_run, finish_job_run, job_lease_owner
from indexer.settings import Settings
from indexer.token_store import TokenStore
from ram_pp.concepts import LlmDescriber, encode_concepts, make_concept
from ram_pp.labels import LabelBank
from ram_pp.model import RamPlus
from ram_pp.text_encoder import TextEncoder

log = logging.getLogger(__name__)

CHUNK = 1024  # assets scored and written per transaction


def _untimed(_: str) -> AbstractContextManager[None]:
    return nullcontext()


@dataclass
class BackfillContext:
    """What a backfill needs, wherever it runs.

    Attributes:
        settings: database, LLM endpoint, score floor, home (LLM cache).
        model: the model whose open-set head scores the concept.
        text_encoder: returns the model's text encoder (loaded on first call).
        token_store: returns the model's token store (None before any ingest).
        calibrate: a concept bank's calibrated threshold (probability) over the archive.
        timer: ``timer(operation)`` context manager timing model work (metrics).
    """

    settings: Settings
    model: RamPlus
    text_encoder: Callable[[], TextEncoder]
    token_store: Callable[[], TokenStore | None]
    calibrate: Callable[[LabelBank], float]
    timer: Callable[[str], AbstractContextManager[None]] = field(default=_untimed)


def backfill_concept(
    ctx: BackfillContext,
    concept_id: int,
    job_id: int,
    *,
    generate: bool = False,
    fixed_threshold: bool = False,
) -> None:
    """Describe, encode, calibrate, promote and score one concept over the whole archive.

    Args:
        ctx: model, text encoder, token store and settings of the process running it.
        concept_id: the concept (created as ``draft``).
        job_id: the ``backfill`` job to report into.
        generate: ask the configured LLM for more descriptions.
        fixed_threshold: keep the concept's threshold (the user gave one) instead of calibrating.

    Errors mark the job and the concept failed with the reason, then re-raise.
    """
    settings = ctx.settings
    url = settings.database_url
    owner = process_owner()
    # The run is leased (renewed while it runs): if this process dies, the lease runs out and
    # the reconciler resumes the job (with these arguments) or fails it with a reason.
    resume = {"generate": generate, "fixed_threshold": fixed_threshold}
    lease_s = settings.ingest.lease_s
    if not claim_job_run(url, job_id, owner, lease_s, {"backfill": resume}):
        # A pool process killed mid-run puts its message back at once: its lease still looks
        # live, but this machine can tell that it is dead.
        holder = job_lease_owner(url, job_id)
        dead = [holder] if holder and is_dead_here(holder) else []
        if not dead or not claim_job_run(
            url, job_id, owner, lease_s, {"backfill": resume}, dead=dead
        ):
            log.info("backfill job %s: cancelled, or running in another process: skipped", job_id)
            return
    keeper = keeper_for(settings)
    keeper.hold_run(job_id)
    try:
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
        if not fixed_threshold and store is not None and len(store):
            threshold = ctx.calibrate(bank)
        with session_scope(url) as session:
            update_concept(
                session,
                concept_id,
                descriptions=list(full.descriptions),
                embeddings=embeddings,
                text_encoder=getattr(encoder, "name", None),
                threshold=threshold,
            )
            tag_id = promote_concept(session, concept_id).id
            total = len(store) if store is not None else 0
            # A redelivered task (its worker died) scores everything again: count afresh.
            update_job(session, job_id, total=total, reset_progress=True)
        if store is not None and total:
            _score_archive(ctx, store, bank, tag_id, job_id)
        finish_job_run(url, job_id, owner, JobStatus.DONE)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        log.warning("backfill of concept %s failed: %s", concept_id, reason)
        finish_job_run(url, job_id, owner, JobStatus.FAILED, reason)
        with session_scope(url) as session:
            if get_concept(session, concept_id) is not None:
                update_concept(session, concept_id, status=ConceptStatus.FAILED, error=reason)
        raise
    finally:
        keeper.drop_run(job_id)


DEBUG_PAUSE_ENV = "RAMDEX_DEBUG_BACKFILL_PAUSE_S"  # tests only: sleep once the run is leased


def _debug_pause() -> None:
    """Fault injection for tests of a backfill whose process dies mid-run (never set in
    production)."""
    pause = os.environ.get(DEBUG_PAUSE_ENV)
    if pause:
        time.sleep(float(pause))


def _score_archive(
    ctx: BackfillContext, store: TokenStore, bank: LabelBank, tag_id: int, job_id: int
) -> None:
    """Exact open-set scores of every stored asset, written chunk by chunk."""
    from ram_pp.openset import OpenSetScorer

    scorer = OpenSetScorer(ctx.model)
    url = ctx.settings.database_url
    floor = ctx.settings.index.score_floor
    for ids, embeds in store.iter_chunks(CHUNK):
        with ctx.timer("backfill_chunk"):
            logits = scorer.logits(embeds, bank)[:, 0].numpy().astype(np.float64)
        probs = 1.0 / (1.0 + np.exp(-logits))
        with session_scope(url) as session:
            rows = session.execute(sa.select(Asset.id).where(Asset.id.in_(ids.tolist())))
            existing = np.fromiter((int(i) for i in rows.scalars()), np.int64)
            keep = np.isin(ids, existing)  # assets deleted meanwhile have no row to score
            write_tag_scores(
                session, tag_id, ids[keep], probs[keep].astype(np.float32), score_floor=floor
            )
            add_job_progress(session, job_id, done=int(keep.sum()), failed=int((~keep).sum()))
