"""``ramdex sources`` as a person types it (in-process, through the root group's error handler),
on a SQLite archive with the tiny random ``test_micro`` model. The object store is moto's S3
server on loopback (tests/s3_support.py), standing in for AWS S3 or MinIO.
"""

from __future__ import annotations

import json
import uuid

import pytest

from tests.cli_support import assert_first_line_error, run_ramdex
from tests.s3_support import free_port, s3_client
from tests.sources_support import put_images

pytest_plugins = ["tests.s3_support"]


@pytest.fixture
def archive(tmp_path, monkeypatch, server):
    monkeypatch.setenv("RAMDEX_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RAMDEX_DATABASE__URL", f"sqlite:///{tmp_path / 'ramdex.sqlite3'}")
    monkeypatch.setenv("RAMDEX_MODEL__NAME", "test_micro")
    monkeypatch.setenv("RAMDEX_MODEL__DEVICE", "cpu")
    monkeypatch.setenv("RAMDEX_INGEST__READ_KEYWORDS", "false")
    monkeypatch.setenv("RAMDEX_SOURCES__S3_ENDPOINT_URL", server)
    monkeypatch.setenv("RAMDEX_SOURCES__CONNECT_TIMEOUT_S", "1")
    return tmp_path


def test_add_scan_list_remove(archive, bucket, server, monkeypatch):
    put_images(s3_client(server), bucket, ["cli/a.jpg", "cli/b.jpg", "cli/skip.png"])
    code, out = run_ramdex(
        "sources", "add", f"s3://{bucket}/cli", "--collection", "photos",
        "--include", "*.jpg", "--interval", "5m", "--json",
    )  # fmt: skip
    assert code == 0, out
    added = json.loads(out.splitlines()[0])
    assert added["collection"] == "photos" and added["interval_s"] == 300
    sid = str(added["id"])

    code, out = run_ramdex("sources", "scan", sid, "--no-progress")
    assert code == 0 and "listed 2, new 2" in out and "failed 0" in out, out
    code, out = run_ramdex("sources", "list")
    assert code == 0 and f"s3://{bucket}/cli" in out and "-> photos" in out, out
    assert ": ok (job 1); objects 2, assets 2, gone 0, failed 0" in out, out

    code, out = run_ramdex("sources", "add", f"s3://{bucket}/cli")
    assert_first_line_error(code, out, "exists already")

    # The store goes away: one line, exit 2, and the source says so in `list`.
    monkeypatch.setenv("RAMDEX_SOURCES__S3_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    code, out = run_ramdex("sources", "scan", sid)
    assert_first_line_error(code, out, "cannot reach")
    code, out = run_ramdex("sources", "list")
    assert ": error" in out and "error: listing" in out, out

    code, out = run_ramdex("sources", "remove", sid)
    assert code == 0 and "its assets stay" in out
    code, out = run_ramdex("sources", "remove", sid)
    assert_first_line_error(code, out, "no source")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["s3://"], ["names no bucket"]),
        (["s3://Bad_Bucket/x"], ["not a valid S3 bucket"]),
        ([f"s3://nope-{uuid.uuid4().hex[:8]}/x"], ["does not exist"]),
        (["/no/such/folder"], ["does not exist"]),
        (["/tmp", "--interval", "soon"], ["invalid interval"]),
        (["ftp://host/x"], ["unsupported source"]),
    ],
)
def test_bad_input_is_one_line(archive, args, words):
    code, out = run_ramdex("sources", "add", *args)
    assert_first_line_error(code, out, *words)
    assert "hint: " in out


def test_folder_outside_allowed_roots(archive, monkeypatch):
    (archive / "ok").mkdir()
    monkeypatch.setenv("RAMDEX_STORAGE__ALLOWED_ROOTS", json.dumps([str(archive / "ok")]))
    code, out = run_ramdex("sources", "add", str(archive))
    assert_first_line_error(code, out, "allowed_roots")
    code, out = run_ramdex("sources", "add", str(archive / "ok"), "--watch")
    assert code == 0 and "watched" in out
