"""The fast CLIP text path (packed tokens, shared prefixes' keys and values, last layer at the
pooled token) against the model's own padded forward pass: the same features in float32."""

from __future__ import annotations

import pytest
import torch

from ram_pp.concepts import TEMPLATE_PREFIXES, encode_concepts, make_concept
from ram_pp.text_encoder import (
    ClipTextEncoder,
    build_clip_size_text_encoder,
    build_random_clip_text_encoder,
    load_text_encoder,
)

NAMES = ["red kite", "x", "foggy harbour a1b2c3 17 0.123456", "Brutalist STAIRWELL", "3d"]
OTHER_TEXTS = [
    "",
    "a",
    "a photo of a",  # a registered prefix itself, then only the end token is left to run
    "a photo of a cat.",
    "completely unrelated words",
    "stairs " * 60,  # truncated to 77 tokens
    "a close-up photo of a " * 12,  # starts with a prefix and is truncated
]


def _texts() -> list[str]:
    return [d for n in NAMES for d in make_concept(n).descriptions] + OTHER_TEXTS


def _pair(folder) -> tuple[ClipTextEncoder, ClipTextEncoder]:
    fast = load_text_encoder(str(folder))
    assert isinstance(fast, ClipTextEncoder) and fast.runner is not None
    plain = ClipTextEncoder(fast.model, fast.tokenizer, "plain", fast=False)
    return fast, plain


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[ClipTextEncoder, ClipTextEncoder]:
    folder = build_random_clip_text_encoder(
        tmp_path_factory.mktemp("clip"), hidden_size=64, num_layers=3, num_heads=4
    )
    return _pair(folder)


@pytest.mark.parametrize("batch_size", [1, 7, 64, 500])
def test_fast_equals_plain_without_and_with_prefixes(tiny, batch_size) -> None:
    fast, plain = tiny
    texts = _texts()
    reference = plain.encode(texts, batch_size=64)
    fast.runner._prefixes.clear()  # noqa: SLF001 - start without any cached prefix
    fast.runner._lengths = []  # noqa: SLF001
    fast._shared.clear()  # noqa: SLF001
    torch.testing.assert_close(fast.encode(texts, batch_size), reference, atol=1e-5, rtol=0)
    assert fast.share_prefixes(TEMPLATE_PREFIXES) == len(TEMPLATE_PREFIXES)
    assert fast.share_prefixes(TEMPLATE_PREFIXES) == 0  # kept: nothing added twice
    torch.testing.assert_close(fast.encode(texts, batch_size), reference, atol=1e-5, rtol=0)


def test_cached_prefixes_are_what_the_texts_reuse(tiny) -> None:
    """Spoiling one cached prefix changes exactly the texts that start with it: the keys and
    values really come from the cache."""
    fast, plain = tiny
    fast.share_prefixes(TEMPLATE_PREFIXES)
    texts = ["a close-up photo of a red kite.", "a dark photo of a red kite."]
    before = fast.encode(texts)
    ids = fast.tokenizer(["a close-up photo of a"])["input_ids"][0][:-1]
    cache = fast.runner._prefixes  # noqa: SLF001
    saved = cache[tuple(ids)]
    try:
        cache[tuple(ids)] = saved * 3.0
        after = fast.encode(texts)
    finally:
        cache[tuple(ids)] = saved
    assert (after[0] - before[0]).abs().max() > 1e-3
    torch.testing.assert_close(after[1], before[1], atol=1e-6, rtol=0)
    torch.testing.assert_close(fast.encode(texts), plain.encode(texts), atol=1e-5, rtol=0)


def test_old_eos_rule_is_followed(tmp_path) -> None:
    """Configs saved before transformers fixed ``eos_token_id`` (2) pool at the largest id."""
    from transformers import CLIPTextModelWithProjection

    folder = build_random_clip_text_encoder(tmp_path / "clip", hidden_size=32, num_layers=2)
    model = CLIPTextModelWithProjection.from_pretrained(folder)
    model.config.eos_token_id = 2
    model.text_model.eos_token_id = 2
    fast, plain = _pair(folder)
    fast = ClipTextEncoder(model, fast.tokenizer, "fast")
    plain = ClipTextEncoder(model, fast.tokenizer, "plain", fast=False)
    fast.share_prefixes(TEMPLATE_PREFIXES)
    texts = _texts()
    torch.testing.assert_close(fast.encode(texts), plain.encode(texts), atol=1e-5, rtol=0)


def test_label_banks_match(tiny) -> None:
    fast, plain = tiny
    concepts = [make_concept(n) for n in NAMES]
    a, b = encode_concepts(concepts, fast), encode_concepts(concepts, plain)
    torch.testing.assert_close(a.embeddings, b.embeddings, atol=1e-5, rtol=0)
    assert fast.runner.prefix_count >= len(TEMPLATE_PREFIXES)


@pytest.fixture(scope="module")
def clip_size(tmp_path_factory) -> tuple[ClipTextEncoder, ClipTextEncoder]:
    """The published text tower's size (width 512, 12 layers, 8 heads), random weights."""
    words = "a close up photo of red kite picture with in it".split()
    return _pair(build_clip_size_text_encoder(tmp_path_factory.mktemp("clip-b16"), words=words))


def _clip_size_texts() -> list[str]:
    return [d for n in ("red kite", "foggy harbour 42") for d in make_concept(n).descriptions]


def test_clip_size_tower_fast_equals_plain(clip_size) -> None:
    fast, plain = clip_size
    config = fast.model.config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (
        512,
        12,
        8,
    )
    assert fast.tokenizer.tokenize("a close-up photo") == ["a</w>", "close</w>", "-</w>", "up</w>",
                                                           "photo</w>"]  # fmt: skip
    texts = _clip_size_texts()
    reference = plain.encode(texts)
    fast.share_prefixes(TEMPLATE_PREFIXES)
    out = fast.encode(texts)
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=0)
    assert float((out * reference).sum(-1).min()) > 0.99999


def test_bf16_agrees_with_float32_per_row(clip_size) -> None:
    """bf16 dense layers (opt-in): every row within cosine 0.999 of the float32 features, and
    not identical (the products really ran in bf16)."""
    fast, plain = clip_size
    low = ClipTextEncoder(fast.model, fast.tokenizer, "bf16", dtype="bfloat16")
    assert low.runner is not None and low.runner.dtype == torch.bfloat16
    low.share_prefixes(TEMPLATE_PREFIXES)
    texts = _clip_size_texts() + OTHER_TEXTS
    reference, out = plain.encode(texts), low.encode(texts)
    cosine = (out * reference).sum(-1)
    assert float(cosine.min()) >= 0.999, cosine
    assert float((out - reference).abs().max()) > 1e-5
    assert fast.model.text_projection.weight.dtype == torch.float32  # the model is untouched


def test_bad_dtype_is_refused(tiny) -> None:
    fast, _ = tiny
    with pytest.raises(ValueError, match="dtype"):
        ClipTextEncoder(fast.model, fast.tokenizer, "x", dtype="float16")
