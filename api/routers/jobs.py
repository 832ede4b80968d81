"""Jobs (ingest, re-index, concept backfill) and their progress."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import JobId, ReadKey, ScopeDep, ServicesDep, SessionDep
from api.problems import not_found
from api.redact import hide_paths_in, hide_paths_in_text, sees_server_paths
from api.schemas import JobOut, JobPage
from indexer.db.job_repo import get_job, list_jobs
from indexer.db.jobs import Job, JobKind, JobStatus
from indexer.jobs import view

router = APIRouter(prefix="/jobs", tags=["jobs"])


def job_out(job: Job, *, hide_paths: bool = False) -> JobOut:
    """The API view of a job row, with rate and ETA; ``hide_paths`` cuts server paths in its
    params and error to file names (for read-only keys, see :mod:`api.redact`)."""
    v = view(job)
    return JobOut(
        id=v.id,
        kind=v.kind,
        status=v.status,
        total=v.total,
        done=v.done,
        failed=v.failed,
        error=hide_paths_in_text(v.error) if hide_paths and v.error else v.error,
        created_at=v.created_at,
        updated_at=v.updated_at,
        rate_per_s=v.rate,
        eta_s=v.eta_s,
        params=hide_paths_in(v.params) if hide_paths else v.params,
        parts=v.parts,
        collection_id=job.collection_id,
    )


@router.get("", response_model=JobPage, summary="Recent jobs, newest first")
def jobs(
    principal: ReadKey,
    scope: ScopeDep,
    services: ServicesDep,
    session: SessionDep,
    status: Annotated[JobStatus | None, Query()] = None,
    kind: Annotated[JobKind | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 20,
) -> JobPage:
    rows = list_jobs(
        session,
        status=status,
        kind=kind,
        limit=limit,
        visible=scope.job_condition(Job.collection_id),
    )
    hide = not sees_server_paths(principal, services.settings)
    return JobPage(items=[job_out(j, hide_paths=hide) for j in rows])


@router.get("/{job_id}", response_model=JobOut, summary="One job with its progress")
def job(
    job_id: JobId, principal: ReadKey, scope: ScopeDep, services: ServicesDep, session: SessionDep
) -> JobOut:
    row = get_job(session, job_id)
    if row is None or not scope.sees_collection(row.collection_id):
        raise not_found("job", job_id)
    return job_out(row, hide_paths=not sees_server_paths(principal, services.settings))
