"""``ramdex concepts import|list|describe``: concepts go into the archive's database, where
``GET /concepts`` and search see them, and ``--backfill`` makes them tags at once.

The backfill test runs the real path on a small archive of demo images (the bundled demo model,
its packaged text encoder, the embedded database, token store and index); the stored tag scores
are checked against the model's plain RAM++ head over the token store, computed here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import sqlalchemy as sa
import torch
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from api.app import create_app
from api.cli import app as ramdex
from api.cli import model_notice
from indexer.db.concepts import Concept
from indexer.db.session import session_scope
from indexer.db.tags import AssetTag, Tag
from indexer.models import configured_model_id
from indexer.settings import Settings, get_settings
from ram_pp.synth import heldout_json
from tests.api_support import fresh_database, make_keys

pytest_plugins = ["tests.api_support"]

SAMPLE = Path(__file__).parent / "fixtures" / "concepts_sample.json"


@pytest.fixture(params=["sqlite", "postgresql"])
def cli_archive(request, tmp_path, monkeypatch) -> Settings:
    """The settings ``ramdex`` reads from the environment: a fresh database, its own home, the
    default (demo) model, tasks in this process."""
    with fresh_database(request.param, tmp_path) as url:
        for name in [k for k in os.environ if k.startswith("RAMDEX_")]:
            monkeypatch.delenv(name)
        monkeypatch.setenv("RAMDEX_HOME", str(tmp_path / "home"))
        monkeypatch.setenv("RAMDEX_DATABASE__URL", url)
        monkeypatch.setenv("RAMDEX_MODEL__DEVICE", "cpu")
        get_settings.cache_clear()
        try:
            yield get_settings()
        finally:
            get_settings.cache_clear()


def run(*args: str):
    model_notice._announced.clear()  # each invocation stands for one process
    return CliRunner().invoke(ramdex, ["concepts", *args])


def stored(settings: Settings) -> dict[str, Concept]:
    with session_scope(settings.database_url) as session:
        rows = session.scalars(sa.select(Concept)).all()
        session.expunge_all()
    return {c.name: c for c in rows}


def write(path: Path, entries: list[dict[str, list[str]]]) -> Path:
    path.write_text(json.dumps(entries), encoding="utf-8")
    return path


def test_import_stores_concepts_that_the_api_lists(cli_archive, tmp_path) -> None:
    settings = cli_archive
    raw = json.loads(SAMPLE.read_text())
    result = run("import", str(SAMPLE))
    assert result.exit_code == 0, result.output
    assert "5 concepts, 255 descriptions (51-51 per concept)" in result.stdout
    assert "stored for model ramdex-demo" in result.stdout and "5 created" in result.stdout
    rows = stored(settings)
    assert {name.lower() for name in rows} == {next(iter(e)).lower() for e in raw}
    model_id = configured_model_id(settings)
    assert {c.model_name for c in rows.values()} == {model_id}
    assert {c.status for c in rows.values()} == {"draft"}
    aloe = next(e["Aloe"] for e in raw if "Aloe" in e)
    assert list(rows["Aloe"].descriptions) == aloe  # upstream rows kept as written

    # GET /concepts (what the web UI shows) sees them.
    keys = make_keys(settings.database_url)
    with TestClient(create_app(settings)) as client:
        listed = client.get("/concepts", headers=keys.read).json()["items"]
    assert sorted(c["name"] for c in listed) == sorted(rows)
    assert all(c["status"] == "draft" for c in listed)

    # Importing again merges by name, in any case: new descriptions replace the old ones.
    again = write(
        tmp_path / "again.json", [{"aloe": ["a potted aloe plant."]}, {"Khinkali": ["dumplings."]}]
    )
    result = run("import", str(again), "--json")
    assert result.exit_code == 0, result.output
    actions = {c["name"]: c["action"] for c in json.loads(result.stdout)["concepts"]}
    assert actions == {"Aloe": "updated", "Khinkali": "created"}
    rows = stored(settings)
    assert list(rows["Aloe"].descriptions) == ["a photo of a aloe.", "a potted aloe plant."]
    assert len(rows) == 6
    result = run("import", str(again), "--json")
    assert {c["action"] for c in json.loads(result.stdout)["concepts"]} == {"unchanged"}

    listed = run("list", "--json")
    assert listed.exit_code == 0 and len(json.loads(listed.stdout)["concepts"]) == 6
    described = run("describe", "ALOE", "--json")
    assert json.loads(described.stdout) == {"Aloe": list(rows["Aloe"].descriptions)}


def test_bad_files_store_nothing_and_exit_2(cli_archive, tmp_path) -> None:
    bad = write(tmp_path / "bad.json", [{"a": 1}])  # type: ignore[list-item]
    result = run("import", str(bad))
    assert result.exit_code == 2 and "list of strings" in result.stderr
    assert "Traceback" not in result.output
    result = run("import", str(tmp_path / "missing.json"))
    assert result.exit_code == 2 and "no such file" in result.stderr
    (tmp_path / "not-json.json").write_text("{")
    assert run("import", str(tmp_path / "not-json.json")).exit_code == 2
    assert run("import", str(SAMPLE), "--dry-run").exit_code == 0
    assert stored(cli_archive) == {}


def test_a_concept_named_like_a_builtin_tag_is_refused(cli_archive, tmp_path) -> None:
    settings = cli_archive
    model_id = configured_model_id(settings)
    with session_scope(settings.database_url) as session:  # as the first ingest stores them
        session.add(Tag(model_name=model_id, english="circle", chinese=None, threshold=0.5))
    entries = [{"Circle": ["a round shape."]}, {"navy": ["a dark deep blue colour."]}]
    result = run("import", str(write(tmp_path / "c.json", entries)))
    assert result.exit_code == 1, result.output  # one refused, the other stored
    assert "refused 'Circle'" in result.stderr and "builtin tag named 'circle'" in result.stderr
    assert set(stored(settings)) == {"navy"}


def _reference(settings: Settings, name: str, descriptions: list[str]) -> dict[int, float]:
    """A concept's probability per stored asset from the model's plain RAM++ head (prompt
    templates stand in for descriptions only when there are none, as in search)."""
    from indexer.models import load_configured_model
    from indexer.stores import token_store_path
    from indexer.token_store import TokenStore
    from ram_pp.concepts import encode_concepts, make_concept
    from ram_pp.text_encoder import load_text_encoder

    loaded = load_configured_model(settings)
    encoder = load_text_encoder(loaded.config.text_encoder)
    spec = make_concept(name, descriptions, use_templates=not descriptions)
    bank = encode_concepts([spec], encoder)
    store = TokenStore(token_store_path(settings, configured_model_id(settings)), read_only=True)
    ids = store.ids()
    with torch.inference_mode():
        logits = loaded.model.logits_from_embeddings(torch.from_numpy(store.get(ids)), bank)
    return dict(zip(ids.tolist(), torch.sigmoid(logits[:, 0]).tolist(), strict=True))


def _scores(settings: Settings, tag_id: int) -> dict[int, float]:
    with session_scope(settings.database_url) as session:
        rows = session.execute(
            sa.select(AssetTag.asset_id, AssetTag.score).where(AssetTag.tag_id == tag_id)
        ).all()
    return {int(a): float(s) for a, s in rows}


@pytest.mark.parametrize("cli_archive", ["sqlite"], indirect=True)
def test_backfill_makes_imported_concepts_tags(cli_archive, tmp_path) -> None:
    from indexer.ingest.pipeline import ingest
    from ram_pp.synth import SynthSpec, write_dataset

    settings = cli_archive
    samples = tmp_path / "samples"
    write_dataset(samples, SynthSpec(seed=7, n_train=0, n_val=0, n_test=24))
    assert ingest([samples / "images" / "test"], settings=settings, progress=False).done == 24

    wanted = [e for e in heldout_json() if next(iter(e)) in ("navy", "striped purple square")]
    concepts_file = write(tmp_path / "h.json", wanted)
    assert run("import", str(concepts_file)).exit_code == 0

    # Imported, not yet a tag: a free-text search for its name scores it by its descriptions.
    keys = make_keys(settings.database_url)
    navy = stored(settings)["navy"]
    expected = _reference(settings, navy.name, list(navy.descriptions))
    templates_only = _reference(settings, navy.name, [])
    with TestClient(create_app(settings)) as client:
        page = client.post("/search", json={"text": "navy", "limit": 100}, headers=keys.read)
    hits = {h["asset"]["id"]: h["score"] for h in page.json()["hits"]}
    assert hits.keys() == expected.keys()
    assert all(abs(hits[a] - expected[a]) < 1e-4 for a in hits)
    assert any(abs(hits[a] - templates_only[a]) > 1e-3 for a in hits)  # not the templates

    result = run("import", str(concepts_file), "--backfill")
    assert result.exit_code == 0, result.output
    assert result.stderr.count("demo model: 40 synthetic tags") == 1  # it scored: it says so
    assert result.stdout.count("is a tag: 24 assets scored") == 2
    floor = settings.index.score_floor
    for concept in stored(settings).values():
        assert concept.status == "promoted" and concept.tag_id is not None
        reference = _reference(settings, concept.name, list(concept.descriptions))
        expected = {a: p for a, p in reference.items() if p >= floor}
        got = _scores(settings, concept.tag_id)
        assert got.keys() == expected.keys()
        assert all(abs(got[a] - expected[a]) < 1e-3 for a in got)

    # Search sees the new tags by name, through the API.
    with TestClient(create_app(settings)) as client:
        page = client.post("/search", json={"all": ["navy"]}, headers=keys.read).json()
        tags = client.get("/tags?origin=concept", headers=keys.read).json()["items"]
    assert {t["name"] for t in tags} == {"navy", "striped purple square"}
    navy = stored(settings)["navy"]
    above = {a for a, s in _scores(settings, navy.tag_id).items() if s > navy.threshold}
    assert {h["asset"]["id"] for h in page["hits"]} == above

    # A tag's descriptions change only with a new backfill (its scores must match them).
    changed = [{"navy": ["a navy blue shape.", "dark blue, like a sailor's uniform."]}]
    file = write(tmp_path / "n.json", changed)
    refused = run("import", str(file))
    assert refused.exit_code == 1 and "--backfill" in refused.stderr
    assert list(stored(settings)["navy"].descriptions) == list(navy.descriptions)
    redone = run("import", str(file), "--backfill")
    assert redone.exit_code == 0, redone.output
    navy = stored(settings)["navy"]
    assert navy.status == "promoted" and "a navy blue shape." in navy.descriptions
    reference = _reference(settings, navy.name, list(navy.descriptions))
    expected = {a: p for a, p in reference.items() if p >= floor}
    got = _scores(settings, navy.tag_id)
    assert got.keys() == expected.keys()
    assert all(abs(got[a] - expected[a]) < 1e-3 for a in got)
