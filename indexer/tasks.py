"""Celery tasks: tag assets by id (model queue); register sources and sync the FAISS index
(default queue).

Batching choice: **tasks take a list of asset ids, and producers group ids** (:class:`Dispatcher`:
up to ``broker.batch_size`` ids, or whatever arrived within ``broker.batch_timeout_ms`` of the
first). One message is then one unit of work *and* one unit of redelivery, which keeps
``acks_late`` exact: a worker killed mid-batch loses nothing (the whole message comes back) and
redoes nothing twice (finished assets are skipped, results are replaced, not appended). A
consumer that gathered many single-id messages would have to hold several unacknowledged
messages at once and ack them one by one after a shared commit, which Celery supports only
through third-party batching add-ons whose late-ack behaviour is weaker. Inside a task the
processor decodes ahead in threads while the model runs, in forward passes of
``model.batch_size``.

Failures:

- bad input (corrupt, truncated, non-image, bomb ...): the asset is marked ``failed`` with the
  reason, inside the batch's transaction; the rest of the batch is unaffected;
- transient (database or broker unreachable, GPU out of memory, model files not there yet or
  unreadable): the task is retried with exponential backoff (1, 2, 4 ... 60 s, with jitter);
  nothing of the unfinished batch was committed, and finished assets are skipped on the retry;
  after ``MAX_RETRIES`` the unfinished assets are marked failed with the last error;
- anything else (a bug): the task's assets are marked failed with the error, so none is left
  pending forever; the job still completes.

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
from types import TracebackType

from celery.signals import worker_process_init

from indexer.celery_app import (
    BACKFILL_TASK,
    PROCESS_TASK,
    REGISTER_TASK,
    SYNC_TASK,
    app,
    producer_app,
)
from indexer.db.asset_repo import mark_failed
from indexer.db.assets import Asset, AssetStatus
from indexer.db.job_repo import add_job_progress
from indexer.db.session import session_scope
from indexer.ingest import AssetProcessor, is_transient, shared_processor, sync_vector_index
from indexer.jobs import complete_if_finished
from indexer.models import ModelNotAvailableError
from indexer.settings import Settings, get_settings
from ram_pp.convert import CheckpointError

log = logging.getLogger(__name__)

RETRY_BASE_S = 1.0
RETRY_MAX_S = 60.0
MAX_RETRIES = 12  # about 10 minutes of backoff in total
SYNC_DELAY_S = 2.0
SYNC_MIN_INTERVAL_S = 30.0
_DEBUG_PAUSE_ENV = "RAMDEX_DEBUG_PAUSE_BEFORE_COMMIT_S"  # fault-injection for the tests only
_DEBUG_CRASH_ENV = "RAMDEX_DEBUG_CRASH_ON_SHA256"  # test only: this file "crashes the decoder"

_processor_lock = threading.Lock()


@worker_process_init.connect
def _fresh_process(**_: object) -> None:
    """A forked pool process starts with no database connections and no model of its own."""
    from indexer.db.session import dispose_engines
    from indexer.ingest import forget_processors

    dispose_engines()
    forget_processors()


def worker_processor() -> AssetProcessor:
    """This process's processor for the configured model (loaded on first use, once)."""
    with _processor_lock:
        proc = shared_processor(get_settings())
        if proc.on_committed is None:
            proc.on_committed = _after_commit_hook(proc)
        pause = os.environ.get(_DEBUG_PAUSE_ENV)
        if pause and proc.before_commit is None:
            seconds = float(pause)
            proc.before_commit = lambda ids: time.sleep(seconds)
        poison = os.environ.get(_DEBUG_CRASH_ENV)
        if poison and proc.before_prepare is None:
            proc.before_prepare = lambda sha256: os._exit(70) if sha256 == poison else None
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


def request_index_sync(
    settings: Settings,
    *,
    final: bool,
    model_id: str | None = None,
    dim: int | None = None,
) -> None:
    """Ask a default-queue worker to sync the model's FAISS index from the database.

    ``final`` syncs always run (a job just completed); others are skipped when the index was
    saved within ``SYNC_MIN_INTERVAL_S`` (saving a large index is expensive). In the embedded
    mode the sync runs here and now.
    """
    if model_id is None:
        from indexer.models import configured_model_id

        model_id = configured_model_id(settings)
    dim = dim or 512
    if not settings.broker.url:
        sync_vector_index(settings, model_id, dim)
        return
    producer_app(settings).send_task(
        SYNC_TASK,
        args=[model_id, dim, final],
        queue=settings.broker.default_queue,
        countdown=SYNC_DELAY_S,  # let the other batches of a burst commit first
    )


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


def _fail_all(asset_ids: Sequence[int], job_id: int | None, reason: str) -> None:
    """Mark the still-unfinished assets of a task failed and count them in the job."""
    settings = get_settings()
    with session_scope(settings.database_url) as session:
        import sqlalchemy as sa

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
            if job_id is not None:
                add_job_progress(session, job_id, failed=len(open_ids))
                complete_if_finished(session, job_id)


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
        asset_ids: assets to process (those already done by the configured model are skipped).
        job_id: the job whose progress counts them.
        force: re-run assets even when done by this model or failed before.
    """
    try:
        outcome = worker_processor().process(asset_ids, job_id=job_id, force=force)
    except Exception as exc:
        # A worker without its model (not downloaded yet, unreadable checkpoint) must not fail
        # the assets: another worker, or this one once fixed, can still process them.
        if is_transient(exc) or isinstance(exc, ModelNotAvailableError | CheckpointError):
            if self.request.retries >= self.max_retries:
                reason = f"gave up after {self.max_retries} retries: {type(exc).__name__}: {exc}"
                try:
                    _fail_all(asset_ids, job_id, reason)
                except Exception:  # the database is still down: the assets stay pending
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
        _fail_all(asset_ids, job_id, f"internal error: {type(exc).__name__}: {exc}")
        raise
    return outcome.to_dict()


@app.task(bind=True, name=REGISTER_TASK, acks_late=True, max_retries=MAX_RETRIES)
def register_sources(
    self,
    sources: list[str],
    job_id: int | None = None,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
) -> dict:
    """Register server-side paths and URLs (for the API), then queue them for the model.

    Returns the ingest summary as a dict (``queued`` assets go on in the model workers).
    """
    from indexer.ingest import ingest

    try:
        summary = ingest(
            sources,
            include=include,
            exclude=exclude or (),
            wait=False,
            progress=False,
            job_id=job_id,
        )
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
    text encoder, the shared token store); see :mod:`indexer.concept_backfill`. Failures are
    recorded on the job and the concept."""
    from indexer.concept_backfill import BackfillContext, backfill_concept
    from indexer.retroactive import RetroactiveSearcher
    from indexer.stores import token_store_path
    from indexer.token_store import TokenStore, TokenStoreError
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

    @functools.cache  # opened once: the backfill and its calibration read the same store
    def committed_tokens() -> TokenStore | None:
        # Read-only view of what every worker has committed (as the API reads it).
        try:
            return TokenStore(token_store_path(settings, proc.model_id), read_only=True)
        except TokenStoreError:
            return None  # nothing ingested yet

    context = BackfillContext(
        settings=settings,
        model=proc.loaded.model,
        text_encoder=lambda: load_text_encoder(encoder_name, cache_dir=settings.model.cache_dir),
        token_store=committed_tokens,
        calibrate=calibrate,
    )
    backfill_concept(
        context, concept_id, job_id, generate=generate, fixed_threshold=fixed_threshold
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


def submit(
    asset_ids: Sequence[int],
    *,
    job_id: int | None = None,
    force: bool = False,
    settings: Settings | None = None,
) -> None:
    """Hand assets to the model: tasks on the model queue, or right here in the embedded mode.

    Ids are sent in groups of ``broker.batch_size``.
    """
    settings = settings or get_settings()
    ids = [int(i) for i in asset_ids]
    if not ids:
        return
    if not settings.broker.url:
        shared_processor(settings).process(ids, job_id=job_id, force=force)
        return
    sender = producer_app(settings)
    size = settings.broker.batch_size
    for start in range(0, len(ids), size):
        sender.send_task(
            PROCESS_TASK,
            args=[ids[start : start + size], job_id, force],
            queue=settings.broker.model_queue,
        )


class Dispatcher:
    """Groups asset ids for the model queue: a group goes when it holds ``batch_size`` ids or
    when its first id has waited ``timeout_ms``.

    Use as a context manager; leaving it sends what is left. Errors of a timed send are raised
    by the next :meth:`add` or by :meth:`close`.

    Args:
        send: publishes one group (for example ``lambda ids: submit(ids, job_id=j)``).
        batch_size: most ids per group.
        timeout_ms: longest wait of an id before its group is sent anyway.
    """

    def __init__(self, send: Callable[[list[int]], None], batch_size: int, timeout_ms: int) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self._send = send
        self.batch_size = batch_size
        self.timeout_s = max(0, timeout_ms) / 1000.0
        self._group: list[int] = []
        self._first_at = 0.0
        self._cond = threading.Condition()
        self._closed = False
        self._error: BaseException | None = None
        self._send_lock = threading.Lock()  # groups leave in order
        self._timer = threading.Thread(target=self._run_timer, name="ramdex-dispatch", daemon=True)
        self._timer.start()

    def _take(self) -> list[int]:
        group, self._group = self._group, []
        return group

    def _deliver(self, group: list[int]) -> None:
        if not group:
            return
        with self._send_lock:
            self._send(group)

    def _run_timer(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._group:
                    self._cond.wait()
                if self._closed:
                    return
                left = self._first_at + self.timeout_s - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                group = self._take()
            try:
                self._deliver(group)
            except BaseException as exc:  # surfaced by add()/close()
                self._error = exc

    def _raise_pending_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def add(self, asset_id: int) -> None:
        """Queue one id; sends its group when full."""
        self._raise_pending_error()
        with self._cond:
            if self._closed:
                raise RuntimeError("dispatcher is closed")
            if not self._group:
                self._first_at = time.monotonic()
                self._cond.notify()
            self._group.append(int(asset_id))
            group = self._take() if len(self._group) >= self.batch_size else []
        self._deliver(group)

    def flush(self) -> None:
        """Send the current group now."""
        with self._cond:
            group = self._take()
        self._deliver(group)
        self._raise_pending_error()

    def close(self) -> None:
        """Send what is left and stop the timer."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            group = self._take()
            self._cond.notify_all()
        self._timer.join()
        self._deliver(group)
        self._raise_pending_error()

    def __enter__(self) -> Dispatcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
