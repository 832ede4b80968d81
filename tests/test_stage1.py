"""Stage 1 of concept search: the shortlist contract for every method, multi-probe search against
brute force, an archive where the mean query provably misses what the probes find, and the
service's own FAISS index (flat and IVF-PQ) with several query rows."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from indexer.faiss_index import IVFPQ, VectorIndex
from indexer.stage1 import METHODS, cluster_rows, ranked_candidates, shortlist
from indexer.token_store import TokenStore
from ram_pp.labels import LabelBank

DIM, T = 32, 3


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


class Flat:
    """FAISS exact inner product returning (q, k) arrays, recording each call's query rows."""

    def __init__(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
        self.index.add_with_ids(vectors.astype(np.float32), ids.astype(np.int64))
        self.calls: list[tuple[int, int]] = []

    def search(self, query: np.ndarray, k: int):
        self.calls.append((query.shape[0], k))
        return self.index.search(query, k)


def make_store(tmp_path, ids: np.ndarray) -> TokenStore:
    store = TokenStore(tmp_path / "tok", tokens=T, dim=DIM)
    store.add(ids, np.zeros((len(ids), T, DIM), np.float32))
    return store


def concept(rows: np.ndarray) -> LabelBank:
    return LabelBank.from_ragged([torch.from_numpy(unit(rows))])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    rng = np.random.default_rng(0)
    n = 400
    c = unit(rng.standard_normal((n, DIM)))
    ids = np.arange(n, dtype=np.int64) * 7 + 3  # sparse ids, not positions
    rows = unit(rng.standard_normal((5, DIM)))
    store = make_store(tmp_path_factory.mktemp("s1"), ids)
    return c, ids, rows, store


def brute_max(c: np.ndarray, ids: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    best = (c @ rows.T).max(1)
    return ids[np.lexsort((ids, -best))[:k]]


@pytest.mark.parametrize("method", METHODS)
def test_contract_distinct_stored_at_most_k_best_first(world, tmp_path, method):
    c, ids, rows, _ = world
    store = make_store(tmp_path, ids[ids % 2 == 1])  # half of the indexed assets deleted since
    cands = Flat(c, ids)
    for k in (1, 17, 150, 10_000):
        got = shortlist(concept(rows), cands, store, k, method=method)
        assert got.dtype == np.int64 and len(got) <= k
        assert len(np.unique(got)) == len(got)
        assert store.has(got).all()
        if k >= len(ids):  # the whole stored archive comes back
            assert set(got) == set(ids[ids % 2 == 1])
    # one search call per concept, every probe row in it
    assert all(k in (1, 17, 150, 10_000) for _, k in cands.calls)
    assert len(cands.calls) == 4


def test_probes_equal_brute_force_max_and_are_best_first(world):
    c, ids, rows, store = world
    cands = Flat(c, ids)
    for k in (1, 10, 60, 400):
        got = shortlist(concept(rows), cands, store, k, method="probes")
        np.testing.assert_array_equal(got, brute_max(c, ids, rows, k))
    assert cands.calls[-1] == (5, 400)  # five probes in one call
    best = (c @ rows.T).max(1)[np.searchsorted(ids, got)]
    assert (np.diff(best) <= 1e-6).all()


def test_mean_is_the_normalised_mean_query(world):
    c, ids, rows, store = world
    got = shortlist(concept(rows), Flat(c, ids), store, 40, method="mean")
    m = unit(rows.mean(0))
    np.testing.assert_array_equal(got, ids[np.lexsort((ids, -(c @ m)))[:40]])


def test_softmax_merge_with_full_lists_is_the_reweighted_score(world):
    c, ids, rows, store = world
    scale = 14.0
    got = shortlist(concept(rows), Flat(c, ids), store, len(ids), method="softmax", scale=scale)
    s = c @ rows.T
    w = np.exp(scale * (s - s.max(1, keepdims=True)))
    merged = (w * s).sum(1) / w.sum(1)
    np.testing.assert_array_equal(got, ids[np.lexsort((ids, -merged))])


def test_mean_query_misses_what_probes_find(tmp_path):
    """Two views of a concept (orthogonal descriptions b1, b2). Assets that match one view
    exactly have c . mean = 0.71; distractors between the views (c . mean = 0.99, but at best
    0.75 with either view) fill the mean's whole shortlist. The sharp per-image re-weighting of
    RAM++ scores each asset with the view nearest to it, so the view-matching assets are the ones
    the head ranks first: the probes shortlist all of them, the mean none."""
    rng = np.random.default_rng(1)
    b = np.eye(DIM, dtype=np.float32)[:2]
    mean = unit(b.sum(0))
    views = np.repeat(b, 10, 0)  # 10 assets on each view
    views = unit(views + 0.02 * rng.standard_normal(views.shape))
    distractors = unit(np.tile(mean, (50, 1)) + 0.05 * rng.standard_normal((50, DIM)))
    noise = unit(rng.standard_normal((200, DIM)))
    c = np.concatenate([views, distractors, noise])
    ids = np.arange(len(c), dtype=np.int64)
    store = make_store(tmp_path, ids)
    assert (distractors @ mean).min() > (views @ mean).max()  # why the mean misses
    wanted = set(ids[:20])
    cands = Flat(c, ids)
    got_mean = shortlist(concept(b), cands, store, 20, method="mean")
    assert not wanted & set(got_mean)
    for method in ("probes", "softmax", "clusters"):
        assert set(shortlist(concept(b), cands, store, 20, method=method)) == wanted, method
    mixed = shortlist(concept(b), cands, store, 40, method="mixed")
    assert wanted <= set(mixed) and set(got_mean) <= set(mixed)


def test_clusters_group_the_descriptions():
    rng = np.random.default_rng(2)
    centres = unit(rng.standard_normal((3, DIM)))
    rows = unit(np.repeat(centres, 4, 0) + 0.05 * rng.standard_normal((12, DIM)))
    got = cluster_rows(rows, 3)
    assert got.shape == (3, DIM)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert sorted(np.argmax(got @ centres.T, axis=1)) == [0, 1, 2]
    assert cluster_rows(rows, 50).shape == (12, DIM)  # never more groups than rows
    np.testing.assert_array_equal(cluster_rows(rows, 3), got)  # deterministic


@pytest.mark.parametrize("kind", ["flat", "ivfpq"])
def test_service_index_several_query_rows(tmp_path, kind):
    """VectorIndex.search returns one (possibly short) row per query: probes work on both
    kinds, and the IVF nprobe setting is the same after the call as before."""
    rng = np.random.default_rng(3)
    centres = unit(rng.standard_normal((20, DIM)))
    c = unit(centres[rng.integers(0, 20, 1200)] + 0.2 * rng.standard_normal((1200, DIM)))
    ids = np.arange(1200, dtype=np.int64) + 1000
    index = VectorIndex(
        DIM, exact_max_size=(500 if kind == "ivfpq" else 10_000), nlist=16, pq_m=8, nprobe=4
    )
    index.add(ids, c)
    assert (index.kind == IVFPQ) == (kind == "ivfpq")
    nprobe = faiss.extract_index_ivf(index._index).nprobe if kind == "ivfpq" else None
    store = make_store(tmp_path, ids)
    rows = centres[:4]
    for method in METHODS:
        got = shortlist(concept(rows), index, store, 100, method=method)
        assert 0 < len(got) <= 100 and len(np.unique(got)) == len(got)
        assert store.has(got).all()
    if kind == "flat":
        np.testing.assert_array_equal(
            shortlist(concept(rows), index, store, 100, method="probes"),
            brute_max(c, ids, rows, 100),
        )
    else:
        assert faiss.extract_index_ivf(index._index).nprobe == nprobe
        # approximate, but the probes still find each view's neighbours
        got = shortlist(concept(rows), index, store, 100, method="probes")
        assert np.isin(brute_max(c, ids, rows, 100), got).mean() > 0.5


def test_bad_calls(world):
    c, ids, rows, store = world
    cands = Flat(c, ids)
    two = LabelBank.from_ragged([torch.from_numpy(rows), torch.from_numpy(rows[:2])])
    with pytest.raises(ValueError, match="one concept"):
        shortlist(two, cands, store, 5)
    with pytest.raises(ValueError, match="method"):
        shortlist(concept(rows), cands, store, 5, method="nope")
    with pytest.raises(ValueError, match="k must be"):
        shortlist(concept(rows), cands, store, 0)
    # a ragged concept uses its real rows only (padding never becomes a probe)
    bank = LabelBank.from_ragged(
        [F.normalize(torch.from_numpy(rows[:2]), dim=-1), torch.from_numpy(rows)]
    )
    got = ranked_candidates(bank.select(slice(0, 1)), cands, 30, "probes")
    np.testing.assert_array_equal(got[:30], brute_max(c, ids, rows[:2], 30))


def test_adaptive_scores_grow_while_the_tail_pays_and_stop_when_it_does_not():
    from indexer.stage1 import AdaptiveRule, adaptive_scores

    rule = AdaptiveRule(first=100, step=50, min_new=1, top=10, limit=400)
    calls: list[int] = []

    def scorer(logits: np.ndarray):
        def score(ids: np.ndarray) -> np.ndarray:
            calls.append(len(ids))
            return logits[ids]

        return score

    ranked = np.arange(1000, dtype=np.int64)
    # a tail that never beats the first round's top 10: one extra round, then stop
    flat = np.linspace(10, 0, 1000).astype(np.float32)
    ids, got = adaptive_scores(ranked, scorer(flat), rule)
    assert calls == [100, 50] and len(ids) == 150
    np.testing.assert_array_equal(got, flat[:150])
    # a strong occurrence every 40 ranks: rounds keep paying until the limit
    calls.clear()
    spiky = flat.copy()
    spiky[::40] = 100 + np.arange(25)
    ids, got = adaptive_scores(ranked, scorer(spiky), rule)
    assert len(ids) == 400 and sum(calls) == 400 and calls[0] == 100
    np.testing.assert_array_equal(ids, ranked[:400])
    # a short candidate list is scored whole, once
    calls.clear()
    ids, _ = adaptive_scores(ranked[:60], scorer(flat), rule)
    assert calls == [60] and len(ids) == 60
    with pytest.raises(ValueError):
        AdaptiveRule(first=500, limit=100)
