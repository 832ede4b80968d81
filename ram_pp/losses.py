"""RAM++ training objectives: asymmetric tagging loss, image-text alignment, embedding distillation.

- Tagging: the asymmetric loss (ASL, Ridnik et al. 2021) over the tag logits, with RAM++'s
  settings ``gamma_neg=7, gamma_pos=0, clip=0.05``.
- Image-text alignment: the same tagging head scores each caption's text embedding, used as a
  one-description "tag", against every image of the batch; the (B, B) logits go through ASL with
  ``gamma_neg=4`` and the positives on the diagonal.
- Distillation: L1 between the normalised image embedding c (token 0 of E) and a teacher embedding.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from ram_pp.labels import LabelBank

Reduction = Literal["sum", "mean", "none"]


def asymmetric_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    gamma_neg: float = 7.0,
    gamma_pos: float = 0.0,
    clip: float = 0.05,
    eps: float = 1e-8,
    reduction: Reduction = "sum",
) -> torch.Tensor:
    """Asymmetric loss for multi-label classification.

    With p = sigmoid(logit), each positive contributes ``-(1 - p)^gamma_pos * log(p)`` and each
    negative ``-p_m^gamma_neg * log(1 - p_m)`` where ``p_m = max(p - clip, 0)`` (probability
    shifting: easy negatives with p <= clip contribute nothing). Log arguments are clamped at
    ``eps``.

    Args:
        logits: raw scores, any shape.
        targets: same shape, 1 for positives and 0 for negatives (float or bool).
        gamma_neg: focusing exponent for negatives.
        gamma_pos: focusing exponent for positives.
        clip: probability margin for negatives (0 disables shifting).
        eps: lower clamp of the log arguments.
        reduction: "sum" (as the ASL paper), "mean" over elements, or "none".

    Returns:
        The loss (a scalar unless ``reduction="none"``).
    """
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ")
    if clip < 0 or gamma_neg < 0 or gamma_pos < 0:
        raise ValueError("clip, gamma_neg and gamma_pos must be >= 0")
    y = targets.to(logits.dtype)
    p = torch.sigmoid(logits)
    # 1 - p_m, the "probability of being negative" after shifting by clip.
    p_neg = (1 - p + clip).clamp(max=1) if clip > 0 else 1 - p
    loss_pos = y * torch.log(p.clamp(min=eps))
    loss_neg = (1 - y) * torch.log(p_neg.clamp(min=eps))
    loss = loss_pos + loss_neg
    if gamma_neg > 0 or gamma_pos > 0:
        pt = p * y + p_neg * (1 - y)
        gamma = gamma_pos * y + gamma_neg * (1 - y)
        loss = loss * torch.pow(1 - pt, gamma)
    loss = -loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean()
    if reduction == "none":
        return loss
    raise ValueError(f"unknown reduction {reduction!r}")


def tagging_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """RAM++ tagging loss: ASL (gamma_neg 7, gamma_pos 0, clip 0.05), summed, per image.

    Args:
        logits: (B, K) tag logits.
        targets: (B, K) 0/1 ground truth.

    Returns:
        Scalar: the ASL sum divided by the batch size.
    """
    return asymmetric_loss(logits, targets, 7.0, 0.0, 0.05) / logits.shape[0]


def alignment_logits(
    model: torch.nn.Module, image_embeds: torch.Tensor, text_embeds: torch.Tensor
) -> torch.Tensor:
    """Score every caption against every image with the tagging head.

    Args:
        model: a :class:`ram_pp.model.RamPlus` (uses ``logits_from_embeddings``).
        image_embeds: E, (B, T, dim).
        text_embeds: (C, dim) unit-norm caption embeddings, each used as a one-description tag.

    Returns:
        (B, C) logits; entry (i, j) scores caption j against image i.
    """
    bank = LabelBank(text_embeds.unsqueeze(1))
    return model.logits_from_embeddings(image_embeds, bank)


def alignment_loss(
    logits: torch.Tensor, positives: torch.Tensor | None = None, gamma_neg: float = 4.0
) -> torch.Tensor:
    """Image-text alignment loss over (B, B) image-caption logits.

    Args:
        logits: (B, B) from :func:`alignment_logits` (image i, caption j).
        positives: optional (B, B) 0/1 targets; default the identity (each image with its own
            caption). Pass more positives when distinct images share a caption.
        gamma_neg: ASL negative focusing (RAM++ uses 4; gamma_pos 0, clip 0.05).

    Returns:
        Scalar: the ASL sum divided by the batch size.
    """
    if logits.ndim != 2 or logits.shape[0] != logits.shape[1]:
        raise ValueError(f"alignment logits must be square (B, B), got {tuple(logits.shape)}")
    if positives is None:
        positives = torch.eye(logits.shape[0], device=logits.device, dtype=logits.dtype)
    return asymmetric_loss(logits, positives, gamma_neg, 0.0, 0.05) / logits.shape[0]


def distillation_loss(image_cls: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """L1 distance between the normalised image embedding c and a normalised teacher embedding.

    Args:
        image_cls: (B, dim) token 0 of E (normalised here).
        teacher: (B, dim) teacher embeddings (normalised here).

    Returns:
        Scalar: the L1 distance summed over dimensions, averaged over the batch.
    """
    if image_cls.shape != teacher.shape:
        raise ValueError(
            f"image embedding {tuple(image_cls.shape)} and teacher {tuple(teacher.shape)} differ"
        )
    c = F.normalize(image_cls, dim=-1)
    t = F.normalize(teacher.to(c.dtype), dim=-1)
    return (c - t).abs().sum(dim=-1).mean()
