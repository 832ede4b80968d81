"""Hand uploads, URLs and server paths to the ingest pipeline and answer with a job.

The job row is created here first, so the API can answer ``202`` with the job at once. Work then
goes to the Celery queues (with a broker) or to the app's background thread (embedded mode: the
same code in-process, one job at a time, never on the event loop).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from api.problems import ProblemError
from api.services import Services
from indexer.db.jobs import JobKind
from indexer.ingest import Registered, Registrar, is_url
from indexer.jobs import add_total, end_registration, fail_job, start_job
from indexer.media import CHUNK_SIZE

log = logging.getLogger(__name__)

_MAX_NAME = 200
_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\]+")


def upload_source(filename: str | None) -> str:
    """The source URI recorded for an upload: ``upload:<base name>``.

    The client's name is only a label: folders (``../../etc/passwd``, ``C:\\x``), control
    characters and over-long names are stripped; it never becomes a path.
    """
    name = unicodedata.normalize("NFC", filename or "")
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = _UNSAFE.sub("_", name).strip(" .")[:_MAX_NAME]
    return f"upload:{name or 'unnamed'}"


def _store_stream(
    services: Services, registrar: Registrar, handle: BinaryIO, source: str
) -> Registered:
    """Copy an upload into the media store in one hashing pass, then register it."""
    limit = services.settings.ingest.max_bytes
    media = registrar.media
    media.tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=media.tmp_dir, prefix="upload-", suffix=".part")
    temp = Path(name)
    try:
        digest, size = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as out:
            while chunk := handle.read(CHUNK_SIZE):
                size += len(chunk)
                if size > limit:
                    raise ProblemError(
                        413, f"the file is over the ingest limit of {limit} bytes", kind="too-large"
                    )
                digest.update(chunk)
                out.write(chunk)
        stored = media.adopt(temp, digest.hexdigest(), size)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    # Registrar records the asset (dedup by content, source, failure reasons) for every path.
    return registrar.record(source, stored)


def _dispatch(services: Services, job_id: int, work: Callable[[], Any], what: str) -> None:
    """Run ``work`` in the app's background thread; a crash fails the job with its reason."""

    def run() -> None:
        try:
            work()
        except Exception as exc:
            log.exception("%s (job %s) failed", what, job_id)
            try:
                fail_job(services.settings.database_url, job_id, f"{type(exc).__name__}: {exc}")
            except Exception:
                log.warning("could not mark job %s failed", job_id, exc_info=True)

    services.background(run)


def submit_upload(
    services: Services, handle: BinaryIO, filename: str | None
) -> tuple[int, Registered]:
    """Register one uploaded file and queue it for the model.

    Returns:
        ``(job_id, registered)``; ``registered.state`` is ``queued``, ``duplicate`` or ``failed``.

    Raises:
        ProblemError: 413 when the file is over the ingest size limit.
    """
    settings = services.settings
    url = settings.database_url
    source = upload_source(filename)
    job_id = start_job(url, JobKind.INGEST, params={"sources": [source]})
    try:
        registered = _store_stream(services, Registrar(settings), handle, source)
    except BaseException as exc:
        fail_job(url, job_id, f"upload not stored: {exc}")
        raise
    extra: dict[str, Any] = {"duplicate": int(registered.state == "duplicate")}
    if registered.state == "failed":
        extra["failures"] = [{"source": source, "reason": registered.reason}]
    if registered.state == "queued":
        add_total(url, job_id, 1)
    end_registration(url, job_id, extra)
    if registered.state == "queued":
        asset_ids = [int(registered.asset_id)]  # type: ignore[arg-type]
        if settings.broker.url:
            from indexer.tasks import submit

            submit(asset_ids, job_id=job_id, settings=settings)
        else:
            _dispatch(
                services,
                job_id,
                lambda: services.processor().process(asset_ids, job_id=job_id),
                "tagging an upload",
            )
    return job_id, registered


def check_sources(urls: list[str], paths: list[str]) -> list[str]:
    """Validate sources given to the register route.

    Raises:
        ProblemError: 422 for nothing to do, a URL that is not http(s), a relative path or one
            holding a NUL byte.
    """
    if not urls and not paths:
        raise ProblemError(422, "give at least one URL or path", kind="validation")
    for u in urls:
        if not re.match(r"^https?://[^\s]+$", u, re.IGNORECASE):
            raise ProblemError(422, f"not an http(s) URL: {u[:100]!r}", kind="validation")
    for p in paths:
        if "\x00" in p or not p or is_url(p) or not os.path.isabs(p):
            raise ProblemError(
                422, f"paths must be absolute server paths: {p[:100]!r}", kind="validation"
            )
    return [*urls, *paths]


def submit_sources(services: Services, sources: list[str]) -> int:
    """Queue URLs and server paths (files or folders) for ingest; returns the job id."""
    settings = services.settings
    url = settings.database_url
    job_id = start_job(url, JobKind.INGEST, params={"sources": sources[:50]})
    if settings.broker.url:
        from indexer.celery_app import REGISTER_TASK, producer_app

        producer_app(settings).send_task(
            REGISTER_TASK, args=[sources, job_id], queue=settings.broker.default_queue
        )
    else:
        from indexer.ingest import ingest

        _dispatch(
            services,
            job_id,
            lambda: ingest(
                sources,
                settings=settings,
                job_id=job_id,
                progress=False,
                processor=services.processor(),
            ),
            "registering sources",
        )
    return job_id
