"""The RAM++ model: Swin image encoder, image projection, label bank and tagging head.

Parameter names follow the published checkpoint (``visual_encoder.*`` after the Swin key remap in
:mod:`ram_pp.convert`, ``image_proj``, ``label_embed``, ``reweight_scale``, ``wordvec_proj``,
``tagging_head.encoder.layer.{i}.*``, ``fc``), so a published state dict loads strictly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformer
from torch import nn

from ram_pp.config import HeadConfig, RamPlusConfig, VisionConfig
from ram_pp.labels import LabelBank, reweight_descriptions


class SwinEncoder(SwinTransformer):
    """timm Swin trunk returning flattened tokens with their mean prepended: (B, 1 + HW, C).

    A subclass rather than a wrapper, so parameter names stay ``visual_encoder.layers...`` as in
    the published checkpoint (after the downsample remap).
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

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        grid = self.forward_features(pixels)  # (B, H, W, C), final LayerNorm applied
        tokens = grid.flatten(1, 2)
        return torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)


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
