"""Evaluation of a tagging model: average precision, mAP, per-tag F1 thresholds, and open-set mAP
of concepts the model never trained against the cosine-similarity baseline."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ram_pp.labels import LabelBank
from ram_pp.model import RamPlus
from ram_pp.train_config import TextEncoderLike
from ram_pp.train_data import tag_matrix


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Non-interpolated average precision of one ranking (NaN when there is no positive).

    Args:
        scores: (N,) higher = more likely positive; ties keep input order.
        targets: (N,) 0/1.
    """
    hits_all = np.asarray(targets).astype(bool)
    n_pos = int(hits_all.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    ranks = np.nonzero(hits_all[order])[0] + 1  # 1-based ranks of the positives
    return float((np.arange(1, n_pos + 1) / ranks).mean())


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> tuple[float, np.ndarray]:
    """mAP over the columns that have a positive, and every column's AP (NaN when none)."""
    aps = np.array([average_precision(scores[:, k], targets[:, k]) for k in range(scores.shape[1])])
    valid = aps[~np.isnan(aps)]
    return (float(valid.mean()) if valid.size else float("nan")), aps


def best_f1_thresholds(probs: np.ndarray, targets: np.ndarray, default: float = 0.5) -> np.ndarray:
    """Per-tag probability threshold with the best F1 on a labelled set (``default`` if none)."""
    out = np.full(probs.shape[1], default, dtype=np.float32)
    grid = np.linspace(0.05, 0.95, 19)
    for k in range(probs.shape[1]):
        pos = targets[:, k].astype(bool)
        if not pos.any():
            continue
        pred = probs[:, k][:, None] > grid[None, :]
        tp = (pred & pos[:, None]).sum(0)
        f1 = 2 * tp / (pred.sum(0) + pos.sum())
        out[k] = grid[int(np.argmax(f1))]
    return out


@torch.no_grad()
def encode_images(
    model: RamPlus, images: torch.utils.data.Dataset, batch_size: int = 128
) -> torch.Tensor:
    """E of every image of a data set, (N, T, dim), computed in eval mode."""
    was_training = model.training
    model.eval()
    loader = torch.utils.data.DataLoader(images, batch_size=batch_size, shuffle=False)
    parts = [model.encode_image(x) for x, _ in loader]
    model.train(was_training)
    return torch.cat(parts)


@torch.no_grad()
def score_embeddings(
    model: RamPlus, embeds: torch.Tensor, bank: LabelBank | None = None, chunk: int = 256
) -> torch.Tensor:
    """Logits (N, K) of image embeddings against a label bank (the model's own when None)."""
    return torch.cat(
        [
            model.logits_from_embeddings(embeds[i : i + chunk], bank)
            for i in range(0, len(embeds), chunk)
        ]
    )


@torch.no_grad()
def evaluate_open_set(
    model: RamPlus,
    embeds: torch.Tensor,
    concepts: dict[str, list[str]],
    truth: Sequence[Sequence[str]],
    encoder: TextEncoderLike,
    prompts: dict[str, str] | None = None,
    categories: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Open-set mAP of concepts the model never trained, against the cosine baseline.

    Four scores per concept: the model's open-set logit with the concept's descriptions as its
    label bank (``model``) and with only the bare-name prompt (``model_name_only``); the
    baseline, cosine similarity between the image embedding c = E[:, 0]/|E[:, 0]| and the
    concept's text embedding (the normalised mean of its description embeddings,
    ``baseline_cosine``; the prompt's, ``baseline_cosine_name_only``).

    Args:
        model: the trained model.
        embeds: E of the evaluation images.
        concepts: name -> descriptions.
        truth: per image, the names of the concepts present.
        encoder: the model's text encoder.
        prompts: name -> bare prompt; default "a photo of a {name}.".
        categories: name -> category, for per-category means.

    Returns:
        ``{"mAP": {score: value}, "per_concept": {name: {score: AP, "positives": n}},
        "per_category": {category: {score: mAP}}}``.
    """
    names = list(concepts)
    targets = tag_matrix(truth, names).numpy()
    groups = [encoder.encode(list(concepts[n])).float() for n in names]
    prompt_emb = encoder.encode(
        [(prompts or {}).get(n, f"a photo of a {n}.") for n in names]
    ).float()
    c = F.normalize(embeds[:, 0].float(), dim=-1)
    mean_desc = F.normalize(torch.stack([g.mean(0) for g in groups]), dim=-1)
    scores = {
        "model": score_embeddings(model, embeds, LabelBank.from_ragged(groups)).numpy(),
        "model_name_only": score_embeddings(
            model, embeds, LabelBank(prompt_emb.unsqueeze(1))
        ).numpy(),
        "baseline_cosine": (c @ mean_desc.T).numpy(),
        "baseline_cosine_name_only": (c @ prompt_emb.T).numpy(),
    }
    per_concept: dict[str, dict[str, float]] = {
        n: {"positives": int(targets[:, k].sum())} for k, n in enumerate(names)
    }
    summary: dict[str, float] = {}
    for key, s in scores.items():
        summary[key], aps = mean_average_precision(s, targets)
        for n, ap in zip(names, aps, strict=True):
            per_concept[n][key] = float(ap)
    per_category: dict[str, dict[str, float]] = {}
    for cat in sorted(set((categories or {}).values())):
        members = [n for n in names if (categories or {}).get(n) == cat]
        per_category[cat] = {
            key: _nanmean([per_concept[n][key] for n in members]) for key in scores
        }
    return {"mAP": summary, "per_concept": per_concept, "per_category": per_category}


def _nanmean(values: Sequence[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else float("nan")
