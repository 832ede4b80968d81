"""Build RAM++ models by config name and load them from checkpoint files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ram_pp.config import RamPlusConfig, get_config, list_configs
from ram_pp.convert import (
    CheckpointError,
    check_keys,
    infer_config,
    is_upstream_layout,
    read_checkpoint,
    upstream_to_timm,
)
from ram_pp.model import RamPlus
from ram_pp.vocab import TagVocabulary, vocabulary_for


@dataclass
class LoadedModel:
    """A model ready for inference with its config and vocabulary."""

    model: RamPlus
    config: RamPlusConfig
    vocabulary: TagVocabulary
    checkpoint: Path | None = None


def list_models() -> list[str]:
    """Names of the registered model configs."""
    return list_configs()


def create_model(config: str | Path | RamPlusConfig) -> RamPlus:
    """A randomly initialised model for a config name, config file or config object."""
    cfg = config if isinstance(config, RamPlusConfig) else get_config(config)
    return RamPlus(cfg)


def load_model(
    checkpoint: str | Path,
    config: str | Path | RamPlusConfig | None = None,
    trust: bool = False,
) -> LoadedModel:
    """Load a checkpoint: published ``.pth``, its safetensors export, or a ramdex-saved file.

    The config comes from, in order: the ``config`` argument, the file itself (ramdex checkpoints
    carry theirs), or the tensor shapes (published Swin-L and Swin-B layouts are recognised).

    Raises:
        CheckpointError: unreadable file, or keys that do not fit (all of them named).
    """
    path = Path(checkpoint)
    loaded = read_checkpoint(path, trust=trust)
    state = loaded.state_dict
    if config is not None:
        cfg = config if isinstance(config, RamPlusConfig) else get_config(config)
    elif loaded.config is not None:
        cfg = RamPlusConfig.from_dict(loaded.config)
    else:
        cfg = infer_config(state)
    if is_upstream_layout(state):
        state = upstream_to_timm(state, cfg)
    model = RamPlus(cfg)
    check_keys(model, state)
    model.load_state_dict(state)
    model.eval()
    if loaded.vocabulary is not None:
        vocab = TagVocabulary.from_dict(loaded.vocabulary)
    else:
        vocab = vocabulary_for(cfg.labels.vocabulary, cfg.labels.num_tags)
    if len(vocab) != cfg.labels.num_tags:
        raise CheckpointError(
            f"{path}: vocabulary has {len(vocab)} tags but the model has {cfg.labels.num_tags}"
        )
    return LoadedModel(model, cfg, vocab, path)


def random_model(config: str | Path | RamPlusConfig, seed: int = 0) -> LoadedModel:
    """A seeded random model with its built-in vocabulary (tests and benchmarks)."""
    cfg = config if isinstance(config, RamPlusConfig) else get_config(config)
    torch.manual_seed(seed)
    model = RamPlus(cfg).eval()
    return LoadedModel(model, cfg, vocabulary_for(cfg.labels.vocabulary, cfg.labels.num_tags))
