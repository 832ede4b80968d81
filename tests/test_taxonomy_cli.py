"""``ramdex taxonomy import | show | export | stats`` on PostgreSQL and SQLite, through typer's
CliRunner (the root group and its error handler, as the console script), settings from the
environment as a person sets them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import sqlalchemy as sa

from indexer.db.session import session_scope
from indexer.db.taxonomy import TaxonomyBroader, TaxonomyTerm
from indexer.settings import get_settings
from tests.cli_support import assert_first_line_error as one_error
from tests.cli_support import run_ramdex as ramdex

pytest_plugins = ["tests.db_fixtures"]

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "taxonomy-example.csv"


@pytest.fixture
def env(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The environment of a person using the database ``db_url``, its taxonomy emptied."""
    for key in [k for k in os.environ if k.startswith("RAMDEX_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("RAMDEX_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RAMDEX_DATABASE__URL", db_url)
    with session_scope(db_url) as s:
        s.execute(sa.delete(TaxonomyBroader))
        s.execute(sa.delete(TaxonomyTerm))
    yield db_url
    get_settings.cache_clear()


def test_import_show_stats_export(env: str, tmp_path: Path) -> None:
    code, out = ramdex("taxonomy", "import", str(EXAMPLE), "--json")
    assert code == 0, out
    result = json.loads(out)
    assert result["concepts"] == 18 and result["bare"] == ["plant"]

    code, out = ramdex("taxonomy", "show", "Hound", "--json")
    assert code == 0, out
    info = json.loads(out)
    assert (info["key"], info["matched"]) == ("dog", "hound")
    assert [p["key"] for p in info["parents"]] == ["mammal", "pet"]
    assert {a["label"] for a in info["aliases"]} == {"狗", "doggy", "hound", "犬"}
    code, out = ramdex("taxonomy", "show", "鸟")
    assert code == 0 and "children: parrot, sparrow" in out and "parents: animal" in out, out

    code, out = ramdex("taxonomy", "stats", "--json")
    assert code == 0 and json.loads(out)["concepts"] == 18, out

    exported = tmp_path / "out.json"
    code, out = ramdex("taxonomy", "export", str(exported))
    assert code == 0, out
    doc = json.loads(exported.read_text())
    dog = next(c for c in doc["concepts"] if c["prefLabel"]["en"] == "dog")
    assert sorted(dog["broader"]) == ["mammal", "pet"] and "犬" in dog["altLabel"]["zh"]
    # the export imports back to the same taxonomy
    before = ramdex("taxonomy", "show", "--json")[1]
    code, out = ramdex("taxonomy", "import", str(exported))
    assert code == 0, out
    assert ramdex("taxonomy", "show", "--json")[1] == before


def test_errors_and_merge(env: str, tmp_path: Path) -> None:
    assert ramdex("taxonomy", "import", str(EXAMPLE))[0] == 0
    bad = tmp_path / "bad.csv"
    bad.write_text("en,alt_en\nboat,\nship,automobile|vessel\nboat2,vessel\n", encoding="utf-8")
    code, out = ramdex("taxonomy", "import", str(bad))
    one_error(code, out, "line 4", "'vessel'")
    cyc = tmp_path / "cycle.json"
    cyc.write_text('{"concepts": [{"prefLabel": {"en": "a"}, "broader": ["a"]}]}')
    one_error(*ramdex("taxonomy", "import", str(cyc)), "cycle")
    one_error(*ramdex("taxonomy", "import", str(tmp_path / "missing.csv")), "no such file")
    # nothing changed by the refused files; the dry run stores nothing either
    extra = tmp_path / "extra.csv"
    extra.write_text("en,broader\nboat,vehicle\n", encoding="utf-8")
    code, out = ramdex("taxonomy", "import", str(extra), "--merge", "--dry-run", "--json")
    assert code == 0 and json.loads(out)["concepts"] == 19, out
    code, out = ramdex("taxonomy", "show", "boat")
    assert code == 2 and out.startswith("error: the taxonomy has no term 'boat'"), out
    assert ramdex("taxonomy", "import", str(extra), "--merge")[0] == 0
    code, out = ramdex("taxonomy", "show", "boat", "--json")
    assert code == 0 and json.loads(out)["parents"] == [{"key": "vehicle", "label": "vehicle"}]
    assert ramdex("taxonomy", "show", "car")[0] == 0  # the merge kept the rest
    # --replace (the default) leaves only the file
    assert ramdex("taxonomy", "import", str(extra), "--replace")[0] == 0
    assert ramdex("taxonomy", "show", "car")[0] == 2
    one_error(*ramdex("taxonomy", "export", str(tmp_path / "x.txt")), "format")


def test_import_says_how_many_concepts_name_a_tag(env: str, tmp_path: Path, monkeypatch) -> None:
    """A vocabulary made for another model imports and then matches nothing: the import says
    how many concepts name a tag of the configured model, and warns at none."""
    import numpy as np

    from indexer import db
    from ram_pp.vocab import TagVocabulary

    monkeypatch.setenv("RAMDEX_MODEL__NAME", "test_micro")
    with session_scope(env) as s:
        vocab = TagVocabulary(("dog", "sky"), ("狗", "天空"), np.array([0.5, 0.5], np.float32))
        db.ensure_vocabulary(s, "test_micro@random", vocab)
    code, out = ramdex("taxonomy", "import", str(EXAMPLE))
    assert code == 0 and "1 of 17 concepts name a tag of the configured model" in out, out
    assert "warning" not in out
    other = tmp_path / "other.csv"
    other.write_text("en,zh,alt_en,alt_zh,broader\nlorry,卡车,truck,,\n", encoding="utf-8")
    code, out = ramdex("taxonomy", "import", str(other))
    assert code == 0 and "0 of 1 concepts name a tag" in out and "warning: no concept" in out
