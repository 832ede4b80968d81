"""Tag vocabularies: English and Chinese names and per-tag probability thresholds.

The built-in RAM++ list (4,585 tags, Apache-2.0, see ``ram_pp/data/LICENSE.recognize-anything``)
ships as package data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np

DEFAULT_THRESHOLD = 0.68


@dataclass(frozen=True)
class TagVocabulary:
    """Names and thresholds of a model's tags, in logit order."""

    english: tuple[str, ...]
    chinese: tuple[str, ...]
    thresholds: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        n = len(self.english)
        if len(self.chinese) != n or self.thresholds.shape != (n,):
            raise ValueError(
                f"vocabulary parts disagree: {n} English, {len(self.chinese)} Chinese, "
                f"{self.thresholds.shape[0]} thresholds"
            )

    def __len__(self) -> int:
        return len(self.english)

    def head(self, n: int) -> TagVocabulary:
        """The first n tags."""
        if n > len(self):
            raise ValueError(f"vocabulary has {len(self)} tags, {n} requested")
        return TagVocabulary(self.english[:n], self.chinese[:n], self.thresholds[:n].copy())

    def to_dict(self) -> dict[str, Any]:
        return {
            "english": list(self.english),
            "chinese": list(self.chinese),
            "thresholds": [float(t) for t in self.thresholds],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TagVocabulary:
        english = tuple(data["english"])
        chinese = tuple(data.get("chinese") or english)
        raw = data.get("thresholds")
        thresholds = np.asarray(raw if raw is not None else [DEFAULT_THRESHOLD] * len(english))
        return cls(english, chinese, thresholds.astype(np.float32))

    @classmethod
    def from_names(cls, names: list[str], threshold: float = DEFAULT_THRESHOLD) -> TagVocabulary:
        """A custom vocabulary (English names only) with one threshold for all tags."""
        return cls(tuple(names), tuple(names), np.full(len(names), threshold, dtype=np.float32))


def _read_lines(name: str) -> list[str]:
    text = (resources.files("ram_pp") / "data" / name).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines()]


@lru_cache(maxsize=1)
def builtin_vocabulary() -> TagVocabulary:
    """The 4,585 RAM++ tags with upstream's per-tag thresholds."""
    english = _read_lines("ram_tag_list.txt")
    chinese = _read_lines("ram_tag_list_chinese.txt")
    thresholds = np.array([float(x) for x in _read_lines("ram_tag_list_threshold.txt")], np.float32)
    return TagVocabulary(tuple(english), tuple(chinese), thresholds)


def vocabulary_for(name: str, num_tags: int) -> TagVocabulary:
    """Vocabulary named in a model config (``"ram"``: the built-in list, first ``num_tags``)."""
    if name != "ram":
        raise KeyError(f"unknown vocabulary {name!r}; custom vocabularies travel in checkpoints")
    return builtin_vocabulary().head(num_tags)
