"""Keywords in and out of files with the real ExifTool (indexer/keywords.py, db/keyword_repo.py).

ExifTool itself writes the keywords ramdex must ingest, and reads back what ramdex writes; the
labels land in a real PostgreSQL and SQLite database.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from indexer import keywords
from indexer.db.asset_repo import get_or_create_asset_by_sha
from indexer.db.keyword_repo import record_embedded_keywords
from indexer.db.labels import AssetLabel, LabelChange
from indexer.db.session import create_engine_for
from indexer.db.tags import Tag
from indexer.db.taxonomy import TaxonomyTerm
from tests.ingest_fixtures import encode, photo_like

pytest_plugins = ["tests.db_fixtures"]

MODEL = "test_micro@random"
EXIFTOOL = shutil.which("exiftool")
needs_exiftool = pytest.mark.skipif(
    EXIFTOOL is None, reason="ExifTool not installed (apt-get install libimage-exiftool-perl)"
)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _exiftool(*args: str) -> subprocess.CompletedProcess[str]:
    """ExifTool itself, not through ramdex."""
    done = subprocess.run(
        [EXIFTOOL or "exiftool", *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done


def _read_back(path: Path) -> dict:
    out = _exiftool("-json", "-G1", "-IPTC:Keywords", "-XMP-dc:Subject",
                    "-XMP-lr:HierarchicalSubject", str(path)).stdout  # fmt: skip
    return json.loads(out)[0]


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


@pytest.fixture
def tagged_jpeg(tmp_path: Path) -> Path:
    """A JPEG carrying IPTC keywords (English in another case, Chinese, free), XMP subjects
    (a synonym) and a hierarchical subject, all written by ExifTool."""
    path = tmp_path / "in" / "photo.jpg"
    path.parent.mkdir()
    path.write_bytes(encode(photo_like(64, 48, seed=3), "JPEG"))
    _exiftool(
        "-q", "-overwrite_original", "-charset", "iptc=UTF8", "-IPTC:CodedCharacterSet=UTF8",
        "-IPTC:Keywords=DOG", "-IPTC:Keywords=猫", "-IPTC:Keywords=Sunset Beach",
        "-XMP-dc:Subject=automobile", "-XMP-dc:Subject=dog",
        "-XMP-lr:HierarchicalSubject=places|France|Paris", str(path),
    )  # fmt: skip
    return path


@needs_exiftool
def test_read_keywords_gets_iptc_xmp_and_hierarchy_leaves(tagged_jpeg: Path, tmp_path: Path):
    plain = tmp_path / "plain.png"
    plain.write_bytes(encode(photo_like(16, 16), "PNG"))
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"\xff\xd8\xff\xe1" + os.urandom(4000))
    before = _sha(tagged_jpeg)
    found = keywords.read_keywords([tagged_jpeg, plain, garbage, tmp_path / "missing.jpg"])
    got = found[str(tagged_jpeg)]
    assert {n.casefold() for n in got.names} == {
        "dog", "猫", "sunset beach", "automobile", "paris"
    }  # fmt: skip
    assert got.hierarchical == (("places", "France", "Paris"),)
    assert not found[str(plain)]
    assert str(tmp_path / "missing.jpg") not in found
    assert _sha(tagged_jpeg) == before  # reading never writes


@needs_exiftool
def test_sidecar_round_trip_read_back_by_exiftool(tmp_path: Path):
    sidecar = keywords.sidecar_path(tmp_path / "pics" / "photo.jpg")
    assert sidecar.name == "photo.jpg.xmp"
    assert keywords.sidecar_path(tmp_path / "photo.jpg", "replace").name == "photo.xmp"
    keywords.write_xmp_sidecar(
        sidecar, ["dog", "狗", "a, b", "ai:cat"], [("animal", "mammal", "dog"), ("places",)]
    )
    record = _read_back(sidecar)
    assert _as_list(record["XMP-dc:Subject"]) == ["dog", "狗", "a, b", "ai:cat"]
    assert _as_list(record["XMP-lr:HierarchicalSubject"]) == ["animal|mammal|dog", "places"]
    # An existing sidecar keeps its other metadata; its subjects are replaced.
    _exiftool("-q", "-overwrite_original", "-XMP-xmp:Rating=4", str(sidecar))
    keywords.write_xmp_sidecar(sidecar, ["cat"])
    record = json.loads(_exiftool("-json", "-G1", str(sidecar)).stdout)[0]
    assert _as_list(record["XMP-dc:Subject"]) == ["cat"]
    assert "XMP-lr:HierarchicalSubject" not in record
    assert record["XMP-xmp:Rating"] == 4
    assert not list(sidecar.parent.glob("*_original"))  # no backup left beside it


@needs_exiftool
def test_embed_into_copy_leaves_the_original_alone(tagged_jpeg: Path, tmp_path: Path):
    before = _sha(tagged_jpeg)
    copy = keywords.embed_into_copy(tagged_jpeg, tmp_path / "out" / "photo.jpg", ["car", "汽车"])
    assert _sha(tagged_jpeg) == before
    record = _read_back(copy)
    assert _as_list(record["IPTC:Keywords"]) == ["car", "汽车"]
    assert _as_list(record["XMP-dc:Subject"]) == ["car", "汽车"]
    with pytest.raises(keywords.ExifToolError):
        keywords.embed_into_copy(tagged_jpeg, tagged_jpeg, ["x"])
    assert _sha(tagged_jpeg) == before


def test_missing_exiftool_is_a_clear_error_but_not_at_ingest(tmp_path, monkeypatch, caplog):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv(keywords.EXIFTOOL_ENV, raising=False)
    monkeypatch.setattr(keywords, "_warned_missing", False)
    with pytest.raises(keywords.ExifToolMissingError) as caught:
        keywords.read_keywords([tmp_path / "a.jpg"])
    assert "libimage-exiftool-perl" in (caught.value.hint or "")
    assert "brew install exiftool" in (caught.value.hint or "")
    with pytest.raises(keywords.ExifToolMissingError):
        keywords.write_xmp_sidecar(tmp_path / "a.jpg.xmp", ["dog"])
    assert not (tmp_path / "a.jpg.xmp").exists()
    for name in ("a.jpg", "b.jpg"):  # files that look as if they carry XMP (ingest's pre-check)
        (tmp_path / name).write_bytes(b"\xff\xd8\xff\xe1..http://ns.adobe.com/xap/1.0/\x00<x/>")
    with caplog.at_level(logging.WARNING, logger="indexer.keywords"):
        assert keywords.ingest_keywords([tmp_path / "a.jpg"]) == {}
        assert keywords.ingest_keywords([tmp_path / "b.jpg"]) == {}
    warnings = [r for r in caplog.records if "not read at ingest" in r.getMessage()]
    assert len(warnings) == 1  # once per process
    assert keywords.embedded_keywords_step(None, 1, tmp_path / "a.jpg", MODEL) == 0  # type: ignore[arg-type]


def test_a_hanging_exiftool_is_cut_off(tmp_path, monkeypatch):
    slow = tmp_path / "exiftool"
    slow.write_text("#!/bin/sh\nsleep 30\n")
    slow.chmod(0o755)
    monkeypatch.setenv(keywords.EXIFTOOL_ENV, str(slow))
    started = time.monotonic()
    found = keywords.read_keywords(
        [tmp_path / "a.jpg", tmp_path / "b.jpg"], timeout_s=0.5, file_timeout_s=0.3
    )
    assert found == {}
    assert time.monotonic() - started < 5
    assert keywords.ingest_keywords([]) == {}


# -- embedded labels in the database -------------------------------------------------------


@pytest.fixture
def vocab_db(db_url: str):
    """An empty migrated database (both backends) with a few tags, a synonym and one asset."""
    engine = create_engine_for(db_url)
    with Session(engine) as session:
        for table in ("label_changes", "asset_labels", "taxonomy_terms", "taxonomy_broader"):
            session.execute(sa.text(f"DELETE FROM {table}"))
        for i, (en, zh) in enumerate([("dog", "狗"), ("cat", "猫"), ("car", "汽车")]):
            session.add(Tag(model_name=MODEL, position=i, english=en, chinese=zh, threshold=0.6))
        session.add(Tag(model_name="other@x", position=0, english="sunset beach", threshold=0.5))
        session.add_all(
            [
                TaxonomyTerm(key="automobile", concept="car", label="automobile", lang="en"),
                TaxonomyTerm(key="car", concept="car", label="car", lang="en", preferred=True),
            ]
        )
        asset_id = get_or_create_asset_by_sha(session, sha256="ab" * 32).id
        session.commit()
    try:
        yield engine, asset_id
    finally:
        engine.dispose()


def _labels(session: Session, asset_id: int) -> dict[str, tuple[str, bool, bool, str | None]]:
    rows = session.scalars(sa.select(AssetLabel).where(AssetLabel.asset_id == asset_id))
    return {r.key: (r.label, r.manual, r.embedded, r.review) for r in rows}


@needs_exiftool
def test_ingested_keywords_map_onto_the_vocabulary(vocab_db, tagged_jpeg: Path):
    engine, asset_id = vocab_db
    before = _sha(tagged_jpeg)
    with Session(engine) as session:
        session.add(AssetLabel(asset_id=asset_id, key="dog", label="dog", manual=True))
        session.commit()
    with Session(engine) as session:
        changed = keywords.embedded_keywords_step(session, asset_id, tagged_jpeg, MODEL)
        session.commit()
    assert changed == 5
    with Session(engine) as session:
        assert _labels(session, asset_id) == {
            "dog": ("dog", True, True, None),  # "DOG" and "dog": one label, manual kept
            "cat": ("cat", False, True, None),  # Chinese name -> the tag's English name
            "car": ("car", False, True, None),  # synonym "automobile" through the taxonomy
            "sunset beach": ("Sunset Beach", False, True, None),  # another model's tag: free
            "paris": ("Paris", False, True, None),  # the hierarchy's leaf
        }
        changes = session.scalars(
            sa.select(LabelChange).where(LabelChange.asset_id == asset_id)
        ).all()
        assert {c.action for c in changes} == {"embed"}
        assert {c.actor for c in changes} == {"ingest"}
        dog = next(c for c in changes if c.key == "dog")
        assert dog.before == {"manual": True, "embedded": False, "review": None}
        assert dog.after == {"manual": True, "embedded": True, "review": None}
        assert next(c for c in changes if c.key == "cat").before is None
    # Re-ingest (reindex, a new model): nothing new, nothing recorded.
    with Session(engine) as session:
        assert keywords.embedded_keywords_step(session, asset_id, tagged_jpeg, MODEL) == 0
        assert record_embedded_keywords(session, asset_id, ["Cat", "猫"], MODEL) == 0
        session.commit()
    with Session(engine) as session:
        count = session.scalar(sa.select(sa.func.count()).select_from(LabelChange))
        assert count == 5
    assert _sha(tagged_jpeg) == before


def test_record_plain_names_keeps_reviews(vocab_db):
    engine, asset_id = vocab_db
    with Session(engine) as session:
        session.add(AssetLabel(asset_id=asset_id, key="car", label="car", review="rejected"))
        session.commit()
    with Session(engine) as session:
        assert record_embedded_keywords(session, asset_id, ["  汽车 ", "", "x" * 300], MODEL) == 1
        session.commit()
    with Session(engine) as session:
        assert _labels(session, asset_id) == {"car": ("car", False, True, "rejected")}
