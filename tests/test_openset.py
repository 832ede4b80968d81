"""Retroactive open-set scoring: fast path == plain path == full model == upstream outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ram_pp.factory import load_model, random_model
from ram_pp.labels import LabelBank
from ram_pp.openset import OpenSetScorer, concept_vectors

GOLDEN = Path(__file__).parent / "fixtures" / "golden_tiny"


@pytest.fixture(scope="module")
def golden():
    torch.manual_seed(0)
    model = load_model(GOLDEN / "checkpoint.pth").model
    pixels = torch.from_numpy(np.load(GOLDEN / "pixels.npy"))
    with torch.no_grad():
        embeds = model.encode_image(pixels)
    return model, pixels, embeds


def _ragged_bank(counts: list[int], seed: int) -> LabelBank:
    gen = torch.Generator().manual_seed(seed)
    return LabelBank.from_ragged(
        [F.normalize(torch.randn(n, 512, generator=gen), dim=-1) for n in counts]
    )


def test_golden_openset_bank_matches_upstream(golden):
    """Upstream's own logits for the 7-concept bank: fast, plain and float16-E paths."""
    model, _, embeds = golden
    bank = LabelBank.from_flat(torch.from_numpy(np.load(GOLDEN / "openset_embeddings.npy")), 51)
    expected = torch.from_numpy(np.load(GOLDEN / "openset_logits_batch.npy"))
    scorer = OpenSetScorer(model)
    torch.testing.assert_close(scorer.logits(embeds, bank), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(scorer.logits(embeds, bank, "plain"), expected, atol=1e-5, rtol=0)
    half = scorer.logits(embeds.half().numpy(), bank)  # stored format: float16 numpy
    torch.testing.assert_close(half, expected, atol=2e-3, rtol=0)


def test_golden_builtin_tags_match_upstream(golden):
    model, _, embeds = golden
    expected = torch.from_numpy(np.load(GOLDEN / "logits_batch.npy"))
    got = OpenSetScorer(model).logits(embeds, model.label_bank)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_ragged_concepts_equal_full_forward(golden):
    """Random concepts with 1..51 descriptions: fast == plain == model(pixels, bank)."""
    model, pixels, embeds = golden
    bank = _ragged_bank([1, 4, 51, 9, 2, 17], seed=1)
    assert bank.mask is not None
    with torch.no_grad():
        forward = model(pixels, bank)
    scorer = OpenSetScorer(model)
    fast = scorer.logits(embeds, bank)
    torch.testing.assert_close(fast, forward, atol=1e-5, rtol=0)
    torch.testing.assert_close(scorer.logits(embeds, bank, "plain"), forward, atol=1e-5, rtol=0)
    torch.testing.assert_close(scorer.logits(embeds.half(), bank), forward, atol=2e-3, rtol=0)
    # Padding must not leak: each concept scored alone (no mask at all) gives the same column.
    for k in range(bank.num_tags):
        n = int(bank.mask[k].sum())
        alone = LabelBank(bank.embeddings[k : k + 1, :n])
        torch.testing.assert_close(
            scorer.logits(embeds, alone)[:, 0], fast[:, k], atol=1e-5, rtol=0
        )


def test_chunking_over_assets_and_concepts_is_exact():
    """Many assets and concepts, split into small chunks both ways, equal the plain path."""
    model = random_model("test_micro", seed=3).model
    gen = torch.Generator().manual_seed(4)
    embeds = torch.randn(37, 17, 512, generator=gen)
    bank = _ragged_bank([3, 1, 5, 2, 8, 1, 4], seed=5)
    plain = OpenSetScorer(model, asset_chunk=64).logits(embeds, bank, "plain")
    tiny = OpenSetScorer(model, asset_chunk=5, work_budget=5 * 4 * 512 * 2)  # 2 concepts a step
    assert tiny._concept_chunk(5, bank.num_tags) == 2
    torch.testing.assert_close(tiny.logits(embeds, bank), plain, atol=1e-5, rtol=0)
    streamed = list(
        tiny.stream([(np.arange(20), embeds[:20]), (np.arange(20, 37), embeds[20:])], bank)
    )
    assert [len(ids) for ids, _ in streamed] == [20, 17]
    torch.testing.assert_close(torch.cat([s for _, s in streamed]), plain, atol=1e-5, rtol=0)


def test_concept_vectors_ignore_padding():
    rows = [F.normalize(torch.randn(n, 512), dim=-1) for n in (1, 3)]
    vecs = concept_vectors(LabelBank.from_ragged(rows))
    torch.testing.assert_close(vecs[0], rows[0][0])
    torch.testing.assert_close(vecs[1], F.normalize(rows[1].mean(0), dim=0))
    torch.testing.assert_close(vecs.norm(dim=-1), torch.ones(2))


def test_bad_inputs_are_rejected(golden):
    model, _, embeds = golden
    scorer = OpenSetScorer(model)
    bank = _ragged_bank([2], seed=0)
    with pytest.raises(ValueError, match=r"\(N, T, 512\)"):
        scorer.logits(embeds[0], bank)
    with pytest.raises(ValueError, match="384-d"):
        scorer.logits(embeds, LabelBank(torch.randn(1, 2, 384)))
    with pytest.raises(ValueError, match="method"):
        scorer.logits(embeds, bank, method="slow")
    with pytest.raises(TypeError):
        scorer.logits(embeds.to(torch.int32), bank)
