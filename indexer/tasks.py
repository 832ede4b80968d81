"""Celery tasks, a thin layer over the ingest stages: tag assets by id (model queue); register
sources and sync the FAISS index (default queue); concept backfills (model queue). Every worker
process also runs the periodic reconciler (:mod:`indexer.ingest.reconcile`; one pass at a time
across the cluster), which re-dispatches work whose process died or whose message was lost.

Failures:

- bad input (corrupt, truncated, non-image, bomb ...): the asset is marked ``failed`` with the
  reason, inside the batch's transaction; the rest of the batch is unaffected;
- transient (database or broker unreachable, GPU out of memory, model files not there yet or
  unreadable): the task is retried with exponential backoff (1, 2, 4 ... 60 s, with jitter);
  nothing of the unfinished batch was committed (its assets were given back), and finished
  assets are skipped on the retry; after ``MAX_RETRIES`` the unfinished assets are marked failed
  with the last error;
- anything else (a bug): the task's assets are marked failed with the error, so none is left
  pending forever; their jobs still complete;
- the worker dies (killed, out of memory): a pool process killed mid-task puts its message back
  (``task_reject_on_worker_lost``); a whole worker gone leaves its assets' leases to run out,
  and the reconciler re-dispatches them within about ``ingest.lease_s``.

The model is loaded once per worker process, lazily, behind a lock, in the process that runs
the tasks, so the prefork parent never loads it and never initialises CUDA before forking.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from celery.signals import (
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)

from indexer.celery_app import (
    BACKFILL_PART_TASK,
    BACKFILL_TASK,
    PROCESS_TASK,
    REGISTER_TASK,
    SYNC_TASK,
    VIDEO_PART_TASK,
    app,
    producer_app,
)
from indexer.db.asset_repo import mark_failed
from indexer.db.assets import Asset, AssetStatus
from indexer.db.session import session_scope
from indexer.ingest.dispatch import request_index_sync
from indexer.ingest.process import AssetProcessor, forget_processors, shared_processor
from indexer.ingest.reconcile import Reconciler
from indexer.ingest.transient import is_transient
from indexer.jobs import settle
from indexer.models import ModelNotAvailableError
from indexer.settings import Settings, get_settings
from indexer.stores import sync_vector_index
from indexer.webhooks.dispatcher import start_worker_dispatcher, stop_worker_dispatcher
from ram_pp.convert import CheckpointError

if TYPE_CHECKING:
    from indexer.token_store import TokenStore

log = logging.getLogger(__name__)

RETRY_BASE_S = 1.0
RETRY_MAX_S = 60.0
MAX_RETRIES = 12  # about 10 minutes of backoff in total
SYNC_MIN_INTERVAL_S = 30.0

_processor_lock = threading.Lock()
_reconciler: tuple[int, Reconciler] | None = None


@worker_process_init.connect
def _fresh_process(**_: object) -> None:
    """A forked pool process starts with no database connections and no model of its own; it
    runs the reconciler (a thread) from here on."""
    from indexer.db.session import dispose_engines

    dispose_engines()
    forget_processors()
    _start_reconciler()


@worker_ready.connect
def _ready(sender: object = None, **_: object) -> None:
    """Pools without processes of their own (threads) run the reconciler in the worker."""
    pool = getattr(sender, "pool", None)
    if pool is not None and "prefork" not in type(pool).__module__:
        _start_reconciler()


@worker_shutdown.connect
@worker_process_shutdown.connect
def _shutdown(**_: object) -> None:
    """A stopping worker (or pool process) hands the reconciler's service lease over at once."""
    if _reconciler is not None and _reconciler[0] == os.getpid():
        _reconciler[1].stop()
    from indexer.sources.scheduler import stop_worker_scheduler

    stop_worker_scheduler()
    stop_worker_dispatcher()


def _start_reconciler() -> None:
    """One reconciler thread per worker process (none in the embedded mode)."""
    global _reconciler
    settings = get_settings()
    if not settings.broker.url or (_reconciler is not None and _reconciler[0] == os.getpid()):
        return
    _reconciler = (os.getpid(), Reconciler(settings).start())
    from indexer.sources.scheduler import start_worker_scheduler

    start_worker_scheduler(settings)  # sources: due scans, watched folders (one holder)
    start_worker_dispatcher(settings)  # webhooks: same life as the reconciler


def worker_processor() -> AssetProcessor:
    """This process's processor for the configured model (loaded on first use, once)."""
    with _processor_lock:
        proc = shared_processor(get_settings())
        proc.split_videos = True  # long videos go out as parts any worker takes
        if proc.on_committed is None:
            proc.on_committed = _after_commit_hook(proc)
        return proc


def _after_commit_hook(proc: AssetProcessor) -> Callable[[list[int], bool], None]:
    """After each committed batch: score the new assets for promoted concepts, then schedule
    FAISS syncs (at once when a job completes, else at most every interval)."""
    last_sent = [0.0]

    def hook(written: list[int], completed: bool) -> None:
        from indexer.concept_scores import score_promoted_concepts

        settings = proc.settings
        try:
            score_promoted_concepts(
                settings.database_url,
                proc.model_id,
                proc.loaded.model,
                proc.token_store(),
                written,
                settings.index.score_floor,
            )
        except Exception:  # the assets are done; a missing concept score is not fatal
            log.warning("scoring new assets for promoted concepts failed", exc_info=True)
        now = time.monotonic()
        if completed or now - last_sent[0] >= SYNC_MIN_INTERVAL_S:
            last_sent[0] = now
            request_index_sync(
                get_settings(), final=completed, model_id=proc.model_id, dim=proc.embed_dim
            )

    return hook


@app.task(bind=True, name=SYNC_TASK, acks_late=True, max_retries=MAX_RETRIES)
def sync_index(self, model_id: str, dim: int = 512, final: bool = True) -> bool:
    """Sync the model's FAISS index with the database; returns whether the file was written."""
    try:
        return sync_vector_index(
            get_settings(), model_id, dim, min_interval_s=0.0 if final else SYNC_MIN_INTERVAL_S
        )
    except Exception as exc:
        if is_transient(exc) and self.request.retries < self.max_retries:
            raise self.retry(exc=exc, countdown=backoff_s(self.request.retries)) from exc
        raise


def backoff_s(retries: int) -> float:
    """Exponential backoff with jitter for the ``retries``-th retry."""
    return min(RETRY_BASE_S * 2**retries, RETRY_MAX_S) * random.uniform(0.8, 1.2)


def _fail_all(asset_ids: Sequence[int], reason: str) -> None:
    """Mark the still-unfinished assets of a task failed; their jobs count them."""
    import sqlalchemy as sa

    settings = get_settings()
    with session_scope(settings.database_url) as session:
        open_ids = [
            int(i)
            for i in session.execute(
                sa.select(Asset.id).where(
                    Asset.id.in_(list(asset_ids)),
                    Asset.status.in_([AssetStatus.PENDING.value, AssetStatus.PROCESSING.value]),
                )
            ).scalars()
        ]
        if open_ids:
            mark_failed(session, open_ids, reason)
            settle(session, failed=open_ids)


@app.task(
    bind=True,
    name=PROCESS_TASK,
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=MAX_RETRIES,
)
def process_assets(
    self, asset_ids: list[int], job_id: int | None = None, force: bool = False
) -> dict[str, int]:
    """Tag assets by id (idempotent). Returns counts: done, failed, skipped.

    Args:
        asset_ids: assets to process (those already done by the configured model, and those
            another live worker holds, are skipped).
        job_id: ignored (kept for messages sent by older versions): jobs are credited through
            their ledger.
        force: re-run assets even when done by this model or failed before.
    """
    try:
        outcome = worker_processor().process(asset_ids, force=force)
    except Exception as exc:
        # A worker without its model (not downloaded yet, unreadable checkpoint) must not fail
        # the assets: another worker, or this one once fixed, can still process them.
        if is_transient(exc) or isinstance(exc, ModelNotAvailableError | CheckpointError):
            if self.request.retries >= self.max_retries:
                reason = f"gave up after {self.max_retries} retries: {type(exc).__name__}: {exc}"
                try:
                    _fail_all(asset_ids, reason)
                except Exception:  # the database is still down: the reconciler retries later
                    log.exception("could not mark assets failed after retries")
                raise
            delay = backoff_s(self.request.retries)
            log.warning(
                "process_assets(%d ids): %s: %s; retry %d in %.1f s",
                len(asset_ids),
                type(exc).__name__,
                str(exc).splitlines()[0][:200],
                self.request.retries + 1,
                delay,
            )
            raise self.retry(exc=exc, countdown=delay) from exc
        log.exception("process_assets failed permanently")
        _fail_all(asset_ids, f"internal error: {type(exc).__name__}: {exc}")
        raise
    return outcome.to_dict()


@app.task(
    bind=True,
    name=VIDEO_PART_TASK,
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=MAX_RETRIES,
)
def video_part(self, asset_id: int, part: int) -> dict[str, object]:
    """Decode and tag one time range of a split video (idempotent; the part that finishes last
    finishes the asset): see :mod:`indexer.ingest.video_parts`. Transient errors retry with
    backoff (the part was given back); a killed worker's part is sent again by the reconciler."""
    from indexer.ingest.video_parts import run_video_part

    try:
        outcome = run_video_part(worker_processor(), asset_id, part)
    except Exception as exc:
        transient = is_transient(exc) or isinstance(exc, ModelNotAvailableError | CheckpointError)
        if transient and self.request.retries < self.max_retries:
            raise self.retry(exc=exc, countdown=backoff_s(self.request.retries)) from exc
        # A bug, or retries spent: the part is pending again (given back), so the reconciler
        # sends it again later, and after MAX_PART_ATTEMPTS runs it is failed with a reason.
        log.exception("video_part(%s, %s) failed", asset_id, part)
        raise
    return {"status": outcome.status, "frames": outcome.frames, "asset": outcome.finished_asset}


@app.task(bind=True, name=REGISTER_TASK, acks_late=True, max_retries=MAX_RETRIES)
def register_sources(
    self,
    sources: list[str],
    job_id: int | None = None,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
) -> dict:
    """Register server-side paths and URLs (for the API), then queue them for the model.

    Returns the ingest summary as a dict (``queued`` assets go on in the model workers). A job
    that is no longer pending (registered already by a copy of this message) is left alone.
    """
    from indexer.ingest.pipeline import ingest

    try:
        summary = ingest(
            sources,
            include=include,
            exclude=exclude or (),
            wait=False,
            progress=False,
            job_id=job_id,
        )
    except LookupError:
        log.info("job %s is no longer pending: registered already", job_id)
        return {"job_id": job_id, "skipped": True}
    except Exception as exc:
        if is_transient(exc) and self.request.retries < self.max_retries:
            raise self.retry(exc=exc, countdown=backoff_s(self.request.retries)) from exc
        raise
    return summary.to_dict()


@app.task(name=BACKFILL_TASK, acks_late=True)
def backfill_concept_task(
    concept_id: int, job_id: int, generate: bool = False, fixed_threshold: bool = False
) -> None:
    """Make a concept a tag scored over the whole archive, in a model worker (its model, its
    text encoder, the shared token store): describe, calibrate and promote it, then send its
    parts to the model queue, where every model worker takes them; see
    :mod:`indexer.concept_backfill`. Failures are recorded on the job and the concept."""
    from indexer.concept_backfill import backfill_concept

    backfill_concept(
        _backfill_context(), concept_id, job_id, generate=generate, fixed_threshold=fixed_threshold
    )


@app.task(name=BACKFILL_PART_TASK, acks_late=True)
def backfill_part_task(job_id: int, part: int) -> None:
    """Score one part of a concept backfill (a range of asset ids) in a model worker; the part
    that finishes last completes the job. See :func:`indexer.concept_backfill.run_backfill_part`."""
    from indexer.concept_backfill import run_backfill_part

    run_backfill_part(_backfill_context(), job_id, part)


_read_stores: dict[Path, TokenStore] = {}  # token store path -> read-only store, per process


def _backfill_context():  # noqa: ANN202 - a BackfillContext (imported lazily with the model)
    """This worker's model, text encoder, calibration and the committed token store."""
    from indexer.concept_backfill import BackfillContext
    from indexer.ingest.backfills import send_part
    from indexer.retroactive import RetroactiveSearcher
    from indexer.stores import open_token_store, token_store_path
    from indexer.token_store import TokenStoreError
    from ram_pp.openset import OpenSetScorer
    from ram_pp.text_encoder import load_text_encoder

    proc = worker_processor()
    settings = proc.settings
    encoder_name = settings.model.text_encoder or proc.loaded.config.text_encoder

    def calibrate(bank):  # noqa: ANN001, ANN202 - a LabelBank -> threshold
        scorer = OpenSetScorer(proc.loaded.model)
        store = committed_tokens()
        assert store is not None  # calibration runs only when assets are stored
        searcher = RetroactiveSearcher.from_settings(scorer, store, settings=settings)
        return searcher.calibrate(bank)[0].threshold

    @functools.cache  # one snapshot per task: the backfill and its calibration read the same
    def committed_tokens() -> TokenStore | None:
        # Read-only view of what every worker has committed (as the API reads it), opened once
        # per worker process (a part would otherwise load the whole store's id files each time).
        path = token_store_path(settings, proc.model_id)
        store = _read_stores.get(path)
        try:
            if store is None:
                store = open_token_store(settings, proc.model_id, read_only=True)
                _read_stores[path] = store
            else:
                store.refresh()
        except TokenStoreError:
            return None  # nothing ingested yet
        return store

    def dispatch(concept_id: int, job_id: int, parts: Sequence[int]) -> None:
        for part in parts:
            send_part(settings, job_id, part)

    return BackfillContext(
        settings=settings,
        model=proc.loaded.model,
        text_encoder=lambda: load_text_encoder(encoder_name, cache_dir=settings.model.cache_dir),
        token_store=committed_tokens,
        calibrate=calibrate,
        dispatch=dispatch,
    )


def start_backfill(
    concept_id: int,
    job_id: int,
    *,
    settings: Settings,
    generate: bool = False,
    fixed_threshold: bool = False,
) -> None:
    """Queue a concept's backfill for a model worker (the broker mode)."""
    producer_app(settings).send_task(
        BACKFILL_TASK,
        args=[concept_id, job_id, generate, fixed_threshold],
        queue=settings.broker.model_queue,
    )
