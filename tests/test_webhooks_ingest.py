"""Webhooks end to end with a real embedded ingest (tiny random model) on PostgreSQL and
SQLite: the receiver on loopback (allowed by ``ingest.allow_private_urls``, loopback being
private) gets asset.done in batches, asset.failed with the reason and job.done, all signed;
a dead receiver changes nothing for ingest, and its deliveries arrive once it is back."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from indexer.db.events import WebhookDelivery
from indexer.db.session import session_scope
from indexer.ingest.pipeline import ingest
from indexer.ingest.process import AssetProcessor
from indexer.settings import Settings
from indexer.webhooks.dispatcher import dispatch_once
from indexer.webhooks.subscriptions import add_webhook
from ram_pp.factory import random_model
from tests.db_fixtures import reset_postgres
from tests.ingest_fixtures import postgres_database, write_images
from tests.webhook_support import Receiver, refused_url

MODEL_ID = "test_micro@random"
SECRET = "whsec_ingest_test_secret_000"
N_IMAGES = 5


@pytest.fixture(scope="module")
def micro():
    return random_model("test_micro", seed=0)


@pytest.fixture(scope="module")
def pg_url():
    with postgres_database("ramdex_hooks") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def env(request, tmp_path, micro):
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_url")
        reset_postgres(url)
    else:
        url = f"sqlite:///{tmp_path / 'ramdex.sqlite3'}"
    settings = Settings(
        home=tmp_path / "home",
        database={"url": url},
        broker={"url": ""},
        model={"name": "test_micro", "device": "cpu", "batch_size": 2},
        ingest={"decode_workers": 1, "allow_private_urls": True, "read_keywords": False},
        webhooks={"retry_base_s": 0.05, "retry_max_s": 0.1, "timeout_s": 1.0},
    )
    processor = AssetProcessor(settings, loaded=micro, model_id=MODEL_ID)
    folder = tmp_path / "photos"
    write_images(folder, N_IMAGES)
    (folder / "broken.jpg").write_bytes(b"not an image at all" * 10)
    return settings, processor, folder


def subscribe(settings: Settings, url: str) -> int:
    from indexer.stores import ensure_schema

    ensure_schema(settings.database_url)
    with session_scope(settings.database_url) as s:
        new = add_webhook(
            s,
            settings,
            url=url,
            event_types=["asset.done", "asset.failed", "job.done"],
            created_by="test",
            secret=SECRET,
            max_wait_s=0,
        )
        s.commit()
        return new.webhook.id


def test_ingest_sends_batched_signed_events(env):
    settings, processor, folder = env
    receiver = Receiver(secret=SECRET).start()
    try:
        subscribe(settings, receiver.url)
        summary = ingest([folder], settings=settings, processor=processor, progress=False)
        assert (summary.done, summary.failed) == (N_IMAGES, 1)
        dispatch_once(settings)
    finally:
        receiver.stop()
    assert len(receiver.requests) == 1 and receiver.requests[0].verified
    done = receiver.events("asset.done")
    # One event per committed batch (batch_size 2), every done asset exactly once.
    assert 3 <= len(done) < N_IMAGES
    done_ids = sorted(i for e in done for i in e["data"]["asset_ids"])
    failed = receiver.events("asset.failed")
    failed_ids = [i for e in failed for i in e["data"]["asset_ids"]]
    assert sorted(done_ids + failed_ids) == sorted(summary.asset_ids)
    assert len(failed_ids) == 1 and failed[0]["data"]["error"]
    [job] = receiver.events("job.done")
    assert job["data"]["job_id"] == summary.job_id
    assert (job["data"]["status"], job["data"]["done"], job["data"]["failed"]) == ("done", 5, 1)


def test_a_dead_receiver_never_blocks_ingest_and_is_delivered_later(env):
    settings, processor, folder = env
    hid = subscribe(settings, refused_url())
    summary = ingest([folder], settings=settings, processor=processor, progress=False)
    assert (summary.done, summary.failed) == (N_IMAGES, 1)  # ingest as without webhooks
    assert dispatch_once(settings).failed == 1
    receiver = Receiver(secret=SECRET).start()
    try:
        with session_scope(settings.database_url) as s:  # the receiver is back
            s.execute(
                sa.text("UPDATE webhooks SET url = :u WHERE id = :i"), {"u": receiver.url, "i": hid}
            )
            s.commit()
        import time

        time.sleep(0.15)  # past the backoff
        assert dispatch_once(settings).delivered == 1
    finally:
        receiver.stop()
    assert receiver.requests[0].verified
    assert {e["type"] for e in receiver.events()} == {"asset.done", "asset.failed", "job.done"}
    with session_scope(settings.database_url) as s:
        row = s.scalars(sa.select(WebhookDelivery)).one()
        assert (row.status, row.attempts) == ("delivered", 2)
