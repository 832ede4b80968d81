"""Videos have their own size limit (``media.max_video_bytes``) beside ``ingest.max_bytes``,
and the video path streams: registration hashes and copies in chunks, never the whole file.

Real files throughout: videos encoded with PyAV (``tests/media_fixtures.py``), folder ingest
through the real pipeline with the demo model, uploads through the real app. The limits are
set small so that small files cross them.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from indexer.ingest.pipeline import ingest
from indexer.media import FileTooLargeError, MediaStore, SizeLimits
from indexer.settings import Settings
from indexer.sources.items import SourceItem
from indexer.sources.reading import read_item
from ram_pp.factory import DEMO_MODEL
from tests.media_fixtures import encode_video, scene_picture

STILL_LIMIT = 500  # ingest.max_bytes in these tests: every fixture file is over it


def _clip(path: Path) -> Path:
    pictures = [
        scene_picture("white background", "circle", "red"),
        scene_picture("landscape background", "square", "blue"),
    ]
    return encode_video(path, [(p, 1.0) for p in pictures])


def _folder(root: Path) -> tuple[Path, int]:
    """A folder with a video and a still picture, both over STILL_LIMIT: (folder, video size)."""
    root.mkdir(parents=True)
    video = _clip(root / "clip.mp4")
    scene_picture("beige background", "star", "yellow").save(root / "still.png")
    assert (root / "still.png").stat().st_size > STILL_LIMIT
    return root, video.stat().st_size


def _settings(home: Path, max_video_bytes: int) -> Settings:
    return Settings(
        home=home,
        database={"url": f"sqlite:///{home / 'db.sqlite'}"},
        model={"name": DEMO_MODEL, "device": "cpu", "batch_size": 4},
        broker={"url": ""},
        ingest={"max_bytes": STILL_LIMIT},
        media={"max_video_bytes": max_video_bytes, "min_interval_s": 0.5},
    )


def test_folder_ingest_applies_the_video_limit_to_videos(tmp_path: Path) -> None:
    """A video over ingest.max_bytes but under media.max_video_bytes is ingested; a still over
    ingest.max_bytes is refused naming that setting; a video over the video limit is refused
    naming media.max_video_bytes."""
    folder, size = _folder(tmp_path / "media")
    summary = ingest([folder], settings=_settings(tmp_path / "a", size + 1), progress=False)
    reasons = {Path(f.source).name: f.reason for f in summary.failures}
    assert summary.done == 1 and set(reasons) == {"still.png"}, reasons
    assert f"over the limit of {STILL_LIMIT} bytes (ingest.max_bytes)" in reasons["still.png"]

    summary = ingest([folder], settings=_settings(tmp_path / "b", size - 1), progress=False)
    reasons = {Path(f.source).name: f.reason for f in summary.failures}
    assert summary.done == 0 and set(reasons) == {"clip.mp4", "still.png"}
    assert reasons["clip.mp4"] == (
        f"video is {size} bytes, over the limit of {size - 1} bytes (media.max_video_bytes)"
    )


def _big_video(path: Path, mib: int) -> Path:
    """A file that sniffs as MP4 (a real clip's bytes first) padded to ``mib`` MiB (written in
    chunks, so the test itself holds little)."""
    head = _clip(path.with_suffix(".small.mp4")).read_bytes()
    with open(path, "wb") as out:
        out.write(head)
        block = bytes(1 << 20)
        for _ in range(mib):
            out.write(block)
    return path


def _peak(run) -> int:
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_registration_streams_a_big_video(tmp_path: Path) -> None:
    """A 48 MiB video is copied into the media store and read from a source with a few MiB of
    Python memory at most (chunks of 1 MiB), not its size."""
    big = _big_video(tmp_path / "big.mp4", 48)
    size = big.stat().st_size
    limits = SizeLimits(STILL_LIMIT, size)
    store = MediaStore(tmp_path / "store")
    got = {}
    peak = _peak(lambda: got.setdefault("stored", store.put_file(big, max_bytes=limits)))
    stored = got["stored"]
    assert (stored.mime, stored.size) == ("video/mp4", size) and stored.path.stat().st_size == size
    assert peak < 6 * (1 << 20), f"put_file held {peak / 2**20:.1f} MiB"

    item = SourceItem(
        uri=str(big), key="big.mp4", source_id=1, collection_id=1, etag=None, size=size,
        mtime=None, opener=lambda: open(big, "rb"), storage=str(big), copy=True,
    )  # fmt: skip
    peak = _peak(lambda: got.setdefault("read", read_item(item, store, limits)))
    assert got["read"].mime == "video/mp4" and got["read"].size == size
    assert peak < 6 * (1 << 20), f"read_item held {peak / 2**20:.1f} MiB"

    # Over the video limit: refused after the head, naming the setting.
    with pytest.raises(FileTooLargeError, match=r"media\.max_video_bytes"):
        store.put_file(big, max_bytes=SizeLimits(STILL_LIMIT, size - 1))


def test_source_video_left_on_object_storage_keeps_the_still_limit(tmp_path: Path) -> None:
    """Processing reads an original left on object storage back into memory, so a video
    there is held to ingest.max_bytes, and the reason says to copy originals."""
    video = _clip(tmp_path / "clip.mp4")
    item = SourceItem(
        uri="s3://bucket/clip.mp4", key="clip.mp4", source_id=1, collection_id=1, etag=None,
        size=video.stat().st_size, mtime=None, opener=lambda: open(video, "rb"),
        storage="s3://bucket/clip.mp4", copy=False,
    )  # fmt: skip
    limits = SizeLimits(STILL_LIMIT, 1 << 30)
    with pytest.raises(FileTooLargeError, match="copy_originals"):
        read_item(item, MediaStore(tmp_path / "store"), limits)


@pytest.fixture
def upload_app(tmp_path: Path):
    """The real app on SQLite: (client, settings, write key headers, a video and its size)."""
    from fastapi.testclient import TestClient

    from api.app import create_app
    from tests.api_support import fresh_database, make_keys, make_settings

    video = _clip(tmp_path / "clip.mp4")
    size = video.stat().st_size
    with fresh_database("sqlite", tmp_path) as url:
        settings = make_settings(tmp_path / "home", url, max_upload_bytes=size * 4)
        settings.ingest.max_bytes = STILL_LIMIT
        settings.media.max_video_bytes = size + 10
        with TestClient(create_app(settings)) as client:
            yield client, settings, make_keys(url).write, video, size


def test_upload_limits(upload_app, tmp_path: Path) -> None:
    """Through POST /assets: api.max_upload_bytes caps the body of every upload (413 before
    anything is stored), then the file's kind limit applies as for any ingest."""
    client, settings, write, video, size = upload_app
    data = video.read_bytes()
    ok = client.post("/assets", files={"file": ("clip.mp4", data, "video/mp4")}, headers=write)
    assert ok.status_code in (200, 202), ok.text  # over ingest.max_bytes, under the video limit

    still = tmp_path / "still.png"
    scene_picture("beige background", "star", "yellow").save(still)
    refused = client.post(
        "/assets", files={"file": ("s.png", still.read_bytes(), "image/png")}, headers=write
    )
    assert refused.status_code == 413 and "ingest.max_bytes" in refused.json()["detail"]

    settings.media.max_video_bytes = size - 1  # read per upload
    refused = client.post("/assets", files={"file": ("c.mp4", data, "video/mp4")}, headers=write)
    assert refused.status_code == 413
    assert refused.json()["detail"] == (
        f"video is over the limit of {size - 1} bytes (media.max_video_bytes)"
    )

    body = data + bytes(size * 4)  # over api.max_upload_bytes: the route's cap
    refused = client.post("/assets", files={"file": ("c.mp4", body, "video/mp4")}, headers=write)
    assert refused.status_code == 413, refused.text
