"""``ramdex review add|remove|accept|reject|unreview|show|history|queue`` on a SQLite archive,
through typer's CliRunner and the root group's error handler, with settings from the
environment as a person sets them."""

from __future__ import annotations

import getpass
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from api.cli import app
from indexer import db
from indexer.db.session import session_scope
from indexer.migrate import upgrade_database
from indexer.settings import get_settings
from ram_pp.vocab import TagVocabulary

MODEL_ID = "test_micro@random"  # what the configured random test model's assets are stored as

Run = Callable[..., tuple[int, str]]


@pytest.fixture()
def ramdex(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[Run, list[int], str]:
    """``run(*args) -> (exit code, output)``, the archive's 4 assets (dog scored) and its URL."""
    url = f"sqlite:///{tmp_path / 'ramdex.sqlite3'}"
    upgrade_database(url)
    vocab = TagVocabulary(("dog", "cat"), ("狗", "猫"), np.array([0.7, 0.5], np.float32))
    with session_scope(url) as s:
        ids = db.ensure_vocabulary(s, MODEL_ID, vocab)
        assets = [
            db.get_or_create_asset_by_sha(s, sha256=hashlib.sha256(b"%d" % i).hexdigest()).id
            for i in range(4)
        ]
        db.write_tag_scores(s, int(ids[0]), assets, [0.9, 0.72, 0.6, 0.3], score_floor=0.05)
    for key in [k for k in os.environ if k.startswith("RAMDEX_")]:
        monkeypatch.delenv(key)
    env = {
        "HOME": str(tmp_path / "home"),
        "DATABASE__URL": url,
        "MODEL__NAME": "test_micro",
        "MODEL__DEVICE": "cpu",
        "BROKER__URL": "",
    }
    for key, value in env.items():
        monkeypatch.setenv(f"RAMDEX_{key}", value)
    monkeypatch.chdir(tmp_path)  # no stray .env file

    def run(*args: str) -> tuple[int, str]:
        get_settings.cache_clear()
        try:
            result = CliRunner().invoke(app, ["review", *args])
        finally:
            get_settings.cache_clear()
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            f"{type(result.exception).__name__}: {result.exception}\n{result.output}"
        )
        return result.exit_code, result.output

    return run, assets, url


def one_error(code: int, out: str, *words: str) -> None:
    """Exit 2 with one ``error:`` line (and at most a ``hint:``), no traceback."""
    assert code == 2, out
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines[0].startswith("error: ") and len(lines) <= 2 and "Traceback" not in out, out
    assert len(lines) == 1 or lines[1].startswith("hint: "), out
    for word in words:
        assert word in lines[0], out


def show(run: Run, asset_id: int) -> dict[str, dict]:
    code, out = run("show", str(asset_id), "--json")
    assert code == 0, out
    return {t["key"]: t for t in json.loads(out)["tags"]}


def test_add_reject_show_history(ramdex) -> None:
    run, (a, b, *_), _ = ramdex
    code, out = run("add", "Sunset", str(a), str(b), "--json")
    assert code == 0, out
    assert json.loads(out) == {
        "key": "sunset",
        "tag": "Sunset",
        "action": "add",
        "changed": 2,
        "unchanged": 0,
    }
    code, out = run("reject", "狗", str(a))
    assert code == 0 and "1 changed, 0 unchanged" in out, out
    tags = show(run, a)
    assert tags["dog"]["review"] == "rejected" and not tags["dog"]["matches"]
    assert tags["sunset"]["sources"] == ["manual"] and tags["sunset"]["matches"]
    code, out = run("show", str(a))  # the table
    assert code == 0 and "rejected" in out and "Sunset" in out, out

    code, out = run("history", str(a), "--json")
    changes = json.loads(out)["changes"]
    assert [(c["key"], c["action"]) for c in changes] == [("dog", "reject"), ("sunset", "add")]
    assert {c["actor"] for c in changes} == {f"cli:{getpass.getuser()}"}
    assert changes[1]["before"] is None and changes[1]["after"]["manual"] is True

    assert run("remove", "sunset", str(a))[0] == 0
    assert run("unreview", "dog", str(a))[0] == 0
    assert show(run, a)["dog"]["matches"] and "sunset" not in show(run, a)


def test_queue(ramdex) -> None:
    run, (a, b, c, d), _ = ramdex
    assert run("accept", "dog", str(b))[0] == 0
    code, out = run("queue", "dog", "--json")
    assert code == 0, out
    body = json.loads(out)
    assert [i["asset_id"] for i in body["items"]] == [c, a, d]  # .1 .2 .4 from 0.7
    code, out = run("queue", "dog", "--limit", "1", "--json")
    cursor = json.loads(out)["next_cursor"]
    code, out = run("queue", "dog", "--limit", "5", "--cursor", cursor, "--json")
    assert [i["asset_id"] for i in json.loads(out)["items"]] == [a, d]
    code, out = run("queue", "dog")
    assert code == 0 and f"asset {c}" in out.splitlines()[1], out


def test_errors_are_one_line_and_change_nothing(ramdex) -> None:
    run, (a, *_), url = ramdex
    one_error(*run("add", "kite", str(a), "9999"), "9999")
    one_error(*run("accept", "kite", str(a)), "kite")
    one_error(*run("queue", "kite"), "kite")
    one_error(*run("show", "9999"), "9999")
    one_error(*run("history", "9999"), "9999")
    one_error(*run("add", "  ", str(a)), "empty")
    one_error(*run("queue", "dog", "--cursor", "nope"), "cursor")
    with session_scope(url) as s:
        assert s.query(db.AssetLabel).count() == 0 and s.query(db.LabelChange).count() == 0
