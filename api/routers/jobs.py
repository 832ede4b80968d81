"""Jobs (ingest, re-index, concept backfill) and their progress."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import JobId, ReadKey, SessionDep
from api.problems import not_found
from api.schemas import JobOut, JobPage
from indexer.db.job_repo import get_job, list_jobs
from indexer.db.jobs import JobKind, JobStatus

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.get("", response_model=JobPage, summary="Recent jobs, newest first")
def jobs(
    _: ReadKey,
    session: SessionDep,
    status: Annotated[JobStatus | None, Query()] = None,
    kind: Annotated[JobKind | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 20,
) -> JobPage:
    rows = list_jobs(session, status=status, kind=kind, limit=limit)
    return JobPage(items=[JobOut.model_validate(j) for j in rows])


@router.get("/{job_id}", response_model=JobOut, summary="One job with its progress")
def job(job_id: JobId, _: ReadKey, session: SessionDep) -> JobOut:
    row = get_job(session, job_id)
    if row is None:
        raise not_found("job", job_id)
    return JobOut.model_validate(row)
