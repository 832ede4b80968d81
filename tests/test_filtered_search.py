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


# --- through the search service, on a real ingested archive (PostgreSQL) -------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - (archive, service)
    from indexer.archive import Archive
    from indexer.search import SearchService
    from tests.search_support import search_archive

    with search_archive(tmp_path_factory.mktemp("filtered"), "postgresql") as built:
        with Archive(built.settings) as opened:
            yield built, SearchService(opened)


def test_service_similar_and_concept_search_with_a_rare_filter_fill_the_page(
    served, monkeypatch
) -> None:
    from indexer.search import SearchRequest, rankings, service
    from indexer.search.rankings import asset_vector

    archive, svc = served
    recall = 4  # the recall budget, shrunk so that a filter is "rare" in an 80-asset archive
    monkeypatch.setattr(rankings, "RECALL", recall)
    monkeypatch.setattr(service, "RECALL", recall)
    with svc.archive.sessions() as s:
        # the rarest stored tag on at least 6 assets
        counts = {}
        for tag in ("small", "large", "red", "blue", "green", "circle", "square", "triangle"):
            page = svc.search(SearchRequest(all=[tag], limit=200), session=s)
            counts[tag] = [h.asset_id for h in page.hits]
        tag, passing = min(
            ((t, p) for t, p in counts.items() if len(p) >= 6), key=lambda x: len(x[1])
        )
        query = next(i for i in sorted(archive.truth) if i not in passing)
        q = asset_vector(s, query)
        exact = sorted(passing, key=lambda i: -float(asset_vector(s, i) @ q))[:recall]
        unfiltered = [
            h.asset_id
            for h in svc.search(SearchRequest(similar_to=query, limit=recall), session=s).hits
        ]
        assert len(set(unfiltered) & set(passing)) < recall  # recall-then-filter falls short
        page = svc.search(SearchRequest(similar_to=query, all=[tag], limit=recall), session=s)
        assert [h.asset_id for h in page.hits] == exact
        concept = svc.search(SearchRequest(text="navy", all=[tag], limit=recall), session=s)
        assert len(concept.hits) == recall and {h.asset_id for h in concept.hits} <= set(passing)


def test_unfiltered_similar_search_on_ivfpq_is_reordered_exactly(archive, monkeypatch) -> None:
    """IVF-PQ codes order the nearest neighbours coarsely; the service's similar ranking
    re-scores what the index recalled from the stored c (here read from the array the index
    was built from, as the database would return it), so its top 10 is the exact top 10 and
    its scores are exact inner products."""
    from contextlib import nullcontext

    from indexer.search import rankings

    index, xb = archive

    class Stub:  # the parts of Archive that similar_ranking uses
        def vector_index(self) -> VectorIndex:
            return index

        def timer(self, _: str):  # noqa: ANN202
            return nullcontext()

        def model_id(self) -> str:
            return "m"

    monkeypatch.setattr(filtered, "database_reader", lambda *_: lambda ids: (ids, xb[ids]))
    monkeypatch.setattr(rankings, "RECALL", 200)
    query = data(1, seed=21)[0]
    truth = np.argsort(-(xb @ query), kind="stable")[:10]
    coarse = rankings.similar_ranking(Stub(), query, "q")  # no session: the codes' order
    exact = rankings.similar_ranking(Stub(), query, "q", session=object())
    assert coarse.ids[:10].tolist() != truth.tolist()  # PQ alone misorders them
    assert exact.ids[:10].tolist() == truth.tolist()
    assert np.allclose(exact.scores[:10], xb[truth] @ query, atol=1e-5)
