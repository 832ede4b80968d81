"""Resident-E exhaustive search (indexer/device_scan.py) against the CPU searcher, on CPU here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from indexer.device_scan import DeviceScanner, ResidentTokens
from indexer.errors import RamdexError
from indexer.retroactive import CalibrationRule, RetroactiveSearcher
from indexer.token_store import TokenStore, bytes_per_asset, quantize_int8
from ram_pp.factory import random_model
from ram_pp.labels import LabelBank
from ram_pp.openset import OpenSetScorer

N, T, C = 240, 9, 512
RULE = CalibrationRule(sample=64, min_background=16)
CUDA = torch.cuda.is_available()


def _embeds(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    e = rng.normal(size=(n, T, C)).astype(np.float32)
    e[:, 0] = e[:, 1:].mean(1) * 3  # token 0 is the mean token, as in RAM++
    return e


@pytest.fixture(scope="module")
def model():
    m = random_model("test_micro", seed=7).model
    with torch.no_grad():
        m.fc.bias -= 3.0
    return m


@pytest.fixture(scope="module")
def bank() -> LabelBank:
    gen = torch.Generator().manual_seed(1)
    return LabelBank.from_ragged(
        [F.normalize(torch.randn(n, C, generator=gen), dim=-1) for n in (1, 6, 3)]
    )


def _store(path, fmt: str, n: int = N, seed: int = 0) -> TokenStore:
    shard = 70 * bytes_per_asset(fmt, T, C)  # 70 records per shard
    store = TokenStore(path, tokens=T, dim=C, fmt=fmt, shard_bytes=shard)
    store.add(np.arange(n, dtype=np.int64) * 10 + 5, _embeds(n, seed))  # sparse ids
    return store


def _cpu_results(model, store, bank, top_k=25):
    searcher = RetroactiveSearcher(OpenSetScorer(model), store, chunk=64, calibration=RULE)
    return searcher.search(bank, top_k=top_k, mode="exhaustive")


def _device_results(model, store, bank, top_k=25, block=100, dtype=torch.float32):
    resident = ResidentTokens.from_store(store, "cpu", block_assets=block)
    scorer = OpenSetScorer(model, device="cpu", dtype=dtype, asset_chunk=48)
    return DeviceScanner(scorer, resident, store, calibration=RULE).search(bank, top_k=top_k)


def _assert_same(got, want, atol=1e-5):
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.mode == w.mode == "exhaustive" and g.scored == w.scored
        np.testing.assert_array_equal(g.ids, w.ids)
        np.testing.assert_allclose(g.logits, w.logits, atol=atol, rtol=0)
        np.testing.assert_allclose(g.scores, w.scores, atol=1e-6)
        assert g.calibration.rule == w.calibration.rule
        assert g.calibration.background == w.calibration.background
        assert abs(g.calibration.threshold_logit - w.calibration.threshold_logit) < 1e-5


@pytest.mark.parametrize("fmt", ["float16", "int8"])
def test_agrees_with_the_cpu_exhaustive_search(tmp_path, model, bank, fmt):
    store = _store(tmp_path, fmt)
    assert store.stats()["shards"] >= 3  # blocks (100) and shards (70) do not line up
    _assert_same(_device_results(model, store, bank), _cpu_results(model, store, bank))


def test_resident_records_decode_as_the_store(tmp_path):
    for fmt in ("float16", "int8"):
        store = _store(tmp_path / fmt, fmt)
        resident = ResidentTokens.from_store(store, "cpu", block_assets=64)
        assert len(resident) == N and resident.rows == N
        assert resident.bytes_per_asset == (T * C + 4 * T if fmt == "int8" else 2 * T * C)
        ids = np.array([235, 5, 1195, 605], np.int64)
        np.testing.assert_array_equal(resident.get(ids).numpy(), store.get(ids))
        with pytest.raises(KeyError):
            resident.get(np.array([6]))


def test_published_figure_bytes_per_asset():
    resident = ResidentTokens("cpu", "int8", 145, 512)
    assert resident.bytes_per_asset == 74_820  # 1M assets: 74.8 GB, one H200
    assert ResidentTokens("cpu", "float16", 145, 512).bytes_per_asset == 148_480


def test_follows_adds_deletes_replacements_and_compaction(tmp_path, model, bank):
    store = _store(tmp_path, "int8")
    resident = ResidentTokens.from_store(store, "cpu", block_assets=100)
    scanner = DeviceScanner(OpenSetScorer(model, asset_chunk=48), resident, store, calibration=RULE)
    writer = TokenStore(tmp_path)  # another writer commits; the scanner's store sees it on refresh
    writer.add(np.arange(40, dtype=np.int64) * 10 + 7, _embeds(40, 1))  # 40 new assets
    writer.delete([5, 15, 25])
    writer.add([35], _embeds(1, 2))  # a replaced asset: new record, old one tombstoned
    got = scanner.search(bank, top_k=30)
    _assert_same(got, _cpu_results(model, store, bank, top_k=30))
    assert len(resident) == N + 40 - 3 and got[0].scored == N + 40 - 3
    assert resident.sync(store) == {"added": 0, "dropped": 0, "reloaded": 0}  # nothing new

    writer.delete(np.arange(0, 200, dtype=np.int64) * 10 + 5)
    writer.compact()  # records move to new shards: the copy is mostly dead, reloaded
    stats = resident.sync(store)
    assert stats["reloaded"] == 1 and len(resident) == len(store) == resident.rows
    _assert_same(scanner.search(bank, top_k=30), _cpu_results(model, store, bank, top_k=30))


def test_bf16_scan_ranks_as_float32(tmp_path, model, bank):
    store = _store(tmp_path, "int8")
    exact = _device_results(model, store, bank, top_k=50)
    low = _device_results(model, store, bank, top_k=50, dtype=torch.bfloat16)
    for e, b in zip(exact, low, strict=True):
        overlap = len(np.intersect1d(e.ids, b.ids)) / len(e.ids)
        truth = dict(zip(e.ids.tolist(), e.logits.tolist(), strict=True))
        error = max(abs(truth[i] - v) for i, v in zip(b.ids, b.logits, strict=True) if i in truth)
        print(f"bf16 vs float32, top 50: overlap {overlap:.2f}, max logit error {error:.4f}")
        assert overlap >= 0.9 and error < 0.1


def test_tensors_without_a_store(tmp_path, model, bank):
    embeds = _embeds(N, 0)
    q, scale = quantize_int8(embeds)
    ids = np.arange(N, dtype=np.int64) * 10 + 5
    resident = ResidentTokens.from_tensors(ids, torch.from_numpy(q), torch.from_numpy(scale))
    scanner = DeviceScanner(OpenSetScorer(model, asset_chunk=64), resident, calibration=RULE)
    _assert_same(
        scanner.search(bank, top_k=25), _cpu_results(model, _store(tmp_path, "int8"), bank)
    )
    with pytest.raises(ValueError, match="scales"):
        ResidentTokens.from_tensors(ids, torch.from_numpy(q))


def test_top_k_none_returns_every_asset(tmp_path, model, bank):
    store = _store(tmp_path, "float16")
    results = _device_results(model, store, bank, top_k=None)
    assert all(len(r.ids) == N and (np.diff(r.logits) <= 0).all() for r in results)


@pytest.mark.skipif(CUDA, reason="checks the guard of machines without CUDA")
def test_cuda_refused_without_a_gpu():
    with pytest.raises(RamdexError, match="no CUDA GPU"):
        ResidentTokens("cuda", "int8", T, C)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_bf16_matches_cpu(tmp_path, model, bank):  # pragma: no cover - GPU machines
    store = _store(tmp_path, "int8")
    resident = ResidentTokens.from_store(store, "cuda", block_assets=100)
    scorer = OpenSetScorer(random_model("test_micro", seed=7).model, "cuda", torch.bfloat16)
    with torch.no_grad():
        scorer.model.fc.bias -= 3.0
    got = DeviceScanner(scorer, resident, store, calibration=RULE).search(bank, top_k=50)
    for g, w in zip(got, _cpu_results(model, store, bank, top_k=50), strict=True):
        assert len(np.intersect1d(g.ids, w.ids)) / len(w.ids) >= 0.9
