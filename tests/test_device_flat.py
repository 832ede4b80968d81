"""Torch flat search on a device (indexer/device_flat.py) answers as FAISS flat does."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
import torch

from indexer import device_flat
from indexer.device_flat import DeviceFlatIndex, faiss_gpu_info

D = 64
CUDA = torch.cuda.is_available()


def _unit(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, D)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _faiss(ids, vectors):
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(D))
    index.add_with_ids(vectors, ids)
    return index


@pytest.fixture()
def data():
    ids = np.arange(500, dtype=np.int64) * 3 + 1
    return ids, _unit(500, 0), _unit(7, 1)


def test_same_answer_as_faiss_flat(data, monkeypatch):
    ids, vectors, queries = data
    monkeypatch.setattr(device_flat, "ROWS_PER_STEP", 128)  # several steps, merged top-k
    index = DeviceFlatIndex(D, capacity=16)  # grows several times
    index.add(ids[:200], vectors[:200])
    index.add(ids[200:], vectors[200:])
    scores, got = index.search(queries, 20)
    want_scores, want = _faiss(ids, vectors).search(queries, 20)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)


def test_filter_remove_replace_and_padding(data):
    ids, vectors, queries = data
    index = DeviceFlatIndex(D)
    index.add(ids, vectors)
    assert index.remove([ids[0], ids[1], 999_999]) == 2
    index.add([ids[2]], -vectors[2:3])  # replaced: the old row is gone
    assert len(index) == 498
    ref = _faiss(ids[2:], np.concatenate([-vectors[2:3], vectors[3:]]))
    allowed = ids[::5]
    sel = faiss.IDSelectorBatch(allowed)
    want_s, want = ref.search(queries, 10, params=faiss.SearchParameters(sel=sel))
    got_s, got = index.search(queries, 10, allowed_ids=allowed)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(got_s, want_s, atol=1e-5)
    scores, few = index.search(queries[:1], 5, allowed_ids=ids[3:6])
    assert sorted(few[0, :3].tolist()) == sorted(ids[3:6].tolist())
    assert (few[0, 3:] == -1).all() and np.isneginf(scores[0, 3:]).all()


def test_this_faiss_build_is_described():
    info = faiss_gpu_info()
    assert info["gpu_build"] == hasattr(faiss, "StandardGpuResources")
    if not info["gpu_build"]:
        assert info["gpus"] == 0


@pytest.mark.skipif(CUDA, reason="checks the guard of machines without CUDA")
def test_cuda_refused_without_a_gpu():
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        DeviceFlatIndex(D, device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_same_answer_as_faiss(data):  # pragma: no cover - GPU machines
    ids, vectors, queries = data
    index = DeviceFlatIndex(D, device="cuda")
    index.add(ids, vectors)
    np.testing.assert_array_equal(
        index.search(queries, 20)[1], _faiss(ids, vectors).search(queries, 20)[1]
    )


@pytest.mark.parametrize("kind", ["flat", "ivfpq"])
def test_vector_index_gpu_copy_options(monkeypatch, kind):
    """VectorIndex's GPU copy (faiss-gpu builds): float16 lookup tables for IVF-PQ only."""
    from indexer import faiss_index
    from indexer.faiss_index import VectorIndex

    class Options:
        useFloat16 = None

    calls = []

    def to_gpus(index, co=None):
        calls.append(co.useFloat16)
        return index  # the CPU index stands in for its GPU copy

    monkeypatch.setattr(faiss_index.faiss, "GpuMultipleClonerOptions", Options, raising=False)
    monkeypatch.setattr(faiss_index.faiss, "index_cpu_to_all_gpus", to_gpus, raising=False)
    monkeypatch.setattr(faiss_index.faiss, "get_num_gpus", lambda: 1)
    vectors = _unit(2000, 3)
    index = VectorIndex(D, exact_max_size=1000 if kind == "ivfpq" else 10_000, nlist=8, pq_m=8)
    index.add(np.arange(2000), vectors)
    assert index.kind == kind
    scores, ids = index.search(vectors[:2], 5)
    assert calls == [kind == "ivfpq"]
    assert ids[0][0] == 0 or kind == "ivfpq"
