"""RAM++ model configurations as data.

A configuration splits into the vision trunk (a timm Swin Transformer), the tagging head and the
label bank. Registered configurations live as JSON files in ``ram_pp/configs/``; a custom JSON file
with the same fields can be given anywhere a name is accepted.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class VisionConfig:
    """Swin Transformer image encoder."""

    image_size: int = 384  # square input side in pixels (aspect ratio is not kept)
    patch_size: int = 4  # patch embedding stride
    window_size: int = 12  # attention window side, in tokens
    embed_dim: int = 192  # channels of stage 0; doubles at each later stage
    depths: tuple[int, ...] = (2, 2, 18, 2)  # blocks per stage
    num_heads: tuple[int, ...] = (6, 12, 24, 48)  # attention heads per stage
    mlp_ratio: float = 4.0  # block feed-forward width / channels

    @property
    def width(self) -> int:
        """Channels of the final stage (input width of ``image_proj``)."""
        return self.embed_dim * 2 ** (len(self.depths) - 1)

    @property
    def grid_size(self) -> int:
        """Side of the final token grid (12 for 384 px, patch 4, four stages)."""
        return self.image_size // self.patch_size // 2 ** (len(self.depths) - 1)

    @property
    def num_tokens(self) -> int:
        """Tokens the encoder returns: the grid plus the prepended mean token."""
        return self.grid_size**2 + 1


@dataclass(frozen=True)
class HeadConfig:
    """Cross-attention-only tagging head (BERT layer naming)."""

    embed_dim: int = 512  # width of image embeddings E and of label-bank rows
    hidden_size: int = 768  # query width inside the head
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 3072  # feed-forward width
    layer_norm_eps: float = 1e-12


@dataclass(frozen=True)
class LabelConfig:
    """Tag vocabulary and label bank layout."""

    num_tags: int = 4585
    descriptions_per_tag: int = 51  # rows of the label bank per tag (tag-major)
    vocabulary: str = "ram"  # "ram" = the built-in RAM++ list (first num_tags lines)


@dataclass(frozen=True)
class RamPlusConfig:
    """A complete RAM++ configuration."""

    name: str
    vision: VisionConfig = field(default_factory=VisionConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    labels: LabelConfig = field(default_factory=LabelConfig)
    text_encoder: str = "openai/clip-vit-base-patch16"  # encodes new concepts' descriptions
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (what ramdex stores inside its checkpoints)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RamPlusConfig:
        """Build from :meth:`to_dict` output or a config JSON file's content."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown config fields: {sorted(unknown)}")
        parts: dict[str, Any] = dict(data)
        for key, part in (("vision", VisionConfig), ("head", HeadConfig), ("labels", LabelConfig)):
            raw = dict(parts.get(key, {}))
            for name, value in raw.items():
                if isinstance(value, list):
                    raw[name] = tuple(value)
            parts[key] = part(**raw)
        for key in ("mean", "std"):
            if key in parts:
                parts[key] = tuple(parts[key])
        return cls(**parts)

    def replace(self, **changes: Any) -> RamPlusConfig:
        """A copy with top-level fields changed."""
        return RamPlusConfig.from_dict({**self.to_dict(), **changes})


def _config_dir() -> resources.abc.Traversable:
    return resources.files("ram_pp") / "configs"


def list_configs() -> list[str]:
    """Names of the registered configurations."""
    return sorted(p.name[:-5] for p in _config_dir().iterdir() if p.name.endswith(".json"))


def get_config(name_or_path: str | Path) -> RamPlusConfig:
    """A registered configuration by name, or a custom config JSON file by path."""
    path = Path(name_or_path)
    if path.suffix == ".json" and path.exists():
        data = json.loads(path.read_text())
        data.setdefault("name", path.stem)
        return RamPlusConfig.from_dict(data)
    entry = _config_dir() / f"{name_or_path}.json"
    if not entry.is_file():
        raise KeyError(
            f"unknown model config {str(name_or_path)!r}; registered: {', '.join(list_configs())}"
            " (or pass the path of a config .json file)"
        )
    data = json.loads(entry.read_text())
    data["name"] = str(name_or_path)
    return RamPlusConfig.from_dict(data)
