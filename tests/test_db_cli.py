"""``ramdex db`` and ``ramdex index`` commands (the typer apps, as the ``ramdex`` script mounts
them) against a real SQLite file and the real PostgreSQL server."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from api.cli.db import app as db_app
from api.cli.index import app as index_app
from indexer import db
from indexer.db.session import session_scope
from indexer.migrate import current_revision, head_revision
from ram_pp.vocab import TagVocabulary

pytest_plugins = ["tests.db_fixtures"]

runner = CliRunner()


def test_db_upgrade_current_downgrade(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.sqlite3'}"
    result = runner.invoke(db_app, ["current", "--url", url])
    assert result.exit_code == 1 and "revision none" in result.output
    result = runner.invoke(db_app, ["upgrade", "--url", url])
    assert result.exit_code == 0, result.output
    assert current_revision(url) == head_revision()
    assert runner.invoke(db_app, ["current", "--url", url]).exit_code == 0
    refused = runner.invoke(db_app, ["downgrade", "base", "--url", url])
    assert refused.exit_code == 2 and current_revision(url) == head_revision()
    result = runner.invoke(db_app, ["downgrade", "base", "--url", url, "--yes"])
    assert result.exit_code == 0 and "at revision base" in result.output
    assert current_revision(url) is None


def test_index_rebuild_check_sync(db_url: str, tmp_path: Path) -> None:
    model = "cli-model@1"
    vectors = np.random.default_rng(0).standard_normal((40, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with session_scope(db_url) as s:
        tag_ids = db.ensure_vocabulary(s, model, TagVocabulary.from_names(["x"]))
        ids = [
            db.get_or_create_asset_by_sha(s, sha256=hashlib.sha256(v.tobytes()).hexdigest()).id
            for v in vectors
        ]
        db.write_asset_results(
            s,
            [
                db.AssetResult(a, np.array([0.5], np.float32), embedding=v)
                for a, v in zip(ids, vectors, strict=True)
            ],
            model_name=model,
            tag_ids=tag_ids,
        )
    common = ["--model", model, "--index-dir", str(tmp_path), "--url", db_url]

    missing = runner.invoke(index_app, ["check", *common])
    assert missing.exit_code == 1 and "rebuild" in missing.output
    built = runner.invoke(index_app, ["rebuild", *common])
    assert built.exit_code == 0, built.output
    assert "flat, 40 vectors, dim 16" in built.output
    ok = runner.invoke(index_app, ["check", *common])
    assert ok.exit_code == 0 and "in sync" in ok.output

    with session_scope(db_url) as s:
        db.delete_asset(s, ids[3])
    drift = runner.invoke(index_app, ["check", *common])
    assert drift.exit_code == 1 and "extra 1" in drift.output and str(ids[3]) in drift.output
    synced = runner.invoke(index_app, ["sync", *common])
    assert synced.exit_code == 0 and "in sync" in synced.output
    assert runner.invoke(index_app, ["check", *common]).exit_code == 0
