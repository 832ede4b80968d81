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
from indexer.ingest.dispatch import dispatch
from indexer.ingest.lease import keeper_for, process_owner
from indexer.ingest.register import Registered, Registrar, is_url
from indexer.jobs import end_registration, fail_job, start_job
from indexer.media import (
    CHUNK_SIZE,
    FileTooLargeError,
    HeadSniffer,
    SizeLimits,
    check_stream_size,
)

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
    """Copy an upload into the media store in one hashing pass, then register it.

    The body itself is capped by ``api.max_upload_bytes`` (the route's limit, before this
    runs); the file is then held to the same limits as any ingest: ``ingest.max_bytes``, or
    ``media.max_video_bytes`` for a video (told by its first bytes).
    """
    limits = SizeLimits.of(services.settings)
    media = registrar.media
    media.tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=media.tmp_dir, prefix="upload-", suffix=".part")
    temp = Path(name)
    try:
        digest, size, sniffer = hashlib.sha256(), 0, HeadSniffer()
        with os.fdopen(fd, "wb") as out:
            while True:
                chunk = handle.read(CHUNK_SIZE)
                if chunk:
                    sniffer.feed(chunk)
                    size += len(chunk)
                else:
                    sniffer.finish()
                try:
                    check_stream_size(limits, size, sniffer, declared=False)
                except FileTooLargeError as exc:
                    raise ProblemError(413, str(exc), kind="too-large") from exc
                if not chunk:
                    break
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
    services: Services, handle: BinaryIO, filename: str | None, collection_id: int | None = None
) -> tuple[int, Registered]:
    """Register one uploaded file and queue it for the model (into ``collection_id`` when
    given: the asset joins it, the job is its, before this returns).

    The asset is committed before anything is sent: if the broker (or this process) fails
    right after, the asset's lease runs out and the reconciler sends it.

    Returns:
        ``(job_id, registered)``; ``registered.state`` is ``queued``, ``resumed``,
        ``duplicate`` or ``failed``.

    Raises:
        ProblemError: 413 when the file is over its ingest size limit (``ingest.max_bytes``,
            ``media.max_video_bytes`` for a video).
    """
    settings = services.settings
    url = settings.database_url
    source = upload_source(filename)
    owner = process_owner()
    job_id = start_job(
        url,
        JobKind.INGEST,
        params={"sources": [source]},
        owner=owner,
        lease_s=settings.ingest.lease_s,
        collection_id=collection_id,
    )
    registrar = Registrar(settings, job_id=job_id, owner=owner)
    try:
        registered = _store_stream(services, registrar, handle, source)
    except BaseException as exc:
        fail_job(url, job_id, f"upload not stored: {exc}")
        raise
    extra: dict[str, Any] = {"duplicate": int(registered.state == "duplicate")}
    if registered.state == "failed":
        extra["failures"] = [{"source": source, "reason": registered.reason}]
    end_registration(url, job_id, extra)
    if registered.held:
        asset_ids = [int(registered.asset_id)]  # type: ignore[arg-type]
        keeper = keeper_for(settings)
        if settings.broker.url:
            try:
                dispatch(settings, asset_ids, owner)
            except Exception:  # stored and leased: the reconciler sends it when the lease ends
                log.warning("upload %s: broker unavailable, dispatch deferred", source)
        else:
            keeper.hold_assets(asset_ids)  # until the background run claims and commits it

            def work() -> None:
                try:
                    services.processor().process(asset_ids)
                finally:
                    keeper.drop_assets(asset_ids)

            _dispatch(services, job_id, work, "tagging an upload")
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


def submit_sources(services: Services, sources: list[str], collection_id: int | None = None) -> int:
    """Queue URLs and server paths (files or folders) for ingest; returns the job id. With
    ``collection_id`` the job is that collection's and its assets join it when registration
    ends.

    The job is created first; a default-queue worker (or the app's background thread) registers
    the sources. If that registration is lost (a broker restarted, a worker killed), the
    reconciler sends it again: registering the same sources twice is harmless.

    Raises:
        ProblemError: 503 when the broker does not accept the registration task.
    """
    settings = services.settings
    url = settings.database_url
    lease_s = settings.ingest.lease_s
    params: dict[str, Any] = {"sources": sources[:50]}
    if settings.broker.url:
        params["redrive"] = {"sources": sources}
        # The registration task takes the lease over when it starts; until then this lease
        # says how long it may sit in the queue before the reconciler sends it again.
        job_id = start_job(
            url,
            JobKind.INGEST,
            params=params,
            owner="api",
            lease_s=lease_s * 4,
            collection_id=collection_id,
        )
        from indexer.celery_app import REGISTER_TASK, producer_app

        try:
            producer_app(settings).send_task(
                REGISTER_TASK, args=[sources, job_id], queue=settings.broker.default_queue
            )
        except Exception as exc:
            fail_job(url, job_id, f"broker unavailable: {type(exc).__name__}: {exc}")
            raise ProblemError(
                503, "the task broker is unavailable: try again later", kind="unavailable"
            ) from exc
        return job_id
    from indexer.ingest.pipeline import ingest

    owner = process_owner()
    job_id = start_job(
        url,
        JobKind.INGEST,
        params=params,
        owner=owner,
        lease_s=lease_s,
        collection_id=collection_id,
    )
    keeper_for(settings).hold_job(job_id)  # until the background run takes the job over
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
