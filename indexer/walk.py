"""Folder walking with glob include/exclude patterns.

Pattern rules (the same for include and exclude, matched case-insensitively):

- a pattern without ``/`` matches the file or folder *name*: ``*.jpg``, ``.git``, ``@eaDir``;
- a pattern with ``/`` matches the path *relative to the walked root*, where ``*`` also crosses
  folder boundaries: ``2023/*``, ``raw/**/*.tif``.

Files are included when they match any include pattern (default: the image extensions ramdex
decodes) and no exclude pattern; a folder matching an exclude pattern is not entered. The walk is
sorted, so repeated runs visit files in the same order. Unreadable folders are reported, not raised.

Links never lead a walk out of where it may go: without ``follow_symlinks`` a link found inside a
walked folder (to a file or a folder) is used only when its target lies inside that folder; with
``allowed_roots`` every file and entered folder must resolve inside those roots, links followed or
not. A link leading out is reported with one reason whether or not its target exists. Folder loops
through links are entered once.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from indexer.allowed_roots import NOT_ALLOWED, is_inside, resolve_roots

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
    "*.apng",
    # videos and camera RAW (indexer.frames, docs/media.md)
    "*.mp4",
    "*.m4v",
    "*.mov",
    "*.mkv",
    "*.webm",
    "*.dng",
    "*.cr2",
    "*.cr3",
    "*.nef",
    "*.arw",
    "*.raf",
    "*.orf",
    "*.rw2",
)


# One text whether or not the target exists (a broken link says the same as a link to /etc).
LINK_OUTSIDE = "file not found, or a link leading outside the walked folder (not followed)"


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
    allowed_roots: Sequence[str | Path] = (),
) -> Iterator[Path]:
    """Files under the given folders (and files given directly) that pass the patterns.

    A file named directly is yielded if it passes the exclude patterns, whatever its extension
    (the user asked for it); files found inside folders must also match ``include``.

    Args:
        roots: files and folders.
        include: glob patterns a found file must match; None means :data:`DEFAULT_INCLUDE`.
        exclude: glob patterns that drop files and prune folders.
        follow_symlinks: follow links out of the walked folder (off by default: loops and
            escapes); links whose target is inside the walked folder are always used.
        on_error: called for each unreadable, missing or refused path; by default they are
            skipped.
        allowed_roots: when given, nothing outside them is yielded or entered, whatever the links
            (``storage.allowed_roots``); a root outside them is refused before it is looked at.

    Yields:
        Paths, folder by folder, names sorted.
    """
    include = list(include) if include else list(DEFAULT_INCLUDE)
    exclude = list(exclude)
    allowed = resolve_roots(allowed_roots)

    def report(path: str, reason: str) -> None:
        if on_error is not None:
            on_error(WalkError(path, reason))

    for root in roots:
        root = Path(root)
        # Refused before any stat, so the answer says nothing about what exists out there.
        if allowed and not is_inside(os.path.abspath(root), allowed):
            report(str(root), NOT_ALLOWED)
            continue
        if not root.exists() and not root.is_symlink():
            report(str(root), "no such file or folder")
            continue
        if not root.is_dir():
            if not _matches(root.name, root.name, exclude):
                yield root
            continue
        yield from _walk_folder(root, include, exclude, follow_symlinks, allowed, report)


def _walk_folder(
    root: Path,
    include: Sequence[str],
    exclude: Sequence[str],
    follow_symlinks: bool,
    allowed: tuple[Path, ...],
    report: Callable[[str, str], None],
) -> Iterator[Path]:
    """One folder's matching files, links confined (see the module docstring)."""
    if allowed:
        confine, refusal = allowed, NOT_ALLOWED
    elif not follow_symlinks:
        confine, refusal = resolve_roots([root]), LINK_OUTSIDE
    else:
        confine, refusal = (), ""
    seen: set[tuple[int, int]] = set()

    def onerror(exc: OSError) -> None:
        report(str(exc.filename or root), exc.strerror or str(exc))

    # os.walk may enter links to folders; the loop below keeps only those allowed: none
    # without follow_symlinks (as before: no duplicate names), confined ones with it.
    for dirpath, dirnames, filenames in os.walk(root, onerror=onerror, followlinks=True):
        base = Path(dirpath)
        try:
            stat = base.stat()
        except OSError as exc:
            report(str(base), exc.strerror or str(exc))
            dirnames[:] = []
            continue
        if (stat.st_dev, stat.st_ino) in seen:  # a loop through links: been here
            dirnames[:] = []
            continue
        seen.add((stat.st_dev, stat.st_ino))
        rel_base = base.relative_to(root).as_posix()
        rel_base = "" if rel_base == "." else rel_base + "/"
        kept: list[str] = []
        for d in sorted(dirnames):
            if _matches(rel_base + d, d, exclude):
                continue
            sub = base / d
            if sub.is_symlink():
                if not follow_symlinks:
                    continue  # links to folders are entered only when asked
                if confine and not is_inside(sub, confine):
                    report(str(sub), refusal)
                    continue
            kept.append(d)
        dirnames[:] = kept
        for name in sorted(filenames):
            rel = rel_base + name
            if not (_matches(rel, name, include) and not _matches(rel, name, exclude)):
                continue
            path = base / name
            if confine and path.is_symlink() and not is_inside(path, confine):
                report(str(path), refusal)
                continue
            yield path
