"""Checkpoint reading, saving, conversion and architecture recognition."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from ram_pp.config import get_config
from ram_pp.convert import (
    CheckpointError,
    infer_config,
    read_checkpoint,
    resize_bias_table,
    save_checkpoint,
    upstream_to_timm,
)
from ram_pp.factory import load_model, random_model
from ram_pp.model import RamPlus

REFERENCE = Path(__file__).parent / "fixtures" / "reference_keys"


def _logits(loaded, golden_dir) -> np.ndarray:
    pixels = torch.from_numpy(np.load(golden_dir / "pixels.npy"))
    with torch.inference_mode():
        return loaded.model(pixels).numpy()


def _meta_state_from_tsv(path: Path) -> dict[str, torch.Tensor]:
    """A state dict of shape-only tensors with the keys and shapes listed in a reference TSV."""
    state = {}
    for line in path.read_text().splitlines():
        key, shape, _dtype = line.split("\t")
        dims = tuple(int(x) for x in re.findall(r"\d+", shape))
        state[key] = torch.empty(dims, device="meta")
    return state


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_save_load_round_trip(tmp_path, golden_dir, golden_model, suffix):
    target = tmp_path / f"model{suffix}"
    save_checkpoint(
        target,
        golden_model.model.state_dict(),
        golden_model.config,
        golden_model.vocabulary.to_dict(),
    )
    again = load_model(target)
    assert again.config == golden_model.config
    assert again.vocabulary.english == golden_model.vocabulary.english
    np.testing.assert_array_equal(_logits(again, golden_dir), _logits(golden_model, golden_dir))


def test_ramdex_checkpoint_carries_custom_vocabulary(tmp_path):
    loaded = random_model("test_micro")
    from ram_pp.vocab import TagVocabulary

    vocab = TagVocabulary.from_names([f"thing{i}" for i in range(8)], threshold=0.4)
    save_checkpoint(
        tmp_path / "m.safetensors", loaded.model.state_dict(), loaded.config, vocab.to_dict()
    )
    again = load_model(tmp_path / "m.safetensors")
    assert again.vocabulary.english == vocab.english
    assert float(again.vocabulary.thresholds[0]) == pytest.approx(0.4)


def test_published_layout_is_recognised_and_remapped(golden_dir):
    raw = read_checkpoint(golden_dir / "checkpoint.pth").state_dict
    cfg = infer_config(raw)
    assert cfg.name == "test_tiny_golden"
    mapped = upstream_to_timm(raw, cfg)
    assert not any(k.endswith(("relative_position_index", "attn_mask")) for k in mapped)
    # upstream stores stage 0's patch merging as layers.0.downsample; timm runs it in stage 1
    assert torch.equal(
        mapped["visual_encoder.layers.1.downsample.reduction.weight"],
        raw["visual_encoder.layers.0.downsample.reduction.weight"],
    )
    assert "visual_encoder.layers.0.downsample.reduction.weight" not in mapped


@pytest.mark.parametrize(
    ("tsv", "name"),
    [
        ("checkpoint_keys_swin_l_384.tsv", "ram_plus_swin_large_14m"),
        ("checkpoint_keys_swin_b_384.tsv", "ram_plus_swin_base_384"),
    ],
)
def test_published_keys_match_the_model_exactly(tsv, name):
    """Every key and shape of the published files, and nothing else, after the Swin remap."""
    published = _meta_state_from_tsv(REFERENCE / tsv)
    cfg = infer_config(published)
    assert cfg.name == name
    with torch.device("meta"):
        model = RamPlus(cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    mapped = {k: tuple(v.shape) for k, v in upstream_to_timm(published, cfg).items()}
    assert mapped == expected
    head = {k for k in published if k.startswith(("tagging_head", "fc.", "wordvec_proj"))}
    assert head <= set(expected)  # published head names are kept as they are


def _corrupt(state: dict[str, torch.Tensor], how: str) -> tuple[dict[str, torch.Tensor], str]:
    state = dict(state)
    if how == "missing":
        key = "tagging_head.encoder.layer.1.output.dense.bias"
        del state[key]
    elif how == "extra":
        key = "tagging_head.encoder.layer.0.attention.self.query.weight"
        state[key] = torch.zeros(2, 2)
    else:
        key = "wordvec_proj.bias"
        state[key] = torch.zeros(3)
    return state, key


@pytest.mark.parametrize("how", ["missing", "extra", "misshaped"])
def test_bad_keys_are_named(tmp_path, golden_dir, how):
    raw = read_checkpoint(golden_dir / "checkpoint.pth").state_dict
    state, key = _corrupt(raw, how)
    path = tmp_path / "bad.pth"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError, match=re.escape(key)):
        load_model(path, config="test_tiny_golden")


def test_non_checkpoint_files_fail_cleanly(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("this is not a checkpoint")
    with pytest.raises(CheckpointError, match="notes.pth"):
        load_model(text)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        load_model(junk)
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "absent.pth")
    torch.save({"model": {"x": torch.zeros(1)}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not a RAM\\+\\+ state dict"):
        load_model(tmp_path / "other.pth")


class _Unsafe:  # pickled by reference: safe loading must refuse it
    pass


def test_unsafe_pickle_is_refused_then_trusted_on_request(tmp_path, golden_dir):
    raw = read_checkpoint(golden_dir / "checkpoint.pth").state_dict
    path = tmp_path / "with_extras.pth"
    torch.save({"model": raw, "optimizer_state": _Unsafe()}, path)
    with pytest.raises(CheckpointError, match=r"_Unsafe.*--trust-checkpoint"):
        load_model(path)
    assert load_model(path, trust=True).config.name == "test_tiny_golden"


def test_bias_tables_are_resized_bicubically():
    # a smooth bias over the relative-offset grid survives resizing as the same smooth function
    side = 13  # window 7
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, side), torch.linspace(-1, 1, side), indexing="ij")
    table = torch.stack([xs + 2 * ys, xs * ys], dim=-1).reshape(side * side, 2)
    resized = resize_bias_table(table, window=4)
    assert resized.shape == (49, 2)
    grid = resized.T.reshape(2, 7, 7)
    assert grid[0, 3, 3].abs() < 1e-5  # centre stays at zero offset
    assert grid[0, 3, 6] > grid[0, 3, 0] and grid[0, 6, 3] > grid[0, 0, 3]
    assert resize_bias_table(table, window=7) is table


def test_checkpoint_with_another_window_loads(tmp_path):
    source = random_model("test_micro")  # window 4
    path = tmp_path / "w4.safetensors"
    save_checkpoint(path, source.model.state_dict(), source.config)
    cfg = get_config("test_micro")
    other = cfg.replace(vision={**cfg.to_dict()["vision"], "window_size": 2})
    loaded = load_model(path, config=other)
    table = loaded.model.state_dict()[
        "visual_encoder.layers.0.blocks.0.attn.relative_position_bias_table"
    ]
    assert table.shape == (9, 1)
    with torch.inference_mode():
        assert loaded.model(torch.zeros(1, 3, 64, 64)).shape == (1, 8)
