"""Text encoders: the CLIP path on a tiny random model saved to disk, and the packaged MiniLM."""

from __future__ import annotations

import pytest
import torch

from ram_pp.text_encoder import (
    ClipTextEncoder,
    MiniLMTextEncoder,
    TextEncoderUnavailable,
    build_random_clip_text_encoder,
    load_text_encoder,
    minilm_model_dir,
)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return build_random_clip_text_encoder(tmp_path_factory.mktemp("clip"), projection_dim=512)


@pytest.fixture(scope="module")
def clip(clip_dir) -> ClipTextEncoder:
    encoder = load_text_encoder(str(clip_dir))
    assert isinstance(encoder, ClipTextEncoder)
    return encoder


def test_clip_shape_dtype_and_unit_norm(clip):
    out = clip.encode(["a photo of a cat.", "a brutalist stairwell", ""])
    assert out.shape == (3, 512) and out.dtype == torch.float32 and clip.dim == 512
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3), atol=1e-6, rtol=0)
    assert not torch.allclose(out[0], out[1])


def test_clip_matches_unbatched_model_call(clip):
    """Batched, padded encoding equals the model run on each text alone (no padding at all)."""
    texts = ["a photo of a cat.", "a much longer description of a red double-decker bus", "x"]
    batched = clip.encode(texts, batch_size=3)
    for i, text in enumerate(texts):
        ids = clip.tokenizer([text], return_tensors="pt")
        with torch.no_grad():
            ref = clip.model(**ids).text_embeds[0]
        torch.testing.assert_close(batched[i], ref / ref.norm(), atol=1e-5, rtol=0)
    torch.testing.assert_close(clip.encode(texts, batch_size=1), batched, atol=1e-5, rtol=0)


def test_clip_truncates_to_77_tokens(clip):
    long_a = "stairs " * 60
    long_b = long_a + "and a completely different ending about seagulls"
    ids = clip.tokenizer([long_b], truncation=True, max_length=77)["input_ids"][0]
    assert len(ids) == 77
    out = clip.encode([long_a, long_b])
    torch.testing.assert_close(out[0], out[1])


def test_reload_from_folder_is_deterministic(clip_dir, clip):
    again = load_text_encoder(clip_dir)
    torch.testing.assert_close(again.encode(["khinkali"]), clip.encode(["khinkali"]))


def test_empty_and_bad_input(clip):
    assert clip.encode([]).shape == (0, 512)
    with pytest.raises(TypeError):
        clip.encode("not a list")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        clip.encode(["a"], batch_size=0)


def test_missing_folder_and_uncached_hub_id_give_clear_errors(tmp_path):
    with pytest.raises(TextEncoderUnavailable, match="does not exist"):
        load_text_encoder(str(tmp_path / "nope"))
    with pytest.raises(TextEncoderUnavailable, match="RAMDEX_MODEL__TEXT_ENCODER"):
        load_text_encoder(
            "openai/clip-vit-base-patch16", cache_dir=tmp_path / "empty", allow_download=False
        )


@pytest.mark.slow
def test_minilm_matches_sentence_transformers():
    """Our mean pooling over the packaged weights equals sentence-transformers' own pipeline."""
    from sentence_transformers import SentenceTransformer

    encoder = load_text_encoder("sentence-transformers/all-MiniLM-L6-v2")
    assert isinstance(encoder, MiniLMTextEncoder) and encoder.dim == 384
    texts = ["a photo of a dog.", "a picture of a puppy", "the quarterly tax report"]
    ours = encoder.encode(texts, batch_size=2)
    ref = SentenceTransformer(str(minilm_model_dir()), device="cpu").encode(
        texts, convert_to_tensor=True, normalize_embeddings=True
    )
    torch.testing.assert_close(ours, ref.cpu().float(), atol=1e-5, rtol=0)
    sims = ours @ ours.T
    assert sims[0, 1] > sims[0, 2] + 0.2  # dog ~ puppy, far from tax
    assert load_text_encoder("minilm").name == "minilm"
