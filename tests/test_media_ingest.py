"""Videos, camera RAW and animated images through the real ingest path with the demo model:
one asset per file, frames with timestamps, max-over-frames tag scores, frame keys in the token
store and FAISS, bad media failed with a reason while everything else is indexed."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from indexer.db.assets import Asset
from indexer.db.frame_repo import read_frames
from indexer.db.session import session_scope
from indexer.db.tags import AssetTag, Tag
from indexer.faiss_index import VectorIndex, index_path
from indexer.frame_keys import frame_keys
from indexer.ingest.pipeline import IngestSummary, ingest
from indexer.models import configured_model_id
from indexer.settings import Settings
from indexer.stores import open_token_store
from ram_pp.factory import DEMO_MODEL
from tests.api_support import fresh_database
from tests.media_fixtures import animated, build_dng, encode_video, scene_picture, solid

SCENES = [
    ("white background", "circle", "red"),
    ("landscape background", "square", "blue"),
    ("beige background", "star", "yellow"),
]


def _media_folder(folder: Path) -> Path:
    folder.mkdir(parents=True)
    pictures = [scene_picture(*s) for s in SCENES]
    encode_video(folder / "clip.mp4", [(p, 2.0) for p in pictures])
    (folder / "anim.gif").write_bytes(animated(pictures, "GIF", duration_ms=500))
    (folder / "shot.dng").write_bytes(build_dng(solid("blue", (256, 192)), orientation=6))
    scratch = encode_video(folder.parent / "scratch.mp4", [(pictures[0], 1.0)])
    data = scratch.read_bytes()
    (folder / "cut.mp4").write_bytes(data[: len(data) // 2])
    ftyp = int.from_bytes(data[:4], "big")
    (folder / "zero_moov.mp4").write_bytes(data[:ftyp] + b"\x00\x00\x00\x08moov")
    pictures[1].save(folder / "still.png")
    return folder


@contextlib.contextmanager
def media_archive(backend: str, tmp_path: Path) -> Iterator[tuple[Settings, IngestSummary]]:
    """The media folder ingested with the demo model on ``backend``: (settings, summary)."""
    folder = _media_folder(tmp_path / "media")
    with fresh_database(backend, tmp_path) as url:
        settings = Settings(
            home=tmp_path / "home",
            database={"url": url},
            model={"name": DEMO_MODEL, "device": "cpu", "batch_size": 4},
            broker={"url": ""},
            media={"min_interval_s": 0.5, "max_interval_s": 5.0},
        )
        yield settings, ingest([folder], settings=settings, progress=False)


@pytest.fixture(params=["sqlite", "postgresql"])
def archive(request: pytest.FixtureRequest, tmp_path: Path):
    with media_archive(request.param, tmp_path) as made:
        yield made


def _by_name(session, name: str) -> Asset:
    from indexer.db.assets import AssetSource

    return session.scalars(
        sa.select(Asset).join(AssetSource).where(AssetSource.uri.like(f"%{name}"))
    ).one()


def test_media_become_assets_with_frames(archive) -> None:
    settings, summary = archive
    assert (summary.done, summary.failed) == (4, 2), summary.failures
    reasons = {Path(f.source).name: f.reason for f in summary.failures}
    assert "moov" in reasons["cut.mp4"] and "index (moov) is empty" in reasons["zero_moov.mp4"]
    model_id = configured_model_id(settings)
    with session_scope(settings.database_url) as s:
        video = _by_name(s, "clip.mp4")
        assert (video.status, video.kind, video.mime, video.codec) == (
            "done",
            "video",
            "video/mp4",
            "h264",
        )
        assert video.duration_s == pytest.approx(6.0, abs=0.2)
        assert (video.width, video.height) == (128, 128)
        assert video.thumbnail_path and Path(video.thumbnail_path).is_file()
        frames = read_frames(s, [video.id])[video.id]
        assert [round(f.timestamp_s, 1) for f in frames] == [0.0, 2.0, 4.0]
        # The asset's tag score is the maximum over its frames (recomputed from frame rows).
        stored = dict(
            s.execute(
                sa.select(AssetTag.tag_id, AssetTag.score).where(AssetTag.asset_id == video.id)
            ).all()
        )
        best: dict[int, float] = {}
        for f in frames:
            for tag, score in zip(f.tags.tolist(), f.scores.tolist(), strict=True):
                best[tag] = max(best.get(tag, 0.0), score)
        assert stored.keys() == best.keys()
        for tag, score in best.items():
            assert stored[tag] == pytest.approx(score, abs=1e-3)  # float16 in the frame rows
        names = {t.id: t.english for t in s.scalars(sa.select(Tag))}
        assert {"circle", "square", "star"} <= {names[t] for t, v in stored.items() if v > 0.5}

        anim = _by_name(s, "anim.gif")
        assert anim.kind == "animated" and anim.status == "done"
        assert len(read_frames(s, [anim.id])[anim.id]) == 3
        raw = _by_name(s, "shot.dng")
        assert (raw.kind, raw.mime, raw.width, raw.height) == ("raw", "image/x-adobe-dng", 192, 256)
        assert read_frames(s, [raw.id]) == {}  # one picture: no frame rows
        still = _by_name(s, "still.png")
        assert still.kind is None and still.status == "done"
        assets = s.scalar(sa.select(sa.func.count()).select_from(Asset))
        assert assets == 6  # frames are not assets
        video_id, anim_id = video.id, anim.id
    # E of every frame in the token store, c of every frame in FAISS, under frame keys.
    keys = np.concatenate([frame_keys(video_id, 3), frame_keys(anim_id, 3)])
    store = open_token_store(settings, model_id)
    assert store.has(keys).all() and store.has(np.array([video_id])).all()
    index = VectorIndex.load(index_path(settings.index_dir, model_id))
    assert set(keys.tolist()) <= set(index.ids().tolist())


def test_search_returns_videos_with_their_moments(archive) -> None:
    """Tag, similar and concept search on frames: the video comes back once, with the
    timestamps of the frames that matched (the scene truth comes from the fixture)."""
    from indexer.archive import Archive
    from indexer.search import SearchRequest, SearchService

    settings, _ = archive
    with session_scope(settings.database_url) as s:
        video = _by_name(s, "clip.mp4").id
        anim = _by_name(s, "anim.gif").id
        still = _by_name(s, "still.png").id  # the video's second scene as a still picture
    with Archive(settings) as opened:
        service = SearchService(opened)
        # Tags: the square is in the second scene only (2 s in), the star in the third.
        for tag, when in (("square", 2.0), ("star", 4.0)):
            hits = {h.asset_id: h for h in service.search(SearchRequest(all=[tag])).hits}
            assert video in hits
            assert [round(f.timestamp_s, 1) for f in hits[video].frames][:1] == [when]
        # Similar to the still picture: the video's frame at 2 s is the match.
        page = service.search(SearchRequest(similar_to=still, limit=10))
        ids = [h.asset_id for h in page.hits]
        assert len(ids) == len(set(ids)) and still not in ids  # each asset once
        by_id = {h.asset_id: h for h in page.hits}
        assert round(by_id[video].frames[0].timestamp_s, 1) == 2.0
        assert round(by_id[anim].frames[0].timestamp_s, 1) == 0.5
        # Similar to the video itself: its own frames are not hits.
        page = service.search(SearchRequest(similar_to=video, limit=10))
        assert video not in [h.asset_id for h in page.hits]
        # A concept (free text) scored over the frames' E.
        page = service.search(SearchRequest(text="star", limit=10))
        by_id = {h.asset_id: h for h in page.hits}
        assert video in by_id and round(by_id[video].frames[0].timestamp_s, 1) == 4.0


def test_a_videos_own_frames_do_not_crowd_out_similar_assets(archive, monkeypatch) -> None:
    """Similar to a video: its own frames are the nearest vectors of all; they are asked for
    on top of the recall and left out, so the recall is filled with other assets' vectors
    (here a recall of 1, which the video's poster frame alone would fill: no hit at all)."""
    import indexer.search.rankings as rankings
    from indexer.archive import Archive
    from indexer.search import SearchRequest, SearchService

    settings, _ = archive
    with session_scope(settings.database_url) as s:
        video = _by_name(s, "clip.mp4").id
    monkeypatch.setattr(rankings, "RECALL", 1)
    with Archive(settings) as opened:
        page = SearchService(opened).search(SearchRequest(similar_to=video, limit=10))
    ids = [h.asset_id for h in page.hits]
    assert ids and video not in ids


def test_cli_search_says_where_in_the_video(archive, monkeypatch) -> None:
    """``ramdex search`` prints the moments of a video hit (text) and lists them (JSON)."""
    import json

    from tests.cli_support import run_ramdex

    settings, _ = archive
    monkeypatch.setenv("RAMDEX_HOME", str(settings.home))
    monkeypatch.setenv("RAMDEX_DATABASE__URL", settings.database_url)
    monkeypatch.setenv("RAMDEX_MODEL__NAME", settings.model.name)
    monkeypatch.setenv("RAMDEX_BROKER__URL", "")
    code, out = run_ramdex("search", "--all", "star")
    assert code == 0, out
    [line] = [x for x in out.splitlines() if x.rstrip().split("  [")[0].endswith("0:04.0")]
    assert "clip.mp4 at 0:04.0" in line
    code, out = run_ramdex("search", "--all", "star", "--format", "json")
    assert code == 0, out
    hits = json.loads(out)["hits"]
    video = next(h for h in hits if h["mime"] == "video/mp4")
    assert round(video["frames"][0]["timestamp_s"], 1) == 4.0
    code, out = run_ramdex("assets", "show", str(video["asset_id"]))
    assert code == 0, out
    assert "video: 6.0 s, h264" in out and "frames: " in out and "0:02.0" in out, out


def test_api_serves_video_with_ranges_and_frames(archive) -> None:
    """GET /assets/{id}/original answers Range requests (the browser seeks to #t=...), and
    POST /search hits of a video carry ``frames``."""
    from fastapi.testclient import TestClient

    from api.app import create_app
    from tests.api_support import make_keys

    settings, _ = archive
    keys = make_keys(settings.database_url)
    with session_scope(settings.database_url) as s:
        video = _by_name(s, "clip.mp4")
        video_id, size = video.id, Path(video.storage_path).stat().st_size
    with TestClient(create_app(settings)) as client:
        whole = client.get(f"/assets/{video_id}/original", headers=keys.read)
        assert whole.status_code == 200 and whole.headers["content-type"] == "video/mp4"
        assert whole.headers.get("accept-ranges") == "bytes"
        part = client.get(
            f"/assets/{video_id}/original", headers={**keys.read, "Range": "bytes=100-199"}
        )
        assert part.status_code == 206 and part.content == whole.content[100:200]
        assert part.headers["content-range"] == f"bytes 100-199/{size}"
        found = client.post("/search", json={"all": ["star"]}, headers=keys.read)
        assert found.status_code == 200, found.text
        hit = next(h for h in found.json()["hits"] if h["asset"]["id"] == video_id)
        assert round(hit["frames"][0]["timestamp_s"], 1) == 4.0
        assert 0.0 <= hit["frames"][0]["score"] <= 1.0
        # The asset itself: kind, duration, codec and its frames' moments.
        shown = client.get(f"/assets/{video_id}", headers=keys.read).json()
        assert (shown["kind"], shown["codec"]) == ("video", "h264")
        assert shown["duration_s"] == pytest.approx(6.0, abs=0.2)
        stamps = [round(f["timestamp_s"], 1) for f in shown["frames"]]
        assert stamps == sorted(stamps) and {0.0, 2.0, 4.0} <= set(stamps)
