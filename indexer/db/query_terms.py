"""The names a search asks for, resolved through the taxonomy into what an asset can match.

One query name (``automobile``, ``动物``, ``Project X``) becomes a *term*: the model's tags and
free keywords it stands for. The taxonomy (indexer/db/taxonomy_repo.py) adds every synonym and,
with ``narrower``, every name of a narrower concept ("animal" finds dogs); each name that is a
tag of the model (English, case-insensitive, or Chinese) adds that tag, the others stay free
keywords (matched by labels only: a manual tag outside the vocabulary, a keyword read from a
file). :class:`Term` keeps, per key, the query name it answers, so a hit can say which term
matched ("car", for "automobile").

A name that is no tag, no taxonomy term and no label is unknown (UnknownTagError), as before;
a taxonomy concept with no tag of its own matches its labels (and, with ``narrower``, its
narrower concepts' tags).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.orm import Session

from indexer.db.collection_scope import EVERYTHING, CollectionScope
from indexer.db.errors import UnknownTagError
from indexer.db.labels import AssetLabel, label_key
from indexer.db.tag_match import FreeKeyword
from indexer.db.tag_repo import resolve_tags
from indexer.db.tags import Tag
from indexer.db.taxonomy_repo import expand, lookup


@dataclass
class Term:
    """What one query name matches.

    Attributes:
        name: the query name as given.
        tags: the model's tags it stands for, and free keywords (:class:`FreeKeyword`).
        expanded_from: key -> the query name, for the keys the taxonomy added (synonyms,
            narrower concepts); the name's own keys are not in it.
    """

    name: str | int
    tags: list[Tag | FreeKeyword] = field(default_factory=list)
    expanded_from: dict[str, str] = field(default_factory=dict)


def resolve_terms(
    session: Session,
    model_name: str,
    names: Sequence[str | int],
    *,
    narrower: bool = False,
    scope: CollectionScope = EVERYTHING,
) -> dict[str | int, Term]:
    """Each of ``names`` (tag names, English or Chinese, tag ids, keywords) as a :class:`Term`.

    ``scope``: a collection-limited caller's; tags made from other collections' concepts and
    labels only on assets it does not see are unknown to it (never revealed by the answer).

    Raises:
        UnknownTagError: names that match no tag, taxonomy term or label.
    """
    out: dict[str | int, Term] = {}
    unknown: list[str | int] = []
    hidden = scope.hidden_tag_ids(session)
    for name in dict.fromkeys(names):
        if isinstance(name, int):
            if name in hidden:
                raise UnknownTagError([name], model_name)
            out[name] = Term(name, list(resolve_tags(session, model_name, [name])[name]))
            continue
        expansions = expand(session, name, descendants=narrower)
        own = label_key(name)
        spelled = {e.key: e.matched_term for e in expansions}
        spelled[own] = " ".join(name.split())
        tags = [
            t
            for t in _tags_named(session, model_name, list(spelled.values()))
            if t.id not in hidden
        ]
        term = Term(name)
        seen: set[int] = set()
        for key, written in spelled.items():
            found = [t for t in tags if label_key(t.english) == key or t.chinese == written]
            for tag in found:
                if tag.id not in seen:
                    seen.add(tag.id)
                    term.tags.append(tag)
                    if label_key(tag.english) != own and tag.chinese != spelled[own]:
                        term.expanded_from[label_key(tag.english)] = str(name)
            if not found and key not in {label_key(t.english) for t in term.tags}:
                term.tags.append(FreeKeyword(-(len(out) * 1000 + len(term.tags) + 1), written))
                if key != own:
                    term.expanded_from[key] = str(name)
        if not seen and lookup(session, name) is None and not _has_labels(session, own, scope):
            unknown.append(name)  # no tag, no taxonomy concept, no label: a typo, most likely
        out[name] = term
    if unknown:
        raise UnknownTagError(unknown, model_name)
    return out


def _tags_named(session: Session, model_name: str, names: list[str]) -> list[Tag]:
    """The model's tags whose English name (case-insensitive) or Chinese name is in ``names``."""
    lowered = {label_key(n) for n in names}
    return list(
        session.scalars(
            sa.select(Tag)
            .where(
                Tag.model_name == model_name,
                sa.or_(sa.func.lower(Tag.english).in_(lowered), Tag.chinese.in_(names)),
            )
            .order_by(Tag.id)
        )
    )


def _has_labels(session: Session, key: str, scope: CollectionScope = EVERYTHING) -> bool:
    visible = scope.asset_conditions(AssetLabel.asset_id)
    return session.execute(
        sa.select(sa.exists().where(AssetLabel.key == key, *visible))
    ).scalar_one()
