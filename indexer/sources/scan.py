"""One scan of a source: list, compare with the table, read only what is new or changed (through
the ingest pipeline, one job per scan), mark what vanished as gone, record how it went.

A scan holds the source's lease (``source-scan:<id>``), so two processes never scan one source
at once. It is idempotent: a scan killed midway left every object it registered recorded with
its asset (both commit together), so the next scan reads only the rest. A store that cannot be
reached records ``last_error`` on the source (its figures and objects are kept) and the source
is due again after its interval.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from indexer.db.jobs import JobKind
from indexer.db.session import session_scope
from indexer.db.source_repo import (
    begin_scan,
    end_scan,
    get_source,
    known_objects,
    mark_gone,
    mark_present,
    note_job,
)
from indexer.db.sources import Source, SourceKind
from indexer.ingest.lease import process_owner
from indexer.jobs import start_job
from indexer.settings import Settings
from indexer.sources import s3
from indexer.sources.diff import Diff, diff_listing
from indexer.sources.errors import SourceError
from indexer.sources.folder import list_folder, stat_listed
from indexer.sources.globs import KeyFilter
from indexer.sources.items import SourceItem
from indexer.sources.leases import held, scan_lease_name
from indexer.sources.uri import SourceRef, parse_source_uri

if TYPE_CHECKING:
    from indexer.ingest.process import AssetProcessor

log = logging.getLogger(__name__)

_local = threading.Lock()
_scanning: set[int] = set()  # sources this process scans now (threads share one lease owner)


@dataclass
class ScanReport:
    """What one scan did.

    Attributes:
        listed: objects the listing took (after the globs); a watcher's scan: touched files.
        new, changed: objects read (registered and ingested); unchanged: not read.
        back: gone objects listed again unchanged; gone: objects no longer listed.
        failed: objects read that did not become done assets (unreadable, not images ...).
        paired: camera JPEGs recorded as their RAW asset's companion (RAW+JPEG pairs).
        job_id: the ingest job of what was read (None when nothing was).
        error: why the scan stopped (the store did not answer ...); None when it completed.
        skipped: another scan of the source was running (nothing done).
    """

    source_id: int
    listed: int = 0
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    back: int = 0
    gone: int = 0
    failed: int = 0
    queued: int = 0
    paired: int = 0
    job_id: int | None = None
    error: str | None = None
    skipped: bool = False
    list_s: float = 0.0
    elapsed_s: float = 0.0

    def counts(self) -> dict[str, Any]:
        """The figures kept as the source's ``last_counts``."""
        out = asdict(self)
        for key in ("source_id", "error", "skipped", "job_id"):
            out.pop(key)
        out["list_s"] = round(self.list_s, 3)
        out["elapsed_s"] = round(self.elapsed_s, 3)
        return out


def scan_source(
    settings: Settings,
    source_id: int,
    *,
    processor: AssetProcessor | None = None,
    wait: bool = True,
    progress: bool | None = False,
    paths: Iterable[Path] | None = None,
    raise_errors: bool = False,
) -> ScanReport:
    """Scan a source (all of it, or only the watcher's touched ``paths`` of a folder source).

    Args:
        processor: the embedded mode's processor (default: the process's shared one).
        wait: with a broker, wait for the workers (else return once queued).
        progress: the ingest's progress bar (None: when stderr is a terminal).
        paths: files of a folder source that changed (a watcher's scan: nothing else is
            listed, and none of them is read unless new or changed).
        raise_errors: raise :class:`SourceError` (after recording it) instead of returning it
            in ``error`` (the command line).

    Raises:
        LookupError: no such source.
    """
    started = time.monotonic()
    url = settings.database_url
    with _local:
        if source_id in _scanning:
            return ScanReport(source_id, skipped=True)
        _scanning.add(source_id)
    try:
        lease_s = max(settings.ingest.lease_s, 10.0)
        with held(url, scan_lease_name(source_id), process_owner(), lease_s) as mine:
            if not mine:
                return ScanReport(source_id, skipped=True)
            return _scan(
                settings, source_id, processor, wait, progress, paths, raise_errors, started
            )
    finally:
        with _local:
            _scanning.discard(source_id)


def _scan(
    settings: Settings,
    source_id: int,
    processor: AssetProcessor | None,
    wait: bool,
    progress: bool | None,
    paths: Iterable[Path] | None,
    raise_errors: bool,
    started: float,
) -> ScanReport:
    url = settings.database_url
    report = ScanReport(source_id)
    with session_scope(url) as session:
        source = get_source(session, source_id)
        if source is None:
            raise LookupError(f"no source {source_id}")
        snapshot = _Snapshot.of(source)
        if paths is None:
            begin_scan(session, source_id)
    full = paths is None
    try:
        ref = source_ref(snapshot)
        diff = _diff(settings, snapshot, ref, report, None if full else list(paths or ()))
        report.new, report.changed = len(diff.new), len(diff.changed)
        report.unchanged = diff.unchanged
        with session_scope(url) as session:
            report.back = mark_present(session, source_id, diff.back)
            report.gone = mark_gone(session, source_id, diff.gone)
        items = [_item(settings, snapshot, ref, entry) for entry in diff.to_read]
        if items:
            _ingest(settings, snapshot, items, report, processor, wait, progress)
    except SourceError as exc:
        report.error = exc.message
        report.elapsed_s = time.monotonic() - started
        log.warning("source %s: scan failed: %s", source_id, exc)
        with session_scope(url) as session:
            end_scan(
                session,
                source_id,
                error=exc.message,
                counts=None,
                job_id=report.job_id,
                interval_s=snapshot.interval_s,
            )
        if raise_errors:
            raise
        return report
    except BaseException as exc:
        # Bugs and a database gone: the scan is redone next interval (or next run).
        if full:
            try:
                with session_scope(url) as session:
                    end_scan(
                        session,
                        source_id,
                        error=f"scan interrupted ({type(exc).__name__}: {exc})",
                        counts=None,
                        job_id=report.job_id,
                        interval_s=snapshot.interval_s,
                    )
            except Exception:
                log.debug("could not record the interrupted scan", exc_info=True)
        raise
    report.elapsed_s = time.monotonic() - started
    with session_scope(url) as session:
        if full:
            end_scan(
                session,
                source_id,
                error=None,
                counts=report.counts(),
                job_id=report.job_id,
                interval_s=snapshot.interval_s,
            )
        elif report.job_id is not None:
            # A watcher's scan is no full scan: the next full one stays when it was due.
            note_job(session, source_id, report.job_id)
    return report


@dataclass(frozen=True)
class _Snapshot:
    """The source row's settings, read once at the scan's start."""

    id: int
    kind: str
    uri: str
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    collection_id: int
    copy_originals: bool
    interval_s: int

    @classmethod
    def of(cls, source: Source) -> _Snapshot:
        return cls(
            int(source.id),
            source.kind,
            source.uri,
            tuple(source.include or ()),
            tuple(source.exclude or ()),
            int(source.collection_id),
            bool(source.copy_originals),
            int(source.interval_s),
        )


def source_ref(source: Source | _Snapshot) -> SourceRef:
    """The parsed URI of a source (its kind checked)."""
    ref = parse_source_uri(source.uri)
    if ref.kind.value != source.kind:
        raise SourceError(f"source {source.id}: kind {source.kind!r} does not match its URI")
    return ref


def _diff(
    settings: Settings,
    snap: _Snapshot,
    ref: SourceRef,
    report: ScanReport,
    paths: list[Path] | None,
) -> Diff:
    """List the source (or stat the touched paths) and compare with the table."""
    keep = KeyFilter(snap.include, snap.exclude)
    url = settings.database_url
    t0 = time.monotonic()
    if ref.kind is SourceKind.S3:
        listed = list(s3.list_objects(settings, ref.bucket, ref.list_prefix, keep))
        scope = None
    else:
        folder = ref.folder
        assert folder is not None
        if not folder.is_dir():
            raise SourceError(
                f"folder {ref.uri} is not there (unmounted, moved or deleted)",
                hint="its objects are kept; the scan is tried again after its interval",
                kind="source-unreachable",
            )
        if paths is None:
            roots = settings.storage.allowed_roots
            listed = list(list_folder(folder, keep, roots))
            scope = None
        else:
            scope = []
            listed = []
            for path in paths:
                try:
                    key = path.relative_to(folder).as_posix()
                except ValueError:
                    continue
                scope.append(key)
                entry = stat_listed(folder, path) if keep(key) else None
                if entry is not None:
                    listed.append(entry)
    report.list_s = time.monotonic() - t0
    report.listed = len(listed)
    with session_scope(url) as session:
        known = known_objects(session, snap.id, scope)
    return diff_listing(listed, known, scope)


def _item(settings: Settings, snap: _Snapshot, ref: SourceRef, entry: s3.Listed) -> SourceItem:
    """The registrar's view of one object to read."""
    uri = ref.key_uri(entry.key)
    if ref.kind is SourceKind.S3:
        full_key = ref.list_prefix + entry.key
        bucket, etag = ref.bucket, entry.etag

        def opener() -> Any:
            return s3.open_object(settings, bucket, full_key, etag)

        storage = uri
    else:
        path = Path(uri)

        def opener() -> Any:
            return open(path, "rb")  # noqa: SIM115 - the reader closes it

        storage = str(path)
    return SourceItem(
        uri=uri,
        key=entry.key,
        source_id=snap.id,
        collection_id=snap.collection_id,
        etag=entry.etag,
        size=entry.size,
        mtime=entry.mtime,
        opener=opener,
        storage=storage,
        copy=snap.copy_originals,
    )


def _ingest(
    settings: Settings,
    snap: _Snapshot,
    items: list[SourceItem],
    report: ScanReport,
    processor: AssetProcessor | None,
    wait: bool,
    progress: bool | None,
) -> None:
    """Read and ingest the objects through the pipeline, in one job of this scan."""
    from indexer.ingest.pipeline import ingest

    params = {"source_id": snap.id, "source": snap.uri, "objects": len(items)}
    owner = process_owner()
    job_id = start_job(
        settings.database_url,
        JobKind.INGEST,
        params=params,
        owner=owner,
        lease_s=settings.ingest.lease_s,
        collection_id=snap.collection_id,  # the collection's keys see the scan's job
    )
    report.job_id = job_id
    summary = ingest(
        items,  # type: ignore[arg-type]  # SourceItems register like paths (register_item)
        settings=settings,
        processor=processor,
        wait=wait,
        progress=progress,
        job_id=job_id,
    )
    report.failed = summary.failed
    report.queued = summary.queued
    report.paired = summary.paired
