"""What the API opens once and shares between requests: database, metrics, broker, index, model.

The app's lifespan builds one :class:`Services` and keeps it on ``app.state.services``. Heavy
parts (the model, the FAISS index, the token store) are loaded on first use behind a lock, so the
API starts fast and a process that only serves tag search never loads a model.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

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

    # ---------- lazily opened parts ----------
    def lazy(self, name: str, build: Callable[[], T]) -> T:
        """The part called ``name``, built once by ``build()`` (thread-safe)."""
        value = self._lazy.get(name)
        if value is None:
            with self._lock:
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

    def forget(self, name: str) -> None:
        """Drop a lazily built part so the next use builds it again."""
        with self._lock:
            self._lazy.pop(name, None)

    def close(self) -> None:
        """Release what was opened."""
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

    def readiness(self) -> dict[str, Check]:
        """Every readiness check by name."""
        return {"database": self.check_database(), "broker": self.check_broker()}

    # ---------- metrics ----------
    def archive_stats(self) -> ArchiveStats:
        """Assets by status, jobs by state, queue depth and recent ingest count."""
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
