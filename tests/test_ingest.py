"""Embedded ingest (no broker) on SQLite and on the real PostgreSQL server.

Expected scores are not copied from the pipeline: they come from running the same model through
``TaggingEngine.tag_files`` on the original files, which shares no code with the ingest path
beyond the model itself.
"""

from __future__ import annotations

import io
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
import torch
from PIL import Image
from typer.testing import CliRunner

from indexer.db.assets import Asset, AssetSource
from indexer.db.jobs import Job
from indexer.db.session import session_scope
from indexer.db.tags import AssetTag, Tag
from indexer.faiss_index import VectorIndex, index_path
from indexer.ingest.dispatch import Dispatcher
from indexer.ingest.pipeline import ingest
from indexer.ingest.process import AssetProcessor
from indexer.reindex import pending_counts, reindex
from indexer.settings import Settings
from indexer.stores import ensure_schema, token_store_path
from indexer.token_store import TokenStore
from indexer.walk import walk_files
from ram_pp.factory import random_model
from ram_pp.inference import TaggingEngine
from tests.db_fixtures import reset_postgres
from tests.ingest_fixtures import encode, photo_like, postgres_database, write_images

MODEL_ID = "test_micro@random"
N_IMAGES = 10


@pytest.fixture(scope="module")
def micro():
    return random_model("test_micro", seed=0)


@pytest.fixture(scope="module")
def pg_url():
    with postgres_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def env(request, tmp_path, micro):
    """Settings, a processor sharing the module's model, and a folder of images."""
    if request.param == "postgresql":
        # A fresh database per test: the module database, emptied by a new schema each time.
        url = request.getfixturevalue("pg_url")
        reset_postgres(url)
    else:
        url = f"sqlite:///{tmp_path / 'ramdex.sqlite3'}"
    settings = Settings(
        home=tmp_path / "home",
        database={"url": url},
        broker={"url": ""},
        model={"name": "test_micro", "device": "cpu", "batch_size": 4},
        ingest={"decode_workers": 2},
    )
    processor = AssetProcessor(settings, loaded=micro, model_id=MODEL_ID)
    folder = tmp_path / "photos"
    write_images(folder, N_IMAGES)
    return settings, processor, folder


def test_ingest_folder_stores_everything(env, micro):
    settings, processor, folder = env
    summary = ingest([folder], settings=settings, processor=processor, progress=False)
    assert (summary.done, summary.duplicate, summary.failed) == (N_IMAGES, 0, 0)
    assert summary.submitted == N_IMAGES and summary.queued == 0

    # Reference: the bare model on the original files.
    engine = TaggingEngine(micro, device="cpu", batch_size=4, decode_workers=0)
    files = sorted(folder.glob("*.jpg"))
    expected = {r.source: r for r in engine.tag_files(files)}

    url = settings.database_url
    with session_scope(url) as s:
        assets = s.scalars(sa.select(Asset).order_by(Asset.id)).all()
        assert len(assets) == N_IMAGES
        tag_ids = {t.position: t.id for t in s.scalars(sa.select(Tag)).all()}
        for asset in assets:
            assert asset.status == "done" and asset.error is None
            assert asset.model_name == MODEL_ID and asset.mime == "image/jpeg"
            assert (asset.width, asset.height) == (96, 72)
            source = s.scalars(
                sa.select(AssetSource.uri).where(AssetSource.asset_id == asset.id)
            ).one()
            ref = expected[str(Path(source))]
            # Scores at or above the floor are stored, each equal to the bare model's.
            stored = dict(
                s.execute(
                    sa.select(AssetTag.tag_id, AssetTag.score).where(AssetTag.asset_id == asset.id)
                ).all()
            )
            want = {
                tag_ids[i]: p
                for i, p in enumerate(ref.probabilities)
                if p >= settings.index.score_floor
            }
            assert stored.keys() == want.keys()
            for tag_id, p in want.items():
                assert stored[tag_id] == pytest.approx(p, abs=1e-5)
            emb = np.frombuffer(asset.embedding, dtype="<f4")
            np.testing.assert_allclose(emb, ref.embedding, atol=1e-5)
            # Original and thumbnail in the content-addressed media store.
            original = Path(asset.storage_path)
            assert original.is_file() and original.read_bytes() == Path(source).read_bytes()
            assert asset.sha256 in original.name
            thumb = Image.open(asset.thumbnail_path)
            assert thumb.format == "WEBP" and max(thumb.size) <= settings.ingest.thumbnail_size
        job = s.get(Job, summary.job_id)
        assert (job.status, job.total, job.done, job.failed) == ("done", N_IMAGES, N_IMAGES, 0)

    # The FAISS index was synced at the end of the run: every asset, found by its own vector.
    index = VectorIndex.load(index_path(settings.index_dir, MODEL_ID))
    assert index.model_name == MODEL_ID and sorted(index.ids()) == sorted(a.id for a in assets)
    probe = assets[3]
    _, hits = index.search_one(np.frombuffer(probe.embedding, dtype="<f4"), 1)
    assert hits.tolist() == [probe.id]

    store = TokenStore(token_store_path(settings, MODEL_ID), read_only=True)
    assert len(store) == N_IMAGES
    ids = [a.id for a in assets]
    tokens = store.get(ids, dtype=np.float32)
    for asset, e in zip(assets, tokens, strict=True):
        with session_scope(url) as s:
            source = s.scalars(
                sa.select(AssetSource.uri).where(AssetSource.asset_id == asset.id)
            ).one()
        np.testing.assert_allclose(e, expected[source].tokens.astype(np.float32), atol=2e-3)


def test_duplicates_record_new_sources(env):
    settings, processor, folder = env
    first = folder / "img_0000.jpg"
    shutil.copy(first, folder / "copy_of_first.jpg")
    summary = ingest([folder], settings=settings, processor=processor, progress=False)
    assert (summary.done, summary.duplicate, summary.failed) == (N_IMAGES, 1, 0)
    again = ingest([folder], settings=settings, processor=processor, progress=False)
    assert (again.done, again.duplicate, again.failed) == (0, N_IMAGES + 1, 0)
    with session_scope(settings.database_url) as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Asset)) == N_IMAGES
        asset_id = s.scalar(
            sa.select(AssetSource.asset_id).where(AssetSource.uri == str(first.resolve()))
        )
        uris = set(s.scalars(sa.select(AssetSource.uri).where(AssetSource.asset_id == asset_id)))
        assert uris == {str(first.resolve()), str((folder / "copy_of_first.jpg").resolve())}


def test_every_format_is_ingested(tmp_path, micro):
    settings = Settings(
        home=tmp_path / "home",
        database={"url": f"sqlite:///{tmp_path / 'db.sqlite3'}"},
        model={"name": "test_micro", "device": "cpu"},
    )
    processor = AssetProcessor(settings, loaded=micro, model_id=MODEL_ID)
    folder = tmp_path / "formats"
    folder.mkdir()
    picture = photo_like(80, 60, seed=42)
    names = {
        "JPEG": "a.jpg", "PNG": "b.png", "WEBP": "c.webp", "GIF": "d.gif", "BMP": "e.bmp",
        "TIFF": "f.tiff", "HEIF": "g.heic", "AVIF": "h.avif",
    }  # fmt: skip
    for fmt, name in names.items():
        (folder / name).write_bytes(encode(picture, fmt))
    summary = ingest([folder], settings=settings, processor=processor, progress=False)
    assert summary.failures == [] and summary.done == len(names)
    with session_scope(settings.database_url) as s:
        mimes = set(s.scalars(sa.select(Asset.mime)))
    assert mimes == {
        "image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp", "image/tiff",
        "image/heic", "image/avif",
    }  # fmt: skip


def test_walk_include_exclude(tmp_path):
    for rel in [
        "a.jpg",
        "b.PNG",
        "notes.txt",
        "raw/c.tif",
        "raw/deep/d.tif",
        ".git/e.jpg",
        "x/f.jpg",
    ]:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")

    def names(**kw):
        return sorted(p.relative_to(tmp_path).as_posix() for p in walk_files([tmp_path], **kw))

    assert names(exclude=[".git"]) == ["a.jpg", "b.PNG", "raw/c.tif", "raw/deep/d.tif", "x/f.jpg"]
    assert names(include=["raw/**/*.tif"]) == ["raw/c.tif", "raw/deep/d.tif"]
    assert names(include=["*.jpg"], exclude=["x/*", ".git"]) == ["a.jpg"]
    errors = []
    assert list(walk_files([tmp_path / "missing"], on_error=errors.append)) == []
    assert errors and "no such" in errors[0].reason


def test_url_ingest_and_private_address_refusal(tmp_path, micro):
    body = encode(photo_like(64, 64, seed=7), "PNG")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/pic.png"
    try:
        base = {
            "home": tmp_path / "home",
            "database": {"url": f"sqlite:///{tmp_path / 'db.sqlite3'}"},
            "model": {"name": "test_micro", "device": "cpu"},
        }
        refused = Settings(**base)
        processor = AssetProcessor(refused, loaded=micro, model_id=MODEL_ID)
        summary = ingest([url], settings=refused, processor=processor, progress=False)
        assert summary.failed == 1 and "not a public address" in summary.failures[0].reason
        allowed = Settings(**base, ingest={"allow_private_urls": True})
        processor = AssetProcessor(allowed, loaded=micro, model_id=MODEL_ID)
        summary = ingest([url], settings=allowed, processor=processor, progress=False)
        assert summary.done == 1, summary.failures
        with session_scope(allowed.database_url) as s:
            assert s.scalar(sa.select(AssetSource.uri)) == url
            assert s.scalar(sa.select(Asset.width)) == 64
    finally:
        server.shutdown()
        server.server_close()


def test_reindex_after_model_change_is_resumable(env):
    settings, processor, folder = env
    ingest([folder], settings=settings, processor=processor, progress=False)
    assert pending_counts(settings, MODEL_ID).total == 0

    new_model = AssetProcessor(
        settings, loaded=random_model("test_micro", seed=1), model_id="new@1"
    )
    counts = pending_counts(settings, "new@1")
    assert (counts.other_model, counts.pending) == (N_IMAGES, 0)

    first = reindex(settings, limit=4, processor=new_model, progress=False)  # interrupted run
    assert (first.queued, first.done, first.failed) == (4, 4, 0)
    assert pending_counts(settings, "new@1").other_model == N_IMAGES - 4
    rest = reindex(settings, processor=new_model, progress=False)  # resumes
    assert (rest.queued, rest.done) == (N_IMAGES - 4, N_IMAGES - 4)
    assert pending_counts(settings, "new@1").total == 0
    with session_scope(settings.database_url) as s:
        assert set(s.scalars(sa.select(Asset.model_name))) == {"new@1"}
        # Scores now refer to the new model's tags only.
        models = set(s.scalars(sa.select(Tag.model_name).join(AssetTag, AssetTag.tag_id == Tag.id)))
        assert models == {"new@1"}
    assert len(TokenStore(token_store_path(settings, "new@1"), read_only=True)) == N_IMAGES
    assert VectorIndex.load(index_path(settings.index_dir, "new@1")).count == N_IMAGES
    assert reindex(settings, processor=new_model, progress=False).queued == 0


def test_dispatcher_groups_by_size_and_time():
    sent: list[list[int]] = []
    with Dispatcher(sent.append, batch_size=3, timeout_ms=100) as dispatch:
        for i in range(7):
            dispatch.add(i)
        assert sent == [[0, 1, 2], [3, 4, 5]]  # full groups leave at once
        deadline = threading.Event()
        deadline.wait(0.4)
        assert sent[-1] == [6]  # the straggler left after the timeout, before close()
        dispatch.add(7)
    assert sent == [[0, 1, 2], [3, 4, 5], [6], [7]]


def test_cli_ingest_and_jobs(tmp_path, monkeypatch):
    from api.cli import app  # the root group: its handler turns errors into one line
    from indexer.settings import get_settings

    folder = tmp_path / "in"
    write_images(folder, 3)
    whole = (folder / "img_0000.jpg").read_bytes()
    (folder / "broken.jpg").write_bytes(whole[: len(whole) // 2])  # truncated JPEG
    monkeypatch.setenv("RAMDEX_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RAMDEX_DATABASE__URL", f"sqlite:///{tmp_path / 'cli.sqlite3'}")
    monkeypatch.setenv("RAMDEX_BROKER__URL", "")
    monkeypatch.setenv("RAMDEX_MODEL__NAME", "test_micro")
    monkeypatch.setenv("RAMDEX_MODEL__DEVICE", "cpu")
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        result = runner.invoke(app, ["ingest", str(folder), "--exclude", "nothing*"])
        assert result.exit_code == 1, result.output  # one source failed
        assert "3 done, 0 duplicate, 1 failed" in result.output
        assert "broken.jpg" in result.output and "truncated" in result.output
        jobs = runner.invoke(app, ["jobs"])
        assert jobs.exit_code == 0 and "ingest" in jobs.output and "done" in jobs.output
        dry = runner.invoke(app, ["reindex", "--dry-run", "--json"])
        assert dry.exit_code == 0 and '"total": 0' in dry.output
        worker = runner.invoke(app, ["worker"])
        assert worker.exit_code == 2 and "no broker configured" in worker.output
        # Unusable model or database: one line saying what is wrong, exit 2, no traceback.
        monkeypatch.setenv("RAMDEX_MODEL__CHECKPOINT", str(tmp_path / "missing.pth"))
        get_settings.cache_clear()
        no_model = runner.invoke(app, ["ingest", str(folder)])
        assert no_model.exit_code == 2 and "missing.pth" in no_model.output, no_model.output
        monkeypatch.delenv("RAMDEX_MODEL__CHECKPOINT")
        monkeypatch.setenv("RAMDEX_DATABASE__URL", "postgresql+psycopg://nobody@127.0.0.1:9/none")
        get_settings.cache_clear()
        for command in (["ingest", str(folder)], ["reindex"]):
            down = runner.invoke(app, command)
            assert down.exit_code == 2, down.output
            assert "error: database unavailable" in down.output and "Traceback" not in down.output
    finally:
        get_settings.cache_clear()


def test_missing_model_gives_a_clear_error(tmp_path):
    from indexer.models import ModelNotAvailableError, load_configured_model

    settings = Settings(
        home=tmp_path, model={"name": "ram_plus_swin_large_14m", "cache_dir": tmp_path}
    )
    with pytest.raises(ModelNotAvailableError, match="ramdex models download"):
        load_configured_model(settings)
    with pytest.raises(ModelNotAvailableError, match="RAMDEX_MODEL__CHECKPOINT"):
        load_configured_model(Settings(home=tmp_path, model={"name": "no_such_model"}))


def test_thumbnail_bytes_are_a_valid_image(env):
    settings, processor, folder = env
    ingest([folder / "img_0001.jpg"], settings=settings, processor=processor, progress=False)
    with session_scope(settings.database_url) as s:
        path = s.scalar(sa.select(Asset.thumbnail_path))
    image = Image.open(io.BytesIO(Path(path).read_bytes()))
    image.load()
    assert image.size == (96, 72)  # smaller than the box: not enlarged


def test_split_preprocessing_equals_the_reference_preprocessor(tmp_path, micro):
    settings = Settings(home=tmp_path, database={"url": f"sqlite:///{tmp_path / 'p.db'}"})
    processor = AssetProcessor(settings, loaded=micro, model_id=MODEL_ID)
    images = [photo_like(97, 61, seed=1), photo_like(40, 90, seed=2).convert("L")]
    batch = processor.normalize([processor.model_input(im) for im in images])
    reference = torch.stack([processor.engine.preprocess(im) for im in images])
    assert torch.equal(batch, reference)


def test_transparent_png_scores_equal_the_reference_preprocessing(env, micro, tmp_path):
    """Ingest feeds the model what `ramdex tag` does (alpha dropped, not composited)."""
    settings, processor, _ = env
    rng = np.random.default_rng(3)
    rgba = rng.integers(0, 255, (72, 96, 4), dtype=np.uint8)
    rgba[..., 3] = np.where(rng.random((72, 96)) < 0.5, 0, 255)  # half the pixels transparent
    folder = tmp_path / "rgba"
    folder.mkdir()
    path = folder / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(path)
    summary = ingest([folder], settings=settings, processor=processor, progress=False)
    assert summary.done == 1
    (ref,) = TaggingEngine(micro, device="cpu", decode_workers=0).tag_files([path])
    with session_scope(settings.database_url) as s:
        tag_ids = {t.position: t.id for t in s.scalars(sa.select(Tag)).all()}
        stored = dict(
            s.execute(
                sa.select(AssetTag.tag_id, AssetTag.score).where(
                    AssetTag.asset_id == summary.asset_ids[0]
                )
            ).all()
        )
    for position, p in enumerate(ref.probabilities):
        if p >= settings.index.score_floor:
            assert stored[tag_ids[position]] == pytest.approx(p, abs=1e-5)


def test_broker_visibility_timeout_is_a_validated_setting(monkeypatch):
    import pydantic
    from celery import Celery

    from indexer.celery_app import configure

    monkeypatch.setenv("RAMDEX_BROKER__VISIBILITY_TIMEOUT_S", "90")
    settings = Settings(broker={"url": "redis://127.0.0.1:6379/9"})
    assert settings.broker.visibility_timeout_s == 90
    options = configure(Celery("t"), settings).conf.broker_transport_options
    assert options["visibility_timeout"] == 90 and options["unacked_restore_interval"] == 9
    assert Settings().broker.visibility_timeout_s == 90
    monkeypatch.delenv("RAMDEX_BROKER__VISIBILITY_TIMEOUT_S")
    assert Settings().broker.visibility_timeout_s == 300
    with pytest.raises(pydantic.ValidationError, match="visibility_timeout_s"):
        Settings(broker={"visibility_timeout_s": 0})


# --------------------------------------------------------------------------------------------
# Recovery: leases, resumed runs, truthful jobs, the reconciler's cost


def _cli_env(tmp_path: Path, url: str, **extra: str) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("RAMDEX_")}
    env.update(
        RAMDEX_HOME=str(tmp_path / "home"),
        RAMDEX_DATABASE__URL=url,
        RAMDEX_BROKER__URL="",
        RAMDEX_MODEL__NAME="test_micro",
        RAMDEX_MODEL__DEVICE="cpu",
        RAMDEX_MODEL__BATCH_SIZE="4",
        RAMDEX_INGEST__DECODE_WORKERS="1",
        OMP_NUM_THREADS="1",
        **extra,
    )
    return env


def test_killed_ingest_is_finished_by_the_next_run_and_counted_as_resumed(tmp_path, micro):
    """A real `ramdex ingest` (embedded) SIGKILLed after its first batch: running it again
    finishes what was left at once (no waiting for leases: the dead process is on this machine),
    calls those sources resumed, never duplicates, and the killed run's job ends done."""
    import signal
    import subprocess
    import sys
    import time

    url = f"sqlite:///{tmp_path / 'killed.sqlite3'}"
    folder = tmp_path / "photos"
    write_images(folder, 12)
    env = _cli_env(tmp_path, url, RAMDEX_DEBUG_PAUSE_BEFORE_COMMIT_S="1.0")
    ramdex = str(Path(sys.executable).parent / "ramdex")
    cli = subprocess.Popen(
        [ramdex, "ingest", str(folder)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 120
        done = 0
        while done == 0:  # wait for the first committed batch
            assert cli.poll() is None, cli.stderr.read().decode() if cli.stderr else ""
            assert time.monotonic() < deadline, "the first batch never committed"
            time.sleep(0.1)
            try:
                with session_scope(url) as s:
                    done = s.scalar(sa.select(sa.func.count()).where(Asset.status == "done"))
            except sa.exc.OperationalError:
                continue  # the schema is still being created
        cli.send_signal(signal.SIGKILL)
        cli.wait(30)
    finally:
        if cli.poll() is None:
            cli.kill()
    with session_scope(url) as s:
        states = dict(
            s.execute(sa.select(Asset.status, sa.func.count()).group_by(Asset.status)).all()
        )
        (killed_job,) = s.execute(sa.select(Job.id, Job.status, Job.total)).all()
    done_before = states.get("done", 0)
    unfinished = states.get("pending", 0) + states.get("processing", 0)
    assert done_before > 0 and unfinished > 0, states

    settings = Settings(
        home=tmp_path / "home",
        database={"url": url},
        broker={"url": ""},
        model={"name": "test_micro", "device": "cpu", "batch_size": 4},
    )
    processor = AssetProcessor(settings, loaded=micro, model_id=MODEL_ID)
    again = ingest([folder], settings=settings, processor=processor, progress=False)
    assert (again.duplicate, again.resumed, again.failed) == (done_before, unfinished, 0)
    assert again.done == 12 - done_before
    with session_scope(url) as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Asset)) == 12
        assert set(s.scalars(sa.select(Asset.status))) == {"done"}
        assert max(s.scalars(sa.select(Asset.attempts))) <= 2  # killed once, finished once
        old = s.get(Job, killed_job.id)
        if killed_job.status == "running":  # registration had ended: the job completes
            assert (old.status, old.done, old.failed) == ("done", old.total, 0)
        else:  # killed while registering: failed, with the reason
            assert old.status == "failed" and "registration stopped" in old.error
    assert len(TokenStore(token_store_path(settings, MODEL_ID), read_only=True)) == 12


def test_empty_folder_says_no_images_were_found(tmp_path, monkeypatch):
    from api.cli import app
    from indexer.settings import get_settings

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no pictures here")
    for key, value in _cli_env(tmp_path, f"sqlite:///{tmp_path / 'e.sqlite3'}").items():
        if key.startswith("RAMDEX_"):
            monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["ingest", str(tmp_path / "empty")])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1, result.output
    assert "no images found" in result.output and "--include" in result.output


def test_jobs_count_sources_that_failed_before_becoming_assets(env):
    """A refused URL has no asset, yet the job counts it: not "done, 0 failed"."""
    settings, processor, folder = env
    whole = (folder / "img_0000.jpg").read_bytes()
    (folder / "broken.jpg").write_bytes(whole[:300])  # an asset that fails in processing
    refused = "http://127.0.0.1:9/private.jpg"  # a private address: refused, no bytes
    summary = ingest([folder, refused], settings=settings, processor=processor, progress=False)
    assert (summary.done, summary.failed) == (N_IMAGES, 2)
    with session_scope(settings.database_url) as s:
        job = s.get(Job, summary.job_id)
        assert (job.status, job.total, job.done, job.failed) == (
            "done",
            N_IMAGES + 2,
            N_IMAGES,
            2,
        )
        assert job.params["register_failed"] == 1
        assert "not a public address" in job.params["failures"][0]["reason"]


def test_orphaned_work_is_recovered_by_the_next_run(env):
    """Work nobody holds any more is finished by whichever run starts next, and credited to the
    jobs that wait for it: a registration whose process died (here: a pid of this machine that
    does not run), a lease that ran out on another machine, a message lost with its broker."""
    from indexer.db.leases import db_in
    from indexer.ingest.lease import local_prefix
    from indexer.ingest.register import Registrar
    from indexer.jobs import start_job

    settings, processor, folder = env
    url = settings.database_url
    ensure_schema(url)
    dead = f"{local_prefix()}999999999|1"  # no such process here
    job_id = start_job(url, "ingest", owner=dead, lease_s=3600)  # a live-looking lease
    registrar = Registrar(settings, job_id=job_id, owner=dead)
    ids = [registrar.register(p).asset_id for p in sorted(folder.glob("*.jpg"))[:3]]
    with session_scope(url) as s:
        s.execute(  # another machine's lease, run out
            sa.update(Asset)
            .where(Asset.id == ids[1])
            .values(status="processing", lease_owner="elsewhere|-|7|7", lease_until=db_in(-5))
        )
        s.execute(  # dispatched an hour ago, no message left (no queue in the embedded mode)
            sa.update(Asset)
            .where(Asset.id == ids[2])
            .values(lease_owner=None, lease_until=None, dispatched_at=db_in(-3600))
        )
    others = write_images(folder.parent / "others", 2, start=500)
    summary = ingest(others, settings=settings, processor=processor, progress=False)
    assert (summary.done, summary.recovered) == (2, 3)
    with session_scope(url) as s:
        assert set(s.scalars(sa.select(Asset.status).where(Asset.id.in_(ids)))) == {"done"}
        job = s.get(Job, job_id)
        assert job.status == "failed" and "registration stopped" in job.error
        assert (job.total, job.done) == (3, 3)  # its assets were finished and counted anyway


def test_a_job_is_done_when_another_run_finishes_its_assets(env):
    """Job A registered assets and stopped waiting; run B meets the same files and finishes
    them: A is done (its ledger was credited by B's commits), B reports them as resumed."""
    from indexer.ingest.register import Registrar
    from indexer.jobs import end_registration, get_job_view, start_job

    settings, processor, folder = env
    url = settings.database_url
    ensure_schema(url)
    job_a = start_job(url, "ingest")
    registrar = Registrar(settings, job_id=job_a)
    for path in sorted(folder.glob("*.jpg")):
        assert registrar.register(path).state == "queued"
    assert end_registration(url, job_a) == "running"
    summary = ingest([folder], settings=settings, processor=processor, progress=False)
    assert (summary.done, summary.resumed, summary.duplicate) == (N_IMAGES, N_IMAGES, 0)
    a = get_job_view(url, job_a)
    assert (a.status, a.total, a.done, a.failed) == ("done", N_IMAGES, N_IMAGES, 0)


def test_one_reconciler_at_a_time(env):
    """Every worker runs a reconciler; the service lease lets one pass run at a time and hands
    the duty over when its holder stops."""
    from indexer.ingest.reconcile import Reconciler

    settings, _, _ = env
    ensure_schema(settings.database_url)
    first, second = Reconciler(settings), Reconciler(settings)
    first.owner, second.owner = "worker-a", "worker-b"
    assert first.tick() is not None and second.tick() is None
    assert first.tick() is not None  # the holder keeps it
    first.stop()
    assert second.tick() is not None


@pytest.mark.postgres
def test_an_idle_reconciler_pass_reads_only_index_ends(tmp_path):
    """100,000 done assets in PostgreSQL and nothing to do: one reconciler pass (service lease,
    queue depth, orphan queries, quiet jobs, index staleness) costs a few milliseconds, and its
    queries are index scans."""
    import statistics
    import time

    from indexer.db.session import get_engine
    from indexer.ingest.reconcile import Reconciler
    from indexer.stores import sync_vector_index
    from tests.ingest_fixtures import redis_url_for_tests, unique_name

    with postgres_database() as url:
        ensure_schema(url)
        vector = np.ones(8, dtype="<f4").tobytes().hex()
        with get_engine(url).begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO assets (sha256, status, model_name, embedding, embedding_dim) "
                    "SELECT lpad(to_hex(g), 64, '0'), 'done', :model, decode(:vec, 'hex'), 8 "
                    "FROM generate_series(1, 100000) g"
                ),
                {"model": MODEL_ID, "vec": vector},
            )
            conn.execute(sa.text("ANALYZE assets"))
        queue = unique_name("idle")
        settings = Settings(
            home=tmp_path / "home",
            database={"url": url},
            broker={"url": redis_url_for_tests(), "model_queue": queue},
        )
        sync_vector_index(settings, MODEL_ID, 8)  # the index is up to date
        reconciler = Reconciler(settings)
        reconciler._model_id = MODEL_ID
        reports = [reconciler.tick() for _ in range(25)]
        passes = [r.elapsed_ms for r in reports[5:]]  # warm: connections open
        ticks = []
        for _ in range(20):
            started = time.perf_counter()
            reconciler.tick()
            ticks.append((time.perf_counter() - started) * 1000)
        reconciler.stop()
        assert all(r.recovered == 0 and not r.index_synced for r in reports)
        median_pass, median_tick = statistics.median(passes), statistics.median(ticks)
        print(
            f"\nidle reconciler pass over 100k assets: {median_pass:.1f} ms "
            f"(with the service lease: {median_tick:.1f} ms)"
        )
        assert median_pass < 100
        from indexer.db.asset_leases import orphaned_assets

        with session_scope(url) as s:
            compiled = []
            for query in _orphan_queries(s):
                plan = s.execute(sa.text("EXPLAIN " + query)).scalars().all()
                compiled.append("\n".join(plan))
            assert orphaned_assets(s, lease_s=60, lost_after_s=60) == []
        for plan in compiled:
            assert "Seq Scan on assets" not in plan, plan
            assert "Index" in plan, plan


def _orphan_queries(session) -> list[str]:
    """The reconciler's asset queries as SQL text with literals, for EXPLAIN."""
    return [
        "SELECT id FROM assets WHERE status IN ('pending', 'processing') AND lease_until < now() "
        "LIMIT 1000",
        "SELECT id FROM assets WHERE status = 'processing' AND lease_until IS NULL LIMIT 1000",
        "SELECT id FROM assets WHERE status = 'pending' AND lease_owner IS NULL "
        "AND dispatched_at IS NULL AND updated_at < now() - interval '60 seconds' LIMIT 1000",
        "SELECT id FROM assets WHERE status = 'pending' AND lease_owner IS NULL "
        "AND dispatched_at < now() - interval '60 seconds' LIMIT 1000",
        f"SELECT max(updated_at) FROM assets WHERE model_name = '{MODEL_ID}' AND status = 'done' "
        "AND embedding IS NOT NULL",
    ]


def test_recovery_settings_are_validated(monkeypatch):
    import pydantic

    monkeypatch.setenv("RAMDEX_INGEST__LEASE_S", "30")
    monkeypatch.setenv("RAMDEX_INGEST__STALL_TIMEOUT_S", "0")
    settings = Settings()
    assert (settings.ingest.lease_s, settings.ingest.stall_timeout_s) == (30.0, 0.0)
    assert Settings(ingest={"reconcile_interval_s": 2}).ingest.reconcile_interval_s == 2.0
    for bad in ({"lease_s": 0.5}, {"lease_s": "soon"}, {"reconcile_interval_s": 0}):
        with pytest.raises(pydantic.ValidationError, match=next(iter(bad))):
            Settings(ingest=bad)
    with pytest.raises(pydantic.ValidationError, match="stall_timeout_s"):
        Settings(ingest={"stall_timeout_s": -1})


def test_deleting_an_asset_a_job_waits_for_ends_the_job(env):
    from indexer.db.asset_repo import delete_asset
    from indexer.ingest.register import Registrar
    from indexer.jobs import end_registration, get_job_view, start_job

    settings, _, folder = env
    url = settings.database_url
    ensure_schema(url)
    job_id = start_job(url, "ingest")
    registered = Registrar(settings, job_id=job_id).register(folder / "img_0000.jpg")
    assert end_registration(url, job_id) == "running"
    with session_scope(url) as s:
        assert delete_asset(s, registered.asset_id) is not None
    job = get_job_view(url, job_id)
    assert (job.status, job.total, job.done, job.failed) == ("done", 1, 0, 1)
