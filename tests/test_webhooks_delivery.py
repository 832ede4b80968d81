"""Webhook deliveries on PostgreSQL and SQLite against a real receiver on loopback: signatures
verified by the receiver's own implementation, batching, retries with backoff when the
receiver fails (500, hang past the timeout, connection refused), dead after the last attempt,
replay, collection filtering, the SSRF guard at registration and at delivery, the job trigger,
tags-changed events, nothing written without subscribers, pruning.

Loopback is a private address, so these settings allow private URLs (``allow_private_urls``)
except where the guard itself is under test.
"""

from __future__ import annotations

import math
import time

import pytest
import sqlalchemy as sa

from indexer.db.asset_repo import get_or_create_asset_by_sha, mark_failed
from indexer.db.collections import AssetCollection, Collection
from indexer.db.event_repo import forget_subscriptions, record_asset_event
from indexer.db.events import Event, EventType, WebhookDelivery
from indexer.db.job_repo import create_job, update_job
from indexer.db.label_repo import change_labels
from indexer.db.session import session_scope
from indexer.db.webhook_repo import list_deliveries, replay_delivery
from indexer.settings import Settings
from indexer.webhooks.dispatcher import dispatch_once, send_now
from indexer.webhooks.errors import WebhookError
from indexer.webhooks.retention import prune
from indexer.webhooks.subscriptions import add_webhook
from tests.db_fixtures import TABLES
from tests.webhook_support import Receiver, refused_url

pytest_plugins = ["tests.db_fixtures"]

SECRET = "whsec_test_secret_0123456789"


def settings_for(url: str, tmp_path, *, private: bool = True, **hooks: object) -> Settings:
    webhooks = {"retry_base_s": 0.2, "retry_max_s": 1.0, "timeout_s": 1.0, **hooks}
    return Settings(
        home=tmp_path / "home",
        database={"url": url},
        broker={"url": ""},
        ingest={"allow_private_urls": private},
        webhooks=webhooks,
    )


@pytest.fixture(
    params=[pytest.param("postgresql", marks=pytest.mark.postgres), pytest.param("sqlite")]
)
def db_url(request: pytest.FixtureRequest) -> str:
    """An empty migrated database per test, emptied with DELETE (these tests leave a few rows:
    much faster than the shared fixture's TRUNCATE of every table)."""
    name = "pg_migrated_url" if request.param == "postgresql" else "sqlite_migrated_url"
    url: str = request.getfixturevalue(name)
    with session_scope(url) as s:
        for table in TABLES:
            s.execute(sa.text(f"DELETE FROM {table}"))
        s.commit()
    return url


@pytest.fixture()
def receiver():
    r = Receiver(secret=SECRET).start()
    yield r
    r.stop()


def hook(settings: Settings, url: str, events=("asset.done",), **kw) -> int:
    with session_scope(settings.database_url) as s:
        new = add_webhook(
            s, settings, url=url, event_types=events, created_by="test", secret=SECRET, **kw
        )
        s.commit()
        return new.webhook.id


def assets(settings: Settings, n: int, start: int = 0) -> list[int]:
    with session_scope(settings.database_url) as s:
        ids = [
            get_or_create_asset_by_sha(s, sha256=f"{i:064x}").id for i in range(start, start + n)
        ]
        s.commit()
    return ids


def emit_done(settings: Settings, batches: list[list[int]]) -> None:
    for batch in batches:
        with session_scope(settings.database_url) as s:
            record_asset_event(s, EventType.ASSET_DONE, batch, model="m")
            s.commit()


def deliveries(settings: Settings, webhook_id: int) -> list[WebhookDelivery]:
    with session_scope(settings.database_url) as s:
        rows = list_deliveries(s, webhook_id, limit=500)
        s.expunge_all()
    return rows


def test_signed_delivery_verified_by_the_receiver(db_url, tmp_path, receiver):
    settings = settings_for(db_url, tmp_path)
    hid = hook(settings, receiver.url, max_wait_s=0)
    ids = assets(settings, 3)
    emit_done(settings, [ids[:2], ids[2:]])
    report = dispatch_once(settings)
    assert report.delivered == 1 and len(receiver.requests) == 1
    got = receiver.requests[0]
    assert got.verified, got.headers
    assert got.headers["X-Ramdex-Delivery"] == str(deliveries(settings, hid)[0].id)
    assert [e["data"]["asset_ids"] for e in got.events] == [ids[:2], ids[2:]]
    assert {e["type"] for e in got.events} == {"asset.done"}
    # A tampered body or a wrong secret does not verify (the receiver's check is not a no-op).
    from tests.webhook_support import verify_signature

    header = got.headers["X-Ramdex-Signature"]
    assert not verify_signature(SECRET, header, got.body + b" ")
    assert not verify_signature(SECRET + "x", header, got.body)
    [row] = deliveries(settings, hid)
    assert (row.status, row.attempts, row.last_status_code) == ("delivered", 1, 204)


def test_a_new_webhook_gets_only_what_happens_after_it_is_made(db_url, tmp_path, receiver):
    """An event recorded for an older webhook and not yet fanned out when a new one appears is
    not news to the new one: it gets the events from its creation on."""
    settings = settings_for(db_url, tmp_path)
    old = hook(settings, receiver.url, max_wait_s=0)
    before, after = assets(settings, 2)
    emit_done(settings, [[before]])  # recorded for the old webhook only
    time.sleep(0.01)  # distinct timestamps on a coarse clock
    new = hook(settings, receiver.url, max_wait_s=0)
    emit_done(settings, [[after]])
    dispatch_once(settings)
    got: dict[int, list[int]] = {}
    for r in receiver.requests:
        got.setdefault(int(r.headers["X-Ramdex-Webhook"]), []).extend(
            e["data"]["asset_ids"][0] for e in r.events
        )
    assert sorted(got[old]) == [before, after] and got[new] == [after], got


@pytest.mark.parametrize("n,max_events", [(7, 3), (10, 5)])
def test_n_events_become_ceil_n_over_max_deliveries(db_url, tmp_path, receiver, n, max_events):
    settings = settings_for(db_url, tmp_path)
    hid = hook(settings, receiver.url, max_events=max_events, max_wait_s=0)
    ids = assets(settings, n)
    emit_done(settings, [[i] for i in ids])
    dispatch_once(settings)
    assert len(receiver.requests) == math.ceil(n / max_events)
    assert all(len(r.events) <= max_events for r in receiver.requests)
    # each once (deliveries are sent concurrently: arrival order is free)
    assert sorted(e["data"]["asset_ids"][0] for e in receiver.events()) == ids
    assert all(d.status == "delivered" for d in deliveries(settings, hid))


def test_a_short_batch_waits_for_max_wait(db_url, tmp_path, receiver):
    settings = settings_for(db_url, tmp_path)
    hook(settings, receiver.url, max_events=10, max_wait_s=0.6)
    emit_done(settings, [assets(settings, 2)])
    assert dispatch_once(settings).sealed == 0 and not receiver.requests  # not full, not old
    time.sleep(0.7)
    assert dispatch_once(settings).delivered == 1 and len(receiver.events()) == 1


def test_failures_are_retried_with_backoff_then_recover(db_url, tmp_path, receiver):
    """Three receivers fail three ways at once (HTTP 500, hanging past the timeout, nothing
    listening): each delivery is failed with the reason and due again after a backoff, the
    pass bounded by the timeout; once they are back, the retries deliver."""
    settings = settings_for(db_url, tmp_path, timeout_s=0.5, max_attempts=5)
    failing = Receiver(secret=SECRET, mode="fail").start()
    hanging = Receiver(secret=SECRET, mode="hang", hang_s=1.5).start()
    try:
        hooks = {
            "fail": hook(settings, failing.url, max_wait_s=0),
            "hang": hook(settings, hanging.url, max_wait_s=0),
            "refused": hook(settings, refused_url(), max_wait_s=0),
        }
        emit_done(settings, [assets(settings, 1)])
        started = time.monotonic()
        report = dispatch_once(settings)
        assert report.failed == 3 and time.monotonic() - started < 3.0  # bounded by the timeout
        rows = {kind: deliveries(settings, hid)[0] for kind, hid in hooks.items()}
        assert {r.status for r in rows.values()} == {"failed"}
        assert all(r.attempts == 1 and r.last_error for r in rows.values())
        assert rows["fail"].last_status_code == 500 and "HTTP 500" in rows["fail"].last_error
        assert "timed out" in rows["hang"].last_error
        assert "connection failed" in rows["refused"].last_error
        # Due again after the backoff (base 0.2 s, jittered down to half at most), not at once.
        assert all(r.next_attempt_at > r.created_at for r in rows.values())
        time.sleep(0.25)
        failing.mode = hanging.mode = "ok"
        with session_scope(db_url) as s:  # the third receiver comes back (at another port)
            s.execute(
                sa.text("UPDATE webhooks SET url = :u WHERE id = :i"),
                {"u": receiver.url, "i": hooks["refused"]},
            )
            s.commit()
        assert dispatch_once(settings).delivered == 3
        for hid in hooks.values():
            [row] = deliveries(settings, hid)
            assert (row.status, row.attempts, row.last_error) == ("delivered", 2, None)
        for r in (failing, hanging, receiver):
            assert r.requests[-1].verified
    finally:
        failing.stop()
        hanging.stop()


def test_dead_after_max_attempts_then_replayed(db_url, tmp_path, receiver):
    settings = settings_for(db_url, tmp_path, max_attempts=3, retry_base_s=0.05, retry_max_s=0.1)
    receiver.mode = "fail"
    hid = hook(settings, receiver.url, max_wait_s=0)
    emit_done(settings, [assets(settings, 1)])
    for _ in range(3):
        dispatch_once(settings)
        time.sleep(0.12)
    [row] = deliveries(settings, hid)
    assert (row.status, row.attempts) == ("dead", 3)
    assert dispatch_once(settings).failed == 0 and len(receiver.requests) == 3  # no more tries
    receiver.mode = "ok"
    with session_scope(db_url) as s:
        assert replay_delivery(s, row.id)
        s.commit()
    assert send_now(settings, row.id) == "delivered"
    assert receiver.requests[-1].body == receiver.requests[0].body  # the same delivery
    assert receiver.requests[-1].verified


def test_collection_filtering(db_url, tmp_path, receiver):
    settings = settings_for(db_url, tmp_path)
    with session_scope(db_url) as s:
        a, b = Collection(name="A"), Collection(name="B")
        s.add_all([a, b])
        s.flush()
        ca, cb = a.id, b.id
        s.commit()
    ids = assets(settings, 4)
    with session_scope(db_url) as s:
        s.add_all([AssetCollection(collection_id=ca, asset_id=i) for i in ids[:2]])
        s.add(AssetCollection(collection_id=cb, asset_id=ids[2]))
        s.commit()
    other = Receiver(secret=SECRET).start()
    try:
        only_a = hook(settings, receiver.url, collection_ids=[ca], max_wait_s=0)
        every = hook(settings, other.url, max_wait_s=0)
        emit_done(settings, [ids, [ids[3]]])  # the second event has no asset of A
        dispatch_once(settings)
        assert [e["data"]["asset_ids"] for e in receiver.events()] == [ids[:2]]
        assert [e["data"]["asset_ids"] for e in other.events()] == [ids, [ids[3]]]
        assert only_a != every
    finally:
        other.stop()


def test_ssrf_refused_at_registration_and_at_delivery(db_url, tmp_path, receiver):
    strict = settings_for(db_url, tmp_path, private=False)
    with session_scope(db_url) as s:
        for url in (receiver.url, "http://10.0.0.8/hook", "http://[::1]/hook"):
            with pytest.raises(WebhookError, match="not a public address"):
                add_webhook(s, strict, url=url, event_types=["asset.done"], created_by="t")
        for url in (
            "ftp://example.com/x",
            "file:///etc/passwd",
            "http://u:p@example.com/",
            "http://[zz]/",
            "http://..com/",
            "http://example.com:99999/",
        ):
            with pytest.raises(WebhookError):
                add_webhook(s, strict, url=url, event_types=["asset.done"], created_by="t")
        with pytest.raises(WebhookError, match="unknown event type"):
            add_webhook(s, strict, url="https://example.com/", event_types=["x"], created_by="t")
    # Registered while private URLs were allowed; the guard runs again at delivery.
    hid = hook(settings_for(db_url, tmp_path), receiver.url, max_wait_s=0)
    emit_done(strict, [assets(strict, 1)])
    assert dispatch_once(strict).failed == 1
    assert not receiver.requests
    [row] = deliveries(strict, hid)
    assert "not a public address" in (row.last_error or "")


def test_job_trigger_and_tags_changed_events(db_url, tmp_path, receiver):
    settings = settings_for(db_url, tmp_path)
    hook(
        settings,
        receiver.url,
        events=("job.done", "asset.tags_changed", "asset.failed"),
        max_wait_s=0,
    )
    ids = assets(settings, 2)
    with session_scope(db_url) as s:
        job = create_job(s, kind="ingest", total=2)
        update_job(s, job.id, status="running")
        s.commit()
        job_id = job.id
    with session_scope(db_url) as s:
        update_job(s, job_id, status="failed", error="boom")
        change_labels(s, ids, "cat", "cat", "add", "tester")
        mark_failed(s, [ids[0]], "bad file")
        s.commit()
    with session_scope(db_url) as s:  # rolled back: no event
        update_job(s, create_job(s, kind="ingest").id, status="done")
        s.rollback()
    dispatch_once(settings)
    [job_event] = receiver.events("job.done")
    assert job_event["data"]["job_id"] == job_id
    assert (job_event["data"]["status"], job_event["data"]["error"]) == ("failed", "boom")
    [tags] = receiver.events("asset.tags_changed")
    assert tags["data"]["asset_ids"] == ids and tags["data"]["action"] == "add"
    [failed] = receiver.events("asset.failed")
    assert failed["data"] == {"asset_ids": [ids[0]], "error": "bad file"}


def test_no_subscriber_no_rows_and_prune(db_url, tmp_path, receiver):
    settings = settings_for(db_url, tmp_path, event_retention_s=0, delivery_retention_days=0)
    forget_subscriptions()  # the fixture emptied the tables behind this process's cache
    ids = assets(settings, 2)
    emit_done(settings, [ids])
    with session_scope(db_url) as s:
        job = create_job(s, kind="ingest")
        update_job(s, job.id, status="done")
        s.commit()
    with session_scope(db_url) as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Event)) == 0
    hook(settings, receiver.url, max_wait_s=0)
    emit_done(settings, [ids])
    dispatch_once(settings)
    assert len(receiver.requests) == 1
    with session_scope(db_url) as s:
        events, sent = prune(s, settings.webhooks)
        s.commit()
    assert (events, sent) == (1, 1)
    with session_scope(db_url) as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Event)) == 0


def test_concept_backfilled_when_its_job_finishes(db_url, tmp_path, receiver):
    """Whichever code path finishes a backfill job (here a plain status update, as the last
    part's commit does), the jobs trigger writes concept.backfilled in that transaction; a
    webhook limited to a collection gets it only for that collection's concepts."""
    from indexer.db.concept_repo import create_concept

    settings = settings_for(db_url, tmp_path)
    with session_scope(db_url) as s:
        team = Collection(name="team")
        s.add(team)
        s.flush()
        team_id = team.id
        s.commit()
    other = Receiver(secret=SECRET).start()
    try:
        hook(settings, receiver.url, events=("concept.backfilled",), max_wait_s=0)
        hook(
            settings,
            other.url,
            events=("concept.backfilled",),
            collection_ids=[team_id],
            max_wait_s=0,
        )
        jobs = {}
        with session_scope(db_url) as s:
            for name, cid in (("sunset glow", None), ("team logo", team_id)):
                concept = create_concept(
                    s, model_name="m", name=name, descriptions=["a"], collection_id=cid
                )
                job = create_job(s, kind="backfill", total=3, params={"concept_id": concept.id})
                update_job(s, job.id, status="running")
                jobs[name] = (concept.id, job.id)
            s.commit()
        with session_scope(db_url) as s:
            for _, job_id in jobs.values():
                s.execute(
                    sa.text("UPDATE jobs SET done = 3, status = 'done' WHERE id = :i"),
                    {"i": job_id},
                )
            s.commit()
        dispatch_once(settings)
        got = {e["data"]["concept"]: e["data"] for e in receiver.events("concept.backfilled")}
        assert set(got) == {"sunset glow", "team logo"}
        assert got["sunset glow"]["concept_id"] == jobs["sunset glow"][0]
        assert (got["sunset glow"]["status"], got["sunset glow"]["assets_scored"]) == ("done", 3)
        assert [e["data"]["concept"] for e in other.events()] == ["team logo"]
    finally:
        other.stop()


def test_two_dispatchers_at_once_send_each_delivery_once(db_url, tmp_path, receiver):
    """Two processes' passes racing (here two threads with their own owner names and
    connections) claim deliveries with a conditional UPDATE: none is sent twice."""
    import threading

    settings = settings_for(db_url, tmp_path, timeout_s=5.0)
    hid = hook(settings, receiver.url, max_events=1, max_wait_s=0)
    emit_done(settings, [[i] for i in assets(settings, 40)])
    from indexer.webhooks.dispatcher import DispatchReport, prepare

    prepare(settings, DispatchReport())  # 40 deliveries sealed, none sent yet
    errors: list[BaseException] = []

    def run(owner: str) -> None:
        try:
            dispatch_once(settings, owner)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(f"racer-{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    sent = [r.headers["X-Ramdex-Delivery"] for r in receiver.requests]
    rows = deliveries(settings, hid)
    delivered = {str(d.id) for d in rows if d.status == "delivered"}
    assert len(rows) == 40 and {d.status for d in rows} <= {"delivered", "failed"}
    assert delivered <= set(sent)
    # Quiet, all 40 arrive at their first try; on a loaded machine (a full suite beside it) a
    # POST may time out (5 s): recorded as a failed attempt with its reason, retried later.
    assert len(delivered) >= 36 and all(d.last_error for d in rows if d.status == "failed")
    # A POST sent twice is a recorded retry (one that timed out on a loaded machine), never
    # two senders holding one delivery: every POST received is one of its recorded attempts,
    # none twice. (On a loaded machine an attempt can time out before the receiver has read
    # it, so an attempt may have no POST on record; never a POST without its attempt.)
    attempts = {str(d.id): d.attempts for d in rows}
    tries: dict[str, list[tuple[int, float]]] = {}
    for r in receiver.requests:
        tries.setdefault(r.headers["X-Ramdex-Delivery"], []).append(
            (int(r.headers["X-Ramdex-Attempt"]), r.at)
        )
    for delivery, seen in tries.items():
        seen.sort()
        numbers = [n for n, _ in seen]
        assert len(set(numbers)) == len(numbers), (delivery, numbers)
        assert all(1 <= n <= attempts[delivery] for n in numbers), (delivery, numbers)
        # a next attempt only after the previous one timed out (5 s), never alongside it
        assert all(b - a >= 4.9 for (_, a), (_, b) in zip(seen, seen[1:], strict=False))
    assert sum(attempts.values()) >= len(sent)


def test_a_hanging_receiver_does_not_hold_back_another_webhook(db_url, tmp_path, receiver):
    settings = settings_for(db_url, tmp_path, timeout_s=0.5, concurrency=2, max_attempts=1)
    slow = Receiver(secret=SECRET, mode="hang", hang_s=1.0).start()
    try:
        hook(settings, slow.url, max_events=1, max_wait_s=0)  # a backlog of 12 deliveries
        emit_done(settings, [[i] for i in assets(settings, 12)])
        hook(settings, receiver.url, max_wait_s=0)
        emit_done(settings, [assets(settings, 1, start=100)])
        from indexer.webhooks.dispatcher import DispatchReport, prepare

        prepare(settings, DispatchReport())
        started = time.time()
        dispatch_once(settings)
        # the healthy webhook's delivery went out in the first round (about one timeout),
        # not after the 12 hanging ones (6 rounds of 2)
        assert (
            receiver.requests
            and receiver.requests[0].at - time.time() + time.monotonic() - started < 1.5
        )
    finally:
        slow.stop()


def test_backoff_doubles_with_jitter_and_ends_dead():
    from indexer.webhooks.retry import retry_delay_s

    def delays(attempt: int) -> list[float]:
        return [
            retry_delay_s(attempt, base_s=10, max_s=60, max_attempts=6) or -1.0 for _ in range(200)
        ]

    for attempt, ceiling in ((1, 10), (2, 20), (3, 40), (4, 60), (5, 60)):
        got = delays(attempt)
        assert min(got) >= ceiling / 2 and max(got) <= ceiling and len(set(got)) > 100  # jitter
    assert retry_delay_s(6, base_s=10, max_s=60, max_attempts=6) is None  # the last: dead
