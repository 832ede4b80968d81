"""Ingest reads the keywords a file carries (written here by the real ExifTool) into embedded
tags, and tag search finds them by source; a re-ingest and a reindex keep them.

The images are generated; the model is a small random one (no download). PostgreSQL and SQLite.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
import sqlalchemy as sa

from indexer import db
from indexer.db.labels import AssetLabel, LabelChange
from indexer.db.session import session_scope
from indexer.ingest.pipeline import ingest
from indexer.ingest.process import AssetProcessor
from indexer.keywords import might_carry_keywords
from indexer.settings import Settings
from ram_pp.factory import random_model
from tests.db_fixtures import reset_postgres
from tests.ingest_fixtures import postgres_database, write_images

MODEL_ID = "test_micro@random"
pytestmark = pytest.mark.skipif(
    shutil.which("exiftool") is None,
    reason="ExifTool not installed (apt-get install libimage-exiftool-perl)",
)


@pytest.fixture(scope="module")
def micro():
    return random_model("test_micro", seed=0)


@pytest.fixture(scope="module")
def pg_url():
    with postgres_database("ramdex_kw") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request, tmp_path) -> Settings:
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_url")
        reset_postgres(url)
    else:
        url = f"sqlite:///{tmp_path / 'ramdex.sqlite3'}"
    return Settings(
        home=tmp_path / "home",
        database={"url": url},
        broker={"url": ""},
        model={"name": "test_micro", "device": "cpu", "batch_size": 4},
        ingest={"decode_workers": 1},
    )


def test_file_keywords_become_embedded_tags(settings, micro, tmp_path) -> None:
    folder = tmp_path / "photos"
    tagged, plain, _ = write_images(folder, 3)
    vocabulary_tag = micro.vocabulary.english[3]
    zh = micro.vocabulary.chinese[5] if micro.vocabulary.chinese else None
    words = [vocabulary_tag.upper(), "Project Kite", *([zh] if zh else [])]
    subprocess.run(
        [
            "exiftool",
            "-q",
            "-overwrite_original",
            "-charset",
            "iptc=UTF8",
            "-codedcharacterset=utf8",
        ]
        + [f"-IPTC:Keywords={w}" for w in words]
        + [f"-XMP-dc:Subject={w}" for w in words]
        + [str(tagged)],
        check=True,
    )
    # the cheap pre-check that spares ingest an ExifTool process for files with no metadata
    assert might_carry_keywords(tagged) and not might_carry_keywords(plain)
    processor = AssetProcessor(settings, loaded=micro, model_id=MODEL_ID)
    summary = ingest([folder], settings=settings, processor=processor, progress=False)
    assert summary.done == 3

    url = settings.database_url
    with session_scope(url) as s:
        asset_of = {src.uri: src.asset_id for src in s.scalars(sa.select(db.AssetSource)).all()}
        rows = {
            r.key: r
            for r in s.scalars(sa.select(AssetLabel).where(AssetLabel.embedded.is_(True))).all()
        }
    tagged_id, plain_id = asset_of[str(tagged)], asset_of[str(plain)]
    expected = {vocabulary_tag.casefold(), "project kite"}
    if zh:
        expected.add(micro.vocabulary.english[5].casefold())  # the Chinese name, mapped
    assert set(rows) == expected
    assert {r.asset_id for r in rows.values()} == {tagged_id}
    assert rows["project kite"].label == "Project Kite"  # a free keyword, as written
    assert rows[vocabulary_tag.casefold()].label == vocabulary_tag  # the vocabulary's spelling

    def found(**kwargs) -> list[int]:
        with session_scope(url) as s:
            page = db.search_by_tags(s, model_name=MODEL_ID, limit=100, **kwargs)
        return [h.asset_id for h in page.hits]

    assert found(all_=[vocabulary_tag], sources=["embedded"]) == [tagged_id]
    assert found(all_=["project kite"]) == [tagged_id]
    assert plain_id not in found(all_=["project kite"])

    # ingesting the folder again records nothing new and loses nothing
    ingest([folder], settings=settings, processor=processor, progress=False)
    with session_scope(url) as s:
        again = s.scalars(sa.select(AssetLabel).where(AssetLabel.embedded.is_(True))).all()
        changes = s.scalar(sa.select(sa.func.count()).select_from(LabelChange))
    assert {r.key for r in again} == expected and changes == len(expected)


def test_keywords_can_be_switched_off(settings, micro, tmp_path) -> None:
    folder = tmp_path / "photos"
    (tagged,) = write_images(folder, 1)
    subprocess.run(
        ["exiftool", "-q", "-overwrite_original", "-XMP-dc:Subject=Project Kite", str(tagged)],
        check=True,
    )
    off = settings.model_copy(
        update={"ingest": settings.ingest.model_copy(update={"read_keywords": False})}
    )
    processor = AssetProcessor(off, loaded=micro, model_id=MODEL_ID)
    assert ingest([folder], settings=off, processor=processor, progress=False).done == 1
    with session_scope(off.database_url) as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(AssetLabel)) == 0
