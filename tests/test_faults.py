"""Bad input and faults: every asset ends done or failed with a reason, none lost or duplicated.

- bad files (corrupt, truncated, zero-byte, non-image, decompression bomb, 30000x30000) and
  unreadable paths, through the embedded pipeline;
- the same file submitted twice at once (PostgreSQL, two ingests racing);
- a worker killed with SIGKILL mid-batch: real Celery workers on Redis with a short visibility
  timeout; the batch is paused (test-only hook ``RAMDEX_DEBUG_PAUSE_BEFORE_COMMIT_S``) after its
  token-store write and before its database commit, the most awkward moment to die;
- the database going away during a batch: the shared PostgreSQL server must not be restarted,
  so the outage is made for this test's own database only: ``ALTER DATABASE .. ALLOW_CONNECTIONS
  false`` plus ``pg_terminate_backend`` of every connection to it, then restored a few seconds
  later. For the worker this is exactly a restart (connections dropped, new ones refused).
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from indexer.db.assets import Asset, AssetSource
from indexer.db.jobs import JobKind
from indexer.db.session import session_scope
from indexer.db.tags import AssetTag
from indexer.ingest.dispatch import dispatch
from indexer.ingest.pipeline import ingest
from indexer.ingest.process import MAX_ATTEMPTS, AssetProcessor
from indexer.ingest.register import Registrar
from indexer.jobs import end_registration, get_job_view, start_job, wait_for_job
from indexer.settings import Settings
from indexer.stores import ensure_schema, token_store_path
from indexer.token_store import TokenStore, TokenStoreError
from ram_pp.factory import random_model
from tests.ingest_fixtures import (
    cleanup_redis,
    postgres_database,
    redis_url_for_tests,
    settings_from_env,
    stack_env,
    start_worker,
    unique_name,
    worker_env,
    write_bad_files,
    write_images,
)

MODEL_ID = "test_micro@random"
ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture(scope="module")
def micro():
    return random_model("test_micro", seed=0)


def _settings(tmp_path: Path, url: str) -> Settings:
    return Settings(
        home=tmp_path / "home",
        database={"url": url},
        broker={"url": ""},
        model={"name": "test_micro", "device": "cpu", "batch_size": 4},
        ingest={"decode_workers": 2},
    )


def _assert_every_asset_final(url: str) -> list:
    with session_scope(url) as s:
        rows = s.execute(sa.select(Asset.id, Asset.status, Asset.error)).all()
    for row in rows:
        assert row.status in ("done", "failed"), row
        assert (row.status == "failed") == bool(row.error), row
    return rows


def test_bad_files_and_unreadable_paths_fail_with_reasons(tmp_path, micro):
    settings = _settings(tmp_path, f"sqlite:///{tmp_path / 'faults.sqlite3'}")
    processor = AssetProcessor(settings, loaded=micro, model_id=MODEL_ID)
    folder = tmp_path / "in"
    write_images(folder, 3)
    bad = write_bad_files(folder / "bad")
    (folder / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    unreadable = folder / "secret.jpg"
    unreadable.write_bytes((folder / "img_0000.jpg").read_bytes() + b"x")
    unreadable.chmod(0)
    missing = tmp_path / "no-such-folder"
    summary = ingest([folder, missing], settings=settings, processor=processor, progress=False)

    reasons = {Path(f.source).name: f.reason for f in summary.failures}
    expected = {
        "zero.jpg": "empty file",
        "notes.jpg": "not a supported image",
        "truncated.jpg": "truncated",
        "corrupt.png": "corrupt",
        "bomb.png": "decompression bomb",
        "huge_30000.png": "decompression bomb",
        "dangling.jpg": "file not found",
        "no-such-folder": "no such file or folder",
    }
    if os.geteuid() != 0:  # root reads mode-000 files anyway
        expected["secret.jpg"] = "permission denied"
    for name, reason in expected.items():
        assert reason in reasons.get(name, ""), (name, reasons)
    assert summary.done == 3 + (1 if os.geteuid() == 0 else 0)
    assert summary.failed == len(expected)
    assert summary.submitted == summary.done + summary.failed + summary.duplicate
    rows = _assert_every_asset_final(settings.database_url)
    # Unreadable paths have no bytes, hence no asset; every readable bad file has a failed one.
    assert sum(r.status == "failed" for r in rows) == len(bad)
    job = get_job_view(settings.database_url, summary.job_id)
    assert job.status == "done" and job.done == summary.done
    # The same pipeline keeps working after the bad batch.
    more = write_images(tmp_path / "more", 2, start=50)
    again = ingest(more, settings=settings, processor=processor, progress=False)
    assert (again.done, again.failed) == (2, 0)


def test_a_decoder_that_raises_fails_only_its_asset(tmp_path, micro, monkeypatch):
    """An exception no decoder foresaw (a library bug, an unexpected Pillow error) fails that
    asset with the error as its reason; the rest of the batch and the next ingest go on.
    The decoder is replaced for one file because no real file is known to trigger such a bug."""
    import indexer.ingest.process as process_module

    settings = _settings(tmp_path, f"sqlite:///{tmp_path / 'bug.sqlite3'}")
    processor = AssetProcessor(settings, loaded=micro, model_id=MODEL_ID)
    folder = tmp_path / "in"
    paths = write_images(folder, 4)
    cursed = hashlib.sha256(paths[1].read_bytes()).hexdigest()
    real_decode = process_module.decode_image

    def decode_or_raise(source, **kwargs):
        data = source.read_bytes() if isinstance(source, Path) else source
        if hashlib.sha256(data).hexdigest() == cursed:
            raise RuntimeError("decoder bug")
        return real_decode(source, **kwargs)

    monkeypatch.setattr(process_module, "decode_image", decode_or_raise)
    summary = ingest([folder], settings=settings, processor=processor, progress=False)
    assert (summary.done, summary.failed) == (3, 1)
    [failure] = summary.failures
    assert Path(failure.source).name == paths[1].name
    assert "RuntimeError: decoder bug" in failure.reason
    _assert_every_asset_final(settings.database_url)


@pytest.mark.postgres
def test_same_file_submitted_twice_at_once(tmp_path, micro):
    with postgres_database() as url:
        settings = _settings(tmp_path, url)
        ensure_schema(url)
        processor = AssetProcessor(settings, loaded=micro, model_id=MODEL_ID)
        [original] = write_images(tmp_path / "a", 1)
        copy = tmp_path / "b" / "same-bytes.jpg"
        copy.parent.mkdir()
        copy.write_bytes(original.read_bytes())
        start = threading.Barrier(3)
        results = {}

        def run(name: str, sources: list[Path]) -> None:
            start.wait()
            results[name] = ingest(sources, settings=settings, processor=processor, progress=False)

        threads = [
            threading.Thread(target=run, args=("one", [original])),
            threading.Thread(target=run, args=("two", [copy])),
            threading.Thread(target=run, args=("three", [original, copy, original])),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        # Exactly one run created the asset; the others met it unfinished (resumed, then done)
        # or done (duplicate); "three" met the same bytes again itself (duplicate).
        total_done = sum(r.done for r in results.values())
        total_dup = sum(r.duplicate for r in results.values())
        total_resumed = sum(r.resumed for r in results.values())
        assert total_done - total_resumed == 1 and total_done + total_dup == 5
        assert results["three"].duplicate >= 2
        assert all(r.failed == 0 for r in results.values())
        with session_scope(url) as s:
            assert s.scalar(sa.select(sa.func.count()).select_from(Asset)) == 1
            assert s.scalar(sa.select(Asset.status)) == "done"
            uris = set(s.scalars(sa.select(AssetSource.uri)))
            assert uris == {str(original.resolve()), str(copy.resolve())}
        assert len(TokenStore(token_store_path(settings, MODEL_ID), read_only=True)) == 1


# ------------------------------------------------------------------------------------------
# Real workers: SIGKILL mid-batch and a database outage


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    with postgres_database() as db_url:
        ensure_schema(db_url)
        env = stack_env(root / "home", db_url, redis_url_for_tests(), unique_name("rdxf"))
        env["RAMDEX_BROKER__VISIBILITY_TIMEOUT_S"] = "3"
        settings = settings_from_env(env)
        try:
            yield settings, env, root
        finally:
            cleanup_redis(settings)


@pytest.fixture(scope="module")
def steady_worker(stack):
    """A worker that pauses 1.5 s before each commit (so outages can hit mid-batch).

    Started on first use: the kill test starts it only after its doomed worker is dead.
    """
    settings, env, root = stack
    worker = start_worker(
        worker_env(env, RAMDEX_DEBUG_PAUSE_BEFORE_COMMIT_S="1.5"),
        f"{settings.broker.model_queue},{settings.broker.default_queue}",
        root / "steady.log",
        unique_name("steady"),
    )
    try:
        yield worker
    finally:
        worker.stop()


def _register(settings: Settings, paths: list[Path]) -> tuple[int, list[int]]:
    """Register files without processing them; returns (job id, asset ids) of a running job."""
    url = settings.database_url
    job_id = start_job(url, JobKind.INGEST)
    registrar = Registrar(settings, job_id=job_id)
    ids = [registrar.register(p).asset_id for p in paths]
    end_registration(url, job_id)
    return job_id, ids  # type: ignore[return-value]


def _wait_tokens_written(settings: Settings, ids: list[int], timeout: float = 60.0) -> None:
    """Until the worker has written E of some of ``ids`` (it is then paused before commit)."""
    deadline = time.monotonic() + timeout
    path = token_store_path(settings, MODEL_ID)
    store = None
    while time.monotonic() < deadline:
        try:
            store = store or TokenStore(path, read_only=True)
            store.refresh()
            if any(i in store for i in ids):
                return
        except TokenStoreError:
            pass
        time.sleep(0.05)
    raise TimeoutError("the worker never reached the commit of its batch")


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.slow
def test_worker_killed_mid_batch_loses_and_duplicates_nothing(stack, request):
    settings, env, root = stack
    url = settings.database_url
    paths = write_images(root / "kill", 8)
    job_id, ids = _register(settings, paths)
    doomed = start_worker(
        worker_env(env, RAMDEX_DEBUG_PAUSE_BEFORE_COMMIT_S="120"),
        settings.broker.model_queue,
        root / "doomed.log",
        unique_name("doomed"),
    )
    try:
        doomed.wait_ready()
        dispatch(settings, ids, None)  # two tasks of four
        _wait_tokens_written(settings, ids)
        with session_scope(url) as s:
            statuses = list(s.scalars(sa.select(Asset.status).where(Asset.id.in_(ids))))
        assert "done" not in statuses  # E written, nothing committed
    finally:
        doomed.kill()  # SIGKILL, main process and pool child

    # A fresh worker gets the unacknowledged batch back after the visibility timeout.
    rescuer = request.getfixturevalue("steady_worker")
    rescuer.wait_ready()
    job = wait_for_job(url, job_id, poll_s=0.2, timeout_s=60)
    assert (job.status, job.total, job.done, job.failed) == ("done", 8, 8, 0), rescuer.log()
    # The very message the doomed worker held was delivered again and finished by the rescuer.
    [held] = re.findall(r"process_assets\[([0-9a-f-]+)\] received", doomed.log())
    assert re.search(rf"process_assets\[{held}\] succeeded", rescuer.log())
    with session_scope(url) as s:
        rows = s.execute(sa.select(Asset.id, Asset.status).where(Asset.id.in_(ids))).all()
        assert sorted(r.id for r in rows) == sorted(ids)
        assert {r.status for r in rows} == {"done"}
        per_asset = s.execute(
            sa.select(AssetTag.asset_id, sa.func.count())
            .where(AssetTag.asset_id.in_(ids))
            .group_by(AssetTag.asset_id)
        ).all()
        assert all(n <= 8 for _, n in per_asset)  # test_micro has 8 tags: no duplicates
    store = TokenStore(token_store_path(settings, MODEL_ID), read_only=True)
    assert sorted(store.ids().tolist()) == sorted(ids)  # each asset exactly once
    # The rescuer keeps serving new work.
    more = write_images(root / "after-kill", 3, start=200)
    summary = ingest(more, settings=settings, progress=False)
    assert (summary.done, summary.failed) == (3, 0)


def _outage(database: str, allow: bool) -> None:
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS {str(allow).lower()}')
        if not allow:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (database,),
            )


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.slow
def test_database_outage_during_a_batch_is_retried(stack, steady_worker):
    settings, env, root = stack
    url = settings.database_url
    database = sa.engine.make_url(url).database
    steady_worker.wait_ready()
    paths = write_images(root / "outage", 4, start=300)
    job_id, ids = _register(settings, paths)
    dispatch(settings, ids, None)
    _wait_tokens_written(settings, ids)  # paused before its commit
    _outage(database, allow=False)
    try:
        time.sleep(3.0)  # the commit fails, retries with backoff meet a database that refuses
    finally:
        _outage(database, allow=True)
    job = wait_for_job(url, job_id, poll_s=0.2, timeout_s=90)
    assert (job.status, job.done, job.failed) == ("done", 4, 0), steady_worker.log()[-4000:]
    assert "retry" in steady_worker.log()
    _assert_every_asset_final(url)
    # The worker keeps serving after the outage.
    more = write_images(root / "after-outage", 2, start=400)
    summary = ingest(more, settings=settings, progress=False)
    assert (summary.done, summary.failed) == (2, 0)


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.slow
def test_a_file_that_crashes_its_worker_fails_alone(stack):
    """A poison file (here: the test hook makes its decode kill the worker process, as a decoder
    segfault would) is retried alone and then failed with a reason; its batch-mates are done and
    the job ends instead of the message being redelivered forever."""
    settings, env, root = stack
    url = settings.database_url
    own = {**env, "RAMDEX_BROKER__MODEL_QUEUE": unique_name("poison")}  # not the steady worker's
    own_settings = settings_from_env(own)
    paths = write_images(root / "poison", 6, start=500)
    poison = hashlib.sha256(paths[2].read_bytes()).hexdigest()
    job_id, ids = _register(settings, paths)
    worker = start_worker(
        worker_env(own, RAMDEX_DEBUG_CRASH_ON_SHA256=poison),
        own_settings.broker.model_queue,
        root / "poison.log",
        unique_name("poisoned"),
    )
    try:
        worker.wait_ready()
        dispatch(own_settings, ids, None)  # two tasks of four and two
        job = wait_for_job(url, job_id, poll_s=0.2, timeout_s=120)
    finally:
        worker.stop()
    assert (job.status, job.total, job.done, job.failed) == ("done", 6, 5, 1), worker.log()[-3000:]
    with session_scope(url) as s:
        rows = {
            r.sha256: r
            for r in s.execute(
                sa.select(Asset.sha256, Asset.status, Asset.error, Asset.attempts).where(
                    Asset.id.in_(ids)
                )
            )
        }
    bad = rows.pop(poison)
    assert bad.status == "failed" and "crashed" in bad.error and "--retry-failed" in bad.error
    assert bad.attempts == MAX_ATTEMPTS
    assert {r.status for r in rows.values()} == {"done"}
    assert worker.log().count("WorkerLostError") + worker.log().count("exited") >= MAX_ATTEMPTS
