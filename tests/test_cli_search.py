"""``ramdex search`` and ``ramdex assets show|delete`` over a demo archive with ground truth.

The commands run in this process through typer's CliRunner (the real root group and error
handler), one through the installed console script; expected hits come from the generator's
ground truth (tests/search_support.py), and the CLI is checked to answer as the API does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from api.app import create_app
from api.cli import app
from indexer.settings import get_settings
from ram_pp.factory import DEMO_MODEL
from tests.api_support import make_keys
from tests.search_support import SearchArchive, heldout, jaccard, search_archive

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _env(archive: SearchArchive) -> dict[str, str]:
    settings = archive.settings
    return {
        "RAMDEX_HOME": str(settings.home),
        "RAMDEX_DATABASE__URL": settings.database_url,
        "RAMDEX_MODEL__NAME": DEMO_MODEL,
        "RAMDEX_MODEL__DEVICE": "cpu",
        "RAMDEX_BROKER__URL": "",
    }


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SearchArchive]:
    with search_archive(tmp_path_factory.mktemp("cli-search"), "sqlite") as built:
        yield built


@pytest.fixture()
def ramdex(archive: SearchArchive, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Run ``ramdex ARGS...`` in this process against the archive: (exit code, stdout, stderr)."""
    for key in [k for k in os.environ if k.startswith("RAMDEX_")]:
        monkeypatch.delenv(key)
    for key, value in _env(archive).items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)  # no stray .env file

    def run(*args: str) -> tuple[int, str, str]:
        get_settings.cache_clear()
        try:
            result = CliRunner().invoke(app, list(args))
        finally:
            get_settings.cache_clear()
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            f"{type(result.exception).__name__}: {result.exception}\n{result.output}"
        )
        return result.exit_code, result.stdout, result.stderr

    return run


def search_json(ramdex, *args: str) -> dict:  # noqa: ANN001 - the fixture's runner
    code, out, err = ramdex("search", *args, "--format", "json")
    assert code == 0, out + err
    return json.loads(out)


def hit_ids(page: dict) -> list[int]:
    return [h["asset_id"] for h in page["hits"]]


def test_search_all_red_returns_red_assets_with_every_field(archive, ramdex) -> None:
    red = archive.having("red")
    assert len(red) >= 4
    page = search_json(ramdex, "--all", "red", "--limit", "50")
    assert page["model"] == "ramdex-demo"
    found = hit_ids(page)
    top = found[: len(red)]
    assert sum(i in red for i in top) / len(top) >= 0.8, (top, red)
    for hit in page["hits"]:
        assert hit["source"] == str(archive.paths[hit["asset_id"]])
        assert isinstance(hit["score"], float)
        assert hit["reasons"] and hit["reasons"][0]["kind"] == "tag"
        assert hit["reasons"][0]["name"] == "red"


def test_search_for_a_concept_the_model_never_saw(archive, ramdex) -> None:
    navy = archive.showing("navy")
    assert len(navy) >= 5
    described = [a for d in heldout("navy").descriptions for a in ("--description", d)]
    page = search_json(ramdex, "navy", *described, "--limit", str(len(navy)))
    assert sum(i in navy for i in hit_ids(page)) / len(navy) >= 0.75
    assert page["concept_threshold"] is not None
    first = page["hits"][0]["reasons"][0]
    assert first["kind"] == "concept" and first["name"] == "navy"
    assert isinstance(first["above_threshold"], bool)


def test_search_similar_to_an_asset_and_to_an_image_file(archive, ramdex) -> None:
    truth = archive.truth
    near, base = [], []
    for query in sorted(truth)[:6]:
        page = search_json(ramdex, "--similar", str(query), "--limit", "5")
        found = hit_ids(page)
        assert query not in found and len(found) == 5
        assert page["hits"][0]["reasons"][0]["kind"] == "similar"
        near += [jaccard(truth[query], truth[i]) for i in found]
        base += [jaccard(truth[query], truth[i]) for i in truth if i != query]
    assert sum(near) / len(near) >= sum(base) / len(base) + 0.15, (near, base)
    query = min(truth)
    by_file = search_json(ramdex, "--similar", str(archive.paths[query]), "--limit", "3")
    assert hit_ids(by_file)[0] == query


def test_search_none_excludes_the_tag(archive, ramdex) -> None:
    page = search_json(ramdex, "--all", "large", "--none", "red", "--limit", "200")
    found = set(hit_ids(page))
    assert found
    assert len(found & archive.having("red")) <= 0.1 * len(found)
    wanted = {i for i in archive.having("large") if "red" not in archive.truth[i]}
    assert len(found & wanted) >= 0.8 * len(wanted)


def test_text_output_lists_id_score_source_and_why(archive, ramdex) -> None:
    code, out, err = ramdex("search", "--all", "red", "--limit", "3")
    assert code == 0, out + err
    lines = out.splitlines()
    assert lines[0].startswith("3 hit(s), model ramdex-demo")
    first = lines[1].split()
    asset_id = int(first[0])
    assert float(first[1]) > 0.5 and first[2] == str(archive.paths[asset_id])
    assert "[red " in lines[1]
    assert "--cursor " in out  # more pages


def test_the_cli_answers_as_the_api_does(archive, ramdex) -> None:
    keys = make_keys(archive.settings.database_url)
    described = list(heldout("navy").descriptions)
    queries = [
        (["--all", "small", "--none", "circle"], {"all": ["small"], "none": ["circle"]}),
        (["navy", "--description", described[0]], {"text": "navy", "descriptions": described[:1]}),
        (["--similar", str(min(archive.truth))], {"similar_to": min(archive.truth)}),
        (["--all", "small", "--sort", "date"], {"all": ["small"], "sort": "date"}),
    ]
    with TestClient(create_app(archive.settings)) as client:
        for args, body in queries:
            cli = search_json(ramdex, *args, "--limit", "15")
            reply = client.post("/search", json={**body, "limit": 15}, headers=keys.read)
            assert reply.status_code == 200, reply.text
            api = reply.json()
            assert hit_ids(cli) == [h["asset"]["id"] for h in api["hits"]], args
            assert [h["score"] for h in cli["hits"]] == [h["score"] for h in api["hits"]]


def test_unknown_tags_and_bad_options_are_one_line_errors(archive, ramdex) -> None:
    code, out, err = ramdex("search", "--all", "red", "--none", "purpel")
    assert code == 2
    assert "Traceback" not in out + err
    assert err.splitlines()[-2] == "error: unknown tag --none 'purpel' for model ramdex-demo"
    assert "'purple'" in err.splitlines()[-1]  # did you mean
    code, _, err = ramdex("search", "--similar", str(10**9))
    assert code == 2 and f"--similar: asset {10**9} does not exist" in err
    code, _, err = ramdex("search", "--similar", "no-such-file.png")
    assert code == 2 and "neither an asset id nor an image file" in err
    code, _, err = ramdex("search", "navy", "--similar", "1")
    assert code == 2 and "either text or a similar image" in err
    code, _, err = ramdex("search", "--all", "red", "--cursor", "o.bm90LWEtY3Vyc29y")
    assert code == 2 and "--cursor" in err


def test_the_console_script_exits_2_naming_the_unknown_tag(archive, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAMDEX_")}
    env.update(_env(archive))
    ramdex = Path(sys.executable).with_name("ramdex")
    done = subprocess.run(
        [str(ramdex), "search", "--any", "bleu"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert "error: unknown tag --any 'bleu' for model ramdex-demo" in done.stderr
    assert done.stderr.startswith("demo model: 40 synthetic tags")  # says what it is, once


def test_assets_show_then_delete_removes_it_from_search(archive, ramdex) -> None:
    red = hit_ids(search_json(ramdex, "--all", "red", "--limit", "5"))
    victim = red[0]
    code, out, err = ramdex("assets", "show", str(victim), "--format", "json")
    assert code == 0, out + err
    shown = json.loads(out)
    assert shown["id"] == victim and shown["status"] == "done"
    assert shown["sources"][0]["uri"] == str(archive.paths[victim])
    assert shown["model"] == "ramdex-demo"
    output_tags = {t["name"] for t in shown["tags"] if t["above_threshold"]}
    truth = archive.truth[victim]
    assert len(output_tags & truth) >= 0.7 * len(output_tags)
    code, out, _ = ramdex("assets", "show", str(victim))
    assert code == 0 and str(archive.paths[victim]) in out and "red" in out

    code, out, err = ramdex("assets", "delete", str(victim), "--yes")
    assert code == 0 and f"deleted asset {victim}" in out, out + err
    archive.deleted.add(victim)
    assert victim not in hit_ids(search_json(ramdex, "--all", "red", "--limit", "200"))
    assert victim not in hit_ids(search_json(ramdex, "--similar", str(red[1]), "--limit", "200"))
    code, _, err = ramdex("assets", "show", str(victim))
    assert code == 2 and f"asset {victim} does not exist" in err
    code, _, err = ramdex("assets", "delete", str(victim), "--yes")
    assert code == 2 and f"asset {victim} does not exist" in err
    code, _, err = ramdex("assets", "show", "0")
    assert code == 2  # ids start at 1
