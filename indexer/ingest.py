"""Ingest: from files and URLs to stored tags, embeddings, tokens and thumbnails.

Two stages, so the expensive one can run anywhere:

1. **Register** (:class:`indexer.registrar.Registrar`, in the caller: CLI, API or a default-queue
   task): walk folders, download URLs, hash and copy each original into the content-addressed
   media store, and get-or-create the asset by sha256, recording the new source.
2. **Process** (:class:`indexer.processor.AssetProcessor`, in-process or in a Celery model
   worker): decode, thumbnail, run the model in batches, store E and every result of a batch in
   one transaction; idempotent, so a redelivered task does no harm.
3. **Index** (:func:`indexer.stores.sync_vector_index`): the FAISS index is derived from the
   embeddings in the database; one writer at a time syncs it incrementally and saves it
   atomically (at the end of an embedded run, or in a default-queue task when a job completes).

This module ties them together (:func:`ingest`): in the embedded mode (no broker URL) it
registers in a background thread while the processor consumes the ids; with a broker it sends
the ids to the model queue in groups (see ``indexer.tasks.Dispatcher``) and, with ``wait``,
follows the job. It re-exports the stages' public names, so ``from indexer.ingest import ...``
keeps working.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import torch

from indexer.db.assets import Asset, AssetStatus
from indexer.db.jobs import JobKind
from indexer.db.session import session_scope
from indexer.jobs import (
    add_total,
    end_registration,
    fail_job,
    finish_job,
    set_running,
    start_job,
)
from indexer.processor import (  # noqa: F401 - the ingest package's public names
    MAX_ATTEMPTS,
    POISON_REASON,
    AssetProcessor,
    Failure,
    ProcessOutcome,
    forget_processors,
    shared_processor,
)
from indexer.registrar import Registered, Registrar, is_url  # noqa: F401
from indexer.settings import Settings, get_settings
from indexer.stores import (  # noqa: F401
    ensure_schema,
    model_dir_name,
    open_token_store,
    sync_vector_index,
    token_store_path,
)
from indexer.walk import WalkError, walk_files

log = logging.getLogger(__name__)

EMBEDDED_SYNC_INTERVAL_S = 60.0


@dataclass
class IngestSummary:
    """What an ingest run did.

    Attributes:
        job_id: the job that tracked it.
        submitted: sources seen (files found by the walk, URLs, unreadable paths).
        done: assets scored by this run.
        duplicate: sources whose bytes were already an asset (done, or in progress elsewhere).
        failed: sources that ended failed (``failures`` says why).
        queued: assets handed to workers and not finished yet (``wait=False``).
        asset_ids: every asset this run registered or met, in submission order.
        elapsed_s: wall time of the run.
    """

    job_id: int | None = None
    submitted: int = 0
    done: int = 0
    duplicate: int = 0
    failed: int = 0
    queued: int = 0
    failures: list[Failure] = field(default_factory=list)
    asset_ids: list[int] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def rate(self) -> float:
        """Sources per second over the run."""
        return self.submitted / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "job_id": self.job_id,
            "submitted": self.submitted,
            "done": self.done,
            "duplicate": self.duplicate,
            "failed": self.failed,
            "queued": self.queued,
            "elapsed_s": round(self.elapsed_s, 3),
            "failures": [
                {"source": f.source, "reason": f.reason, "asset_id": f.asset_id}
                for f in self.failures
            ],
        }


def expand_sources(
    sources: Sequence[str | Path],
    include: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    follow_symlinks: bool = False,
) -> tuple[list[str | Path], list[Failure]]:
    """Files (walked from folders) and URLs to register, plus paths that could not be read."""
    items: list[str | Path] = []
    problems: list[Failure] = []
    paths: list[Path] = []
    for source in sources:
        text = str(source)
        if is_url(text):
            if text.lower().startswith(("http://", "https://")):
                items.append(text)
            else:
                problems.append(Failure(text, "only http and https URLs can be ingested"))
        else:
            paths.append(Path(source))

    def on_error(error: WalkError) -> None:
        problems.append(Failure(os.path.abspath(error.path), error.reason))

    items.extend(
        walk_files(paths, include, exclude, follow_symlinks=follow_symlinks, on_error=on_error)
    )
    return items, problems


def _bar(total: int, enabled: bool | None, desc: str):
    from tqdm import tqdm

    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, dynamic_ncols=True)


class _Tally:
    """Thread-safe bookkeeping of registration outcomes."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.queued: list[int] = []
        self.duplicate = 0
        self.failures: list[Failure] = []
        self.asset_ids: list[int] = []
        self.source_of: dict[int, str] = {}

    def add(self, reg: Registered) -> None:
        with self.lock:
            if reg.asset_id is not None:
                self.asset_ids.append(reg.asset_id)
                self.source_of.setdefault(reg.asset_id, reg.source)
            if reg.state == "queued":
                self.queued.append(reg.asset_id)  # type: ignore[arg-type]
            elif reg.state == "duplicate":
                self.duplicate += 1
            else:
                self.failures.append(Failure(reg.source, reg.reason or "failed", reg.asset_id))


def _register_all(
    registrar: Registrar, items: Sequence[str | Path], workers: int
) -> Iterator[Registered]:
    """Register in a few threads (hashing and downloads wait on I/O), results in input order."""
    if workers <= 1:
        for item in items:
            yield registrar.register(item)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="ramdex-register") as pool:
        pending: deque[Future[Registered]] = deque()
        for item in items:
            pending.append(pool.submit(registrar.register, item))
            if len(pending) >= workers * 4:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _final_statuses(url: str, ids: Sequence[int]) -> dict[int, tuple[str, str | None]]:
    out: dict[int, tuple[str, str | None]] = {}
    unique = list(dict.fromkeys(ids))
    with session_scope(url) as session:
        for start in range(0, len(unique), 5000):
            part = unique[start : start + 5000]
            for row in session.execute(
                sa.select(Asset.id, Asset.status, Asset.error).where(Asset.id.in_(part))
            ):
                out[int(row.id)] = (row.status, row.error)
    return out


def ingest(
    sources: Sequence[str | Path],
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    settings: Settings | None = None,
    wait: bool = True,
    progress: bool | None = None,
    retry_failed: bool = False,
    follow_symlinks: bool = False,
    processor: AssetProcessor | None = None,
    register_workers: int = 4,
    job_id: int | None = None,
) -> IngestSummary:
    """Ingest files, folders and ``http(s)`` URLs; the Python face of ``ramdex ingest``.

    Args:
        sources: paths (files or folders, walked recursively) and URLs.
        include, exclude: glob patterns for files found in folders (see :mod:`indexer.walk`).
        settings: default :func:`indexer.settings.get_settings`.
        wait: with a broker, wait for the workers and report final outcomes; without, return
            once everything is queued (``summary.queued``). The embedded mode always waits.
        progress: show a progress bar (count, rate, ETA); None: when stderr is a terminal.
        retry_failed: re-queue assets that failed in an earlier run when met again.
        follow_symlinks: enter symlinked folders.
        processor: a ready processor (embedded mode; tests and benchmarks reuse one model).
        register_workers: threads hashing/copying/downloading sources.
        job_id: report into this existing ``pending`` job (the API creates it first) instead of
            a new one.

    Returns:
        The summary: done, duplicate, failed (with reasons), queued, job id.

    Raises:
        indexer.models.ModelNotAvailableError: embedded mode and the model is not available.
        sqlalchemy.exc.OperationalError: the database stayed unreachable.
    """
    settings = settings or get_settings()
    url = settings.database_url
    ensure_schema(url)
    started = time.monotonic()
    items, problems = expand_sources(sources, include, exclude, follow_symlinks)
    job_id = job_id or start_job(
        url,
        JobKind.INGEST,
        params={
            "sources": [str(s) for s in sources][:50],
            "include": list(include or []),
            "exclude": list(exclude),
        },
    )
    summary = IngestSummary(job_id=job_id, submitted=len(items) + len(problems))
    tally = _Tally()
    tally.failures.extend(problems)
    registrar = Registrar(settings, retry_failed=retry_failed)
    bar = _bar(summary.submitted, progress, "ingest")
    bar.update(len(problems))
    try:
        if settings.broker.url:
            _run_with_broker(settings, registrar, items, tally, job_id, bar, wait, register_workers)
        else:
            proc = processor or shared_processor(settings)
            _run_embedded(settings, proc, registrar, items, tally, job_id, bar, register_workers)
    except BaseException as exc:
        try:
            fail_job(url, job_id, f"{type(exc).__name__}: {exc}")
        except Exception:  # the database may be the problem; the original error matters more
            log.warning("could not mark job %s failed", job_id, exc_info=True)
        raise
    finally:
        bar.close()

    summary.duplicate = tally.duplicate
    summary.asset_ids = tally.asset_ids
    summary.failures = list(tally.failures)
    if tally.queued and (wait or not settings.broker.url):
        final = _final_statuses(url, tally.queued)
        for asset_id in dict.fromkeys(tally.queued):
            status, error = final.get(asset_id, ("deleted", "asset deleted during ingest"))
            if status == AssetStatus.DONE.value:
                summary.done += 1
            elif status == AssetStatus.FAILED.value or status == "deleted":
                summary.failures.append(
                    Failure(tally.source_of.get(asset_id, str(asset_id)), error or "", asset_id)
                )
            else:
                summary.queued += 1
    else:
        summary.queued = len(set(tally.queued))
    summary.failed = len(summary.failures)
    summary.elapsed_s = time.monotonic() - started
    return summary


def _registration_extra(tally: _Tally) -> dict[str, Any]:
    from indexer.jobs import MAX_RECORDED_FAILURES

    return {
        "duplicate": tally.duplicate,
        "register_failed": len(tally.failures),
        "failures": [
            {"source": f.source, "reason": f.reason} for f in tally.failures[:MAX_RECORDED_FAILURES]
        ],
    }


def _run_embedded(
    settings: Settings,
    proc: AssetProcessor,
    registrar: Registrar,
    items: Sequence[str | Path],
    tally: _Tally,
    job_id: int,
    bar: Any,
    register_workers: int,
) -> None:
    """Register in a background thread while the processor consumes the new asset ids."""
    url = settings.database_url
    ids: queue.Queue[int | None] = queue.Queue(maxsize=proc.batch_size * 8)
    stop = threading.Event()
    errors: list[BaseException] = []

    def put(item: int | None) -> None:
        while not stop.is_set():
            try:
                ids.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def produce() -> None:
        unsent = 0
        try:
            for reg in _register_all(registrar, items, register_workers):
                if stop.is_set():
                    return
                tally.add(reg)
                if reg.state == "queued":
                    unsent += 1
                    if unsent >= 64:
                        add_total(url, job_id, unsent)
                        unsent = 0
                    put(reg.asset_id)
                else:
                    bar.update(1)
            add_total(url, job_id, unsent)
        except BaseException as exc:  # handed to the consumer thread, which re-raises
            errors.append(exc)
        finally:
            put(None)

    def stream() -> Iterator[int]:
        while True:
            item = ids.get()
            if item is None:
                return
            yield item

    last_sync = [time.monotonic()]

    def periodic_sync(written: list[int], completed: bool) -> None:
        # Long embedded runs make their results findable by similarity as they go.
        if time.monotonic() - last_sync[0] >= EMBEDDED_SYNC_INTERVAL_S:
            sync_vector_index(settings, proc.model_id, proc.embed_dim)
            last_sync[0] = time.monotonic()

    set_running(url, job_id)
    producer = threading.Thread(target=produce, name="ramdex-register", daemon=True)
    producer.start()
    try:
        with proc._lock:
            hook, proc.on_committed = proc.on_committed, periodic_sync
            try:
                proc.process(stream(), job_id=job_id, on_progress=bar.update, complete_job=False)
            except _TRANSIENT as exc:
                # Let registration finish, then retry the whole id list: processing is
                # idempotent, so what was committed is skipped.
                log.warning("ingest: transient error (%s); retrying", exc)
                for _ in stream():
                    pass
                producer.join()
                _retry_transient(
                    lambda: proc.process(list(tally.queued), job_id=job_id, complete_job=False)
                )
            finally:
                proc.on_committed = hook
    finally:
        stop.set()
        producer.join(timeout=30)
    if errors:
        raise errors[0]
    finish_job(url, job_id, _registration_extra(tally))
    if tally.queued:
        _retry_transient(lambda: sync_vector_index(settings, proc.model_id, proc.embed_dim))


def _run_with_broker(
    settings: Settings,
    registrar: Registrar,
    items: Sequence[str | Path],
    tally: _Tally,
    job_id: int,
    bar: Any,
    wait: bool,
    register_workers: int,
) -> None:
    """Register here, send groups of ids to the model queue, optionally follow the job."""
    from indexer.jobs import wait_for_job
    from indexer.tasks import Dispatcher, submit

    url = settings.database_url

    def send(group: list[int]) -> None:
        add_total(url, job_id, len(group))  # before the task can finish: totals never lag
        submit(group, job_id=job_id, settings=settings)

    registered_only = 0
    with Dispatcher(send, settings.broker.batch_size, settings.broker.batch_timeout_ms) as dispatch:
        for reg in _register_all(registrar, items, register_workers):
            tally.add(reg)
            if reg.state == "queued":
                dispatch.add(reg.asset_id)  # type: ignore[arg-type]
            else:
                registered_only += 1
                bar.update(1)
    status = end_registration(url, job_id, _registration_extra(tally))
    if status == "done" and tally.queued:
        # The workers finished before registration ended: none of them saw the job complete.
        from indexer.tasks import request_index_sync

        request_index_sync(settings, final=True)
    if not wait or not tally.queued:
        return

    def on_update(view: Any) -> None:
        bar.n = registered_only + view.processed
        bar.refresh()

    wait_for_job(url, job_id, on_update=on_update)


# Errors worth retrying: the database or broker was unreachable, a lock timed out, GPU memory ran
# out. Anything else is a bug or bad input and must surface.
def _transient_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [
        sa.exc.OperationalError,
        sa.exc.InterfaceError,
        sa.exc.TimeoutError,
        torch.cuda.OutOfMemoryError,
        ConnectionError,
        TimeoutError,
    ]
    try:
        import redis.exceptions

        errors += [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError]
    except ImportError:  # pragma: no cover - redis is a dependency through celery[redis]
        pass
    try:
        import kombu.exceptions

        errors.append(kombu.exceptions.OperationalError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


_TRANSIENT = _transient_errors()


def is_transient(exc: BaseException) -> bool:
    """Whether an error is worth retrying later (database/broker down, GPU out of memory)."""
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, _TRANSIENT)


def _retry_transient(fn: Callable[[], Any], attempts: int = 6, base_s: float = 1.0) -> Any:
    """Call ``fn``, retrying transient errors with exponential backoff (1, 2, 4 ... s)."""
    for attempt in range(attempts):
        try:
            return fn()
        except _TRANSIENT:
            if attempt == attempts - 1:
                raise
            time.sleep(min(base_s * 2**attempt, 30.0))
    return None
