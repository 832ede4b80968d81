"""``ramdex reindex``: re-score assets the configured model has not scored yet.

Changing the configured model never leaves assets silently unsearchable by it:

- :func:`pending_counts` says how many assets wait (search shows it next to its results);
- :func:`reindex` re-runs them through the model, in id order, as an ordinary job.

Assets being re-scored stay ``done`` with their old scores until the new ones are committed,
so search keeps working during a long reindex. The run is resumable by construction: the work
list is "assets whose ``model_name`` differs from the configured model", which shrinks with every
committed batch, so running the command again after an interruption continues where it stopped.
It also picks up *stuck* assets: ``pending`` or ``processing`` ones untouched for a while (their
task was lost, for example a crash between registration and dispatch).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from indexer.db.asset_repo import assets_scored_by_other_model
from indexer.db.assets import Asset, AssetStatus
from indexer.db.jobs import JobKind
from indexer.db.session import session_scope
from indexer.ingest import AssetProcessor, ensure_schema, shared_processor, sync_vector_index
from indexer.jobs import (
    add_total,
    end_registration,
    fail_job,
    finish_job,
    set_running,
    start_job,
    wait_for_job,
)
from indexer.settings import Settings, get_settings

DEFAULT_STUCK_AFTER_S = 15 * 60
PAGE = 1000


@dataclass(frozen=True)
class PendingCounts:
    """Assets the configured model has not (yet) scored.

    Attributes:
        model_id: the configured model.
        other_model: ``done`` assets scored by another model (reindex will re-score them).
        pending: ``pending`` or ``processing`` assets (ingest in progress, or stuck).
    """

    model_id: str
    other_model: int
    pending: int

    @property
    def total(self) -> int:
        return self.other_model + self.pending

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model_id,
            "other_model": self.other_model,
            "pending": self.pending,
            "total": self.total,
        }


@dataclass
class ReindexSummary:
    """What a reindex run did."""

    job_id: int | None
    model_id: str
    queued: int = 0
    done: int = 0
    failed: int = 0
    elapsed_s: float = 0.0
    failures: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "model": self.model_id,
            "queued": self.queued,
            "done": self.done,
            "failed": self.failed,
            "elapsed_s": round(self.elapsed_s, 3),
            "failures": self.failures,
        }


def pending_counts(settings: Settings | None = None, model_id: str | None = None) -> PendingCounts:
    """How many assets the configured model has not scored: for search to report.

    One indexed query (``ix_assets_model_name_status_updated_at``, ``ix_assets_status``).

    Raises:
        indexer.models.ModelNotAvailableError: no ``model_id`` given and the configured model is
            not on this machine.
    """
    settings = settings or get_settings()
    if model_id is None:
        from indexer.models import configured_model_id

        model_id = configured_model_id(settings)
    with session_scope(settings.database_url) as session:
        other = session.execute(
            sa.select(sa.func.count()).where(
                Asset.status == AssetStatus.DONE.value, Asset.model_name != model_id
            )
        ).scalar_one()
        waiting = session.execute(
            sa.select(sa.func.count()).where(
                Asset.status.in_([AssetStatus.PENDING.value, AssetStatus.PROCESSING.value])
            )
        ).scalar_one()
    return PendingCounts(model_id, int(other), int(waiting))


def _stuck_ids(settings: Settings, older_than_s: float, after_id: int, limit: int) -> list[int]:
    cutoff = datetime.now(UTC) - timedelta(seconds=older_than_s)
    with session_scope(settings.database_url) as session:
        rows = session.execute(
            sa.select(Asset.id)
            .where(
                Asset.status.in_([AssetStatus.PENDING.value, AssetStatus.PROCESSING.value]),
                Asset.updated_at < cutoff,
                Asset.id > after_id,
            )
            .order_by(Asset.id)
            .limit(limit)
        ).scalars()
        return [int(i) for i in rows]


def iter_reindex_ids(
    settings: Settings,
    model_id: str,
    *,
    stuck_after_s: float | None = DEFAULT_STUCK_AFTER_S,
    limit: int | None = None,
) -> Iterator[int]:
    """Ids to re-score, ascending: other-model assets, then stuck ones (keyset pages)."""
    emitted = 0
    last = 0
    while True:
        with session_scope(settings.database_url) as session:
            page = assets_scored_by_other_model(session, model_id, after_id=last, limit=PAGE)
        if not page:
            break
        for asset_id in page:
            if limit is not None and emitted >= limit:
                return
            emitted += 1
            yield asset_id
        last = page[-1]
    if stuck_after_s is None:
        return
    last = 0
    while True:
        page = _stuck_ids(settings, stuck_after_s, last, PAGE)
        if not page:
            return
        for asset_id in page:
            if limit is not None and emitted >= limit:
                return
            emitted += 1
            yield asset_id
        last = page[-1]


def reindex(
    settings: Settings | None = None,
    *,
    limit: int | None = None,
    stuck_after_s: float | None = DEFAULT_STUCK_AFTER_S,
    wait: bool = True,
    progress: bool | None = None,
    processor: AssetProcessor | None = None,
) -> ReindexSummary:
    """Re-score every asset the configured model has not scored; resumable.

    Args:
        settings: default :func:`get_settings`.
        limit: at most this many assets (a trial run).
        stuck_after_s: also re-queue ``pending``/``processing`` assets untouched this long
            (None: do not).
        wait: with a broker, wait for the workers (the embedded mode always waits).
        progress: progress bar; None: when stderr is a terminal.
        processor: a ready processor (embedded mode).

    Raises:
        indexer.models.ModelNotAvailableError: the configured model is not on this machine.
    """
    from indexer.ingest import _bar
    from indexer.models import configured_model_id

    settings = settings or get_settings()
    url = settings.database_url
    ensure_schema(url)
    started = time.monotonic()
    embedded = not settings.broker.url
    if embedded:
        processor = processor or shared_processor(settings)
        model_id = processor.model_id
    else:
        model_id = configured_model_id(settings)
    counts = pending_counts(settings, model_id)
    expected = counts.other_model + (counts.pending if stuck_after_s is not None else 0)
    if limit is not None:
        expected = min(expected, limit)
    job_id = start_job(url, JobKind.REINDEX, params={"model": model_id, "limit": limit})
    summary = ReindexSummary(job_id, model_id)
    bar = _bar(expected, progress, "reindex")
    ids = iter_reindex_ids(settings, model_id, stuck_after_s=stuck_after_s, limit=limit)
    try:
        if embedded:
            queued: list[int] = []

            def counted() -> Iterator[int]:
                for asset_id in ids:
                    queued.append(asset_id)
                    if len(queued) % 64 == 0:
                        add_total(url, job_id, 64)
                    yield asset_id
                add_total(url, job_id, len(queued) % 64)

            assert processor is not None
            set_running(url, job_id)
            with processor._lock:
                processor.process(
                    counted(), job_id=job_id, on_progress=bar.update, complete_job=False
                )
            summary.queued = len(queued)
            finish_job(url, job_id)
            if queued:
                sync_vector_index(settings, model_id, processor.embed_dim)
        else:
            from indexer.tasks import Dispatcher, submit

            def send(group: list[int]) -> None:
                add_total(url, job_id, len(group))
                submit(group, job_id=job_id, settings=settings)

            with Dispatcher(
                send, settings.broker.batch_size, settings.broker.batch_timeout_ms
            ) as d:
                for asset_id in ids:
                    d.add(asset_id)
                    summary.queued += 1
            if end_registration(url, job_id) == "done" and summary.queued:
                from indexer.tasks import request_index_sync

                request_index_sync(settings, final=True, model_id=model_id)
            if wait and summary.queued:

                def on_update(view: Any) -> None:
                    bar.n = view.processed
                    bar.refresh()

                wait_for_job(url, job_id, on_update=on_update)
    except BaseException as exc:
        try:
            fail_job(url, job_id, f"{type(exc).__name__}: {exc}")
        except Exception:
            pass
        raise
    finally:
        bar.close()
    from indexer.jobs import get_job_view

    final = get_job_view(url, job_id)
    if final is not None:
        summary.done, summary.failed = final.done, final.failed
    summary.elapsed_s = time.monotonic() - started
    return summary
