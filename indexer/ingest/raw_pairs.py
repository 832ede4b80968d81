"""RAW+JPEG pairs (``media.raw_jpeg_pairs``, docs/media.md): which files of a listing pair.

A camera RAW and the JPEG of the same base name in the same folder are one asset (the RAW)
when registered together (:meth:`indexer.ingest.register.Registrar.register_pair`). Pure
functions over paths and source objects, plus the LibRaw check that a RAW can be the master.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from indexer.media import RAW_EXTENSIONS
from indexer.sources.items import SourceItem

#: Extensions of the camera JPEG of a RAW+JPEG pair (matched case-insensitively).
PAIR_JPEG_EXTENSIONS = frozenset({".jpg", ".jpeg"})


@dataclass(frozen=True, eq=False)
class RawJpegPair:
    """A camera RAW and the JPEG of the same base name in the same folder: one asset (the
    RAW) when registered together. ``str()`` is the RAW's, so job params and progress name it."""

    raw: Path | SourceItem
    jpeg: Path | SourceItem

    def __str__(self) -> str:
        return str(self.raw)


def libraw_opens(path: Path) -> bool:
    """Whether LibRaw opens the RAW (parses its headers; no sensor data is read)."""
    import rawpy  # imported here: only pairs need it at registration

    try:
        with rawpy.imread(str(path)):
            return True
    except Exception:  # noqa: BLE001 - unsupported, corrupt, truncated: not a usable master
        return False


def _split(source: Path | SourceItem) -> tuple[tuple[object, ...], str, str] | None:
    """(folder, stem, lower-case extension) of a file or a source's object; None for others."""
    if isinstance(source, SourceItem):
        folder, name = posixpath.split(source.key)
        stem, ext = posixpath.splitext(name)
        return ("item", source.source_id, folder), stem, ext.lower()
    if isinstance(source, Path):  # string functions: a walk may yield millions of paths
        text = os.fspath(source)
        folder, name = os.path.split(text if os.path.isabs(text) else os.path.abspath(text))
        stem, ext = os.path.splitext(name)
        return ("path", folder), stem, ext.lower()
    return None


def group_raw_jpeg_pairs(
    items: Iterable[str | Path | SourceItem],
) -> tuple[list[str | Path | SourceItem | RawJpegPair], int]:
    """Group each camera RAW with the JPEG of the same base name in the same folder.

    Base names match exactly, extensions case-insensitively (``IMG_0001.CR2`` with
    ``IMG_0001.JPG`` or ``.jpeg``). Only a name with exactly one RAW and exactly one JPEG pairs:
    ``IMG_0001.CR2`` + ``IMG_0001.DNG`` + ``IMG_0001.JPG`` is ambiguous and stays three files.
    URLs never pair. The pair takes the RAW's place in the order; the JPEG leaves the list.

    Returns:
        The items with pairs grouped, and how many pairs were formed.
    """
    items = list(items)
    groups: dict[tuple[object, str], tuple[list[int], list[int]]] = {}
    for i, item in enumerate(items):
        parts = _split(item) if not isinstance(item, str) else None
        if parts is None:
            continue
        folder, stem, ext = parts
        if ext in RAW_EXTENSIONS:
            groups.setdefault((folder, stem), ([], []))[0].append(i)
        elif ext in PAIR_JPEG_EXTENSIONS:
            groups.setdefault((folder, stem), ([], []))[1].append(i)
    pair_at: dict[int, int] = {}  # RAW index -> JPEG index
    for raws, jpegs in groups.values():
        if len(raws) == 1 and len(jpegs) == 1:
            pair_at[raws[0]] = jpegs[0]
    companions = set(pair_at.values())
    out: list[str | Path | SourceItem | RawJpegPair] = []
    for i, item in enumerate(items):
        if i in companions:
            continue
        if i in pair_at:
            out.append(RawJpegPair(item, items[pair_at[i]]))  # type: ignore[arg-type]
        else:
            out.append(item)
    return out, len(pair_at)
