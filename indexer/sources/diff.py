"""A listing against what the source's table recorded: what to read, what is unchanged, what
came back, what is gone."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from indexer.db.source_repo import KnownObject
from indexer.sources.s3 import Listed


@dataclass
class Diff:
    """The outcome of comparing one listing (or the watcher's touched keys) with the table."""

    new: list[Listed] = field(default_factory=list)
    changed: list[Listed] = field(default_factory=list)
    unchanged: int = 0
    back: list[str] = field(default_factory=list)  # gone before, listed again unchanged
    gone: list[str] = field(default_factory=list)

    @property
    def to_read(self) -> list[Listed]:
        """New and changed objects: the only ones read."""
        return self.new + self.changed


def same(entry: Listed, known: KnownObject) -> bool:
    """Whether a listed object is what was registered: same ETag and size when the store gives
    ETags (a re-upload of the same bytes keeps its ETag, so its new mtime is no change), else
    same size and mtime (folders)."""
    if known.asset_id is None or known.size is None:
        return False  # never registered (or its read failed, or its asset was deleted)
    if entry.size != known.size:
        return False
    if entry.etag is not None or known.etag is not None:
        return entry.etag == known.etag
    return entry.mtime == known.mtime


def diff_listing(
    listed: Iterable[Listed],
    known: Mapping[str, KnownObject],
    scope: Iterable[str] | None = None,
) -> Diff:
    """Compare a listing with the table.

    Args:
        listed: what the store has now.
        known: the table's rows (all of the source's, or those of ``scope``).
        scope: the keys this listing covers (the watcher's touched files); None: every key (a
            full scan: any known key not listed is gone).
    """
    out = Diff()
    seen: set[str] = set()
    for entry in listed:
        seen.add(entry.key)
        row = known.get(entry.key)
        if row is None or row.asset_id is None and row.size is None and row.etag is None:
            out.new.append(entry)
        elif same(entry, row):
            out.unchanged += 1
            if row.gone:
                out.back.append(entry.key)
        else:
            out.changed.append(entry)
    keys = known.keys() if scope is None else [k for k in scope if k in known]
    out.gone = [k for k in keys if k not in seen and not known[k].gone]
    return out
