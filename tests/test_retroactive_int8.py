"""int8 token stores read as stored (q, scale) and dequantized straight into the scorer's buffer:
the same logits and rankings as dequantizing to float32 first (the path it replaces)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from indexer.retroactive import RetroactiveSearcher
from indexer.token_store import TokenStore, TokenStoreError, dequantize_int8
from ram_pp.factory import random_model
from ram_pp.labels import LabelBank
from ram_pp.openset import Int8Embeds, OpenSetScorer

N, T, C = 150, 9, 512


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    model = random_model("test_micro", seed=7).model
    rng = np.random.default_rng(3)
    embeds = rng.normal(size=(N, T, C)).astype(np.float32)
    ids = np.arange(N, dtype=np.int64) * 7 + 1
    store = TokenStore(
        tmp_path_factory.mktemp("i8"), tokens=T, dim=C, fmt="int8", shard_bytes=40 * T * C
    )
    store.add(ids, embeds)
    gen = torch.Generator().manual_seed(2)
    bank = LabelBank.from_ragged(
        [F.normalize(torch.randn(n, C, generator=gen), dim=-1) for n in (2, 5)]
    )
    return model, store, ids, bank


def test_get_int8_is_the_stored_records(world):
    _, store, ids, _ = world
    pick = ids[[5, 140, 3, 77, 78, 79]]  # several shards, out of order, a run
    q, scale = store.get_int8(pick)
    assert q.dtype == np.int8 and q.shape == (6, T, C) and scale.shape == (6, T)
    np.testing.assert_array_equal(dequantize_int8(q, scale), store.get(pick))
    got = [(i, dequantize_int8(q, s)) for i, q, s in store.iter_int8_chunks(64)]
    assert np.concatenate([i for i, _ in got]).tolist() == ids.tolist()
    np.testing.assert_array_equal(np.concatenate([e for _, e in got]), store.get(ids))
    with pytest.raises(KeyError):
        store.get_int8([2])


def test_get_int8_needs_an_int8_store(tmp_path):
    store = TokenStore(tmp_path / "f", tokens=T, dim=C)
    with pytest.raises(TokenStoreError):
        store.get_int8([1])
    with pytest.raises(TokenStoreError):
        next(store.iter_int8_chunks())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_embeds_score_as_dequantized_float32(world, dtype):
    """Bit for bit: the block-wise dequantization into the compute buffer gives the values that
    a float32 copy converted to the compute dtype gives."""
    model, store, ids, bank = world
    q, scale = store.get_int8(ids)
    wide = dequantize_int8(q, scale)
    scorer = OpenSetScorer(model, dtype=dtype, asset_chunk=40)
    direct = scorer.logits(Int8Embeds.from_numpy(q, scale), bank)
    torch.testing.assert_close(direct, scorer.logits(wide, bank), atol=0, rtol=0)
    plain = scorer.logits(Int8Embeds.from_numpy(q, scale), bank, method="plain")
    torch.testing.assert_close(plain, scorer.logits(wide, bank, method="plain"), atol=0, rtol=0)
    hot = scorer.to_compute(Int8Embeds.from_numpy(q, scale))
    assert hot.dtype == dtype
    torch.testing.assert_close(hot, torch.from_numpy(wide).to(dtype), atol=0, rtol=0)


def test_int8_embeds_are_checked(world):
    model, _, _, bank = world
    scorer = OpenSetScorer(model)
    bad = Int8Embeds(torch.zeros(2, T, C, dtype=torch.int8), torch.ones(2, T + 1))
    with pytest.raises(TypeError):
        scorer.logits(bad, bank)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_searcher_on_int8_store_reads_records_not_float32(world, dtype, monkeypatch):
    """Exhaustive results over an int8 store equal the brute-force scoring of its dequantized E,
    and the store is never asked for a float32 copy."""
    model, store, ids, bank = world
    ref = OpenSetScorer(model).logits(store.get(ids), bank).numpy()
    monkeypatch.setattr(store, "get", lambda *a, **k: pytest.fail("float32 read"))
    searcher = RetroactiveSearcher(OpenSetScorer(model, dtype=dtype), store, chunk=50)
    results = searcher.search(bank, top_k=20, mode="exhaustive", calibrate=False)
    for k, res in enumerate(results):
        order = np.argsort(-ref[:, k], kind="stable")[:20]
        np.testing.assert_array_equal(res.ids, ids[order])
        np.testing.assert_allclose(res.logits, ref[order, k], atol=1e-5)
