"""What the API opens once and shares between requests: an :class:`~indexer.archive.Archive`
(database, model, stores, index), plus the HTTP concerns on top of it: metrics, readiness checks
and the mapping of indexer errors to problem documents.

The app's lifespan builds one :class:`Services` and keeps it on ``app.state.services``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from api.metrics import ArchiveStats, Metrics
from api.problems import ProblemError, problem_response
from api.warmup import WarmUp
from indexer.archive import Archive, NothingIngestedError, TextEncoderNotAvailableError
from indexer.db.assets import Asset, AssetStatus
from indexer.db.base import utcnow
from indexer.db.collection_scope import CollectionForbiddenError, CollectionRequiredError
from indexer.db.jobs import Job
from indexer.models import ModelNotAvailableError
from indexer.search.errors import (
    AssetNotFoundError,
    BadImageError,
    CursorOutOfRangeError,
    InvalidCursorError,
    InvalidQueryError,
    NotIndexedError,
    UnknownTagError,
)
from indexer.settings import Settings
from indexer.token_store_s3 import S3StoreUnavailable

log = logging.getLogger(__name__)

_INGEST_WINDOW = timedelta(minutes=5)


@dataclass
class Check:
    """The outcome of one readiness check."""

    ok: bool
    detail: str


class Services(Archive):
    """The app's archive plus its metrics and readiness checks.

    Args:
        settings: the settings the app runs with.
        metrics: the app's metrics (a new set when None); model work is timed into them.
    """

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.metrics = metrics or Metrics()
        super().__init__(settings, timer=self.metrics.time_model)
        self._stats_lock = threading.Lock()
        self._stats: tuple[float, ArchiveStats] | None = None
        self.metrics.watch_archive(self.archive_stats)
        self.warmup: WarmUp | None = None  # the app's lifespan starts one (api.warm_start)

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
        except ModelNotAvailableError as exc:
            return Check(False, str(exc))
        except Exception as exc:
            return Check(False, _one_line(exc))
        if stored:
            return Check(
                False, f"no index file for {stored} stored embeddings: run `ramdex index sync`"
            )
        return Check(True, "empty: nothing indexed yet")

    def check_warmup(self) -> Check:
        """Whether the warm start has loaded what the first concept query needs."""
        if self.warmup is None:
            return Check(True, "off: parts load on first use (api.warm_start)")
        return Check(*self.warmup.status())

    def readiness(self) -> dict[str, Check]:
        """Every readiness check by name."""
        return {
            "database": self.check_database(),
            "broker": self.check_broker(),
            "index": self.check_index(),
            "warmup": self.check_warmup(),
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


def _one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text.splitlines()[0][:300]


# ---------- indexer errors as problem documents ----------
# The first matching class decides (subclasses before their bases).
_PROBLEMS: tuple[tuple[type[Exception], int, str], ...] = (
    (ModelNotAvailableError, 503, "model-unavailable"),
    (TextEncoderNotAvailableError, 503, "text-encoder-unavailable"),
    (NothingIngestedError, 503, "empty"),
    # The object store holding the token embeddings is away (unreachable, not answering,
    # credentials, bucket): the archive is fine, the service unavailable until it is back.
    (S3StoreUnavailable, 503, "token-store-unavailable"),
    (UnknownTagError, 422, "unknown-tag"),
    (AssetNotFoundError, 404, "not-found"),
    (NotIndexedError, 409, "not-indexed"),
    # Out-of-range values are input checked at the edge (422); a cursor that is not ours or
    # continues another query is a bad request (400), as it always was.
    (CursorOutOfRangeError, 422, "invalid-cursor"),
    (InvalidCursorError, 400, "invalid-cursor"),
    (BadImageError, 422, "bad-image"),
    (InvalidQueryError, 422, "validation"),
    (CollectionForbiddenError, 403, "forbidden"),
    (CollectionRequiredError, 422, "collection-required"),
)


def as_problem(exc: Exception) -> ProblemError | None:
    """The problem document an indexer error answers with (None: not an indexer error)."""
    for cls, status, kind in _PROBLEMS:
        if isinstance(exc, cls):
            extra = (
                {"unknown": [str(n) for n in exc.names]} if isinstance(exc, UnknownTagError) else {}
            )
            return ProblemError(status, str(exc), kind=kind, **extra)
    return None


async def _indexer_error(request: Request, exc: Exception) -> JSONResponse:
    problem = as_problem(exc)
    if problem is None:  # not registered for anything else; kept for safety
        raise exc
    return problem_response(
        request, problem.status, problem.detail, kind=problem.kind, **problem.extra
    )


def install_indexer_error_handlers(app: FastAPI) -> None:
    """Answer the indexer's errors (model missing, unknown tags, bad cursors...) with their
    problem documents wherever a route lets them through."""
    for cls, _status, _kind in _PROBLEMS:
        app.add_exception_handler(cls, _indexer_error)
