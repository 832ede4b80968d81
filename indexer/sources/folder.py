"""Folder sources: the folder walked like ``ramdex ingest FOLDER`` (:func:`indexer.walk.
walk_files`: links never lead out, ``storage.allowed_roots`` respected), each file listed with
its size and mtime."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from indexer.sources.globs import KeyFilter
from indexer.sources.s3 import Listed
from indexer.walk import WalkError, walk_files


def stat_listed(folder: Path, path: Path) -> Listed | None:
    """A file as a listing entry (key relative to the folder), None when it is gone or not a
    regular file."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not os.path.isfile(path):
        return None
    key = path.relative_to(folder).as_posix()
    return Listed(key, int(st.st_size), datetime.fromtimestamp(st.st_mtime, UTC))


def list_folder(
    folder: Path,
    keep: KeyFilter,
    allowed_roots: Iterable[Path] = (),
    on_error: list[WalkError] | None = None,
) -> Iterator[Listed]:
    """Files under ``folder`` the filter takes (keys relative to it, ``/``-separated)."""
    errors = on_error if on_error is not None else []
    # The walk's own include patterns take every file; the filter decides (one set of rules
    # for the full scan and the watcher's single files).
    for path in walk_files(
        [folder], include=["*"], on_error=errors.append, allowed_roots=tuple(allowed_roots)
    ):
        path = Path(path)
        try:
            rel = path.relative_to(folder).as_posix()
        except ValueError:  # resolved elsewhere inside the folder through a link
            continue
        if keep(rel):
            entry = stat_listed(folder, path)
            if entry is not None:
                yield entry
