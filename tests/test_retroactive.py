"""Two-stage retroactive concept search over a real token store and a real FAISS index."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from indexer.retroactive import (
    CalibrationRule,
    RetroactiveSearcher,
    calibrate_logits,
    recall_at_k,
)
from indexer.settings import Settings
from indexer.token_store import TokenStore
from ram_pp.factory import random_model
from ram_pp.labels import LabelBank
from ram_pp.openset import OpenSetScorer

N, T, C = 240, 9, 512


class FlatIP:
    """Stand-in for indexer.faiss_index: exact inner product over ids with FAISS itself."""

    def __init__(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
        self.index.add_with_ids(vectors.astype(np.float32), ids.astype(np.int64))
        self.calls: list[int] = []

    def search(self, query: np.ndarray, k: int):
        self.calls.append(k)
        return self.index.search(query, k)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    torch.manual_seed(0)
    model = random_model("test_micro", seed=7).model
    with torch.no_grad():
        model.fc.bias -= 3.0  # open-set logits run low (below probability 0.5)
    rng = np.random.default_rng(0)
    embeds = rng.normal(size=(N, T, C)).astype(np.float32)
    embeds[:, 0] = embeds[:, 1:].mean(1) * 3  # token 0 is the mean token, as in RAM++
    ids = np.arange(N, dtype=np.int64) * 10 + 5  # sparse ids, not positions
    store = TokenStore(tmp_path_factory.mktemp("tok"), tokens=T, dim=C, shard_bytes=50 * T * C * 2)
    store.add(ids, embeds)
    stored = store.get(ids)  # what scoring sees: float16-rounded E
    c = stored[:, 0] / np.linalg.norm(stored[:, 0], axis=1, keepdims=True)
    gen = torch.Generator().manual_seed(1)
    bank = LabelBank.from_ragged(
        [F.normalize(torch.randn(n, C, generator=gen), dim=-1) for n in (1, 6, 3)]
    )
    return model, store, ids, stored, c, bank


def _searcher(world, **kw):
    model, store, ids, _, c, _ = world
    return RetroactiveSearcher(OpenSetScorer(model), store, FlatIP(c, ids), chunk=64, **kw)


def test_exhaustive_equals_brute_force_plain_scoring(world):
    model, _, ids, stored, _, bank = world
    with torch.no_grad():
        truth = model.logits_from_embeddings(torch.from_numpy(stored), bank).numpy()
    results = _searcher(world).search(bank, names=["a", "b", "c"], top_k=25, mode="exhaustive")
    for k, res in enumerate(results):
        order = np.argsort(-truth[:, k], kind="stable")[:25]
        assert res.name == "abc"[k] and res.mode == "exhaustive" and res.scored == N
        np.testing.assert_array_equal(res.ids, ids[order])
        np.testing.assert_allclose(res.logits, truth[order, k], atol=1e-5)
        np.testing.assert_allclose(res.scores, 1 / (1 + np.exp(-truth[order, k])), atol=1e-6)
        assert (np.diff(res.logits) <= 0).all()


def test_two_stage_scores_the_faiss_shortlist_exactly(world):
    model, _, ids, stored, c, bank = world
    searcher = _searcher(world)
    res = searcher.search(bank, top_k=None, shortlist=40)
    rows = bank.embeddings.numpy()
    for k, r in enumerate(res):
        real = rows[k][: (bank.mask[k].sum() if bank.mask is not None else rows.shape[1])]
        t = real.mean(0) / np.linalg.norm(real.mean(0))
        expected = set(ids[np.argsort(-(c @ t))[:40]])  # independent stage-1 ranking
        assert set(r.ids) == expected and r.scored == 40
        pos = np.searchsorted(ids, r.ids)
        with torch.no_grad():
            exact = model.logits_from_embeddings(torch.from_numpy(stored[pos]), bank)[:, k]
        np.testing.assert_allclose(r.logits, exact.numpy(), atol=1e-5)
        assert (np.diff(r.logits) <= 0).all()
    assert searcher.candidates.calls == [40, 40, 40]
    # A shortlist as large as the archive reproduces exhaustive search.
    full = searcher.search(bank, top_k=10, shortlist=N)
    exh = searcher.search(bank, top_k=10, mode="exhaustive")
    for a, b in zip(full, exh, strict=True):
        np.testing.assert_array_equal(a.ids, b.ids)
        assert recall_at_k(a.ids, b.ids, 10) == 1.0


def test_deleted_assets_are_never_returned(world, tmp_path):
    model, _, ids, stored, c, bank = world
    store = TokenStore(tmp_path / "tok", tokens=T, dim=C)
    store.add(ids, stored)
    searcher = RetroactiveSearcher(OpenSetScorer(model), store, FlatIP(c, ids))
    top = searcher.search(bank, top_k=5, shortlist=N)[0].ids
    store.delete(top[:2])  # still in FAISS, gone from the token store
    again = searcher.search(bank, top_k=5, shortlist=N)
    assert not set(top[:2]) & set(again[0].ids)
    assert again[0].scored == N - 2
    assert set(top[:2]).isdisjoint(searcher.search(bank, top_k=None, mode="exhaustive")[0].ids)


def test_calibration_rule(world):
    model, store, _, _, _, bank = world
    rule = CalibrationRule(sample=100, z=2.0, seed=3)
    searcher = _searcher(world, calibration=rule)
    res = searcher.search(bank, top_k=None, mode="exhaustive")
    sample = store.sample_ids(100, seed=3)
    with torch.no_grad():
        bg = model.logits_from_embeddings(torch.from_numpy(store.get(sample)), bank).numpy()
    for k, r in enumerate(res):
        med = np.median(bg[:, k])
        cut = min(med + 2.0 * 1.4826 * np.median(np.abs(bg[:, k] - med)), 0.0)
        assert r.calibration.background == 100
        assert r.calibration.threshold_logit == pytest.approx(cut, abs=1e-5)
        assert r.threshold == pytest.approx(1 / (1 + np.exp(-cut)), abs=1e-6)
        np.testing.assert_array_equal(r.hits, r.logits > cut)
    assert len({round(r.threshold, 6) for r in res}) > 1  # per concept, not one cut-off
    # Pure rule checks: a stand-out cut below 0.5, the 0.5 cap, and the small-archive fallback.
    low = calibrate_logits(np.linspace(-6, -4, 101), CalibrationRule(z=3))
    assert low.rule == "robust_outlier" and low.threshold_logit == pytest.approx(
        -5 + 3 * 1.4826 * 0.5, abs=1e-9
    )
    high = calibrate_logits(np.linspace(1, 3, 101), CalibrationRule())
    assert high.rule == "fallback" and high.threshold == 0.5
    few = calibrate_logits(np.zeros(5), CalibrationRule(min_background=32))
    assert few.rule == "fallback" and few.threshold == 0.5 and few.background == 5


def test_bad_calls_and_settings(world, tmp_path):
    model, store, _, _, _, bank = world
    scorer = OpenSetScorer(model)
    searcher = RetroactiveSearcher(scorer, store)  # no candidate source
    with pytest.raises(ValueError, match="candidate source"):
        searcher.search(bank)
    with pytest.raises(ValueError, match="mode"):
        searcher.search(bank, mode="fuzzy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="top_k"):
        searcher.search(bank, top_k=0)
    with pytest.raises(ValueError, match="names"):
        searcher.search(bank, names=["x"])
    with pytest.raises(ValueError, match="256-d"):
        RetroactiveSearcher(scorer, TokenStore(tmp_path / "s", tokens=T, dim=256))
    s = Settings(index={"shortlist": 77})
    assert RetroactiveSearcher.from_settings(scorer, store, settings=s).shortlist == 77
    empty = RetroactiveSearcher(scorer, TokenStore(tmp_path / "e", tokens=T, dim=C))
    res = empty.search(bank, mode="exhaustive")
    assert [len(r.ids) for r in res] == [0, 0, 0] and res[0].threshold == 0.5


def test_bfloat16_searcher_returns_exact_head_and_reads_background_once(world, monkeypatch):
    """bf16 scoring: the first exact_top results carry float32 logits in float32's order; the
    calibration sample is read from the store once and kept in the compute dtype."""
    model, store, ids, stored, c, bank = world
    ref = RetroactiveSearcher(OpenSetScorer(model), store, FlatIP(c, ids), chunk=64)
    fast = RetroactiveSearcher(
        OpenSetScorer(model, dtype="bfloat16"), store, FlatIP(c, ids), chunk=64, exact_top=10
    )
    for mode in ("two_stage", "exhaustive"):
        a = ref.search(bank, top_k=10, mode=mode, shortlist=120, calibrate=False)
        b = fast.search(bank, top_k=10, mode=mode, shortlist=120, calibrate=False)
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x.ids, y.ids)
            np.testing.assert_allclose(x.logits, y.logits, atol=1e-5)
    reads = []
    real_get = store.get
    monkeypatch.setattr(store, "get", lambda i, **kw: reads.append(len(i)) or real_get(i, **kw))
    first = fast.calibrate(bank.select(slice(0, 1)))
    second = fast.calibrate(bank.select(slice(1, 3)))
    assert reads == [min(512, N)]  # the background, once
    assert fast.background()[1].dtype == torch.bfloat16
    exact = ref.calibrate(bank)
    for got, want in zip(first + second, exact, strict=True):
        assert got.threshold_logit == pytest.approx(want.threshold_logit, abs=0.1)
