"""Build RAM++ models by config name and load them from checkpoint files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ram_pp.config import RamPlusConfig, get_config, list_configs
from ram_pp.convert import (
    CheckpointError,
    adapt_bias_tables,
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
    state = adapt_bias_tables(state, cfg)
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


DEMO_MODEL = "demo"


def demo_checkpoint() -> Path | None:
    """The bundled demo model file, when this build ships one."""
    from importlib import resources

    folder = resources.files("ram_pp") / "demo"
    for name in ("model.safetensors", "model.pth"):
        entry = folder / name
        if entry.is_file():
            return Path(str(entry))
    return None


def resolve_model(
    name: str | None = None,
    checkpoint: str | Path | None = None,
    cache_dir: Path | None = None,
    trust: bool = False,
) -> LoadedModel:
    """The model a user asked for, by checkpoint path or by name.

    ``name`` may be a published model (loaded from the download cache), ``demo`` (the bundled
    demo model), or a registered ``test_*`` config (random weights, for tests and benchmarks).
    With neither argument, the bundled demo model is used.

    Raises:
        CheckpointError: the file is unusable.
        LookupError: the named model is not available here; the message says what to do.
    """
    from ram_pp import pretrained

    if checkpoint is not None:
        return load_model(checkpoint, trust=trust)
    name = name or DEMO_MODEL
    if name == DEMO_MODEL:
        path = demo_checkpoint()
        if path is None:
            raise LookupError(
                "this build ships no demo model; run `ramdex train --preset demo` or pass "
                "--checkpoint PATH"
            )
        return load_model(path)
    if name in pretrained.PRETRAINED:
        path = pretrained.cached_path(name, cache_dir)
        if not path.is_file():
            raise LookupError(
                f"{name} is not downloaded yet: run `ramdex models download {name}`, or "
                + pretrained.manual_placement_hint(name, cache_dir)
            )
        return load_model(path, config=name, trust=trust)
    if name.startswith("test_") and name in list_configs():
        return random_model(name)
    raise LookupError(
        f"unknown model {name!r}; choose one of: {DEMO_MODEL}, "
        f"{', '.join(sorted(pretrained.PRETRAINED))}, or a test_* config, or pass --checkpoint PATH"
    )
