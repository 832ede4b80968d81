"""Recovery in an embedded ``ramdex serve`` (no broker, so no worker runs a reconciler).

The server processes uploads and registrations in its own background thread. What a killed
server, a killed embedded ``ramdex ingest`` or an older version left behind (assets whose lease
ran out, pending assets never processed, abandoned registrations, jobs from before the ledger,
backfills whose run stopped, a FAISS index behind the database) would otherwise wait for the
next ``ramdex ingest``. :class:`EmbeddedRecovery` runs the same pass as an embedded ingest does
at its start (:func:`indexer.ingest.reconcile.recover`) when the server starts, then every
``ingest.reconcile_interval_s`` while it serves, in the server's background thread (behind the
uploads already queued there, one piece of work at a time), holding the ``reconcile`` service
lease so that servers sharing one database take turns.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from indexer.db.leases import take_service_lease
from indexer.db.session import session_scope
from indexer.ingest.backfills import Backfill
from indexer.ingest.lease import keeper_for, process_owner
from indexer.ingest.process import AssetProcessor
from indexer.ingest.reconcile import (
    SERVICE,
    ReconcileReport,
    recover,
    release_reconcile_lease,
    settle_quiet_jobs,
)
from indexer.settings import Settings
from indexer.stores import index_is_behind

log = logging.getLogger(__name__)

FULL_INDEX_CHECK_EVERY = 20  # passes between exact index checks (a count over the assets)


class ServerArchive(Protocol):
    """What the recovery needs of the server's archive (:class:`indexer.archive.Archive`)."""

    settings: Settings

    def processor(self) -> AssetProcessor: ...

    def background(self, work: Callable[[], None]) -> None: ...

    def backfill_concept(
        self, concept_id: int, job_id: int, *, generate: bool = False, fixed_threshold: bool = False
    ) -> None: ...

    def request_index_sync(self, final: bool = True) -> None: ...

    def model_id(self) -> str: ...


class EmbeddedRecovery:
    """The embedded server's reconciler: a pass at start, then one every interval.

    Args:
        archive: the server's archive (its processor, background thread, index).
        interval_s: default ``ingest.reconcile_interval_s``.
    """

    def __init__(self, archive: ServerArchive, interval_s: float | None = None) -> None:
        self.archive = archive
        self.settings = archive.settings
        self.interval_s = interval_s or self.settings.ingest.reconcile_interval_s
        self.owner = process_owner()
        self.passes = 0
        self.last: ReconcileReport | None = None
        self._queued = threading.Event()  # a pass waits in (or runs on) the background thread
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> EmbeddedRecovery:
        """Queue the start pass, and start the timer of the periodic ones."""
        self._submit()
        self._thread = threading.Thread(target=self._run, name="ramdex-recovery", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the timer and give the service lease up (another server takes it at once)."""
        self._stop.set()
        release_reconcile_lease(self.settings, self.owner)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._submit()

    def _submit(self) -> None:
        if self._queued.is_set() or self._stop.is_set():
            return  # uploads keep the thread busy: one pass waiting is enough
        self._queued.set()
        try:
            self.archive.background(self._pass)
        except RuntimeError:  # the executor shut down: the server is stopping
            self._queued.clear()

    def _pass(self) -> None:
        try:
            self.run_pass()
        except Exception as exc:  # database away: the next pass tries again
            log.warning("recovery pass failed: %s: %s", type(exc).__name__, exc)
        finally:
            self._queued.clear()

    def run_pass(self) -> ReconcileReport | None:
        """One pass in the calling thread (the server's background thread); None while another
        server holds the service lease."""
        settings = self.settings
        with session_scope(settings.database_url) as session:
            if not take_service_lease(session, SERVICE, self.owner, self.interval_s * 3):
                return None
        started = time.perf_counter()
        first = self.passes == 0
        self.passes += 1
        report = ReconcileReport(queue_depth=0)
        # At start nothing of this server waits in its thread: never-started backfills are
        # orphans then (later, one may be queued behind this pass).
        found = recover(
            settings,
            self.owner,
            queue_empty=True,
            resume_backfill=self._resume,
            pending_backfills=first,
        )
        report.recovered = len(found.assets)
        report.jobs_failed, report.jobs_redriven = len(found.jobs_failed), len(found.jobs_redriven)
        report.jobs_settled = len(found.jobs_settled)
        report.backfills_resumed = len(found.backfills_resumed)
        report.backfills_failed = len(found.backfills_failed)
        if found.assets:
            keeper = keeper_for(settings)
            keeper.hold_assets(found.assets)  # those not claimed yet stay ours meanwhile
            try:
                self.archive.processor().process(found.assets)
            finally:
                keeper.drop_assets(found.assets)
        settle_quiet_jobs(settings, True, report, send=self._rescore)
        self._sync_index(report, full=self.passes % FULL_INDEX_CHECK_EVERY == 1)
        report.elapsed_ms = (time.perf_counter() - started) * 1000.0
        if report.recovered or report.jobs_failed or report.jobs_settled or report.dispatched:
            log.warning("recovery: %s", report.to_dict())
        self.last = report
        return report

    def _resume(self, backfill: Backfill) -> None:
        """A backfill whose run (or one of its parts) stopped runs again here, after what is
        queued."""
        if backfill.part is not None:
            part = backfill.part
            self.archive.background(lambda: self.archive.backfill_part(backfill.job_id, part))
            return
        self.archive.background(
            lambda: self.archive.backfill_concept(
                backfill.concept_id,
                backfill.job_id,
                generate=backfill.generate,
                fixed_threshold=backfill.fixed_threshold,
            )
        )

    def _rescore(self, asset_ids: list[int]) -> None:
        """A reindex job whose run stopped: its remaining re-scores, here."""
        self.archive.processor().process(asset_ids)

    def _sync_index(self, report: ReconcileReport, full: bool) -> None:
        try:
            model_id = self.archive.model_id()
        except Exception as exc:  # no model configured or found: nothing to index with
            log.info("recovery: no index check (%s)", exc)
            return
        if index_is_behind(self.settings, model_id, full=full):
            self.archive.request_index_sync(final=True)
            report.index_synced = True
