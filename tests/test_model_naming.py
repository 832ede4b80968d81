"""Models have human names (``ramdex-demo``, a registered name, a checkpoint's file name) with
the digest beside them, while the stored id (``assets.model_name``) stays what it was, so existing
archives keep matching their model."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

from fastapi.testclient import TestClient

from api.app import create_app
from indexer.db.session import session_scope
from indexer.db.tag_repo import ensure_vocabulary
from indexer.models import configured_model_id, describe_configured_model, model_name_for_id
from indexer.settings import Settings
from ram_pp.factory import (
    DEMO_DISPLAY_NAME,
    demo_checkpoint,
    describe,
    describe_model,
    load_model,
    resolve_model,
)
from tests import api_support
from tests.api_support import MODEL
from tests.conftest import GOLDEN, GOLDEN_IMAGES

pytest_plugins = ["tests.api_support"]
api_env = api_support.api_env

DEMO = demo_checkpoint()


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _settings(tmp_path, **model) -> Settings:
    return Settings(home=tmp_path / "home", database={"url": ""}, model=model)


def test_the_demo_model_is_named_and_explained() -> None:
    described = describe()  # nothing configured: the bundled demo model
    assert described.name == DEMO_DISPLAY_NAME and described.is_demo
    assert described.digest == _sha256(DEMO)
    # The demo vocabulary as the file itself carries it (not taken from the code under test).
    loaded = load_model(DEMO)
    assert described.num_tags == len(loaded.vocabulary) == 40
    assert described.has_chinese is False  # its Chinese names are the English ones repeated
    assert described.label == f"ramdex-demo ({_sha256(DEMO)[:12]})"
    assert "demo model: 40 synthetic tags" in described.notice
    assert "ramdex models download" in described.notice
    assert describe("demo") == described
    assert describe_model(loaded) == described  # the same answer from a loaded model


def test_a_copy_of_the_demo_file_is_still_the_demo_model(tmp_path) -> None:
    copy = tmp_path / "renamed.safetensors"
    shutil.copy(DEMO, copy)
    assert describe(checkpoint=copy).is_demo and describe(checkpoint=copy).name == "ramdex-demo"
    copy.write_bytes(copy.read_bytes()[:-1] + b" ")  # same size, other bytes: not the demo
    assert not describe(checkpoint=copy).is_demo


def test_custom_checkpoints_and_registered_models_have_their_own_names() -> None:
    golden = GOLDEN / "checkpoint.pth"
    described = describe(checkpoint=golden)
    assert described.name == "checkpoint.pth" and not described.is_demo
    assert described.digest == _sha256(golden) and described.notice is None
    loaded = load_model(golden)
    assert described.num_tags == len(loaded.vocabulary)
    vocab = loaded.vocabulary
    assert described.has_chinese == any(
        zh != en for en, zh in zip(vocab.english, vocab.chinese, strict=True)
    )
    micro = describe("test_micro")
    assert micro.name == "test_micro" and micro.digest is None and not micro.is_demo
    assert micro.num_tags == len(resolve_model("test_micro").vocabulary)
    published = describe("ram_plus_swin_large_14m")  # not downloaded here: named all the same
    assert published.name == "ram_plus_swin_large_14m" and published.num_tags == 4585
    assert published.has_chinese and published.digest is None and not published.is_demo


def test_stored_ids_are_unchanged_and_map_back_to_names(tmp_path) -> None:
    settings = _settings(tmp_path)
    digest = _sha256(DEMO)[:12]
    # The key existing archives were stored under: file stem @ digest (never renamed).
    assert configured_model_id(settings) == f"model@{digest}"
    assert describe_configured_model(settings).name == "ramdex-demo"
    assert model_name_for_id(f"model@{digest}", settings) == "ramdex-demo"
    assert model_name_for_id(f"demo@{digest}", settings) == "ramdex-demo"  # `ramdex demo` ids
    assert model_name_for_id("mine@0123456789ab", settings) == "mine"
    assert model_name_for_id(None, settings) is None
    custom = _settings(tmp_path, checkpoint=str(GOLDEN / "checkpoint.pth"))
    assert describe_configured_model(custom).name == "checkpoint.pth"
    assert model_name_for_id(configured_model_id(custom), custom) == "checkpoint.pth"


def test_tags_page_with_next_cursor(api_env) -> None:
    client, keys, settings = api_env
    with session_scope(settings.database_url) as session:  # as the first ingest would
        ensure_vocabulary(session, configured_model_id(settings), resolve_model(MODEL).vocabulary)
    everything = client.get("/tags?limit=1000", headers=keys.read).json()
    assert everything["next_cursor"] is None and "next_offset" not in everything
    names = [t["name"] for t in everything["items"]]
    assert len(names) > 3
    seen, cursor = [], None
    while True:
        query = "/tags?limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(query, headers=keys.read).json()
        assert len(page["items"]) <= 3
        seen += [t["name"] for t in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == names  # every tag once, in order
    bad = client.get("/tags?cursor=%%%", headers=keys.read)
    assert bad.status_code == 422 and "next_cursor" in bad.json()["detail"]


def _tag(*args: str):
    from typer.testing import CliRunner

    from api.cli import app, model_notice

    model_notice._announced.clear()  # "once per process": each invocation here is a process
    return CliRunner().invoke(app, ["tag", *args])


def test_ramdex_tag_says_once_that_the_demo_model_is_a_demo(golden_dir) -> None:
    images = [str(golden_dir / name) for name in GOLDEN_IMAGES]
    result = _tag(*images, "--format", "json")
    assert result.exit_code == 0, result.output
    assert result.stderr.count("demo model: 40 synthetic tags") == 1  # once, for every file
    assert "not real photographs" in result.stderr and "ramdex models download" in result.stderr
    records = json.loads(result.stdout)
    assert len(records) == len(images) and {r["model"] for r in records} == {"ramdex-demo"}


def test_ramdex_tag_names_a_custom_checkpoint_and_keeps_quiet(golden_dir) -> None:
    image = str(golden_dir / GOLDEN_IMAGES[0])
    result = _tag(image, "--checkpoint", str(golden_dir / "checkpoint.pth"), "--format", "jsonl")
    assert result.exit_code == 0, result.output
    assert "demo model" not in result.stderr
    assert json.loads(result.stdout.splitlines()[0])["model"] == "checkpoint.pth"


def test_the_demo_archive_opens_with_default_settings(tmp_path) -> None:
    """`ramdex demo` stores its assets under the id that `ramdex serve` with nothing configured
    looks for (the demo tells the user to open it that way)."""
    from api.cli.demo import demo_settings

    home = tmp_path / "demo-home"
    assert configured_model_id(demo_settings(home)) == configured_model_id(_settings(tmp_path))
    assert describe_configured_model(demo_settings(home)).name == "ramdex-demo"


def test_readiness_names_the_model_without_a_key(tmp_path, sqlite_url, settings_for) -> None:
    settings = settings_for(tmp_path / "home", sqlite_url)
    settings.model.name = ""  # the default: the bundled demo model
    with TestClient(create_app(settings)) as client:
        body = client.get("/readyz").json()
    model = body["model"]
    assert model["name"] == "ramdex-demo" and model["is_demo"] is True
    assert model["id"] == configured_model_id(settings)
    assert model["digest"] == _sha256(DEMO)[:12] and model["num_tags"] == 40
    assert model["notice"].startswith("demo model: 40 synthetic tags")


def test_readiness_names_other_models_without_a_notice(api_env) -> None:
    client, _, settings = api_env
    model = client.get("/readyz").json()["model"]
    assert model["name"] == settings.model.name and model["is_demo"] is False
    assert model["notice"] is None and model["id"] == configured_model_id(settings)


def test_ingest_and_reindex_name_the_model(tmp_path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from api.cli import app, model_notice
    from indexer.jobs import get_job_view
    from indexer.settings import get_settings
    from ram_pp.synth import SynthSpec, write_dataset

    for name in [k for k in os.environ if k.startswith("RAMDEX_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("RAMDEX_HOME", str(tmp_path / "home"))  # embedded database and tasks
    monkeypatch.setenv("RAMDEX_MODEL__DEVICE", "cpu")
    get_settings.cache_clear()
    try:
        write_dataset(tmp_path / "s", SynthSpec(seed=3, n_train=0, n_val=0, n_test=4))

        def ramdex(*args: str):
            model_notice._announced.clear()  # each invocation stands for one process
            return CliRunner().invoke(app, list(args))

        ingested = ramdex("ingest", str(tmp_path / "s" / "images" / "test"), "--json")
        assert ingested.exit_code == 0, ingested.output
        assert ingested.stderr.count("demo model: 40 synthetic tags") == 1
        summary = json.loads(ingested.stdout)
        assert summary["done"] == 4 and summary["model"] == "ramdex-demo"
        assert summary["model_digest"] == _sha256(DEMO)[:12]

        counted = ramdex("reindex", "--dry-run", "--json")
        assert counted.exit_code == 0, counted.output
        counts = json.loads(counted.stdout)
        assert counts["model"] == "ramdex-demo" and counts["other_model"] == 0
        assert counts["model_id"] == configured_model_id(get_settings())
        redone = ramdex("reindex", "--json")
        assert redone.exit_code == 0, redone.output
        job = get_job_view(get_settings().database_url, json.loads(redone.stdout)["job_id"])
        assert job.params["model"] == "ramdex-demo"  # what GET /jobs and `ramdex jobs` show
        assert job.params["model_id"] == configured_model_id(get_settings())
    finally:
        get_settings.cache_clear()


def test_ramdex_serve_announces_the_demo_model(tmp_path) -> None:
    """`ramdex serve` as a real process: the notice is on stderr once, before requests."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAMDEX_")}
    env.update(RAMDEX_HOME=str(tmp_path / "home"), PYTHONPATH=str(root))
    command = "from api.cli import main; main()"
    args = ["serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    log = tmp_path / "serve.log"
    with open(log, "w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-c", command, *args], env=env, cwd=root, stderr=stderr
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz") as reply:
                        model = json.loads(reply.read())["model"]
                    break
                except OSError:
                    assert proc.poll() is None, log.read_text()
                    assert time.monotonic() < deadline, log.read_text()
                    time.sleep(0.2)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    assert model["name"] == "ramdex-demo"
    assert log.read_text().count("demo model: 40 synthetic tags") == 1


def test_models_list_explains_the_demo_model() -> None:
    from typer.testing import CliRunner

    from api.cli import app

    result = CliRunner().invoke(app, ["models", "list"])
    line = next(x for x in result.stdout.splitlines() if x.startswith("demo "))
    assert "ramdex-demo" in line and "40 synthetic tags" in line and "not for photographs" in line
