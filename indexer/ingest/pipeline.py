"""``ramdex ingest`` end to end: :func:`ingest` ties the steps of an asset's life together.

1. **Recover** (:func:`indexer.ingest.reconcile.recover`): work earlier runs left unfinished and
   nobody holds (an interrupted ingest, a dead worker) is taken over first.
2. **Register** (:class:`indexer.ingest.register.Registrar`, in the caller: CLI, API or a
   default-queue task), with the job's ledger; new and resumed assets are leased to this process.
3. **Dispatch** (:mod:`indexer.ingest.dispatch`, broker mode): after the commit, groups of ids go
   to the model queue; the dispatch time is recorded once the broker accepted them.
4. **Process** (:class:`indexer.ingest.process.AssetProcessor`, here in the embedded mode, else
   in Celery model workers): the batch's transaction also credits the jobs of its assets.
5. **Index** (:func:`indexer.stores.sync_vector_index`): at the end of an embedded run; in broker
   mode a default-queue task when a job completes, and whenever the reconciler finds it behind.

In the embedded mode (no broker URL) registration runs in a background thread while the
processor consumes the ids; with a broker the ids go to the model queue in groups and, with
``wait``, the run follows the job (helping: it re-sends what the broker refused and reconciles
now and then), giving up with a clear message after ``ingest.stall_timeout_s`` without progress.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from indexer.db.assets import Asset, AssetStatus
from indexer.db.jobs import JobKind
from indexer.db.session import session_scope
from indexer.ingest.dispatch import (
    Dispatcher,
    SendBreaker,
    dispatch,
    one_line,
    request_index_sync,
)
from indexer.ingest.lease import LeaseKeeper, keeper_for, process_owner
from indexer.ingest.process import AssetProcessor, shared_processor
from indexer.ingest.raw_pairs import group_raw_jpeg_pairs
from indexer.ingest.reconcile import Reconciler, recover
from indexer.ingest.register import (
    Failure,
    Registered,
    Registrar,
    expand_sources,
)
from indexer.ingest.transient import TRANSIENT, retry_transient
from indexer.jobs import (
    MAX_RECORDED_FAILURES,
    begin_registration,
    end_registration,
    fail_registration,
    get_job_view,
    start_job,
    wait_for_job,
)
from indexer.settings import Settings, get_settings
from indexer.stores import ensure_schema, sync_vector_index

log = logging.getLogger(__name__)

EMBEDDED_SYNC_INTERVAL_S = 60.0


@dataclass
class IngestSummary:
    """What an ingest run did.

    Attributes:
        job_id: the job that tracked it (None when nothing was found to ingest).
        submitted: sources seen (files found by the walk, URLs, unreadable paths).
        done: sources whose asset is done (scored by this run, or resumed and finished).
        duplicate: sources whose bytes were already a done asset (or met twice by this run).
        failed: sources that ended failed (``failures`` says why).
        queued: assets handed to workers and not finished yet (``wait=False``).
        resumed: sources whose asset an earlier run left unfinished and this run finished (or
            queued): counted in ``done``, ``failed`` or ``queued`` as well.
        recovered: unfinished assets of earlier runs, not among these sources, that this run
            took over (they belong to their own jobs).
        paired: camera JPEGs recorded as the companion of their RAW's asset (RAW+JPEG pairs,
            ``media.raw_jpeg_pairs``): sources that are no asset of their own, counted in
            nothing else (``submitted == done + duplicate + failed + queued + paired``).
        asset_ids: every asset this run registered or met, in submission order.
        elapsed_s: wall time of the run.
    """

    job_id: int | None = None
    submitted: int = 0
    done: int = 0
    duplicate: int = 0
    failed: int = 0
    queued: int = 0
    resumed: int = 0
    recovered: int = 0
    paired: int = 0
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
            "resumed": self.resumed,
            "recovered": self.recovered,
            "paired": self.paired,
            "elapsed_s": round(self.elapsed_s, 3),
            "failures": [
                {"source": f.source, "reason": f.reason, "asset_id": f.asset_id}
                for f in self.failures
            ],
        }


def progress_bar(total: int, enabled: bool | None, desc: str) -> Any:
    from tqdm import tqdm

    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, dynamic_ncols=True)


class _Tally:
    """Thread-safe bookkeeping of registration outcomes."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.work: list[int] = []  # queued and resumed assets, whose outcome this run reports
        self.resumed: set[int] = set()
        self.duplicate = 0
        self.paired = 0  # JPEGs recorded as their RAW asset's companion
        self.failures: list[Failure] = []
        self.asset_ids: list[int] = []
        self.source_of: dict[int, str] = {}

    def add(self, reg: Registered) -> None:
        with self.lock:
            if reg.companion is not None:
                self.paired += 1
            if reg.state == "companion":
                return  # the JPEG's RAW asset was registered (and is counted) before
            if reg.asset_id is not None:
                self.asset_ids.append(reg.asset_id)
                self.source_of.setdefault(reg.asset_id, reg.source)
            if reg.state in ("queued", "resumed"):
                self.work.append(reg.asset_id)  # type: ignore[arg-type]
                if reg.state == "resumed":
                    self.resumed.add(reg.asset_id)  # type: ignore[arg-type]
            elif reg.state == "duplicate":
                self.duplicate += 1
            else:
                self.failures.append(Failure(reg.source, reg.reason or "failed", reg.asset_id))

    def extra(self) -> dict[str, Any]:
        """What the job's params keep of the registration."""
        with self.lock:
            return {
                "duplicate": self.duplicate,
                "paired": self.paired,
                "resumed": len(self.resumed),
                "register_failed": len(self.failures),
                "failures": [
                    {"source": f.source, "reason": f.reason}
                    for f in self.failures[:MAX_RECORDED_FAILURES]
                ],
            }

    def unregistered(self) -> int:
        """Failed sources that never became assets (they count as failed items of the job)."""
        with self.lock:
            return sum(1 for f in self.failures if f.asset_id is None)


def _register_all(
    registrar: Registrar, items: Sequence[str | Path], workers: int
) -> Iterator[Registered]:
    """Register in a few threads (hashing and downloads wait on I/O), results in input order
    (a RAW+JPEG pair that does not hold gives two)."""
    if workers <= 1:
        for item in items:
            yield from registrar.register_group(item)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="ramdex-register") as pool:
        pending: deque[Future[list[Registered]]] = deque()
        for item in items:
            pending.append(pool.submit(registrar.register_group, item))
            if len(pending) >= workers * 4:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()


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

    Running it again on the same sources finishes whatever an interrupted run left (counted as
    ``resumed``); work other interrupted runs left is recovered too.

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
        The summary: done, duplicate, failed (with reasons), queued, resumed, job id. With no
        source at all (an empty folder), ``submitted == 0`` and no job is created.

    Raises:
        indexer.models.ModelNotAvailableError: embedded mode and the model is not available.
        sqlalchemy.exc.OperationalError: the database stayed unreachable.
        indexer.jobs.JobStalledError: waiting, the job made no progress for
            ``ingest.stall_timeout_s`` (the job goes on; nothing is marked failed).
    """
    settings = settings or get_settings()
    url = settings.database_url
    ensure_schema(url)
    started = time.monotonic()
    items, problems = expand_sources(sources, include, exclude, follow_symlinks)
    submitted = len(items) + len(problems)
    if settings.media.raw_jpeg_pairs:  # a RAW and its camera JPEG: one asset (docs/media.md)
        items, _ = group_raw_jpeg_pairs(items)
    if not items and not problems and job_id is None:
        return IngestSummary(elapsed_s=time.monotonic() - started)
    owner = process_owner()
    keeper = keeper_for(settings)
    lease_s = settings.ingest.lease_s
    if job_id is None:
        params = {
            "sources": [str(s) for s in sources][:50],
            "include": list(include or []),
            "exclude": list(exclude),
        }
        job_id = start_job(url, JobKind.INGEST, params=params, owner=owner, lease_s=lease_s)
    else:
        begin_registration(url, job_id, owner, lease_s)
    keeper.hold_job(job_id)
    summary = IngestSummary(job_id=job_id, submitted=submitted)
    tally = _Tally()
    tally.failures.extend(problems)
    bar = progress_bar(summary.submitted, progress, "ingest")
    bar.update(len(problems))
    run = _Run(settings, keeper, owner, job_id, tally, bar)
    try:
        found = recover(settings, owner)
        run.hold(found.assets)
        summary.recovered = len(found.assets)
        registrar = Registrar(
            settings, retry_failed, job_id=job_id, owner=owner, recovered=set(found.assets)
        )
        if settings.broker.url:
            _run_with_broker(run, registrar, items, found.assets, wait, register_workers)
        else:
            proc = processor or shared_processor(settings)
            _run_embedded(run, proc, registrar, items, found.assets, register_workers)
    except BaseException as exc:
        # Only a registration that did not finish fails the job: once every source is
        # registered, the job completes from its assets, whoever finishes them.
        reason = f"registration interrupted ({type(exc).__name__}: {exc})"
        try:
            fail_registration(url, job_id, reason)
        except Exception as error:  # the database may be the problem; its lease runs out instead
            log.warning("could not mark job %s failed (%s)", job_id, one_line(error))
        raise
    finally:
        run.close()
        bar.close()

    summary.duplicate = tally.duplicate
    summary.paired = tally.paired
    summary.asset_ids = tally.asset_ids
    summary.failures = list(tally.failures)
    work = list(dict.fromkeys(tally.work))
    summary.resumed = sum(1 for i in work if i in tally.resumed)
    if work and (wait or not settings.broker.url):
        final = _final_statuses(url, work)
        for asset_id in work:
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
        summary.queued = len(work)
    summary.failed = len(summary.failures)
    summary.elapsed_s = time.monotonic() - started
    return summary


class _Run:
    """One ingest run's shared state: its leases, job, tally and progress bar."""

    def __init__(
        self,
        settings: Settings,
        keeper: LeaseKeeper,
        owner: str,
        job_id: int,
        tally: _Tally,
        bar: Any,
    ) -> None:
        self.settings = settings
        self.url = settings.database_url
        self.keeper = keeper
        self.owner = owner
        self.job_id = job_id
        self.tally = tally
        self.bar = bar
        self.held: set[int] = set()
        self._lock = threading.Lock()

    def hold(self, ids: Sequence[int]) -> None:
        with self._lock:
            new = [i for i in ids if i not in self.held]
            self.held.update(new)
        self.keeper.hold_assets(new)

    def drop(self, ids: Sequence[int]) -> None:
        with self._lock:
            gone = [i for i in ids if i in self.held]
            self.held.difference_update(gone)
        self.keeper.drop_assets(gone)

    def end_registration(self) -> str:
        """Registration is over: the job runs until its assets end (or is done already)."""
        status = end_registration(
            self.url, self.job_id, self.tally.extra(), unregistered=self.tally.unregistered()
        )
        self.keeper.drop_job(self.job_id)
        return status

    def close(self) -> None:
        """Stop renewing: what was not handed over is left to run out (and be recovered)."""
        self.drop(list(self.held))
        self.keeper.drop_job(self.job_id)


def _run_embedded(
    run: _Run,
    proc: AssetProcessor,
    registrar: Registrar,
    items: Sequence[str | Path],
    recovered: Sequence[int],
    register_workers: int,
) -> None:
    """Recovered work first, then register in a background thread while the processor
    consumes the new asset ids; finally wait for assets other processes were finishing."""
    settings = run.settings
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
        try:
            for asset_id in recovered:
                put(asset_id)
            for reg in _register_all(registrar, items, register_workers):
                if stop.is_set():
                    return
                run.tally.add(reg)
                if reg.companion is not None and reg.state != "companion":
                    run.bar.update(1)  # the pair's JPEG: no asset, so nothing processes it
                if reg.held:
                    run.hold([reg.asset_id])  # type: ignore[list-item]
                if reg.state in ("queued", "resumed"):
                    put(reg.asset_id)
                else:
                    run.bar.update(1)
            run.end_registration()
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

    producer = threading.Thread(target=produce, name="ramdex-register", daemon=True)
    producer.start()
    try:
        with proc._lock:
            hook, proc.on_committed = proc.on_committed, periodic_sync
            try:
                proc.process(stream(), on_progress=run.bar.update)
            except TRANSIENT as exc:
                # Let registration finish, then retry the whole id list: processing is
                # idempotent, so what was committed is skipped.
                log.warning("ingest: transient error (%s); retrying", exc)
                for _ in stream():
                    pass
                producer.join()
                again = [*recovered, *run.tally.work]
                retry_transient(lambda: proc.process(again))
            finally:
                proc.on_committed = hook
    finally:
        stop.set()
        producer.join(timeout=30)
    if errors:
        raise errors[0]
    _wait_for_others(run)
    if run.tally.work or recovered:
        retry_transient(lambda: sync_vector_index(settings, proc.model_id, proc.embed_dim))


def _wait_for_others(run: _Run) -> None:
    """Assets of this job that other live processes were processing: wait for them (with the
    stall timeout), so the summary reports their outcome."""
    view = get_job_view(run.url, run.job_id)
    if view is None or view.finished:
        return
    wait_for_job(
        run.url,
        run.job_id,
        poll_s=0.5,
        stall_timeout_s=run.settings.ingest.stall_timeout_s or None,
    )


def _run_with_broker(
    run: _Run,
    registrar: Registrar,
    items: Sequence[str | Path],
    recovered: Sequence[int],
    wait: bool,
    register_workers: int,
) -> None:
    """Register here, send groups of ids to the model queue, optionally follow the job.

    A group is sent only after its assets' registration committed; one the broker refused stays
    leased to this run and is sent again while it waits (or, if this run ends first, by the
    reconciler once the lease runs out).
    """
    settings, url = run.settings, run.url
    breaker = SendBreaker()

    def send(group: list[int]) -> None:
        if not breaker.open():
            return  # kept: sent later
        try:
            dispatch(settings, group, run.owner)
        except Exception as exc:
            breaker.failed(exc)
            return
        run.drop(group)

    def send_held() -> None:
        held = sorted(run.held)
        size = settings.broker.batch_size * 64
        for start in range(0, len(held), size):
            send(held[start : start + size])

    registered_only = 0
    with Dispatcher(send, settings.broker.batch_size, settings.broker.batch_timeout_ms) as d:
        for asset_id in recovered:
            d.add(asset_id)
        for reg in _register_all(registrar, items, register_workers):
            run.tally.add(reg)
            # A recovered asset the registration meets again before its group left goes once.
            if reg.held and reg.asset_id not in run.held:
                run.hold([reg.asset_id])  # type: ignore[list-item]
                d.add(reg.asset_id)  # type: ignore[arg-type]
            if reg.companion is not None and reg.state != "companion":
                registered_only += 1  # the pair's JPEG
                run.bar.update(1)
            if reg.state not in ("queued", "resumed"):
                registered_only += 1
                run.bar.update(1)
    status = run.end_registration()
    send_held()
    if status == "done" and run.tally.work:
        # The workers finished before registration ended: none of them saw the job complete.
        request_index_sync(settings, final=True)
    if not wait or not run.tally.work:
        return

    def on_update(view: Any) -> None:
        run.bar.n = registered_only + view.processed
        run.bar.refresh()

    reconciler = Reconciler(settings)
    last_pass = [time.monotonic()]

    def on_poll() -> None:
        # While waiting: send what the broker refused before, and take a reconciler turn now
        # and then (a dead worker's assets come back even when no worker runs a reconciler;
        # when one does, it holds the service lease and this is one statement).
        if run.held:
            send_held()
        if time.monotonic() - last_pass[0] >= settings.ingest.reconcile_interval_s:
            last_pass[0] = time.monotonic()
            reconciler.tick()

    try:
        wait_for_job(
            url,
            run.job_id,
            on_update=on_update,
            on_poll=on_poll,
            stall_timeout_s=settings.ingest.stall_timeout_s or None,
        )
    finally:
        reconciler.stop()  # hand the service lease back at once if this run held it
