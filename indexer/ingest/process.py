"""Ingest stage 2, processing: for a list of asset ids, decode (threads, ahead of the model),
make the thumbnail, run the model in batches, append E to the token store, then write every
result of the batch in one transaction.

Processing is idempotent (an asset already scored by this model is skipped, so a redelivered task
does no harm) and guarded against poison files (see ``MAX_ATTEMPTS``). Work is claimed under a
lease (:mod:`indexer.ingest.lease`): an asset another live process is working on is left to it,
and the lease is renewed while the batch runs, so a process that dies gives its work back within
``ingest.lease_s``. Jobs are credited through their ledger when the batch commits, whoever ran
it. One processor per process and configuration owns the model (:func:`shared_processor`).
"""

from __future__ import annotations

import logging
import os
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
from sqlalchemy.orm import Session

from indexer.db.asset_leases import claim_assets, expire_leases_of, release_assets
from indexer.db.asset_repo import AssetResult, mark_failed, write_asset_results
from indexer.db.assets import Asset, AssetStatus
from indexer.db.companion_repo import list_companions
from indexer.db.frame_repo import FrameResult, MediaFacts, frame_keys_of, write_frames
from indexer.db.keyword_repo import record_embedded_keywords
from indexer.db.session import session_scope
from indexer.db.tag_repo import ensure_vocabulary
from indexer.db.video_parts import PartPlan, replace_parts
from indexer.frame_keys import asset_of, frame_keys, index_of
from indexer.frames import DecodedMedia, FrameOptions, decode_media
from indexer.frames.video import probe_video
from indexer.ingest.lease import LeaseKeeper, is_dead_here, keeper_for, process_owner
from indexer.ingest.register import Failure
from indexer.ingest.video_parts import plan_parts, send_video_parts
from indexer.jobs import settle
from indexer.keywords import ingest_keywords
from indexer.media import (
    ANIMATABLE_MIME,
    RAW_MIME,
    VIDEO_MIME,
    MediaStore,
    decode_image,
    make_thumbnail,
)
from indexer.settings import Settings
from indexer.sources.originals import is_object_uri, read_original
from indexer.stores import ensure_schema, open_token_store
from indexer.token_store import TokenStore
from ram_pp.factory import LoadedModel
from ram_pp.inference import TaggingEngine
from ram_pp.preprocess import ImageDecodeError

log = logging.getLogger(__name__)


@dataclass
class ProcessOutcome:
    """What one :meth:`AssetProcessor.process` call did."""

    done: list[int] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)  # already done by this model, or gone
    split: list[int] = field(default_factory=list)  # long videos sent out as parts

    def to_dict(self) -> dict[str, Any]:
        return {
            "done": len(self.done),
            "failed": len(self.failed),
            "skipped": len(self.skipped),
            "split": len(self.split),
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
    first_run: bool = False  # its first processing run starts now (counted when claimed)
    elsewhere: bool = False  # another live process holds its lease


@dataclass
class _Prepared:
    row: _Row
    pixels: np.ndarray | None = None  # (S, S, 3) uint8, resized for the model
    width: int = 0
    height: int = 0
    mime: str | None = None
    thumbnail_path: str | None = None
    error: str | None = None
    path: str | None = None  # the original read (for its embedded keywords)
    # A video or animation: every kept frame's model input and timestamp (``pixels`` is the
    # poster's), and the file's media facts; a RAW has facts and one frame, like an image.
    frames: list[tuple[np.ndarray, float]] = field(default_factory=list)
    poster: int = 0  # which frame the asset's own c and E come from
    facts: MediaFacts | None = None
    # A long video to split into parts for other workers (broker mode): nothing decoded here.
    split: list[PartPlan] | None = None

    def inputs(self) -> list[np.ndarray]:
        """The model inputs of this asset: its frames, or its one picture."""
        return [f[0] for f in self.frames] if self.frames else [self.pixels]  # type: ignore[list-item]


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


DEBUG_PAUSE_ENV = "RAMDEX_DEBUG_PAUSE_BEFORE_COMMIT_S"  # tests only: sleep before each commit
DEBUG_CRASH_ENV = "RAMDEX_DEBUG_CRASH_ON_SHA256"  # tests only: this file "crashes the decoder"

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
            compile=settings.model.compile,  # GPU workers: torch.compile, channels-last
            channels_last=settings.model.channels_last,
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
        self.frame_options = FrameOptions.from_settings(
            settings.media,
            model_size=image_size,
            thumbnail_size=thumb,
            max_pixels=settings.ingest.max_pixels,
            apply_exif_orientation=settings.model.apply_exif_orientation,
        )
        self._tag_ids: np.ndarray | None = None
        self._tokens: TokenStore | None = None
        self._lock = threading.Lock()
        self.pid = os.getpid()
        self.owner = process_owner()
        #: Called with the batch's ids after the token store write, before the database commit
        #: (fault-injection point for tests of crashes between the two).
        self.before_commit: Callable[[np.ndarray], None] | None = None
        #: Called with an asset's sha256 before it is decoded (fault-injection point for tests
        #: of files that crash the process).
        self.before_prepare: Callable[[str], None] | None = None
        #: Whether long videos are split into parts other workers share (Celery workers;
        #: an embedded run is one process, which gains nothing from it).
        self.split_videos = False
        self._debug_hooks_from_env()

    def _debug_hooks_from_env(self) -> None:
        """Fault injection for the tests of real processes (workers, ``ramdex ingest``), from
        the environment: never set in production."""
        pause = os.environ.get(DEBUG_PAUSE_ENV)
        if pause:
            seconds = float(pause)
            self.before_commit = lambda ids: time.sleep(seconds)
        poison = os.environ.get(DEBUG_CRASH_ENV)
        if poison:
            self.before_prepare = lambda sha256: os._exit(70) if sha256 == poison else None

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

    def _load_rows(self, ids: Sequence[int], force: bool, run: _Run) -> dict[int, _Row]:
        """Load and claim a window of assets, in one transaction.

        Unfinished assets are claimed under this process's lease (those another live process
        holds are left out: it finishes them). The first run of new work is counted in
        ``attempts`` here; assets already finished (a redelivered message, or a job that met
        them) are credited to any job still waiting for them.
        """
        lease_s = self.settings.ingest.lease_s
        with session_scope(self.url) as session:
            claimed = claim_assets(session, ids, self.owner, lease_s)
            rows = session.execute(
                sa.select(
                    Asset.id,
                    Asset.sha256,
                    Asset.status,
                    Asset.model_name,
                    Asset.storage_path,
                    Asset.mime,
                    Asset.attempts,
                    Asset.lease_owner,
                ).where(Asset.id.in_(list(ids)))
            ).all()
            # Held by a process of this machine that no longer runs (a pool process killed
            # mid-batch, whose message came straight back): take them over now.
            dead = {
                r.lease_owner
                for r in rows
                if int(r.id) not in claimed
                and r.status == AssetStatus.PROCESSING.value
                and r.lease_owner
                and is_dead_here(r.lease_owner)
            }
            if dead:
                expire_leases_of(session, sorted(dead))
                claimed |= claim_assets(session, ids, self.owner, lease_s)
            loaded = {
                int(r.id): _Row(
                    int(r.id), r.sha256, r.status, r.model_name, r.storage_path, r.mime, r.attempts
                )
                for r in rows
            }
            for i, r in loaded.items():
                r.elsewhere = _unfinished(r) and i not in claimed
            first = [
                i
                for i, r in loaded.items()
                if i in claimed and _is_first_run(r) and self._wanted(r, force)
            ]
            self._count_attempt(session, first)
            for i in first:
                loaded[i].attempts += 1
                loaded[i].first_run = True
            finished = [
                r
                for r in loaded.values()
                if not _unfinished(r) and not r.elsewhere and not self._wanted(r, force)
            ]
            run.completed.update(
                settle(
                    session,
                    done=[r.id for r in finished if r.status == AssetStatus.DONE.value],
                    failed=[r.id for r in finished if r.status == AssetStatus.FAILED.value],
                )
            )
        run.hold(claimed)
        run.counted.update(first)
        return loaded

    def _wanted(self, row: _Row, force: bool) -> bool:
        if row.elsewhere:
            return False  # another live process is processing it
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
        """Decode, thumbnail and pre-process one asset (runs in a decode thread).

        Any error a decoder did not foresee fails this asset with its reason instead of
        ending the whole run: one hostile file must not take the batch (or the worker) down.
        """
        if self.before_prepare is not None:
            self.before_prepare(row.sha256)
        try:
            return self._prepare_unguarded(row)
        except Exception as exc:  # noqa: BLE001 - reported on the asset, logged with its trace
            log.exception("asset %s: decoding raised", row.id)
            return _Prepared(row, error=f"could not decode the file: {type(exc).__name__}: {exc}")

    def _prepare_unguarded(self, row: _Row) -> _Prepared:
        original, problem = self.original_of(row.sha256, row.storage_path)
        if original is None:
            return _Prepared(row, error=problem)
        path = original if isinstance(original, Path) else None
        if self.split_videos and row.mime in VIDEO_MIME:
            split = self._split_plan(row, original)
            if split is not None:
                return split
        if row.mime and (
            row.mime.startswith(("video/", "image/x-")) or row.mime in ANIMATABLE_MIME
        ):
            try:
                media = decode_media(original, row.mime, self.frame_options, str(row.id))
            except ImageDecodeError as exc:
                fallback = self._camera_jpeg(row) if row.mime in RAW_MIME else None
                if fallback is None:
                    return _Prepared(row, error=exc.reason)
                # LibRaw opened the RAW at registration but cannot decode it: the camera's
                # JPEG of the pair shows the same picture (the asset stays the RAW).
                log.info(
                    "asset %s: %s; tagged from its camera JPEG %s", row.id, exc.reason, fallback
                )
                still = self._prepare_still(row, fallback, path)
                if not still.error:
                    still.mime, still.facts = row.mime, MediaFacts("raw")
                return still
            if media is not None:
                return self._prepared_media(row, path, media)
        return self._prepare_still(row, original, path)

    def _camera_jpeg(self, row: _Row) -> Path | None:
        """The JPEG companion of a RAW+JPEG pair, if it is still on disk."""
        with session_scope(self.url) as session:
            uris = [c.uri for c in list_companions(session, row.id)]
        return next((Path(u) for u in uris if not is_object_uri(u) and Path(u).is_file()), None)

    def _prepare_still(self, row: _Row, original: Path | bytes, path: Path | None) -> _Prepared:
        """A still image: decoded, thumbnailed, resized for the model."""
        try:
            decoded = decode_image(
                original,
                max_pixels=self.settings.ingest.max_pixels,
                apply_exif_orientation=self.settings.model.apply_exif_orientation,
                draft_size=self.draft_size,
            )
            thumb_path = self.put_thumbnail(row.sha256, decoded.display_rgb())
            pixels = self.model_input(decoded.model_rgb())
        except ImageDecodeError as exc:
            return _Prepared(row, error=exc.reason)
        return _Prepared(
            row,
            path=str(path) if path is not None else None,
            pixels=pixels,
            width=decoded.width,
            height=decoded.height,
            mime=_MIME_BY_FORMAT.get(decoded.format, row.mime),
            thumbnail_path=str(thumb_path),
        )

    def original_of(
        self, sha256: str, storage_path: str | None
    ) -> tuple[Path | bytes | None, str | None]:
        """The asset's original: its path (as registered, or in the media store), or its
        bytes read back from object storage; else None and what is wrong."""
        path = Path(storage_path) if storage_path else None
        if path is None or not path.is_file():
            path = self.media.find_original(sha256)
        if path is not None:
            return path, None
        if is_object_uri(storage_path):
            # A source's original left on object storage (no copy_originals): read it back.
            return read_original(self.settings, str(storage_path), sha256)
        return None, "the original file is missing from the media store"

    def _split_plan(self, row: _Row, original: Path | bytes) -> _Prepared | None:
        """A video long enough to share among workers, as parts to send (None: decode here)."""
        try:
            info = probe_video(original, str(row.id))
        except ImageDecodeError as exc:
            return _Prepared(row, error=exc.reason)
        plans = plan_parts(info.duration_s, self.settings.media)
        if plans is None:
            return None
        return _Prepared(
            row,
            width=info.width,
            height=info.height,
            mime=row.mime,
            facts=MediaFacts("video", info.duration_s, info.codec),
            split=plans,
        )

    def put_thumbnail(self, sha256: str, image: Image.Image) -> str:
        """Store the asset's thumbnail made from ``image``; returns its path."""
        thumb = make_thumbnail(image, self.settings.ingest.thumbnail_size)
        return str(self.media.put_thumbnail(sha256, thumb))

    def score_images(self, inputs: list[np.ndarray], sources: list[str]) -> list[Any]:
        """The model over :meth:`model_input` arrays, in chunks of the batch size."""
        out: list[Any] = []
        for start in range(0, len(inputs), self.batch_size):
            end = start + self.batch_size
            out.extend(self._run(inputs[start:end], sources[start:end]))
        return out

    def _split(self, item: _Prepared, run: _Run) -> None:
        """Record a long video's parts and send them to the model queue; the asset stays
        unfinished, without a lease, until its last part finishes it
        (:mod:`indexer.ingest.video_parts`)."""
        assert item.split is not None and item.facts is not None
        asset_id = item.row.id
        with session_scope(self.url) as session:
            replace_parts(session, asset_id, item.split)
            session.execute(
                sa.update(Asset)
                .where(Asset.id == asset_id, Asset.lease_owner == self.owner)
                .values(
                    width=item.width,
                    height=item.height,
                    kind=item.facts.kind,
                    duration_s=item.facts.duration_s,
                    codec=item.facts.codec,
                    lease_owner=None,
                    lease_until=None,
                )
            )
        run.drop([asset_id])
        log.info(
            "asset %s: a %.0f s video, split into %d parts",
            asset_id,
            item.facts.duration_s or 0.0,
            len(item.split),
        )
        try:
            send_video_parts(self.settings, asset_id, list(range(len(item.split))))
        except Exception as exc:  # broker away: the reconciler sends the pending parts later
            log.warning("asset %s: could not send its parts yet (%s)", asset_id, _why(exc))

    def _prepared_media(self, row: _Row, path: Path | None, media: DecodedMedia) -> _Prepared:
        """A decoded video, animation or RAW as model inputs, thumbnail and media facts."""
        try:
            thumb = make_thumbnail(media.poster_image(), self.settings.ingest.thumbnail_size)
        except (OSError, ValueError) as exc:
            return _Prepared(row, error=f"thumbnail failed: {exc}")
        thumb_path = self.media.put_thumbnail(row.sha256, thumb)
        frames = [(self.model_input(f.image), f.timestamp_s) for f in media.frames]
        poster = media.poster_index()
        for note in media.notes:
            log.info("asset %s: %s", row.id, note)
        many = media.kind != "raw"
        return _Prepared(
            row,
            path=str(path) if path is not None and media.kind == "raw" else None,
            pixels=frames[poster][0],
            width=media.width,
            height=media.height,
            mime=row.mime,
            thumbnail_path=str(thumb_path),
            frames=frames if many else [],
            poster=poster if many else 0,
            facts=MediaFacts(str(media.kind), media.duration_s, media.codec),
        )

    def _infer(self, batch: list[_Prepared]) -> list[Any]:
        """Run the model over every input of the batch (a video's frames are just more
        images), in chunks of the batch size; one result list per asset."""
        inputs = [(i, x) for i, p in enumerate(batch) for x in p.inputs()]
        flat = self.score_images([x for _, x in inputs], [str(batch[i].row.id) for i, _ in inputs])
        grouped: list[list[Any]] = [[] for _ in batch]
        for (i, _), result in zip(inputs, flat, strict=True):
            grouped[i].append(result)
        return grouped

    def _run(self, arrays: list[np.ndarray], sources: list[str]) -> list[Any]:
        """The model on one chunk; on GPU out-of-memory, retried in halves before giving up."""
        try:
            return self.engine.results_for_batch(self.normalize(arrays), sources)
        except torch.cuda.OutOfMemoryError:
            if len(arrays) == 1:
                raise  # transient for the task: it retries later with backoff
            torch.cuda.empty_cache()
            half = len(arrays) // 2
            return self._run(arrays[:half], sources[:half]) + self._run(
                arrays[half:], sources[half:]
            )

    def _commit(
        self,
        batch: list[_Prepared],
        failures: list[_Prepared],
        outcome: ProcessOutcome,
        run: _Run,
    ) -> None:
        """Model + token store + one database transaction for a batch and its failures."""
        grouped = self._infer(batch) if batch else []
        # An asset's own result: its picture's, or for a video its poster frame's c and E
        # with every tag's maximum over the frames (so tag search works unchanged).
        results = [_asset_result(p, g) for p, g in zip(batch, grouped, strict=True)]
        ids = np.array([p.row.id for p in batch], dtype=np.int64)
        if batch:
            # Tokens first: if we die before the commit below, the asset is not done and a
            # redelivery replaces these records (the store keys by asset id, frames by
            # their frame keys).
            keys = [ids]
            tokens = [np.stack([r.tokens for r in results])]
            for p, g in zip(batch, grouped, strict=True):
                if p.frames:
                    keys.append(frame_keys(p.row.id, len(g)))
                    tokens.append(np.stack([r.tokens for r in g]))
            self.token_store().add(np.concatenate(keys), np.concatenate(tokens))
            self._drop_stale_frames(batch)
        if self.before_commit is not None:
            self.before_commit(ids)
        tag_ids = self.tag_ids()
        # Read outside the transaction; bounded and never raises (a hostile file's metadata
        # cannot fail its asset or stop the worker).
        keywords = (
            ingest_keywords([p.path for p in batch if p.path])
            if batch and self.settings.ingest.read_keywords
            else {}
        )
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
            done = set(written.written)
            frame_rows = {
                p.row.id: [
                    FrameResult(i, t, r.probabilities, r.embedding)
                    for i, ((_, t), r) in enumerate(zip(p.frames, g, strict=True))
                ]
                for p, g in zip(batch, grouped, strict=True)
                if p.frames and p.row.id in done
            }
            facts = {p.row.id: p.facts for p in batch if p.facts is not None and p.row.id in done}
            write_frames(
                session,
                frame_rows,
                facts,  # type: ignore[arg-type]
                tag_ids=tag_ids,
                score_floor=self.settings.index.score_floor,
            )
            for p in batch:
                if p.row.id in done and p.path and keywords.get(p.path):
                    record_embedded_keywords(session, p.row.id, keywords[p.path], self.model_id)
            by_reason: dict[str, list[int]] = {}
            for p in failures:
                by_reason.setdefault(p.error or "unknown error", []).append(p.row.id)
            for reason, failed_ids in by_reason.items():
                mark_failed(session, failed_ids, reason)
            completed = settle(session, done=written.written, failed=[p.row.id for p in failures])
        run.drop([p.row.id for p in batch] + [p.row.id for p in failures])
        outcome.done.extend(written.written)
        outcome.skipped.extend(written.missing)
        outcome.failed.extend(Failure(str(p.row.id), p.error or "", p.row.id) for p in failures)
        completed = sorted(set(completed) | run.completed)
        run.completed.clear()
        if self.on_committed is not None and (written.written or completed):
            try:
                self.on_committed(list(written.written), bool(completed))
            except Exception as exc:  # the index is derived data; it is resynced from the database
                log.warning(
                    "after-commit hook failed for %d assets (%s)", len(written.written), _why(exc)
                )

    def _drop_stale_frames(self, batch: list[_Prepared]) -> None:
        """Token records of frames an earlier run kept and this one did not (fewer frames
        now, or the slices of an earlier split): removed so concept search cannot meet them."""
        counts = {p.row.id: len(p.frames) for p in batch}
        with session_scope(self.url) as session:
            stored = frame_keys_of(session, list(counts))
        kept = np.array([counts[int(a)] for a in asset_of(stored)], dtype=np.int64)
        stale = stored[index_of(stored) >= kept]
        if stale.size:
            self.token_store().delete(stale)

    def process(
        self,
        asset_ids: Iterable[int],
        *,
        force: bool = False,
        on_progress: Callable[[int], None] | None = None,
    ) -> ProcessOutcome:
        """Tag the given assets (an iterable may stream ids while earlier ones are processed).

        Assets already done by this model, failed ones (unless ``force``), deleted ones and ones
        another live process is working on are skipped; they still count in ``on_progress``.
        Jobs waiting for an asset are credited in the transaction that ends it.

        Raises:
            sqlalchemy.exc.OperationalError and other transient errors: nothing of the current
                batch was committed; its claimed assets were given back (``pending``) when the
                database allowed it, else their lease runs out. Calling again is safe.
        """
        outcome = ProcessOutcome()
        run = _Run(keeper_for(self.settings))
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
                self._commit(batch, failures, outcome, run)
                batch, failures = [], []
                if on_progress:
                    on_progress(count)

        def take(item: _Prepared) -> None:
            if item.split is not None and not item.error:
                self._split(item, run)
                outcome.split.append(item.row.id)
                if on_progress:
                    on_progress(1)
                return
            (failures if item.error else batch).append(item)
            if len(batch) >= self.batch_size or len(failures) >= self.batch_size:
                flush()

        try:
            for ids in _windows(asset_ids, window):
                rows = self._load_rows(ids, force, run)
                fresh: list[_Row] = []
                for asset_id in ids:
                    row = rows.get(asset_id)
                    if row is None or not self._wanted(row, force):
                        # Done by this model already (a redelivered task), failed earlier,
                        # deleted, or in another live process's hands: nothing to do here.
                        outcome.skipped.append(asset_id)
                        if on_progress:
                            on_progress(1)
                        continue
                    if row.status == AssetStatus.DONE.value or row.first_run:
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
                        run.counted.add(row.id)
                        take(self._prepare(row))
                        flush()
                for row in fresh:
                    pending.append(pool.submit(self._prepare, row))
                    while len(pending) > lookahead:
                        take(pending.popleft().result())
            while pending:
                take(pending.popleft().result())
            flush()
            if run.completed:  # jobs completed by crediting assets that were already finished
                self._report_completed(run)
        except BaseException:
            run.give_back(self.url, self.owner)
            raise
        finally:
            for future in pending:
                future.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
            run.close()
        return outcome

    def _report_completed(self, run: _Run) -> None:
        run.completed.clear()
        if self.on_committed is not None:
            try:
                self.on_committed([], True)
            except Exception as exc:  # derived data only (the index sync)
                log.warning("after-commit hook failed (%s)", _why(exc))


class _Run:
    """What one :meth:`AssetProcessor.process` call holds: leases renewed by the keeper,
    attempts it counted, jobs it completed and has not reported yet."""

    def __init__(self, keeper: LeaseKeeper) -> None:
        self.keeper = keeper
        self.held: set[int] = set()
        self.counted: set[int] = set()
        self.completed: set[int] = set()

    def hold(self, ids: Iterable[int]) -> None:
        new = [i for i in ids if i not in self.held]
        self.held.update(new)
        self.keeper.hold_assets(new)

    def drop(self, ids: Iterable[int]) -> None:
        gone = [i for i in ids if i in self.held]
        self.held.difference_update(gone)
        self.counted.difference_update(gone)
        self.keeper.drop_assets(gone)

    def give_back(self, url: str, owner: str) -> None:
        """After an error: release the unfinished claimed assets, their attempt taken back (a
        clean stop is no crash), so a retry batches them again. Best effort: when the database
        is the problem, their leases run out instead."""
        if not self.held:
            return
        try:
            with session_scope(url) as session:
                release_assets(
                    session, sorted(self.held), owner, dispatched=True, uncount=self.counted
                )
        except Exception as exc:
            log.warning("could not release %d claimed assets (%s)", len(self.held), _why(exc))

    def close(self) -> None:
        self.drop(list(self.held))


def _asset_result(prepared: _Prepared, results: list[Any]) -> Any:
    """The asset's own model result from its frames' (see :meth:`AssetProcessor._commit`)."""
    if len(results) == 1:
        return results[0]
    poster = results[prepared.poster]
    best = np.max(np.stack([r.probabilities for r in results]), axis=0)
    return _Result(best, poster.embedding, poster.tokens)


@dataclass(frozen=True)
class _Result:
    probabilities: np.ndarray
    embedding: np.ndarray
    tokens: np.ndarray


def _is_first_run(row: _Row) -> bool:
    """New work no run has started on yet (re-scores of done assets are not counted)."""
    return row.status != AssetStatus.DONE.value and row.attempts == 0


def _why(exc: BaseException) -> str:
    """An error in one line: these warnings reach people (``ramdex ingest``), not tracebacks."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:300]}" if lines else type(exc).__name__


def _unfinished(row: _Row) -> bool:
    return row.status in (AssetStatus.PENDING.value, AssetStatus.PROCESSING.value)


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
