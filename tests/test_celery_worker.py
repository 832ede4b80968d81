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
from indexer.jobs import get_job_view, wait_for_job
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
