"""``ramdex tags``: the tags an archive can be searched by, and a fresh archive's first commands
(which used to answer "database unavailable: no such table")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli_support import assert_first_line_error, run_ramdex
from tests.ingest_fixtures import write_images


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty embedded archive (SQLite, the bundled demo model)."""
    for name in ("RAMDEX_DATABASE__URL", "RAMDEX_BROKER__URL", "RAMDEX_MODEL__CHECKPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAMDEX_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_fresh_archive_says_what_to_do(home: Path) -> None:
    code, out = run_ramdex("tags")
    lines = [line for line in out.splitlines() if line.startswith(("error:", "hint:"))]
    assert code == 1 and "no tags are stored" in lines[0] and "ramdex-demo" in lines[0], out
    assert "ramdex ingest" in lines[1]


def test_a_command_on_a_database_without_tables_names_the_fix(home: Path) -> None:
    home.mkdir(parents=True)
    (home / "ramdex.sqlite3").touch()  # a database file, never migrated
    code, out = run_ramdex("assets", "show", "1")
    lines = [line for line in out.splitlines() if not line.startswith("demo model:")]
    assert_first_line_error(code, "\n".join(lines), "no ramdex tables yet")
    assert "ramdex db upgrade" in out and "server is running" not in out


def test_tags_lists_the_vocabulary_with_counts_after_an_ingest(home: Path, tmp_path: Path) -> None:
    write_images(tmp_path / "imgs", 3)
    code, out = run_ramdex("ingest", str(tmp_path / "imgs"))
    assert code == 0, out
    code, out = run_ramdex("tags", "--format", "json", "--counts", "--limit", "10000")
    assert code == 0, out
    listed = json.loads(out[out.index("[") :])
    from ram_pp.factory import demo_checkpoint, load_model

    vocabulary = load_model(demo_checkpoint()).vocabulary
    assert sorted(t["name"] for t in listed) == sorted(vocabulary.english)
    assert all(0 <= t["assets"] <= 3 for t in listed) and sum(t["assets"] for t in listed) > 0
    # Counts follow the search rule: a person's tag counts, a rejected model tag does not.
    unused = next(t["name"] for t in listed if t["assets"] == 0)
    used = next(t["name"] for t in listed if t["assets"] > 0)
    code, out = run_ramdex("search", "--all", used, "--format", "json")
    holder = json.loads(out[out.index("{") :])["hits"][0]["asset_id"]
    assert run_ramdex("review", "add", unused, str(holder))[0] == 0
    assert run_ramdex("review", "reject", used, str(holder))[0] == 0
    code, out = run_ramdex("tags", "--format", "json", "--counts", "--limit", "10000")
    after = {t["name"]: t["assets"] for t in json.loads(out[out.index("[") :])}
    before = {t["name"]: t["assets"] for t in listed}
    assert after[unused] == 1 and after[used] == before[used] - 1
    # A prefix narrows (any case); the text form names each tag once per line.
    first = sorted(vocabulary.english)[0]
    code, out = run_ramdex("tags", first[:2].upper())
    assert code == 0 and any(line.startswith(first) for line in out.splitlines()), out
    code, out = run_ramdex("tags", "zzzz-no-such")
    assert code == 1 and "starting with 'zzzz-no-such'" in out
