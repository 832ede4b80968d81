"""S3 sources end to end, on PostgreSQL and SQLite: add a prefix, scan it through the embedded
ingest pipeline, re-scan incrementally, and the errors a person meets.

The object store is moto's S3 server on loopback (tests/s3_support.py): it stands in for AWS S3
or MinIO, speaking the same HTTP protocol to the same boto3 client ramdex uses in production.
The model is the tiny random ``test_micro``.
"""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from indexer.db.assets import Asset, AssetSource
from indexer.db.session import session_scope
from indexer.db.source_repo import get_source
from indexer.sources.errors import SourceError, SourceUnavailable
from indexer.sources.manage import add_source, list_views
from indexer.sources.scan import scan_source
from indexer.sources.scheduler import SourceScheduler
from ram_pp.factory import random_model
from tests.s3_support import free_port, s3_client
from tests.sources_support import (
    collection_assets,
    counting_gets,
    image_bytes,
    make_processor,
    objects_of,
    put_images,
    sha,
    source_settings,
)

pytest_plugins = ["tests.s3_support", "tests.db_fixtures"]


@pytest.fixture(scope="module")
def micro():
    return random_model("test_micro", seed=0)


@pytest.fixture
def env(db_url, server, bucket, tmp_path, micro):
    settings = source_settings(tmp_path / "home", db_url, server)
    return settings, make_processor(settings, micro), s3_client(server), bucket


def _assets(url: str) -> dict[int, Asset]:
    with session_scope(url) as session:
        rows = {a.id: a for a in session.scalars(sa.select(Asset))}
        session.expunge_all()
        return rows


def test_scan_prefix_ingests_into_its_collection(env):
    settings, proc, client, bucket = env
    url = settings.database_url
    images = put_images(client, bucket, ["cam/a.jpg", "cam/2024/b.jpg", "cam/c.JPG"])
    put_images(client, bucket, ["cam/raw/skip.jpg", "cam2/sibling.jpg", "other/x.jpg"], seed=50)
    client.put_object(Bucket=bucket, Key="cam/notes.txt", Body=b"not an image")

    view = add_source(settings, f"s3://{bucket}/cam", exclude=["raw"])
    assert view.collection == f"s3://{bucket}/cam" and view.last_status == "never"
    report = scan_source(settings, view.id, processor=proc)

    assert (report.listed, report.new, report.failed, report.error) == (3, 3, 0, None)
    objects = objects_of(url, view.id)
    assert sorted(objects) == ["2024/b.jpg", "a.jpg", "c.JPG"]  # globs; no sibling prefix
    assets = _assets(url)
    assert len(assets) == 3 and all(a.status == "done" for a in assets.values())
    assert collection_assets(url, view.collection_id) == set(assets)
    by_sha = {a.sha256: a for a in assets.values()}
    for key, data in images.items():
        asset = by_sha[sha(data)]
        rel = key.removeprefix("cam/")
        assert objects[rel].asset_id == asset.id and objects[rel].size == len(data)
        # Not copied: the original stays on S3, named by its URI; the thumbnail is local.
        assert asset.storage_path == f"s3://{bucket}/{key}"
        assert asset.thumbnail_path and asset.model_name == "test_micro@random"
    assert not (settings.media_dir / "originals").exists()
    with session_scope(url) as session:
        row = get_source(session, view.id)
        assert row.last_status == "ok" and row.last_scan_at is not None
        assert row.last_job_id == report.job_id and row.next_scan_at > row.last_scan_at
    listed = list_views_of(url)[view.id]
    assert (listed.counts.objects, listed.counts.assets, listed.counts.gone) == (3, 3, 0)


def list_views_of(url):
    with session_scope(url) as session:
        return {v.id: v for v in list_views(session)}


def test_rescan_reads_only_new_and_changed_and_marks_gone(env):
    settings, proc, client, bucket = env
    url = settings.database_url
    put_images(client, bucket, [f"p/{i}.jpg" for i in range(4)])
    view = add_source(settings, f"s3://{bucket}/p")
    scan_source(settings, view.id, processor=proc)
    before = objects_of(url, view.id)
    old_changed = before["1.jpg"].asset_id

    client.put_object(Bucket=bucket, Key="p/new.jpg", Body=image_bytes(100))
    client.put_object(Bucket=bucket, Key="p/1.jpg", Body=image_bytes(101))  # changed
    client.delete_object(Bucket=bucket, Key="p/2.jpg")
    same = client.get_object(Bucket=bucket, Key="p/3.jpg")["Body"].read()
    client.put_object(Bucket=bucket, Key="p/3.jpg", Body=same)  # re-uploaded, same bytes
    with counting_gets(settings) as gets:
        report = scan_source(settings, view.id, processor=proc)

    assert (report.new, report.changed, report.unchanged, report.gone) == (1, 1, 2, 1)
    # Only the new and the changed object were read: once to hash, once to decode.
    assert sorted(set(gets)) == ["p/1.jpg", "p/new.jpg"] and len(gets) == 4
    after = objects_of(url, view.id)
    assert after["0.jpg"].seen_at == before["0.jpg"].seen_at  # untouched row
    assert after["2.jpg"].gone_at is not None and after["2.jpg"].asset_id is not None
    assert after["1.jpg"].asset_id != old_changed
    assets = _assets(url)
    # The gone object's asset and the changed object's old asset stay in the archive.
    assert {before["2.jpg"].asset_id, old_changed} <= set(assets)
    assert all(a.status == "done" for a in assets.values()) and len(assets) == 6
    assert collection_assets(url, view.collection_id) == set(assets)
    counts = list_views_of(url)[view.id].counts
    assert (counts.objects, counts.gone, counts.failed) == (4, 1, 0)

    # Listed again with the same content: present again, nothing read.
    client.put_object(Bucket=bucket, Key="p/2.jpg", Body=image_bytes(2))
    with counting_gets(settings) as gets:
        report = scan_source(settings, view.id, processor=proc)
    assert (report.back, report.new, report.changed, gets) == (1, 0, 0, [])
    assert objects_of(url, view.id)["2.jpg"].gone_at is None


def test_copy_originals_and_bad_objects(tmp_path, server, bucket, micro, sqlite_migrated_url):
    from tests.db_fixtures import clear_tables

    clear_tables(sqlite_migrated_url)
    settings = source_settings(tmp_path / "home", sqlite_migrated_url, server)
    settings.ingest.max_bytes = 20_000
    proc = make_processor(settings, micro)
    client = s3_client(server)
    data = put_images(client, bucket, ["k/ok.jpg"])["k/ok.jpg"]
    client.put_object(Bucket=bucket, Key="k/text.jpg", Body=b"plain text, not a JPEG" * 10)
    client.put_object(Bucket=bucket, Key="k/big.jpg", Body=b"\xff\xd8\xff" + b"0" * 30_000)
    view = add_source(settings, f"s3://{bucket}/k", copy_originals=True, collection="team-a")
    with counting_gets(settings) as gets:
        report = scan_source(settings, view.id, processor=proc)
    assert "k/big.jpg" not in gets  # refused by its listed size, never read
    assert gets.count("k/ok.jpg") == 1  # copied: processing reads the media store's copy
    assert report.failed == 2 and view.collection == "team-a"
    url = settings.database_url
    with session_scope(url) as session:
        ok = session.scalars(sa.select(Asset).where(Asset.sha256 == sha(data))).one()
        assert ok.status == "done" and ok.storage_path.startswith(str(settings.media_dir))
        bad = session.scalars(sa.select(Asset).where(Asset.status == "failed")).all()
        assert len(bad) == 1 and "not a supported image" in bad[0].error
        uris = set(session.scalars(sa.select(AssetSource.uri)))
        assert f"s3://{bucket}/k/ok.jpg" in uris
    objects = objects_of(url, view.id)
    assert objects["big.jpg"].asset_id is None and "over the limit" in objects["big.jpg"].error
    counts = list_views_of(url)[view.id].counts
    assert (counts.objects, counts.assets, counts.failed) == (3, 2, 2)


def test_bad_sources_are_refused(tmp_path, server, bucket, sqlite_migrated_url, monkeypatch):
    settings = source_settings(tmp_path / "home", sqlite_migrated_url, server)
    with pytest.raises(SourceError, match="names no bucket"):
        add_source(settings, "s3://")
    with pytest.raises(SourceError, match="not a valid S3 bucket"):
        add_source(settings, "s3://A_b/x")
    with pytest.raises(SourceError, match="does not exist") as missing:
        add_source(settings, f"s3://nope-{uuid.uuid4().hex[:8]}/x")
    assert missing.value.kind == "source-not-found" and missing.value.hint
    with pytest.raises(SourceError, match="cannot be watched"):
        add_source(settings, f"s3://{bucket}/x", watch=True)
    dead = source_settings(tmp_path / "h2", sqlite_migrated_url, f"http://127.0.0.1:{free_port()}")
    with pytest.raises(SourceUnavailable, match="cannot reach"):
        add_source(dead, f"s3://{bucket}/x")
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    nocreds = source_settings(tmp_path / "h3", sqlite_migrated_url, server, read_timeout_s=3.5)
    with pytest.raises(SourceUnavailable, match="no S3 credentials") as exc:
        add_source(nocreds, f"s3://{bucket}/x")
    assert "AWS_ACCESS_KEY_ID" in (exc.value.hint or "")
    with pytest.raises(SourceError, match="does not exist"):
        add_source(settings, str(tmp_path / "no-such-folder"))


def test_unreachable_store_records_the_error_and_keeps_everything(env, tmp_path):
    settings, proc, client, bucket = env
    url = settings.database_url
    put_images(client, bucket, ["u/a.jpg", "u/b.jpg"])
    view = add_source(settings, f"s3://{bucket}/u")
    scan_source(settings, view.id, processor=proc)
    dead = source_settings(
        tmp_path / "home", url, f"http://127.0.0.1:{free_port()}", connect_timeout_s=0.5
    )
    report = scan_source(dead, view.id, processor=proc)
    assert report.error and "cannot reach" in report.error
    with session_scope(url) as session:
        row = get_source(session, view.id)
        assert row.last_status == "error" and "cannot reach" in row.last_error
        assert row.last_counts["new"] == 2  # the last good scan's figures are kept
        assert row.next_scan_at > row.last_scan_at  # retried at the next interval
    objects = objects_of(url, view.id)
    assert len(objects) == 2 and all(o.gone_at is None and o.asset_id for o in objects.values())
    report = scan_source(settings, view.id, processor=proc)  # the store is back
    assert report.error is None and report.unchanged == 2
    with session_scope(url) as session:
        assert get_source(session, view.id).last_status == "ok"


def test_scheduler_scans_due_sources_without_a_manual_step(env):
    settings, proc, client, bucket = env
    url = settings.database_url
    put_images(client, bucket, ["s/a.jpg"])
    view = add_source(settings, f"s3://{bucket}/s", interval=3600)
    scheduler = SourceScheduler(settings, processor=lambda: proc)
    other = SourceScheduler(settings, processor=lambda: proc)
    other.owner = "another-host:1:1"  # a second process: the lease keeps it idle
    try:
        reports = scheduler.tick()
        assert [r.source_id for r in reports] == [view.id] and reports[0].new == 1
        assert other.tick() == [] and not other.holding
        assert scheduler.tick() == []  # not due again before its interval
        with session_scope(url) as session:
            from indexer.db.source_repo import request_scan

            request_scan(session, view.id)
        client.put_object(Bucket=bucket, Key="s/b.jpg", Body=image_bytes(7))
        reports = scheduler.tick()
        assert [(r.source_id, r.new, r.unchanged) for r in reports] == [(view.id, 1, 1)]
    finally:
        scheduler.stop()
        other.stop()
    assert len(collection_assets(url, view.collection_id)) == 2
