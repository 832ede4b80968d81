"""RAM++ reproduces the upstream implementation's golden outputs (tests/fixtures/golden_tiny).

The expected values are upstream's float32 CPU results, produced outside this project.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ram_pp.inference import TaggingEngine, TagSelection
from ram_pp.labels import LabelBank
from ram_pp.preprocess import DecodeOptions, Preprocessor, open_image
from tests.conftest import GOLDEN_IMAGES

ATOL = 1e-4


def _reference_tags(golden_dir) -> list[tuple[list[str], list[str]]]:
    """Upstream's selected tags per image (English, Chinese), in the golden image order."""
    outputs = json.loads((golden_dir / "outputs.json").read_text())
    by_name = {key.rsplit("/", 1)[-1]: value for key, value in outputs.items() if "/" in key}

    def split(text: str) -> list[str]:
        return [part.strip() for part in text.split("|") if part.strip()]

    return [(split(by_name[n]["tags"]), split(by_name[n]["tags_chinese"])) for n in GOLDEN_IMAGES]


def test_preprocessing_reproduces_reference_pixels(golden_dir):
    expected = np.load(golden_dir / "pixels.npy")
    pre = Preprocessor(224)
    for i, name in enumerate(GOLDEN_IMAGES):
        pixels = pre(open_image(golden_dir / name, DecodeOptions()))
        np.testing.assert_allclose(pixels.numpy(), expected[i], atol=1e-6, err_msg=name)


@pytest.mark.parametrize("batch_size", [3, 1])
def test_files_reproduce_golden_logits_and_tags(golden_dir, golden_model, batch_size):
    """The CLI's code path (TaggingEngine.tag_files) from the image files."""
    engine = TaggingEngine(golden_model, device="cpu", batch_size=batch_size)
    results = list(engine.tag_files([golden_dir / n for n in GOLDEN_IMAGES], TagSelection()))
    assert [r.source.rsplit("/", 1)[-1] for r in results] == GOLDEN_IMAGES
    if batch_size == 3:
        expected = np.load(golden_dir / "logits_batch.npy")
    else:
        expected = np.stack(
            [np.load(golden_dir / f"logits_{n}.npy").reshape(-1) for n in GOLDEN_IMAGES]
        )
    got = np.stack([r.logits for r in results])
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)
    for result, (english, chinese) in zip(results, _reference_tags(golden_dir), strict=True):
        assert sorted(t.english for t in result.tags) == sorted(english)
        assert sorted(t.chinese for t in result.tags) == sorted(chinese)


def test_pixels_reproduce_golden_logits(golden_dir, golden_model):
    engine = TaggingEngine(golden_model, device="cpu")
    out = engine.run(torch.from_numpy(np.load(golden_dir / "pixels.npy")))
    np.testing.assert_allclose(
        out.logits.numpy(), np.load(golden_dir / "logits_batch.npy"), atol=ATOL, rtol=0
    )
    assert out.tokens.shape == (3, 50, 512)


def test_openset_bank_reproduces_golden_logits(golden_dir, golden_model):
    bank = LabelBank.from_flat(torch.from_numpy(np.load(golden_dir / "openset_embeddings.npy")), 51)
    pixels = torch.from_numpy(np.load(golden_dir / "pixels.npy"))
    with torch.inference_mode():
        logits = golden_model.model(pixels, bank)
    expected = np.load(golden_dir / "openset_logits_batch.npy")
    np.testing.assert_allclose(logits.numpy(), expected, atol=ATOL, rtol=0)
    # upstream outputs an open-set concept when its probability is above 0.5
    outputs = json.loads((golden_dir / "outputs.json").read_text())["openset_tags"]
    for row, text in zip(torch.sigmoid(logits), outputs, strict=True):
        chosen = {f"concept{i}" for i in torch.nonzero(row > 0.5).flatten().tolist()}
        assert chosen == {t.strip() for t in text.split("|") if t.strip()}


def test_engine_outputs_embeddings(golden_dir, golden_model):
    engine = TaggingEngine(golden_model, device="cpu")
    (result,) = list(engine.tag_files([golden_dir / GOLDEN_IMAGES[0]]))
    assert result.tokens.dtype == np.float16 and result.tokens.shape == (50, 512)
    assert result.embedding.shape == (512,)
    assert abs(float(np.linalg.norm(result.embedding)) - 1.0) < 1e-5
    cls = result.tokens[0].astype(np.float32)
    np.testing.assert_allclose(result.embedding, cls / np.linalg.norm(cls), atol=2e-3)
    assert (result.width, result.height) == open_image(golden_dir / GOLDEN_IMAGES[0]).size


def test_bfloat16_agrees_with_float32(golden_dir, golden_model):
    from ram_pp.factory import load_model

    files = [golden_dir / n for n in GOLDEN_IMAGES]
    exact = list(TaggingEngine(golden_model, device="cpu").tag_files(files))
    own_copy = load_model(golden_dir / "checkpoint.pth")  # a bf16 engine converts its model
    fast = list(TaggingEngine(own_copy, device="cpu", dtype="bfloat16").tag_files(files))
    exact_p = np.stack([r.probabilities for r in exact])
    fast_p = np.stack([r.probabilities for r in fast])
    assert np.abs(exact_p - fast_p).max() < 0.05
    thresholds = golden_model.vocabulary.thresholds
    agreement = ((exact_p > thresholds) == (fast_p > thresholds)).mean()
    assert agreement >= 0.95


def test_selection_modes(golden_dir, golden_model):
    engine = TaggingEngine(golden_model, device="cpu")
    path = golden_dir / GOLDEN_IMAGES[0]
    (top,) = list(engine.tag_files([path], TagSelection(top_k=3)))
    order = np.argsort(-top.probabilities)[:3]
    assert [t.index for t in top.tags] == order.tolist()
    (glob,) = list(engine.tag_files([path], TagSelection(threshold=0.5)))
    assert {t.index for t in glob.tags} == set(np.flatnonzero(glob.probabilities > 0.5).tolist())
    (both,) = list(engine.tag_files([path], TagSelection(threshold=0.7, top_k=2)))
    assert len(both.tags) <= 2 and all(t.probability > 0.7 for t in both.tags)
