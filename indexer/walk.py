"""Folder walking with glob include/exclude patterns.

Pattern rules (the same for include and exclude, matched case-insensitively):

- a pattern without ``/`` matches the file or folder *name*: ``*.jpg``, ``.git``, ``@eaDir``;
- a pattern with ``/`` matches the path *relative to the walked root*, where ``*`` also crosses
  folder boundaries: ``2023/*``, ``raw/**/*.tif``.

Files are included when they match any include pattern (default: the image extensions ramdex
decodes) and no exclude pattern; a folder matching an exclude pattern is not entered. The walk is
sorted, so repeated runs visit files in the same order. Unreadable folders are reported, not raised.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

DEFAULT_INCLUDE: tuple[str, ...] = (
    "*.jpg",
    "*.jpeg",
    "*.jpe",
    "*.png",
    "*.webp",
    "*.gif",
    "*.bmp",
    "*.tif",
    "*.tiff",
    "*.heic",
    "*.heif",
    "*.avif",
)


@dataclass(frozen=True)
class WalkError:
    """A path the walk could not read, and why."""

    path: str
    reason: str


def _matches(rel_posix: str, name: str, patterns: Sequence[str]) -> bool:
    rel = rel_posix.lower()
    low = name.lower()
    for pattern in patterns:
        pat = pattern.lower().strip("/")
        if "/" in pat:
            # "**/" may also match nothing ("raw/**/*.tif" covers "raw/a.tif").
            if fnmatch.fnmatchcase(rel, pat) or fnmatch.fnmatchcase(rel, pat.replace("**/", "")):
                return True
        elif fnmatch.fnmatchcase(low, pat):
            return True
    return False


def walk_files(
    roots: Iterable[str | Path],
    include: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    follow_symlinks: bool = False,
    on_error: Callable[[WalkError], None] | None = None,
) -> Iterator[Path]:
    """Files under the given folders (and files given directly) that pass the patterns.

    A file named directly is yielded if it passes the exclude patterns, whatever its extension
    (the user asked for it); files found inside folders must also match ``include``.

    Args:
        roots: files and folders.
        include: glob patterns a found file must match; None means :data:`DEFAULT_INCLUDE`.
        exclude: glob patterns that drop files and prune folders.
        follow_symlinks: enter symlinked folders (off by default: loops and escapes).
        on_error: called for each unreadable or missing path; by default they are skipped.

    Yields:
        Paths, folder by folder, names sorted.
    """
    include = list(include) if include else list(DEFAULT_INCLUDE)
    exclude = list(exclude)

    def report(path: str, reason: str) -> None:
        if on_error is not None:
            on_error(WalkError(path, reason))

    for root in roots:
        root = Path(root)
        if not root.exists() and not root.is_symlink():
            report(str(root), "no such file or folder")
            continue
        if not root.is_dir():
            if not _matches(root.name, root.name, exclude):
                yield root
            continue

        def onerror(exc: OSError, top: Path = root) -> None:
            report(str(exc.filename or top), exc.strerror or str(exc))

        for dirpath, dirnames, filenames in os.walk(
            root, onerror=onerror, followlinks=follow_symlinks
        ):
            base = Path(dirpath)
            rel_base = base.relative_to(root).as_posix()
            rel_base = "" if rel_base == "." else rel_base + "/"
            dirnames[:] = sorted(d for d in dirnames if not _matches(rel_base + d, d, exclude))
            for name in sorted(filenames):
                rel = rel_base + name
                if _matches(rel, name, include) and not _matches(rel, name, exclude):
                    yield base / name
