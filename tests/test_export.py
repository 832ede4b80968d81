"""``ramdex export`` and /exports: XMP sidecars read back by the real ExifTool, CSV and JSON.

One small archive per test (PostgreSQL and SQLite): two assets, one from a local folder and
one from a URL, with model scores above and below threshold, a rejected and an accepted model
tag, a manual tag, an embedded keyword, a concept tag and a taxonomy hierarchy.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from api.app import create_app
from api.cli import app as cli
from indexer import exports
from indexer.db.asset_repo import add_source, get_or_create_asset_by_sha
from indexer.db.assets import Asset
from indexer.db.labels import AssetLabel, TagSource
from indexer.db.session import create_engine_for
from indexer.db.tags import AssetTag, Tag
from indexer.db.taxonomy import TaxonomyBroader, TaxonomyTerm
from indexer.keywords import SidecarName
from indexer.settings import get_settings
from tests.api_support import make_keys, make_settings
from tests.ingest_fixtures import encode, photo_like

pytest_plugins = ["tests.db_fixtures"]

MODEL = "test_micro@random"  # the id of the configured test model (RAMDEX_MODEL__NAME)
EXIFTOOL = shutil.which("exiftool")
pytestmark = pytest.mark.skipif(
    EXIFTOOL is None, reason="ExifTool not installed (apt-get install libimage-exiftool-perl)"
)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _subjects(sidecar: Path) -> tuple[list[str], list[str]]:
    """dc:subject and lr:hierarchicalSubject as ExifTool itself reads them."""
    done = subprocess.run(
        [EXIFTOOL or "exiftool", "-json", "-G1", str(sidecar)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    record = json.loads(done.stdout)[0]

    def listed(tag: str) -> list[str]:
        value = record.get(tag, [])
        return value if isinstance(value, list) else [value]

    return listed("XMP-dc:Subject"), listed("XMP-lr:HierarchicalSubject")


class Archive:
    """The test archive: database URL, sessions, the local original and the asset ids."""

    def __init__(self, url: str, folder: Path) -> None:
        self.url = url
        self.engine = create_engine_for(url)
        self.sessions = sessionmaker(self.engine)
        self.photo = folder / "photos" / "2024" / "a.jpg"
        self.photo.parent.mkdir(parents=True)
        self.photo.write_bytes(encode(photo_like(32, 24, seed=1), "JPEG"))
        with Session(self.engine) as s:
            for table in ("label_changes", "asset_labels", "taxonomy_terms", "taxonomy_broader"):
                s.execute(sa.text(f"DELETE FROM {table}"))
            tags = {}
            for i, (en, zh) in enumerate(
                [("dog", "狗"), ("cat", "猫"), ("car", "汽车"), ("bird", "鸟")]
            ):
                tags[en] = Tag(model_name=MODEL, position=i, english=en, chinese=zh, threshold=0.6)
            tags["kite"] = Tag(model_name=MODEL, english="kite", threshold=0.5, origin="concept")
            s.add_all(tags.values())
            s.flush()
            self.local = get_or_create_asset_by_sha(s, sha256=_sha(self.photo), mime="image/jpeg")
            self.remote = get_or_create_asset_by_sha(s, sha256="cd" * 32, mime="image/png")
            add_source(s, asset_id=self.local.id, uri=str(self.photo))
            add_source(s, asset_id=self.remote.id, uri="https://example.org/pics/b.png")
            s.execute(sa.update(Asset).values(status="done", model_name=MODEL))
            scores = {
                self.local.id: {"dog": 0.9, "cat": 0.3, "car": 0.8, "bird": 0.2, "kite": 0.7},
                self.remote.id: {"cat": 0.95, "dog": 0.1},
            }
            for asset_id, by_name in scores.items():
                for name, score in by_name.items():
                    s.add(AssetTag(asset_id=asset_id, tag_id=tags[name].id, score=score))
            a = self.local.id
            s.add_all(
                [
                    AssetLabel(asset_id=a, key="car", label="car", review="rejected"),
                    AssetLabel(asset_id=a, key="bird", label="bird", review="accepted"),
                    AssetLabel(asset_id=a, key="holiday", label="Holiday", manual=True),
                    AssetLabel(asset_id=a, key="paris", label="Paris", embedded=True),
                    TaxonomyTerm(key="animal", concept="animal", label="Animal", lang="en",
                                 preferred=True),
                    TaxonomyTerm(key="动物", concept="animal", label="动物", lang="zh",
                                 preferred=True),
                    TaxonomyBroader(concept="dog", broader="mammal"),
                    TaxonomyBroader(concept="mammal", broader="animal"),
                    TaxonomyBroader(concept="bird", broader="animal"),
                ]
            )  # fmt: skip
            s.commit()


@pytest.fixture
def archive(db_url: str, tmp_path: Path):
    found = Archive(db_url, tmp_path)
    try:
        yield found
    finally:
        found.engine.dispose()


def test_xmp_beside_originals_with_hierarchy_and_marked_model_tags(archive: Archive):
    before = _sha(archive.photo)
    counts = exports.export_xmp(
        archive.sessions, MODEL, exports.Selection(), exports.XmpOptions(model_prefix="ai:")
    )
    assert (counts.assets, counts.written, counts.skipped, counts.failed) == (2, 1, 1, [])
    subjects, hierarchical = _subjects(archive.photo.with_name("a.jpg.xmp"))
    # manual, embedded and accepted first; rejected car and below-threshold cat left out
    assert subjects == ["bird", "Holiday", "Paris", "ai:dog", "ai:kite"]
    assert sorted(hierarchical) == sorted(
        ["Animal|bird", "Holiday", "Paris", "Animal|mammal|ai:dog", "ai:kite"]
    )
    assert _sha(archive.photo) == before
    assert sorted(p.name for p in archive.photo.parent.iterdir()) == ["a.jpg", "a.jpg.xmp"]


def test_xmp_into_out_folder_sources_and_query(archive: Archive, tmp_path: Path):
    out = tmp_path / "sidecars"
    options = exports.XmpOptions(
        naming=SidecarName.REPLACE, out=out, relative_to=tmp_path / "photos"
    )
    only_people = exports.Selection(sources=frozenset({TagSource.MANUAL, TagSource.EMBEDDED}))
    counts = exports.export_xmp(archive.sessions, MODEL, only_people, options)
    assert (counts.written, counts.skipped, counts.empty) == (1, 0, 1)
    assert _subjects(out / "2024" / "a.xmp")[0] == ["Holiday", "Paris"]
    assert not (out / f"{archive.remote.id}-b.xmp").exists()  # no tags: no sidecar
    assert not archive.photo.with_name("a.xmp").exists()  # nothing beside the original
    cats = exports.Selection(all_=("猫",))
    counts = exports.export_xmp(archive.sessions, MODEL, cats, exports.XmpOptions(out=out))
    assert counts.assets == 1
    assert _subjects(out / f"{archive.remote.id}-b.png.xmp")[0] == ["cat"]


def _cli(monkeypatch, archive: Archive, home: Path, *args: str):
    for key in [k for k in __import__("os").environ if k.startswith("RAMDEX_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("RAMDEX_HOME", str(home))
    monkeypatch.setenv("RAMDEX_MODEL__NAME", "test_micro")
    monkeypatch.setenv("RAMDEX_DATABASE__URL", archive.url)
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(cli, list(args))
    finally:
        get_settings.cache_clear()


def test_cli_csv_json_and_missing_exiftool(archive: Archive, tmp_path: Path, monkeypatch):
    target = tmp_path / "out" / "assets.csv"
    result = _cli(monkeypatch, archive, tmp_path / "home", "export", "csv", "--out", str(target))
    assert result.exit_code == 0, result.output
    rows = {int(r["asset_id"]): r for r in csv.DictReader(io.StringIO(target.read_text()))}
    assert set(rows) == {archive.local.id, archive.remote.id}
    local = rows[archive.local.id]
    assert local["source_uris"] == str(archive.photo)
    assert local["tags"].split("; ") == ["bird", "Holiday", "Paris", "dog", "kite"]
    details = {d["name"]: d for d in json.loads(local["tag_details"])}
    assert details["bird"]["sources"] == ["model"] and details["bird"]["review"] == "accepted"
    assert details["bird"]["score"] == pytest.approx(0.2)
    assert details["kite"]["sources"] == ["concept"]
    assert details["Paris"]["sources"] == ["embedded"] and details["Paris"]["tag_id"] is None
    assert rows[archive.remote.id]["tags"] == "cat"

    result = _cli(
        monkeypatch, archive, tmp_path / "home", "export", "json", "--tag", "dog",
        "--sources", "model",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["model_id"] == MODEL
    [asset] = document["assets"]
    assert asset["asset_id"] == archive.local.id
    assert [t["name"] for t in asset["tags"]] == ["bird", "dog"]
    assert asset["tags"][1]["chinese"] == "狗"

    result = _cli(monkeypatch, archive, tmp_path / "home", "export", "json", "--tag", "nope")
    assert result.exit_code == 2 and "unknown tag 'nope'" in result.output

    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    result = _cli(monkeypatch, archive, tmp_path / "home", "export", "xmp")
    assert result.exit_code == 2, result.output
    assert "error: ExifTool (exiftool) is not on the PATH" in result.output
    assert "hint: install ExifTool: apt-get install libimage-exiftool-perl" in result.output
    assert not archive.photo.with_name("a.jpg.xmp").exists()


def test_api_exports(archive: Archive, tmp_path: Path):
    settings = make_settings(tmp_path / "home", archive.url)
    keys = make_keys(archive.url)
    with TestClient(create_app(settings)) as client:
        reply = client.post("/exports/xmp", json={"asset_ids": [archive.local.id]},
                            headers=keys.read)  # fmt: skip
        assert reply.status_code == 403
        reply = client.post(
            "/exports/xmp",
            json={"asset_ids": [archive.local.id], "sidecar_name": "replace",
                  "model_suffix": " (ai)", "sources": ["model"]},
            headers=keys.write,
        )  # fmt: skip
        assert reply.status_code == 200, reply.text
        assert reply.json()["written"] == 1
        assert _subjects(archive.photo.with_name("a.xmp"))[0] == ["bird", "dog (ai)"]
        reply = client.post("/exports/xmp", json={"all": ["nope"]}, headers=keys.write)
        assert reply.status_code == 422
        # the names search takes are what exports take: a manual free keyword
        reply = client.get("/exports/assets.json", params={"all": "holiday"}, headers=keys.read)
        assert reply.status_code == 200, reply.text
        assert [a["asset_id"] for a in reply.json()["assets"]] == [archive.local.id]

        reply = client.get("/exports/assets.csv", params={"any": ["cat", "dog"]},
                           headers=keys.read)  # fmt: skip
        assert reply.status_code == 200, reply.text
        assert reply.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(reply.text)))
        assert {int(r["asset_id"]) for r in rows} == {archive.local.id, archive.remote.id}
        local = next(r for r in rows if int(r["asset_id"]) == archive.local.id)
        assert local["source_uris"] == "server:a.jpg"  # read keys do not see server paths
        reply = client.get("/exports/assets.json", headers=keys.write)
        assert reply.status_code == 200
        by_id = {a["asset_id"]: a for a in reply.json()["assets"]}
        assert by_id[archive.local.id]["source_uris"] == [str(archive.photo)]
