"""Watched folders, on PostgreSQL and SQLite: the scheduler (as ``ramdex worker`` and an
embedded ``ramdex serve`` run it, here in a thread of the test process) picks up a new file
within seconds without a manual step, reads a file still being written only once complete,
and marks a deleted file gone (its asset stays). Real watchdog events on a real folder; the
model is the tiny random ``test_micro``.
"""

from __future__ import annotations

import hashlib
import time

import pytest
import sqlalchemy as sa

from indexer.db.assets import Asset
from indexer.db.session import session_scope
from indexer.sources.manage import add_source
from indexer.sources.scheduler import SourceScheduler
from indexer.sources.watch import Debouncer
from ram_pp.factory import random_model
from tests.sources_support import (
    collection_assets,
    image_bytes,
    make_processor,
    objects_of,
    source_settings,
    wait_until,
)

pytest_plugins = ["tests.db_fixtures"]


@pytest.fixture(scope="module")
def micro():
    return random_model("test_micro", seed=0)


def _asset_by_sha(url: str, digest: str) -> Asset | None:
    with session_scope(url) as session:
        row = session.scalars(sa.select(Asset).where(Asset.sha256 == digest)).one_or_none()
        if row is not None:
            session.expunge(row)
        return row


def test_watched_folder_ingests_new_files_and_marks_deleted_ones_gone(db_url, tmp_path, micro):
    folder = tmp_path / "inbox"
    folder.mkdir()
    (folder / "first.jpg").write_bytes(image_bytes(1))
    settings = source_settings(tmp_path / "home", db_url, tick_s=0.5, settle_s=0.6)
    proc = make_processor(settings, micro)
    url = settings.database_url
    view = add_source(settings, str(folder), watch=True, interval="1h")
    scheduler = SourceScheduler(settings, processor=lambda: proc).start()
    try:
        # Watching starts with a full scan: what was there before is ingested.
        wait_until(lambda: "first.jpg" in objects_of(url, view.id))

        # A new file, copied in at once: done within seconds, no command run.
        data = image_bytes(2)
        started = time.monotonic()
        (folder / "sub").mkdir()
        (folder / "sub" / "new.jpg").write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        asset = wait_until(
            lambda: (a := _asset_by_sha(url, digest)) is not None and a.status == "done" and a
        )
        assert time.monotonic() - started < 8.0
        assert asset.id in collection_assets(url, view.collection_id)
        # Not copied: the asset's original is the watched file itself.
        assert asset.storage_path == str((folder / "sub" / "new.jpg").resolve())

        # A file written slowly, in chunks: never read half-written.
        slow = image_bytes(3)
        path = folder / "slow.jpg"
        with open(path, "wb") as out:
            for start in range(0, len(slow), len(slow) // 4 + 1):
                out.write(slow[start : start + len(slow) // 4 + 1])
                out.flush()
                time.sleep(0.35)
        done = wait_until(
            lambda: (
                (a := _asset_by_sha(url, hashlib.sha256(slow).hexdigest())) is not None
                and a.status == "done"
            )
        )
        assert done
        with session_scope(url) as session:
            assert session.scalar(sa.select(sa.func.count()).select_from(Asset)) == 3
            assert not session.scalars(sa.select(Asset.error).where(Asset.status == "failed")).all()
        assert objects_of(url, view.id)["slow.jpg"].size == len(slow)

        # Deleted: gone from the source within seconds; the asset stays.
        (folder / "first.jpg").unlink()
        gone = wait_until(lambda: objects_of(url, view.id)["first.jpg"].gone_at)
        assert gone is not None
        first = objects_of(url, view.id)["first.jpg"].asset_id
        with session_scope(url) as session:
            assert session.get(Asset, first) is not None
    finally:
        scheduler.stop()
    assert not scheduler.holding


def test_debouncer_waits_for_a_stable_file(tmp_path):
    path = tmp_path / "f.jpg"
    path.write_bytes(b"a")
    bounce = Debouncer(settle_s=0.3)
    bounce.touch(path)
    assert bounce.ready() == []  # too soon
    time.sleep(0.2)
    with open(path, "ab") as out:  # still being written: the wait starts again
        out.write(b"b")
    assert bounce.ready() == []
    time.sleep(0.2)
    assert bounce.ready() == []
    time.sleep(0.2)
    assert bounce.ready() == [path] and len(bounce) == 0
    missing = tmp_path / "gone.jpg"
    bounce.touch(missing)  # a deletion settles like a write
    time.sleep(0.35)
    assert bounce.ready() == [missing]
