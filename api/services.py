"""What the API opens once and shares between requests: database, metrics, broker, index, model.

The app's lifespan builds one :class:`Services` and keeps it on ``app.state.services``. Heavy
parts (the model, the FAISS index, the token store) are loaded on first use behind a lock, so the
API starts fast and a process that only serves tag search never loads a model.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from api.metrics import ArchiveStats, Metrics
from api.problems import ProblemError
from indexer.db.assets import Asset, AssetStatus
from indexer.db.base import utcnow
from indexer.db.jobs import Job
from indexer.db.session import create_engine_for
from indexer.models import ModelNotAvailableError, configured_model_id
from indexer.settings import Settings

if TYPE_CHECKING:
    from api.search import TtlCache
    from indexer.db.asset_repo import DeletedAsset
    from indexer.faiss_index import VectorIndex
    from indexer.ingest import AssetProcessor
    from indexer.retroactive import RetroactiveSearcher
    from indexer.token_store import TokenStore
    from ram_pp.factory import LoadedModel
    from ram_pp.inference import TaggingEngine
    from ram_pp.text_encoder import TextEncoder

log = logging.getLogger(__name__)

T = TypeVar("T")

_INGEST_WINDOW = timedelta(minutes=5)


@dataclass
class Check:
    """The outcome of one readiness check."""

    ok: bool
    detail: str


class Services:
    """Shared resources of one app instance.

    Args:
        settings: the settings the app runs with.
        metrics: the app's metrics (a new set when None).
    """

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        db = settings.database
        self.engine = create_engine_for(settings.database_url, echo=db.echo, pool_size=db.pool_size)
        self.sessions: sessionmaker[Session] = sessionmaker(
            bind=self.engine, expire_on_commit=False
        )
        self.metrics = metrics or Metrics()
        self.metrics.watch_archive(self.archive_stats)
        self._lock = threading.Lock()
        self._lazy: dict[str, Any] = {}
        self._part_locks: dict[str, threading.Lock] = {}
        self._pending: tuple[float, int] | None = None
        self._stats_lock = threading.Lock()
        self._stats: tuple[float, ArchiveStats] | None = None

    # ---------- lazily opened parts ----------
    def lazy(self, name: str, build: Callable[[], T]) -> T:
        """The part called ``name``, built once by ``build()`` (thread-safe; one lock per part,
        so builds may use other parts and a slow build blocks only its own users)."""
        value = self._lazy.get(name)
        if value is None:
            with self._lock:
                part_lock = self._part_locks.setdefault(name, threading.Lock())
            with part_lock:
                value = self._lazy.get(name)
                if value is None:
                    value = build()
                    self._lazy[name] = value
        return value

    def model_id(self) -> str:
        """Id of the configured model (``assets.model_name`` of assets it scored).

        Raises:
            ProblemError: 503 when the configured model is not on this machine.
        """

        def build() -> str:
            try:
                return configured_model_id(self.settings)
            except ModelNotAvailableError as exc:
                raise ProblemError(503, str(exc), kind="model-unavailable") from exc

        return self.lazy("model_id", build)

    def loaded_model(self) -> LoadedModel:
        """The configured RAM++ model (loaded once; used for open-set scoring and query images).

        Raises:
            ProblemError: 503 when the model is not on this machine.
        """

        def build() -> LoadedModel:
            from indexer.models import load_configured_model

            try:
                loaded = load_configured_model(self.settings)
            except ModelNotAvailableError as exc:
                raise ProblemError(503, str(exc), kind="model-unavailable") from exc
            loaded.model.eval()
            return loaded

        return self.lazy("model", build)

    def text_encoder(self) -> TextEncoder:
        """The text encoder for concept descriptions (settings, else the model config's).

        Raises:
            ProblemError: 503 when it cannot be loaded here.
        """

        def build() -> TextEncoder:
            from ram_pp.text_encoder import TextEncoderUnavailable, load_text_encoder

            name = self.settings.model.text_encoder or self.loaded_model().config.text_encoder
            try:
                return load_text_encoder(name, cache_dir=self.settings.model.cache_dir)
            except TextEncoderUnavailable as exc:
                raise ProblemError(503, str(exc), kind="text-encoder-unavailable") from exc

        return self.lazy("text_encoder", build)

    def tagging_engine(self) -> TaggingEngine:
        """Runs the image model on query images (similar-image search by upload)."""

        def build() -> TaggingEngine:
            from ram_pp.inference import TaggingEngine

            model = self.settings.model
            return TaggingEngine(
                self.loaded_model(), device=model.device, dtype=model.dtype, decode_workers=0
            )

        return self.lazy("tagging_engine", build)

    def token_store(self) -> TokenStore | None:
        """The model's token store as the workers last committed it (None before any ingest)."""
        from indexer.ingest import token_store_path
        from indexer.token_store import TokenStore, TokenStoreError

        store = self._lazy.get("token_store")
        if store is None:
            try:
                store = TokenStore(token_store_path(self.settings, self.model_id()), read_only=True)
            except TokenStoreError:
                return None  # nothing ingested yet
            self._lazy.setdefault("token_store", store)
            return store
        store.refresh()  # cheap: re-reads the manifest only when its generation changed
        return store

    def searcher(self) -> RetroactiveSearcher:
        """Two-stage concept search over the token store, with the FAISS index as stage 1.

        Raises:
            ProblemError: 503 when nothing has been ingested yet (no token store).
        """
        store = self.token_store()
        if store is None:
            raise ProblemError(503, "no token embeddings stored yet: ingest first", kind="empty")

        def build() -> RetroactiveSearcher:
            from indexer.retroactive import RetroactiveSearcher
            from ram_pp.openset import OpenSetScorer

            scorer = OpenSetScorer(self.loaded_model().model)
            return RetroactiveSearcher.from_settings(
                scorer, store, candidates=_IndexCandidates(self), settings=self.settings
            )

        return self.lazy("searcher", build)

    def cache(self, name: str) -> TtlCache:
        """A named short-lived cache (concept label banks, ranked result lists)."""
        from api.search import TtlCache

        return self.lazy(f"cache:{name}", TtlCache)

    def pending_reindex(self, session: Session, model_id: str) -> int:
        """Assets scored by another model (refreshed at most every 10 s: a count is not free)."""
        from indexer.db.asset_repo import count_assets_scored_by_other_model

        now = time.monotonic()
        cached = self._pending
        if cached is not None and now - cached[0] < 10.0:
            return cached[1]
        count = count_assets_scored_by_other_model(session, model_id)
        self._pending = (now, count)
        return count

    def processor(self) -> AssetProcessor:
        """The embedded mode's processor: tags assets in this process with the shared model; after
        each committed batch, scores them for promoted concepts and syncs the FAISS index."""

        def build() -> AssetProcessor:
            from indexer.ingest import AssetProcessor

            return AssetProcessor(
                self.settings,
                loaded=self.loaded_model(),
                model_id=self.model_id(),
                on_committed=self._after_batch,
            )

        return self.lazy("processor", build)

    def _after_batch(self, written: list[int], completed: bool) -> None:
        """After each committed batch: score the new assets for promoted concepts, then sync the
        FAISS index (at once when the job completed)."""
        from api.concept_backfill import score_new_assets

        try:
            score_new_assets(self, written)
        except Exception:  # the assets are done; a missing concept score is not fatal
            log.warning("scoring new assets for concepts failed", exc_info=True)
        self.request_index_sync(final=completed)

    def background(self, work: Callable[[], None]) -> None:
        """Run blocking work (embedded-mode ingest, concept backfill) off the event loop, one job
        at a time, in this process."""
        self._executor().submit(work)

    def wait_background(self, timeout_s: float | None = None) -> None:
        """Block until the background work submitted so far has finished (tests, shutdown)."""
        self._executor().submit(lambda: None).result(timeout=timeout_s)

    def _executor(self) -> ThreadPoolExecutor:
        return self.lazy(
            "executor", lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="ramdex-bg")
        )

    # ---------- vector index (FAISS over the image embeddings c) ----------
    def vector_index(self) -> VectorIndex:
        """The model's FAISS index as last saved by a sync, memory-mapped read-only and
        re-mapped when a newer file appears; an empty index before the first sync."""
        from indexer.faiss_index import VectorIndex, index_path

        index = self._lazy.get("vector_index")
        if index is not None:
            index.reload_if_changed()  # a stat; re-maps only when the writer saved a new file
            return index
        path = index_path(self.settings.index_dir, self.model_id())
        if not path.exists():
            cfg = self.settings.index
            return VectorIndex(
                self.embed_dim(),
                model_name=self.model_id(),
                exact_max_size=cfg.exact_max_size,
                nlist=cfg.ivf_nlist,
                pq_m=cfg.pq_m,
            )
        return self.lazy("vector_index", lambda: VectorIndex.load(path, mmap=True))

    def embed_dim(self) -> int:
        """Width of the image embeddings (512 for RAM++)."""
        return self.loaded_model().config.head.embed_dim

    def request_index_sync(self, final: bool = True) -> None:
        """Have the FAISS index brought up to date with the database: a task on the default
        queue with a broker, right here in the embedded mode."""
        from indexer.tasks import request_index_sync

        request_index_sync(
            self.settings, final=final, model_id=self.model_id(), dim=self.embed_dim()
        )

    def forget_asset(self, deleted: DeletedAsset) -> None:
        """Remove a deleted asset from the token store, the vector index, the media store and
        the result caches (the database row is already gone). Failures are logged: the database
        is the source of truth and the stores are checked against it."""
        from indexer.ingest import token_store_path
        from indexer.token_store import TokenStore, TokenStoreError

        media = self.settings.media_dir.resolve()
        if deleted.token_shard is not None and deleted.model_name:
            try:
                TokenStore(token_store_path(self.settings, deleted.model_name)).delete([deleted.id])
            except (TokenStoreError, OSError):
                log.warning("asset %s: token store delete failed", deleted.id, exc_info=True)
        try:
            self.request_index_sync(final=True)
        except Exception:
            log.warning("asset %s: vector index sync failed", deleted.id, exc_info=True)
        for raw in (deleted.thumbnail_path, deleted.storage_path):
            if not raw:
                continue
            path = Path(raw).resolve()
            if path.is_relative_to(media):  # never delete anything outside the media store
                path.unlink(missing_ok=True)
        for name in ("rankings",):
            self.cache(name).clear()

    def forget(self, name: str) -> None:
        """Drop a lazily built part so the next use builds it again."""
        with self._lock:
            self._lazy.pop(name, None)

    def close(self) -> None:
        """Release what was opened (background work still queued is dropped)."""
        executor = self._lazy.pop("executor", None)
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        for value in list(self._lazy.values()):
            close = getattr(value, "close", None)
            if callable(close):
                try:
                    close()
                except Exception:  # shutting down: log and go on
                    log.warning("error closing %r", value, exc_info=True)
        self._lazy.clear()
        self.engine.dispose()

    # ---------- health ----------
    def check_database(self) -> Check:
        """Whether the database answers and its schema is at the newest migration."""
        from alembic.runtime.migration import MigrationContext

        from indexer.migrate import head_revision

        try:
            with self.engine.connect() as conn:
                current = MigrationContext.configure(conn).get_current_revision()
        except Exception as exc:
            return Check(False, _one_line(exc))
        head = self.lazy("schema_head", head_revision)
        if current != head:
            return Check(False, f"schema at {current or 'nothing'}, expected {head}: migrate first")
        return Check(True, f"{self.engine.dialect.name}, schema {current}")

    def check_broker(self) -> Check:
        """Whether the Celery broker accepts a connection (the embedded mode has none)."""
        url = self.settings.broker.url
        if not url:
            return Check(True, "embedded (in-process tasks)")
        from kombu import Connection

        try:
            with Connection(url, connect_timeout=2) as conn:
                conn.ensure_connection(max_retries=1, timeout=2)
            return Check(True, url.split(":", 1)[0])
        except Exception as exc:
            return Check(False, _one_line(exc))

    def queue_depth(self) -> dict[str, int]:
        """Messages waiting in the model and default queues (empty in the embedded mode)."""
        broker = self.settings.broker
        if not broker.url:
            return {}
        from kombu import Connection

        depths: dict[str, int] = {}
        with Connection(broker.url, connect_timeout=2) as conn:
            channel = conn.default_channel
            for queue in (broker.model_queue, broker.default_queue):
                try:
                    depths[queue] = channel.queue_declare(queue=queue, passive=True).message_count
                except Exception:  # the queue does not exist yet: nothing waits in it
                    depths[queue] = 0
        return depths

    def check_index(self) -> Check:
        """Whether similarity and concept search have their FAISS index: the saved file maps,
        or nothing has been indexed yet. A lagging index is not unready (syncs catch up)."""
        from indexer.db.embedding_repo import embedding_watermark
        from indexer.faiss_index import index_path

        try:
            model_id = self.model_id()
            if index_path(self.settings.index_dir, model_id).exists():
                index = self.vector_index()
                return Check(True, f"{index.kind}, {index.count} vectors")
            with self.sessions() as session:
                stored = embedding_watermark(session, model_id).count
        except ProblemError as exc:
            return Check(False, exc.detail)
        except Exception as exc:
            return Check(False, _one_line(exc))
        if stored:
            return Check(
                False, f"no index file for {stored} stored embeddings: run `ramdex index sync`"
            )
        return Check(True, "empty: nothing indexed yet")

    def readiness(self) -> dict[str, Check]:
        """Every readiness check by name."""
        return {
            "database": self.check_database(),
            "broker": self.check_broker(),
            "index": self.check_index(),
        }

    # ---------- metrics ----------
    def archive_stats(self) -> ArchiveStats:
        """Assets by status, jobs by state, queue depth and recent ingest count, at most
        ``api.metrics_cache_s`` old (however many scrapers ask, the counts run once per period)."""
        with self._stats_lock:
            now = time.monotonic()
            if self._stats is None or now - self._stats[0] >= self.settings.api.metrics_cache_s:
                self._stats = (now, self.read_archive_stats())
            return self._stats[1]

    def read_archive_stats(self) -> ArchiveStats:
        """Count assets by status, jobs by state, queue depth and recent ingests now."""
        stats = ArchiveStats(window_s=_INGEST_WINDOW.total_seconds())
        with self.sessions() as session:
            stats.assets_by_status = dict(
                session.execute(
                    sa.select(Asset.status, sa.func.count()).group_by(Asset.status)
                ).all()
            )
            stats.jobs_by_state = dict(
                session.execute(sa.select(Job.status, sa.func.count()).group_by(Job.status)).all()
            )
            stats.ingested_last_window = session.scalar(
                sa.select(sa.func.count())
                .select_from(Asset)
                .where(
                    Asset.status == AssetStatus.DONE.value,
                    Asset.updated_at >= utcnow() - _INGEST_WINDOW,
                )
            )
        try:
            stats.queue_depth = self.queue_depth()
        except Exception:
            log.warning("metrics: broker queue depth unavailable", exc_info=True)
        return stats


class _IndexCandidates:
    """Stage-1 source for concept search that always asks the current vector index."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, ids = self.services.vector_index().search(query, k)
        return scores[0], ids[0]


def _one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text.splitlines()[0][:300]
