"""``ramdex ingest --manifest``: CSV and Parquet, resume after SIGKILL, duplicates, bad input.

Real PostgreSQL (a database of its own, created and dropped here) and SQLite. The resume test
runs the console script as a real subprocess (it SIGKILLs it mid-registration), and so does one
bad-manifest case (the one-line error as a person sees it); the other runs go through typer's
CliRunner in this process (the same root group and error handler, with settings from the
environment), which saves the ~6 s a fresh interpreter spends importing torch and the model.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from api.cli import app
from indexer.settings import get_settings
from tests.fault_support import ramdex_command
from tests.ingest_fixtures import postgres_database, write_images

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'manifest.sqlite3'}"
    else:
        with postgres_database("ramdex_manifest") as url:
            yield url


def _env(home: Path, url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAMDEX_")}
    env.update(
        RAMDEX_HOME=str(home),
        RAMDEX_DATABASE__URL=url,
        RAMDEX_MODEL__NAME="test_micro",
        RAMDEX_MODEL__DEVICE="cpu",
        RAMDEX_MODEL__BATCH_SIZE="4",
        **extra,
    )
    return env


def _ramdex(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*ramdex_command(), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300
    )


def _ramdex_here(
    args: list[str], env: dict[str, str], cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> subprocess.CompletedProcess:
    """``ramdex ARGS`` in this process (CliRunner), as :func:`_ramdex` runs it in a child."""
    for key in [k for k in os.environ if k.startswith("RAMDEX_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("RAMDEX_"):
            monkeypatch.setenv(key, value)
    monkeypatch.chdir(cwd)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, args)
    finally:
        get_settings.cache_clear()
    # An unexplained exception is a bug: CliRunner keeps it instead of printing a traceback.
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{type(result.exception).__name__}: {result.exception}\n{result.output}"
    )
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def _scalar(url: str, sql: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text(sql)).scalar() or 0)
    finally:
        engine.dispose()


def _write_csv(path: Path, rows: list[list[str]], header=("url", "id", "caption")) -> Path:
    with open(path, "w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(header)
        out.writerows(rows)
    return path


def test_csv_manifest_end_to_end_dedup_and_rules(db_url, tmp_path, monkeypatch):
    images = write_images(tmp_path / "imgs", 5)
    rows = [[f"imgs/{p.name}", f"ext{i}", f"caption {i}"] for i, p in enumerate(images)]
    rows.append([f"imgs/{images[0].name}", "again", "same file twice"])  # duplicate source
    rows.append(["", "blank", "malformed: no source"])
    rows.append(["ftp://example.com/x.jpg", "ftp", "malformed: scheme"])
    rows.append(["/etc/hostname", "outside", "outside allowed_roots"])
    rows.append(["http://127.0.0.1:9/x.jpg", "ssrf", "private address"])
    manifest = _write_csv(tmp_path / "m.csv", rows)
    env = _env(
        tmp_path / "home",
        db_url,
        RAMDEX_STORAGE__ALLOWED_ROOTS=json.dumps([str(tmp_path / "imgs")]),
    )
    run = _ramdex_here(
        ["ingest", "--manifest", str(manifest), "--json"], env, tmp_path, monkeypatch
    )
    assert run.returncode == 1, run.stderr  # some rows malformed or failed
    out = json.loads(run.stdout)
    assert out["rows"] == 10 and out["malformed"] == 2
    assert out["rows_registered_now"] == 8
    assert out["done"] == 5 and out["duplicate"] == 1
    reasons = {f["source"]: f["reason"] for f in out["failures"]}
    assert "/etc/hostname" in reasons and "http://127.0.0.1:9/x.jpg" in reasons
    assert _scalar(db_url, "SELECT count(*) FROM assets WHERE status = 'done'") == 5
    assert _scalar(db_url, "SELECT count(*) FROM manifest_rows") == 8
    engine = sa.create_engine(db_url)
    with engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT uri, external_id, metadata FROM manifest_rows WHERE row_no = 1")
        ).one()
    engine.dispose()
    meta = row.metadata if isinstance(row.metadata, dict) else json.loads(row.metadata)
    assert row.uri == str(images[1]) and row.external_id == "ext1"
    assert meta == {"caption": "caption 1"}

    again = _ramdex_here(
        ["ingest", "--manifest", str(manifest), "--json"], env, tmp_path, monkeypatch
    )
    out2 = json.loads(again.stdout)
    assert out2["rows_registered_now"] == 0 and out2["rows_registered_before"] == 10
    assert out2["submitted"] == 0  # every staged row was handed to ingest already
    assert _scalar(db_url, "SELECT count(*) FROM assets") == 5
    assert _scalar(db_url, "SELECT count(*) FROM manifest_rows") == 8


def test_parquet_manifest_registers_rows_with_metadata(db_url, tmp_path, monkeypatch):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    n = 25_000
    table = pa.table(
        {
            "ID": [f"p{i}" for i in range(n)],
            "URL": [f"https://images.example.com/{i}.jpg" for i in range(n)],
            "width": list(range(n)),
            "tags": [["a", "b"]] * n,
        }
    )
    path = tmp_path / "m.parquet"
    pq.write_table(table, path, row_group_size=4000)
    env = _env(tmp_path / "home", db_url)
    args = ["ingest", "--manifest", str(path), "--register-only", "--json"]
    run = _ramdex_here(args, env, tmp_path, monkeypatch)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["rows_registered_now"] == n
    assert _scalar(db_url, "SELECT count(*) FROM manifest_rows") == n
    engine = sa.create_engine(db_url)
    with engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT uri, external_id, metadata FROM manifest_rows WHERE row_no = 7")
        ).one()
    engine.dispose()
    meta = row.metadata if isinstance(row.metadata, dict) else json.loads(row.metadata)
    assert row.uri == "https://images.example.com/7.jpg" and row.external_id == "p7"
    assert meta == {"width": 7, "tags": ["a", "b"]}


def test_resume_after_sigkill_mid_registration(db_url, tmp_path, monkeypatch):
    # Staging commits every 10,000 rows: 12 batches, so the kill (as soon as the first batch is
    # seen) lands with most of the file still to stage.
    total = 120_000
    with open(tmp_path / "big.csv", "w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["url", "id"])
        for i in range(total):
            out.writerow([f"https://images.example.com/{i:09d}.jpg", f"x{i}"])
    env = _env(tmp_path / "home", db_url)
    args = ["ingest", "--manifest", "big.csv", "--register-only", "--json"]
    proc = subprocess.Popen(
        [*ramdex_command(), *args], env=env, cwd=tmp_path, stdout=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    registered = 0
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                registered = _scalar(
                    db_url, "SELECT coalesce(max(rows_registered), 0) FROM manifests"
                )
            except sa.exc.DBAPIError:
                registered = 0  # the schema is not there yet
            if registered > 0:
                break
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    staged = _scalar(db_url, "SELECT count(*) FROM manifest_rows")
    offset = _scalar(db_url, "SELECT max(rows_registered) FROM manifests")
    assert 0 < offset < total, "the kill must land mid-registration"
    assert staged == offset  # rows and offset commit together

    # The run that resumes needs no process of its own: it only reads what the killed one left.
    again = _ramdex_here(args, env, tmp_path, monkeypatch)
    assert again.returncode == 0, again.stderr
    out = json.loads(again.stdout)
    assert out["rows_registered_before"] >= offset
    assert out["rows_registered_before"] + out["rows_registered_now"] == total
    assert _scalar(db_url, "SELECT count(*) FROM manifest_rows") == total
    assert _scalar(db_url, "SELECT count(DISTINCT row_no) FROM manifest_rows") == total
    assert _scalar(db_url, "SELECT max(rows_registered) FROM manifests") == total


@pytest.mark.parametrize(
    ("name", "content", "expect", "child"),
    [
        ("missing.csv", None, "no such file", False),
        ("m.txt", b"url\nhttp://x/y.jpg\n", "unknown format", False),
        ("m.csv", b"a,b\n1,2\n", "no url, path or uri column", False),
        ("m.csv", b"url\n\xff\xfe\xfa\n", "not readable as CSV", False),
        ("m.parquet", b"not parquet at all", "not readable as Parquet", False),
        # the one case through the real console script: the error line as a shell shows it
        ("m.csv", b"url,id\n,1\nftp://x/y,2\n", "no usable row", True),
    ],
)
def test_bad_manifest_is_one_line_exit_2(tmp_path, monkeypatch, name, content, expect, child):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    env = _env(tmp_path / "home", f"sqlite:///{tmp_path / 'x.sqlite3'}")
    args = ["ingest", "--manifest", name, "--register-only"]
    run = _ramdex(args, env, tmp_path) if child else _ramdex_here(args, env, tmp_path, monkeypatch)
    assert run.returncode == 2, (run.stdout, run.stderr)
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expect in errors[0], run.stderr
