"""``ramdex tokens stats | compact | gc`` on a local token store and on one on S3-compatible
object storage (a real moto server, tests/s3_support.py), with the errors a person can fix.

The commands run in this process through typer's CliRunner (the root group and its error
handler, as the console script), with settings from the environment as a person sets them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from indexer.settings import Settings, get_settings
from indexer.stores import open_token_store, token_store_path
from indexer.token_store import TokenStore, bytes_per_asset
from tests.cli_support import run_ramdex as ramdex
from tests.s3_support import free_port, s3_client

# the moto server (`server`) and a fresh bucket per test (`bucket`)
pytest_plugins = ["tests.s3_support"]

T, C = 16, 64  # small records: 2 KiB each in float16
MODEL_ID = "test_micro@random"  # what the configured random test model's assets are stored as
REC = bytes_per_asset("float16", T, C)


def _embeds(ids: np.ndarray) -> np.ndarray:
    out = np.empty((len(ids), T, C), np.float32)
    for i, a in enumerate(ids.tolist()):
        out[i] = np.random.default_rng(int(a)).standard_normal((T, C))
    return out


def _env(monkeypatch: pytest.MonkeyPatch, home: Path, **extra: str) -> Settings:
    """Settings as a person sets them: the environment (read again by every command)."""
    import os

    for key in [k for k in os.environ if k.startswith("RAMDEX_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("RAMDEX_HOME", str(home))
    monkeypatch.setenv("RAMDEX_MODEL__NAME", "test_micro")
    for key, value in extra.items():
        monkeypatch.setenv(f"RAMDEX_{key}", value)
    get_settings.cache_clear()
    return get_settings()


def stats(*args: str) -> dict:
    code, out = ramdex("tokens", "stats", "--json", *args)
    assert code == 0, out
    return json.loads(out)


def assert_one_error(code: int, out: str, *words: str) -> None:
    """Exit 2 with one ``error:`` line (plus its ``hint:``), no traceback."""
    assert code == 2, out
    lines = [line for line in out.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and len(lines) <= 2 and "Traceback" not in out, out
    assert len(lines) == 1 or lines[1].startswith("hint: "), out
    for word in words:
        assert word in out, out


@pytest.fixture(autouse=True)
def _settings_restored():
    yield
    get_settings.cache_clear()


def test_local_stats_compact_and_gc(tmp_path, monkeypatch):
    settings = _env(monkeypatch, tmp_path / "home")
    path = token_store_path(settings, MODEL_ID)
    # small shards (50 records), so that the deletes below touch some shards and not others
    store = TokenStore(path, tokens=T, dim=C, shard_bytes=50 * REC)
    for start in (0, 100, 200):
        ids = np.arange(start, start + 100, dtype=np.int64)
        store.add(ids, _embeds(ids))
    first = stats()
    assert first["backend"] == "local" and first["location"] == str(path)
    assert first["model"] == MODEL_ID and first["format"] == "float16"
    assert (first["assets"], first["tombstones"], first["shards"]) == (300, 0, 6)
    assert first["bytes_per_asset"] == REC and first["data_bytes"] == 300 * REC

    gone = np.r_[np.arange(10, 30), np.arange(120, 135)]  # in shards 0 and 2
    assert store.delete(gone) == len(gone)
    kept = np.setdiff1d(np.arange(300), gone)
    want = store.get(kept)
    deleted = stats("--model", MODEL_ID)  # --model names the same store
    assert (deleted["assets"], deleted["tombstones"]) == (265, 35)
    assert deleted["data_bytes"] == 300 * REC  # tombstoned records still take their bytes

    code, out = ramdex("tokens", "stats")
    assert code == 0, out
    assert "tombstones  35 (11.7% of the records)" in out and "shards      6" in out, out
    assert f"backend     local: {path}" in out

    code, out = ramdex("tokens", "compact")
    assert code == 0, out
    assert f"compacting {path}: 265 assets, 35 tombstones in 6 shards" in out, out
    assert "records dropped 35" in out and "shards rewritten 2" in out, out
    assert "before: 6 shards, 35 tombstones, 600.0 KiB" in out, out
    assert "after:  6 shards, 0 tombstones, 530.0 KiB" in out, out
    after = stats()
    assert (after["assets"], after["tombstones"]) == (265, 0)
    assert after["data_bytes"] == 265 * REC
    reopened = TokenStore(path, read_only=True)
    np.testing.assert_array_equal(reopened.ids(), kept)
    np.testing.assert_array_equal(reopened.get(kept), want)
    on_disk = sum(p.stat().st_size for p in path.glob("shard-*.bin"))
    assert on_disk == 265 * REC  # the rewritten shards' files are gone

    code, out = ramdex("tokens", "compact")  # nothing left to do
    assert code == 0 and "records dropped 0" in out, out

    code, out = ramdex("tokens", "gc")
    assert code == 0, out
    assert "local token store" in out and "at each commit" in out, out


def _keys(endpoint: str, bucket: str) -> dict[str, float]:
    """Object key -> age in seconds (by the server's LastModified)."""
    import datetime as dt

    now = dt.datetime.now(dt.UTC)
    pages = s3_client(endpoint).get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {
        o["Key"]: (now - o["LastModified"]).total_seconds()
        for page in pages
        for o in page.get("Contents", [])
    }


def _live(store) -> set[str]:
    """The keys the store's current manifest names."""
    base = f"{store.prefix}/"
    live = {base + "manifest.json"}
    for entry in store.segments():
        live.update((f"{base}seg/{entry['name']}.bin", base + entry["ids"]))
    return live


def test_s3_stats_compact_and_gc(server, bucket, tmp_path, monkeypatch):
    settings = _env(
        monkeypatch,
        tmp_path / "home",
        INDEX__TOKEN_STORE_URL=f"s3://{bucket}/tokens",
        INDEX__S3__ENDPOINT_URL=server,
        INDEX__S3__REGION="us-east-1",
    )
    store = open_token_store(settings, MODEL_ID, tokens=T, dim=C)
    for start in range(0, 100, 20):  # five ingest batches: five segments
        ids = np.arange(start, start + 20, dtype=np.int64)
        store.add(ids, _embeds(ids))
    gone = np.array([3, 4, 55], np.int64)
    store.delete(gone)
    kept = np.setdiff1d(np.arange(100), gone)
    url = f"s3://{bucket}/tokens/{MODEL_ID}"

    first = stats()
    assert first["backend"] == "s3" and first["location"] == f"{url} at {server}"
    assert (first["assets"], first["tombstones"], first["shards"]) == (97, 3, 5)
    code, out = ramdex("tokens", "stats")
    assert code == 0 and "segments    5" in out and f"backend     s3: {url}" in out, out

    code, out = ramdex("tokens", "compact")
    assert code == 0, out
    assert "97 assets, 3 tombstones in 5 segments" in out, out
    assert "segments merged 5, segments written 1, records dropped 3" in out, out
    assert "before: 5 segments, 3 tombstones" in out and "after:  1 segments, 0 tombstones" in out
    assert "ramdex tokens gc" in out
    after = stats()
    assert (after["assets"], after["tombstones"], after["shards"]) == (97, 0, 1)
    assert after["data_bytes"] == 97 * REC
    store.refresh()
    np.testing.assert_array_equal(store.ids(), kept)
    np.testing.assert_array_equal(store.get(kept), _embeds(kept).astype(np.float16))

    old_garbage = set(_keys(server, bucket)) - _live(store)
    assert len(old_garbage) >= 5 + 2  # the merged segments, their ids, replaced id generations
    code, out = ramdex("tokens", "gc")  # default age one day: everything is younger
    assert code == 0 and "0 objects deleted" in out, out
    assert set(_keys(server, bucket)) >= old_garbage

    compacted_at = time.time()  # compact's commit retired old_garbage before this moment
    time.sleep(3.0)
    # Two deletes retire two ids objects now: the merged segment's first one (written before
    # the sleep, so old by its LastModified) and the first delete's own. gc ages an object
    # from the commit that stopped naming it, so both stay; what compact retired before the
    # sleep goes.
    store.delete([7])
    store.delete([8])
    garbage = set(_keys(server, bucket)) - _live(store)
    retired_now = garbage - old_garbage
    assert len(retired_now) == 2 and len(garbage) == len(old_garbage) + 2
    # The age cut just younger than old_garbage: it only ages further, while gc itself may
    # start late on a busy machine (opening an S3 client took > 1 s in CI); retired_now stays
    # younger than the cut as long as that start takes under ~2.8 s.
    min_age = time.time() - compacted_at - 0.2
    code, out = ramdex("tokens", "gc", "--min-age", f"{min_age:.3f}s")
    assert code == 0, out
    assert f"{len(old_garbage)} objects deleted" in out, out
    left = set(_keys(server, bucket))
    assert left == _live(store) | retired_now  # retired 2.5 s ago gone, just now kept
    fresh = open_token_store(settings, MODEL_ID, read_only=True)
    want = np.setdiff1d(kept, [7, 8])
    np.testing.assert_array_equal(fresh.ids(), want)
    np.testing.assert_array_equal(fresh.get(want), _embeds(want).astype(np.float16))
    fresh.close()
    store.close()


def test_errors_are_one_line_and_exit_2(server, bucket, tmp_path, monkeypatch):
    _env(monkeypatch, tmp_path / "empty-home")
    for command in ("stats", "compact", "gc"):
        code, out = ramdex("tokens", command)
        assert_one_error(code, out, "error: no token store for model 'test_micro@random'")
        assert "ingest" in out
    code, out = ramdex("tokens", "stats", "--model", "other@abc")
    assert_one_error(code, out, "no token store for model 'other@abc'")

    code, out = ramdex("tokens", "gc", "--min-age", "3x")
    assert_one_error(code, out, "error: --min-age '3x' is not a duration", "1d")

    # S3 store: no server at the endpoint (a free port nobody listens on)
    _env(
        monkeypatch,
        tmp_path / "home",
        INDEX__TOKEN_STORE_URL=f"s3://{bucket}/tokens",
        INDEX__S3__ENDPOINT_URL=f"http://127.0.0.1:{free_port()}",
        INDEX__S3__REGION="us-east-1",
        INDEX__S3__CONNECT_TIMEOUT_S="1",
        INDEX__S3__READ_TIMEOUT_S="1",
    )
    start = time.monotonic()
    for command in ("stats", "compact", "gc"):
        code, out = ramdex("tokens", command)
        assert_one_error(code, out, "did not answer", "hint: ", "RAMDEX_INDEX__S3__ENDPOINT_URL")
    assert time.monotonic() - start < 30

    # S3 store: the server answers, nothing stored there yet / no such bucket
    _env(
        monkeypatch,
        tmp_path / "home",
        INDEX__TOKEN_STORE_URL=f"s3://{bucket}/tokens",
        INDEX__S3__ENDPOINT_URL=server,
        INDEX__S3__REGION="us-east-1",
    )
    code, out = ramdex("tokens", "compact")
    assert_one_error(code, out, f"no token store for model 'test_micro@random' at s3://{bucket}/")
    monkeypatch.setenv("RAMDEX_INDEX__TOKEN_STORE_URL", "s3://no-such-bucket/tokens")
    code, out = ramdex("tokens", "stats")
    assert_one_error(code, out, "bucket 'no-such-bucket' does not exist")
