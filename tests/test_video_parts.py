"""Long videos split into time-range parts that several workers share (docs/media.md).

- the plan: ranges cover the indexed length, frame slices are disjoint and bounded;
- in one process (the part task's body called directly, as a worker would, in any order): the
  asset ends done only when its last part does, with every tag's maximum over its frames, the
  poster frame's c and E, frames inside their parts' ranges; a duplicate message neither splits
  it again nor runs a part twice; a part with nothing to decode fails alone; a file replaced by
  garbage under the parts fails the asset with the reason;
- real Celery workers on Redis and PostgreSQL: two workers share one video's parts; one is
  killed (SIGKILL) in the middle of a part, and the reconciler of the other sends that part
  again; the asset ends done, each frame once.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from indexer.db.assets import Asset
from indexer.db.frame_repo import read_frames
from indexer.db.jobs import JobKind
from indexer.db.session import session_scope
from indexer.db.tags import AssetTag
from indexer.db.vectors import decode_vector
from indexer.db.video_parts import VideoPart, part_outcomes
from indexer.frame_keys import frame_key
from indexer.ingest.dispatch import dispatch
from indexer.ingest.process import AssetProcessor
from indexer.ingest.register import Registrar
from indexer.ingest.video_parts import plan_parts, run_video_part
from indexer.jobs import end_registration, start_job, wait_for_job
from indexer.settings import MediaSettings, Settings
from indexer.stores import ensure_schema, token_store_path
from indexer.token_store import TokenStore
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
)
from tests.media_fixtures import encode_video, scene_picture

MODEL_ID = "test_micro@random"
SCENES = [
    ("white background", "circle", "red"),
    ("landscape background", "square", "blue"),
    ("beige background", "star", "yellow"),
]


@pytest.fixture(scope="module")
def micro():
    return random_model("test_micro", seed=0)


def _video(path: Path, seconds_per_scene: float = 4.0) -> Path:
    return encode_video(path, [(scene_picture(*s), seconds_per_scene) for s in SCENES])


def _register(settings: Settings, paths: list[Path]) -> tuple[int, list[int]]:
    url = settings.database_url
    job_id = start_job(url, JobKind.INGEST)
    registrar = Registrar(settings, job_id=job_id)
    ids = [registrar.register(p).asset_id for p in paths]
    end_registration(url, job_id)
    return job_id, ids  # type: ignore[return-value]


def test_plan_covers_the_length_with_bounded_disjoint_frame_slices() -> None:
    media = MediaSettings(split_s=600.0, max_frames=64, max_duration_s=4 * 3600.0)
    assert plan_parts(599.0, media) is None and plan_parts(None, media) is None
    plans = plan_parts(3 * 3600.0, media)
    assert plans is not None and len(plans) == 18
    assert plans[0].start_s == 0.0 and plans[-1].end_s == pytest.approx(3 * 3600.0)
    assert all(a.end_s == pytest.approx(b.start_s) for a, b in zip(plans, plans[1:], strict=False))
    slices = [range(p.first_idx, p.first_idx + p.max_frames) for p in plans]
    assert all(a.stop <= b.start for a, b in zip(slices, slices[1:], strict=False))
    assert sum(p.max_frames for p in plans) <= media.max_frames
    # 10 hours: indexed over max_duration_s only, never more parts than frames.
    long = plan_parts(10 * 3600.0, media)
    assert long is not None and long[-1].end_s == pytest.approx(4 * 3600.0)
    few = plan_parts(10 * 3600.0, MediaSettings(split_s=60.0, max_frames=8))
    assert few is not None and len(few) == 8 and all(p.max_frames == 1 for p in few)


@pytest.fixture
def in_process(tmp_path: Path, micro):
    """A processor that splits (as a worker's does), SQLite, sending parts to a real Redis
    queue nobody consumes: the test runs each part's task body itself."""
    settings = Settings(
        home=tmp_path / "home",
        database={"url": f"sqlite:///{tmp_path / 'parts.sqlite3'}"},
        broker={
            "url": redis_url_for_tests(),
            "model_queue": unique_name("rdxv") + ".model",
            "default_queue": unique_name("rdxv") + ".default",
        },
        ingest={"decode_workers": 1},
        media={"split_s": 4.0, "min_interval_s": 0.5, "max_interval_s": 2.0, "max_frames": 12},
    )
    ensure_schema(settings.database_url)
    proc = AssetProcessor(settings, loaded=micro, model_id=MODEL_ID)
    proc.split_videos = True
    try:
        yield settings, proc
    finally:
        cleanup_redis(settings)


def _status(settings: Settings, asset_id: int) -> tuple[str, str | None]:
    with session_scope(settings.database_url) as s:
        row = s.execute(sa.select(Asset.status, Asset.error).where(Asset.id == asset_id)).one()
    return row.status, row.error


def test_parts_in_any_order_make_one_asset(in_process, tmp_path: Path) -> None:
    settings, proc = in_process
    job_id, [asset_id] = _register(settings, [_video(tmp_path / "long.mp4")])
    outcome = proc.process([asset_id])
    assert outcome.done == [] and outcome.failed == []  # split, nothing decoded here
    assert outcome.split == [asset_id] and outcome.to_dict()["split"] == 1
    with session_scope(settings.database_url) as s:
        parts = part_outcomes(s, asset_id)
        plans = s.execute(
            sa.select(VideoPart.part, VideoPart.start_s, VideoPart.end_s, VideoPart.first_idx)
            .where(VideoPart.asset_id == asset_id)
            .order_by(VideoPart.part)
        ).all()
    assert [p.status for p in parts] == ["pending"] * 3
    assert _status(settings, asset_id)[0] == "processing"

    # A duplicate process_assets message while the parts run: not split again.
    again = proc.process([asset_id])
    assert again.skipped == [asset_id]
    assert run_video_part(proc, asset_id, 2).status == "done"
    assert run_video_part(proc, asset_id, 0).status == "done"
    assert _status(settings, asset_id)[0] == "processing"  # part 1 is still to run
    last = run_video_part(proc, asset_id, 1)
    assert (last.status, last.finished_asset) == ("done", "done")
    assert run_video_part(proc, asset_id, 1).status == "skipped"  # a duplicate part message
    assert wait_for_job(settings.database_url, job_id, timeout_s=5).status == "done"

    with session_scope(settings.database_url) as s:
        frames = read_frames(s, [asset_id])[asset_id]
        asset = s.get(Asset, asset_id)
        scores = dict(
            s.execute(
                sa.select(AssetTag.tag_id, AssetTag.score).where(AssetTag.asset_id == asset_id)
            ).all()
        )
        poster = s.execute(
            sa.text("SELECT idx, embedding, embedding_dim FROM asset_frames WHERE asset_id = :a"),
            {"a": asset_id},
        ).all()
        assert asset.kind == "video" and asset.duration_s == pytest.approx(12.0, abs=0.2)
        assert asset.thumbnail_path and Path(asset.thumbnail_path).is_file()
        asset_c = decode_vector(asset.embedding, asset.embedding_dim)
    # Every part found frames inside its own range and its own slice of indices.
    for part, start, end, first in plans:
        mine = [f for f in frames if first <= f.idx < first + 4]
        assert mine, part
        assert all(start - 1e-6 <= f.timestamp_s < end + 1e-6 for f in mine), (part, mine)
    # The asset's tags are every tag's maximum over its frames (frames keep float16 scores).
    best: dict[int, float] = {}
    for f in frames:
        for tag, value in zip(f.tags.tolist(), f.scores.tolist(), strict=True):
            best[tag] = max(best.get(tag, 0.0), value)
    assert set(scores) == set(best)
    assert all(abs(scores[t] - best[t]) < 2e-3 for t in scores)
    # Its c and E are the poster frame's (part 0's, the first part that found frames).
    poster_idx = part_outcomes_poster(settings, asset_id)
    [(_, blob, dim)] = [r for r in poster if r.idx == poster_idx]
    assert np.allclose(asset_c, decode_vector(blob, dim))
    store = TokenStore(token_store_path(settings, MODEL_ID), read_only=True)
    keys = [frame_key(asset_id, f.idx) for f in frames]
    assert store.has(np.array([asset_id, *keys])).all()
    assert np.array_equal(store.get([asset_id]), store.get([frame_key(asset_id, poster_idx)]))


def part_outcomes_poster(settings: Settings, asset_id: int) -> int:
    with session_scope(settings.database_url) as s:
        first = next(o for o in part_outcomes(s, asset_id) if o.frames)
    assert first.poster_idx is not None
    return first.poster_idx


def test_a_part_that_fails_leaves_the_others(in_process, tmp_path: Path) -> None:
    """A WebM cut off in its last third: the last part has nothing to decode and fails with a
    reason; the asset is done with the frames of the first two."""
    settings, proc = in_process
    source = encode_video(
        tmp_path / "full.webm",
        [(scene_picture(*s), 4.0) for s in SCENES],
        codec="libvpx-vp9",
    )
    data = source.read_bytes()
    cut = tmp_path / "cut.webm"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    _, [asset_id] = _register(settings, [cut])
    proc.process([asset_id])
    with session_scope(settings.database_url) as s:
        count = len(part_outcomes(s, asset_id))
    if count == 0:
        pytest.fail("the cut WebM was not split: its header lost the duration")
    results = [run_video_part(proc, asset_id, n) for n in range(count)]
    assert results[-1].status == "failed" and results[-1].reason
    assert results[-1].finished_asset == "done"
    assert results[0].status == "done"
    assert _status(settings, asset_id) == ("done", None)


def test_a_file_replaced_under_its_parts_fails_the_asset(in_process, tmp_path: Path) -> None:
    settings, proc = in_process
    path = _video(tmp_path / "replaced.mp4")
    job_id, [asset_id] = _register(settings, [path])
    proc.process([asset_id])
    with session_scope(settings.database_url) as s:
        stored = s.get(Asset, asset_id).storage_path
    Path(stored).write_bytes(b"not a video any more" * 100)  # replaced under the readers
    results = [run_video_part(proc, asset_id, n) for n in range(3)]
    assert [r.status for r in results] == ["failed"] * 3
    status, error = _status(settings, asset_id)
    assert status == "failed" and error and "video" in error
    job = wait_for_job(settings.database_url, job_id, timeout_s=5)
    assert (job.status, job.failed) == ("done", 1)


# --------------------------------------------------------------------------------------------
# Real workers


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.slow
def test_two_workers_share_a_video_and_survive_a_kill(tmp_path: Path) -> None:
    with postgres_database() as db_url:
        ensure_schema(db_url)
        env = stack_env(tmp_path / "home", db_url, redis_url_for_tests(), unique_name("rdxv"))
        env.update(
            {
                "RAMDEX_BROKER__VISIBILITY_TIMEOUT_S": "3",
                "RAMDEX_INGEST__LEASE_S": "4",
                "RAMDEX_INGEST__REDISPATCH_AFTER_S": "4",
                "RAMDEX_INGEST__RECONCILE_INTERVAL_S": "1",
                "RAMDEX_MEDIA__SPLIT_S": "4",
                "RAMDEX_MEDIA__MAX_FRAMES": "12",
                "RAMDEX_MEDIA__MIN_INTERVAL_S": "0.5",
                "RAMDEX_MEDIA__MAX_INTERVAL_S": "2",
            }
        )
        settings = settings_from_env(env)
        queues = f"{settings.broker.model_queue},{settings.broker.default_queue}"
        workers = []
        try:
            # The doomed worker pauses 60 s before committing a part: it is killed there.
            doomed = start_worker(
                worker_env(env, RAMDEX_DEBUG_PAUSE_BEFORE_COMMIT_S="60"),
                queues,
                tmp_path / "doomed.log",
                unique_name("doomed"),
            )
            workers.append(doomed)
            doomed.wait_ready()
            job_id, [asset_id] = _register(settings, [_video(tmp_path / "shared.mp4")])
            dispatch(settings, [asset_id], None)
            deadline = time.monotonic() + 60
            while "ramdex.video_part" not in doomed.log() or not re.search(
                r"video_part\[[0-9a-f-]+\] received", doomed.log()
            ):
                assert time.monotonic() < deadline, doomed.log()[-3000:]
                time.sleep(0.2)
            steady = start_worker(
                worker_env(env), queues, tmp_path / "steady.log", unique_name("steady")
            )
            workers.append(steady)
            steady.wait_ready()
            # Both take parts: the doomed one holds one (paused), the steady one the others.
            deadline = time.monotonic() + 60
            while "video_part" not in steady.log() or " succeeded" not in steady.log():
                assert time.monotonic() < deadline, steady.log()[-3000:]
                time.sleep(0.2)
            doomed.kill()
            job = wait_for_job(db_url, job_id, poll_s=0.2, timeout_s=120)
            assert job.status == "done", steady.log()[-4000:]
            assert (job.done, job.failed) == (1, 0)
            with session_scope(db_url) as s:
                parts = part_outcomes(s, asset_id)
                frames = read_frames(s, [asset_id])[asset_id]
                assert s.get(Asset, asset_id).status == "done"
            assert [p.status for p in parts] == ["done"] * len(parts) and len(parts) == 3
            held = re.findall(r"video_part\[([0-9a-f-]+)\] received", doomed.log())
            assert held and not re.search(r"video_part\[[0-9a-f-]+\] succeeded", doomed.log())
            idx = [f.idx for f in frames]
            assert len(idx) == len(set(idx)) and len(idx) >= 3
            store = TokenStore(token_store_path(settings, MODEL_ID), read_only=True)
            ids = store.ids().tolist()
            assert len(ids) == len(set(ids)) == len(idx) + 1  # each frame once, plus the asset
        finally:
            for worker in workers:
                worker.stop()
            cleanup_redis(settings)


def test_a_rescore_with_fewer_frames_drops_the_others_tokens(tmp_path: Path, micro) -> None:
    """Re-scored with fewer frames (an unsplit, embedded run here), the frames it no longer
    keeps lose their token records too, so concept search cannot meet them."""

    def processor(max_frames: int) -> AssetProcessor:
        settings = Settings(
            home=tmp_path / "home",
            database={"url": f"sqlite:///{tmp_path / 'rescore.sqlite3'}"},
            broker={"url": ""},
            ingest={"decode_workers": 1},
            media={"min_interval_s": 0.5, "max_interval_s": 2.0, "max_frames": max_frames},
        )
        ensure_schema(settings.database_url)
        return AssetProcessor(settings, loaded=micro, model_id=MODEL_ID)

    first = processor(12)
    _, [asset_id] = _register(first.settings, [_video(tmp_path / "v.mp4", 2.0)])
    assert first.process([asset_id]).done == [asset_id]
    store = TokenStore(token_store_path(first.settings, MODEL_ID), read_only=True)
    before = sorted(store.ids().tolist())
    assert len(before) >= 3  # the asset and its frames
    again = processor(1)
    assert again.process([asset_id], force=True).done == [asset_id]
    store.refresh()
    with session_scope(again.settings.database_url) as s:
        frames = read_frames(s, [asset_id])[asset_id]
    assert sorted(store.ids().tolist()) == sorted(
        [asset_id, *(frame_key(asset_id, f.idx) for f in frames)]
    )
    assert len(frames) == 1
