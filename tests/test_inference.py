"""Tagging engine speed paths: fused window attention, bf16, compile, channels-last.

Each fast path must give the stock (upstream-arithmetic) results: float32 within the golden
tolerance, bfloat16 the same tag decisions.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ram_pp.config import RamPlusConfig, get_config
from ram_pp.factory import random_model
from ram_pp.inference import TaggingEngine

ATOL = 1e-4  # the golden tolerance


@pytest.fixture(scope="module")
def tiny():
    return random_model("test_tiny_golden")


def _one_block_micro() -> RamPlusConfig:
    """``test_micro`` cut to one Swin block and one head layer: every kind of layer is still
    there (patch embedding, a cached-bias window attention, cross-attention head), but with
    about half the graphs, and inductor's cold compile (the C++ build of each kernel) is what
    this test's time goes to."""
    cfg = get_config("test_micro")
    return dataclasses.replace(
        cfg,
        name="test_micro_one_block",
        vision=dataclasses.replace(cfg.vision, depths=(1,), num_heads=(1,)),
        head=dataclasses.replace(cfg.head, num_layers=1),
    )


def _pixels(loaded, n: int = 2) -> torch.Tensor:
    size = loaded.config.vision.image_size
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(3))


def test_fused_window_attention_equals_timm_reference(tiny):
    encoder = tiny.model.visual_encoder
    assert any(any(b.shift_size) for s in encoder.layers for b in s.blocks)  # masks exercised
    pixels = _pixels(tiny)
    with torch.inference_mode():
        fast = encoder(pixels)
        reference = encoder.forward_reference(pixels)
    torch.testing.assert_close(fast, reference, atol=ATOL, rtol=0)


def test_attention_bias_cache_follows_loaded_weights(tiny):
    """A bias table changed in place (a state dict loaded later) is not served from the cache."""
    loaded = random_model("test_tiny_golden")
    encoder = loaded.model.visual_encoder
    pixels = _pixels(loaded)
    with torch.inference_mode():
        encoder(pixels)  # fills the cache
    with torch.no_grad():
        for stage in encoder.layers:
            for block in stage.blocks:
                block.attn.relative_position_bias_table.mul_(3.0)
    with torch.inference_mode():
        torch.testing.assert_close(
            encoder(pixels), encoder.forward_reference(pixels), atol=ATOL, rtol=0
        )


def test_training_uses_the_reference_path_with_gradients():
    loaded = random_model("test_tiny_golden")
    encoder = loaded.model.visual_encoder.train()
    encoder(_pixels(loaded)).sum().backward()
    table = encoder.layers[0].blocks[0].attn.relative_position_bias_table
    assert table.grad is not None and not encoder._attn_bias


def test_bf16_engine_keeps_fp32_decisions(tiny):
    pixels = _pixels(tiny, 3)
    exact = TaggingEngine(tiny, device="cpu", dtype="float32").run(pixels).logits
    low = TaggingEngine(random_model("test_tiny_golden"), device="cpu", dtype="bfloat16")
    logits = low.run(pixels).logits
    # decisions at each tag's median logit: every tag is at its boundary
    cut = exact.median(dim=0).values
    agree = ((exact > cut) == (logits > cut)).float().mean().item()
    assert agree >= 0.95


def test_compiled_forward_matches_plain_and_compiles_once():
    """``compile=True`` (the GPU workers' path) on a one-block config: same logits, and the
    second batch reuses the graph (the attention-bias cache is filled before compiling)."""
    import torch._dynamo

    cfg = _one_block_micro()
    loaded = random_model(cfg)
    pixels = _pixels(loaded)
    plain = TaggingEngine(random_model(cfg), device="cpu").run(pixels)
    torch._dynamo.reset()
    engine = TaggingEngine(loaded, device="cpu", compile=True)
    assert not engine.pin_memory  # no CUDA here: host memory is never pinned
    first = engine.run(pixels)
    frames_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    engine.run(pixels)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == frames_before
    torch.testing.assert_close(first.logits, plain.logits, atol=ATOL, rtol=0)


def test_channels_last_gives_the_same_logits(tiny):
    pixels = _pixels(tiny)
    plain = TaggingEngine(tiny, device="cpu").run(pixels)
    engine = TaggingEngine(random_model("test_tiny_golden"), device="cpu", channels_last=True)
    assert engine.model.visual_encoder.patch_embed.proj.weight.is_contiguous(
        memory_format=torch.channels_last
    )
    torch.testing.assert_close(engine.run(pixels).logits, plain.logits, atol=ATOL, rtol=0)
