"""Ingest stage 2, processing: for a list of asset ids, decode (threads, ahead of the model),
make the thumbnail, run the model in batches, append E to the token store, then write every
result of the batch in one transaction.

Processing is idempotent (an asset already scored by this model is skipped, so a redelivered task
does no harm) and guarded against poison files (see ``MAX_ATTEMPTS``). One processor per process
and configuration owns the model (:func:`shared_processor`).
"""

from __future__ import annotations

import logging
import os
import threading
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
from sqlalchemy.orm import Session

from indexer.db.asset_repo import AssetResult, mark_failed, set_status, write_asset_results
from indexer.db.assets import Asset, AssetStatus
from indexer.db.job_repo import add_job_progress
from indexer.db.session import session_scope
from indexer.db.tag_repo import ensure_vocabulary
from indexer.jobs import complete_if_finished
from indexer.media import MediaStore, decode_image, make_thumbnail
from indexer.settings import Settings
from indexer.stores import ensure_schema, open_token_store
from indexer.token_store import TokenStore
from ram_pp.factory import LoadedModel
from ram_pp.inference import TaggingEngine
from ram_pp.preprocess import ImageDecodeError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Failure:
    """A source (path or URL) that did not become a done asset, and why."""

    source: str
    reason: str
    asset_id: int | None = None


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

    @staticmethod
    def _count_attempt(session: Session, ids: Sequence[int]) -> None:
        """Record that processing of these assets starts (committed before they are decoded, so
        a crash still counts)."""
        if ids:
            session.execute(
                sa.update(Asset).where(Asset.id.in_(list(ids))).values(attempts=Asset.attempts + 1)
            )

    def _load_rows(self, ids: Sequence[int], force: bool) -> dict[int, _Row]:
        """Load and claim assets; the first run of new work is counted in the same transaction."""
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
            loaded = {
                int(r.id): _Row(
                    int(r.id), r.sha256, r.status, r.model_name, r.storage_path, r.mime, r.attempts
                )
                for r in rows
            }
            self._count_attempt(
                session,
                [i for i, r in loaded.items() if _is_first_run(r) and self._wanted(r, force)],
            )
        return loaded

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
                rows = self._load_rows(ids, force)
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
                    if row.status == AssetStatus.DONE.value or _is_first_run(row):
                        fresh.append(row)  # first run (counted by _load_rows) or a re-score
                    elif row.attempts >= MAX_ATTEMPTS:
                        take(_Prepared(row, error=POISON_REASON.format(n=row.attempts)))
                    else:
                        # An earlier run on this asset died before committing it (a worker
                        # killed, or a file that crashes the decoder): process it alone, in this
                        # thread, so a hostile file can only take itself down.
                        while pending:
                            take(pending.popleft().result())
                        flush()
                        with session_scope(self.url) as session:
                            self._count_attempt(session, [row.id])
                        take(self._prepare(row))
                        flush()
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


def _is_first_run(row: _Row) -> bool:
    """New work no run has started on yet (re-scores of done assets are not counted)."""
    return row.status != AssetStatus.DONE.value and row.attempts == 0


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
