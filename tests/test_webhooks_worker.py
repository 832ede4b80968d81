"""Webhooks dispatched by a real Celery worker process (Redis broker, PostgreSQL): the test
process only ingests; the worker writes the events with its batches and its dispatcher thread
delivers them, signed and each once, to a receiver on loopback (``allow_private_urls`` on for
the worker: loopback is a private address)."""

from __future__ import annotations

import time

import pytest

from indexer.db.session import session_scope
from indexer.ingest.pipeline import ingest
from indexer.stores import ensure_schema
from indexer.webhooks.subscriptions import add_webhook
from tests.ingest_fixtures import (
    cleanup_redis,
    postgres_database,
    redis_url_for_tests,
    settings_from_env,
    stack_env,
    start_worker,
    unique_name,
    worker_env,
    write_images,
)
from tests.webhook_support import Receiver

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

SECRET = "whsec_worker_test_secret_0000"


def test_a_worker_delivers_ingest_events(tmp_path):
    receiver = Receiver(secret=SECRET).start()
    with postgres_database("ramdex_hooks_worker") as db_url:
        ensure_schema(db_url)
        env = worker_env(
            stack_env(tmp_path / "home", db_url, redis_url_for_tests(), unique_name("rdxh")),
            RAMDEX_INGEST__ALLOW_PRIVATE_URLS="true",
            RAMDEX_WEBHOOKS__INTERVAL_S="0.2",
        )
        settings = settings_from_env(env)
        with session_scope(db_url) as s:
            add_webhook(
                s,
                settings,
                url=receiver.url,
                event_types=["asset.done", "job.done"],
                created_by="test",
                secret=SECRET,
                max_wait_s=0.5,
            )
            s.commit()
        queues = f"{settings.broker.model_queue},{settings.broker.default_queue}"
        worker = start_worker(env, queues, tmp_path / "worker.log", unique_name("wh"))
        try:
            worker.wait_ready()
            write_images(tmp_path / "photos", 6)
            summary = ingest([tmp_path / "photos"], settings=settings, progress=False, wait=True)
            assert summary.done == 6, worker.log()[-3000:]
            deadline = time.monotonic() + 30
            while not receiver.events("job.done") and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(1.0)  # anything sent twice would arrive meanwhile
        finally:
            worker.stop()
            cleanup_redis(settings)
            receiver.stop()
    assert receiver.requests and all(r.verified for r in receiver.requests), worker.log()[-3000:]
    ids = [i for e in receiver.events("asset.done") for i in e["data"]["asset_ids"]]
    assert sorted(ids) == sorted(summary.asset_ids)  # each asset once
    [job] = receiver.events("job.done")
    assert (job["data"]["job_id"], job["data"]["status"]) == (summary.job_id, "done")
    assert len(receiver.events("asset.done")) < 6  # batched with the worker's batches (4)
