"""Include/exclude patterns on a source's keys, with the rules of folder walks
(:mod:`indexer.walk`), so a source and ``ramdex ingest FOLDER`` pick the same files:

- a pattern without ``/`` matches a name: the object's (``*.jpg``) or, for excludes, any folder
  on its way (``@eaDir``, ``.thumbnails``);
- a pattern with ``/`` matches the key relative to the source's prefix (``2024/*``,
  ``raw/**/*.tif``), ``*`` crossing ``/``;
- matching ignores case; no include pattern means the image extensions ramdex decodes.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from indexer.walk import DEFAULT_INCLUDE


def _match(rel: str, name: str, pattern: str) -> bool:
    pat = pattern.lower().strip("/")
    if "/" in pat:
        return fnmatch.fnmatchcase(rel, pat) or fnmatch.fnmatchcase(rel, pat.replace("**/", ""))
    return fnmatch.fnmatchcase(name, pat)


class KeyFilter:
    """Decides which relative keys a source takes.

    Args:
        include: patterns a key must match one of (empty: :data:`indexer.walk.DEFAULT_INCLUDE`).
        exclude: patterns no key (nor any folder above it) may match.
    """

    def __init__(self, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> None:
        self.include = tuple(p for p in include if p) or DEFAULT_INCLUDE
        self.exclude = tuple(p for p in exclude if p)

    def __call__(self, rel_key: str) -> bool:
        """Whether the key (relative to the prefix, ``/``-separated) is taken."""
        rel = rel_key.lower()
        parts = rel.split("/")
        name = parts[-1]
        if not name:
            return False  # a "folder" placeholder object (key ending in /)
        for pattern in self.exclude:
            if "/" in pattern.strip("/"):
                if _match(rel, name, pattern):
                    return False
            elif any(fnmatch.fnmatchcase(part, pattern.lower()) for part in parts):
                return False
        return any(_match(rel, name, p) for p in self.include)
