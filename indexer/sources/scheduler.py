"""The sources scheduler: scans due sources and watches folders, with no manual step.

Every process that can run it (each ``ramdex worker`` process, an embedded ``ramdex serve``,
``ramdex sources watch``) starts one; only the holder of the ``sources`` database lease works,
the others only try to take the lease every ``sources.tick_s`` (one statement), so a dead
holder is replaced within a few ticks. The holder, every tick:

- watches the folders of sources added with ``--watch`` (watchdog); files that settled are
  scanned at once (only they are looked at: new or changed ones read, deleted ones marked gone);
- scans every source whose next full scan is due (``next_scan_at``, ``interval_s`` after the last
  one): for watched folders that is the safety net for missed events.

Each scan also holds its source's own lease, so a manual ``ramdex sources scan`` never runs
alongside. A scan that fails is recorded on the source and tried again next interval.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from indexer.db.session import session_scope
from indexer.db.source_repo import due_sources, list_sources
from indexer.db.sources import SourceKind
from indexer.ingest.lease import process_owner
from indexer.settings import Settings
from indexer.sources.leases import SCHEDULER_LEASE, release, take
from indexer.sources.scan import ScanReport, scan_source
from indexer.sources.uri import parse_source_uri
from indexer.sources.watch import Watcher

if TYPE_CHECKING:
    from indexer.ingest.process import AssetProcessor

log = logging.getLogger(__name__)

WATCH_POLL_S = 0.25  # how often settled files are looked for while folders are watched


class SourceScheduler:
    """Scans due sources and watched folders while this process holds the ``sources`` lease.

    Args:
        settings: ramdex settings (``sources.tick_s``, ``sources.settle_s``).
        processor: gives the embedded mode's processor (the server's); None: the process's
            shared one (or, with a broker, the workers process what a scan registers).
        wait: wait for the workers after each scan (broker mode; the embedded mode always does).
    """

    def __init__(
        self,
        settings: Settings,
        processor: Callable[[], AssetProcessor] | None = None,
        wait: bool = False,
    ) -> None:
        self.settings = settings
        self.url = settings.database_url
        self.tick_s = settings.sources.tick_s
        self.owner = process_owner()
        self.processor = processor
        self.wait = wait
        self.watcher = Watcher(settings.sources.settle_s)
        self.holding = False
        self.scans = 0
        self.last_tick = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- one step -----------------------------------------------------------------------------

    def tick(self) -> list[ScanReport]:
        """Take (or keep) the lease; while held, sync the watches and run every due scan."""
        self.last_tick = time.monotonic()
        self.holding = take(self.url, SCHEDULER_LEASE, self.owner, self.tick_s * 3 + 30)
        if not self.holding:
            self.watcher.close()
            return []
        reports: list[ScanReport] = []
        with session_scope(self.url) as session:
            wanted = {
                int(s.id): Path(parse_source_uri(s.uri).folder or s.uri)
                for s in list_sources(session)
                if s.watch and s.kind == SourceKind.FOLDER.value
            }
            due = due_sources(session)
        # A folder watched from now on gets a full scan first: changes made while nobody
        # watched it are found that way.
        fresh = self.watcher.sync(wanted)
        for source_id in dict.fromkeys([*fresh, *due]):
            if self._stop.is_set():
                break
            reports.append(self._scan(source_id))
        return reports

    def poll_watches(self) -> list[ScanReport]:
        """Scan the files of watched folders that settled (each source at most once)."""
        reports = []
        for watch in list(self.watcher.watches.values()):
            paths, full = watch.take_ready()
            if not (full or paths):
                continue
            report = self._scan(watch.source_id, None if full else paths)
            if report.skipped:
                # Another scan of the source holds it: these files are looked at again once
                # they settle again, not lost (the full scan may have seen them already).
                for path in paths:
                    watch.debouncer.touch(path)
                if full:
                    watch.full_scan.set()
            reports.append(report)
        return reports

    def _scan(self, source_id: int, paths: list[Path] | None = None) -> ScanReport:
        processor = self.processor() if self.processor is not None else None
        try:
            report = scan_source(
                self.settings, source_id, processor=processor, wait=self.wait, paths=paths
            )
        except LookupError:  # removed meanwhile
            self.watcher.unwatch(source_id)
            return ScanReport(source_id, skipped=True)
        except Exception as exc:  # the database or a bug: the scan is redone next time
            log.warning("source %s: scan failed: %s: %s", source_id, type(exc).__name__, exc)
            return ScanReport(source_id, error=str(exc))
        self.scans += 1
        if report.new or report.changed or report.gone or report.error:
            log.info("source %s: %s", source_id, report.counts())
        return report

    # -- running ------------------------------------------------------------------------------

    def run(self) -> None:
        """Run in the calling thread until :meth:`stop` (``ramdex sources watch``)."""
        try:
            while not self._stop.is_set():
                if time.monotonic() - self.last_tick >= self.tick_s:
                    try:
                        self.tick()
                    except Exception as exc:  # database away: the next tick tries again
                        self.holding = False
                        log.warning("sources scheduler: %s: %s", type(exc).__name__, exc)
                if self.holding and self.watcher.watches:
                    self.poll_watches()
                self._stop.wait(WATCH_POLL_S if self.watcher.watches else min(self.tick_s, 1.0))
        finally:
            self.watcher.close()
            release(self.url, SCHEDULER_LEASE, self.owner)
            self.holding = False

    def start(self) -> SourceScheduler:
        """Run in a daemon thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self.run, name="ramdex-sources", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop (after the scan under way, if any) and give the lease up at once."""
        self._stop.set()
        if self._thread is None:  # ticked by hand (tests) or never started
            self.watcher.close()
            if self.holding:
                release(self.url, SCHEDULER_LEASE, self.owner)
                self.holding = False
        elif self._thread is not threading.current_thread():
            self._thread.join(timeout=timeout_s)


_worker: tuple[int, SourceScheduler] | None = None


def start_worker_scheduler(settings: Settings) -> None:
    """``ramdex worker``: one scheduler thread per worker process, unless ``sources.scheduler``
    is off (the ``sources`` lease elects the one that works)."""
    global _worker
    if not settings.sources.scheduler or (_worker is not None and _worker[0] == os.getpid()):
        return
    _worker = (os.getpid(), SourceScheduler(settings).start())


def stop_worker_scheduler() -> None:
    """A stopping worker process hands the ``sources`` lease over at once."""
    if _worker is not None and _worker[0] == os.getpid():
        _worker[1].stop(timeout_s=2.0)
