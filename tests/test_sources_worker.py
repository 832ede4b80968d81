"""Sources with real workers: a ``celery worker`` process (as ``ramdex worker`` runs it) on the
real Redis broker and PostgreSQL runs the sources scheduler itself. An S3 prefix and a watched
folder are added from here and nothing else is run: the worker scans the prefix, watches the
folder, and its model queue tags what it registered, reading the S3 originals back from the
object store. The object store is moto's S3 server on loopback (tests/s3_support.py), standing
in for AWS S3 or MinIO.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from indexer.db.assets import Asset
from indexer.db.session import session_scope
from indexer.sources.manage import add_source
from indexer.stores import ensure_schema
from tests.ingest_fixtures import (
    cleanup_redis,
    postgres_database,
    redis_url_for_tests,
    settings_from_env,
    stack_env,
    start_worker,
    unique_name,
    worker_env,
)
from tests.s3_support import s3_client
from tests.sources_support import collection_assets, image_bytes, put_images, sha, wait_until

pytest_plugins = ["tests.s3_support"]
pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def _done(url: str) -> dict[str, Asset]:
    with session_scope(url) as session:
        rows = session.scalars(sa.select(Asset).where(Asset.status == "done")).all()
        session.expunge_all()
        return {a.sha256: a for a in rows}


def test_worker_scans_s3_and_watches_a_folder_without_a_manual_step(tmp_path, server, bucket):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    with postgres_database("ramdex_sources_worker") as db_url:
        ensure_schema(db_url)
        env = worker_env(
            stack_env(tmp_path / "home", db_url, redis_url_for_tests(), unique_name("rdx")),
            RAMDEX_SOURCES__S3_ENDPOINT_URL=server,
            RAMDEX_SOURCES__TICK_S="0.5",
            RAMDEX_SOURCES__SETTLE_S="0.5",
            RAMDEX_INGEST__READ_KEYWORDS="false",
        )
        settings = settings_from_env(env)
        settings.sources.s3_endpoint_url = server
        images = put_images(s3_client(server), bucket, ["w/a.jpg", "w/b.jpg"])
        s3_source = add_source(settings, f"s3://{bucket}/w", interval="1h")
        folder_source = add_source(settings, str(inbox), watch=True, interval="1h")
        queues = f"{settings.broker.model_queue},{settings.broker.default_queue}"
        worker = start_worker(env, queues, tmp_path / "worker.log", unique_name("w"))
        try:
            worker.wait_ready()
            want = {sha(d) for d in images.values()}
            done = wait_until(lambda: want <= set(_done(db_url)) and _done(db_url), 60)
            for key, data in images.items():
                assert done[sha(data)].storage_path == f"s3://{bucket}/{key}"
            assert {done[s].id for s in want} == collection_assets(db_url, s3_source.collection_id)
            # A file dropped into the watched folder: tagged by the worker, no command run.
            data = image_bytes(300)
            (inbox / "dropped.jpg").write_bytes(data)
            wait_until(lambda: sha(data) in _done(db_url), 30)
            assert _done(db_url)[sha(data)].id in collection_assets(
                db_url, folder_source.collection_id
            )
        except AssertionError:
            print(worker.log()[-4000:])
            raise
        finally:
            worker.stop()
            cleanup_redis(settings)
