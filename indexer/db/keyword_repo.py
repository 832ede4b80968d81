"""Keywords a file carried at ingest, stored as ``embedded`` labels (indexer/db/labels.py).

Each keyword is mapped onto the model's vocabulary when a name matches: a tag whose English
name (case-insensitive) or Chinese name equals it, or a taxonomy term (``taxonomy_terms``: a
synonym or a preferred label, English or Chinese) naming a concept. A tag is stored under its
lower-cased English name with its English name as label; a taxonomy concept that is no tag under
its concept key and preferred label; anything else as a free keyword, as written.

Recording only adds: a keyword already embedded changes nothing (re-ingest, reindex), and an
embedded flag is never cleared here (re-scoring never drops labels). Runs in the caller's
transaction; never commits.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from indexer.db.base import utcnow
from indexer.db.labels import MAX_LABEL_LENGTH, AssetLabel, LabelAction, LabelChange, label_key
from indexer.db.tags import Tag
from indexer.db.taxonomy import TaxonomyTerm

if TYPE_CHECKING:
    from indexer.keywords import Keywords

INGEST_ACTOR = "ingest"


@dataclass(frozen=True, slots=True)
class MappedKeyword:
    """A keyword as stored: its label key and display label, and the tag it names (if any)."""

    key: str
    label: str
    tag_id: int | None = None


def _state(row: AssetLabel | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {"manual": bool(row.manual), "embedded": bool(row.embedded), "review": row.review}


def map_keywords(
    session: Session, names: Iterable[str], model_name: str
) -> dict[str, MappedKeyword]:
    """Map keywords onto the vocabulary of ``model_name`` (see the module docstring).

    Returns:
        ``{keyword as given: MappedKeyword}``; keywords that are empty after trimming, or longer
        than a label may be, are left out.
    """
    wanted = {
        n: label_key(n) for n in names if label_key(n) and len(label_key(n)) <= MAX_LABEL_LENGTH
    }
    if not wanted:
        return {}
    keys = set(wanted.values())
    stripped = {" ".join(n.split()) for n in wanted}
    # English names compare with lower() in SQL (as resolve_tags does) and casefold here.
    tags = session.scalars(
        sa.select(Tag).where(
            Tag.model_name == model_name,
            sa.or_(sa.func.lower(Tag.english).in_(keys), Tag.chinese.in_(stripped)),
        )
    ).all()
    by_english: dict[str, Tag] = {}
    by_chinese: dict[str, Tag] = {}
    for tag in sorted(tags, key=lambda t: t.id):  # lowest id first: stable for repeated names
        by_english.setdefault(label_key(tag.english), tag)
        if tag.chinese:
            by_chinese.setdefault(label_key(tag.chinese), tag)
    concepts = dict(
        session.execute(
            sa.select(TaxonomyTerm.key, TaxonomyTerm.concept).where(TaxonomyTerm.key.in_(keys))
        ).all()
    )
    concept_tags = _tags_by_key(session, model_name, set(concepts.values()) - set(by_english))
    labels = _preferred_labels(session, set(concepts.values()))

    result: dict[str, MappedKeyword] = {}
    for name, key in wanted.items():
        tag = by_english.get(key) or by_chinese.get(key)
        if tag is None and key in concepts:
            concept = concepts[key]
            tag = by_english.get(concept) or concept_tags.get(concept)
            if tag is None:  # a taxonomy concept the model has no tag for
                result[name] = MappedKeyword(concept, labels.get(concept, name))
                continue
        if tag is not None:
            result[name] = MappedKeyword(label_key(tag.english), tag.english, tag.id)
        else:
            result[name] = MappedKeyword(key, " ".join(name.split()))
    return result


def _tags_by_key(session: Session, model_name: str, keys: set[str]) -> dict[str, Tag]:
    if not keys:
        return {}
    tags = session.scalars(
        sa.select(Tag)
        .where(Tag.model_name == model_name, sa.func.lower(Tag.english).in_(keys))
        .order_by(Tag.id)
    ).all()
    found: dict[str, Tag] = {}
    for tag in tags:
        found.setdefault(label_key(tag.english), tag)
    return found


def _preferred_labels(session: Session, concepts: set[str]) -> dict[str, str]:
    """Display label of each concept: its preferred English label, else any preferred label."""
    if not concepts:
        return {}
    rows = session.execute(
        sa.select(TaxonomyTerm.concept, TaxonomyTerm.label, TaxonomyTerm.lang)
        .where(TaxonomyTerm.concept.in_(concepts), TaxonomyTerm.preferred.is_(True))
        .order_by(TaxonomyTerm.key)
    ).all()
    labels: dict[str, str] = {}
    for concept, label, _lang in sorted(rows, key=lambda r: not str(r[2]).startswith("en")):
        labels.setdefault(concept, label)
    return labels


def record_embedded_keywords(
    session: Session,
    asset_id: int,
    keywords: Keywords | Sequence[str],
    model_name: str,
    *,
    actor: str = INGEST_ACTOR,
) -> int:
    """Store a file's keywords as embedded labels of an asset, one ``embed`` change each.

    A keyword whose label is already embedded changes nothing; a label row that exists for
    another reason (manual, a review decision) gets ``embedded`` set and keeps the rest. Two
    keywords mapping to one tag (``dog`` and ``狗``) make one label.

    Args:
        session: the unit of work (the asset's ingest transaction).
        asset_id: an existing asset.
        keywords: a :class:`~indexer.keywords.Keywords` or plain names.
        model_name: whose vocabulary the names are mapped onto.
        actor: recorded on the changes.

    Returns:
        Labels that changed.
    """
    names = list(getattr(keywords, "names", keywords))
    mapped = map_keywords(session, names, model_name)
    by_key: dict[str, MappedKeyword] = {}
    for name in names:
        if name in mapped:
            by_key.setdefault(mapped[name].key, mapped[name])
    if not by_key:
        return 0
    existing = {
        row.key: row
        for row in session.scalars(
            sa.select(AssetLabel)
            .where(AssetLabel.asset_id == asset_id, AssetLabel.key.in_(list(by_key)))
            .with_for_update()  # PostgreSQL: a concurrent review of this asset waits for us
        )
    }
    changed = 0
    for key, kw in by_key.items():
        row = existing.get(key)
        if row is not None and row.embedded:
            continue  # idempotent: re-ingest and reindex record nothing
        before = _state(row)
        if row is None:
            row = AssetLabel(
                asset_id=asset_id, key=key, label=kw.label[:MAX_LABEL_LENGTH],
                manual=False, embedded=True, review=None, updated_by=actor,
            )  # fmt: skip
            session.add(row)
        else:
            row.embedded = True
            row.updated_by = actor
            row.updated_at = utcnow()
        session.add(
            LabelChange(
                asset_id=asset_id,
                key=key,
                action=LabelAction.EMBED.value,
                before=before,
                after=_state(row),
                actor=actor,
            )
        )
        changed += 1
    session.flush()
    return changed
