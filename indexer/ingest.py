"""Ingest: from files and URLs to stored tags, embeddings, tokens and thumbnails.

Two stages, so the expensive one can run anywhere:

1. **Register** (:class:`Registrar`, in the caller: CLI, API or a default-queue task): walk
   folders, download URLs, hash and copy each original into the content-addressed media store,
   and get-or-create the asset by sha256 (race-safe), recording the new source. New assets are
   ``pending``; the same bytes seen again are a *duplicate* (one asset, one more source).
2. **Process** (:class:`AssetProcessor`, in-process or in a Celery model worker): for a list of
   asset ids, decode (threads, ahead of the model), make the thumbnail, run the model in batches,
   append E to the token store, then write every result of the batch in one transaction.
   Processing is idempotent: an asset already scored by this model is skipped, so a
   redelivered task does no harm.
3. **Index** (:func:`sync_vector_index`): the FAISS index is derived from the embeddings in the
   database; one writer at a time syncs it incrementally and saves it atomically (at the end of
   an embedded run, or in a default-queue task when a job completes).

:func:`ingest` ties them together: in the embedded mode (no broker URL) it registers in a
background thread while the processor consumes the ids; with a broker it sends the ids to the
model queue in groups (see ``indexer.tasks.Dispatcher``) and, with ``wait``, follows the job.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
import torch
from PIL import Image

from indexer.db.asset_repo import (
    AssetResult,
    add_source,
    get_or_create_asset_by_sha,
    mark_failed,
    set_status,
    write_asset_results,
)
from indexer.db.assets import Asset, AssetStatus
from indexer.db.job_repo import add_job_progress
from indexer.db.jobs import JobKind
from indexer.db.session import session_scope
from indexer.db.tag_repo import ensure_vocabulary
from indexer.fetch import FetchError, FetchLimits, fetch_url
from indexer.jobs import (
    add_total,
    complete_if_finished,
    end_registration,
    fail_job,
    finish_job,
    set_running,
    start_job,
)
from indexer.media import (
    FileTooLargeError,
    MediaStore,
    StoredOriginal,
    decode_image,
    make_thumbnail,
)
from indexer.settings import Settings, get_settings
from indexer.token_store import TokenStore
from indexer.walk import WalkError, walk_files
from ram_pp.factory import LoadedModel
from ram_pp.inference import TaggingEngine
from ram_pp.preprocess import ImageDecodeError

log = logging.getLogger(__name__)

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
EMBEDDED_SYNC_INTERVAL_S = 60.0


# --------------------------------------------------------------------------------------------
# Outcomes


@dataclass(frozen=True)
class Failure:
    """A source (path or URL) that did not become a done asset, and why."""

    source: str
    reason: str
    asset_id: int | None = None


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


@dataclass(frozen=True)
class Registered:
    """The outcome of registering one source.

    ``state`` is ``queued`` (new asset, to process), ``duplicate`` (already an asset),
    or ``failed`` (``reason`` says why; ``asset_id`` is set when the bytes were readable).
    """

    source: str
    state: str
    asset_id: int | None = None
    reason: str | None = None


@dataclass
class ProcessOutcome:
    """What one :meth:`AssetProcessor.process` call did."""

    done: list[int] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)  # already done by this model, or gone

    def to_dict(self) -> dict[str, Any]:
        return {
            "done": len(self.done),
            "failed": len(self.failed),
            "skipped": len(self.skipped),
        }


def is_url(text: str) -> bool:
    """Whether a source looks like a URL (any scheme) rather than a path."""
    return bool(_URL.match(text))


# --------------------------------------------------------------------------------------------
# Database and stores


_schema_lock = threading.Lock()
_schema_ready: set[str] = set()


def ensure_schema(url: str) -> None:
    """Run the migrations once per process and database (idempotent, concurrency-safe)."""
    if url in _schema_ready:
        return
    with _schema_lock:
        if url in _schema_ready:
            return
        from indexer.migrate import upgrade_database

        upgrade_database(url)
        _schema_ready.add(url)


def model_dir_name(model_id: str) -> str:
    """A folder name for a model id (token store and FAISS index are per model)."""
    return re.sub(r"[^A-Za-z0-9._@-]+", "_", model_id)[:120]


def token_store_path(settings: Settings, model_id: str) -> Path:
    """Where the token store of a model lives: ``<home>/tokens/<model id>``."""
    return settings.tokens_dir / model_dir_name(model_id)


def open_token_store(settings: Settings, model_id: str, tokens: int, dim: int) -> TokenStore:
    """The model's token store, created on first use with the configured format."""
    return TokenStore(
        token_store_path(settings, model_id),
        tokens=tokens,
        dim=dim,
        fmt=settings.index.token_format,
    )


_index_cache: dict[str, tuple[Any, tuple[int, int]]] = {}
_index_lock = threading.Lock()


def _file_stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns


def sync_vector_index(
    settings: Settings, model_id: str, dim: int = 512, min_interval_s: float = 0.0
) -> bool:
    """Bring the model's FAISS index up to date with the database and save it.

    The writer keeps the index in memory between calls (reloaded when another process saved a
    newer file), takes the cross-process :func:`indexer.faiss_index.writer_lock`, syncs
    incrementally from the database watermark and saves atomically only when something changed.

    Args:
        min_interval_s: skip the call when the file was saved less than this long ago (a later
            "final" sync covers the changes).

    Returns:
        Whether the index file was written.
    """
    from indexer.faiss_index import index_path, open_index, writer_lock

    path = index_path(settings.index_dir, model_id)
    if min_interval_s > 0 and path.exists() and time.time() - path.stat().st_mtime < min_interval_s:
        return False
    with _index_lock, writer_lock(path):
        before = _file_stamp(path) if path.exists() else None
        cached = _index_cache.get(str(path))
        with session_scope(settings.database_url) as session:
            if cached is not None and before == cached[1]:
                index = cached[0]
                if index.is_stale(session):
                    index.sync(session)
                    index.save(path)
            else:
                index = open_index(session, model_id, index_dir=settings.index_dir, dim=dim)
        after = _file_stamp(path)
        _index_cache[str(path)] = (index, after)
        return after != before


# --------------------------------------------------------------------------------------------
# Stage 1: registration


class Registrar:
    """Turns sources into assets: hash, store the original, dedup, record the source.

    Args:
        settings: ramdex settings (media folder, limits, URL safety).
        retry_failed: put assets that failed before back to ``pending`` when seen again.
    """

    def __init__(self, settings: Settings, retry_failed: bool = False) -> None:
        self.settings = settings
        self.url = settings.database_url
        self.media = MediaStore(settings.media_dir)
        self.limits = FetchLimits.from_settings(settings)
        self.retry_failed = retry_failed

    def register(self, source: str | Path) -> Registered:
        """Register a path or an ``http(s)`` URL; never raises for bad input (see ``state``).

        Raises:
            sqlalchemy.exc.OperationalError: the database is unreachable (the caller decides).
        """
        text = str(source)
        if is_url(text):
            return self.register_url(text)
        return self.register_path(Path(source))

    def register_path(self, path: Path) -> Registered:
        """Register a local file."""
        uri = os.path.abspath(path)
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
        self, uri: str, sha256: str, size: int, mime: str | None, path: Path | None
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
            if ref.created:
                if reason is not None:
                    mark_failed(session, ref.id, reason)
                    return Registered(uri, "failed", ref.id, reason)
                return Registered(uri, "queued", ref.id)
            row = session.execute(
                sa.select(Asset.status, Asset.error).where(Asset.id == ref.id)
            ).one()
            if row.status == AssetStatus.FAILED.value:
                if self.retry_failed and reason is None:
                    set_status(session, [ref.id], AssetStatus.PENDING)
                    return Registered(uri, "queued", ref.id)
                return Registered(uri, "failed", ref.id, row.error or "failed earlier")
            return Registered(uri, "duplicate", ref.id)


# --------------------------------------------------------------------------------------------
# Stage 2: processing


@dataclass
class _Row:
    id: int
    sha256: str
    status: str
    model_name: str | None
    storage_path: str | None
    mime: str | None
    attempts: int = 0


@dataclass
class _Prepared:
    row: _Row
    pixels: np.ndarray | None = None  # (S, S, 3) uint8, resized for the model
    width: int = 0
    height: int = 0
    mime: str | None = None
    thumbnail_path: str | None = None
    error: str | None = None


_MIME_BY_FORMAT = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
    "HEIF": "image/heic",
    "AVIF": "image/avif",
}


# Processing runs an asset may start: after that many ended without a commit (each crashed or was
# killed), it is marked failed instead of being redelivered forever.
MAX_ATTEMPTS = 3
POISON_REASON = (
    "processing this file crashed or was interrupted {n} times (a file that crashes the decoder?); "
    "not retried: check the file, then re-ingest it with --retry-failed"
)


class AssetProcessor:
    """Decodes, tags and stores assets by id; one per process (it owns the model).

    Args:
        settings: ramdex settings.
        loaded: a model already loaded (tests, benchmarks); default: the configured model.
        model_id: the id recorded on assets; required with ``loaded``.
        on_committed: called after each committed batch with the ids written and whether the
            batch completed its job (workers use it to schedule the FAISS index sync);
            exceptions there are logged, not raised: the index is derived from the database.
        decode_workers: decoding threads (default: ``settings.ingest.decode_workers``, 0 = one
            per core).
    """

    def __init__(
        self,
        settings: Settings,
        loaded: LoadedModel | None = None,
        model_id: str | None = None,
        on_committed: Callable[[list[int], bool], None] | None = None,
        decode_workers: int | None = None,
    ) -> None:
        from indexer.models import configured_model_id, load_configured_model

        self.settings = settings
        self.url = settings.database_url
        if loaded is None:
            loaded = load_configured_model(settings)
            model_id = model_id or configured_model_id(settings)
        elif model_id is None:
            raise ValueError("pass model_id together with a loaded model")
        self.model_id = model_id
        self.loaded = loaded
        self.engine = TaggingEngine(
            loaded,
            device=settings.model.device,
            dtype=settings.model.dtype,
            batch_size=settings.model.batch_size,
            decode_workers=0,  # decoding is done here, with thumbnails, in our own pool
        )
        self.batch_size = settings.model.batch_size
        self.embed_dim = loaded.config.head.embed_dim
        self.media = MediaStore(settings.media_dir)
        self.on_committed = on_committed
        workers = settings.ingest.decode_workers if decode_workers is None else decode_workers
        self.decode_workers = workers or (os.cpu_count() or 1)
        image_size = loaded.config.vision.image_size
        thumb = settings.ingest.thumbnail_size
        # Fast-decode: JPEG DCT scaling, never below what the model and the thumbnail need.
        self.draft_size = max(image_size, thumb) if settings.model.fast_decode else None
        # Pillow refuses more than 2 x MAX_IMAGE_PIXELS on its own; follow a raised limit.
        if settings.ingest.max_pixels > 2 * (Image.MAX_IMAGE_PIXELS or 0):
            Image.MAX_IMAGE_PIXELS = settings.ingest.max_pixels // 2 + 1
        self._tag_ids: np.ndarray | None = None
        self._tokens: TokenStore | None = None
        self._lock = threading.Lock()
        self.pid = os.getpid()
        #: Called with the batch's ids after the token store write, before the database commit
        #: (fault-injection point for tests of crashes between the two).
        self.before_commit: Callable[[np.ndarray], None] | None = None
        #: Called with an asset's sha256 before it is decoded (fault-injection point for tests
        #: of files that crash the process).
        self.before_prepare: Callable[[str], None] | None = None

    # -- resources ----------------------------------------------------------------------------

    def tag_ids(self) -> np.ndarray:
        """Tag ids of the model's vocabulary in logit order (created on first use)."""
        if self._tag_ids is None:
            ensure_schema(self.url)
            with session_scope(self.url) as session:
                self._tag_ids = ensure_vocabulary(session, self.model_id, self.loaded.vocabulary)
        return self._tag_ids

    def token_store(self) -> TokenStore:
        """The model's token store (opened on first use)."""
        if self._tokens is None:
            cfg = self.loaded.config
            self._tokens = open_token_store(
                self.settings, self.model_id, cfg.vision.num_tokens, cfg.head.embed_dim
            )
        return self._tokens

    # -- processing ---------------------------------------------------------------------------

    def _count_attempt(self, ids: Sequence[int]) -> None:
        """Record that processing of these assets starts (committed before they are decoded, so
        a crash still counts)."""
        if not ids:
            return
        with session_scope(self.url) as session:
            session.execute(
                sa.update(Asset).where(Asset.id.in_(list(ids))).values(attempts=Asset.attempts + 1)
            )

    def _load_rows(self, ids: Sequence[int]) -> dict[int, _Row]:
        with session_scope(self.url) as session:
            rows = session.execute(
                sa.select(
                    Asset.id,
                    Asset.sha256,
                    Asset.status,
                    Asset.model_name,
                    Asset.storage_path,
                    Asset.mime,
                    Asset.attempts,
                ).where(Asset.id.in_(list(ids)))
            ).all()
            # Claim new work so `ramdex jobs` and the API show it as in progress. Assets being
            # re-scored (reindex) stay `done`: they remain searchable meanwhile.
            set_status(session, list(ids), AssetStatus.PROCESSING, only_from=[AssetStatus.PENDING])
        return {
            int(r.id): _Row(
                int(r.id), r.sha256, r.status, r.model_name, r.storage_path, r.mime, r.attempts
            )
            for r in rows
        }

    def _wanted(self, row: _Row, force: bool) -> bool:
        if force:
            return True
        if row.status == AssetStatus.DONE.value:
            return row.model_name != self.model_id  # done by another model: re-score
        return row.status != AssetStatus.FAILED.value

    def model_input(self, image: Image.Image) -> np.ndarray:
        """Step 1 of the reference pre-processing, up to the uint8 pixels: RGB, S x S bilinear.

        Runs in the decode threads; the float normalisation is done per batch in
        :meth:`normalize` (one tensor operation instead of many small ones that would fight
        the model's threads for the cores). Together they equal
        :class:`ram_pp.preprocess.Preprocessor` bit for bit (tested).
        """
        size = self.engine.preprocess.image_size
        resized = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(resized, dtype=np.uint8)

    def normalize(self, arrays: Sequence[np.ndarray]) -> torch.Tensor:
        """(B, 3, S, S) float32 model input from :meth:`model_input` arrays."""
        prep = self.engine.preprocess
        batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255.0)
        return batch.sub_(prep.mean.unsqueeze(0)).div_(prep.std.unsqueeze(0))

    def _prepare(self, row: _Row) -> _Prepared:
        """Decode, thumbnail and pre-process one asset (runs in a decode thread)."""
        if self.before_prepare is not None:
            self.before_prepare(row.sha256)
        path = Path(row.storage_path) if row.storage_path else None
        if path is None or not path.is_file():
            path = self.media.find_original(row.sha256)
        if path is None:
            return _Prepared(row, error="the original file is missing from the media store")
        try:
            decoded = decode_image(
                path,
                max_pixels=self.settings.ingest.max_pixels,
                apply_exif_orientation=self.settings.model.apply_exif_orientation,
                draft_size=self.draft_size,
            )
            thumb = make_thumbnail(decoded.display_rgb(), self.settings.ingest.thumbnail_size)
            thumb_path = self.media.put_thumbnail(row.sha256, thumb)
            pixels = self.model_input(decoded.model_rgb())
        except ImageDecodeError as exc:
            return _Prepared(row, error=exc.reason)
        return _Prepared(
            row,
            pixels=pixels,
            width=decoded.width,
            height=decoded.height,
            mime=_MIME_BY_FORMAT.get(decoded.format, row.mime),
            thumbnail_path=str(thumb_path),
        )

    def _infer(self, batch: list[_Prepared]) -> list[Any]:
        """Run the model; on GPU out-of-memory, retry the batch in halves before giving up."""
        pixels = self.normalize([p.pixels for p in batch])  # type: ignore[misc]
        sources = [str(p.row.id) for p in batch]
        sizes = [(p.width, p.height) for p in batch]
        try:
            return self.engine.results_for_batch(pixels, sources, sizes=sizes)
        except torch.cuda.OutOfMemoryError:
            if len(batch) == 1:
                raise  # transient for the task: it retries later with backoff
            torch.cuda.empty_cache()
            half = len(batch) // 2
            return self._infer(batch[:half]) + self._infer(batch[half:])

    def _commit(
        self,
        batch: list[_Prepared],
        failures: list[_Prepared],
        job_id: int | None,
        outcome: ProcessOutcome,
        complete_job: bool = True,
    ) -> None:
        """Model + token store + one database transaction for a batch and its failures."""
        results = self._infer(batch) if batch else []
        ids = np.array([p.row.id for p in batch], dtype=np.int64)
        if batch:
            # Tokens first: if we die before the commit below, the asset is not done and a
            # redelivery replaces these records (the store keys by asset id).
            self.token_store().add(ids, np.stack([r.tokens for r in results]))
        if self.before_commit is not None:
            self.before_commit(ids)
        tag_ids = self.tag_ids()
        records = [
            AssetResult(
                asset_id=p.row.id,
                scores=r.probabilities,
                embedding=r.embedding,
                width=p.width,
                height=p.height,
                mime=p.mime,
                thumbnail_path=p.thumbnail_path,
                token_shard=0,  # presence marker: the token store locates E by asset id
            )
            for p, r in zip(batch, results, strict=True)
        ]
        with session_scope(self.url) as session:
            written = write_asset_results(
                session,
                records,
                model_name=self.model_id,
                tag_ids=tag_ids,
                score_floor=self.settings.index.score_floor,
            )
            by_reason: dict[str, list[int]] = {}
            for p in failures:
                by_reason.setdefault(p.error or "unknown error", []).append(p.row.id)
            for reason, failed_ids in by_reason.items():
                mark_failed(session, failed_ids, reason)
            completed = False
            if job_id is not None:
                add_job_progress(session, job_id, done=len(written.written), failed=len(failures))
                completed = complete_job and complete_if_finished(session, job_id)
        outcome.done.extend(written.written)
        outcome.skipped.extend(written.missing)
        outcome.failed.extend(Failure(str(p.row.id), p.error or "", p.row.id) for p in failures)
        if self.on_committed is not None and (written.written or completed):
            try:
                self.on_committed(list(written.written), completed)
            except Exception:  # the index is derived data; it is resynced from the database
                log.exception("after-commit hook failed for %d assets", len(written.written))

    def process(
        self,
        asset_ids: Iterable[int],
        *,
        job_id: int | None = None,
        force: bool = False,
        on_progress: Callable[[int], None] | None = None,
        complete_job: bool = True,
    ) -> ProcessOutcome:
        """Tag the given assets (an iterable may stream ids while earlier ones are processed).

        Assets already done by this model, failed ones (unless ``force``) and deleted ones are
        skipped; they still count in ``on_progress``. With ``complete_job`` (workers), the batch
        that processes a job's last item marks the job done; in-process runs finish their job
        themselves.

        Raises:
            sqlalchemy.exc.OperationalError and other transient errors: nothing of the current
                batch was committed; calling again with the same ids is safe.
        """
        outcome = ProcessOutcome()
        window = max(self.batch_size * 2, 8)
        lookahead = self.batch_size * 2
        pool = ThreadPoolExecutor(self.decode_workers, thread_name_prefix="ramdex-decode")
        pending: deque[Future[_Prepared]] = deque()
        batch: list[_Prepared] = []
        failures: list[_Prepared] = []

        def flush() -> None:
            nonlocal batch, failures
            count = len(batch) + len(failures)
            if count:
                self._commit(batch, failures, job_id, outcome, complete_job)
                batch, failures = [], []
                if on_progress:
                    on_progress(count)

        def take(item: _Prepared) -> None:
            (failures if item.error else batch).append(item)
            if len(batch) >= self.batch_size or len(failures) >= self.batch_size:
                flush()

        try:
            for ids in _windows(asset_ids, window):
                rows = self._load_rows(ids)
                fresh: list[_Row] = []
                for asset_id in ids:
                    row = rows.get(asset_id)
                    if row is None or not self._wanted(row, force):
                        # Done by this model already (a redelivered task: counted when it was
                        # committed) or failed earlier. A deleted asset still ends its job.
                        outcome.skipped.append(asset_id)
                        if row is None and job_id is not None:
                            self._count_gone(job_id, complete_job)
                        if on_progress:
                            on_progress(1)
                        continue
                    if row.status == AssetStatus.DONE.value or row.attempts == 0:
                        fresh.append(row)  # first run (or a re-score of a done asset)
                    elif row.attempts >= MAX_ATTEMPTS:
                        take(_Prepared(row, error=POISON_REASON.format(n=row.attempts)))
                    else:
                        # An earlier run on this asset died before committing it (a worker
                        # killed, or a file that crashes the decoder): process it alone, in this
                        # thread, so a hostile file can only take itself down.
                        while pending:
                            take(pending.popleft().result())
                        flush()
                        self._count_attempt([row.id])
                        take(self._prepare(row))
                        flush()
                self._count_attempt([r.id for r in fresh if r.status != AssetStatus.DONE.value])
                for row in fresh:
                    pending.append(pool.submit(self._prepare, row))
                    while len(pending) > lookahead:
                        take(pending.popleft().result())
            while pending:
                take(pending.popleft().result())
            flush()
        finally:
            for future in pending:
                future.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
        return outcome

    def _count_gone(self, job_id: int, complete_job: bool) -> None:
        with session_scope(self.url) as session:
            add_job_progress(session, job_id, failed=1)
            if complete_job:
                complete_if_finished(session, job_id)


def _windows(ids: Iterable[int], size: int) -> Iterator[list[int]]:
    """Consecutive distinct ids in lists of at most ``size``."""
    seen: set[int] = set()
    window: list[int] = []
    for raw in ids:
        asset_id = int(raw)
        if asset_id in seen:
            continue
        seen.add(asset_id)
        window.append(asset_id)
        if len(window) >= size:
            yield window
            window = []
    if window:
        yield window


# --------------------------------------------------------------------------------------------
# One processor per process and configuration


_processors: dict[tuple, AssetProcessor] = {}
_processors_lock = threading.Lock()


def _processor_key(settings: Settings) -> tuple:
    m = settings.model
    return (
        os.getpid(),
        settings.database_url,
        str(settings.home),
        m.name,
        str(m.checkpoint),
        m.device,
        m.dtype,
        m.batch_size,
        m.fast_decode,
    )


def shared_processor(settings: Settings) -> AssetProcessor:
    """The process-wide :class:`AssetProcessor` for these settings, built (model loaded) once.

    Safe after ``fork()``: the key includes the process id, so a child never reuses a parent's
    model (and CUDA is first touched in the process that runs the model).
    """
    key = _processor_key(settings)
    with _processors_lock:
        proc = _processors.get(key)
        if proc is None:
            proc = AssetProcessor(settings)
            _processors[key] = proc
        return proc


def forget_processors() -> None:
    """Drop cached processors (tests; a changed configuration)."""
    with _processors_lock:
        _processors.clear()


# --------------------------------------------------------------------------------------------
# The ingest entry point


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
