"""Label banks: description embeddings grouped by tag, and the per-image re-weighting (step 5).

A label bank holds, for each of K tags or concepts, a set of unit-norm description embeddings. The
built-in RAM++ bank has the same number D of descriptions per tag; open-set concepts may have
different counts, so a bank is stored padded to (K, D_max, dim) with a boolean mask of real rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LabelBank:
    """Description embeddings of K tags, padded to the largest description count.

    Attributes:
        embeddings: (K, D_max, dim) float tensor; padded rows are zero.
        mask: (K, D_max) bool tensor of real rows, or None when every tag has D_max rows.
    """

    embeddings: torch.Tensor
    mask: torch.Tensor | None = None

    @property
    def num_tags(self) -> int:
        return int(self.embeddings.shape[0])

    @classmethod
    def from_flat(cls, rows: torch.Tensor, descriptions_per_tag: int) -> LabelBank:
        """Bank from tag-major rows (tag t owns rows t*D .. t*D+D-1), as in the checkpoint."""
        if rows.shape[0] % descriptions_per_tag:
            raise ValueError(
                f"label bank has {rows.shape[0]} rows, not a multiple of {descriptions_per_tag}"
            )
        return cls(rows.reshape(-1, descriptions_per_tag, rows.shape[-1]))

    @classmethod
    def from_ragged(cls, groups: Sequence[torch.Tensor]) -> LabelBank:
        """Bank from one (n_k, dim) tensor per concept; counts may differ."""
        if not groups:
            raise ValueError("a label bank needs at least one concept")
        counts = [int(g.shape[0]) for g in groups]
        if min(counts) < 1:
            raise ValueError("every concept needs at least one description")
        d_max, dim = max(counts), int(groups[0].shape[-1])
        emb = groups[0].new_zeros(len(groups), d_max, dim)
        mask = torch.zeros(len(groups), d_max, dtype=torch.bool, device=emb.device)
        for k, g in enumerate(groups):
            emb[k, : g.shape[0]] = g
            mask[k, : g.shape[0]] = True
        return cls(emb, None if min(counts) == d_max else mask)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> LabelBank:
        mask = None if self.mask is None else self.mask.to(device)
        return LabelBank(self.embeddings.to(device=device, dtype=dtype), mask)

    def select(self, index: torch.Tensor | slice) -> LabelBank:
        """The bank restricted to some tags."""
        mask = None if self.mask is None else self.mask[index]
        return LabelBank(self.embeddings[index], mask)


def reweight_descriptions(
    image_cls: torch.Tensor, bank: LabelBank, log_scale: torch.Tensor
) -> torch.Tensor:
    """One query embedding per (image, tag): a softmax-weighted sum of the tag's descriptions.

    Args:
        image_cls: (B, dim) image embeddings (token 0 of E); normalised here.
        bank: the label bank (K tags).
        log_scale: scalar; the similarity is scaled by ``exp(log_scale)``.

    Returns:
        (B, K, dim) queries. Computed as two batched contractions, never materialising the
        (B, K, D, dim) product.
    """
    c = image_cls / image_cls.norm(dim=-1, keepdim=True)
    emb = bank.embeddings.to(c.dtype)
    k, d, dim = emb.shape
    # F.linear and bmm read the bank in its stored (K, D, dim) layout: no transposed copy of
    # the 4,585 x 51 x 512 bank (einsum made one per call in bfloat16)
    scores = F.linear(c, emb.reshape(k * d, dim)).view(-1, k, d) * log_scale.exp().to(c.dtype)
    if bank.mask is not None:
        scores = scores.masked_fill(~bank.mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    return torch.bmm(weights.transpose(0, 1), emb).transpose(0, 1)
