"""RAW+JPEG pairs (``media.raw_jpeg_pairs``, docs/media.md) through the real ingest path.

The RAW files are real DNGs written by ``tests.media_fixtures.build_dng`` (LibRaw decodes them;
the model is the tiny random one of tests/test_ingest.py, whose scores do not matter here). A
pair is one asset: the RAW's bytes, MIME and source, the camera JPEG recorded in
``asset_companions``; with pairing off both files are assets as before.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from api.app import create_app
from indexer.db.assets import Asset, AssetSource
from indexer.db.companions import AssetCompanion
from indexer.db.session import session_scope
from indexer.ingest.pipeline import IngestSummary, ingest
from indexer.ingest.process import AssetProcessor
from indexer.ingest.raw_pairs import RawJpegPair, group_raw_jpeg_pairs
from indexer.settings import Settings
from indexer.sources.manage import add_source
from indexer.sources.scan import scan_source
from indexer.stores import ensure_schema
from ram_pp.factory import random_model
from tests.api_support import make_keys, make_settings
from tests.db_fixtures import reset_postgres
from tests.ingest_fixtures import encode, photo_like, postgres_database
from tests.media_fixtures import build_dng, solid
from tests.sources_support import collection_assets, make_processor, objects_of, source_settings

MODEL_ID = "test_micro@random"


@pytest.fixture(scope="module")
def micro():
    return random_model("test_micro", seed=0)


@pytest.fixture(scope="module")
def pg_url():
    with postgres_database("ramdex_pairs") as url:
        yield url


def _settings(tmp_path: Path, url: str, pairs: bool = True) -> Settings:
    return Settings(
        home=tmp_path / "home",
        database={"url": url},
        broker={"url": ""},
        model={"name": "test_micro", "device": "cpu", "batch_size": 4},
        media={"raw_jpeg_pairs": pairs},
    )


def _run(settings: Settings, micro, *sources: Path) -> IngestSummary:
    processor = AssetProcessor(settings, loaded=micro, model_id=MODEL_ID)
    return ingest(list(sources), settings=settings, processor=processor, progress=False)


def _dng(path: Path, colour: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(build_dng(solid(colour, (96, 64)), preview=solid(colour, (96, 64))))
    return path


def _jpeg(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode(photo_like(96, 64, seed=seed), "JPEG"))
    return path


def _shoot(folder: Path) -> dict[str, Path]:
    """A card: two RAW+JPEG pairs (upper- and lower-case extensions, .JPG and .jpeg), a JPEG
    alone, a RAW alone, and a JPEG of a paired name in another folder."""
    return {
        "raw1": _dng(folder / "IMG_0001.DNG", "blue"),
        "jpg1": _jpeg(folder / "IMG_0001.JPG", 1),
        "raw2": _dng(folder / "DSC_0002.dng", "red"),
        "jpg2": _jpeg(folder / "DSC_0002.jpeg", 2),
        "solo_jpg": _jpeg(folder / "IMG_0003.JPG", 3),
        "solo_raw": _dng(folder / "IMG_0004.DNG", "yellow"),
        "elsewhere": _jpeg(folder / "other" / "IMG_0001.JPG", 4),
    }


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _asset_of(session, path: Path) -> Asset | None:
    return session.scalars(
        sa.select(Asset).join(AssetSource).where(AssetSource.uri == str(path))
    ).one_or_none()


def _counts(url: str) -> tuple[int, int]:
    with session_scope(url) as session:
        assets = session.scalar(sa.select(sa.func.count()).select_from(Asset))
        companions = session.scalar(sa.select(sa.func.count()).select_from(AssetCompanion))
    return int(assets), int(companions)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_url")
        reset_postgres(url)
        return url
    return f"sqlite:///{tmp_path / 'ramdex.sqlite3'}"


def test_pairs_are_one_raw_asset_with_the_jpeg_as_companion(tmp_path, micro, db_url) -> None:
    files = _shoot(tmp_path / "card")
    settings = _settings(tmp_path, db_url)
    summary = _run(settings, micro, tmp_path / "card")
    assert summary.failures == []
    assert (summary.submitted, summary.paired, summary.done, summary.duplicate) == (7, 2, 5, 0)
    assert summary.to_dict()["paired"] == 2
    assert _counts(db_url) == (5, 2)
    with session_scope(db_url) as s:
        for raw, jpg in (("raw1", "jpg1"), ("raw2", "jpg2")):
            asset = _asset_of(s, files[raw])
            assert asset is not None
            assert (asset.status, asset.mime, asset.kind) == ("done", "image/x-adobe-dng", "raw")
            assert asset.sha256 == _sha(files[raw])  # the RAW's bytes are the asset
            # Its only source is the RAW (the metadata write-back target), the JPEG a companion.
            uris = s.scalars(sa.select(AssetSource.uri).where(AssetSource.asset_id == asset.id))
            assert list(uris) == [str(files[raw])]
            companion = s.scalars(
                sa.select(AssetCompanion).where(AssetCompanion.asset_id == asset.id)
            ).one()
            assert (companion.uri, companion.role, companion.mime) == (
                str(files[jpg]),
                "jpeg",
                "image/jpeg",
            )
            assert companion.sha256 == _sha(files[jpg])
            assert companion.size_bytes == files[jpg].stat().st_size
            # The JPEG is no asset: neither by its path nor by its bytes.
            assert _asset_of(s, files[jpg]) is None
            assert s.scalar(sa.select(Asset.id).where(Asset.sha256 == _sha(files[jpg]))) is None
        # Unpaired files stay assets; the same name in another folder does not pair.
        assert _asset_of(s, files["solo_jpg"]).mime == "image/jpeg"
        assert _asset_of(s, files["solo_raw"]).mime == "image/x-adobe-dng"
        assert _asset_of(s, files["elsewhere"]).mime == "image/jpeg"
    # Re-ingesting the folder is idempotent: the same assets and companions, pairs reported.
    again = _run(settings, micro, tmp_path / "card")
    assert (again.submitted, again.paired, again.duplicate, again.done) == (7, 2, 5, 0)
    assert again.failures == []
    assert _counts(db_url) == (5, 2)


def test_pairing_off_keeps_both_files_assets(tmp_path, micro) -> None:
    files = _shoot(tmp_path / "card")
    url = f"sqlite:///{tmp_path / 'ramdex.sqlite3'}"
    summary = _run(_settings(tmp_path, url, pairs=False), micro, tmp_path / "card")
    assert (summary.submitted, summary.paired, summary.done) == (7, 0, 7)
    assert _counts(url) == (7, 0)
    with session_scope(url) as s:
        assert _asset_of(s, files["jpg1"]).mime == "image/jpeg"
        assert _asset_of(s, files["raw1"]).mime == "image/x-adobe-dng"


def test_a_jpeg_arriving_after_its_raw_joins_the_raw_asset(tmp_path, micro) -> None:
    """A watcher or a second run sees the RAW first, the JPEG later (tethered shooting)."""
    url = f"sqlite:///{tmp_path / 'ramdex.sqlite3'}"
    settings = _settings(tmp_path, url)
    raw = _dng(tmp_path / "card" / "IMG_0010.DNG", "blue")
    first = _run(settings, micro, raw)
    assert (first.done, first.paired) == (1, 0)
    jpg = _jpeg(tmp_path / "card" / "IMG_0010.JPG", 10)
    later = _run(settings, micro, jpg)
    assert (later.submitted, later.paired, later.done, later.failed, later.duplicate) == (
        1,
        1,
        0,
        0,
        0,
    )
    assert _counts(url) == (1, 1)
    with session_scope(url) as s:
        master = _asset_of(s, raw)
        assert s.scalar(sa.select(AssetCompanion.asset_id)) == master.id
    # The whole folder again: still one asset, one companion.
    again = _run(settings, micro, tmp_path / "card")
    assert (again.paired, again.duplicate) == (1, 1)
    assert _counts(url) == (1, 1)


def test_a_raw_libraw_cannot_open_does_not_hide_its_jpeg(tmp_path, micro) -> None:
    """A DNG with a compression LibRaw does not know (as a camera newer than the installed
    LibRaw would be): sniffed as DNG, refused by LibRaw. The pair does not hold, so the JPEG
    is indexed on its own and the RAW fails with LibRaw's reason."""
    url = f"sqlite:///{tmp_path / 'ramdex.sqlite3'}"
    data = bytearray(build_dng(solid("blue", (96, 64))))
    count = struct.unpack_from("<H", data, 8)[0]
    for i in range(count):  # Compression (259) -> 99
        at = 10 + 12 * i
        if struct.unpack_from("<H", data, at)[0] == 259:
            data[at + 8 : at + 12] = struct.pack("<HH", 99, 0)
    folder = tmp_path / "card"
    folder.mkdir()
    (folder / "IMG_0020.DNG").write_bytes(bytes(data))
    jpg = _jpeg(folder / "IMG_0020.JPG", 20)
    summary = _run(_settings(tmp_path, url), micro, folder)
    assert summary.paired == 0
    assert summary.done == 1 and summary.failed == 1
    assert "LibRaw" in summary.failures[0].reason
    with session_scope(url) as s:
        assert _asset_of(s, jpg).status == "done"
    assert _counts(url) == (2, 0)


def test_a_raw_that_opens_but_does_not_decode_is_tagged_from_its_jpeg(tmp_path, micro) -> None:
    """A DNG cut short (its sensor data missing, no preview): LibRaw opens it, so the pair
    holds, but cannot decode it. The asset (still the RAW) is tagged from the camera JPEG;
    the same cut DNG without a JPEG fails with LibRaw's reason."""
    url = f"sqlite:///{tmp_path / 'ramdex.sqlite3'}"
    cut = build_dng(solid("blue", (96, 64)))[:1000]
    folder = tmp_path / "card"
    folder.mkdir()
    (folder / "IMG_0030.DNG").write_bytes(cut)
    jpg = _jpeg(folder / "IMG_0030.JPG", 30)
    (folder / "IMG_0031.DNG").write_bytes(cut + b"\0")  # alone (and not a duplicate)
    summary = _run(_settings(tmp_path, url), micro, folder)
    assert summary.paired == 1
    assert (summary.done, summary.failed) == (1, 1)
    assert "IMG_0031.DNG" in summary.failures[0].source
    with session_scope(url) as s:
        asset = _asset_of(s, folder / "IMG_0030.DNG")
        assert asset is not None and asset.status == "done"
        assert asset.sha256 == _sha(folder / "IMG_0030.DNG") and asset.kind == "raw"
        assert asset.mime == "image/x-adobe-dng"
        assert (asset.width, asset.height) == (96, 64)  # the JPEG's picture
        assert asset.thumbnail_path and Path(asset.thumbnail_path).is_file()
    assert _counts(url) == (2, 1)
    assert jpg.is_file()


def test_grouping_rules(tmp_path) -> None:
    a = tmp_path / "a"
    items = [
        a / "IMG_1.CR2",
        a / "IMG_1.jpg",  # pairs: extension case does not matter
        a / "IMG_2.NEF",
        a / "img_2.JPG",  # the base name must match exactly: no pair
        a / "IMG_3.CR2",
        a / "IMG_3.DNG",
        a / "IMG_3.JPG",  # two RAWs of one name: ambiguous, no pair
        tmp_path / "b" / "IMG_1.JPG",  # another folder
        a / "IMG_4.png",
        a / "IMG_4.ARW",  # not a JPEG
        "https://example.com/IMG_5.CR2",
        "https://example.com/IMG_5.JPG",  # URLs never pair
    ]
    grouped, pairs = group_raw_jpeg_pairs(items)
    assert pairs == 1
    assert isinstance(grouped[0], RawJpegPair)
    assert (grouped[0].raw, grouped[0].jpeg) == (items[0], items[1])
    assert grouped[1:] == items[2:]


def test_asset_api_lists_the_companion(tmp_path, micro) -> None:
    url = f"sqlite:///{tmp_path / 'ramdex.sqlite3'}"
    files = _shoot(tmp_path / "card")
    settings = _settings(tmp_path, url)
    _run(settings, micro, tmp_path / "card")
    with session_scope(url) as s:
        raw_id = _asset_of(s, files["raw1"]).id
        solo_id = _asset_of(s, files["solo_jpg"]).id
    keys = make_keys(url)
    with TestClient(create_app(make_settings(tmp_path / "home", url))) as client:
        body = client.get(f"/assets/{raw_id}", headers=keys.admin).json()
        assert body["mime"] == "image/x-adobe-dng"
        assert [s["uri"] for s in body["sources"]] == [str(files["raw1"])]
        (companion,) = body["companions"]
        assert companion["uri"] == str(files["jpg1"])
        assert (companion["role"], companion["mime"]) == ("jpeg", "image/jpeg")
        assert companion["bytes"] == files["jpg1"].stat().st_size
        assert companion["sha256"] == _sha(files["jpg1"])
        # A read key does not see server paths: the companion's is hidden like the source's.
        hidden = client.get(f"/assets/{raw_id}", headers=keys.read).json()["companions"][0]
        assert str(tmp_path) not in hidden["uri"]
        assert client.get(f"/assets/{solo_id}", headers=keys.admin).json()["companions"] == []


def test_a_folder_source_scan_groups_pairs_and_skips_them_next_time(tmp_path, micro) -> None:
    """Through a folder source (``ramdex sources``): the JPEG's ``source_objects`` row points
    at the RAW's asset, so the next scan reads neither file again."""
    url = f"sqlite:///{tmp_path / 'ramdex.sqlite3'}"
    folder = tmp_path / "card"
    raw = _dng(folder / "IMG_0030.DNG", "blue")
    jpg = _jpeg(folder / "IMG_0030.JPG", 30)
    settings = source_settings(tmp_path / "home", url)
    ensure_schema(url)
    proc = make_processor(settings, micro)
    view = add_source(settings, str(folder), interval="1h")
    first = scan_source(settings, view.id, processor=proc)
    assert (first.new, first.paired, first.failed) == (2, 1, 0)
    assert _counts(url) == (1, 1)
    objects = objects_of(url, view.id)
    with session_scope(url) as s:
        master = _asset_of(s, raw)
        assert master.mime == "image/x-adobe-dng"
    assert objects[raw.name].asset_id == objects[jpg.name].asset_id == master.id
    assert master.id in collection_assets(url, view.collection_id)
    again = scan_source(settings, view.id, processor=proc)
    assert (again.new, again.changed, again.unchanged, again.paired) == (0, 0, 2, 0)
    assert _counts(url) == (1, 1)


def test_cli_ingest_says_how_many_pairs_were_grouped(tmp_path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from api.cli import app
    from indexer.settings import get_settings

    _shoot(tmp_path / "card")
    monkeypatch.setenv("RAMDEX_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RAMDEX_DATABASE__URL", f"sqlite:///{tmp_path / 'cli.sqlite3'}")
    monkeypatch.setenv("RAMDEX_BROKER__URL", "")
    monkeypatch.setenv("RAMDEX_MODEL__NAME", "test_micro")
    monkeypatch.setenv("RAMDEX_MODEL__DEVICE", "cpu")
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["ingest", str(tmp_path / "card")])
        assert result.exit_code == 0, result.output
        assert "7 sources" in result.output
        assert "5 done, 0 duplicate, 0 failed, 2 RAW+JPEG pairs grouped" in result.output
    finally:
        get_settings.cache_clear()
