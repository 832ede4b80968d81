"""Filtered vector search planned by selectivity, on real FAISS (no GPU here: CPU indexes)."""

from __future__ import annotations

import numpy as np
import pytest

from indexer.faiss_index import IVFPQ, VectorIndex
from indexer.search import filtered
from indexer.search.filtered import FilteredCandidates, IdFilter, choose, filtered_search

DIM = 64


def data(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((30, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[rng.integers(0, 30, n)] + (0.5 / np.sqrt(DIM)) * rng.standard_normal((n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def archive() -> tuple[VectorIndex, np.ndarray]:
    xb = data(20_000)
    index = VectorIndex(DIM, model_name="m", exact_max_size=1_000, nlist=64, pq_m=8, nprobe=16)
    index.add(np.arange(xb.shape[0]), xb)
    assert index.kind == IVFPQ
    return index, xb


def exact_top(xb: np.ndarray, allowed: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    return allowed[np.argsort(-(xb[allowed] @ query), kind="stable")[:k]]


def test_rare_filter_returns_the_exact_filtered_top_k(archive) -> None:
    index, xb = archive
    rng = np.random.default_rng(1)
    allowed = np.sort(rng.choice(xb.shape[0], 20, replace=False))  # 0.1 %
    query = data(1, seed=9)[0]

    def read(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return ids, xb[ids]

    scores, ids, plan = filtered_search(index, query, 10, IdFilter(allowed), read_vectors=read)
    assert plan.strategy == "exact" and plan.passing == 20
    assert ids.tolist() == exact_top(xb, allowed, query, 10).tolist()
    assert np.all(np.diff(scores) <= 0)
    # What this replaces: recall 1,000 by similarity, then filter: (almost) nothing passes.
    _, recalled = index.search_one(query, 1000)
    assert np.isin(recalled, allowed).sum() < 10
    # Without a vector reader the index is searched with a selector over every list.
    _, ids2, plan2 = filtered_search(index, query, 10, IdFilter(allowed))
    assert plan2.nprobe == index.params["nlist"] and set(ids2) <= set(allowed)
    assert len(ids2) == 10


def test_selector_and_widen_plans_find_the_filtered_top_k(archive, monkeypatch) -> None:
    index, xb = archive
    monkeypatch.setattr(filtered, "EXACT_MAX", 100)
    rng = np.random.default_rng(2)
    queries = data(10, seed=5)

    def read(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return ids, xb[ids]

    for share, strategy in ((0.01, "selector"), (0.1, "selector"), (0.5, "widen")):
        allowed = np.sort(rng.choice(xb.shape[0], int(share * xb.shape[0]), replace=False))
        recalls = []
        for q in queries:
            _, ids, plan = filtered_search(index, q, 20, IdFilter(allowed), read_vectors=read)
            assert plan.strategy == strategy
            assert np.isin(ids, allowed).all() and len(ids) == 20
            recalls.append(np.intersect1d(ids, exact_top(xb, allowed, q, 20)).size / 20)
        assert np.mean(recalls) >= 0.85, (share, recalls)  # IVF-PQ at nprobe 16 of 64


def test_choose_and_candidates_for_concept_stage1(archive) -> None:
    index, xb = archive
    assert choose(0, 100) == "empty"
    assert choose(10, 10**6) == "exact"
    assert choose(filtered.EXACT_MAX + 1, 10**6) == "selector"
    assert choose(600_000, 10**6) == "widen"
    allowed = np.array([3, 70, 900])
    source = FilteredCandidates(index, IdFilter(allowed))
    _, ids = source.search(xb[:2], 50)  # fewer pass than the shortlist: all of them
    assert [sorted(i.tolist()) for i in ids] == [[3, 70, 900]] * 2
    with pytest.raises(ValueError, match="k must be"):
        filtered_search(index, xb[0], 0, IdFilter(allowed))
