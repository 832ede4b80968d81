"""``ramdex thresholds suggest|apply|reset`` on PostgreSQL and SQLite through typer's CliRunner
(the root group and its error handler, as the console script), settings from the environment:
the table and JSON show the evidence, apply changes a tag search at once, reset undoes it,
mistakes are one ``error:`` line and exit 2."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from indexer.settings import get_settings
from tests.cli_support import assert_first_line_error as one_error
from tests.cli_support import run_ramdex
from tests.test_thresholds import BOUNDARY, FLOOR, dog_archive, searched

pytest_plugins = ["tests.db_fixtures"]

MODEL_ID = "test_micro@random"  # the id of the configured random test model's tags


@pytest.fixture
def archive(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, dict[int, float], set[int]]]:
    """The known-boundary dog archive for the configured model, and the environment using it."""
    for key in [k for k in os.environ if k.startswith("RAMDEX_")]:
        monkeypatch.delenv(key)
    env = {
        "HOME": str(tmp_path / "home"),
        "DATABASE__URL": db_url,
        "MODEL__NAME": "test_micro",
        "MODEL__DEVICE": "cpu",
        "BROKER__URL": "",
        "INDEX__SCORE_FLOOR": str(FLOOR),
    }
    for key, value in env.items():
        monkeypatch.setenv(f"RAMDEX_{key}", value)
    monkeypatch.chdir(tmp_path)  # no stray .env file
    _, score_of, reviewed = dog_archive(db_url, MODEL_ID)
    yield db_url, score_of, reviewed
    get_settings.cache_clear()


def ramdex(*args: str, stdin: str | None = None) -> tuple[int, str]:
    """Run ``ramdex thresholds ARGS`` in this process: (exit code, stdout and stderr)."""
    return run_ramdex("thresholds", *args, stdin=stdin)


def test_suggest_apply_reset(archive: tuple[str, dict[int, float], set[int]]) -> None:
    url, score_of, reviewed = archive
    positives = sum(score_of[a] > BOUNDARY for a in reviewed)
    code, out = ramdex("suggest", "--target-precision", "1", "--json")
    assert code == 0, out
    (dog,) = json.loads(out)["tags"]
    assert (dog["tag"], dog["reviews"], dog["positives"]) == ("dog", len(reviewed), positives)
    assert dog["suggested"] == pytest.approx(BOUNDARY, abs=0.011) and dog["changes"]
    assert dog["current"] == pytest.approx(0.3)

    code, out = ramdex("suggest", "--target-precision", "0.5", "--target-for", "狗=1", "--json")
    assert code == 0, out
    (dog,) = json.loads(out)["tags"]  # the tag's own target wins over the global one
    assert dog["target"] == 1 and dog["suggested"] == pytest.approx(BOUNDARY, abs=0.011)
    code, out = ramdex("suggest", "--target-precision", "0.5", "--json")
    assert code == 0 and not json.loads(out)["tags"][0]["changes"], out  # 0.57 >= 0.5 already

    code, out = ramdex("suggest", "--target-precision", "1", "--tag", "狗")
    assert code == 0, out
    row = next(line for line in out.splitlines() if line.startswith("dog "))
    assert f"+{positives}/-{len(reviewed) - positives}" in row and "0.3 -> 0.6" in row, out

    held = set(score_of) - reviewed
    truly = {a for a in held if score_of[a] > BOUNDARY}
    before = searched(url, "dog", MODEL_ID) & held
    code, out = ramdex("apply", "--target-precision", "1", "--tag", "dog", stdin="n\n")
    assert code == 1 and "nothing changed" in out, out  # declined: nothing written
    assert searched(url, "dog", MODEL_ID) & held == before
    code, out = ramdex("apply", "--target-precision", "1", "--yes")
    assert code == 0 and "1 thresholds set" in out, out
    after = searched(url, "dog", MODEL_ID) & held
    assert len(after & truly) / len(after) > 0.97 > len(before & truly) / len(before)

    code, out = ramdex("suggest", "--target-precision", "1", "--json")
    assert code == 0 and not json.loads(out)["tags"][0]["changes"], out  # applied: nothing left
    code, out = ramdex("reset", "--json")
    assert code == 0 and json.loads(out)["cleared"] == 1, out
    assert searched(url, "dog", MODEL_ID) & held == before


def test_not_enough_evidence_changes_nothing(
    archive: tuple[str, dict[int, float], set[int]],
) -> None:
    url, score_of, _ = archive
    before = searched(url, "dog", MODEL_ID)
    code, out = ramdex("apply", "--min-reviews", "1000", "--yes")
    assert code == 0 and "no threshold to change" in out, out
    assert "not enough evidence: needs 1000 reviews" in out, out
    assert searched(url, "dog", MODEL_ID) == before


def test_mistakes_are_one_line_errors(archive: tuple[str, dict[int, float], set[int]]) -> None:
    one_error(*ramdex("suggest", "--tag", "unicorn"), "unicorn")
    one_error(*ramdex("suggest", "--target-for", "dog"), "--target-for", "TAG=P")
    one_error(*ramdex("suggest", "--target-for", "dog=2"), "--target-for")
    one_error(*ramdex("apply", "--json"), "--yes")
    one_error(*ramdex("reset", "--tag", "unicorn"), "unicorn")
