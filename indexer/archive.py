"""An open archive: the database, the model and the stores of one ramdex home, opened lazily.

:class:`Archive` is what every caller of ramdex shares, the API (``api.services.Services`` adds
HTTP concerns on top), the command line, ``ramdex demo`` and Python code::

    from indexer.archive import Archive
    from indexer.search import SearchRequest, SearchService

    with Archive(get_settings()) as archive:
        page = SearchService(archive).search(SearchRequest(all=["red"]))

Heavy parts (the model, the FAISS index, the token store) are loaded on first use behind a lock,
so opening an archive is fast and a process that only runs tag search never loads a model.
Failures are indexer exceptions (:class:`~indexer.models.ModelNotAvailableError`,
:class:`TextEncoderNotAvailableError`, :class:`NothingIngestedError`); the API maps them to
HTTP statuses, the CLI to one-line errors.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from indexer.db.session import create_engine_for
from indexer.models import configured_model_id
from indexer.search.cache import TtlCache
from indexer.settings import Settings

if TYPE_CHECKING:
    from types import TracebackType

    from indexer.db.asset_repo import DeletedAsset
    from indexer.faiss_index import VectorIndex
    from indexer.ingest.process import AssetProcessor
    from indexer.retroactive import RetroactiveSearcher
    from indexer.token_store import TokenStore
    from ram_pp.factory import LoadedModel
    from ram_pp.inference import TaggingEngine
    from ram_pp.text_encoder import TextEncoder

log = logging.getLogger(__name__)

T = TypeVar("T")

Timer = Callable[[str], AbstractContextManager[Any]]


class TextEncoderNotAvailableError(LookupError):
    """The text encoder for concept descriptions cannot be loaded here (message says why)."""


class NothingIngestedError(LookupError):
    """The archive has no token embeddings yet: concept search needs an ingest first."""


def _untimed(_: str) -> AbstractContextManager[None]:
    return nullcontext()


class Archive:
    """The shared, lazily opened parts of one archive.

    Args:
        settings: the archive's settings (database, home, model, index).
        timer: ``timer(operation)`` context manager around model work (the API passes its
            metrics' ``time_model``; default: untimed).
    """

    def __init__(self, settings: Settings, timer: Timer | None = None) -> None:
        self.settings = settings
        self.timer: Timer = timer or _untimed
        db = settings.database
        self.engine = create_engine_for(settings.database_url, echo=db.echo, pool_size=db.pool_size)
        self.sessions: sessionmaker[Session] = sessionmaker(
            bind=self.engine, expire_on_commit=False
        )
        self._lock = threading.Lock()
        self._lazy: dict[str, Any] = {}
        self._part_locks: dict[str, threading.Lock] = {}
        self.loads: Counter[str] = Counter()  # builds per part (a part is built once)
        self._pending: tuple[float, int] | None = None

    def __enter__(self) -> Archive:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

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
                    self.loads[name] += 1
        return value

    def model_id(self) -> str:
        """Id of the configured model (``assets.model_name`` of assets it scored).

        Raises:
            ModelNotAvailableError: the configured model is not on this machine.
        """
        return self.lazy("model_id", lambda: configured_model_id(self.settings))

    def loaded_model(self) -> LoadedModel:
        """The configured RAM++ model (loaded once; used for open-set scoring and query images).

        Raises:
            ModelNotAvailableError: the model is not on this machine.
        """

        def build() -> LoadedModel:
            from indexer.models import load_configured_model

            loaded = load_configured_model(self.settings)
            loaded.model.eval()
            return loaded

        return self.lazy("model", build)

    def text_encoder(self, allow_download: bool = True) -> TextEncoder:
        """The text encoder for concept descriptions (settings, else the model config's).

        Args:
            allow_download: when it is not loaded yet, may it come from the hub (the serve
                warm-up says no: a start never waits on the network; a query may).

        Raises:
            TextEncoderNotAvailableError: it cannot be loaded here.
        """

        def build() -> TextEncoder:
            from ram_pp.text_encoder import TextEncoderUnavailable, load_text_encoder

            name = self.settings.model.text_encoder or self.loaded_model().config.text_encoder
            try:
                model = self.settings.model
                return load_text_encoder(
                    name,
                    cache_dir=model.cache_dir,
                    allow_download=allow_download,
                    dtype=model.text_dtype,
                )
            except TextEncoderUnavailable as exc:
                raise TextEncoderNotAvailableError(str(exc)) from exc

        return self.lazy("text_encoder", build)

    def tagging_engine(self) -> TaggingEngine:
        """Runs the image model on query images (similar-image search by an image)."""

        def build() -> TaggingEngine:
            from ram_pp.inference import TaggingEngine

            model = self.settings.model
            return TaggingEngine(
                self.loaded_model(), device=model.device, dtype=model.dtype, decode_workers=0
            )

        return self.lazy("tagging_engine", build)

    def token_store(self) -> TokenStore | None:
        """The model's token store as the workers last committed it (None before any ingest)."""
        from indexer.stores import open_token_store
        from indexer.token_store import TokenStoreError

        store = self._lazy.get("token_store")
        if store is None:
            try:
                store = open_token_store(self.settings, self.model_id(), read_only=True)
            except TokenStoreError:
                return None  # nothing ingested yet
            self._lazy.setdefault("token_store", store)
            return store
        store.refresh()  # cheap: re-reads the manifest only when its generation changed
        return store

    def searcher(self) -> RetroactiveSearcher:
        """Two-stage concept search over the token store, with the FAISS index as stage 1.

        Raises:
            NothingIngestedError: nothing has been ingested yet (no token store).
        """
        store = self.token_store()
        if store is None:
            raise NothingIngestedError("no token embeddings stored yet: ingest first")

        def build() -> RetroactiveSearcher:
            from indexer.retroactive import RetroactiveSearcher
            from ram_pp.openset import OpenSetScorer

            scorer = OpenSetScorer(self.loaded_model().model, dtype=self.settings.index.score_dtype)
            return RetroactiveSearcher.from_settings(
                scorer, store, candidates=_IndexCandidates(self), settings=self.settings
            )

        return self.lazy("searcher", build)

    def cache(self, name: str) -> TtlCache:
        """A named short-lived cache (concept label banks, ranked result lists)."""
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

    # ---------- ingest in this process (the embedded mode) ----------
    def processor(self) -> AssetProcessor:
        """The embedded mode's processor: tags assets in this process with the shared model; after
        each committed batch, scores them for promoted concepts and syncs the FAISS index."""

        def build() -> AssetProcessor:
            from indexer.ingest.process import AssetProcessor

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
        try:
            self.score_new_assets(written)
        except Exception:  # the assets are done; a missing concept score is not fatal
            log.warning("scoring new assets for concepts failed", exc_info=True)
        self.request_index_sync(final=completed)

    def score_new_assets(self, asset_ids: list[int]) -> int:
        """Score freshly ingested assets for every concept already promoted to a tag, so a
        concept keeps covering the archive after its backfill.

        Returns:
            Score rows stored.
        """
        from indexer.concept_scores import score_promoted_concepts

        if not asset_ids:
            return 0
        with self.timer("score_new_assets"):
            return score_promoted_concepts(
                self.settings.database_url,
                self.model_id(),
                self.loaded_model().model,
                self.token_store(),
                asset_ids,
                self.settings.index.score_floor,
            )

    def backfill_concept(
        self,
        concept_id: int,
        job_id: int,
        *,
        generate: bool = False,
        fixed_threshold: bool = False,
    ) -> None:
        """Run :func:`indexer.concept_backfill.backfill_concept` in this process with this
        archive's model, text encoder, token store and calibration (the embedded mode; with a
        broker a model worker runs it: ``indexer.tasks.backfill_concept_task``)."""
        from indexer.concept_backfill import backfill_concept as run

        run(
            self._backfill_context(),
            concept_id,
            job_id,
            generate=generate,
            fixed_threshold=fixed_threshold,
        )

    def backfill_part(self, job_id: int, part: int) -> None:
        """Run one part of a backfill job in this process (a part resumed by the embedded
        server's recovery): :func:`indexer.concept_backfill.run_backfill_part`."""
        from indexer.concept_backfill import run_backfill_part

        run_backfill_part(self._backfill_context(), job_id, part)

    def _backfill_context(self):  # noqa: ANN202 - a BackfillContext, imported lazily
        """This archive's model, text encoder, token store and calibration; parts run here."""
        from indexer.concept_backfill import BackfillContext

        return BackfillContext(
            settings=self.settings,
            model=self.loaded_model().model,
            text_encoder=self.text_encoder,
            token_store=self.token_store,
            calibrate=lambda bank: self.searcher().calibrate(bank)[0].threshold,
            timer=self.timer,
        )

    def background(self, work: Callable[[], None]) -> None:
        """Run blocking work (embedded-mode ingest, concept backfill) off the caller's thread,
        one job at a time, in this process."""
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
        from indexer.ingest.dispatch import request_index_sync

        request_index_sync(
            self.settings, final=final, model_id=self.model_id(), dim=self.embed_dim()
        )

    # ---------- deleting ----------
    def delete_asset(self, asset_id: int) -> bool:
        """Delete an asset from the database (sources and scores with it), then from the token
        store, the vector index, the media store and the result caches.

        Returns:
            False when there was no such asset.
        """
        from indexer.db.asset_repo import delete_asset

        with self.sessions() as session:
            deleted = delete_asset(session, asset_id)
            if deleted is None:
                return False
            session.commit()
        self.forget_asset(deleted)
        return True

    def forget_asset(self, deleted: DeletedAsset) -> None:
        """Remove a deleted asset from the token store, the vector index, the media store and
        the result caches (the database row is already gone). Failures are logged: the database
        is the source of truth and the stores are checked against it."""
        from indexer.stores import open_token_store
        from indexer.token_store import TokenStoreError

        media = self.settings.media_dir.resolve()
        if deleted.token_shard is not None and deleted.model_name:
            try:
                from indexer.frame_keys import FRAMES_PER_ASSET, frame_keys

                # The asset's E and every frame key it may have used (videos, animations).
                keys = [deleted.id, *frame_keys(deleted.id, FRAMES_PER_ASSET).tolist()]
                open_token_store(self.settings, deleted.model_name).delete(keys)
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
        self.cache("rankings").clear()

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


class _IndexCandidates:
    """Stage-1 source for concept search that always asks the current vector index."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, ids = self.archive.vector_index().search(query, k)
        return scores[0], ids[0]
