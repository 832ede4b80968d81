"""The token store on S3-compatible object storage, against a real S3-protocol server (moto's,
started here as a subprocess on a free loopback port) and compared with the local TokenStore."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from indexer.errors import RamdexError
from indexer.settings import Settings
from indexer.stores import open_token_store
from indexer.token_store import TokenStore, TokenStoreError
from indexer.token_store_s3 import S3Options, S3StoreUnavailable, S3TokenStore
from tests.s3_support import CREDS
from tests.s3_support import s3_client as _client
from tests.s3_support import start_server as _start_server

# the moto server (`server`) and a fresh bucket per test (`bucket`)
pytest_plugins = ["tests.s3_support"]

ROOT = Path(__file__).resolve().parents[1]
T, C = 16, 64  # small records (2 KiB float16) so that blocks and ranges are easy to count


def _opts(server: str, tmp_path: Path, **kw) -> S3Options:
    return S3Options(endpoint_url=server, region="us-east-1", cache_dir=tmp_path / "cache", **kw)


def _embeds(ids: np.ndarray) -> np.ndarray:
    """Deterministic E per asset id (so separate processes write known values; the writer
    script below has a copy, so that it imports only the store)."""
    out = np.empty((len(ids), T, C), np.float32)
    for i, a in enumerate(ids.tolist()):
        out[i] = np.random.default_rng(int(a)).standard_normal((T, C))
    return out


class GetCounter:
    """Counts ranged GETs (record reads) the store's own boto3 client sends."""

    def __init__(self, store: S3TokenStore) -> None:
        self.ranges: list[str] = []
        store.client.meta.events.register("before-send.s3.GetObject", self._seen)

    def _seen(self, request, **_kw) -> None:
        if "Range" in request.headers:
            self.ranges.append(request.url.rsplit("/", 1)[-1])

    def take(self) -> int:
        n = len(self.ranges)
        self.ranges.clear()
        return n


@pytest.mark.parametrize("fmt", ["float16", "int8"])
def test_round_trip_is_identical_to_the_local_store(server, bucket, tmp_path, fmt):
    s3 = S3TokenStore(f"s3://{bucket}/m", tokens=T, dim=C, fmt=fmt, options=_opts(server, tmp_path))
    local = TokenStore(tmp_path / "local", tokens=T, dim=C, fmt=fmt)
    for start in (0, 100, 200):  # three add() batches: three segments / one shard
        ids = np.arange(start, start + 100, dtype=np.int64) * 3 + 1
        e = _embeds(ids)
        s3.add(ids, e)
        local.add(ids, e)
    replaced = np.array([4, 301], np.int64)  # re-adding replaces: old record tombstoned
    e = _embeds(replaced + 10_000)
    s3.add(replaced, e)
    local.add(replaced, e)
    assert len(s3) == len(local) == 300 and s3.stats()["tombstones"] == 2
    np.testing.assert_array_equal(s3.ids(), local.ids())
    rng = np.random.default_rng(1)
    query = rng.choice(local.ids(), 120, replace=False)
    for dtype in (np.float32, np.float16):
        np.testing.assert_array_equal(s3.get(query, dtype=dtype), local.get(query, dtype=dtype))
    if fmt == "float16":
        np.testing.assert_array_equal(s3.get(replaced), e.astype(np.float16).astype(np.float32))
    if fmt == "int8":
        for a, b in zip(s3.get_int8(query), local.get_int8(query), strict=True):
            np.testing.assert_array_equal(a, b)
        got = [np.concatenate(x) for x in zip(*s3.iter_int8_chunks(64), strict=True)]
        want = [np.concatenate(x) for x in zip(*local.iter_int8_chunks(64), strict=True)]
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)
    ids_s3, e_s3 = (np.concatenate(x) for x in zip(*s3.iter_chunks(64), strict=True))
    ids_lo, e_lo = (np.concatenate(x) for x in zip(*local.iter_chunks(64), strict=True))
    np.testing.assert_array_equal(ids_s3, ids_lo)
    np.testing.assert_array_equal(e_s3, e_lo)
    np.testing.assert_array_equal(s3.sample_ids(50, seed=3), local.sample_ids(50, seed=3))
    np.testing.assert_array_equal(s3.has([1, 2, 4]), local.has([1, 2, 4]))
    with pytest.raises(KeyError, match="not in the token store"):
        s3.get([2])
    # A second process opening the store read-only sees the same.
    reader = S3TokenStore(f"s3://{bucket}/m", read_only=True, options=_opts(server, tmp_path))
    np.testing.assert_array_equal(reader.get(query), local.get(query))
    with pytest.raises(TokenStoreError, match="read-only"):
        reader.add([999_999], _embeds(np.array([999_999])))
    with pytest.raises(TokenStoreError, match="missing manifest"):
        S3TokenStore(f"s3://{bucket}/nothing", read_only=True, options=_opts(server, tmp_path))


def test_neighbouring_ids_take_one_ranged_get_and_the_cache_none(server, bucket, tmp_path):
    # 4 records per 8 KiB cache block, gaps of up to 2 blocks merged
    opts = _opts(server, tmp_path, block_bytes=8 * 1024, gap_bytes=16 * 1024)
    store = S3TokenStore(f"s3://{bucket}/m", tokens=T, dim=C, options=opts)
    for start in (0, 400):  # two segments of 400 records
        ids = np.arange(start, start + 400, dtype=np.int64)
        store.add(ids, _embeds(ids))
    counter = GetCounter(store)
    expected = _embeds(np.arange(800)).astype(np.float16)
    # 100 neighbouring ids, shuffled as stage 1 returns them, put in storage order: one GET
    shortlist = np.random.default_rng(0).permutation(np.arange(150, 250))
    shortlist = shortlist[store.storage_order(shortlist)]
    np.testing.assert_array_equal(store.get(shortlist, dtype=np.float16), expected[shortlist])
    assert counter.take() == 1
    # Ids a few records apart coalesce across the gap; far apart ones do not; one GET per
    # segment at least.
    assert store.get([300, 310, 318]).shape == (3, T, C) and counter.take() == 1
    assert store.get([0, 399]).shape == (2, T, C) and counter.take() == 2
    assert store.get([500, 700]).shape == (2, T, C) and counter.take() == 2
    # Everything read is cached: the same reads again make no request at all...
    np.testing.assert_array_equal(store.get(shortlist, dtype=np.float16), expected[shortlist])
    store.get([300, 310, 318, 0, 399, 500, 700])
    assert counter.take() == 0
    # ...also from another store object (another process) sharing the cache folder.
    other = S3TokenStore(f"s3://{bucket}/m", read_only=True, options=opts)
    other_counter = GetCounter(other)
    np.testing.assert_array_equal(other.get(shortlist, dtype=np.float16), expected[shortlist])
    assert other_counter.take() == 0
    # Streaming reads big sequential ranges (16 MiB: one per segment here) and skips the cache.
    n = sum(len(ids) for ids, _ in store.iter_chunks(128))
    assert n == 800 and counter.take() == 2
    # A backfill part (a range of ids) reads only the segments that hold it.
    part = np.concatenate([ids for ids, _ in store.iter_chunks(64, id_range=(420, 470))])
    np.testing.assert_array_equal(part, np.arange(420, 470))
    assert counter.take() == 1


def test_cache_stays_within_its_budget(server, bucket, tmp_path):
    block = 8 * 1024
    opts = _opts(server, tmp_path, block_bytes=block, cache_bytes=10 * block)
    store = S3TokenStore(f"s3://{bucket}/m", tokens=T, dim=C, options=opts)
    ids = np.arange(400, dtype=np.int64)
    store.add(ids, _embeds(ids))
    for start in range(0, 400, 20):
        store.get(np.arange(start, start + 20))
        assert store.cache.nbytes() <= 10 * block
    counter = GetCounter(store)
    store.get(np.arange(380, 400))  # the most recent blocks survived eviction
    assert counter.take() == 0
    store.get(np.arange(0, 20))  # the oldest did not
    assert counter.take() == 1


def test_scans_are_not_cached(server, bucket, tmp_path):
    opts = _opts(server, tmp_path, block_bytes=8 * 1024, gap_bytes=0, scan_bytes=64 * 1024)
    store = S3TokenStore(f"s3://{bucket}/m", tokens=T, dim=C, options=opts)
    ids = np.arange(400, dtype=np.int64)
    store.add(ids, _embeds(ids))
    # A backfill part: every id of a range, in storage order, 800 KB in one run: not cached.
    np.testing.assert_array_equal(store.get(ids[:300]), _embeds(ids[:300]).astype(np.float16))
    assert store.cache.nbytes() == 0
    store.get([10, 200, 390])  # a sparse shortlist is
    assert store.cache.nbytes() == 3 * 8 * 1024


class IfMatchStrippingProxy:
    """An HTTP proxy in front of the S3 server that drops If-Match: a server without
    conditional writes, as far as the client can tell."""

    def __init__(self, upstream: str) -> None:
        import http.client
        import http.server
        import threading
        from urllib.parse import urlsplit

        target = urlsplit(upstream)

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() != "if-match"}
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_server_without_conditional_writes_is_refused_unless_single_writer(
    server, bucket, tmp_path
):
    from indexer.token_store_s3 import ConditionalWritesUnsupported

    proxy = IfMatchStrippingProxy(server)
    try:
        opts = S3Options(endpoint_url=proxy.url, region="us-east-1", cache_dir=tmp_path)
        store = S3TokenStore(f"s3://{bucket}/m", tokens=T, dim=C, options=opts)
        ids = np.arange(10, dtype=np.int64)
        with pytest.raises(ConditionalWritesUnsupported, match="does not enforce If-Match") as e:
            store.add(ids, _embeds(ids))
        assert "SINGLE_WRITER" in (e.value.hint or "") and len(store) == 0
        single = S3Options(
            endpoint_url=proxy.url, region="us-east-1", cache_dir=tmp_path, single_writer=True
        )
        store = S3TokenStore(f"s3://{bucket}/m", options=single)
        store.add(ids, _embeds(ids))
        assert len(store) == 10 and store.delete([0]) == 1 and len(store) == 9
    finally:
        proxy.close()


WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from pathlib import Path
    from indexer.token_store_s3 import S3Options, S3TokenStore
    T, C = 16, 64
    def _embeds(ids):
        out = np.empty((len(ids), T, C), np.float32)
        for i, a in enumerate(ids.tolist()):
            out[i] = np.random.default_rng(int(a)).standard_normal((T, C))
        return out
    endpoint, url, cache, worker, start_at = sys.argv[1:6]
    opts = S3Options(endpoint_url=endpoint, region="us-east-1", cache_dir=Path(cache))
    store = S3TokenStore(url, tokens=T, dim=C, options=opts)
    batches = [np.arange(5, dtype=np.int64) + 1000 * int(worker) + 10 * b for b in range(8)]
    embeds = [_embeds(ids) for ids in batches]
    import time
    time.sleep(max(0.0, float(start_at) - time.time()))  # both start committing together
    for ids, e in zip(batches, embeds):
        store.add(ids, e)
    print("done", store.conflicts)
    """
)


def test_two_writer_processes_lose_no_batch(server, bucket, tmp_path):
    url = f"s3://{bucket}/m"
    S3TokenStore(url, tokens=T, dim=C, options=_opts(server, tmp_path))  # created once
    start_at = str(time.time() + 6)  # after both processes imported numpy and boto3
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, server, url, str(tmp_path / f"c{w}"), str(w), start_at],
            cwd=ROOT,
            env={**os.environ, **CREDS},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in (1, 2)
    ]
    conflicts = 0
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0 and "done" in out, err
        conflicts += int(out.split()[-1])
    print("commits applied again after a conflict:", conflicts)
    store = S3TokenStore(url, read_only=True, options=_opts(server, tmp_path))
    want = np.sort(
        np.concatenate([np.arange(5) + 1000 * w + 10 * b for w in (1, 2) for b in range(8)])
    )
    np.testing.assert_array_equal(store.ids(), want)
    assert store.stats()["shards"] == 16  # one segment per batch, none lost, none twice
    np.testing.assert_array_equal(store.get(want), _embeds(want).astype(np.float16))
    assert store.generation == 16  # one commit per batch


def test_deletes_are_tombstones_and_old_snapshots_stay_readable(server, bucket, tmp_path):
    url = f"s3://{bucket}/m"
    writer = S3TokenStore(url, tokens=T, dim=C, options=_opts(server, tmp_path / "w"))
    ids = np.arange(50, dtype=np.int64)
    writer.add(ids, _embeds(ids))
    reader = S3TokenStore(url, read_only=True, options=_opts(server, tmp_path / "r"))
    before = reader.get(ids)
    # The writer deletes, replaces and adds while the reader keeps its snapshot.
    assert writer.delete([3, 4, 999]) == 2 and writer.delete([999]) == 0
    writer.add([5], _embeds(np.array([77])))
    writer.add(np.arange(50, 60), _embeds(np.arange(50, 60)))
    assert len(writer) == 58 and 3 not in writer and writer.stats()["tombstones"] == 3
    keys = [o["Key"] for o in _client(server).list_objects_v2(Bucket=bucket)["Contents"]]
    assert sum(k.endswith(".ids.npy") and ".g" in k for k in keys) >= 2  # new id generations
    assert len(reader) == 50 and 3 in reader  # old snapshot: unchanged, fully readable
    np.testing.assert_array_equal(reader.get(ids), before)
    assert reader.refresh() is True and reader.refresh() is False
    assert 3 not in reader and len(reader) == 58
    np.testing.assert_array_equal(reader.get([5]), _embeds(np.array([77])).astype(np.float16))


def test_compaction_merges_small_segments_in_order(server, bucket, tmp_path):
    url = f"s3://{bucket}/m"
    store = S3TokenStore(url, tokens=T, dim=C, options=_opts(server, tmp_path / "w"))
    for b in range(10):  # ten ingest batches: ten small segments
        ids = np.arange(b * 20, b * 20 + 20, dtype=np.int64)
        store.add(ids, _embeds(ids))
    store.add([5], _embeds(np.array([555])))  # a replacement: a tombstone in segment 0
    assert store.delete(np.arange(40, 60)) == 20  # segment 2 entirely dead
    reader = S3TokenStore(url, read_only=True, options=_opts(server, tmp_path / "r"))
    before = reader.get(reader.ids())
    stale = S3TokenStore(url, read_only=True, options=_opts(server, tmp_path / "s"))
    # at most 100 live records per segment: 19 + 20 + 0 + 20 + 20 + 20, then 4 x 20 + 1
    stats = store.compact(target_bytes=100 * store.bytes_per_asset)
    assert stats["records_dropped"] == 21 and stats["segments_merged"] == 11
    entries = store.segments()
    assert [e["count"] for e in entries] == [99, 81]
    assert [e["min_id"] for e in entries] == sorted(e["min_id"] for e in entries)
    np.testing.assert_array_equal(store.ids(), reader.ids())
    np.testing.assert_array_equal(store.get(store.ids()), before)
    assert store.stats()["tombstones"] == 0
    np.testing.assert_array_equal(reader.get(reader.ids()), before)  # old snapshot still reads
    assert reader.refresh() and reader.stats()["shards"] == 2
    np.testing.assert_array_equal(reader.get([5]), _embeds(np.array([555])).astype(np.float16))
    assert store.compact(target_bytes=100 * store.bytes_per_asset)["segments_written"] == 0
    # Clean-up: nothing younger than the grace period goes; then the merged-away segments and
    # superseded id generations do, and what the manifest names stays readable.
    assert store.collect_garbage(min_age_s=3600)["objects_deleted"] == 0
    keys = {o["Key"] for o in _client(server).list_objects_v2(Bucket=bucket)["Contents"]}
    done = store.collect_garbage(min_age_s=0)
    left = {o["Key"] for o in _client(server).list_objects_v2(Bucket=bucket)["Contents"]}
    assert done["objects_deleted"] == len(keys) - len(left) == len(keys) - 5  # manifest + 2 x 2
    fresh = S3TokenStore(url, read_only=True, options=_opts(server, tmp_path / "f"))
    np.testing.assert_array_equal(fresh.get(fresh.ids()), before)
    with pytest.raises(TokenStoreError, match="refresh"):  # its segments are gone
        stale.get(stale.ids()[:5])
    assert stale.refresh()
    np.testing.assert_array_equal(stale.get(stale.ids()), before)


def test_garbage_is_aged_from_when_a_commit_stopped_naming_it(server, bucket, tmp_path):
    """Segments written long ago and merged away just now are young garbage: a reader whose
    snapshot still names them keeps reading for the whole grace period after the compaction."""
    url = f"s3://{bucket}/m"
    store = S3TokenStore(url, tokens=T, dim=C, options=_opts(server, tmp_path / "w"))
    for b in range(3):
        ids = np.arange(b * 20, b * 20 + 20, dtype=np.int64)
        store.add(ids, _embeds(ids))
    reader = S3TokenStore(url, read_only=True, options=_opts(server, tmp_path / "r"))
    stale = S3TokenStore(url, read_only=True, options=_opts(server, tmp_path / "s"))
    time.sleep(2.5)  # the segments are now older than the 2 s grace period below
    assert store.compact()["segments_merged"] == 3
    assert store.collect_garbage(min_age_s=2.0)["objects_deleted"] == 0
    want = _embeds(np.arange(60)).astype(np.float16)
    np.testing.assert_array_equal(reader.get(reader.ids()), want)
    time.sleep(2.5)
    assert store.collect_garbage(min_age_s=2.0)["objects_deleted"] == 6  # 3 segments + 3 ids
    assert store._snap.manifest.get("retired") == {}  # forgotten once deleted
    with pytest.raises(TokenStoreError, match="refresh"):  # its own cache is cold
        stale.get(stale.ids()[:5])


def test_compaction_keeps_deletes_committed_while_it_merged(server, bucket, tmp_path):
    url = f"s3://{bucket}/m"
    other = S3TokenStore(url, tokens=T, dim=C, options=_opts(server, tmp_path / "o"))

    class Racing(S3TokenStore):
        """Another writer deletes (and commits) while this one uploads its merged segment."""

        def _upload_segment(self, ids, records):  # noqa: ANN001, ANN202
            other.refresh()
            assert other.delete([3, 33]) == 2
            return super()._upload_segment(ids, records)

    store = Racing(url, options=_opts(server, tmp_path / "w"))
    for b in range(4):
        ids = np.arange(b * 20, b * 20 + 20, dtype=np.int64)
        other.add(ids, _embeds(ids))
    store.refresh()
    # the merge read its sources before the delete and commits after it: the delete holds
    assert store.compact()["segments_written"] == 1 and store.stats()["shards"] == 1
    assert 3 not in store and 33 not in store and len(store) == 78
    want = np.setdiff1d(np.arange(80), [3, 33])
    np.testing.assert_array_equal(store.get(want), _embeds(want).astype(np.float16))


def test_server_going_away_is_a_clear_error_not_a_hang(tmp_path):
    with pytest.MonkeyPatch.context() as mp:
        for key, value in CREDS.items():
            mp.setenv(key, value)
        proc, endpoint = _start_server()
        try:
            _client(endpoint).create_bucket(Bucket="gone")
            opts = S3Options(
                endpoint_url=endpoint,
                region="us-east-1",
                cache_dir=tmp_path,
                connect_timeout_s=1,
                read_timeout_s=1,
                retries=1,
            )
            store = S3TokenStore("s3://gone/m", tokens=T, dim=C, options=opts)
            ids = np.arange(20, dtype=np.int64)
            store.add(ids, _embeds(ids))
            proc.send_signal(signal.SIGSTOP)  # frozen: connections open, nothing answers
            start = time.monotonic()
            with pytest.raises(S3StoreUnavailable, match="did not answer") as err:
                store.get(ids)
            assert time.monotonic() - start < 15
            assert isinstance(err.value, RamdexError) and "ENDPOINT_URL" in (err.value.hint or "")
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait(timeout=10)
            start = time.monotonic()
            with pytest.raises(S3StoreUnavailable):  # gone: connection refused
                store.refresh()
            assert time.monotonic() - start < 15
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait(timeout=10)


def test_settings_choose_the_store_and_the_searcher_reads_from_s3(server, bucket, tmp_path):
    import torch

    from indexer.archive import Archive
    from indexer.retroactive import RetroactiveSearcher
    from ram_pp.factory import random_model
    from ram_pp.openset import OpenSetScorer

    settings = Settings(
        home=tmp_path / "home",
        index={
            "token_store_url": f"s3://{bucket}/tokens",
            "s3": {"endpoint_url": server, "region": "us-east-1"},
        },
    )
    dim = 512
    store = open_token_store(settings, "test-model", tokens=T, dim=dim)
    assert isinstance(store, S3TokenStore) and store.url == f"s3://{bucket}/tokens/test-model"
    rng = np.random.default_rng(0)
    ids = np.arange(60, dtype=np.int64) * 7
    e = rng.standard_normal((60, T, dim)).astype(np.float32)
    store.add(ids, e)
    local = TokenStore(tmp_path / "local", tokens=T, dim=dim)
    local.add(ids, e)
    # The archive (API and workers) opens the S3 store from settings alone.
    archive = Archive(settings)
    archive.lazy("model_id", lambda: "test-model")
    opened = archive.token_store()
    assert isinstance(opened, S3TokenStore) and len(opened) == 60
    assert (settings.home / "cache" / "tokens").is_dir()  # default cache under home
    torch.manual_seed(0)
    model = random_model("test_micro", seed=7).model
    from ram_pp.labels import LabelBank

    bank = LabelBank.from_ragged([torch.nn.functional.normalize(torch.randn(3, dim), dim=-1)])
    got = RetroactiveSearcher(OpenSetScorer(model), opened, chunk=16).search(
        bank, top_k=10, mode="exhaustive", calibrate=False
    )
    want = RetroactiveSearcher(OpenSetScorer(model), local, chunk=16).search(
        bank, top_k=10, mode="exhaustive", calibrate=False
    )
    np.testing.assert_array_equal(got[0].ids, want[0].ids)
    np.testing.assert_allclose(got[0].logits, want[0].logits, atol=1e-6)
    # Deleting an asset through the archive's path tombstones it in S3.
    assert open_token_store(settings, "test-model").delete([ids[0]]) == 1
    opened.refresh()
    assert ids[0] not in opened
    local_settings = Settings(home=tmp_path / "home2")
    assert isinstance(open_token_store(local_settings, "x", tokens=T, dim=C), TokenStore)


def test_bad_store_url_is_a_settings_error(tmp_path):
    import pydantic

    for bad, why in (
        ("ftp://bucket/x", "not an object-storage URL"),
        ("s3://Bad_Bucket/x", "not a valid S3 bucket name"),
        ("s3://ok-bucket//x", "empty path parts"),
    ):
        with pytest.raises(pydantic.ValidationError, match=why):
            Settings(index={"token_store_url": bad})
    env = {
        **os.environ,
        "RAMDEX_HOME": str(tmp_path),
        "RAMDEX_INDEX__TOKEN_STORE_URL": "ftp://bucket/tokens",
    }
    proc = subprocess.run(
        [sys.executable, "-c", "from api.cli import main; main()", "jobs"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "error: invalid setting RAMDEX_INDEX__TOKEN_STORE_URL" in proc.stderr
    assert "hint:" in proc.stderr and "Traceback" not in proc.stderr
