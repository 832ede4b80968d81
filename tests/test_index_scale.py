"""The vector index at scale, on real FAISS and a real database: drift measured and acted on,
the old index serving during a rebuild, memory-mapped replicas following the swap.

There is no GPU here: the faiss-gpu path of :class:`VectorIndex` is not exercised (see
``tests/test_faiss_index.py::test_gpu_search_matches_cpu``, skipped without one)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import faiss
import numpy as np
import pytest

from indexer.db.session import session_scope
from indexer.faiss_index import (
    IVFPQ,
    VectorIndex,
    index_path,
    open_index,
    rebuild_and_swap,
    writer_lock,
)
from indexer.settings import get_settings
from tests.test_faiss_index import DIM, MODEL, store

pytest_plugins = ["tests.db_fixtures"]


@pytest.fixture(autouse=True)
def quick_ivfpq_training(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """IVF-PQ that trains in a fraction of the time, the drift logic unchanged (it looks only
    at the coarse quantizer): 8 sub-quantizers (``index.pq_m``; the default 64 gives 32 on
    these 32-d vectors, and FAISS's polysemous training grows with them), and FAISS on one
    OpenMP thread (two threads ran 2-3x slower on the test machine's shared cores)."""
    monkeypatch.setenv("RAMDEX_INDEX__PQ_M", "8")
    get_settings.cache_clear()
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)
    get_settings.cache_clear()


def around(n: int, centre_seed: int, seed: int) -> np.ndarray:
    """Unit vectors near 8 centres drawn with ``centre_seed`` (noise of norm 0.5)."""
    rng = np.random.default_rng(centre_seed)
    centres = rng.standard_normal((8, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(0, 8, n)] + (0.5 / np.sqrt(DIM)) * rng.standard_normal((n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_drift_is_measured_and_triggers_a_rebuild(db_url: str, tmp_path: Path) -> None:
    # Sizes just past the thresholds (IVF beyond 200 vectors, drift judged from 256 added):
    # FAISS trains IVF7,PQ8x2 and then IVF23,PQ8x4 (4 and 5 bits on 800 and 1500 before).
    exact = 200
    store(db_url, around(300, centre_seed=1, seed=2))
    with session_scope(db_url) as s:
        index = open_index(s, MODEL, index_dir=tmp_path, dim=DIM, exact_max_size=exact)
    assert index.kind == IVFPQ and index.training["trained_count"] == 300
    first = index.version

    # More of the same distribution: incremental adds, no retraining.
    store(db_url, around(300, centre_seed=1, seed=3))
    with session_scope(db_url) as s:
        index = open_index(s, MODEL, index_dir=tmp_path, dim=DIM, exact_max_size=exact)
    drift = index.drift()
    assert index.count == 600 and drift.added >= 300  # sync re-adds recent updates too
    assert drift.distance_ratio < 1.2 and not drift.needs_rebuild, drift
    assert index.training["trained_count"] == 300 and index.version != first

    # New content unlike the old (other centres): far from every coarse centroid -> rebuild.
    probe = VectorIndex.load(index_path(tmp_path, MODEL), mmap=False)
    probe.add(np.arange(10**6, 10**6 + 300), around(300, centre_seed=7, seed=4))
    assert probe.drift().needs_rebuild and probe.drift().distance_ratio > 1.2
    store(db_url, around(300, centre_seed=7, seed=4))
    with session_scope(db_url) as s:
        index = open_index(s, MODEL, index_dir=tmp_path, dim=DIM, exact_max_size=exact)
        assert index.check(s).in_sync
    assert index.count == 900 and index.training["trained_count"] == 900  # retrained
    assert index.drift().added == 0 and not index.drift().needs_rebuild
    reader = VectorIndex.load(index_path(tmp_path, MODEL), mmap=True)
    assert reader.training == index.training and reader.version == index.version


def test_old_index_serves_during_a_rebuild_and_replicas_follow_the_swap(
    db_url: str, tmp_path: Path
) -> None:
    old = around(600, centre_seed=1, seed=2)
    store(db_url, old)
    path = index_path(tmp_path, MODEL)
    with session_scope(db_url) as s:
        writer = open_index(s, MODEL, index_dir=tmp_path, dim=DIM, exact_max_size=300)
    replica = VectorIndex.load(path, mmap=True)  # an API process's memory-mapped replica
    old_version = replica.version
    new = around(50, centre_seed=9, seed=5)
    new_ids = store(db_url, new)  # in the database, not yet in any index

    built, go, seen = threading.Event(), threading.Event(), {}

    def before_swap(fresh: VectorIndex) -> None:
        seen["fresh_count"] = fresh.count
        built.set()
        assert go.wait(30)

    def rebuild() -> None:
        with writer_lock(path), session_scope(db_url) as s:
            rebuild_and_swap(writer, s, path, before_swap=before_swap)

    thread = threading.Thread(target=rebuild)
    thread.start()
    try:
        assert built.wait(60)
        # The new index is built but not swapped in: both the writer and the replica serve
        # the old one, without waiting for the rebuild.
        for index in (writer, replica):
            _, ids = index.search_one(new[0], 5)
            assert not np.isin(ids, new_ids).any() and len(ids) == 5
        assert writer.count == 600 and not replica.reload_if_changed()
        assert replica.version == old_version
    finally:
        go.set()
        thread.join(60)
    assert seen["fresh_count"] == 650 and writer.count == 650
    assert replica.reload_if_changed() and replica.version == writer.version != old_version
    _, ids = replica.search_one(new[0], 5)
    assert np.isin(ids, new_ids).any() and replica.count == 650
