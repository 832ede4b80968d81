"""Training and fine-tuning RAM++ on a tag list, and its evaluation (mAP, open-set mAP).

A run trains a :class:`ram_pp.model.RamPlus` on images listed in a tag file (one line per image,
``path tag1,tag2,...``, paths relative to the list file) with optional captions
(``path caption``), or on the procedural set of :mod:`ram_pp.synth`, rendered on the fly.

The tag list becomes the model's vocabulary: each tag's descriptions are embedded by the model's
text encoder into the label bank. The label bank stays frozen (text-derived, like RAM++'s CLIP
label bank): concepts embedded later by the same encoder then live in the space the head was
trained on, which is what open-set scoring needs.

Objectives (:mod:`ram_pp.losses`): tagging ASL, image-caption alignment through the tagging head,
and L1 distillation of the image embedding c toward a teacher. Without an image teacher, the
teacher is the caption's text embedding; that keeps c in the text space, so the description
re-weighting (step 5) has something to match and c-to-concept cosine similarity is a fair baseline.

Each epoch writes ``checkpoint.pt`` (all that resuming needs) and ``model.safetensors`` (a ramdex
checkpoint with config and vocabulary) and evaluates mAP on the validation split.

Settings and presets live in :mod:`ram_pp.train_config`, data in :mod:`ram_pp.train_data`,
metrics in :mod:`ram_pp.evaluation`; their public names are re-exported here.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ram_pp.config import RamPlusConfig, get_config
from ram_pp.convert import is_upstream_layout, read_checkpoint, save_checkpoint, upstream_to_timm
from ram_pp.evaluation import (  # noqa: F401 - re-exported: ram_pp.train is the entry point
    average_precision,
    best_f1_thresholds,
    encode_images,
    evaluate_open_set,
    mean_average_precision,
    score_embeddings,
)
from ram_pp.losses import alignment_logits, alignment_loss, distillation_loss, tagging_loss
from ram_pp.model import RamPlus
from ram_pp.preprocess import Preprocessor
from ram_pp.train_config import PRESETS, TextEncoderLike, TrainConfig, TrainError, preset  # noqa: F401
from ram_pp.train_data import (  # noqa: F401
    SYNTH_CACHE_BYTES,
    DataSource,
    FileImages,
    Split,
    SynthImages,
    TagList,
    caption_file_for,
    folder_source,
    read_descriptions,
    read_tag_list,
    synth_source,
    tag_matrix,
)
from ram_pp.vocab import TagVocabulary

STATE_FILE = "checkpoint.pt"
MODEL_FILE = "model.safetensors"
METRICS_FILE = "metrics.json"


def load_encoder(name: str) -> TextEncoderLike:
    """The model config's text encoder (see :func:`ram_pp.text_encoder.load_text_encoder`)."""
    from ram_pp.text_encoder import load_text_encoder

    return load_text_encoder(name)


def build_label_bank(
    encoder: TextEncoderLike, descriptions: Sequence[Sequence[str]], per_tag: int | None = None
) -> torch.Tensor:
    """Tag-major label-bank rows (K * D, dim) from each tag's descriptions.

    Tags with fewer than D descriptions repeat theirs cyclically (a repeated row only changes the
    re-weighting softmax by its multiplicity).

    Args:
        encoder: text encoder (unit-norm outputs).
        descriptions: one non-empty list of strings per tag.
        per_tag: D; default the largest description count.
    """
    if not descriptions or min(len(d) for d in descriptions) < 1:
        raise TrainError("every tag needs at least one description")
    d = per_tag or max(len(x) for x in descriptions)
    texts = [group[i % len(group)] for group in descriptions for i in range(d)]
    return encoder.encode(texts).float()


def encode_texts(
    encoder: TextEncoderLike, texts: Sequence[str], cache: Path | None = None
) -> torch.Tensor:
    """Encode texts (each distinct one once, shortest first), cached by content in ``cache``."""
    digest = hashlib.sha256(("\n".join(texts) + f"|{encoder.dim}").encode()).hexdigest()[:20]
    path = cache / f"text_{digest}.pt" if cache is not None else None
    if path is not None and path.is_file():
        return torch.load(path, weights_only=True)
    unique = sorted(set(texts), key=lambda t: (len(t), t))  # similar lengths share a batch
    emb = encoder.encode(unique, batch_size=128) if unique else torch.zeros(0, encoder.dim)
    index = {t: i for i, t in enumerate(unique)}
    out = emb[[index[t] for t in texts]] if texts else emb
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(out, path)
    return out


@torch.no_grad()
def init_query_projection(model: RamPlus, texts: torch.Tensor, power: float = 1.0) -> None:
    """Set ``wordvec_proj`` to project centred text embeddings on their principal directions.

    The leading ``hidden`` principal directions of ``texts`` (N, dim) map to decorrelated query
    units, direction i scaled by ``sigma_i ** -power`` (1: whitened, every unit of variance 1;
    0: the plain projection, which keeps the text space's geometry; between: partial whitening),
    with the average unit variance 1. Units beyond the rank keep a small random init. The mean
    is folded into the bias, so inference is the plain RAM++ computation.
    """
    hidden = model.wordvec_proj.out_features
    mean = texts.mean(0)
    _, sing, vh = torch.linalg.svd(texts - mean, full_matrices=False)
    rank = int(min(hidden, (sing > 1e-6 * sing[0]).sum()))
    scale = sing[:rank] ** -power
    spread = (sing[:rank] * scale) ** 2 / texts.shape[0]  # output variance per unit
    scale = scale * torch.sqrt(rank / spread.sum())
    weight = torch.randn(hidden, texts.shape[1]) * 0.02
    weight[:rank] = vh[:rank] * scale[:, None]
    model.wordvec_proj.weight.copy_(weight)
    model.wordvec_proj.bias.copy_(-weight @ mean)


def _json_safe(value: Any) -> Any:
    """NaN (an AP without positives) -> None, so metrics files are strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


@dataclass
class TrainResult:
    """What a run produced."""

    out_dir: Path
    model_file: Path
    metrics: dict[str, Any]
    history: list[dict[str, float]]


def _set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


def model_config_for(cfg: TrainConfig, n_tags: int, per_tag: int) -> RamPlusConfig:
    """The run's model config: ``cfg.model`` with the vocabulary's label layout."""
    base = get_config(cfg.model)
    labels = {"num_tags": n_tags, "descriptions_per_tag": per_tag, "vocabulary": "custom"}
    return base.replace(labels=labels)


def _init_from_checkpoint(model: RamPlus, cfg: TrainConfig, log: Callable[[str], None]) -> set[str]:
    """Load the tensors of ``cfg.init_checkpoint`` that fit; returns the loaded names."""
    if cfg.init_checkpoint is None:
        return set()
    loaded = read_checkpoint(cfg.init_checkpoint, trust=cfg.trust_checkpoint)
    state = loaded.state_dict
    if is_upstream_layout(state):
        state = upstream_to_timm(state, model.config)
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(set(state) - set(usable))
    model.load_state_dict(usable, strict=False)
    log(f"initialised from {cfg.init_checkpoint}: {len(usable)} of {len(own)} tensors loaded")
    if skipped:
        more = " ..." if len(skipped) > 8 else ""
        log(f"  not loaded (absent here or another shape): {', '.join(skipped[:8])}{more}")
    return set(usable)


def _caption_ids(captions: Sequence[str | None]) -> torch.Tensor:
    """An integer per caption text (equal texts share one; -1 = no caption)."""
    ids: dict[str, int] = {}
    return torch.tensor([-1 if c is None else ids.setdefault(c, len(ids)) for c in captions])


def _losses(
    model: RamPlus,
    cfg: TrainConfig,
    pixels: torch.Tensor,
    targets: torch.Tensor,
    captions: torch.Tensor,
    caption_ids: torch.Tensor,
) -> dict[str, torch.Tensor]:
    embeds = model.encode_image(pixels)
    tag = tagging_loss(model.logits_from_embeddings(embeds), targets)
    align = distill = tag.new_zeros(())
    sel = (caption_ids >= 0).nonzero().squeeze(1)
    if len(sel) >= 2:
        if cfg.align_weight:
            logits = alignment_logits(model, embeds[sel], captions[sel])
            ids = caption_ids[sel]
            # Distinct images with the same caption text are positives for each other.
            align = alignment_loss(logits, (ids[:, None] == ids[None, :]).to(logits.dtype))
        if cfg.distill_weight and cfg.distill_teacher == "caption":
            distill = distillation_loss(embeds[sel, 0], captions[sel])
    loss = tag + cfg.align_weight * align + cfg.distill_weight * distill
    return {"loss": loss, "tag": tag.detach(), "align": align.detach(), "distill": distill.detach()}


class _Batches:
    """Index batches of one epoch: a shuffled pass over all images, topped up with captioned ones.

    When only some images have captions, ``caption_batch`` slots of each batch come from a
    shuffled stream over the captioned images, so that every batch has pairs to align.
    Deterministic in (seed, epoch), so a resumed run draws the same batches.
    """

    def __init__(self, n: int, captioned: torch.Tensor, cfg: TrainConfig) -> None:
        self.n = n
        self.captioned = captioned
        mixed = 0 < len(captioned) < n and cfg.caption_batch > 0
        self.extra = min(cfg.caption_batch, cfg.batch_size // 2) if mixed else 0
        self.main = cfg.batch_size - self.extra
        steps = n // self.main
        self.steps = min(steps, cfg.max_steps_per_epoch) if cfg.max_steps_per_epoch else steps
        self.seed = cfg.seed

    def epoch(self, epoch: int) -> list[torch.Tensor]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(self.n, generator=gen)
        need = self.steps * self.extra
        cap = torch.empty(0, dtype=torch.long)
        while len(cap) < need:
            cap = torch.cat(
                [cap, self.captioned[torch.randperm(len(self.captioned), generator=gen)]]
            )
        return [
            torch.cat(
                [
                    order[s * self.main : (s + 1) * self.main],
                    cap[s * self.extra : (s + 1) * self.extra],
                ]
            )
            for s in range(self.steps)
        ]


def train(
    cfg: TrainConfig,
    encoder: TextEncoderLike | None = None,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Run (or resume) a training run.

    Args:
        cfg: the run's settings.
        encoder: text encoder; default the model config's (``load_text_encoder``).
        resume: continue from ``out_dir/checkpoint.pt`` (same vocabulary and model config).
        progress: show tqdm bars.
        log: where status lines go.

    Returns:
        The run's folder, model file, final metrics and per-epoch history.

    Raises:
        TrainError: bad settings, data or checkpoint.
    """
    from tqdm import tqdm

    cfg.validate()
    torch.set_num_threads(cfg.threads)
    _set_seed(cfg.seed)
    started = time.perf_counter()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)

    base = get_config(cfg.model)
    pre = Preprocessor(base.vision.image_size, base.mean, base.std)
    source = folder_source(cfg, pre) if cfg.data is not None else synth_source(cfg, pre)
    vocab = source.vocab
    per_tag = max(len(d) for d in source.descriptions)
    model_cfg = model_config_for(cfg, len(vocab), per_tag)

    encoder = encoder or load_encoder(model_cfg.text_encoder)
    if encoder.dim != model_cfg.head.embed_dim:
        raise TrainError(
            f"text encoder {model_cfg.text_encoder!r} gives {encoder.dim}-d vectors but model "
            f"{model_cfg.name!r} has a {model_cfg.head.embed_dim}-d label bank (head.embed_dim)"
        )
    model = RamPlus(model_cfg)
    loaded = _init_from_checkpoint(model, cfg, log)
    bank = build_label_bank(encoder, source.descriptions, per_tag)
    with torch.no_grad():
        model.label_embed.copy_(bank)
    model.label_embed.requires_grad_(not cfg.freeze_label_bank)

    train_split = source.train
    targets = tag_matrix(train_split.tags, vocab)
    caption_ids = _caption_ids(train_split.captions)
    captioned = (caption_ids >= 0).nonzero().squeeze(1)
    caption_emb = torch.zeros(len(train_split), encoder.dim)
    if len(captioned):
        t0 = time.perf_counter()
        texts = [train_split.captions[int(i)] or "" for i in captioned]
        caption_emb[captioned] = encode_texts(encoder, texts, out / "cache")
        log(f"{len(captioned)} captions embedded in {time.perf_counter() - t0:.0f} s")
    if cfg.init_queries and "wordvec_proj.weight" not in loaded:
        sample = caption_emb[captioned[:4000]] if len(captioned) else bank[:0]
        init_query_projection(model, torch.cat([bank, sample]), cfg.whitening_power)
    val_targets = tag_matrix(source.val.tags, vocab) if source.val is not None else None

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ],
        lr=cfg.lr,
    )
    batches = _Batches(len(train_split), captioned, cfg)
    if batches.steps < 1:
        raise TrainError(f"{len(train_split)} training images are fewer than one batch")
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(cfg.warmup_steps, batches.steps * cfg.epochs)
    )

    start_epoch, history = 0, []
    state_path = out / STATE_FILE
    if resume:
        if not state_path.is_file():
            raise TrainError(f"nothing to resume: {state_path} does not exist")
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if state["vocabulary"] != vocab or state["model_config"] != model_cfg.to_dict():
            raise TrainError(f"{state_path} was trained with another vocabulary or model config")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, history = int(state["epoch"]), list(state["history"])
        torch.set_rng_state(state["rng"])  # stochastic depth draws continue where they stopped
        log(f"resuming after epoch {start_epoch} of {cfg.epochs} from {state_path}")

    model_file = out / MODEL_FILE
    images = train_split.images
    val_probs = None  # of the last epoch's weights, which finish() calibrates on
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        gen = torch.Generator().manual_seed(cfg.seed * 7919 + epoch)
        sums = {"loss": 0.0, "tag": 0.0, "align": 0.0, "distill": 0.0}
        t_epoch = time.perf_counter()
        bar = tqdm(
            batches.epoch(epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress
        )
        for step, idx in enumerate(bar):
            pixels = torch.stack([images[int(i)][0] for i in idx])
            if cfg.hflip:
                flip = torch.rand(len(idx), generator=gen) < 0.5
                pixels[flip] = pixels[flip].flip(-1)
            parts = _losses(model, cfg, pixels, targets[idx], caption_emb[idx], caption_ids[idx])
            optimizer.zero_grad(set_to_none=True)
            parts["loss"].backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            for k in sums:
                sums[k] += float(parts[k].detach())
            bar.set_postfix(loss=f"{sums['loss'] / (step + 1):.3f}")
        record: dict[str, float] = {k: v / batches.steps for k, v in sums.items()}
        record.update(epoch=epoch + 1, seconds=time.perf_counter() - t_epoch)
        if source.val is not None and val_targets is not None:
            val_probs = _probabilities(model, source.val.images)
            record["val_mAP"] = mean_average_precision(val_probs, val_targets.numpy())[0]
        history.append(record)
        log(
            f"epoch {epoch + 1}: loss {record['loss']:.4f} (tag {record['tag']:.4f}, align "
            f"{record['align']:.4f}, distill {record['distill']:.4f})"
            + (f", val mAP {record['val_mAP']:.4f}" if "val_mAP" in record else "")
            + f", {record['seconds']:.0f} s"
        )
        vocabulary = TagVocabulary.from_names(vocab, threshold=0.5)
        save_checkpoint(model_file, model.state_dict(), model_cfg, vocabulary=vocabulary.to_dict())
        tmp = state_path.with_suffix(".tmp")
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch + 1,
                "rng": torch.get_rng_state(),
                "history": history,
                "vocabulary": vocab,
                "model_config": model_cfg.to_dict(),
                "train_config": cfg.to_dict(),
            },
            tmp,
        )
        tmp.replace(state_path)

    metrics = finish(cfg, model, model_cfg, source, encoder, model_file, log, val_probs)
    metrics["train_seconds"] = time.perf_counter() - started
    metrics["history"] = history
    (out / METRICS_FILE).write_text(json.dumps(_json_safe(metrics), indent=1, allow_nan=False))
    return TrainResult(out, model_file, metrics, history)


def _probabilities(model: RamPlus, images: torch.utils.data.Dataset) -> np.ndarray:
    """(N, K) tag probabilities of a data set's images (image encoder in eval mode)."""
    return torch.sigmoid(score_embeddings(model, encode_images(model, images))).numpy()


def finish(
    cfg: TrainConfig,
    model: RamPlus,
    model_cfg: RamPlusConfig,
    source: DataSource,
    encoder: TextEncoderLike,
    model_file: Path,
    log: Callable[[str], None] = print,
    val_probs: np.ndarray | None = None,
) -> dict[str, Any]:
    """Calibrate per-tag thresholds on val, export the model, evaluate test and open-set.

    The test figures are computed with the exported file's weights (after any float16 cast), so
    they describe the file that ships. ``val_probs``: the model's validation probabilities when
    the caller has them already (the last epoch's), else they are computed here.
    """
    model.eval()
    vocab = source.vocab
    metrics: dict[str, Any] = {"num_tags": len(vocab)}
    thresholds = np.full(len(vocab), 0.5, dtype=np.float32)
    if source.val is not None:
        if val_probs is None:
            val_probs = _probabilities(model, source.val.images)
        val_targets = tag_matrix(source.val.tags, vocab).numpy()
        metrics["val_mAP"] = mean_average_precision(val_probs, val_targets)[0]
        thresholds = best_f1_thresholds(val_probs, val_targets)
    vocabulary = TagVocabulary(tuple(vocab), tuple(vocab), thresholds)
    state = model.state_dict()
    if cfg.export_dtype == "float16":
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    save_checkpoint(model_file, state, model_cfg, vocabulary=vocabulary.to_dict())
    exported = RamPlus(model_cfg).eval()
    exported.load_state_dict(read_checkpoint(model_file).state_dict)
    if source.test is None:
        return metrics
    embeds = encode_images(exported, source.test.images)
    probs = torch.sigmoid(score_embeddings(exported, embeds)).numpy()
    test_targets = tag_matrix(source.test.tags, vocab).numpy()
    metrics["test_mAP"], aps = mean_average_precision(probs, test_targets)
    metrics["test_AP_per_tag"] = {t: float(a) for t, a in zip(vocab, aps, strict=True)}
    pred = probs > thresholds[None, :]
    tp = (pred & (test_targets > 0)).sum()
    metrics["test_precision"] = float(tp / max(1, pred.sum()))
    metrics["test_recall"] = float(tp / max(1, test_targets.sum()))
    log(f"test mAP {metrics['test_mAP']:.4f} on {len(source.test)} images")
    if source.concepts and source.test.heldout_truth is not None:
        open_set = evaluate_open_set(
            exported,
            embeds,
            source.concepts,
            source.test.heldout_truth,
            encoder,
            source.prompts,
            source.categories,
        )
        metrics["open_set"] = open_set
        for key, value in open_set["mAP"].items():
            log(f"open-set mAP ({key}): {value:.4f}")
    return metrics
