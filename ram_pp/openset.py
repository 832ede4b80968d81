"""Retroactive open-set scoring: RAM++ logits for new concepts from stored image embeddings E.

Steps 5-8 of RAM++ need only E (N, T, 512) and a label bank, never the image encoder. The plain
path (:meth:`RamPlus.logits_from_embeddings`) projects every image token to keys and values in the
head's hidden width for every batch; that is T x 512 x 2H multiply-adds per asset and layer before a
single concept is looked at. With one query per (asset, concept) the projections can be moved to the
query side instead:

- attention logits: q . (W_k e_j + b_k) = (W_k^T q) . e_j + q . b_k per head. The second term is
  the same for every token j, so it cancels in the softmax over tokens; only ``W_k^T q`` (a 512-d
  vector per head) is needed, and the scores are a batched product with E itself.
- values: sum_j a_j (W_v e_j + b_v) = W_v (sum_j a_j e_j) + b_v, because the softmax weights sum
  to 1; so E is averaged with the attention weights first (512-d per head) and W_v applied once.

Per asset, concept and layer the fast path costs about H^2 + 2*512*H + 2*heads*T*512 multiply-adds
plus the feed-forward block, instead of 2*T*512*H for the key/value projections alone. Everything
else (re-weighting, ReLU(wordvec_proj), output dense + LayerNorm, feed-forward, fc) is the model's
own modules, so the two paths differ only in the attention algebra.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ram_pp.labels import LabelBank
from ram_pp.model import RamPlus, TaggingLayer


def _as_tensor(embeds: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(embeds, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(embeds))
    if not isinstance(embeds, torch.Tensor):
        raise TypeError(f"image embeddings must be a numpy array or tensor, got {type(embeds)}")
    return embeds


def concept_vectors(bank: LabelBank) -> torch.Tensor:
    """One unit-norm 512-d text-side vector per concept: the mean of its real description rows.

    This is the stage-1 query against stored image embeddings c (same space as the bank). The
    per-image re-weighting of step 5 cannot be used there (it depends on c), and the plain mean
    is the re-weighting's limit for a flat softmax.

    Returns:
        (K, dim) float32.
    """
    emb = bank.embeddings.float()
    if bank.mask is None:
        mean = emb.mean(dim=1)
    else:
        weights = bank.mask.to(emb.dtype).unsqueeze(-1)
        mean = (emb * weights).sum(1) / weights.sum(1)
    return F.normalize(mean, dim=-1)


class OpenSetScorer:
    """Scores label banks against stored image embeddings with a RAM++ model's head.

    Args:
        model: a RAM++ model; only ``reweight_scale``, ``wordvec_proj``, ``tagging_head`` and
            ``fc`` are used (the image encoder may be anything).
        device: where to compute; the model is moved there.
        dtype: compute dtype (float32 on CPU; float16/bfloat16 only make sense on a GPU).
        asset_chunk: assets per batch (bounds memory: a chunk holds its E in ``dtype``).
        work_budget: largest number of elements of the per-chunk (assets x heads x concepts x 512)
            work tensors; concepts are split to stay under it.
    """

    def __init__(
        self,
        model: RamPlus,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        asset_chunk: int = 1024,
        work_budget: int = 32 * 1024 * 1024,
    ) -> None:
        if asset_chunk < 1 or work_budget < 1:
            raise ValueError("asset_chunk and work_budget must be >= 1")
        self.model = model.to(device=device, dtype=dtype).eval()
        self.device = torch.device(device)
        self.dtype = dtype
        self.asset_chunk = asset_chunk
        self.work_budget = work_budget
        self.embed_dim = int(model.wordvec_proj.in_features)
        self.num_heads = int(model.tagging_head.encoder.layer[0].crossattention.self.num_heads)

    # -- input checks -------------------------------------------------------------------------

    def _check(self, embeds: torch.Tensor, bank: LabelBank) -> None:
        if embeds.dim() != 3 or embeds.shape[-1] != self.embed_dim:
            raise ValueError(
                f"image embeddings must be (N, T, {self.embed_dim}), got {tuple(embeds.shape)}"
            )
        if bank.embeddings.shape[-1] != self.embed_dim:
            raise ValueError(
                f"label bank rows are {bank.embeddings.shape[-1]}-d; the model needs "
                f"{self.embed_dim}-d (was the bank encoded with this model's text encoder?)"
            )
        if not embeds.dtype.is_floating_point:
            raise TypeError(f"image embeddings must be floating point, got {embeds.dtype}")

    def _concept_chunk(self, n_assets: int, n_concepts: int) -> int:
        per_concept = max(1, n_assets * self.num_heads * self.embed_dim)
        return max(1, min(n_concepts, self.work_budget // per_concept))

    # -- fast path ----------------------------------------------------------------------------

    def _attention(
        self, layer: TaggingLayer, x: torch.Tensor, embeds: torch.Tensor
    ) -> torch.Tensor:
        """Cross-attention of (n, k, H) queries to E (n, T, C), in E's C-dim space."""
        sa = layer.crossattention.self
        n, k, hidden = x.shape
        heads, channels = sa.num_heads, embeds.shape[-1]
        head_dim = hidden // heads
        q = sa.query(x).view(n, k, heads, head_dim)
        w_k = sa.key.weight.view(heads, head_dim, channels)
        # W_k^T q per head, with the 1/sqrt(d) softmax scale folded in; q . b_k is dropped
        # because it is constant over tokens and cancels in the softmax.
        q_img = torch.einsum("nkhd,hdc->nhkc", q, w_k) * head_dim**-0.5
        scores = torch.bmm(q_img.reshape(n, heads * k, channels), embeds.transpose(1, 2))
        pooled = torch.bmm(scores.softmax(dim=-1), embeds)  # (n, heads*k, C): sum_j a_j e_j
        w_v = sa.value.weight.view(heads, head_dim, channels)
        values = torch.einsum("nhkc,hdc->nkhd", pooled.view(n, heads, k, channels), w_v)
        values = values + sa.value.bias.view(heads, head_dim)
        return layer.crossattention.output(values.reshape(n, k, hidden), x)

    def _fast_block(self, embeds: torch.Tensor, bank: LabelBank) -> torch.Tensor:
        x = self.model.tag_queries(embeds, bank)  # steps 5-6: (n, k, H)
        for layer in self.model.tagging_head.encoder.layer:
            x = self._attention(layer, x, embeds)
            x = layer.output(layer.intermediate(x), x)
        return self.model.fc(x).squeeze(-1)

    def _plain_block(self, embeds: torch.Tensor, bank: LabelBank) -> torch.Tensor:
        return self.model.logits_from_embeddings(embeds, bank)

    # -- public -------------------------------------------------------------------------------

    @torch.inference_mode()
    def logits(
        self,
        embeds: np.ndarray | torch.Tensor,
        bank: LabelBank,
        method: str = "fast",
    ) -> torch.Tensor:
        """Logits (N, K) of N assets' embeddings against a K-concept label bank.

        Args:
            embeds: E, (N, T, 512), float16 or float32 (numpy arrays and memmaps accepted).
            bank: the concepts (ragged description counts allowed).
            method: "fast" (query-side attention) or "plain" (the model's own head, reference).

        Returns:
            (N, K) float32 logits on the CPU.
        """
        if method not in ("fast", "plain"):
            raise ValueError(f"method must be 'fast' or 'plain', got {method!r}")
        embeds = _as_tensor(embeds)
        self._check(embeds, bank)
        block = self._fast_block if method == "fast" else self._plain_block
        bank = bank.to(self.device, self.dtype)
        out = torch.empty(embeds.shape[0], bank.num_tags, dtype=torch.float32)
        for start in range(0, embeds.shape[0], self.asset_chunk):
            chunk = embeds[start : start + self.asset_chunk].to(self.device, self.dtype)
            step = self._concept_chunk(chunk.shape[0], bank.num_tags)
            for k0 in range(0, bank.num_tags, step):
                sub = bank.select(slice(k0, k0 + step))
                part = block(chunk, sub)
                out[start : start + chunk.shape[0], k0 : k0 + step] = part.float().cpu()
        return out

    def stream(
        self,
        chunks: Iterable[tuple[np.ndarray, np.ndarray | torch.Tensor]],
        bank: LabelBank,
        method: str = "fast",
    ) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """Score a stream of ``(ids, E)`` chunks (e.g. a memory-mapped token store).

        Yields:
            ``(ids, logits)`` per input chunk, logits (n, K) float32.
        """
        for ids, embeds in chunks:
            yield ids, self.logits(embeds, bank, method=method)
