"""Token store: formats, shards, deletes and compaction, crash safety, concurrent writers, and a
writer process committing while reader threads read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from indexer.token_store import (
    TokenStore,
    TokenStoreError,
    bytes_per_asset,
    dequantize_int8,
    quantize_int8,
)

T, C = 5, 16


def _embeds(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, T, C)).astype(np.float32)


def test_float16_round_trip_across_shards(tmp_path):
    store = TokenStore(tmp_path / "s", tokens=T, dim=C, shard_bytes=7 * T * C * 2)
    e = _embeds(30)
    ids = np.arange(100, 130)
    store.add(ids[:12], e[:12])
    store.add(ids[12:], e[12:])
    assert len(store) == 30 and store.stats()["shards"] == 5  # 7 records per shard
    assert isinstance(store._snap.shards[0].data, np.memmap)
    got = store.get([129, 100, 115])
    np.testing.assert_array_equal(got, e[[29, 0, 15]].astype(np.float16).astype(np.float32))
    assert got.dtype == np.float32 and store.get([100], dtype=np.float16).dtype == np.float16
    chunks = list(store.iter_chunks(chunk_size=4))
    assert max(len(i) for i, _ in chunks) <= 4
    all_ids = np.concatenate([i for i, _ in chunks])
    np.testing.assert_array_equal(all_ids, ids)
    np.testing.assert_array_equal(np.concatenate([x for _, x in chunks]), store.get(ids))
    # Another instance (another reader) sees the same committed data.
    again = TokenStore(tmp_path / "s", read_only=True)
    np.testing.assert_array_equal(again.get(ids), store.get(ids))
    assert 115 in again and 99 not in again


def test_int8_format_size_and_error_bound(tmp_path):
    assert bytes_per_asset("float16") == 145 * 512 * 2
    assert bytes_per_asset("int8") == 145 * 512 + 145 * 4
    e = _embeds(9, seed=1) * np.linspace(0.01, 10, T)[None, :, None].astype(np.float32)
    store = TokenStore(tmp_path / "q", tokens=T, dim=C, fmt="int8")
    store.add(np.arange(9), e)
    got = store.get(np.arange(9))
    step = np.abs(e).max(-1, keepdims=True) / 127  # per-token step: error <= half a step
    assert (np.abs(got - e) <= step / 2 + 1e-6).all()
    assert (np.abs(got - e) > 0).any()
    q, scale = quantize_int8(np.zeros((1, 2, 3), np.float32))
    assert (dequantize_int8(q, scale) == 0).all()


def test_replace_delete_and_compact(tmp_path):
    store = TokenStore(tmp_path / "s", tokens=T, dim=C, shard_bytes=4 * T * C * 2)
    e = _embeds(10)
    store.add(np.arange(10), e)
    store.add([3], e[[9]] * 2)  # replace asset 3
    np.testing.assert_array_equal(
        store.get([3]), (e[[9]] * 2).astype(np.float16).astype(np.float32)
    )
    assert store.delete([1, 2, 77]) == 2
    assert len(store) == 8 and 1 not in store
    with pytest.raises(KeyError, match=r"\[1\]"):
        store.get([0, 1])
    before = store.stats()
    assert before["tombstones"] == 3  # replaced 3, deleted 1 and 2
    files_before = sorted(p.name for p in (tmp_path / "s").glob("shard-*.bin"))
    result = store.compact()
    after = store.stats()
    assert result["records_dropped"] == 3 and after["tombstones"] == 0
    assert after["data_bytes"] == before["data_bytes"] - 3 * store.bytes_per_asset
    disk = sum(p.stat().st_size for p in (tmp_path / "s").glob("shard-*.bin"))
    assert disk == after["data_bytes"]
    assert sorted(p.name for p in (tmp_path / "s").glob("shard-*.bin")) != files_before
    expect = {i: e[i] for i in range(10) if i not in (1, 2)} | {3: e[9] * 2}
    for i, row in expect.items():
        np.testing.assert_array_equal(store.get([i])[0], row.astype(np.float16).astype(np.float32))
    assert store.compact()["records_dropped"] == 0
    assert len(list((tmp_path / "s").glob("*.ids.npy"))) == after["shards"]  # old generations gone


def test_reader_snapshot_survives_compaction_and_refresh(tmp_path):
    writer = TokenStore(tmp_path / "s", tokens=T, dim=C)
    e = _embeds(6)
    writer.add(np.arange(6), e)
    reader = TokenStore(tmp_path / "s", read_only=True)
    writer.delete([0])
    writer.compact()  # removes the shard file the reader has mapped
    assert len(reader) == 6  # its snapshot is unchanged and still readable
    np.testing.assert_array_equal(reader.get([0]), e[[0]].astype(np.float16).astype(np.float32))
    assert reader.refresh() and len(reader) == 5 and 0 not in reader
    assert not reader.refresh()
    with pytest.raises(TokenStoreError, match="read-only"):
        reader.add([9], e[:1])


def test_crash_before_commit_leaves_previous_state(tmp_path, monkeypatch):
    store = TokenStore(tmp_path / "s", tokens=T, dim=C)
    e = _embeds(8)
    store.add(np.arange(4), e[:4])

    def crash(manifest):
        raise OSError("power cut")

    monkeypatch.setattr(store, "_write_manifest", crash)
    with pytest.raises(OSError, match="power cut"):
        store.add(np.arange(4, 8), e[4:])  # data and new id file written, manifest not
    monkeypatch.undo()
    data = tmp_path / "s" / "shard-000000.bin"
    assert data.stat().st_size == 8 * store.bytes_per_asset  # the uncommitted tail is on disk
    reopened = TokenStore(tmp_path / "s")
    assert len(reopened) == 4 and 5 not in reopened
    np.testing.assert_array_equal(reopened.get(np.arange(4)), store.get(np.arange(4)))
    # The next write overwrites the dead tail and removes the unfinished generation's files.
    reopened.add([50], e[7:8])
    assert data.stat().st_size == 5 * store.bytes_per_asset
    assert len(list((tmp_path / "s").glob("*.ids.npy"))) == 1
    np.testing.assert_array_equal(reopened.get([50]), e[7:8].astype(np.float16).astype(np.float32))


def test_bad_input_and_mismatched_open(tmp_path):
    with pytest.raises(TokenStoreError, match="no token store"):
        TokenStore(tmp_path / "none", read_only=True)
    with pytest.raises(TokenStoreError, match="needs `tokens`"):
        TokenStore(tmp_path / "none")
    with pytest.raises(ValueError, match="unknown token format"):
        TokenStore(tmp_path / "bad", tokens=T, dim=C, fmt="int4")  # type: ignore[arg-type]
    store = TokenStore(tmp_path / "s", tokens=T, dim=C)
    with pytest.raises(TokenStoreError, match="format='float16'"):
        TokenStore(tmp_path / "s", fmt="int8")
    with pytest.raises(ValueError, match="shape"):
        store.add([1], _embeds(1)[:, :2])
    with pytest.raises(ValueError, match="distinct"):
        store.add([1, 1], _embeds(2))
    with pytest.raises(ValueError, match="non-negative"):
        store.add([-1], _embeds(1))
    bad = _embeds(1)
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        store.add([1], bad)
    with pytest.raises(TypeError):
        store.add([1], np.zeros((1, T, C), np.int32))
    assert len(store) == 0


def test_concurrent_writer_processes(tmp_path):
    """Two processes append at once; the file lock serialises them and nothing is lost."""
    path = tmp_path / "s"
    TokenStore(path, tokens=T, dim=C, shard_bytes=11 * T * C * 2)
    script = textwrap.dedent(
        f"""
        import sys, numpy as np
        from indexer.token_store import TokenStore
        base = int(sys.argv[1])
        store = TokenStore({str(path)!r})
        for b in range(15):
            ids = base + b * 3 + np.arange(3)
            store.add(ids, np.broadcast_to(ids[:, None, None], (3, {T}, {C})).astype(np.float32))
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(b)]) for b in (0, 1000)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    store = TokenStore(path, read_only=True)
    want = np.concatenate([np.arange(45), 1000 + np.arange(45)])
    np.testing.assert_array_equal(store.ids(), want)
    got = store.get(want)
    np.testing.assert_array_equal(got[:, 0, 0], want.astype(np.float16).astype(np.float32))
    assert (got == got[:, :1, :1]).all()


_RACE_WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from indexer.token_store import TokenStore
    path, seconds, tokens, dim = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    store = TokenStore(path, tokens=tokens, dim=dim, shard_bytes=40 * tokens * dim * 2)
    def records(ids):
        return np.broadcast_to((ids % 1000)[:, None, None], (len(ids), tokens, dim)).astype(float)
    # every commit leaves the ids lo..hi-1 stored, each record filled with its id (mod 1000)
    lo, hi = 0, 50
    store.add(np.arange(lo, hi), records(np.arange(lo, hi)))
    print("ready", flush=True)
    rng, end, commits = np.random.default_rng(1), time.monotonic() + seconds, 0
    while time.monotonic() < end:
        roll = rng.random()
        if roll < 0.4:  # append
            ids = np.arange(hi, hi + 7)
            store.add(ids, records(ids))
            hi += 7
        elif roll < 0.6:  # tombstones
            store.delete(np.arange(lo, lo + 5))
            lo += 5
        elif roll < 0.8:  # a redelivered batch rewrites stored assets
            ids = rng.choice(np.arange(lo, hi), size=4, replace=False)
            store.add(ids, records(ids))
        else:  # rewrites the shards readers have mapped and removes their files
            store.compact()
        commits += 1
    print(commits, flush=True)
    """
)


def test_writer_process_commits_while_reader_threads_read(tmp_path):
    """A writer process appends, replaces, tombstones and compacts as fast as it commits while
    reader threads open the store afresh or refresh it and read every record (``get`` and
    ``iter_chunks``). Each read must be one whole committed state: a contiguous id range whose
    records all hold their own id, never an error."""
    path = tmp_path / "s"
    writer = subprocess.Popen(
        [sys.executable, "-c", _RACE_WRITER, str(path), "3.0", str(T), str(C)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
    errors: list[str] = []
    reads = [0, 0]
    stop = threading.Event()

    def check(store: TokenStore) -> None:
        ids = store.ids()
        assert ids.size and np.array_equal(ids, np.arange(ids[0], ids[0] + ids.size)), ids
        assert (store.get(ids) == (ids % 1000)[:, None, None]).all(), "get read a wrong record"
        streamed = 0
        for chunk_ids, chunk in store.iter_chunks(chunk_size=16):
            assert (chunk == (chunk_ids % 1000)[:, None, None]).all(), "chunk read wrong records"
            streamed += len(chunk_ids)
        assert streamed == ids.size

    def reader(slot: int) -> None:
        store: TokenStore | None = None
        while not stop.is_set():
            try:
                if slot == 0 or store is None:
                    store = TokenStore(path, read_only=True)
                else:
                    store.refresh()
                check(store)
                reads[slot] += 1
            except Exception as exc:  # noqa: BLE001 - counted and reported below
                errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=reader, args=(i % 2,)) for i in range(4)]
    for t in threads:
        t.start()
    out, _ = writer.communicate(timeout=120)
    stop.set()
    for t in threads:
        t.join()
    assert writer.returncode == 0
    commits = int(out.strip())
    assert not errors, (len(errors), errors[:3])
    assert commits > 10 and min(reads) > 10, (commits, reads)
    final = TokenStore(path, read_only=True)
    check(final)
    assert final.stats()["shards"] >= 1


def test_a_slow_reader_keeps_its_files_while_a_writer_commits_again_and_again(tmp_path):
    """A reader that has read a manifest and is slow to open its files (a loaded machine, 100 id
    files to read) while the writer commits between every attempt: without the readers' lock the
    writer removes the old generation's files each time and the reader fails after its retries
    (seen in CI as FileNotFoundError on an ids.npy). The reader must get its snapshot, and the
    writer's next quiet commit must still remove the files nothing names."""
    path = tmp_path / "s"
    writer = TokenStore(path, tokens=T, dim=C)
    writer.add(np.arange(10), _embeds(10))
    paused, resume = threading.Semaphore(0), threading.Semaphore(0)

    class SlowReader(TokenStore):
        def _open(self, manifest):
            paused.release()  # the manifest is read; its files are not opened yet
            assert resume.acquire(timeout=10)
            return super()._open(manifest)

    result: dict[str, object] = {}

    def read() -> None:
        try:
            result["ids"] = SlowReader(path, read_only=True).ids()
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            result["error"] = f"{type(exc).__name__}: {exc}"

    reader = threading.Thread(target=read)
    reader.start()
    commits = 0
    while reader.is_alive():
        if paused.acquire(timeout=0.2):
            writer.add(np.arange(3), _embeds(3))  # replaces ids 0-2: a new id file generation
            commits += 1
            resume.release()
    reader.join()
    assert "error" not in result, (commits, result)
    np.testing.assert_array_equal(result["ids"], np.arange(10))
    writer.add(np.arange(3), _embeds(3))  # no reader loading: the orphans go now
    named = {s["ids"] for s in json.loads((path / "manifest.json").read_text())["shards"]}
    assert {p.name for p in path.glob("*.ids.npy")} == named


def test_storage_order_reads_land_in_place(tmp_path):
    """get() of ids in storage order (several shards, gaps) equals get() in any order; the
    map fallback fills a caller's buffer too."""
    rng = np.random.default_rng(3)
    store = TokenStore(tmp_path / "s", tokens=3, dim=8, shard_bytes=10 * 3 * 8 * 2)
    ids = rng.permutation(40).astype(np.int64) + 100
    embeds = rng.normal(size=(40, 3, 8)).astype(np.float32)
    store.add(ids, embeds)
    want = rng.choice(ids, size=25, replace=False)
    order = store.storage_order(want)
    assert sorted(order.tolist()) == list(range(25))
    in_order = store.get(want[order], dtype=np.float16)
    np.testing.assert_array_equal(in_order, store.get(want, dtype=np.float16)[order])
    np.testing.assert_array_equal(in_order.astype(np.float32), store.get(want[order]))
    shard = store._snap.shards[0]
    out = np.empty((3, 3, 8), np.float16)
    got = store._from_map(shard, np.array([0, 2, 5]), out)
    assert got is out
    np.testing.assert_array_equal(out, np.asarray(shard.data[[0, 2, 5]]))


def test_scattered_reads_in_parallel_equal_one_at_a_time(tmp_path, monkeypatch):
    """A shortlist of scattered records (many runs of one shard) read by the pool of reading
    threads lands exactly where one-at-a-time reads put it; a file shorter than the snapshot
    still falls back to the memory map."""
    import indexer.token_store as token_store

    rng = np.random.default_rng(5)
    store = TokenStore(tmp_path / "s", tokens=T, dim=C)
    embeds = _embeds(300, seed=6)
    store.add(np.arange(300), embeds)
    want = np.sort(rng.choice(300, size=90, replace=False))  # dozens of runs
    assert len(np.flatnonzero(np.diff(want) != 1)) + 1 >= 4 * token_store.PARALLEL_READ_MIN_RUNS
    parallel = store.get(want, dtype=np.float16)
    monkeypatch.setattr(token_store, "READ_PARALLELISM", 1)
    serial = store.get(want, dtype=np.float16)
    np.testing.assert_array_equal(parallel, serial)
    np.testing.assert_array_equal(parallel, embeds[want].astype(np.float16))
    monkeypatch.setattr(token_store, "READ_PARALLELISM", 16)
    calls = []
    real_preadv = os.preadv

    def short_read(fd, buffers, offset):  # the file lost its tail: every read comes back short
        calls.append(offset)
        return real_preadv(fd, buffers, offset) - 1

    monkeypatch.setattr(token_store.os, "preadv", short_read)
    np.testing.assert_array_equal(store.get(want, dtype=np.float16), serial)
    assert calls  # the threads did try, and the map answered
