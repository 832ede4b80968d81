"""FAISS wrapper: exact and IVF-PQ search against brute force, deletes, versioned atomic save
(one commit point, old layout, crash, a writer process racing reader threads), read-only
memory-mapped readers, reload, threads, and rebuild / drift check / sync against real databases."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import faiss
import numpy as np
import pytest

from indexer import db
from indexer.db.session import session_scope
from indexer.faiss_index import (
    FLAT,
    IVFPQ,
    IndexReadOnlyError,
    VectorIndex,
    index_path,
    ivfpq_params,
    open_index,
    read_meta,
    sidecar_path,
    writer_lock,
)
from indexer.index_versions import resolve, versions_dir
from ram_pp.vocab import TagVocabulary

pytest_plugins = ["tests.db_fixtures"]

DIM = 32


def unit(n: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered(n: int, seed: int = 0) -> np.ndarray:
    """Unit vectors around 40 centres, like image embeddings (IVF-PQ needs structure)."""
    rng = np.random.default_rng(seed)
    centres = unit(40, seed + 1)
    x = centres[rng.integers(0, 40, n)] + 0.25 * rng.standard_normal((n, DIM)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute_force(ids: np.ndarray, vectors: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    scores = vectors @ query
    return ids[np.argsort(-scores, kind="stable")[:k]]


def flat(**kw) -> VectorIndex:
    return VectorIndex(DIM, model_name="m", exact_max_size=10_000, nlist=16, pq_m=8, **kw)


def test_exact_search_equals_brute_force() -> None:
    ids = np.arange(500, dtype=np.int64) * 7 + 3
    vectors = unit(500)
    index = flat()
    index.add(ids, vectors)
    assert index.kind == FLAT and index.count == 500
    queries = unit(5, seed=9)
    scores, found = index.search(queries, 10)
    for q, s, f in zip(queries, scores, found, strict=True):
        np.testing.assert_array_equal(f, brute_force(ids, vectors, q, 10))
        np.testing.assert_allclose(s, np.sort(vectors @ q)[::-1][:10], rtol=1e-5)
    s1, f1 = index.search_one(vectors[42], 1)
    assert f1.tolist() == [ids[42]] and s1[0] == pytest.approx(1.0, abs=1e-5)
    assert int(ids[42]) in index and 4 not in index


def test_padding_is_removed_and_empty_index_answers() -> None:
    index = flat()
    scores, found = index.search(unit(2), 5)
    assert [f.size for f in found] == [0, 0] and [s.size for s in scores] == [0, 0]
    index.add([1, 2, 3], unit(3))
    _, found = index.search(unit(2, seed=4), 50)
    assert [sorted(f.tolist()) for f in found] == [[1, 2, 3], [1, 2, 3]]


def test_add_replaces_and_remove_deletes() -> None:
    vectors = unit(100)
    index = flat()
    index.add(np.arange(100), vectors)
    replacement = unit(1, seed=77)
    index.add([5], replacement)
    assert index.count == 100
    assert index.search_one(replacement[0], 1)[1].tolist() == [5]
    assert index.search_one(vectors[5], 1)[1].tolist() != [5] or vectors[5] @ replacement[0] > 0.99
    assert index.remove([5, 6, 1000]) == 2
    assert index.count == 98
    _, found = index.search(vectors[:10], 98)
    assert all(5 not in f and 6 not in f for f in found)
    # after removal the remaining ids still map to their own vectors
    assert index.search_one(vectors[7], 1)[1].tolist() == [7]


def test_allowed_ids_restrict_results() -> None:
    vectors = unit(300)
    index = flat()
    index.add(np.arange(300), vectors)
    allowed = np.array([10, 20, 30, 40])
    _, found = index.search(vectors[:3], 10, allowed_ids=allowed)
    assert all(set(f.tolist()) == set(allowed.tolist()) for f in found)
    assert index.search(vectors[:1], 5, allowed_ids=[])[1][0].size == 0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda i: i.add([1, 2], unit(3)), "vectors"),
        (lambda i: i.add([1], unit(1, dim=DIM + 1)), "vectors"),
        (lambda i: i.add([1, 1], unit(2)), "duplicate"),
        (lambda i: i.add([-1], unit(1)), ">= 0"),
        (lambda i: i.add([1], np.full((1, DIM), np.nan, np.float32)), "NaN"),
        (lambda i: i.search(unit(1), 0), "k must"),
        (lambda i: i.search(unit(1, dim=8), 3), "queries"),
    ],
)
def test_bad_input_raises(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call(flat())


def test_switches_to_ivfpq_beyond_exact_size_and_deletes_stay_correct(tmp_path: Path) -> None:
    ids = np.arange(800, dtype=np.int64) * 11 + 5
    vectors = clustered(800)
    index = VectorIndex(DIM, model_name="m", exact_max_size=300, nlist=8, pq_m=4, nprobe=8)
    index.add(ids[:250], vectors[:250])
    assert index.kind == FLAT
    index.add(ids[250:], vectors[250:])
    assert index.kind == IVFPQ and index.count == 800
    assert index.params == ivfpq_params(800, DIM, 8, 4)

    queries = vectors[::17]
    _, found = index.search(queries, 10)
    hit = [brute_force(ids, vectors, q, 1)[0] in f for q, f in zip(queries, found, strict=True)]
    assert np.mean(hit) >= 0.6  # 1-recall@10 of a 4-bit PQ on 800 points

    # Reference: the same trained quantizers holding only the vectors that remain. Identical
    # codes give identical results, unless removal scrambled the id mapping (which is what
    # IndexIDMap2 around IVF does).
    reference = faiss.clone_index(index._index)
    reference.reset()
    reference.add_with_ids(vectors[300:], ids[300:])
    faiss.extract_index_ivf(reference).nprobe = 8
    assert index.remove(ids[:300]) == 300
    scores, found = index.search(vectors[:60], 5)
    ref_scores, ref_ids = reference.search(vectors[:60], 50)
    for q in range(60):
        truth = dict(zip(ref_ids[q].tolist(), ref_scores[q].tolist(), strict=True))
        for asset_id, score in zip(found[q].tolist(), scores[q].tolist(), strict=True):
            assert truth[asset_id] == pytest.approx(score, abs=1e-5)  # the id's own score
        np.testing.assert_allclose(scores[q], ref_scores[q][:5], atol=1e-5)
    assert not set(np.concatenate(found).tolist()) & set(ids[:300].tolist())

    index.save(tmp_path / "ivf.faiss")
    reader = VectorIndex.load(tmp_path / "ivf.faiss", mmap=True)
    assert (reader.kind, reader.count, reader.read_only) == (IVFPQ, 500, True)
    assert 5 not in reader and int(ids[600]) in reader
    reader_scores, reader_found = reader.search(vectors[:60], 5)
    np.testing.assert_array_equal(np.stack(reader_found), np.stack(found))
    np.testing.assert_allclose(np.stack(reader_scores), np.stack(scores), atol=1e-6)
    np.testing.assert_array_equal(reader.ids(), np.sort(ids[300:]))
    writer = VectorIndex.load(tmp_path / "ivf.faiss", mmap=False)
    writer.add([ids[0]], vectors[:1])
    writer.add([ids[0]], vectors[1:2])  # replacing works through the hash-table direct map
    assert writer.count == 501 and writer.remove([ids[0], ids[400]]) == 2


def test_ivfpq_params_are_clamped() -> None:
    assert ivfpq_params(100, 512, 4096, 64) == {"nlist": 2, "m": 64, "nbits": 1}
    assert ivfpq_params(1_000_000, 512, 4096, 64) == {"nlist": 4096, "m": 64, "nbits": 8}
    assert ivfpq_params(20_000, 500, 4096, 64)["m"] == 50
    assert ivfpq_params(5000, 512, 4096, 64)["nlist"] == 128
    with pytest.raises(ValueError):
        ivfpq_params(0, 512, 4096, 64)


def test_save_is_atomic_and_readers_are_read_only(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "idx" / "m.faiss"
    vectors = unit(200)
    index = flat()
    index.add(np.arange(200), vectors)
    index.save(path)
    meta = read_meta(path)
    assert (meta.model_name, meta.dim, meta.count, meta.kind) == ("m", DIM, 200, FLAT)

    reader = VectorIndex.load(path, mmap=True)
    assert reader.read_only and reader.count == 200
    np.testing.assert_array_equal(reader.search(vectors[:5], 3)[1], index.search(vectors[:5], 3)[1])
    with pytest.raises(IndexReadOnlyError):
        reader.add([999], unit(1))  # would abort the process inside FAISS if not refused
    with pytest.raises(IndexReadOnlyError):
        reader.remove([1])

    # a failing write leaves the previous version in force and no partial version or temp file
    before = path.read_bytes()
    index.add([500], unit(1, seed=3))

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(faiss, "write_index", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        index.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before and read_meta(path).count == 200
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.faiss", "m.versions"]
    assert sorted(p.name for p in versions_dir(path).iterdir()) == [".lock", "v000001"]
    assert os.readlink(path) == "m.versions/v000001/index.faiss"


def test_reader_reloads_after_writer_saves(tmp_path: Path) -> None:
    path = tmp_path / "m.faiss"
    writer = flat()
    writer.add(np.arange(50), unit(50))
    writer.save(path)
    reader = VectorIndex.load(path)
    assert reader.reload_if_changed() is False
    new = unit(1, seed=123)
    writer.add([777], new)
    writer.save(path)
    old_hit = reader.search_one(new[0], 1)[1].tolist()
    assert old_hit != [777]
    assert reader.reload_if_changed() is True
    assert reader.count == 51 and reader.search_one(new[0], 1)[1].tolist() == [777]
    assert reader.reload_if_changed() is False


def test_versions_behind_one_pointer_old_ones_collected_snapshots_survive(tmp_path: Path) -> None:
    path = tmp_path / "m.faiss"
    writer = flat()
    vectors = unit(60, seed=8)
    writer.add(np.arange(10), vectors[:10])
    writer.save(path)
    first = VectorIndex.load(path)  # memory-maps version 1
    assert first.version == "v000001"
    for n in (20, 30, 40):
        writer.add(np.arange(n - 10, n), vectors[n - 10 : n])
        writer.save(path)
    # the current version and the one before it stay; the pointer names the current one
    assert sorted(p.name for p in versions_dir(path).iterdir()) == [".lock", "v000003", "v000004"]
    assert os.readlink(path) == "m.versions/v000004/index.faiss" and path.exists()
    meta = read_meta(path)
    assert (meta.count, meta.version, meta.previous) == (40, "v000004", "v000003")
    assert writer.version == "v000004"
    # version 1's files are gone, yet the reader that mapped them keeps serving that snapshot
    assert first.count == 10
    np.testing.assert_array_equal(first.search(vectors[:10], 1)[1], np.arange(10)[:, None])
    assert first.reload_if_changed() and first.version == "v000004" and first.count == 40
    np.testing.assert_array_equal(first.search(vectors[30:40], 1)[1], np.arange(30, 40)[:, None])


def _old_layout(path: Path, vectors: np.ndarray) -> None:
    """An index as the two-file layout wrote it: ``m.faiss`` and its ``m.json`` sidecar."""
    raw = faiss.IndexIDMap2(faiss.IndexFlatIP(DIM))
    raw.add_with_ids(vectors, np.arange(len(vectors), dtype=np.int64))
    faiss.write_index(raw, str(path))
    meta = {"model_name": "m", "dim": DIM, "count": len(vectors), "kind": "flat", "params": {}}
    meta |= {"watermark": None, "saved_at": "2024-01-01T00:00:00+00:00", "format": 1}
    sidecar_path(path).write_text(json.dumps(meta))


def test_old_two_file_layout_opens_and_the_first_save_migrates_it(tmp_path: Path) -> None:
    path = tmp_path / "m.faiss"
    vectors = unit(30, seed=4)
    _old_layout(path, vectors[:20])
    (tmp_path / "m.faiss.123.456.tmp").write_bytes(b"left by a crashed old-layout save")
    reader = VectorIndex.load(path)
    assert reader.count == 20 and reader.version is None and read_meta(path).version == ""
    assert reader.reload_if_changed() is False
    writer = VectorIndex.load(path, mmap=False)
    writer.add(np.arange(20, 30), vectors[20:])
    writer.save(path)
    # one os.replace turned the file into the pointer; the dead sidecar and temp file are gone
    assert path.is_symlink() and not sidecar_path(path).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.faiss", "m.versions"]
    assert read_meta(path).version == "v000001" and read_meta(path).count == 30
    assert reader.count == 20  # still the old file's snapshot, unlinked but mapped
    assert reader.reload_if_changed() and reader.count == 30
    np.testing.assert_array_equal(reader.search(vectors, 1)[1], np.arange(30)[:, None])


def test_old_layout_with_a_mismatched_sidecar_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "m.faiss"
    _old_layout(path, unit(5))
    sidecar = sidecar_path(path)
    sidecar.write_text(sidecar.read_text().replace('"count": 5', '"count": 4'))
    with pytest.raises(ValueError, match="index has 5 x 32, metadata says 4 x 32"):
        VectorIndex.load(path)


_CRASHING_WRITER = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    from indexer import index_versions
    from indexer.faiss_index import VectorIndex
    index = VectorIndex.load(sys.argv[1], mmap=False)
    index.add([999], np.ones((1, index.dim), np.float32) / np.sqrt(index.dim))
    # killed after the version folder is complete, before the pointer swap
    index_versions._swap_pointer = lambda *args: os._exit(3)
    index.save(sys.argv[1])
    """
)


def test_crash_before_the_pointer_swap_keeps_the_previous_version(tmp_path: Path) -> None:
    path = tmp_path / "m.faiss"
    writer = flat()
    writer.add(np.arange(10), unit(10))
    writer.save(path)
    crashed = subprocess.run([sys.executable, "-c", _CRASHING_WRITER, str(path)], timeout=120)
    assert crashed.returncode == 3
    # the crashed writer's version is complete on disk but not committed: nobody sees it
    orphan = versions_dir(path) / "v000002"
    assert json.loads((orphan / "meta.json").read_text())["count"] == 11
    assert read_meta(path).count == 10 and VectorIndex.load(path).count == 10
    assert 999 not in VectorIndex.load(path)
    # the next writer commits after it and removes it
    writer.add([10], unit(1, seed=2))
    writer.save(path)
    assert sorted(p.name for p in versions_dir(path).iterdir()) == [".lock", "v000001", "v000003"]
    assert read_meta(path).previous == "v000001" and VectorIndex.load(path).count == 11


_RACE_WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from indexer.db.embedding_repo import Watermark
    from indexer.faiss_index import VectorIndex
    path, seconds, dim = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    rng = np.random.default_rng(0)
    def vectors(n):
        x = rng.standard_normal((n, dim)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)
    index = VectorIndex(dim, model_name="race", exact_max_size=10**6, nlist=8, pq_m=8)
    index.add(np.arange(1000), vectors(1000))
    index.watermark = Watermark(count=1000, max_id=999, max_updated_at=None)
    index.save(path)
    print("ready", flush=True)
    end, saves = time.monotonic() + seconds, 1
    while time.monotonic() < end:
        n = index.count  # version k holds ids 0..n-1 and says so in its metadata
        index.add([n], vectors(1))
        index.watermark = Watermark(count=n + 1, max_id=n, max_updated_at=None)
        index.save(path)
        saves += 1
    print(saves, flush=True)
    """
)


def test_writer_process_saving_while_reader_threads_load_and_search(tmp_path: Path) -> None:
    """The issue's race (the old two-file save failed here about 10 times a second): a writer
    process commits a new version as fast as it can while reader threads open the index afresh
    or reload it and search. Every read must be one committed version, whole: its metadata (the
    watermark), its vector count and its ids agree."""
    path, dim, seconds = tmp_path / "race.faiss", 384, 3.0
    writer = subprocess.Popen(
        [sys.executable, "-c", _RACE_WRITER, str(path), str(seconds), str(dim)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
    errors: list[str] = []
    reads = [0, 0]
    stop = threading.Event()
    query = np.full((1, dim), 1 / np.sqrt(dim), np.float32)

    def check(index: VectorIndex) -> None:
        n = index.count
        assert index.watermark is not None and index.watermark.count == n, (index.watermark, n)
        np.testing.assert_array_equal(index.ids(), np.arange(n))
        assert index.search(query, 5)[1][0].size == 5

    def reader(slot: int) -> None:
        index: VectorIndex | None = None
        seen = 0
        while not stop.is_set():
            try:
                if slot == 0 or index is None:
                    index = VectorIndex.load(path)  # a process starting
                else:
                    index.reload_if_changed()  # the API's long-lived reader
                assert index.count >= seen, "went back to an older version"
                seen = index.count
                check(index)
                reads[slot] += 1
            except Exception as exc:  # noqa: BLE001 - counted and reported below
                errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=reader, args=(i % 2,)) for i in range(4)]
    for t in threads:
        t.start()
    out, _ = writer.communicate(timeout=seconds + 120)
    stop.set()
    for t in threads:
        t.join()
    assert writer.returncode == 0
    saves = int(out.strip())
    assert not errors, (len(errors), errors[:3])
    assert saves > 10 and min(reads) > 10, (saves, reads)
    assert read_meta(path).count == 1000 + saves - 1
    assert len([p for p in versions_dir(path).iterdir() if p.name.startswith("v")]) == 2


def test_one_writer_many_reader_threads() -> None:
    index = flat()
    all_vectors = unit(2000, seed=5)
    index.add(np.arange(100), all_vectors[:100])
    errors: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        try:
            while not stop.is_set():
                scores, found = index.search(all_vectors[:8], 5)
                for f in found:
                    assert f.size == 5 and (f >= 0).all()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    readers = [threading.Thread(target=read) for _ in range(4)]
    for t in readers:
        t.start()
    for start in range(100, 2000, 100):
        index.add(np.arange(start, start + 100), all_vectors[start : start + 100])
        index.remove([start - 50])
    stop.set()
    for t in readers:
        t.join()
    assert not errors, errors
    assert index.count == 2000 - 19


def test_writer_lock_excludes_a_second_writer(tmp_path: Path) -> None:
    path = tmp_path / "m.faiss"
    order: list[str] = []
    held = threading.Event()

    def second() -> None:
        held.wait()
        with writer_lock(path):
            order.append("second")

    t = threading.Thread(target=second)
    t.start()
    with writer_lock(path):
        held.set()
        time.sleep(0.3)
        order.append("first")
    t.join()
    assert order == ["first", "second"]


def test_index_path_is_safe_and_distinct(tmp_path: Path) -> None:
    a = index_path(tmp_path, "ram_plus_swin_large_14m@0123456789ab")
    b = index_path(tmp_path, "ram/plus@0123456789ab")
    c = index_path(tmp_path, "ram_plus@0123456789ab")
    assert a.parent == tmp_path and a.suffix == ".faiss"
    assert "/" not in b.name and "@" not in b.name
    assert len({a, b, c}) == 3
    assert sidecar_path(a).suffix == ".json"


@pytest.mark.gpu
@pytest.mark.skipif(faiss.get_num_gpus() < 1, reason="needs faiss-gpu and a CUDA device")
def test_gpu_search_matches_cpu() -> None:  # pragma: no cover - no GPU on the CI machine
    vectors = unit(1000)
    cpu = flat(use_gpu=False)
    gpu = flat(use_gpu=True)
    for index in (cpu, gpu):
        index.add(np.arange(1000), vectors)
    np.testing.assert_array_equal(cpu.search(vectors[:20], 5)[1], gpu.search(vectors[:20], 5)[1])


# --------------------------------------------------------------------------- with a database

MODEL = "faiss-model@1"


def store(url: str, vectors: dict[int, np.ndarray] | np.ndarray, model: str = MODEL) -> list[int]:
    """Create assets (or re-score existing ids) with these embeddings; returns asset ids."""
    vocab = TagVocabulary.from_names(["x"])
    with session_scope(url) as s:
        tag_ids = db.ensure_vocabulary(s, model, vocab)
        if isinstance(vectors, dict):
            items = list(vectors.items())
        else:
            items = [
                (
                    db.get_or_create_asset_by_sha(
                        s, sha256=hashlib.sha256(v.tobytes()).hexdigest()
                    ).id,
                    v,
                )
                for v in vectors
            ]
        db.write_asset_results(
            s,
            [db.AssetResult(a, np.array([0.5], np.float32), embedding=v) for a, v in items],
            model_name=model,
            tag_ids=tag_ids,
        )
    return [a for a, _ in items]


def test_rebuild_check_and_sync_with_database(db_url: str, tmp_path: Path) -> None:
    vectors = unit(300, seed=1)
    ids = np.array(store(db_url, vectors))
    store(db_url, unit(20, seed=2), model="other-model@1")  # not part of this model's index
    with session_scope(db_url) as s:
        index = VectorIndex.rebuild_from_database(s, MODEL, exact_max_size=10_000)
        report = index.check(s)
        assert index.kind == FLAT and index.count == 300
        assert report.in_sync and not report.stale and report.db_count == 300
        assert not index.is_stale(s)
    q = unit(3, seed=8)
    for query, found in zip(q, index.search(q, 5)[1], strict=True):
        np.testing.assert_array_equal(found, brute_force(ids, vectors, query, 5))

    # drift: an asset deleted, two new ones, one re-scored with a new embedding
    new_vectors = unit(2, seed=30)
    with session_scope(db_url) as s:
        db.delete_asset(s, int(ids[0]))
    new_ids = store(db_url, new_vectors)
    rescored = unit(1, seed=40)[0]
    store(db_url, {int(ids[1]): rescored})
    with session_scope(db_url) as s:
        report = index.check(s)
        assert not report.in_sync and report.stale
        assert report.missing_from_index.tolist() == sorted(new_ids)
        assert report.extra_in_index.tolist() == [ids[0]]
        assert "DRIFT" in report.summary()
        index.sync(s)
        after = index.check(s)
        assert after.in_sync and not after.stale and after.index_count == 301
    assert index.search_one(rescored, 1)[1].tolist() == [ids[1]]
    assert index.search_one(new_vectors[1], 1)[1].tolist() == [new_ids[1]]

    # sync's cheap path: only re-scored embeddings, counts unchanged
    rescored2 = unit(1, seed=41)[0]
    store(db_url, {int(ids[2]): rescored2})
    with session_scope(db_url) as s:
        assert index.is_stale(s)
        report = index.sync(s)
        assert report.missing_from_index.size == 0 and not index.is_stale(s)
    assert index.search_one(rescored2, 1)[1].tolist() == [ids[2]]


def test_rebuild_ivfpq_from_database_and_open_index(db_url: str, tmp_path: Path) -> None:
    vectors = clustered(800, seed=3)
    ids = np.array(store(db_url, vectors))
    with session_scope(db_url) as s:
        index = VectorIndex.rebuild_from_database(
            s, MODEL, exact_max_size=300, nlist=8, pq_m=4, batch_size=300
        )
        assert index.kind == IVFPQ and index.count == 800
        assert index.check(s).in_sync
    queries = vectors[::17]
    _, found = index.search(queries, 10)
    hit = [brute_force(ids, vectors, q, 1)[0] in f for q, f in zip(queries, found, strict=True)]
    assert np.mean(hit) >= 0.6

    with session_scope(db_url) as s:
        opened = open_index(s, MODEL, index_dir=tmp_path)  # no file yet: rebuilt and saved
        assert index_path(tmp_path, MODEL).is_file() and opened.count == 800
        store(db_url, unit(1, seed=99))
        reopened = open_index(s, MODEL, index_dir=tmp_path)  # stale: synced and saved
        assert reopened.count == 801 and read_meta(index_path(tmp_path, MODEL)).count == 801
    with session_scope(db_url) as s:
        with pytest.raises(ValueError, match="pass dim"):
            VectorIndex.rebuild_from_database(s, "nothing-here")
        empty = VectorIndex.rebuild_from_database(s, "nothing-here", dim=DIM)
        assert empty.count == 0 and empty.check(s).in_sync


def test_damaged_sidecar_is_a_clear_error_and_open_index_rebuilds(
    db_url: str, tmp_path: Path
) -> None:
    store(db_url, unit(10, seed=6))
    path = index_path(tmp_path, MODEL)
    with session_scope(db_url) as s:
        open_index(s, MODEL, index_dir=tmp_path)
    resolve(path).meta.write_text('{"model_name": "x"}')
    with pytest.raises(ValueError, match="incomplete"):
        VectorIndex.load(path)
    with session_scope(db_url) as s:
        again = open_index(s, MODEL, index_dir=tmp_path)
    assert again.count == 10 and read_meta(path).count == 10
    assert read_meta(path).version == "v000002"  # rebuilt and committed as a new version
