"""``ramdex reindex``: re-score assets the configured model has not scored yet.

Changing the configured model never leaves assets silently unsearchable by it:

- :func:`pending_counts` says how many assets wait (search shows it next to its results);
- :func:`reindex` re-runs them through the model, in id order, as an ordinary job.

Assets being re-scored stay ``done`` with their old scores until the new ones are committed,
so search keeps working during a long reindex. The run is resumable by construction: the work
list is "assets whose ``model_name`` differs from the configured model", which shrinks with every
committed batch, so running the command again after an interruption continues where it stopped.
Like ``ramdex ingest``, it first recovers unfinished work nobody holds (expired leases, pending
assets whose message was lost; see :mod:`indexer.ingest.reconcile`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from indexer.db.asset_repo import assets_scored_by_other_model
from indexer.db.assets import Asset, AssetStatus
from indexer.db.job_repo import add_job_assets
from indexer.db.jobs import JobKind
from indexer.db.session import session_scope
from indexer.ingest.dispatch import dispatch, request_index_sync
from indexer.ingest.lease import keeper_for, process_owner
from indexer.ingest.pipeline import progress_bar
from indexer.ingest.process import AssetProcessor, shared_processor
from indexer.ingest.reconcile import recover
from indexer.jobs import (
    end_registration,
    fail_registration,
    get_job_view,
    start_job,
    wait_for_job,
)
from indexer.settings import Settings, get_settings
from indexer.stores import ensure_schema, sync_vector_index

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
    recovered: int = 0
    elapsed_s: float = 0.0
    failures: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "model": self.model_id,
            "queued": self.queued,
            "recovered": self.recovered,
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


def iter_reindex_ids(
    settings: Settings,
    model_id: str,
    *,
    limit: int | None = None,
) -> Iterator[list[int]]:
    """Pages of ids to re-score, ascending: done assets scored by another model (keyset)."""
    emitted = 0
    last = 0
    while limit is None or emitted < limit:
        size = PAGE if limit is None else min(PAGE, limit - emitted)
        with session_scope(settings.database_url) as session:
            page = assets_scored_by_other_model(session, model_id, after_id=last, limit=size)
        if not page:
            return
        emitted += len(page)
        last = page[-1]
        yield page


def reindex(
    settings: Settings | None = None,
    *,
    limit: int | None = None,
    wait: bool = True,
    progress: bool | None = None,
    processor: AssetProcessor | None = None,
) -> ReindexSummary:
    """Re-score every asset the configured model has not scored; resumable.

    Unfinished work earlier runs left (an interrupted ingest or reindex, a dead worker) is
    recovered first (``summary.recovered``), as by ``ramdex ingest``.

    Args:
        settings: default :func:`get_settings`.
        limit: at most this many assets (a trial run).
        wait: with a broker, wait for the workers (the embedded mode always waits).
        progress: progress bar; None: when stderr is a terminal.
        processor: a ready processor (embedded mode).

    Raises:
        indexer.models.ModelNotAvailableError: the configured model is not on this machine.
        indexer.jobs.JobStalledError: waiting, the job made no progress for
            ``ingest.stall_timeout_s``.
    """
    from indexer.models import configured_model_id, model_name_for_id

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
    expected = counts.other_model if limit is None else min(counts.other_model, limit)
    owner = process_owner()
    keeper = keeper_for(settings)
    job_id = start_job(
        url,
        JobKind.REINDEX,
        # The model's name for people (GET /jobs, `ramdex jobs`), its stored id beside it.
        params={
            "model": model_name_for_id(model_id, settings),
            "model_id": model_id,
            "limit": limit,
        },
        owner=owner,
        lease_s=settings.ingest.lease_s,
    )
    keeper.hold_job(job_id)
    summary = ReindexSummary(job_id, model_id)
    bar = progress_bar(expected, progress, "reindex")
    registered = [False]

    def end() -> str:
        status = end_registration(url, job_id, model_name=model_id)
        keeper.drop_job(job_id)
        registered[0] = True
        return status

    def pages() -> Iterator[list[int]]:
        for page in iter_reindex_ids(settings, model_id, limit=limit):
            with session_scope(url) as session:
                add_job_assets(session, job_id, page)
            summary.queued += len(page)
            yield page

    found: list[int] = []
    try:
        found = recover(settings, owner).assets
        keeper.hold_assets(found)
        summary.recovered = len(found)
        if embedded:
            assert processor is not None

            def ids() -> Iterator[int]:
                yield from found
                for page in pages():
                    yield from page
                end()

            with processor._lock:
                processor.process(ids(), on_progress=bar.update)
            if summary.queued or found:
                sync_vector_index(settings, model_id, processor.embed_dim)
        else:
            dispatch(settings, found, owner)
            keeper.drop_assets(found)
            for page in pages():
                dispatch(settings, page, None)
            if end() == "done" and summary.queued:
                request_index_sync(settings, final=True, model_id=model_id)
            if wait and summary.queued:

                def on_update(view: Any) -> None:
                    bar.n = view.processed
                    bar.refresh()

                wait_for_job(
                    url,
                    job_id,
                    on_update=on_update,
                    stall_timeout_s=settings.ingest.stall_timeout_s or None,
                )
    except BaseException as exc:
        if not registered[0]:
            try:
                fail_registration(url, job_id, f"{type(exc).__name__}: {exc}")
            except Exception:
                pass
        raise
    finally:
        keeper.drop_assets(found)
        keeper.drop_job(job_id)
        bar.close()
    final = get_job_view(url, job_id)
    if final is not None:
        summary.done, summary.failed = final.done, final.failed
    summary.elapsed_s = time.monotonic() - started
    return summary
