"""Ingest stage 1, registration: sources (paths, URLs, uploads) become assets.

Hash and copy each original into the content-addressed media store and get-or-create the asset by
sha256 (race-safe), recording the source. New assets are ``pending``; the same bytes seen again
are a *duplicate* when that asset is done (one asset, one more source), *resumed* when it is
still unfinished (an earlier run was interrupted: this run finishes it); unreadable input is
``failed`` with a reason.

With a job, every outcome is written into the job's ledger in the same transaction (so the job
waits for exactly these assets). With an owner, new and resumed assets are leased to it: it
promises to dispatch or process them, and its lease running out says it could not.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence, Set
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session

from indexer.allowed_roots import PathNotAllowedError, check_server_path
from indexer.db.asset_leases import lease_assets
from indexer.db.asset_repo import add_source, get_or_create_asset_by_sha, mark_failed, set_status
from indexer.db.assets import Asset, AssetStatus
from indexer.db.job_repo import add_job_assets
from indexer.db.jobs import JobOutcome
from indexer.db.session import session_scope
from indexer.fetch import FetchError, FetchLimits, fetch_url
from indexer.media import (
    FileTooLargeError,
    MediaStore,
    StoredOriginal,
)
from indexer.settings import Settings
from indexer.sources.items import SourceItem
from indexer.sources.reading import read_item
from indexer.walk import WalkError, walk_files

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


@dataclass(frozen=True)
class Registered:
    """The outcome of registering one source.

    ``state`` is ``queued`` (new asset, to process), ``resumed`` (an unfinished asset met again:
    this run finishes it), ``duplicate`` (already done, or met twice by this job) or ``failed``
    (``reason`` says why; ``asset_id`` is set when the bytes were readable). ``held``: the asset
    is leased to the registrar's owner, which must dispatch or process it.
    """

    source: str
    state: str
    asset_id: int | None = None
    reason: str | None = None
    held: bool = False


@dataclass(frozen=True)
class Failure:
    """A source (path or URL) that did not become a done asset, and why."""

    source: str
    reason: str
    asset_id: int | None = None


def is_url(text: str) -> bool:
    """Whether a source looks like a URL (any scheme) rather than a path."""
    return bool(_URL.match(text))


class Registrar:
    """Turns sources into assets: hash, store the original, dedup, record the source.

    Args:
        settings: ramdex settings (media folder, limits, URL safety).
        retry_failed: put assets that failed before back to ``pending`` when seen again.
        job_id: the job whose ledger records every outcome (None: no job).
        owner: lease new and resumed assets to this process (see :mod:`indexer.ingest.lease`); None:
            they are left unleased, for the reconciler to dispatch.
        recovered: assets this run recovered before registering (left unfinished by an earlier
            run): met again, they count as resumed even if they are done by now.
    """

    def __init__(
        self,
        settings: Settings,
        retry_failed: bool = False,
        *,
        job_id: int | None = None,
        owner: str | None = None,
        recovered: Set[int] = frozenset(),
    ) -> None:
        self.settings = settings
        self.url = settings.database_url
        self.media = MediaStore(settings.media_dir)
        self.limits = FetchLimits.from_settings(settings)
        self.retry_failed = retry_failed
        self.job_id = job_id
        self.owner = owner
        self.lease_s = settings.ingest.lease_s
        self.recovered = recovered

    def register(self, source: str | Path | SourceItem) -> Registered:
        """Register a path, an ``http(s)`` URL or an object of a source; never raises for bad
        input (see ``state``).

        Raises:
            sqlalchemy.exc.OperationalError: the database is unreachable (the caller decides).
        """
        if isinstance(source, SourceItem):
            return self.register_item(source)
        text = str(source)
        if is_url(text):
            return self.register_url(text)
        return self.register_path(Path(source))

    def register_path(self, path: Path) -> Registered:
        """Register a local file (inside ``storage.allowed_roots`` when those are set)."""
        uri = os.path.abspath(path)
        if self.settings.storage.allowed_roots:
            try:  # the resolved path is what gets opened: a link swapped later is not followed
                path = check_server_path(path, self.settings.storage.allowed_roots)
            except PathNotAllowedError as exc:
                return Registered(uri, "failed", reason=exc.reason)
        try:
            stored = self.media.put_file(path, max_bytes=self.settings.ingest.max_bytes)
        except FileTooLargeError as exc:
            return Registered(uri, "failed", reason=str(exc))
        except IsADirectoryError:
            return Registered(uri, "failed", reason="is a folder, not a file")
        except FileNotFoundError:
            return Registered(uri, "failed", reason="file not found (or a broken link)")
        except PermissionError:
            return Registered(uri, "failed", reason="permission denied")
        except OSError as exc:
            return Registered(uri, "failed", reason=f"cannot read: {exc.strerror or exc}")
        return self._record(uri, stored.sha256, stored.size, stored.mime, stored.path)

    def register_url(self, url: str) -> Registered:
        """Download and register an image URL (with the configured safety limits)."""
        try:
            fetched = fetch_url(url, self.media.tmp_dir, self.limits)
        except FetchError as exc:
            return Registered(url, "failed", reason=exc.reason)
        stored = self.media.adopt(fetched.path, fetched.sha256, fetched.size)
        return self._record(url, stored.sha256, stored.size, stored.mime, stored.path)

    def register_item(self, item: SourceItem) -> Registered:
        """Register an object of a source (an S3 object, a watched folder's file): read once,
        hashed while streaming, copied into the media store only when the source says
        ``copy_originals`` (else ``storage_path`` is the object's URI or path). Its
        ``source_objects`` row and collection membership commit with the asset."""
        try:
            got = read_item(item, self.media, self.settings.ingest.max_bytes)
        except FileTooLargeError as exc:
            reason = str(exc)
        except Exception as exc:  # network or file errors of a remote read fail this object only
            reason = f"cannot read: {getattr(exc, 'message', None) or exc}"
        else:
            return self._record(
                item.uri, got.sha256, got.size, got.mime, got.storage, after=item.recorded
            )
        with session_scope(self.url) as session:
            item.failed(session, reason)
        return Registered(item.uri, "failed", reason=reason)

    def register_bytes(self, data: bytes, source: str) -> Registered:
        """Register uploaded bytes under a source name (for example ``upload:<file name>``)."""
        try:
            stored = self.media.put_bytes(data, max_bytes=self.settings.ingest.max_bytes)
        except FileTooLargeError as exc:
            return Registered(source, "failed", reason=str(exc))
        return self._record(source, stored.sha256, stored.size, stored.mime, stored.path)

    def record(self, uri: str, stored: StoredOriginal) -> Registered:
        """Register an original already in the media store (uploads streamed by the API)."""
        return self._record(uri, stored.sha256, stored.size, stored.mime, stored.path)

    def _record(
        self,
        uri: str,
        sha256: str,
        size: int,
        mime: str | None,
        path: Path | str | None,
        after: Callable[[Session, int], None] | None = None,
    ) -> Registered:
        reason = None
        if size == 0:
            reason = "empty file (0 bytes)"
        elif mime is None:
            reason = "not a supported image (JPEG, PNG, WebP, GIF, BMP, TIFF, HEIC/HEIF, AVIF)"
        with session_scope(self.url) as session:
            ref = get_or_create_asset_by_sha(
                session,
                sha256=sha256,
                size_bytes=size,
                mime=mime,
                storage_path=str(path) if path else None,
            )
            add_source(session, asset_id=ref.id, uri=uri)
            if after is not None:  # a source's bookkeeping, in the same transaction
                after(session, ref.id)
            if ref.created:
                if reason is not None:
                    mark_failed(session, ref.id, reason)
                    self._ledger(session, ref.id, JobOutcome.FAILED)
                    return Registered(uri, "failed", ref.id, reason)
                self._ledger(session, ref.id)
                return Registered(uri, "queued", ref.id, held=self._lease(session, ref.id))
            # Locked (PostgreSQL), so a worker finishing this asset right now either commits
            # first (we see it done) or credits our ledger row after we commit.
            row = session.execute(
                sa.select(Asset.status, Asset.error, Asset.model_name)
                .where(Asset.id == ref.id)
                .with_for_update()
            ).one()
            if row.status == AssetStatus.FAILED.value:
                if self.retry_failed and reason is None:
                    set_status(session, [ref.id], AssetStatus.PENDING)
                    self._ledger(session, ref.id)
                    return Registered(uri, "queued", ref.id, held=self._lease(session, ref.id))
                error = row.error or "failed earlier"
                self._ledger(session, ref.id, JobOutcome.FAILED)
                return Registered(uri, "failed", ref.id, error)
            if row.status == AssetStatus.DONE.value:
                if ref.id in self.recovered and self._ledger(session, ref.id, JobOutcome.DONE):
                    return Registered(uri, "resumed", ref.id)  # finished by this run's recovery
                return Registered(uri, "duplicate", ref.id)
            # Unfinished: an earlier run was interrupted (or another run works on it now).
            if not self._ledger(session, ref.id) and self.job_id is not None:
                return Registered(uri, "duplicate", ref.id)  # this job met the same bytes twice
            return Registered(uri, "resumed", ref.id, held=self._lease(session, ref.id))

    def _ledger(self, session: Session, asset_id: int, outcome: JobOutcome | None = None) -> bool:
        """Record the asset in the job's ledger; False when it was there already (or no job)."""
        if self.job_id is None:
            return False
        return bool(add_job_assets(session, self.job_id, [asset_id], outcome))

    def _lease(self, session: Session, asset_id: int) -> bool:
        """Lease the asset to the owner unless another live process holds it."""
        if self.owner is None:
            return False
        return bool(lease_assets(session, [asset_id], self.owner, self.lease_s))


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
        if isinstance(source, SourceItem):
            items.append(source)  # type: ignore[arg-type]  # registered by register_item
            continue
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
