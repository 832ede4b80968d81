"""Assets and their tags out of ramdex: XMP sidecars, CSV, JSON (docs/metadata.md).

The tags exported for an asset are the ones a default tag search matches it by: every label
that is manual, embedded or an accepted model/concept tag, and every model/concept tag scored
above its threshold that is not rejected. ``sources`` narrows that to tags having one of the
given sources. Model tags nobody confirmed (no review, not manual, not embedded) can be marked
with a prefix or suffix (``ai:dog``) in sidecars, so a DAM tells them from people's keywords.

Assets are read a page at a time, each page in its own short session, so an export of millions
of assets neither holds a transaction open nor all rows in memory.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.orm import Session

from indexer.db.assets import Asset, AssetSource, AssetStatus
from indexer.db.collection_scope import EVERYTHING, CollectionScope
from indexer.db.labels import TagSource, label_key
from indexer.db.tags import Tag, TagOrigin
from indexer.db.taxonomy import TaxonomyBroader, TaxonomyTerm
from indexer.keywords import SidecarJob, SidecarName, sidecar_path, write_xmp_sidecars
from indexer.provenance import TagOnAsset, tags_on_assets

PAGE = 500  # assets per page (one session, one scores probe, one sidecar batch)
MAX_PATHS = 16  # hierarchy paths per tag (a tag with many parents)
MAX_DEPTH = 32  # hierarchy depth (a cycle in the taxonomy ends here)
CSV_COLUMNS = (
    "asset_id", "sha256", "mime", "width", "height", "created_at", "source_uris", "tags",
    "tag_details",
)  # fmt: skip

Sessions = Callable[[], AbstractContextManager[Session]]


@dataclass(frozen=True)
class Selection:
    """Which assets to export: ids, or a tag query (names as ``ramdex search`` takes them), or
    all done assets when neither is given; and which tag sources count. ``scope``: only the
    assets and tags a collection-limited caller sees, and no source URIs for it (they may be
    another collection's; docs/collections.md)."""

    asset_ids: tuple[int, ...] | None = None
    all_: tuple[str, ...] = ()
    any_: tuple[str, ...] = ()
    none: tuple[str, ...] = ()
    sources: frozenset[TagSource] = frozenset(TagSource)
    scope: CollectionScope = EVERYTHING

    @property
    def is_query(self) -> bool:
        """Whether a tag query selects the assets."""
        return bool(self.all_ or self.any_ or self.none)


@dataclass
class ExportAsset:
    """One exported asset: its facts, where it came from, its selected tags (best first)."""

    asset_id: int
    sha256: str
    mime: str | None
    width: int | None
    height: int | None
    created_at: datetime | None
    source_uris: list[str]
    storage_path: str | None
    tags: list[TagOnAsset]

    def to_dict(self, hide: Callable[[str], str] | None = None) -> dict[str, Any]:
        """JSON form; ``hide`` rewrites source URIs (server paths hidden from read keys)."""
        uris = [hide(u) for u in self.source_uris] if hide else self.source_uris
        return {
            "asset_id": self.asset_id, "sha256": self.sha256, "mime": self.mime,
            "width": self.width, "height": self.height,
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "source_uris": uris, "tags": [t.to_dict() for t in self.tags],
        }  # fmt: skip


# -- selecting assets and tags -------------------------------------------------------------


def iter_asset_pages(
    sessions: Sessions, model_name: str, selection: Selection, page: int = PAGE
) -> Iterator[list[int]]:
    """Asset ids of the selection, a page at a time (ids in order; a query in search order).

    Raises:
        UnknownTagError: a query names no tag of the model.
    """
    scope = selection.scope
    if selection.asset_ids is not None:
        ids = list(dict.fromkeys(selection.asset_ids))
        for start in range(0, len(ids), page):
            part = ids[start : start + page]
            if scope.restricted:  # unseen ids are left out, as ids that do not exist are
                with sessions() as session:
                    seen = scope.visible_assets(session, part)
                part = [i for i in part if i in seen]
            yield part
        return
    if not selection.is_query:
        after = 0
        while True:
            with sessions() as session:
                ids = list(
                    session.scalars(
                        sa.select(Asset.id)
                        .where(
                            Asset.status == AssetStatus.DONE.value,
                            Asset.id > after,
                            *scope.asset_conditions(Asset.id),
                        )
                        .order_by(Asset.id)
                        .limit(page)
                    )
                )
            if not ids:
                return
            yield ids
            after = ids[-1]
    from indexer.db.search import search_by_tags

    cursor: str | None = None
    while True:
        with sessions() as session:
            found = search_by_tags(
                session, model_name=model_name, all_=selection.all_, any_=selection.any_,
                none=selection.none, limit=min(page, 1000), cursor=cursor, order="date",
                scope=scope,
            )  # fmt: skip
        if found.hits:
            yield [h.asset_id for h in found.hits]
        if found.next_cursor is None:
            return
        cursor = found.next_cursor


@dataclass(frozen=True)
class _TagInfo:
    id: int
    english: str
    chinese: str | None
    threshold: float
    source: str  # "model" or "concept"


def load_vocabulary(session: Session, model_name: str) -> dict[int, _TagInfo]:
    """The model's tags by id, with effective thresholds (read once per export)."""
    rows = session.execute(
        sa.select(
            Tag.id, Tag.english, Tag.chinese,
            sa.func.coalesce(Tag.threshold_override, Tag.threshold), Tag.origin,
        ).where(Tag.model_name == model_name)
    )  # fmt: skip
    return {
        int(i): _TagInfo(
            int(i), en, zh, float(t),
            TagSource.CONCEPT.value if o == TagOrigin.CONCEPT.value else TagSource.MODEL.value,
        )
        for i, en, zh, t, o in rows
    }  # fmt: skip


def select_tags(
    session: Session,
    model_name: str,
    asset_ids: Sequence[int],
    sources: Iterable[TagSource] = tuple(TagSource),
    scope: CollectionScope = EVERYTHING,
) -> dict[int, list[TagOnAsset]]:
    """The tags each asset is exported with (module docstring), best first: labelled ones
    (manual, embedded, accepted) before what only the model says, then by score; tags of
    collections ``scope`` does not see are left out."""
    wanted = {TagSource(s).value for s in sources}
    hidden = scope.hidden_tag_ids(session)
    result: dict[int, list[TagOnAsset]] = {}
    for asset_id, views in tags_on_assets(session, model_name, asset_ids).items():
        kept = [t for t in views if set(t.sources) & wanted and t.tag_id not in hidden]
        kept.sort(key=lambda t: (t.model_only, -(t.score or 0.0), t.name))
        result[asset_id] = kept
    return result


def iter_export_assets(
    sessions: Sessions,
    model_name: str,
    selection: Selection,
    *,
    page: int = PAGE,
    on_page: Callable[[int], None] | None = None,
) -> Iterator[list[ExportAsset]]:
    """The selection's assets with their tags, a page at a time.

    Raises:
        UnknownTagError: a query names no tag of the model.
    """
    for ids in iter_asset_pages(sessions, model_name, selection, page):
        with sessions() as session:
            assets = {
                a.id: a
                for a in session.execute(
                    sa.select(
                        Asset.id, Asset.sha256, Asset.mime, Asset.width, Asset.height,
                        Asset.created_at, Asset.storage_path,
                    ).where(Asset.id.in_(ids))
                )
            }  # fmt: skip
            uris: dict[int, list[str]] = {}
            rows = session.execute(
                sa.select(AssetSource.asset_id, AssetSource.uri)
                .where(AssetSource.asset_id.in_(ids))
                .order_by(AssetSource.id)
            )
            for asset_id, uri in [] if selection.scope.restricted else rows:
                uris.setdefault(int(asset_id), []).append(uri)
            tags = select_tags(
                session,
                model_name,
                [i for i in ids if i in assets],
                selection.sources,
                selection.scope,
            )
        found = [
            ExportAsset(
                asset_id=a.id, sha256=a.sha256, mime=a.mime, width=a.width, height=a.height,
                created_at=a.created_at, source_uris=uris.get(a.id, []),
                storage_path=a.storage_path, tags=tags.get(a.id, []),
            )
            for a in (assets[i] for i in ids if i in assets)
        ]  # fmt: skip
        if on_page is not None:
            on_page(len(ids))
        yield found


# -- hierarchy ----------------------------------------------------------------------------------


class Hierarchy:
    """Broader-term paths from ``taxonomy_broader`` (read once): ``dog`` -> ``animal|dog``.

    Labels are the concepts' preferred English labels (else any preferred label, else the
    vocabulary's English name, else the key).
    """

    def __init__(self, session: Session, vocabulary: dict[int, _TagInfo]) -> None:
        self.broader: dict[str, list[str]] = {}
        for concept, broader in session.execute(
            sa.select(TaxonomyBroader.concept, TaxonomyBroader.broader).order_by(
                TaxonomyBroader.concept, TaxonomyBroader.broader
            )
        ):
            self.broader.setdefault(concept, []).append(broader)
        self.labels: dict[str, str] = {label_key(t.english): t.english for t in vocabulary.values()}
        if self.broader:
            rows = session.execute(
                sa.select(TaxonomyTerm.concept, TaxonomyTerm.label, TaxonomyTerm.lang).where(
                    TaxonomyTerm.preferred.is_(True)
                )
            ).all()
            for concept, label, _lang in sorted(rows, key=lambda r: str(r[2]).startswith("en")):
                self.labels[concept] = label  # English last: it wins

    def __bool__(self) -> bool:
        return bool(self.broader)

    def label(self, key: str) -> str:
        """A concept's display label."""
        return self.labels.get(key, key)

    def paths(self, key: str) -> list[tuple[str, ...]]:
        """Every path of concept keys from a root down to ``key`` (just ``(key,)`` at a root)."""
        found: list[tuple[str, ...]] = []

        def walk(node: str, below: tuple[str, ...]) -> None:
            if len(found) >= MAX_PATHS:
                return
            parents = [p for p in self.broader.get(node, []) if p not in below]
            if not parents or len(below) >= MAX_DEPTH:
                found.append((node, *below))
                return
            for parent in parents:
                walk(parent, (node, *below))

        walk(key, ())
        return found


# -- XMP sidecars -------------------------------------------------------------------------------


@dataclass(frozen=True)
class XmpOptions:
    """How sidecars are named and placed, and how unconfirmed model tags are marked."""

    naming: SidecarName = SidecarName.EXT
    out: Path | None = None  # None: beside each local original
    relative_to: Path | None = None  # with ``out``: mirror names relative to this folder
    model_prefix: str = ""
    model_suffix: str = ""


@dataclass
class XmpCounts:
    """What an XMP export did."""

    assets: int = 0
    written: int = 0
    skipped: int = 0  # assets with no local original (URL or upload) and no --out
    empty: int = 0  # assets with no tag to export and no sidecar yet (none is created)
    failed: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (the API's answer, ``--json``)."""
        return {
            "assets": self.assets, "written": self.written, "skipped": self.skipped,
            "empty": self.empty, "failed": len(self.failed),
            "failures": [{"sidecar": s, "reason": r} for s, r in self.failed[:20]],
        }  # fmt: skip


def _local_sources(asset: ExportAsset) -> list[Path]:
    return [Path(u) for u in asset.source_uris if u.startswith("/") and Path(u).is_file()]


def _safe_name(text: str) -> str:
    name = PurePosixPath(urlsplit(text).path or text).name
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name).strip("._") or "asset"


def _originals(asset: ExportAsset, options: XmpOptions) -> list[Path]:
    """Where the sidecars' originals are: each local source, or (with ``out``) their mirror
    under ``out``; a URL or upload has a mirror named ``<asset id>-<file name>``."""
    local = _local_sources(asset)
    if options.out is None:
        return local
    mirrored: list[Path] = []
    for path in local:
        if options.relative_to is not None:
            try:
                mirrored.append(options.out / path.relative_to(options.relative_to))
                continue
            except ValueError:
                pass  # outside the folder: mirrored by its absolute path below
        mirrored.append(options.out / path.relative_to(path.anchor))
    if not mirrored:
        first = asset.source_uris[0] if asset.source_uris else asset.sha256
        mirrored.append(options.out / f"{asset.asset_id}-{_safe_name(first.split(':', 1)[-1])}")
    return mirrored


def sidecar_jobs(
    asset: ExportAsset, options: XmpOptions, hierarchy: Hierarchy | None
) -> list[SidecarJob]:
    """The sidecars of one asset with its subjects (and hierarchical subjects when the
    taxonomy has a hierarchy)."""

    def shown(tag: TagOnAsset, text: str) -> str:
        return f"{options.model_prefix}{text}{options.model_suffix}" if tag.model_only else text

    subjects = tuple(shown(t, t.name) for t in asset.tags)
    paths: list[tuple[str, ...]] = []
    if hierarchy:
        for tag in asset.tags:
            for keys in hierarchy.paths(tag.key):
                labels = [hierarchy.label(k) for k in keys[:-1]]
                paths.append((*labels, shown(tag, tag.name)))
    return [
        SidecarJob(sidecar_path(original, options.naming), subjects, tuple(paths))
        for original in dict.fromkeys(_originals(asset, options))
    ]


def export_xmp(
    sessions: Sessions,
    model_name: str,
    selection: Selection,
    options: XmpOptions,
    *,
    on_page: Callable[[int], None] | None = None,
) -> XmpCounts:
    """Write XMP sidecars for the selection (never touching an original).

    Raises:
        ExifToolMissingError: no ExifTool (checked before anything is read).
        UnknownTagError: a query names no tag of the model.
    """
    from indexer.keywords import exiftool_path

    exiftool_path()  # fail before any work when ExifTool is missing
    counts = XmpCounts()
    with sessions() as session:
        hierarchy = Hierarchy(session, load_vocabulary(session, model_name))
    for assets in iter_export_assets(sessions, model_name, selection, on_page=on_page):
        jobs: list[SidecarJob] = []
        for asset in assets:
            counts.assets += 1
            mine = sidecar_jobs(asset, options, hierarchy)
            if not mine:
                counts.skipped += 1
            elif not asset.tags:  # nothing to say: only an existing sidecar is updated (cleared)
                mine = [j for j in mine if j.sidecar.exists()]
                counts.empty += not mine
            jobs += mine
        written, failed = write_xmp_sidecars(jobs)
        counts.written += len(written)
        counts.failed += [(str(p), reason) for p, reason in failed]
    return counts


# -- CSV and JSON -------------------------------------------------------------------------------


def csv_header() -> str:
    """The CSV export's header line."""
    return _csv_line(CSV_COLUMNS)


def _csv_line(values: Sequence[Any]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue()


def csv_row(asset: ExportAsset, hide: Callable[[str], str] | None = None) -> str:
    """One asset as a CSV line: facts, source URIs and tag names joined by ``; ``, and every
    tag's score, sources and review as a JSON array (``tag_details``)."""
    uris = [hide(u) for u in asset.source_uris] if hide else asset.source_uris
    return _csv_line(
        [
            asset.asset_id, asset.sha256, asset.mime or "", asset.width or "",
            asset.height or "", asset.created_at.isoformat() if asset.created_at else "",
            "; ".join(uris), "; ".join(t.name for t in asset.tags),
            json.dumps([t.to_dict() for t in asset.tags], ensure_ascii=False),
        ]
    )  # fmt: skip


def iter_csv(pages: Iterable[list[ExportAsset]], hide: Callable[[str], str] | None = None):
    """The CSV export as text chunks (header, then a chunk per page)."""
    yield csv_header()
    for assets in pages:
        yield "".join(csv_row(a, hide) for a in assets)


def iter_json(
    pages: Iterable[list[ExportAsset]], model_name: str, hide: Callable[[str], str] | None = None
) -> Iterator[str]:
    """The JSON export (``{"model_id": ..., "assets": [...]}``) as text chunks, one per page,
    so a large export streams."""
    yield json.dumps({"model_id": model_name})[:-1] + ', "assets": ['
    first = True
    for assets in pages:
        for asset in assets:
            yield (
                ("" if first else ",") + "\n" + json.dumps(asset.to_dict(hide), ensure_ascii=False)
            )
            first = False
    yield "\n]}\n"


def write_text(chunks: Iterable[str], out: Path | None) -> None:
    """Write text chunks to a file (atomically: a temporary file renamed) or to stdout."""
    if out is None:
        import sys

        for chunk in chunks:
            sys.stdout.write(chunk)
        sys.stdout.flush()
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.part")
    try:
        with tmp.open("w", encoding="utf-8", newline="") as handle:
            for chunk in chunks:
                handle.write(chunk)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
