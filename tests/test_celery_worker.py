"""Ingest through real Celery worker processes, the real Redis broker and PostgreSQL.

Each module run uses its own PostgreSQL database, a Redis database number in 8..15 and queue
names unique to the run, so engineers running tests at the same time do not collide.
"""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
import torch

from indexer.db.assets import Asset
from indexer.db.concept_repo import create_concept, promote_concept
from indexer.db.session import session_scope
from indexer.db.tags import AssetTag, Tag
from indexer.faiss_index import VectorIndex, index_path, read_meta
from indexer.ingest.pipeline import ingest
from indexer.jobs import get_job_view, recent_jobs, wait_for_job
from indexer.stores import ensure_schema
from ram_pp.factory import random_model
from ram_pp.inference import TaggingEngine
from ram_pp.labels import LabelBank
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

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("celery")
    with postgres_database() as db_url:
        ensure_schema(db_url)
        from ram_pp.text_encoder import build_random_clip_text_encoder

        env = worker_env(
            stack_env(root / "home", db_url, redis_url_for_tests(), unique_name("rdx")),
            # Concept backfills run in the worker: a tiny random CLIP text tower (no download).
            RAMDEX_MODEL__TEXT_ENCODER=str(build_random_clip_text_encoder(root / "clip")),
        )
        settings = settings_from_env(env)
        queues = f"{settings.broker.model_queue},{settings.broker.default_queue}"
        worker = start_worker(env, queues, root / "worker.log", unique_name("w"))
        try:
            worker.wait_ready()
            yield settings, root, worker
        finally:
            worker.stop()
            cleanup_redis(settings)


def test_worker_ingests_a_folder_with_bad_files(stack):
    settings, root, worker = stack
    folder = root / "batch1"
    files = write_images(folder, 9)
    (folder / "truncated.jpg").write_bytes(files[0].read_bytes()[:300])
    summary = ingest([folder], settings=settings, progress=False, wait=True)
    assert (summary.done, summary.failed, summary.queued) == (9, 1, 0), worker.log()[-3000:]
    assert "truncated" in summary.failures[0].reason
    assert summary.failures[0].source.endswith("truncated.jpg")

    # The worker's scores are those of the configured model run on the files directly.
    engine = TaggingEngine(random_model("test_micro", seed=0), device="cpu", decode_workers=0)
    expected = {Path(r.source).name: r for r in engine.tag_files(files)}
    with session_scope(settings.database_url) as s:
        rows = s.execute(
            sa.select(Asset.id, Asset.storage_path, Asset.model_name, Asset.status).where(
                Asset.status == "done"
            )
        ).all()
        assert len(rows) == 9 and {r.model_name for r in rows} == {"test_micro@random"}
        by_sha = {Path(f).name: f for f in files}
        for row in rows:
            name = next(
                n
                for n, f in by_sha.items()
                if f.read_bytes() == Path(row.storage_path).read_bytes()
            )
            scores = dict(
                s.execute(
                    sa.select(Tag.position, AssetTag.score)
                    .join(AssetTag, AssetTag.tag_id == Tag.id)
                    .where(AssetTag.asset_id == row.id)
                ).all()
            )
            probs = expected[name].probabilities
            want = {i: p for i, p in enumerate(probs) if p >= settings.index.score_floor}
            assert scores.keys() == want.keys()
            np.testing.assert_allclose([scores[i] for i in want], list(want.values()), atol=1e-5)
    # A default-queue task synced the FAISS index once the job completed.
    path = index_path(settings.index_dir, "test_micro@random")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (path.exists() and read_meta(path).count >= 9):
        time.sleep(0.2)
    assert VectorIndex.load(path).count == 9, worker.log()[-3000:]
    job = get_job_view(settings.database_url, summary.job_id)
    # The truncated JPEG has a JPEG signature: queued, then failed in the worker, with a reason.
    assert (job.status, job.total, job.done, job.failed) == ("done", 10, 9, 1)


def test_no_wait_returns_queued_and_the_job_finishes(stack):
    settings, root, worker = stack
    folder = root / "batch2"
    write_images(folder, 6, start=100)
    summary = ingest([folder], settings=settings, progress=False, wait=False)
    assert summary.queued == 6 and summary.done == 0
    final = wait_for_job(settings.database_url, summary.job_id, poll_s=0.2, timeout_s=60)
    assert (final.status, final.done, final.total) == ("done", 6, 6), worker.log()[-3000:]


def test_worker_scores_new_assets_for_promoted_concepts(stack):
    """A concept promoted to a tag keeps covering the archive: assets a worker ingests later get
    its score, equal to the plain RAM++ head over the same image."""
    settings, root, worker = stack
    loaded = random_model("test_micro", seed=0)
    rng = np.random.default_rng(7)
    embeddings = rng.normal(size=(3, loaded.config.head.embed_dim)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    with session_scope(settings.database_url) as s:
        concept = create_concept(
            s,
            model_name="test_micro@random",
            name="worker-side concept",
            descriptions=["one", "two", "three"],
            embeddings=embeddings,
            text_encoder="random",
        )
        tag_id = promote_concept(s, concept.id).id
    files = write_images(root / "batch4", 5, start=300)
    summary = ingest([root / "batch4"], settings=settings, progress=False, wait=True)
    assert summary.done == 5, worker.log()[-3000:]

    engine = TaggingEngine(loaded, device="cpu", decode_workers=0)
    bank = LabelBank.from_ragged([torch.from_numpy(embeddings)])
    expected = {}
    for result in engine.tag_files(files):
        with torch.no_grad():
            tokens = torch.from_numpy(result.tokens).float()[None]  # as stored (float16)
            logit = loaded.model.logits_from_embeddings(tokens, bank)
        digest = hashlib.sha256(Path(result.source).read_bytes()).hexdigest()
        expected[digest] = float(torch.sigmoid(logit)[0, 0])
    wanted = {d: p for d, p in expected.items() if p >= settings.index.score_floor}
    assert wanted, "the reference scores are all below the floor: pick another seed"
    deadline = time.monotonic() + 30  # the hook runs just after the batch commits
    while True:
        with session_scope(settings.database_url) as s:
            got = dict(
                s.execute(
                    sa.select(Asset.sha256, AssetTag.score)
                    .join(AssetTag, AssetTag.asset_id == Asset.id)
                    .where(AssetTag.tag_id == tag_id)
                ).all()
            )
        if len(got) >= len(wanted) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert got.keys() == wanted.keys(), worker.log()[-3000:]
    for digest, probability in wanted.items():
        assert got[digest] == pytest.approx(probability, abs=1e-4)


def test_worker_backfills_a_concept_over_the_archive(stack):
    """With a broker, POST /concepts hands the backfill to a model worker: it encodes the
    descriptions, calibrates, promotes the concept to a tag and stores every asset's score,
    equal to the plain RAM++ head over the stored token embeddings."""
    from fastapi.testclient import TestClient

    from api.app import create_app
    from tests.api_support import concept_probabilities, make_keys, wait_for_job

    settings, root, worker = stack
    write_images(root / "batch5", 4, start=400)
    assert ingest([root / "batch5"], settings=settings, progress=False, wait=True).failed == 0
    app_settings = settings.model_copy(
        update={
            "model": settings.model.model_copy(update={"text_encoder": str(root / "clip")}),
            "api": settings.api.model_copy(update={"require_auth": True}),
        }
    )
    keys = make_keys(settings.database_url)
    name, mine = "harbour crane", ["a tall crane loading ships in a harbour"]
    with TestClient(create_app(app_settings)) as client:
        reply = client.post(
            "/concepts", json={"name": name, "descriptions": mine}, headers=keys.write
        )
        assert reply.status_code == 202, reply.text
        job = wait_for_job(client, keys.read, reply.json()["job"]["id"], timeout_s=120)
        assert job["status"] == "done", (job, worker.log()[-3000:])
        assert re.search(r"ramdex\.backfill_concept\[[0-9a-f-]+\] succeeded", worker.log())
        concept = client.get(f"/concepts/{reply.json()['concept']['id']}", headers=keys.read)
        assert concept.json()["status"] == "promoted"
        hits = client.post(
            "/search", json={"all": [name], "min_score": 0.0, "limit": 200}, headers=keys.read
        ).json()["hits"]
    stored = {h["asset"]["id"]: h["score"] for h in hits}
    reference = concept_probabilities(app_settings, name, mine)
    floor = settings.index.score_floor
    assert stored == pytest.approx({i: p for i, p in reference.items() if p >= floor}, abs=1e-5)
    assert job["done"] == job["total"] == len(reference) >= 4


@pytest.mark.skipif(
    __import__("socket").socket().connect_ex(("127.0.0.1", 5672)) != 0,
    reason="RabbitMQ is not running",
)
def test_rabbitmq_broker_smoke(tmp_path):
    with postgres_database() as db_url:
        ensure_schema(db_url)
        env = worker_env(
            stack_env(
                tmp_path / "home",
                db_url,
                "amqp://guest:guest@127.0.0.1:5672//",
                unique_name("rdxmq"),
            )
        )
        settings = settings_from_env(env)
        queues = f"{settings.broker.model_queue},{settings.broker.default_queue}"
        worker = start_worker(env, queues, tmp_path / "worker.log", unique_name("mq"))
        try:
            worker.wait_ready()
            write_images(tmp_path / "in", 4)
            summary = ingest([tmp_path / "in"], settings=settings, progress=False)
            assert (summary.done, summary.failed) == (4, 0), worker.log()[-3000:]
        finally:
            worker.stop()
            _delete_rabbit_queues(settings)


def _delete_rabbit_queues(settings) -> None:
    from kombu import Connection

    with Connection(settings.broker.url, connect_timeout=2) as conn:
        channel = conn.default_channel
        for queue in (settings.broker.model_queue, settings.broker.default_queue):
            try:
                channel.queue_delete(queue)
            except Exception:  # already gone
                pass


def test_register_sources_task_for_server_paths(stack):
    """The API's path: a job created first, sources registered by a default-queue task."""
    from indexer.celery_app import REGISTER_TASK, producer_app
    from indexer.db.jobs import JobKind
    from indexer.jobs import start_job

    settings, root, worker = stack
    folder = root / "server-side"
    write_images(folder, 3, start=500)
    job_id = start_job(settings.database_url, JobKind.INGEST)
    producer_app(settings).send_task(
        REGISTER_TASK, args=[[str(folder)], job_id], queue=settings.broker.default_queue
    )
    final = wait_for_job(settings.database_url, job_id, poll_s=0.2, timeout_s=60)
    assert (final.status, final.total, final.done) == ("done", 3, 3), worker.log()[-3000:]


# --------------------------------------------------------------------------------------------
# Recovery with real workers: leases, the reconciler, dispatch after commit, truthful jobs.
# A stack of its own with short leases (3 s, reconciler every 1 s) and a visibility timeout of an
# hour, so whatever comes back in seconds came back through the lease, not through Redis.

LEASE_S = 3.0


@pytest.fixture(scope="module")
def fast(tmp_path_factory):
    root = tmp_path_factory.mktemp("recovery")
    with postgres_database() as db_url:
        ensure_schema(db_url)
        env = worker_env(
            stack_env(root / "home", db_url, redis_url_for_tests(), unique_name("rdxr")),
            RAMDEX_INGEST__LEASE_S=str(LEASE_S),
            RAMDEX_INGEST__RECONCILE_INTERVAL_S="1",
            RAMDEX_INGEST__STALL_TIMEOUT_S="120",
            RAMDEX_BROKER__VISIBILITY_TIMEOUT_S="3600",
        )
        settings = settings_from_env(env)
        try:
            yield settings, env, root
        finally:
            cleanup_redis(settings)


def _worker(fast, name: str, **extra: str):
    settings, env, root = fast
    queues = f"{settings.broker.model_queue},{settings.broker.default_queue}"
    worker = start_worker(worker_env(env, **extra), queues, root / f"{name}.log", unique_name(name))
    worker.wait_ready()
    return worker


def _statuses(url: str, ids: list[int]) -> dict[str, int]:
    with session_scope(url) as s:
        rows = s.execute(
            sa.select(Asset.status, sa.func.count()).where(Asset.id.in_(ids)).group_by(Asset.status)
        ).all()
    return {status: int(n) for status, n in rows}


def _until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.1)


def test_dead_worker_assets_come_back_through_their_lease(fast):
    """The whole worker (main process and pool child) is SIGKILLed mid-batch: its unacknowledged
    message stays with Redis for the visibility timeout (an hour here), but the batch's lease runs
    out within LEASE_S and the reconciler of another worker re-dispatches it."""
    settings, env, root = fast
    url = settings.database_url
    paths = write_images(root / "dead-worker", 8, start=1000)
    doomed = _worker(fast, "doomed", RAMDEX_DEBUG_PAUSE_BEFORE_COMMIT_S="600")
    rescuer = None
    try:
        summary = ingest(paths, settings=settings, progress=False, wait=False)
        ids = summary.asset_ids
        _until(lambda: _statuses(url, ids).get("processing", 0) > 0, 60, doomed.log()[-3000:])
        rescuer = _worker(fast, "rescuer")
        killed = time.monotonic()
        doomed.kill()
        job = wait_for_job(url, summary.job_id, poll_s=0.1, timeout_s=120)
        back_s = time.monotonic() - killed
        _index_covers_every_done_asset(settings)
    finally:
        doomed.kill()
        if rescuer is not None:
            rescuer.stop()
    assert (job.status, job.total, job.done, job.failed) == ("done", 8, 8, 0), rescuer.log()[-4000:]
    assert re.search(r"recovered \d+ unfinished assets", rescuer.log())
    # Back in about a lease plus a reconciler interval (and the batch's own processing time),
    # nowhere near the visibility timeout.
    print(f"\ndead worker's assets back and done {back_s:.1f} s after the kill (lease {LEASE_S} s)")
    assert back_s < 60
    with session_scope(url) as s:
        attempts = dict(
            s.execute(sa.select(Asset.id, Asset.attempts).where(Asset.id.in_(ids))).all()
        )
    assert max(attempts.values()) <= 2  # the killed run counted once, the rescue once


def _index_covers_every_done_asset(settings, timeout_s: float = 60.0) -> None:
    """The FAISS index reaches every done asset after a recovery, with no manual sync (the
    worker that completes a job asks for one; the reconciler re-syncs an index left behind)."""
    path = index_path(settings.index_dir, "test_micro@random")
    url = settings.database_url

    def covered() -> bool:
        with session_scope(url) as s:
            done = s.scalar(sa.select(sa.func.count()).where(Asset.status == "done"))
        try:
            return read_meta(path).count == done
        except (FileNotFoundError, ValueError):
            return False

    _until(covered, timeout_s, "the FAISS index did not catch up with the done assets")


def test_messages_lost_with_the_broker_are_dispatched_again(fast):
    """Redis restarted without persistence: the queued messages are gone, the pending rows are
    not. With an empty queue, pending assets dispatched longer than a lease ago are sent again."""
    settings, env, root = fast
    url = settings.database_url
    paths = write_images(root / "lost", 6, start=1100)
    summary = ingest(paths, settings=settings, progress=False, wait=False)
    assert summary.queued == 6
    with session_scope(url) as s:
        sent = s.scalars(sa.select(Asset.dispatched_at).where(Asset.id.in_(summary.asset_ids)))
        assert all(t is not None for t in sent)  # dispatched after the commit, and recorded
    cleanup_redis(settings)  # the broker forgets every message
    worker = _worker(fast, "after-restart")
    try:
        job = wait_for_job(url, summary.job_id, poll_s=0.2, timeout_s=120)
        _index_covers_every_done_asset(settings)
    finally:
        worker.stop()
    assert (job.status, job.done, job.failed) == ("done", 6, 0), worker.log()[-4000:]
    assert re.search(r"recovered \d+ unfinished assets", worker.log())


def test_broker_outage_during_registration_loses_nothing(fast):
    """The broker is down while sources are registered: the assets are committed, their sends
    fail, and nothing is lost: once the registering process is gone its leases run out and the
    reconciler sends them."""
    settings, env, root = fast
    url = settings.database_url
    down = settings.model_copy(
        update={"broker": settings.broker.model_copy(update={"url": "redis://127.0.0.1:1/0"})}
    )
    paths = write_images(root / "outage", 5, start=1200)
    summary = ingest(paths, settings=down, progress=False, wait=False)
    assert summary.queued == 5 and summary.failed == 0
    ids = summary.asset_ids
    assert _statuses(url, ids) == {"pending": 5}
    with session_scope(url) as s:
        assert set(s.scalars(sa.select(Asset.dispatched_at).where(Asset.id.in_(ids)))) == {None}
    assert get_job_view(url, summary.job_id).status == "running"  # registration completed
    worker = _worker(fast, "after-outage")
    try:
        job = wait_for_job(url, summary.job_id, poll_s=0.2, timeout_s=120)
    finally:
        worker.stop()
    assert (job.status, job.done, job.failed) == ("done", 5, 0), worker.log()[-4000:]


def test_waiting_client_gives_up_on_a_stalled_job_and_leaves_it_alone(fast):
    """No worker consumes the queue: `ingest` waits, sees no progress for the stall timeout,
    and stops with a message; the job is not marked failed and finishes once a worker runs."""
    from indexer.jobs import JobStalledError

    settings, env, root = fast
    url = settings.database_url
    impatient = settings.model_copy(
        update={"ingest": settings.ingest.model_copy(update={"stall_timeout_s": 2.0})}
    )
    paths = write_images(root / "stalled", 3, start=1300)
    with pytest.raises(JobStalledError, match="made no progress for .* is a worker running"):
        ingest(paths, settings=impatient, progress=False, wait=True)
    job_id = max(j.id for j in recent_jobs(url, 5))
    assert get_job_view(url, job_id).status == "running"
    worker = _worker(fast, "late")
    try:
        job = wait_for_job(url, job_id, poll_s=0.2, timeout_s=120)
    finally:
        worker.stop()
    assert (job.status, job.done) == ("done", 3), worker.log()[-3000:]


def test_ctrl_c_on_a_waiting_ingest_leaves_the_job_to_the_workers(fast):
    """`ramdex ingest` interrupted (SIGINT) while it waits: it says so and exits 130; the job is
    not marked failed, the workers finish it and it ends `done`."""
    import os
    import signal
    import subprocess
    import sys

    settings, env, root = fast
    url = settings.database_url
    folder = root / "interrupted"
    write_images(folder, 8, start=1400)
    worker = _worker(fast, "slow", RAMDEX_DEBUG_PAUSE_BEFORE_COMMIT_S="3.0")
    try:
        cli = subprocess.Popen(
            [str(Path(sys.executable).parent / "ramdex"), "ingest", str(folder)],
            env=worker_env(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=str(Path(__file__).resolve().parent.parent),
        )

        def running_job():
            jobs = [j for j in recent_jobs(url, 5) if j.params.get("sources") == [str(folder)]]
            return jobs[0] if jobs and jobs[0].status == "running" else None

        _until(lambda: running_job() is not None, 90, "the CLI never finished registering")
        before = running_job()
        cli.send_signal(signal.SIGINT)
        out, err = cli.communicate(timeout=60)
        assert cli.returncode == 130, (out, err)
        assert "interrupted" in err and "Traceback" not in err
        assert before.processed < before.total  # it was interrupted with work left
        after = get_job_view(url, before.id)
        assert after.status in ("running", "done") and after.error is None
        job = wait_for_job(url, before.id, poll_s=0.2, timeout_s=120)
    finally:
        if "cli" in locals() and cli.poll() is None:
            os.kill(cli.pid, signal.SIGKILL)
        worker.stop()
    assert (job.status, job.total, job.done, job.failed) == ("done", 8, 8, 0), worker.log()[-3000:]


def test_reconciler_brings_a_stale_index_up_to_date(fast):
    """A worker committed a batch and died before asking for an index sync (here: done rows
    written straight to the database): the reconciler notices the index is behind and has it
    synced, with no `ramdex index sync`."""
    settings, env, root = fast
    dim = random_model("test_micro", seed=0).config.head.embed_dim
    rng = np.random.default_rng(11)
    worker = _worker(fast, "index-watch")
    try:
        with session_scope(settings.database_url) as s:
            for i in range(3):
                vector = rng.normal(size=dim).astype("<f4")
                s.add(
                    Asset(
                        sha256=hashlib.sha256(f"stale-{i}".encode()).hexdigest(),
                        status="done",
                        model_name="test_micro@random",
                        embedding=(vector / np.linalg.norm(vector)).astype("<f4").tobytes(),
                        embedding_dim=dim,
                    )
                )
        _index_covers_every_done_asset(settings, timeout_s=60)
    finally:
        worker.stop()


def test_a_lost_registration_of_the_api_is_sent_again(fast):
    """POST /ingest with server paths creates the job, then a default-queue task registers the
    sources. That message lost (a broker restart), the job's lease runs out and the reconciler
    sends the registration again: the job ends done instead of pending forever."""
    from indexer.jobs import start_job

    settings, env, root = fast
    url = settings.database_url
    folder = root / "server-paths"
    write_images(folder, 3, start=1500)
    params = {"sources": [str(folder)], "redrive": {"sources": [str(folder)]}}
    # What api.submit.submit_sources records before sending the task; the task is never sent.
    job_id = start_job(url, "ingest", params=params, owner="api", lease_s=LEASE_S)
    worker = _worker(fast, "redrive")
    try:
        job = wait_for_job(url, job_id, poll_s=0.2, timeout_s=120)
    finally:
        worker.stop()
    assert (job.status, job.total, job.done) == ("done", 3, 3), worker.log()[-4000:]
    assert job.params["redrive"]["count"] == 1
    assert "registration was lost" in worker.log()


def test_a_reindex_whose_messages_were_lost_is_driven_again(fast):
    """A reindex re-scores done assets, so no lease shows that its messages were lost; the
    reconciler sees the quiet job and the empty queue, and sends its open assets again."""
    from indexer.ingest.register import Registrar
    from indexer.reindex import reindex

    settings, env, root = fast
    url = settings.database_url
    registrar = Registrar(settings)
    ids = [registrar.register(p).asset_id for p in write_images(root / "old", 4, start=1600)]
    with session_scope(url) as s:  # scored by a model that is no longer configured
        s.execute(
            sa.update(Asset)
            .where(Asset.id.in_(ids))
            .values(status="done", model_name="old@1", dispatched_at=None)
        )
    summary = reindex(settings, wait=False, progress=False)
    assert summary.queued == 4
    cleanup_redis(settings)  # its messages are gone
    worker = _worker(fast, "reindexer")
    try:
        job = wait_for_job(url, summary.job_id, poll_s=0.2, timeout_s=120)
    finally:
        worker.stop()
    assert (job.status, job.total, job.done, job.failed) == ("done", 4, 4, 0), worker.log()[-4000:]
    with session_scope(url) as s:
        assert set(s.scalars(sa.select(Asset.model_name).where(Asset.id.in_(ids)))) == {
            "test_micro@random"
        }
