"""Training data: tag files (``path tag1,tag2,...``), captions, description files, and the
splits of a run, from a folder or from the procedural set of :mod:`ram_pp.synth`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ram_pp import synth
from ram_pp.preprocess import Preprocessor, open_image
from ram_pp.train_config import TrainConfig, TrainError


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
