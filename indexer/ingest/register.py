"""Ingest stage 1, registration: sources (paths, URLs, uploads) become assets.

Hash and copy each original into the content-addressed media store and get-or-create the asset by
sha256 (race-safe), recording the source. New assets are ``pending``; the same bytes seen again
are a *duplicate* when that asset is done (one asset, one more source), *resumed* when it is
still unfinished (an earlier run was interrupted: this run finishes it); unreadable input is
``failed`` with a reason.

With a job, every outcome is written into the job's ledger in the same transaction (so the job
waits for exactly these assets). With an owner, new and resumed assets are leased to it: it
promises to dispatch or process them, and its lease running out says it could not.

RAW+JPEG pairs (``media.raw_jpeg_pairs``, docs/media.md): ``group_raw_jpeg_pairs``
(:mod:`indexer.ingest.raw_pairs`) turns a camera RAW and the JPEG of the same base name in the
same folder into one ``RawJpegPair``;
:meth:`Registrar.register_pair` makes the RAW the asset and records the JPEG as its companion
(``asset_companions``) in the same transaction. A JPEG met alone whose RAW sibling is already an
asset (a watcher saw the RAW first) joins that asset the same way.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
from collections.abc import Callable, Sequence, Set
from dataclasses import dataclass, replace
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session

from indexer.allowed_roots import PathNotAllowedError, check_server_path
from indexer.db.asset_leases import lease_assets
from indexer.db.asset_repo import add_source, get_or_create_asset_by_sha, mark_failed, set_status
from indexer.db.assets import Asset, AssetSource, AssetStatus
from indexer.db.companion_repo import CompanionFile, record_companion
from indexer.db.job_repo import add_job_assets
from indexer.db.jobs import JobOutcome
from indexer.db.session import session_scope
from indexer.fetch import FetchError, FetchLimits, fetch_url
from indexer.ingest.raw_pairs import PAIR_JPEG_EXTENSIONS, RawJpegPair, libraw_opens
from indexer.media import (
    RAW_EXTENSIONS,
    RAW_MIME,
    SNIFF_BYTES,
    FileTooLargeError,
    MediaStore,
    SizeLimits,
    StoredOriginal,
    iter_chunks,
    sniff_mime,
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
    is leased to the registrar's owner, which must dispatch or process it. ``companion``: the
    URI of the camera JPEG recorded with this (RAW) asset, which is therefore no asset itself;
    a JPEG that joined a RAW asset registered earlier has ``state == "companion"``.
    """

    source: str
    state: str
    asset_id: int | None = None
    reason: str | None = None
    held: bool = False
    companion: str | None = None


@dataclass(frozen=True)
class _Companion:
    """A companion file read for a pair; ``item``: the JPEG as an object of a source, whose
    ``source_objects`` row then points at the RAW's asset (so the next scan skips it)."""

    file: CompanionFile
    item: SourceItem | None = None


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
        self.pairs = settings.media.raw_jpeg_pairs
        self._folder_raws: dict[str, list[str]] = {}  # folder -> its RAW file names

    def register(self, source: str | Path | SourceItem) -> Registered:
        """Register a path, an ``http(s)`` URL or an object of a source; never raises for bad
        input (see ``state``).

        Raises:
            sqlalchemy.exc.OperationalError: the database is unreachable (the caller decides).
        """
        if isinstance(source, SourceItem):
            return self._lone_jpeg(source) or self.register_item(source)
        text = str(source)
        if is_url(text):
            return self.register_url(text)
        return self._lone_jpeg(Path(source)) or self.register_path(Path(source))

    def register_group(self, source: str | Path | SourceItem | RawJpegPair) -> list[Registered]:
        """Register one item of :func:`expand_sources` / :func:`group_raw_jpeg_pairs`: a pair
        gives one or two outcomes (see :meth:`register_pair`), anything else one."""
        if isinstance(source, RawJpegPair):
            return self.register_pair(source)
        return [self.register(source)]

    def register_pair(self, pair: RawJpegPair) -> list[Registered]:
        """Register a RAW+JPEG pair as one asset: the RAW is the asset, the JPEG its companion.

        The pair holds only when the RAW is a camera RAW LibRaw opens and the JPEG is a
        readable JPEG; otherwise both are registered on their own (a RAW of a camera LibRaw
        does not know yet must not hide the JPEG that would be indexed without pairing).

        Returns:
            ``[raw outcome]`` with ``companion`` set when grouped, else both outcomes.
        """
        companion = self._read_companion(pair.jpeg)
        if companion is None:
            return [self._register_one(pair.raw), self._register_one(pair.jpeg)]
        if isinstance(pair.raw, SourceItem):
            master = self.register_item(pair.raw, companion=companion)
        else:
            master = self.register_path(Path(pair.raw), companion=companion)
        if master.companion is not None:
            return [master]
        return [master, self._register_one(pair.jpeg)]

    def _register_one(self, source: Path | SourceItem) -> Registered:
        if isinstance(source, SourceItem):
            return self.register_item(source)
        return self.register_path(Path(source))

    def register_path(self, path: Path, *, companion: _Companion | None = None) -> Registered:
        """Register a local file (inside ``storage.allowed_roots`` when those are set);
        ``companion``: the JPEG of a pair, recorded with it when the pair holds."""
        uri = os.path.abspath(path)
        if self.settings.storage.allowed_roots:
            try:  # the resolved path is what gets opened: a link swapped later is not followed
                path = check_server_path(path, self.settings.storage.allowed_roots)
            except PathNotAllowedError as exc:
                return Registered(uri, "failed", reason=exc.reason)
        try:
            stored = self.media.put_file(path, max_bytes=SizeLimits.of(self.settings))
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
        companion = self._holds(companion, stored.mime, stored.size, stored.path)
        return self._record(
            uri, stored.sha256, stored.size, stored.mime, stored.path, companion=companion
        )

    def register_url(self, url: str) -> Registered:
        """Download and register an image URL (with the configured safety limits)."""
        try:
            fetched = fetch_url(url, self.media.tmp_dir, self.limits)
        except FetchError as exc:
            return Registered(url, "failed", reason=exc.reason)
        stored = self.media.adopt(fetched.path, fetched.sha256, fetched.size)
        return self._record(url, stored.sha256, stored.size, stored.mime, stored.path)

    def register_item(self, item: SourceItem, *, companion: _Companion | None = None) -> Registered:
        """Register an object of a source (an S3 object, a watched folder's file): read once,
        hashed while streaming, copied into the media store only when the source says
        ``copy_originals`` (else ``storage_path`` is the object's URI or path). Its
        ``source_objects`` row and collection membership commit with the asset (and with a
        pair's ``companion``, the JPEG's row too)."""
        try:
            got = read_item(item, self.media, SizeLimits.of(self.settings))
        except FileTooLargeError as exc:
            reason = str(exc)
        except Exception as exc:  # network or file errors of a remote read fail this object only
            reason = f"cannot read: {getattr(exc, 'message', None) or exc}"
        else:
            kept = self._holds(companion, got.mime, got.size, got.storage)
            return self._record(
                item.uri,
                got.sha256,
                got.size,
                got.mime,
                got.storage,
                after=item.recorded,
                companion=kept,
            )
        with session_scope(self.url) as session:
            item.failed(session, reason)
        return Registered(item.uri, "failed", reason=reason)

    def register_bytes(self, data: bytes, source: str) -> Registered:
        """Register uploaded bytes under a source name (for example ``upload:<file name>``)."""
        try:
            stored = self.media.put_bytes(data, max_bytes=SizeLimits.of(self.settings))
        except FileTooLargeError as exc:
            return Registered(source, "failed", reason=str(exc))
        return self._record(source, stored.sha256, stored.size, stored.mime, stored.path)

    def record(self, uri: str, stored: StoredOriginal) -> Registered:
        """Register an original already in the media store (uploads streamed by the API)."""
        return self._record(uri, stored.sha256, stored.size, stored.mime, stored.path)

    def _holds(
        self,
        companion: _Companion | None,
        mime: str | None,
        size: int,
        stored: Path | str | None,
    ) -> _Companion | None:
        """The companion when the pair holds: the master is a non-empty camera RAW that LibRaw
        opens (probed where the bytes are on local disk: the media store copy or the file)."""
        if companion is None or size == 0 or mime not in RAW_MIME:
            return None
        local = Path(stored) if stored is not None and not is_url(str(stored)) else None
        if local is not None and local.is_file() and not libraw_opens(local):
            return None
        return companion

    def _read_companion(self, source: Path | SourceItem) -> _Companion | None:
        """Hash and sniff the JPEG of a pair (its bytes are not copied: the model reads the
        RAW); None when it is unreadable, refused, too large, empty or not a JPEG (then it is
        registered on its own and that says why)."""
        try:
            if isinstance(source, SourceItem):
                uri, handle = source.uri, source.opener()
            else:
                uri = os.path.abspath(source)
                path = Path(source)
                if self.settings.storage.allowed_roots:
                    path = check_server_path(path, self.settings.storage.allowed_roots)
                handle = open(path, "rb")  # noqa: SIM115 - closed below
            with handle:
                sha, size, head = _hash_stream(handle, self.settings.ingest.max_bytes)
        except Exception:  # noqa: BLE001 - any read problem: registered alone, which reports it
            return None
        if size == 0 or sniff_mime(head) != "image/jpeg":
            return None
        item = source if isinstance(source, SourceItem) else None
        return _Companion(CompanionFile(uri, "image/jpeg", sha, size), item)

    def _lone_jpeg(self, source: Path | SourceItem) -> Registered | None:
        """A JPEG met without its RAW in this run (a watcher saw the RAW first, or only the
        JPEG was named) whose RAW sibling is already an asset: recorded as that asset's
        companion. None: register it as usual."""
        if not self.pairs:
            return None
        uri = source.uri if isinstance(source, SourceItem) else os.path.abspath(source)
        siblings = self._raw_siblings(uri)
        if not siblings:
            return None
        with session_scope(self.url) as session:
            masters = set(
                session.scalars(
                    sa.select(AssetSource.asset_id).where(AssetSource.uri.in_(siblings))
                )
            )
        if len(masters) != 1:  # the RAW is no asset (yet), or several are: not a companion
            return None
        companion = self._read_companion(source)
        if companion is None:
            return None
        master = int(masters.pop())
        with session_scope(self.url) as session:
            if session.get(Asset, master) is None:
                return None  # deleted meanwhile
            record_companion(session, master, companion.file)
            if companion.item is not None:
                companion.item.recorded(session, master)
        return Registered(uri, "companion", master, companion=uri)

    def _raw_siblings(self, uri: str) -> list[str]:
        """URIs a RAW of the same base name as this JPEG would have: for a local file those
        present in its folder (one listing per folder and run; exactly one, else none), for an
        object URL the lower- and upper-case RAW extensions."""
        remote = is_url(uri)
        base, ext = (posixpath if remote else os.path).splitext(uri)
        if ext.lower() not in PAIR_JPEG_EXTENSIONS:
            return []
        if remote:
            lower = [base + e for e in sorted(RAW_EXTENSIONS)]
            return lower + [base + e.upper() for e in sorted(RAW_EXTENSIONS)]
        folder, stem = os.path.split(base)
        names = self._folder_raws.get(folder)
        if names is None:
            try:
                names = [
                    n
                    for n in os.listdir(folder)
                    if os.path.splitext(n)[1].lower() in RAW_EXTENSIONS
                ]
            except OSError:
                names = []
            self._folder_raws[folder] = names  # a race lists a folder twice: harmless
        found = [os.path.join(folder, n) for n in names if os.path.splitext(n)[0] == stem]
        return found if len(found) == 1 else []  # two RAWs of one name: ambiguous, no pair

    def _record(
        self,
        uri: str,
        sha256: str,
        size: int,
        mime: str | None,
        path: Path | str | None,
        after: Callable[[Session, int], None] | None = None,
        companion: _Companion | None = None,
    ) -> Registered:
        reg = self._record_rows(uri, sha256, size, mime, path, after, companion)
        return replace(reg, companion=companion.file.uri) if companion is not None else reg

    def _record_rows(
        self,
        uri: str,
        sha256: str,
        size: int,
        mime: str | None,
        path: Path | str | None,
        after: Callable[[Session, int], None] | None,
        companion: _Companion | None,
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
            if companion is not None:  # the pair's JPEG commits with its RAW
                record_companion(session, ref.id, companion.file)
                if companion.item is not None:
                    companion.item.recorded(session, ref.id)
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


def _hash_stream(handle: object, max_bytes: int | None) -> tuple[str, int, bytes]:
    """SHA-256, size and first bytes of a stream, read in chunks (nothing kept)."""
    digest = hashlib.sha256()
    size, head = 0, b""
    for chunk in iter_chunks(handle):  # type: ignore[arg-type]
        if not head:
            head = chunk[:SNIFF_BYTES]
        size += len(chunk)
        if max_bytes is not None and size > max_bytes:
            raise FileTooLargeError(f"file is over the limit of {max_bytes} bytes")
        digest.update(chunk)
    return digest.hexdigest(), size, head
