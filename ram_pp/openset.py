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

Each asset's token step (scores against E, softmax over tokens, weighted sum of E) is one fused
attention call per layer in float32 (``attention="fused"``) and two batched products in bf16
(``"bmm"``); see :class:`OpenSetScorer`.

Compute dtype: float32 is the exact reference (fast == plain == the model's forward to 1e-5).
bfloat16 is a separate mode for CPUs with native bf16 dot products (AVX512-BF16, AMX) and for
GPUs: E is converted once per chunk straight into bf16 (never into a float32 copy), the head's
weights are copied to bf16 once (the caller's model is never modified), and the matrix products
run in bf16 with float32 accumulation. The description re-weighting (step 5, a few thousand
multiply-adds per pair) and the softmaxes stay float32. :func:`resolve_score_dtype` picks the
mode for the ``auto`` setting.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ram_pp.labels import LabelBank, reweight_descriptions
from ram_pp.model import RamPlus, TaggingLayer

SCORE_DTYPES: tuple[str, ...] = ("auto", "float32", "bfloat16")
ATTENTION_KERNELS: tuple[str, ...] = ("auto", "bmm", "fused")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Assets converted at a time into the compute buffer, through a float32 staging block that stays
# in cache (4.75 MB): torch's direct float16 -> bfloat16 copy_ is not vectorised (26 us/asset
# here against 9 this way). 16 rather than 4: as fast, and 4x fewer parallel regions, which
# stall when the machine is oversubscribed.
_CONVERT_BLOCK = 16


def cpu_has_native_bf16() -> bool:
    """True when this CPU has bf16 dot-product instructions (AVX512-BF16 or AMX-BF16).

    Read from ``/proc/cpuinfo`` flags (Linux); torch's ``get_cpu_capability()`` only reports
    the vector width ("AVX512"), not the bf16 extension.
    """
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return bool({"avx512_bf16", "amx_bf16"} & flags)
    return False


def resolve_score_dtype(name: str, device: str | torch.device = "cpu") -> torch.dtype:
    """The compute dtype for a ``score_dtype`` setting.

    ``auto``: bfloat16 on CUDA and on CPUs with native bf16 (:func:`cpu_has_native_bf16`),
    where it is 2-5x faster than float32; float32 elsewhere (emulated bf16 is slower than
    float32 there). ``float32`` / ``bfloat16`` force the mode.
    """
    if name not in SCORE_DTYPES:
        raise ValueError(f"score dtype must be one of {', '.join(SCORE_DTYPES)}, got {name!r}")
    if name != "auto":
        return _DTYPES[name]
    kind = torch.device(device).type
    if kind == "cuda" or (kind == "cpu" and cpu_has_native_bf16()):
        return torch.bfloat16
    return torch.float32


@dataclass(frozen=True)
class Int8Embeds:
    """E as an int8 token store keeps it (per-token symmetric): E = q * scale[..., None].

    The scorer converts it a block at a time straight into its compute buffer (the same values
    as dequantizing to float32 first, without a float32 copy of the chunk); the float32
    reference dequantizes it exactly as ``indexer.token_store.dequantize_int8`` does.

    Attributes:
        q: (N, T, C) int8 (may be a strided view of the store's records).
        scale: (N, T) float32.
    """

    q: torch.Tensor
    scale: torch.Tensor

    @classmethod
    def from_numpy(cls, q: np.ndarray, scale: np.ndarray) -> Int8Embeds:
        """Wraps numpy arrays (views of structured records allowed) without copying."""
        return cls(torch.from_numpy(q), torch.from_numpy(np.asarray(scale, dtype=np.float32)))

    @property
    def shape(self) -> torch.Size:
        return self.q.shape

    def rows(self, start: int, stop: int) -> Int8Embeds:
        return Int8Embeds(self.q[start:stop], self.scale[start:stop])

    def dequantize_into(self, out: torch.Tensor) -> torch.Tensor:
        """E written into ``out`` (N, T, C) of any float dtype and device, block by block."""
        if out.dtype == torch.float32 and out.device.type == "cpu":
            return torch.mul(self.q, self.scale[..., None], out=out)
        for i in range(0, self.q.shape[0], _CONVERT_BLOCK):
            j = i + _CONVERT_BLOCK
            out[i:j].copy_(self.q[i:j].float().mul_(self.scale[i:j, :, None]))
        return out


Embeds = np.ndarray | torch.Tensor | Int8Embeds


def _as_tensor(embeds: Embeds) -> torch.Tensor | Int8Embeds:
    if isinstance(embeds, Int8Embeds):
        return embeds
    if isinstance(embeds, np.ndarray):
        if embeds.dtype.kind == "f" and embeds.flags.c_contiguous:
            return torch.from_numpy(embeds)
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


class _Head(nn.Module):
    """The parts of RAM++ that scoring uses (steps 5-8): float32 modules on the scoring device
    (the reference, and the residual stream / LayerNorms of the fast path) plus the matrices of
    the fast path in the compute dtype."""

    def __init__(self, model: RamPlus, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        ref = torch.float32
        same = all(p.device == device and p.dtype == ref for p in self._parts(model))
        # The caller's model is shared (tagging, other searchers): copy the head rather than
        # moving the model; no copy when it already is float32 on this device.
        take = (lambda m: m) if same else (lambda m: copy.deepcopy(m).to(device, ref))
        self.wordvec_proj = take(model.wordvec_proj)
        self.tagging_head = take(model.tagging_head)
        self.fc = take(model.fc)
        self.dtype = dtype
        self.log_scale = model.reweight_scale.detach().to(device, ref)
        self.layers: list[TaggingLayer] = list(self.tagging_head.encoder.layer)
        sa = self.layers[0].crossattention.self
        self.num_heads = int(sa.num_heads)
        self.hidden = int(sa.query.out_features)
        self.embed_dim = int(sa.key.in_features)
        head_dim = self.hidden // self.num_heads
        shape = (self.num_heads, head_dim, self.embed_dim)
        # Per layer: W_k per head with the 1/sqrt(d) softmax scale folded in, W_v per head
        # (float32 only: the fast dtypes use the folded projections below instead).
        exact = dtype == torch.float32
        self.w_k = [
            (layer.crossattention.self.key.weight.view(shape) * head_dim**-0.5).detach().to(dtype)
            for layer in self.layers
            if exact
        ]
        self.w_v = [
            layer.crossattention.self.value.weight.view(shape).detach().to(dtype)
            for layer in self.layers
            if exact
        ]
        # Weight matrices of every Linear in the compute dtype (the same tensors in float32).
        self._weights = {
            id(m): m.weight.detach().to(dtype) for m in self.modules() if isinstance(m, nn.Linear)
        }
        self._biases = {
            id(m): m.bias.detach().to(dtype) for m in self.modules() if isinstance(m, nn.Linear)
        }
        # The folded attention projections of the fast dtype (:meth:`_fold`), one set per layer.
        self.folded_layers = [] if exact else [self._fold(i) for i in range(len(self.layers))]

    @torch.no_grad()
    def _fold(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Layer i's attention projections folded into two matrices (products in float32, then
        rounded once to the compute dtype).

        q_img_h = W_k,h^T (W_q,h x + b_q,h) / sqrt(d) for every head h is one GEMM with
        A = [W_k,h^T W_q,h / sqrt(d)]_h (heads*C, H); the output block's dense layer of the
        per-head values, W_o [W_v,h p_h + b_v,h]_h + b_o, is one GEMM with
        B = [W_o[:, h] W_v,h]_h (H, heads*C) and the bias W_o b_v + b_o. 1.6x the multiply-adds
        of the four separate products, but two large GEMMs instead of two GEMMs and two batched
        einsums with permuted copies: those phases 1.2-1.3x faster in bf16 on an AMX CPU, and
        one rounding to bf16 instead of two (top-100 agreement with float32 0.987 -> 0.993;
        docs/retroactive.md, session 9). Products in float64, so the fold adds no error.
        """
        layer = self.layers[i]
        sa = layer.crossattention.self
        dense = layer.crossattention.output.dense
        heads, hidden, channels = self.num_heads, self.hidden, self.embed_dim
        d = hidden // heads
        w_q = sa.query.weight.double().view(heads, d, hidden)
        b_q = sa.query.bias.double().view(heads, d)
        w_k = sa.key.weight.double().view(heads, d, channels) * d**-0.5
        w_v = sa.value.weight.double().view(heads, d, channels)
        w_o = dense.weight.double().view(hidden, heads, d)
        a = torch.einsum("hdc,hdi->hci", w_k, w_q).reshape(heads * channels, hidden)
        a_bias = torch.einsum("hdc,hd->hc", w_k, b_q).reshape(heads * channels)
        b = torch.einsum("ohd,hdc->ohc", w_o, w_v).reshape(hidden, heads * channels)
        b_bias = dense.weight.double() @ sa.value.bias.double() + dense.bias.double()
        dt = self.dtype
        return a.to(dt), a_bias.to(dt), b.to(dt), b_bias.float()

    @staticmethod
    def _parts(model: RamPlus) -> Iterator[torch.Tensor]:
        for module in (model.wordvec_proj, model.tagging_head, model.fc):
            yield from module.parameters()

    def linear(self, x: torch.Tensor, module: nn.Linear, out: torch.dtype) -> torch.Tensor:
        """``module(x)`` as a GEMM in the compute dtype; the bias is added in ``out``."""
        if self.dtype == torch.float32:
            return module(x)
        # contiguous: a transposed bf16 input sends oneDNN to a slow path (10x here)
        x = x.to(self.dtype).contiguous()
        if out == self.dtype:  # the bias fused into the GEMM (one pass less over the output)
            return F.linear(x, self._weights[id(module)], self._biases[id(module)])
        return F.linear(x, self._weights[id(module)]).to(out) + module.bias.to(out)

    def add_norm(self, block: nn.Module, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """An output block (dense, residual add, LayerNorm) with the residual in float32."""
        if self.dtype == torch.float32:
            return block(x, residual)
        return block.LayerNorm(self.linear(x, block.dense, torch.float32) + residual)

    def queries(self, embeds: torch.Tensor, bank: LabelBank) -> torch.Tensor:
        """Steps 5-6 (float32 (n, k, H)): re-weighting in float32 (a softmax, and cheap), then
        ReLU(wordvec_proj)."""
        reweighted = reweight_descriptions(embeds[:, 0].float(), bank, self.log_scale)
        return F.relu(self.linear(reweighted, self.wordvec_proj, torch.float32))

    def plain(self, embeds: torch.Tensor, bank: LabelBank) -> torch.Tensor:
        """The model's own head in float32 (key/value projections of every token): the
        reference, whatever the compute dtype."""
        embeds = embeds.float()
        reweighted = reweight_descriptions(embeds[:, 0], bank, self.log_scale)
        queries = F.relu(self.wordvec_proj(reweighted))
        return self.fc(self.tagging_head(queries, embeds)).squeeze(-1)


class OpenSetScorer:
    """Scores label banks against stored image embeddings with a RAM++ model's head.

    Args:
        model: a RAM++ model; only ``reweight_scale``, ``wordvec_proj``, ``tagging_head`` and
            ``fc`` are used (the image encoder may be anything). It is never modified.
        device: where to compute.
        dtype: compute dtype: float32 (exact reference), bfloat16 (fast mode on CPUs with native
            bf16 and on GPUs), or a ``score_dtype`` setting name ("auto", "float32",
            "bfloat16"; :func:`resolve_score_dtype`).
        asset_chunk: assets per batch. Each batch's E is converted into one reused buffer in
            ``dtype``; 256 keeps every per-batch tensor under glibc's 32 MB mmap threshold (no
            page faults from fresh maps) while the feed-forward still runs as a GEMM of
            256 x concepts rows.
        work_budget: largest number of elements of the per-chunk (assets x heads x concepts x 512)
            work tensors; concepts are split to stay under it.
        attention: how ``softmax(q_img E^T) E`` over each asset's tokens is computed: "fused"
            (one ``scaled_dot_product_attention`` call per layer: the scores stay in cache and
            E is read once per layer), "bmm" (scores, softmax and the weighted sum as two
            batched products over the chunk, the session-5 kernel), or "auto": fused in
            float32, bmm in bf16 (where it measured faster than the CPU's fused kernel on a
            CPU with native bf16 and no AMX, docs/retroactive.md session 4). Both are exact
            to float rounding (tests/test_openset.py).
    """

    def __init__(
        self,
        model: RamPlus,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str = torch.float32,
        asset_chunk: int = 256,
        work_budget: int = 32 * 1024 * 1024,
        attention: str = "auto",
    ) -> None:
        if asset_chunk < 1 or work_budget < 1:
            raise ValueError("asset_chunk and work_budget must be >= 1")
        self.device = torch.device(device)
        if isinstance(dtype, str):
            dtype = resolve_score_dtype(dtype, self.device)
        self.dtype = dtype
        self.model = model
        self.head = _Head(model, self.device, dtype).eval()
        if attention not in ATTENTION_KERNELS:
            raise ValueError(f"attention must be one of {', '.join(ATTENTION_KERNELS)}")
        if attention == "auto":
            attention = "fused" if dtype == torch.float32 else "bmm"
        self.attention = attention
        self.asset_chunk = asset_chunk
        self.work_budget = work_budget
        self.embed_dim = self.head.embed_dim
        self.num_heads = self.head.num_heads
        self.profile: dict[str, float] | None = None  # set to {} to time phases (seconds)
        self._local = threading.local()  # per-thread conversion buffer

    # -- input checks -------------------------------------------------------------------------

    def _check(self, embeds: torch.Tensor | Int8Embeds, bank: LabelBank) -> None:
        if isinstance(embeds, Int8Embeds):
            q, scale = embeds.q, embeds.scale
            if q.dtype != torch.int8 or scale.shape != q.shape[:2] or scale.dtype != torch.float32:
                raise TypeError("Int8Embeds needs q (N, T, C) int8 and scale (N, T) float32")
            embeds = q
        elif not embeds.dtype.is_floating_point:
            raise TypeError(f"image embeddings must be floating point, got {embeds.dtype}")
        if embeds.dim() != 3 or embeds.shape[-1] != self.embed_dim:
            raise ValueError(
                f"image embeddings must be (N, T, {self.embed_dim}), got {tuple(embeds.shape)}"
            )
        if bank.embeddings.shape[-1] != self.embed_dim:
            raise ValueError(
                f"label bank rows are {bank.embeddings.shape[-1]}-d; the model needs "
                f"{self.embed_dim}-d (was the bank encoded with this model's text encoder?)"
            )

    def _concept_chunk(self, n_assets: int, n_concepts: int) -> int:
        per_concept = max(1, n_assets * self.num_heads * self.embed_dim)
        return max(1, min(n_concepts, self.work_budget // per_concept))

    @contextmanager
    def _phase(self, name: str):
        if self.profile is None:
            yield
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.profile[name] = self.profile.get(name, 0.0) + time.perf_counter() - t0

    # -- E in the compute dtype ---------------------------------------------------------------

    def to_compute(self, embeds: Embeds) -> torch.Tensor:
        """E (N, T, C) as a new tensor in the compute dtype and device (e.g. to keep it hot)."""
        embeds = _as_tensor(embeds)
        if isinstance(embeds, Int8Embeds):
            out = torch.empty(embeds.shape, dtype=self.dtype, device=self.device)
            return embeds.dequantize_into(out)
        if embeds.dtype == self.dtype and embeds.device == self.device:
            return embeds.contiguous()
        out = torch.empty(embeds.shape, dtype=self.dtype, device=self.device)
        return self._convert_into(embeds, out)

    def _convert_into(self, src: torch.Tensor | Int8Embeds, out: torch.Tensor) -> torch.Tensor:
        if isinstance(src, Int8Embeds):
            return src.dequantize_into(out)
        if self.device.type != "cpu" or src.dtype in (self.dtype, torch.float32):
            out.copy_(src)  # one vectorised pass (or a host-to-device copy)
            return out
        for i in range(0, src.shape[0], _CONVERT_BLOCK):  # through a cached float32 block
            out[i : i + _CONVERT_BLOCK].copy_(src[i : i + _CONVERT_BLOCK].float())
        return out

    def _chunk(self, embeds: torch.Tensor | Int8Embeds, start: int) -> torch.Tensor:
        """Assets start..start+asset_chunk in the compute dtype: a view when E already is,
        else converted into this thread's reused buffer (never a float32 copy in bf16 mode)."""
        stop = start + self.asset_chunk
        if isinstance(embeds, Int8Embeds):
            part = embeds.rows(start, stop)
        else:
            part = embeds[start:stop]
            if part.dtype == self.dtype and part.device == self.device:
                return part
        with self._phase("convert"):
            shape = (self.asset_chunk, *part.shape[1:])
            buf = getattr(self._local, "buf", None)
            if buf is None or buf.shape != shape or buf.dtype != self.dtype:
                buf = torch.empty(shape, dtype=self.dtype, device=self.device)
                self._local.buf = buf
            return self._convert_into(part, buf[: part.shape[0]])

    # -- fast path ----------------------------------------------------------------------------

    def _attention(self, i: int, x: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        """Cross-attention of layer i's (n, k, H) queries to E (n, T, C), in E's C-dim space."""
        head = self.head
        layer = head.layers[i]
        sa = layer.crossattention.self
        n, k, hidden = x.shape
        heads, channels = head.num_heads, embeds.shape[-1]
        with self._phase("attn_query"):
            q = head.linear(x, sa.query, self.dtype).view(n, k, heads, hidden // heads)
            # W_k^T q per head (scale folded into w_k); q . b_k is dropped because it is
            # constant over tokens and cancels in the softmax.
            q_img = torch.einsum("nkhd,hdc->nhkc", q, head.w_k[i])
        # sum_j softmax_j(q_img . e_j) e_j: (n, heads*k, C)
        pooled = self._pool_tokens(q_img.reshape(n, heads * k, channels), embeds)
        with self._phase("attn_values"):
            values = torch.einsum("nhkc,hdc->nkhd", pooled.view(n, heads, k, channels), head.w_v[i])
            values = values.to(x.dtype) + sa.value.bias.view(heads, hidden // heads)
            return head.add_norm(layer.crossattention.output, values.reshape(n, k, hidden), x)

    def _attention_folded(self, i: int, x: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        """:meth:`_attention` in the fast dtype with the projections folded (``_Head._fold``):
        one GEMM to every head's 512-d image-side query, the token step, one GEMM back."""
        head = self.head
        a, a_bias, b, b_bias = head.folded_layers[i]
        n, k, hidden = x.shape
        channels = embeds.shape[-1]
        with self._phase("attn_query"):
            # rows ordered (concept, head) per asset: any order works for the token step, and
            # this one makes both reshapes free views
            q_img = F.linear(x.reshape(n * k, hidden).to(self.dtype), a, a_bias)
        pooled = self._pool_tokens(q_img.view(n, k * head.num_heads, channels), embeds)
        with self._phase("attn_values"):
            out = F.linear(pooled.reshape(n * k, -1), b).to(torch.float32) + b_bias
            block = head.layers[i].crossattention.output
            return block.LayerNorm(out.view(n, k, hidden) + x)

    def _pool_tokens(self, q_img: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        """softmax(q_img E^T) E per asset: (n, m, C) queries, (n, T, C) tokens -> (n, m, C)."""
        if self.attention == "fused":
            # One fused kernel per asset block: the scores never leave the cache and E is read
            # once per layer instead of twice (scores, then the weighted sum).
            with self._phase("attn_fused"):
                return F.scaled_dot_product_attention(
                    q_img[:, None], embeds[:, None], embeds[:, None], scale=1.0
                )[:, 0]
        with self._phase("attn_scores"):
            scores = torch.bmm(q_img, embeds.transpose(1, 2))
        with self._phase("attn_softmax"):
            weights = scores.softmax(dim=-1)
        with self._phase("attn_sum"):
            return torch.bmm(weights, embeds)

    def _fast_block(self, embeds: torch.Tensor, bank: LabelBank) -> torch.Tensor:
        head = self.head
        with self._phase("queries"):
            x = head.queries(embeds, bank)  # steps 5-6: (n, k, H), float32 residual stream
        folded = bool(head.folded_layers)
        for i, layer in enumerate(head.layers):
            if folded:
                x = self._attention_folded(i, x, embeds)
            else:
                x = self._attention(i, x, embeds)
            with self._phase("ffn"):
                inner = F.gelu(head.linear(x, layer.intermediate.dense, self.dtype))
                x = head.add_norm(layer.output, inner, x)
        with self._phase("fc"):
            return self.head.fc(x).squeeze(-1)

    def _plain_block(self, embeds: torch.Tensor, bank: LabelBank) -> torch.Tensor:
        with self._phase("plain"):
            return self.head.plain(embeds, bank)

    # -- public -------------------------------------------------------------------------------

    @torch.inference_mode()
    def logits(
        self,
        embeds: Embeds,
        bank: LabelBank,
        method: str = "fast",
    ) -> torch.Tensor:
        """Logits (N, K) of N assets' embeddings against a K-concept label bank.

        Args:
            embeds: E, (N, T, 512): float16, bfloat16 or float32 (numpy arrays and memmaps
                accepted), or :class:`Int8Embeds` as an int8 store holds it; converted a chunk
                at a time into the compute dtype, or used as is
                when already in it (see :meth:`to_compute`).
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
        bank = bank.to(self.device, torch.float32)  # re-weighting runs in float32
        out = torch.empty(embeds.shape[0], bank.num_tags, dtype=torch.float32)
        for start in range(0, embeds.shape[0], self.asset_chunk):
            if method == "fast":
                chunk = self._chunk(embeds, start)
            elif isinstance(embeds, Int8Embeds):  # the reference: E dequantized to float32
                part = embeds.rows(start, start + self.asset_chunk)
                chunk = part.dequantize_into(torch.empty(part.shape)).to(self.device)
            else:  # the reference reads E as given (float32 compute)
                chunk = embeds[start : start + self.asset_chunk].to(self.device, torch.float32)
            step = self._concept_chunk(chunk.shape[0], bank.num_tags)
            for k0 in range(0, bank.num_tags, step):
                sub = bank.select(slice(k0, k0 + step))
                part = block(chunk, sub)
                out[start : start + chunk.shape[0], k0 : k0 + step] = part.float().cpu()
        return out

    def stream(
        self,
        chunks: Iterable[tuple[np.ndarray, Embeds]],
        bank: LabelBank,
        method: str = "fast",
    ) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """Score a stream of ``(ids, E)`` chunks (e.g. a memory-mapped token store).

        Yields:
            ``(ids, logits)`` per input chunk, logits (n, K) float32.
        """
        for ids, embeds in chunks:
            yield ids, self.logits(embeds, bank, method=method)
