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


def test_bfloat16_mode_agrees_with_float32_and_leaves_the_model_alone(golden):
    """bf16 scoring: close to float32, same ranking, plain path still the float32 reference."""
    model, _, embeds = golden
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bank = _ragged_bank([1, 4, 51, 9, 2, 17], seed=1)
    ref = OpenSetScorer(model).logits(embeds, bank)
    fast = OpenSetScorer(model, dtype="bfloat16")
    assert fast.dtype == torch.bfloat16
    got = fast.logits(embeds.half().numpy(), bank)  # the stored format, converted once
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, atol=0.1, rtol=0.02)
    torch.testing.assert_close(fast.logits(embeds, bank, "plain"), ref, atol=1e-5, rtol=0)
    for k, v in model.state_dict().items():  # never converted or moved in place
        assert v.dtype == before[k].dtype and torch.equal(v, before[k]), k
    hot = fast.to_compute(embeds)
    assert hot.dtype == torch.bfloat16
    torch.testing.assert_close(fast.logits(hot, bank), fast.logits(embeds, bank))


def test_bfloat16_ranking_overlap_on_many_assets():
    """Top-20 of 400 random assets: bf16 keeps >= 90% of float32's (the benchmark reports it
    for the published head size)."""
    model = random_model("test_micro", seed=3).model
    gen = torch.Generator().manual_seed(9)
    embeds = torch.randn(400, 17, 512, generator=gen)
    bank = _ragged_bank([3, 7], seed=2)
    ref = OpenSetScorer(model).logits(embeds, bank)
    got = OpenSetScorer(model, dtype=torch.bfloat16, asset_chunk=64).logits(embeds, bank)
    for k in range(bank.num_tags):
        top_ref = set(torch.topk(ref[:, k], 20).indices.tolist())
        top_got = set(torch.topk(got[:, k], 20).indices.tolist())
        assert len(top_ref & top_got) >= 18
    assert (got - ref).abs().max() < 0.1 * ref.std()


def test_score_dtype_setting_resolution(monkeypatch):
    import ram_pp.openset as openset

    assert openset.resolve_score_dtype("float32") == torch.float32
    assert openset.resolve_score_dtype("bfloat16") == torch.bfloat16
    assert openset.resolve_score_dtype("auto", "cuda") == torch.bfloat16
    monkeypatch.setattr(openset, "cpu_has_native_bf16", lambda: True)
    assert openset.resolve_score_dtype("auto") == torch.bfloat16
    monkeypatch.setattr(openset, "cpu_has_native_bf16", lambda: False)
    assert openset.resolve_score_dtype("auto") == torch.float32
    with pytest.raises(ValueError, match="score dtype"):
        openset.resolve_score_dtype("int4")


def _biased_head(seed: int, layers: int = 2) -> torch.nn.Module:
    """A small head (hidden 64, 4 heads, FFN 128) whose every bias and LayerNorm parameter is
    random and large: a fast path that mishandled the key bias (it must cancel in the softmax),
    the value bias (added after the weighted sum), the 1/sqrt(d) scale or a head split would be
    off by far more than the tolerances below."""
    from ram_pp.config import HeadConfig, LabelConfig, RamPlusConfig, get_config
    from ram_pp.model import RamPlus

    torch.manual_seed(seed)
    cfg = RamPlusConfig(
        name="biased",
        vision=get_config("test_micro").vision,
        head=HeadConfig(hidden_size=64, num_layers=layers, num_heads=4, intermediate_size=128),
        labels=LabelConfig(1, 1, "ram"),
    )
    model = RamPlus(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(("tagging_head", "wordvec_proj", "fc")):
                if name.endswith("bias"):
                    p.normal_(0, 2.0 if ".key." in name else 0.5)
                elif "LayerNorm.weight" in name:
                    p.uniform_(0.5, 1.5)
                else:  # sharper attention than the default init, so the softmax matters
                    p.mul_(3.0)
    return model


@pytest.mark.parametrize("attention", ["bmm", "fused"])
def test_fast_path_with_biases_equals_model_forward(attention):
    """Both attention kernels of the fast path == the model's own head (float32), with random
    biases everywhere, several ragged concepts, and chunks that split assets and concepts."""
    model = _biased_head(seed=11)
    gen = torch.Generator().manual_seed(12)
    embeds = torch.randn(29, 33, 512, generator=gen)
    bank = _ragged_bank([2, 5, 1, 7, 3], seed=13)
    with torch.no_grad():
        want = model.logits_from_embeddings(embeds, bank)
    assert want.std() > 0.5  # the check below means something
    scorer = OpenSetScorer(model, asset_chunk=8, work_budget=8 * 4 * 512 * 2, attention=attention)
    assert scorer.attention == attention
    torch.testing.assert_close(scorer.logits(embeds, bank), want, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(scorer.logits(embeds, bank, "plain"), want, atol=1e-4, rtol=1e-5)


def test_key_bias_is_what_cancels():
    """Changing the key bias leaves the logits unchanged (it cancels in the softmax) while the
    value bias does change them: the algebra the fast path relies on, checked on the model."""
    model = _biased_head(seed=21)
    embeds = torch.randn(6, 17, 512, generator=torch.Generator().manual_seed(22))
    bank = _ragged_bank([3, 4], seed=23)
    scorer = OpenSetScorer(model)
    before = scorer.logits(embeds, bank)
    sa = model.tagging_head.encoder.layer[0].crossattention.self
    with torch.no_grad():
        sa.key.bias.add_(5.0)
        with_key = model.logits_from_embeddings(embeds, bank)
        torch.testing.assert_close(with_key, before, atol=1e-4, rtol=1e-5)
        sa.value.bias.add_(1.0)
        with_value = model.logits_from_embeddings(embeds, bank)
    assert (with_value - before).abs().max() > 1e-2
    torch.testing.assert_close(
        OpenSetScorer(model).logits(embeds, bank), with_value, atol=1e-4, rtol=1e-5
    )


@pytest.mark.parametrize("attention", ["bmm", "fused"])
def test_bfloat16_fast_path_with_biases_tracks_float32(attention):
    """bf16 (either kernel) against the float32 reference on the biased head: top-30 of 300
    assets per concept mostly shared and the logit error small against the logit spread."""
    model = _biased_head(seed=31)
    gen = torch.Generator().manual_seed(32)
    embeds = torch.randn(300, 33, 512, generator=gen)
    bank = _ragged_bank([3, 6, 1], seed=33)
    ref = OpenSetScorer(model).logits(embeds, bank, "plain")
    got = OpenSetScorer(model, dtype="bfloat16", asset_chunk=64, attention=attention).logits(
        embeds.half().numpy(), bank
    )
    for k in range(bank.num_tags):
        top_ref = set(torch.topk(ref[:, k], 30).indices.tolist())
        top_got = set(torch.topk(got[:, k], 30).indices.tolist())
        assert len(top_ref & top_got) >= 26, k
    assert (got - ref).abs().max() < 0.1 * ref.std()


def test_attention_kernel_setting():
    model = _biased_head(seed=41, layers=1)
    assert OpenSetScorer(model).attention == "fused"  # float32 default
    assert OpenSetScorer(model, dtype="bfloat16").attention == "bmm"
    with pytest.raises(ValueError, match="attention"):
        OpenSetScorer(model, attention="flash")


def test_folded_attention_is_the_same_algebra():
    """The fast dtype's folded projections (W_k^T W_q per head, W_o W_v per head, biases
    carried through) computed in float64 give the model's own logits: the fold is exact, so
    bf16 only adds its rounding (the float32 path does not fold)."""
    model = _biased_head(seed=51)
    embeds = torch.randn(23, 33, 512, generator=torch.Generator().manual_seed(52))
    bank = _ragged_bank([2, 5, 1], seed=53)
    with torch.no_grad():
        want = model.logits_from_embeddings(embeds, bank)
    scorer = OpenSetScorer(model, dtype=torch.float64, asset_chunk=8)
    assert len(scorer.head.folded_layers) == len(scorer.head.layers)
    assert not OpenSetScorer(model).head.folded_layers
    torch.testing.assert_close(scorer.logits(embeds, bank), want, atol=1e-4, rtol=1e-5)
