"""Training and fine-tuning RAM++ on a tag list, and its evaluation (mAP, open-set mAP).

A run trains a :class:`ram_pp.model.RamPlus` on images listed in a tag file (one line per image,
``path tag1,tag2,...``, paths relative to the list file) with optional captions
(``path caption``), or on the procedural set of :mod:`ram_pp.synth`, rendered on the fly.

The tag list becomes the model's vocabulary: each tag's descriptions are embedded by the model's
text encoder into the label bank. The label bank stays frozen (text-derived, like RAM++'s CLIP
label bank): concepts embedded later by the same encoder then live in the space the head was
trained on, which is what open-set scoring needs.

Objectives (:mod:`ram_pp.losses`): tagging ASL, image-caption alignment through the tagging head,
and L1 distillation of the image embedding c toward a teacher. Without an image teacher, the
teacher is the caption's text embedding; that keeps c in the text space, so the description
re-weighting (step 5) has something to match and c-to-concept cosine similarity is a fair baseline.

Each epoch writes ``checkpoint.pt`` (all that resuming needs) and ``model.safetensors`` (a ramdex
checkpoint with config and vocabulary) and evaluates mAP on the validation split.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from ram_pp import synth
from ram_pp.config import RamPlusConfig, get_config
from ram_pp.convert import is_upstream_layout, read_checkpoint, save_checkpoint, upstream_to_timm
from ram_pp.labels import LabelBank
from ram_pp.losses import alignment_logits, alignment_loss, distillation_loss, tagging_loss
from ram_pp.model import RamPlus
from ram_pp.preprocess import Preprocessor, open_image
from ram_pp.vocab import TagVocabulary

STATE_FILE = "checkpoint.pt"
MODEL_FILE = "model.safetensors"
METRICS_FILE = "metrics.json"


class TextEncoderLike(Protocol):
    """What training needs from a text encoder (:class:`ram_pp.text_encoder.TextEncoder`)."""

    dim: int

    def encode(self, texts: list[str], batch_size: int = 64) -> torch.Tensor: ...


class TrainError(ValueError):
    """A training set-up that cannot run, with a message that says why."""


# --------------------------------------------------------------------------------------------
# Configuration


@dataclass
class TrainConfig:
    """Everything a training run needs (JSON-able; ``ramdex train --config FILE`` reads one).

    Attributes:
        model: model config name or path (``ram_pp/configs``); its tag count and descriptions
            per tag are replaced by the vocabulary's.
        init_checkpoint: start from these weights (a published or ramdex checkpoint); tensors
            whose shape no longer fits (the label bank when the vocabulary changes) are skipped.
        trust_checkpoint: allow full unpickling of ``init_checkpoint`` (trusted files only).
        data: folder with tag files; None: the synthetic set described by ``synth``.
        train_list / val_list / test_list: tag files in ``data`` (val and test optional);
            captions are read from ``<list>_captions.txt`` next to them when present.
        tags: vocabulary file (one tag per line); default ``data/tags.txt`` when present, else
            the sorted tags of the training list.
        descriptions: JSON ``[{"tag": ["description", ...]}]`` for the label bank; default
            ``data/tag_descriptions.json`` when present, else templates with the tag name.
        heldout / heldout_truth: open-set concepts (``[{"concept": [...]}]``) scored on the test
            list, with their truth as a tag-file-like list (defaults ``heldout_concepts.json``
            and ``heldout_test.txt`` in ``data``; the synthetic set brings its own).
        synth: synthetic set (``seed``, ``n_train``, ``n_val``, ``n_test``, ``image_size``).
        out_dir: run folder (checkpoint, model file, metrics, caches).
        epochs, batch_size, lr, weight_decay, warmup_steps, grad_clip: optimisation (AdamW,
            linear warm-up, then cosine decay to zero).
        max_captions: caption (and so align/distil) at most this many training images, the
            first ones; the text encoder's cost grows with the number of captions.
        caption_batch: when only some images have captions, this many of each batch (at most
            half) are drawn from the captioned ones, so that every batch has pairs to align.
        align_weight / distill_weight: weights of the alignment and distillation losses.
        distill_teacher: "caption" (the caption's text embedding) or "none".
        freeze_label_bank: keep the text-derived label bank fixed.
        init_queries: initialise ``wordvec_proj`` (when not loaded from a checkpoint) from the
            principal directions of the text embeddings (bank rows and captions): centred,
            decorrelated queries from the first step; with the default init the tag queries are
            small and alike and the head learns tag-specific attention slowly.
        whitening_power: how far that projection whitens (see :func:`init_query_projection`):
            0 keeps the text space's geometry, 1 gives every direction unit variance. Measured on
            the synthetic set (12k images, 2 epochs): open-set mAP 0.44 at 0, 0.35 at 0.5, 0.23 at
            1, with equal tag mAP: whitening inflates the faint directions in which an unseen
            concept's description differs from the trained ones.
        threads: torch CPU threads.
        seed: seeds weights and data order.
        export_dtype: "float32" or "float16" for the final model file.
        hflip: random horizontal flips (off for the synthetic set, whose arrows have a side).
        max_steps_per_epoch: cap steps per epoch (quick runs and tests).
    """

    model: str = "demo_minilm"
    init_checkpoint: str | None = None
    trust_checkpoint: bool = False
    data: str | None = None
    train_list: str = "train.txt"
    val_list: str | None = "val.txt"
    test_list: str | None = "test.txt"
    tags: str | None = None
    descriptions: str | None = None
    heldout: str | None = None
    heldout_truth: str | None = None
    synth: dict[str, int] | None = None
    out_dir: str = "runs/train"
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 100
    grad_clip: float = 5.0
    max_captions: int | None = None
    caption_batch: int = 24
    align_weight: float = 1.0
    distill_weight: float = 1.0
    distill_teacher: Literal["caption", "none"] = "caption"
    freeze_label_bank: bool = True
    init_queries: bool = True
    whitening_power: float = 0.0
    threads: int = 2
    seed: int = 0
    export_dtype: Literal["float32", "float16"] = "float32"
    hflip: bool = False
    max_steps_per_epoch: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a JSON object; unknown fields are an error."""
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise TrainError(f"unknown training config fields: {sorted(unknown)}")
        cfg = cls(**data)
        cfg.validate()
        return cfg

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        """Read a training config JSON file."""
        path = Path(path)
        if not path.is_file():
            raise TrainError(f"training config not found: {path}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise TrainError(f"{path} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise TrainError(f"{path}: a training config is a JSON object")
        return cls.from_dict(data)

    def validate(self) -> None:
        """Raise :class:`TrainError` for settings that cannot work."""
        if self.data is None and self.synth is None:
            raise TrainError("set 'data' (a folder with tag files) or 'synth' (the synthetic set)")
        if self.epochs < 1 or self.batch_size < 2:
            raise TrainError("epochs must be >= 1 and batch_size >= 2")
        if self.caption_batch < 0:
            raise TrainError("caption_batch must be >= 0")
        if self.lr <= 0:
            raise TrainError("lr must be > 0")
        if self.distill_teacher not in ("caption", "none"):
            raise TrainError("distill_teacher must be 'caption' or 'none'")
        if self.export_dtype not in ("float32", "float16"):
            raise TrainError("export_dtype must be 'float32' or 'float16'")
        if self.synth is not None:
            unknown = set(self.synth) - {f.name for f in fields(synth.SynthSpec)}
            if unknown:
                raise TrainError(f"unknown synth fields: {sorted(unknown)}")


PRESETS: dict[str, TrainConfig] = {
    # The bundled demo model (ram_pp/demo): about 20 minutes on 2 CPU cores.
    "demo": TrainConfig(
        model="demo_minilm",
        synth={"seed": 0, "n_train": 48000, "n_val": 500, "n_test": 1000, "image_size": 128},
        out_dir="runs/demo",
        epochs=3,
        batch_size=64,
        lr=1e-3,
        warmup_steps=150,
        export_dtype="float16",
    ),
    # A seconds-long run on a tiny set: smoke tests and trying the command.
    "smoke": TrainConfig(
        model="demo_minilm",
        synth={"seed": 1, "n_train": 96, "n_val": 48, "n_test": 48, "image_size": 128},
        out_dir="runs/smoke",
        epochs=1,
        batch_size=16,
        lr=2e-3,
        warmup_steps=2,
        caption_batch=0,
    ),
}


def preset(name: str, **changes: Any) -> TrainConfig:
    """A registered training preset, optionally with fields changed."""
    if name not in PRESETS:
        raise TrainError(f"unknown preset {name!r}; choose one of: {', '.join(sorted(PRESETS))}")
    cfg = replace(PRESETS[name], **changes)
    cfg.validate()
    return cfg


# --------------------------------------------------------------------------------------------
# Data


@dataclass
class TagList:
    """A parsed tag file: image paths, their tags and captions (None where missing)."""

    paths: list[Path]
    tags: list[list[str]]
    captions: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)


def read_tag_list(path: str | Path, captions: str | Path | None = None) -> TagList:
    """Read ``path tag1,tag2,...`` lines (paths relative to the list's folder, without spaces).

    Args:
        path: the tag file. Blank lines and ``#`` comments are skipped; an image without tags
            has only its path on the line.
        captions: optional ``path caption`` file for the same images.

    Raises:
        TrainError: missing file, empty list, or a caption for an image the list lacks.
    """
    path = Path(path)
    if not path.is_file():
        raise TrainError(f"tag file not found: {path}")
    paths, tags = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(maxsplit=1)
        rel = Path(parts[0])
        paths.append(rel if rel.is_absolute() else path.parent / rel)
        tags.append(
            [t.strip() for t in (parts[1] if len(parts) > 1 else "").split(",") if t.strip()]
        )
    if not paths:
        raise TrainError(f"tag file {path} lists no images")
    caps: list[str | None] = [None] * len(paths)
    if captions is not None:
        captions = Path(captions)
        index = {p: i for i, p in enumerate(paths)}
        for line in captions.read_text(encoding="utf-8").splitlines():
            parts = line.strip().split(maxsplit=1)
            if len(parts) < 2:
                continue
            rel = Path(parts[0])
            key = rel if rel.is_absolute() else captions.parent / rel
            if key not in index:
                raise TrainError(f"{captions}: caption for {parts[0]}, which {path} does not list")
            caps[index[key]] = parts[1]
    return TagList(paths, tags, caps)


def caption_file_for(tag_file: Path) -> Path | None:
    """``train.txt`` -> ``train_captions.txt`` when that exists."""
    candidate = tag_file.with_name(f"{tag_file.stem}_captions{tag_file.suffix}")
    return candidate if candidate.is_file() else None


def read_descriptions(path: str | Path) -> dict[str, list[str]]:
    """Read the upstream description format ``[{"name": ["description", ...]}, ...]``.

    Raises:
        TrainError: unreadable, not that shape, or a name without descriptions.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise TrainError(f"cannot read descriptions {path}: {exc}") from exc
    if not isinstance(data, list):
        raise TrainError(f'{path}: expected a list like [{{"name": ["description", ...]}}]')
    out: dict[str, list[str]] = {}
    for entry in data:
        if not isinstance(entry, dict):
            raise TrainError(f"{path}: every entry must be an object, got {entry!r}")
        for name, descs in entry.items():
            if (
                not isinstance(descs, list)
                or not descs
                or not all(isinstance(d, str) for d in descs)
            ):
                raise TrainError(f"{path}: {name!r} needs a non-empty list of strings")
            out[name] = descs
    return out


def tag_matrix(lists: Sequence[Sequence[str]], vocab: Sequence[str]) -> torch.Tensor:
    """(N, K) 0/1 float targets.

    Raises:
        TrainError: a tag that is not in the vocabulary (the first few are named).
    """
    index = {t: i for i, t in enumerate(vocab)}
    out = torch.zeros(len(lists), len(vocab))
    unknown: set[str] = set()
    for row, tags in enumerate(lists):
        for t in tags:
            if t in index:
                out[row, index[t]] = 1.0
            else:
                unknown.add(t)
    if unknown:
        raise TrainError(
            f"{len(unknown)} tags are not in the vocabulary: {', '.join(sorted(unknown)[:10])}"
        )
    return out


class FileImages(torch.utils.data.Dataset):
    """Image files as pre-processed tensors (the inference pre-processing)."""

    def __init__(self, paths: Sequence[Path], pre: Preprocessor) -> None:
        self.paths = list(paths)
        self.pre = pre

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.pre(open_image(self.paths[index])), index


# Rendered synthetic images are kept (as uint8) up to this many bytes: rendering costs about as
# much as a training step of the demo model, and later epochs then read them from memory.
SYNTH_CACHE_BYTES = 4 << 30


class SynthImages(torch.utils.data.Dataset):
    """Synthetic scenes rendered on demand (no files), kept in memory after the first read."""

    def __init__(self, scenes: Sequence[synth.Scene], image_size: int, pre: Preprocessor) -> None:
        self.scenes = list(scenes)
        self.image_size = image_size
        self.pre = pre
        side = pre.image_size
        fits = len(self.scenes) * side * side * 3 <= SYNTH_CACHE_BYTES
        self._pixels = (
            torch.empty((len(self.scenes), side, side, 3), dtype=torch.uint8) if fits else None
        )
        self._filled = torch.zeros(len(self.scenes), dtype=torch.bool)

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if self._pixels is None:
            return self.pre(synth.render(self.scenes[index], self.image_size)), index
        if not self._filled[index]:
            image = synth.render(self.scenes[index], self.image_size)
            self._pixels[index] = torch.from_numpy(self.pre.resized_array(image))
            self._filled[index] = True
        return self.pre.normalize(self._pixels[index]), index


@dataclass
class Split:
    """One split: images, their tags and captions, and held-out concept truth (test only)."""

    images: torch.utils.data.Dataset
    tags: list[list[str]]
    captions: list[str | None]
    heldout_truth: list[list[str]] | None = None

    def __len__(self) -> int:
        return len(self.tags)


@dataclass
class DataSource:
    """Vocabulary, descriptions, splits and open-set concepts of a run."""

    vocab: list[str]
    descriptions: list[list[str]]
    train: Split
    val: Split | None
    test: Split | None
    concepts: dict[str, list[str]] = field(default_factory=dict)
    prompts: dict[str, str] = field(default_factory=dict)
    categories: dict[str, str] = field(default_factory=dict)


def _cap(captions: list[str | None], limit: int | None) -> list[str | None]:
    if limit is None:
        return captions
    return [c if i < limit else None for i, c in enumerate(captions)]


def synth_source(cfg: TrainConfig, pre: Preprocessor) -> DataSource:
    """The synthetic set of ``cfg.synth`` (scenes sampled now, images rendered when read)."""
    spec = synth.SynthSpec(**(cfg.synth or {}))
    splits: dict[str, Split | None] = {}
    for name in synth.SPLITS:
        scenes = [scene for _, scene in synth.iter_split(spec, name)]
        if not scenes:
            splits[name] = None
            continue
        truth = None
        if name == "test":
            truth = [[c.name for c in synth.HELDOUT if c.predicate(s)] for s in scenes]
        captions: list[str | None] = [s.caption for s in scenes]
        splits[name] = Split(
            SynthImages(scenes, spec.image_size, pre),
            [s.tags() for s in scenes],
            _cap(captions, cfg.max_captions) if name == "train" else captions,
            truth,
        )
    if splits["train"] is None:
        raise TrainError("the synthetic set needs n_train >= 1")
    return DataSource(
        vocab=list(synth.TAGS),
        descriptions=[synth.tag_descriptions(t) for t in synth.TAGS],
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        concepts={c.name: list(c.descriptions) for c in synth.HELDOUT},
        prompts={c.name: c.prompt for c in synth.HELDOUT},
        categories={c.name: c.category for c in synth.HELDOUT},
    )


def folder_source(cfg: TrainConfig, pre: Preprocessor) -> DataSource:
    """A folder with tag files (and optional captions, vocabulary, descriptions, concepts)."""
    root = Path(cfg.data or "")
    if not root.is_dir():
        raise TrainError(f"data folder not found: {root}")

    def load(name: str | None, required: bool = False) -> TagList | None:
        if name is None:
            return None
        path = root / name
        if not path.is_file():
            if required:
                raise TrainError(f"tag file not found: {path}")
            return None
        return read_tag_list(path, caption_file_for(path))

    train_list = load(cfg.train_list, required=True)
    assert train_list is not None
    tags_path = Path(cfg.tags) if cfg.tags else root / "tags.txt"
    if cfg.tags and not tags_path.is_file():
        raise TrainError(f"tags file not found: {tags_path}")
    if tags_path.is_file():
        vocab = [t.strip() for t in tags_path.read_text(encoding="utf-8").splitlines() if t.strip()]
    else:
        vocab = sorted({t for tags in train_list.tags for t in tags})
    if not vocab:
        raise TrainError("the vocabulary is empty (no tags file and no tags in the training list)")
    if len(set(vocab)) != len(vocab):
        raise TrainError("the vocabulary lists a tag twice")
    desc_path = Path(cfg.descriptions) if cfg.descriptions else root / "tag_descriptions.json"
    if cfg.descriptions and not desc_path.is_file():
        raise TrainError(f"descriptions file not found: {desc_path}")
    given = read_descriptions(desc_path) if desc_path.is_file() else {}

    def split(lst: TagList | None, is_train: bool = False) -> Split | None:
        if lst is None:
            return None
        caps = _cap(lst.captions, cfg.max_captions) if is_train else lst.captions
        return Split(FileImages(lst.paths, pre), lst.tags, caps)

    test_list = load(cfg.test_list)
    source = DataSource(
        vocab=vocab,
        descriptions=[list(given.get(t) or synth.tag_descriptions(t)) for t in vocab],
        train=split(train_list, True),  # type: ignore[arg-type]
        val=split(load(cfg.val_list)),
        test=split(test_list),
    )
    heldout = Path(cfg.heldout) if cfg.heldout else root / "heldout_concepts.json"
    truth = Path(cfg.heldout_truth) if cfg.heldout_truth else root / "heldout_test.txt"
    if source.test is not None and test_list is not None and heldout.is_file() and truth.is_file():
        truth_list = read_tag_list(truth)
        if [p.resolve() for p in truth_list.paths] != [p.resolve() for p in test_list.paths]:
            raise TrainError(f"{truth} must list the test images in the test list's order")
        source.concepts = read_descriptions(heldout)
        source.test.heldout_truth = truth_list.tags
        known = {c.name: c for c in synth.HELDOUT}
        source.prompts = {n: known[n].prompt for n in source.concepts if n in known}
        source.categories = {n: known[n].category for n in source.concepts if n in known}
    return source


# --------------------------------------------------------------------------------------------
# Label bank, text embeddings, initialisation


def load_encoder(name: str) -> TextEncoderLike:
    """The model config's text encoder (see :func:`ram_pp.text_encoder.load_text_encoder`)."""
    from ram_pp.text_encoder import load_text_encoder

    return load_text_encoder(name)


def build_label_bank(
    encoder: TextEncoderLike, descriptions: Sequence[Sequence[str]], per_tag: int | None = None
) -> torch.Tensor:
    """Tag-major label-bank rows (K * D, dim) from each tag's descriptions.

    Tags with fewer than D descriptions repeat theirs cyclically (a repeated row only changes the
    re-weighting softmax by its multiplicity).

    Args:
        encoder: text encoder (unit-norm outputs).
        descriptions: one non-empty list of strings per tag.
        per_tag: D; default the largest description count.
    """
    if not descriptions or min(len(d) for d in descriptions) < 1:
        raise TrainError("every tag needs at least one description")
    d = per_tag or max(len(x) for x in descriptions)
    texts = [group[i % len(group)] for group in descriptions for i in range(d)]
    return encoder.encode(texts).float()


def encode_texts(
    encoder: TextEncoderLike, texts: Sequence[str], cache: Path | None = None
) -> torch.Tensor:
    """Encode texts (each distinct one once, shortest first), cached by content in ``cache``."""
    digest = hashlib.sha256(("\n".join(texts) + f"|{encoder.dim}").encode()).hexdigest()[:20]
    path = cache / f"text_{digest}.pt" if cache is not None else None
    if path is not None and path.is_file():
        return torch.load(path, weights_only=True)
    unique = sorted(set(texts), key=lambda t: (len(t), t))  # similar lengths share a batch
    emb = encoder.encode(unique, batch_size=128) if unique else torch.zeros(0, encoder.dim)
    index = {t: i for i, t in enumerate(unique)}
    out = emb[[index[t] for t in texts]] if texts else emb
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(out, path)
    return out


@torch.no_grad()
def init_query_projection(model: RamPlus, texts: torch.Tensor, power: float = 1.0) -> None:
    """Set ``wordvec_proj`` to project centred text embeddings on their principal directions.

    The leading ``hidden`` principal directions of ``texts`` (N, dim) map to decorrelated query
    units, direction i scaled by ``sigma_i ** -power`` (1: whitened, every unit of variance 1;
    0: the plain projection, which keeps the text space's geometry; between: partial whitening),
    with the average unit variance 1. Units beyond the rank keep a small random init. The mean
    is folded into the bias, so inference is the plain RAM++ computation.
    """
    hidden = model.wordvec_proj.out_features
    mean = texts.mean(0)
    _, sing, vh = torch.linalg.svd(texts - mean, full_matrices=False)
    rank = int(min(hidden, (sing > 1e-6 * sing[0]).sum()))
    scale = sing[:rank] ** -power
    spread = (sing[:rank] * scale) ** 2 / texts.shape[0]  # output variance per unit
    scale = scale * torch.sqrt(rank / spread.sum())
    weight = torch.randn(hidden, texts.shape[1]) * 0.02
    weight[:rank] = vh[:rank] * scale[:, None]
    model.wordvec_proj.weight.copy_(weight)
    model.wordvec_proj.bias.copy_(-weight @ mean)


# --------------------------------------------------------------------------------------------
# Metrics


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Non-interpolated average precision of one ranking (NaN when there is no positive).

    Args:
        scores: (N,) higher = more likely positive; ties keep input order.
        targets: (N,) 0/1.
    """
    hits_all = np.asarray(targets).astype(bool)
    n_pos = int(hits_all.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    ranks = np.nonzero(hits_all[order])[0] + 1  # 1-based ranks of the positives
    return float((np.arange(1, n_pos + 1) / ranks).mean())


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> tuple[float, np.ndarray]:
    """mAP over the columns that have a positive, and every column's AP (NaN when none)."""
    aps = np.array([average_precision(scores[:, k], targets[:, k]) for k in range(scores.shape[1])])
    valid = aps[~np.isnan(aps)]
    return (float(valid.mean()) if valid.size else float("nan")), aps


def best_f1_thresholds(probs: np.ndarray, targets: np.ndarray, default: float = 0.5) -> np.ndarray:
    """Per-tag probability threshold with the best F1 on a labelled set (``default`` if none)."""
    out = np.full(probs.shape[1], default, dtype=np.float32)
    grid = np.linspace(0.05, 0.95, 19)
    for k in range(probs.shape[1]):
        pos = targets[:, k].astype(bool)
        if not pos.any():
            continue
        pred = probs[:, k][:, None] > grid[None, :]
        tp = (pred & pos[:, None]).sum(0)
        f1 = 2 * tp / (pred.sum(0) + pos.sum())
        out[k] = grid[int(np.argmax(f1))]
    return out


@torch.no_grad()
def encode_images(
    model: RamPlus, images: torch.utils.data.Dataset, batch_size: int = 128
) -> torch.Tensor:
    """E of every image of a data set, (N, T, dim), computed in eval mode."""
    was_training = model.training
    model.eval()
    loader = torch.utils.data.DataLoader(images, batch_size=batch_size, shuffle=False)
    parts = [model.encode_image(x) for x, _ in loader]
    model.train(was_training)
    return torch.cat(parts)


@torch.no_grad()
def score_embeddings(
    model: RamPlus, embeds: torch.Tensor, bank: LabelBank | None = None, chunk: int = 256
) -> torch.Tensor:
    """Logits (N, K) of image embeddings against a label bank (the model's own when None)."""
    return torch.cat(
        [
            model.logits_from_embeddings(embeds[i : i + chunk], bank)
            for i in range(0, len(embeds), chunk)
        ]
    )


@torch.no_grad()
def evaluate_open_set(
    model: RamPlus,
    embeds: torch.Tensor,
    concepts: dict[str, list[str]],
    truth: Sequence[Sequence[str]],
    encoder: TextEncoderLike,
    prompts: dict[str, str] | None = None,
    categories: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Open-set mAP of concepts the model never trained, against the cosine baseline.

    Four scores per concept: the model's open-set logit with the concept's descriptions as its
    label bank (``model``) and with only the bare-name prompt (``model_name_only``); the
    baseline, cosine similarity between the image embedding c = E[:, 0]/|E[:, 0]| and the
    concept's text embedding (the normalised mean of its description embeddings,
    ``baseline_cosine``; the prompt's, ``baseline_cosine_name_only``).

    Args:
        model: the trained model.
        embeds: E of the evaluation images.
        concepts: name -> descriptions.
        truth: per image, the names of the concepts present.
        encoder: the model's text encoder.
        prompts: name -> bare prompt; default "a photo of a {name}.".
        categories: name -> category, for per-category means.

    Returns:
        ``{"mAP": {score: value}, "per_concept": {name: {score: AP, "positives": n}},
        "per_category": {category: {score: mAP}}}``.
    """
    names = list(concepts)
    targets = tag_matrix(truth, names).numpy()
    groups = [encoder.encode(list(concepts[n])).float() for n in names]
    prompt_emb = encoder.encode(
        [(prompts or {}).get(n, f"a photo of a {n}.") for n in names]
    ).float()
    c = F.normalize(embeds[:, 0].float(), dim=-1)
    mean_desc = F.normalize(torch.stack([g.mean(0) for g in groups]), dim=-1)
    scores = {
        "model": score_embeddings(model, embeds, LabelBank.from_ragged(groups)).numpy(),
        "model_name_only": score_embeddings(
            model, embeds, LabelBank(prompt_emb.unsqueeze(1))
        ).numpy(),
        "baseline_cosine": (c @ mean_desc.T).numpy(),
        "baseline_cosine_name_only": (c @ prompt_emb.T).numpy(),
    }
    per_concept: dict[str, dict[str, float]] = {
        n: {"positives": int(targets[:, k].sum())} for k, n in enumerate(names)
    }
    summary: dict[str, float] = {}
    for key, s in scores.items():
        summary[key], aps = mean_average_precision(s, targets)
        for n, ap in zip(names, aps, strict=True):
            per_concept[n][key] = float(ap)
    per_category: dict[str, dict[str, float]] = {}
    for cat in sorted(set((categories or {}).values())):
        members = [n for n in names if (categories or {}).get(n) == cat]
        per_category[cat] = {
            key: _nanmean([per_concept[n][key] for n in members]) for key in scores
        }
    return {"mAP": summary, "per_concept": per_concept, "per_category": per_category}


def _nanmean(values: Sequence[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else float("nan")


def _json_safe(value: Any) -> Any:
    """NaN (an AP without positives) -> None, so metrics files are strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------
# Training


@dataclass
class TrainResult:
    """What a run produced."""

    out_dir: Path
    model_file: Path
    metrics: dict[str, Any]
    history: list[dict[str, float]]


def _set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


def model_config_for(cfg: TrainConfig, n_tags: int, per_tag: int) -> RamPlusConfig:
    """The run's model config: ``cfg.model`` with the vocabulary's label layout."""
    base = get_config(cfg.model)
    labels = {"num_tags": n_tags, "descriptions_per_tag": per_tag, "vocabulary": "custom"}
    return base.replace(labels=labels)


def _init_from_checkpoint(model: RamPlus, cfg: TrainConfig, log: Callable[[str], None]) -> set[str]:
    """Load the tensors of ``cfg.init_checkpoint`` that fit; returns the loaded names."""
    if cfg.init_checkpoint is None:
        return set()
    loaded = read_checkpoint(cfg.init_checkpoint, trust=cfg.trust_checkpoint)
    state = loaded.state_dict
    if is_upstream_layout(state):
        state = upstream_to_timm(state, model.config)
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(set(state) - set(usable))
    model.load_state_dict(usable, strict=False)
    log(f"initialised from {cfg.init_checkpoint}: {len(usable)} of {len(own)} tensors loaded")
    if skipped:
        more = " ..." if len(skipped) > 8 else ""
        log(f"  not loaded (absent here or another shape): {', '.join(skipped[:8])}{more}")
    return set(usable)


def _caption_ids(captions: Sequence[str | None]) -> torch.Tensor:
    """An integer per caption text (equal texts share one; -1 = no caption)."""
    ids: dict[str, int] = {}
    return torch.tensor([-1 if c is None else ids.setdefault(c, len(ids)) for c in captions])


def _losses(
    model: RamPlus,
    cfg: TrainConfig,
    pixels: torch.Tensor,
    targets: torch.Tensor,
    captions: torch.Tensor,
    caption_ids: torch.Tensor,
) -> dict[str, torch.Tensor]:
    embeds = model.encode_image(pixels)
    tag = tagging_loss(model.logits_from_embeddings(embeds), targets)
    align = distill = tag.new_zeros(())
    sel = (caption_ids >= 0).nonzero().squeeze(1)
    if len(sel) >= 2:
        if cfg.align_weight:
            logits = alignment_logits(model, embeds[sel], captions[sel])
            ids = caption_ids[sel]
            # Distinct images with the same caption text are positives for each other.
            align = alignment_loss(logits, (ids[:, None] == ids[None, :]).to(logits.dtype))
        if cfg.distill_weight and cfg.distill_teacher == "caption":
            distill = distillation_loss(embeds[sel, 0], captions[sel])
    loss = tag + cfg.align_weight * align + cfg.distill_weight * distill
    return {"loss": loss, "tag": tag.detach(), "align": align.detach(), "distill": distill.detach()}


class _Batches:
    """Index batches of one epoch: a shuffled pass over all images, topped up with captioned ones.

    When only some images have captions, ``caption_batch`` slots of each batch come from a
    shuffled stream over the captioned images, so that every batch has pairs to align.
    Deterministic in (seed, epoch), so a resumed run draws the same batches.
    """

    def __init__(self, n: int, captioned: torch.Tensor, cfg: TrainConfig) -> None:
        self.n = n
        self.captioned = captioned
        mixed = 0 < len(captioned) < n and cfg.caption_batch > 0
        self.extra = min(cfg.caption_batch, cfg.batch_size // 2) if mixed else 0
        self.main = cfg.batch_size - self.extra
        steps = n // self.main
        self.steps = min(steps, cfg.max_steps_per_epoch) if cfg.max_steps_per_epoch else steps
        self.seed = cfg.seed

    def epoch(self, epoch: int) -> list[torch.Tensor]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(self.n, generator=gen)
        need = self.steps * self.extra
        cap = torch.empty(0, dtype=torch.long)
        while len(cap) < need:
            cap = torch.cat(
                [cap, self.captioned[torch.randperm(len(self.captioned), generator=gen)]]
            )
        return [
            torch.cat(
                [
                    order[s * self.main : (s + 1) * self.main],
                    cap[s * self.extra : (s + 1) * self.extra],
                ]
            )
            for s in range(self.steps)
        ]


def train(
    cfg: TrainConfig,
    encoder: TextEncoderLike | None = None,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Run (or resume) a training run.

    Args:
        cfg: the run's settings.
        encoder: text encoder; default the model config's (``load_text_encoder``).
        resume: continue from ``out_dir/checkpoint.pt`` (same vocabulary and model config).
        progress: show tqdm bars.
        log: where status lines go.

    Returns:
        The run's folder, model file, final metrics and per-epoch history.

    Raises:
        TrainError: bad settings, data or checkpoint.
    """
    from tqdm import tqdm

    cfg.validate()
    torch.set_num_threads(cfg.threads)
    _set_seed(cfg.seed)
    started = time.perf_counter()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)

    base = get_config(cfg.model)
    pre = Preprocessor(base.vision.image_size, base.mean, base.std)
    source = folder_source(cfg, pre) if cfg.data is not None else synth_source(cfg, pre)
    vocab = source.vocab
    per_tag = max(len(d) for d in source.descriptions)
    model_cfg = model_config_for(cfg, len(vocab), per_tag)

    encoder = encoder or load_encoder(model_cfg.text_encoder)
    if encoder.dim != model_cfg.head.embed_dim:
        raise TrainError(
            f"text encoder {model_cfg.text_encoder!r} gives {encoder.dim}-d vectors but model "
            f"{model_cfg.name!r} has a {model_cfg.head.embed_dim}-d label bank (head.embed_dim)"
        )
    model = RamPlus(model_cfg)
    loaded = _init_from_checkpoint(model, cfg, log)
    bank = build_label_bank(encoder, source.descriptions, per_tag)
    with torch.no_grad():
        model.label_embed.copy_(bank)
    model.label_embed.requires_grad_(not cfg.freeze_label_bank)

    train_split = source.train
    targets = tag_matrix(train_split.tags, vocab)
    caption_ids = _caption_ids(train_split.captions)
    captioned = (caption_ids >= 0).nonzero().squeeze(1)
    caption_emb = torch.zeros(len(train_split), encoder.dim)
    if len(captioned):
        t0 = time.perf_counter()
        texts = [train_split.captions[int(i)] or "" for i in captioned]
        caption_emb[captioned] = encode_texts(encoder, texts, out / "cache")
        log(f"{len(captioned)} captions embedded in {time.perf_counter() - t0:.0f} s")
    if cfg.init_queries and "wordvec_proj.weight" not in loaded:
        sample = caption_emb[captioned[:4000]] if len(captioned) else bank[:0]
        init_query_projection(model, torch.cat([bank, sample]), cfg.whitening_power)
    val_targets = tag_matrix(source.val.tags, vocab) if source.val is not None else None

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ],
        lr=cfg.lr,
    )
    batches = _Batches(len(train_split), captioned, cfg)
    if batches.steps < 1:
        raise TrainError(f"{len(train_split)} training images are fewer than one batch")
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(cfg.warmup_steps, batches.steps * cfg.epochs)
    )

    start_epoch, history = 0, []
    state_path = out / STATE_FILE
    if resume:
        if not state_path.is_file():
            raise TrainError(f"nothing to resume: {state_path} does not exist")
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if state["vocabulary"] != vocab or state["model_config"] != model_cfg.to_dict():
            raise TrainError(f"{state_path} was trained with another vocabulary or model config")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, history = int(state["epoch"]), list(state["history"])
        torch.set_rng_state(state["rng"])  # stochastic depth draws continue where they stopped
        log(f"resuming after epoch {start_epoch} of {cfg.epochs} from {state_path}")

    model_file = out / MODEL_FILE
    images = train_split.images
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        gen = torch.Generator().manual_seed(cfg.seed * 7919 + epoch)
        sums = {"loss": 0.0, "tag": 0.0, "align": 0.0, "distill": 0.0}
        t_epoch = time.perf_counter()
        bar = tqdm(
            batches.epoch(epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress
        )
        for step, idx in enumerate(bar):
            pixels = torch.stack([images[int(i)][0] for i in idx])
            if cfg.hflip:
                flip = torch.rand(len(idx), generator=gen) < 0.5
                pixels[flip] = pixels[flip].flip(-1)
            parts = _losses(model, cfg, pixels, targets[idx], caption_emb[idx], caption_ids[idx])
            optimizer.zero_grad(set_to_none=True)
            parts["loss"].backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            for k in sums:
                sums[k] += float(parts[k].detach())
            bar.set_postfix(loss=f"{sums['loss'] / (step + 1):.3f}")
        record: dict[str, float] = {k: v / batches.steps for k, v in sums.items()}
        record.update(epoch=epoch + 1, seconds=time.perf_counter() - t_epoch)
        if source.val is not None and val_targets is not None:
            embeds = encode_images(model, source.val.images)
            probs = torch.sigmoid(score_embeddings(model, embeds)).numpy()
            record["val_mAP"] = mean_average_precision(probs, val_targets.numpy())[0]
        history.append(record)
        log(
            f"epoch {epoch + 1}: loss {record['loss']:.4f} (tag {record['tag']:.4f}, align "
            f"{record['align']:.4f}, distill {record['distill']:.4f})"
            + (f", val mAP {record['val_mAP']:.4f}" if "val_mAP" in record else "")
            + f", {record['seconds']:.0f} s"
        )
        vocabulary = TagVocabulary.from_names(vocab, threshold=0.5)
        save_checkpoint(model_file, model.state_dict(), model_cfg, vocabulary=vocabulary.to_dict())
        tmp = state_path.with_suffix(".tmp")
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch + 1,
                "rng": torch.get_rng_state(),
                "history": history,
                "vocabulary": vocab,
                "model_config": model_cfg.to_dict(),
                "train_config": cfg.to_dict(),
            },
            tmp,
        )
        tmp.replace(state_path)

    metrics = finish(cfg, model, model_cfg, source, encoder, model_file, log)
    metrics["train_seconds"] = time.perf_counter() - started
    metrics["history"] = history
    (out / METRICS_FILE).write_text(json.dumps(_json_safe(metrics), indent=1, allow_nan=False))
    return TrainResult(out, model_file, metrics, history)


def finish(
    cfg: TrainConfig,
    model: RamPlus,
    model_cfg: RamPlusConfig,
    source: DataSource,
    encoder: TextEncoderLike,
    model_file: Path,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Calibrate per-tag thresholds on val, export the model, evaluate test and open-set.

    The test figures are computed with the exported file's weights (after any float16 cast), so
    they describe the file that ships.
    """
    model.eval()
    vocab = source.vocab
    metrics: dict[str, Any] = {"num_tags": len(vocab)}
    thresholds = np.full(len(vocab), 0.5, dtype=np.float32)
    if source.val is not None:
        probs = torch.sigmoid(score_embeddings(model, encode_images(model, source.val.images)))
        val_targets = tag_matrix(source.val.tags, vocab).numpy()
        metrics["val_mAP"] = mean_average_precision(probs.numpy(), val_targets)[0]
        thresholds = best_f1_thresholds(probs.numpy(), val_targets)
    vocabulary = TagVocabulary(tuple(vocab), tuple(vocab), thresholds)
    state = model.state_dict()
    if cfg.export_dtype == "float16":
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    save_checkpoint(model_file, state, model_cfg, vocabulary=vocabulary.to_dict())
    exported = RamPlus(model_cfg).eval()
    exported.load_state_dict(read_checkpoint(model_file).state_dict)
    if source.test is None:
        return metrics
    embeds = encode_images(exported, source.test.images)
    probs = torch.sigmoid(score_embeddings(exported, embeds)).numpy()
    test_targets = tag_matrix(source.test.tags, vocab).numpy()
    metrics["test_mAP"], aps = mean_average_precision(probs, test_targets)
    metrics["test_AP_per_tag"] = {t: float(a) for t, a in zip(vocab, aps, strict=True)}
    pred = probs > thresholds[None, :]
    tp = (pred & (test_targets > 0)).sum()
    metrics["test_precision"] = float(tp / max(1, pred.sum()))
    metrics["test_recall"] = float(tp / max(1, test_targets.sum()))
    log(f"test mAP {metrics['test_mAP']:.4f} on {len(source.test)} images")
    if source.concepts and source.test.heldout_truth is not None:
        open_set = evaluate_open_set(
            exported,
            embeds,
            source.concepts,
            source.test.heldout_truth,
            encoder,
            source.prompts,
            source.categories,
        )
        metrics["open_set"] = open_set
        for key, value in open_set["mAP"].items():
            log(f"open-set mAP ({key}): {value:.4f}")
    return metrics
