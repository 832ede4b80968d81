"""Build RAM++ models by config name and load them from checkpoint files."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

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


# ---------- describing a model to a person ----------
DEMO_DISPLAY_NAME = "ramdex-demo"
DEMO_NOTICE = (
    "demo model: {tags} synthetic tags (shapes, colours, counts), not real photographs; "
    "for real photos run `ramdex models download`"
)
SHORT_DIGEST = 12  # hex digits shown beside a name (and used in stored model ids)


@dataclass(frozen=True)
class ModelDescription:
    """What a person is told about a model.

    Attributes:
        name: human name: ``ramdex-demo``, a registered name (``ram_plus_swin_large_14m``,
            ``test_*``) or a custom checkpoint's file name.
        digest: sha256 hex digest of the weights file (None for random test weights, or when the
            file is not on this machine).
        is_demo: the bundled demo model (40 synthetic tags, nothing about photographs).
        num_tags: tags in its vocabulary (None when unknown without loading the weights).
        has_chinese: the vocabulary has Chinese names (not just the English names repeated).
        checkpoint: the weights file, when there is one.
    """

    name: str
    digest: str | None
    is_demo: bool
    num_tags: int | None
    has_chinese: bool
    checkpoint: Path | None = None

    @property
    def short_digest(self) -> str | None:
        """The first 12 hex digits of the digest."""
        return self.digest[:SHORT_DIGEST] if self.digest else None

    @property
    def label(self) -> str:
        """``name (digest)`` where the identity of the weights matters, else the name."""
        return f"{self.name} ({self.short_digest})" if self.digest else self.name

    @property
    def notice(self) -> str | None:
        """One line saying what the demo model is (None for other models)."""
        if not self.is_demo:
            return None
        return DEMO_NOTICE.format(tags=self.num_tags if self.num_tags is not None else "its")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (the checkpoint path is left out: it may be a server path)."""
        return {
            "name": self.name,
            "digest": self.short_digest,
            "is_demo": self.is_demo,
            "num_tags": self.num_tags,
            "has_chinese": self.has_chinese,
            "notice": self.notice,
        }


def has_chinese_names(vocabulary: TagVocabulary) -> bool:
    """Whether any tag has a Chinese name of its own (vocabularies without Chinese names carry
    the English names in their place)."""
    pairs = zip(vocabulary.english, vocabulary.chinese, strict=True)
    return any(zh and zh != en for en, zh in pairs)


@lru_cache(maxsize=4)
def _demo_digest(path: str, size: int, mtime_ns: int) -> str:
    from ram_pp.pretrained import sha256_file

    return sha256_file(Path(path))


def is_demo_checkpoint(path: str | Path, digest: str | None = None) -> bool:
    """Whether ``path`` holds the bundled demo model: the bundled file itself or a copy of it
    (same size and sha256; ``digest`` saves hashing ``path`` again)."""
    demo = demo_checkpoint()
    path = Path(path)
    if demo is None or not path.is_file():
        return False
    if path.resolve() == demo.resolve():
        return True
    stat = demo.stat()
    if path.stat().st_size != stat.st_size:
        return False
    from ram_pp.pretrained import sha256_file

    expected = _demo_digest(str(demo.resolve()), stat.st_size, stat.st_mtime_ns)
    return (digest or sha256_file(path)) == expected


def display_name(
    name: str | None = None, checkpoint: str | Path | None = None, is_demo: bool = False
) -> str:
    """The human name of a model: ``ramdex-demo`` for the demo model, else the registered name
    it was asked for, else the checkpoint's file name."""
    if is_demo or (checkpoint is None and (name or DEMO_MODEL) == DEMO_MODEL):
        return DEMO_DISPLAY_NAME
    if name and name != DEMO_MODEL:
        return name
    if checkpoint is not None:
        return Path(checkpoint).name
    return DEMO_DISPLAY_NAME


def describe_model(
    loaded: LoadedModel,
    name: str | None = None,
    digest: str | None = None,
    hash_file: bool = True,
) -> ModelDescription:
    """Describe a loaded model (``name``: the name it was asked for; ``digest``: its file's
    sha256, computed here when the model came from a file and none is given, unless
    ``hash_file`` is off: a 3 GB checkpoint takes seconds to hash, and only a file of the demo
    model's size is then hashed to tell whether it is the demo model)."""
    path = loaded.checkpoint
    if digest is None and hash_file and path is not None and path.is_file():
        from ram_pp.pretrained import sha256_file

        digest = sha256_file(path)
    demo = path is not None and is_demo_checkpoint(path, digest)
    return ModelDescription(
        name=display_name(name or (None if path else loaded.config.name), path, demo),
        digest=digest,
        is_demo=demo,
        num_tags=len(loaded.vocabulary),
        has_chinese=has_chinese_names(loaded.vocabulary),
        checkpoint=path,
    )


def _config_vocabulary(config: str) -> TagVocabulary:
    cfg = get_config(config)
    return vocabulary_for(cfg.labels.vocabulary, cfg.labels.num_tags)


def _peek_vocabulary(path: Path) -> TagVocabulary | None:
    """A checkpoint's vocabulary without building the model: safetensors metadata, or a
    memory-mapped ``.pth`` (tensors are not read); None when it cannot be told cheaply."""
    import json

    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                meta = handle.metadata() or {}
            vocab = json.loads(meta["ramdex_vocabulary"]) if "ramdex_vocabulary" in meta else None
            cfg_data = json.loads(meta["ramdex_config"]) if "ramdex_config" in meta else None
        else:
            payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            if not isinstance(payload, dict):
                return None
            vocab, cfg_data = payload.get("ramdex_vocabulary"), payload.get("ramdex_config")
            if vocab is None and cfg_data is None:  # a published file: its shapes tell
                cfg = infer_config(payload.get("model", payload))
                return vocabulary_for(cfg.labels.vocabulary, cfg.labels.num_tags)
        if vocab is not None:
            return TagVocabulary.from_dict(vocab)
        if cfg_data is not None:
            cfg = RamPlusConfig.from_dict(cfg_data)
            return vocabulary_for(cfg.labels.vocabulary, cfg.labels.num_tags)
    except Exception:  # a description is best effort: loading the model reports a bad file
        return None
    return None


def describe(
    name: str | None = None,
    checkpoint: str | Path | None = None,
    cache_dir: Path | None = None,
    digest: str | None = None,
) -> ModelDescription:
    """Describe the model :func:`resolve_model` would load for these arguments, without loading
    its weights (the vocabulary comes from the file's metadata or the registered config).

    ``digest`` (the weights file's sha256) saves hashing a large file again; without it the file
    is hashed here when it exists. A model that is not on this machine is still described (no
    digest); loading it is what reports the problem.
    """
    from ram_pp import pretrained

    asked_demo = checkpoint is None and (name or DEMO_MODEL) == DEMO_MODEL
    vocab: TagVocabulary | None = None
    path: Path | None = None
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
    elif asked_demo:
        path = demo_checkpoint()
    elif name in pretrained.PRETRAINED:
        path, vocab = pretrained.cached_path(name, cache_dir), _config_vocabulary(name)
    elif name in list_configs():  # test_* configs: random weights, no file
        vocab = _config_vocabulary(name)  # type: ignore[arg-type]
    present = path is not None and path.is_file()
    if present and digest is None:
        digest = pretrained.sha256_file(path)  # type: ignore[arg-type]
    demo = asked_demo or (present and is_demo_checkpoint(path, digest))  # type: ignore[arg-type]
    if vocab is None and present:
        vocab = _peek_vocabulary(path)  # type: ignore[arg-type]
    return ModelDescription(
        name=display_name(name, checkpoint, demo),
        digest=digest if present else None,
        is_demo=demo,
        num_tags=len(vocab) if vocab is not None else None,
        has_chinese=has_chinese_names(vocab) if vocab is not None else False,
        checkpoint=path,
    )
