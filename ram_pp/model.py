"""The RAM++ model: Swin image encoder, image projection, label bank and tagging head.

Parameter names follow the published checkpoint (``visual_encoder.*`` after the Swin key remap in
:mod:`ram_pp.convert`, ``image_proj``, ``label_embed``, ``reweight_scale``, ``wordvec_proj``,
``tagging_head.encoder.layer.{i}.*``, ``fc``), so a published state dict loads strictly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformer, window_partition, window_reverse
from torch import nn

from ram_pp.config import HeadConfig, RamPlusConfig, VisionConfig
from ram_pp.labels import LabelBank, reweight_descriptions


class SwinEncoder(SwinTransformer):
    """timm Swin trunk returning flattened tokens with their mean prepended: (B, 1 + HW, C).

    A subclass rather than a wrapper, so parameter names stay ``visual_encoder.layers...`` as in
    the published checkpoint (after the downsample remap).

    In eval mode the window attention runs fused (:func:`F.scaled_dot_product_attention`) with
    the relative-position bias and the shifted-window mask added once into one cached
    (windows, heads, N, N) tensor in the compute dtype. timm's own (upstream's) arithmetic adds
    a float32 bias and mask to every window of every image, which under bfloat16 autocast
    promotes the whole attention matrix to float32: that alone was 60-70% of a bf16 Swin-L
    forward on this CPU. :meth:`forward_reference` keeps the stock path (training always uses
    it; the benchmark's upstream-style baseline and the equivalence tests call it).
    """

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__(
            img_size=cfg.image_size,
            patch_size=cfg.patch_size,
            window_size=cfg.window_size,
            embed_dim=cfg.embed_dim,
            depths=cfg.depths,
            num_heads=cfg.num_heads,
            mlp_ratio=cfg.mlp_ratio,
            qkv_bias=True,
            num_classes=0,
            global_pool="",
        )
        self.fast_attention = True  # eval-mode fused window attention (see the class doc)
        # (block index, dtype, device) -> (table version, bias + mask); not a buffer, so the
        # state dict (and the published checkpoint's key list) is unchanged.
        self._attn_bias: dict[tuple[int, torch.dtype, torch.device], tuple[int, torch.Tensor]] = {}

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.training or not self.fast_attention:
            return self.forward_reference(pixels)
        x = self.patch_embed(pixels)  # (B, H, W, C)
        index = 0
        for stage in self.layers:
            x = stage.downsample(x)
            for block in stage.blocks:
                x = self._block(index, block, x)
                index += 1
        return self._tokens(self.norm(x))

    def forward_reference(self, pixels: torch.Tensor) -> torch.Tensor:
        """timm's stock forward (upstream's window attention arithmetic)."""
        return self._tokens(self.forward_features(pixels))  # final LayerNorm applied

    @staticmethod
    def _tokens(grid: torch.Tensor) -> torch.Tensor:
        tokens = grid.flatten(1, 2)
        return torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)

    def _block(self, index: int, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if getattr(block, "dynamic_mask", False):  # masks computed per input: timm's path
            return block(x)
        b, h, w, c = x.shape
        x = x + self._window_attention(index, block, block.norm1(x))
        x = x.reshape(b, -1, c)
        x = x + block.mlp(block.norm2(x))
        return x.reshape(b, h, w, c)

    def _window_attention(self, index: int, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Shifted-window attention of one block, as timm's ``_attn`` computes it."""
        b, h, w, c = x.shape
        wh, ww = block.window_size
        sh, sw = block.shift_size
        shifted = bool(sh or sw)
        if shifted:
            x = torch.roll(x, shifts=(-sh, -sw), dims=(1, 2))
        pad_h, pad_w = (wh - h % wh) % wh, (ww - w % ww) % ww
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        hp, wp = h + pad_h, w + pad_w
        windows = window_partition(x, (wh, ww)).view(-1, wh * ww, c)
        attn = block.attn
        n = wh * ww
        qkv = attn.qkv(windows).reshape(-1, n, 3, attn.num_heads, c // attn.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B * nW, heads, N, d)
        bias = self._bias(index, block, q.dtype, q.device)  # (nW or 1, heads, N, N)
        out = _biased_attention(q, k, v, bias, b)
        out = attn.proj(out.transpose(1, 2).reshape(-1, n, c))
        x = window_reverse(out.view(-1, wh, ww, c), (wh, ww), hp, wp)[:, :h, :w, :]
        if shifted:
            x = torch.roll(x, shifts=(sh, sw), dims=(1, 2))
        return x.contiguous()

    def prepare_attention(self, dtype: torch.dtype, device: torch.device) -> None:
        """Fill the bias cache for ``dtype`` on ``device`` (before :func:`torch.compile`, so
        the compiled graph finds it instead of recompiling once it is filled)."""
        with torch.no_grad():
            index = 0
            for stage in self.layers:
                for block in stage.blocks:
                    self._bias(index, block, dtype, device)
                    index += 1

    def _bias(
        self, index: int, block: nn.Module, dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor:
        """Relative-position bias plus shifted-window mask, (nW or 1, heads, N, N), cached.

        Recomputed when the bias table changes in place (a state dict loaded later); never
        cached while autograd records (the table would need its gradient).
        """
        table = block.attn.relative_position_bias_table
        key = (index, dtype, device)
        recording = torch.is_grad_enabled() and table.requires_grad
        cached = None if recording else self._attn_bias.get(key)
        if cached is not None and cached[0] == table._version:
            return cached[1]
        bias = block.attn._get_rel_pos_bias()  # (1, heads, N, N), float32 like the table
        if block.attn_mask is not None:
            bias = bias + block.attn_mask.to(bias).unsqueeze(1)  # (nW, heads, N, N)
        bias = bias.to(dtype)
        if not recording:
            self._attn_bias[key] = (table._version, bias)
        return bias


def _biased_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, images: int
) -> torch.Tensor:
    """Fused attention of (images * nW, heads, N, d) windows with a per-window bias.

    On CPU one call per image, so the (nW, heads, N, N) bias is read as is (expanding it to
    every image of the batch cost more than the attention, and SDPA broadcasts only size-1
    dimensions). Elsewhere one call, with windows folded into the head dimension so the bias
    broadcasts over the batch (a copy of q, k, v, cheap on a GPU).
    """
    windows = bias.shape[0]
    if windows == 1:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    if q.device.type == "cpu":
        parts = [
            F.scaled_dot_product_attention(
                q[i * windows : (i + 1) * windows],
                k[i * windows : (i + 1) * windows],
                v[i * windows : (i + 1) * windows],
                attn_mask=bias,
            )
            for i in range(images)
        ]
        return torch.cat(parts)
    heads, n, d = q.shape[1:]

    def fold(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(images, windows * heads, n, d)

    mask = bias.reshape(1, windows * heads, n, n)
    out = F.scaled_dot_product_attention(fold(q), fold(k), fold(v), attn_mask=mask)
    return out.view(images * windows, heads, n, d)


class CrossAttentionSelf(nn.Module):
    """Query/key/value projections (``crossattention.self``)."""

    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.embed_dim, cfg.hidden_size)
        self.value = nn.Linear(cfg.embed_dim, cfg.hidden_size)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, -1).transpose(1, 2)

    def forward(self, queries: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        q = self.split_heads(self.query(queries))
        k = self.split_heads(self.key(image_embeds))
        v = self.split_heads(self.value(image_embeds))
        out = F.scaled_dot_product_attention(q, k, v)  # softmax over all image tokens, no mask
        return out.transpose(1, 2).flatten(2)


class AddNorm(nn.Module):
    """Dense projection, residual add, LayerNorm (BERT's ``*Output`` blocks)."""

    def __init__(self, in_features: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class CrossAttention(nn.Module):
    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__()
        self.self = CrossAttentionSelf(cfg)
        self.output = AddNorm(cfg.hidden_size, cfg.hidden_size, cfg.layer_norm_eps)

    def forward(self, queries: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(queries, image_embeds), queries)


class Intermediate(nn.Module):
    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))  # exact (erf) GELU


class TaggingLayer(nn.Module):
    """Cross-attention to the image tokens, then a feed-forward block. No self-attention."""

    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__()
        self.crossattention = CrossAttention(cfg)
        self.intermediate = Intermediate(cfg)
        self.output = AddNorm(cfg.intermediate_size, cfg.hidden_size, cfg.layer_norm_eps)

    def forward(self, queries: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        x = self.crossattention(queries, image_embeds)
        return self.output(self.intermediate(x), x)


class TaggingEncoder(nn.Module):
    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(TaggingLayer(cfg) for _ in range(cfg.num_layers))


class TaggingHead(nn.Module):
    """Stack of cross-attention layers (keys ``tagging_head.encoder.layer.{i}.*``)."""

    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__()
        self.encoder = TaggingEncoder(cfg)

    def forward(self, queries: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        x = queries
        for layer in self.encoder.layer:
            x = layer(x, image_embeds)
        return x


class RamPlus(nn.Module):
    """RAM++ (Recognize Anything Plus): open-set image tagging.

    ``forward(pixels)`` returns the tag logits (B, num_tags). The parts can be run separately:
    :meth:`encode_image` gives the image embeddings E (B, T, 512) and
    :meth:`logits_from_embeddings` scores E against any label bank, which is all that open-set
    ("retroactive") scoring needs.
    """

    def __init__(self, cfg: RamPlusConfig) -> None:
        super().__init__()
        self.config = cfg
        head, labels = cfg.head, cfg.labels
        self.visual_encoder = SwinEncoder(cfg.vision)
        self.image_proj = nn.Linear(cfg.vision.width, head.embed_dim)
        self.label_embed = nn.Parameter(
            torch.zeros(labels.num_tags * labels.descriptions_per_tag, head.embed_dim)
        )
        self.reweight_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.wordvec_proj = nn.Linear(head.embed_dim, head.hidden_size)
        self.tagging_head = TaggingHead(head)
        self.fc = nn.Linear(head.hidden_size, 1)
        nn.init.normal_(self.label_embed, std=0.02)

    @property
    def label_bank(self) -> LabelBank:
        """The built-in label bank (one group of descriptions per tag)."""
        return LabelBank.from_flat(self.label_embed, self.config.labels.descriptions_per_tag)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Image embeddings E: (B, 1 + grid^2, embed_dim); token 0 is the mean token."""
        return self.image_proj(self.visual_encoder(pixels))

    def tag_queries(self, image_embeds: torch.Tensor, bank: LabelBank) -> torch.Tensor:
        """Per-image tag queries (B, K, hidden) from description re-weighting (steps 5-6)."""
        reweighted = reweight_descriptions(image_embeds[:, 0], bank, self.reweight_scale)
        return F.relu(self.wordvec_proj(reweighted))

    def logits_from_embeddings(
        self,
        image_embeds: torch.Tensor,
        bank: LabelBank | None = None,
        tag_chunk: int | None = None,
    ) -> torch.Tensor:
        """Tag logits (B, K) for image embeddings E against a label bank (steps 5-8).

        Args:
            image_embeds: E, (B, T, embed_dim).
            bank: label bank; the model's own tags when None.
            tag_chunk: score at most this many tags at once to bound memory; None = all.
        """
        bank = self.label_bank if bank is None else bank
        bank = bank.to(image_embeds.device)
        chunk = tag_chunk or bank.num_tags
        parts = []
        for start in range(0, bank.num_tags, chunk):
            sub = bank.select(slice(start, start + chunk))
            queries = self.tag_queries(image_embeds, sub)
            hidden = self.tagging_head(queries, image_embeds)
            parts.append(self.fc(hidden).squeeze(-1))
        return torch.cat(parts, dim=1)

    def forward(self, pixels: torch.Tensor, bank: LabelBank | None = None) -> torch.Tensor:
        return self.logits_from_embeddings(self.encode_image(pixels), bank)
