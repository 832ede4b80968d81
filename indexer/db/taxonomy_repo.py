"""The stored taxonomy: import (atomic replace or merge), look-ups and search expansion.

The taxonomy is keyed by names, like labels (indexer/db/labels.py): a concept's key is
``label_key`` of its preferred English label, the same key a tag or free keyword is stored under,
so expanding a search term gives label keys to match directly. Everything here works alike on
PostgreSQL and SQLite (hierarchies are walked breadth first, one query per level, so no recursive
CTE dialect differences; a depth cap stops the walk).

Entry points for search (indexer/db/search.py) and the tag list (api/routers/tags.py):

- :func:`expand` turns one query term into the :class:`Expansion` list of keys to match (the
  term itself always first);
- :func:`tag_relations` gives each tag name its ancestors and aliases (AWS's Parents/Aliases).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.orm import Session

from indexer.db.labels import label_key
from indexer.db.taxonomy import TaxonomyBroader, TaxonomyTerm
from indexer.taxonomy import ENGLISH, Concept, Taxonomy, Term, build

#: How many levels below (or above) a concept a walk goes at most: far deeper than any real
#: vocabulary; it bounds the work should a cycle ever get into the tables by hand.
MAX_DEPTH = 16
_CHUNK = 500  # IN-list size per query (SQLite's bound-parameter limit is far above)

Via = Literal["name", "synonym", "descendant"]


@dataclass(frozen=True)
class Expansion:
    """One label key a search term expands to.

    Attributes:
        key: the key to match (a tag's lower-cased English name, or a keyword's key).
        matched_term: that key's name as the taxonomy writes it (``Automobile``, ``dog``): what
            a hit shows as the term that matched.
        via: ``name`` (the query term itself), ``synonym`` (another name of the same concept),
            ``descendant`` (a name of a narrower concept, at any depth).
        depth: levels below the query's concept (0 for name and synonym).
    """

    key: str
    matched_term: str
    via: Via
    depth: int = 0


@dataclass(frozen=True)
class ConceptRef:
    """A concept named by its key and its preferred English label."""

    key: str
    label: str


@dataclass(frozen=True)
class Alias:
    """A name of a concept other than its preferred English label."""

    label: str
    lang: str
    preferred: bool  # the preferred label of its language (zh: 汽车)


@dataclass
class ConceptInfo:
    """Everything about one concept: for ``ramdex taxonomy show`` and ``GET /taxonomy/terms``."""

    key: str
    label: str
    matched: str  # the name asked about, as the taxonomy writes it
    labels: dict[str, str]  # preferred label per language
    aliases: list[Alias]
    parents: list[ConceptRef]
    children: list[ConceptRef]


@dataclass(frozen=True)
class TagRelations:
    """A tag's place in the taxonomy: ancestors nearest first, and its other names."""

    parents: list[str] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TaxonomyStats:
    """What the stored taxonomy holds."""

    concepts: int
    terms: int
    terms_by_lang: dict[str, int]
    edges: int
    roots: int  # concepts with no broader concept
    depth: int  # longest chain of broader edges (0: no hierarchy)


@dataclass(frozen=True)
class ImportResult:
    """What an import stored."""

    concepts: int
    terms: int
    edges: int
    bare: list[str]  # broader tag names the file did not define, stored as concepts


# ---------- writing ----------


def _lock(session: Session) -> None:
    """Serialise imports on PostgreSQL (two replaces would collide on the new keys); plain
    reads still go on (EXCLUSIVE does not conflict with SELECT's ACCESS SHARE). SQLite
    serialises writers by itself."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(sa.text("LOCK TABLE taxonomy_terms, taxonomy_broader IN EXCLUSIVE MODE"))


def replace_taxonomy(session: Session, taxonomy: Taxonomy) -> None:
    """Replace the stored taxonomy by ``taxonomy`` in the session's transaction: readers see the
    old one or the new one, never a mix (the caller commits; an error rolls it all back)."""
    _lock(session)
    session.execute(sa.delete(TaxonomyBroader))
    session.execute(sa.delete(TaxonomyTerm))
    if taxonomy.terms:
        session.execute(
            sa.insert(TaxonomyTerm),
            [
                {
                    "key": t.key,
                    "concept": t.concept,
                    "label": t.label,
                    "lang": t.lang,
                    "preferred": t.preferred,
                }
                for t in taxonomy.terms
            ],
        )
    if taxonomy.edges:
        session.execute(
            sa.insert(TaxonomyBroader), [{"concept": c, "broader": b} for c, b in taxonomy.edges]
        )
    session.flush()


def known_tag_names(session: Session) -> set[str]:
    """Keys of the tag names a broader entry may name without defining it: every model's tags in
    the archive and the built-in RAM++ list (the vocabulary of a model not yet used)."""
    from indexer.db.tags import Tag
    from ram_pp.vocab import builtin_vocabulary

    names = set(session.scalars(sa.select(Tag.english).distinct()))
    names.update(builtin_vocabulary().english)
    return {label_key(n) for n in names}


def check_concepts(
    session: Session, concepts: Sequence[Concept], *, merge: bool = False
) -> Taxonomy:
    """The taxonomy importing ``concepts`` would store (checked; nothing is written).

    Raises:
        TaxonomyFileError: the file (or, merged, the file with the stored taxonomy) is invalid.
    """
    base = load(session).concepts.values() if merge else ()
    return build(concepts, base=base, tag_names=known_tag_names(session))


def import_concepts(
    session: Session, concepts: Sequence[Concept], *, merge: bool = False
) -> ImportResult:
    """Check a file's concepts and store them: replacing the stored taxonomy, or with ``merge``
    on top of it (a concept of the file replaces the stored one of the same key; the result is
    checked as a whole). In the session's transaction (the caller commits).

    Raises:
        TaxonomyFileError: the file (or, merged, the file with the stored taxonomy) is invalid;
            nothing is changed.
    """
    _lock(session)  # before reading what a merge builds on
    taxonomy = check_concepts(session, concepts, merge=merge)
    replace_taxonomy(session, taxonomy)
    return result_of(taxonomy)


def result_of(taxonomy: Taxonomy) -> ImportResult:
    """What storing ``taxonomy`` stores (counts, bare broader tag names)."""
    return ImportResult(
        len(taxonomy.concepts), len(taxonomy.terms), len(taxonomy.edges), taxonomy.bare
    )


# ---------- reading ----------


def load(session: Session) -> Taxonomy:
    """The stored taxonomy, concepts ordered by key (for export and merge)."""
    concepts: dict[str, Concept] = {}
    terms = session.scalars(
        sa.select(TaxonomyTerm).order_by(
            TaxonomyTerm.concept,
            TaxonomyTerm.preferred.desc(),
            TaxonomyTerm.lang,
            TaxonomyTerm.label,
        )
    ).all()
    for t in terms:
        concept = concepts.setdefault(t.concept, Concept(pref={}, where="the stored taxonomy"))
        if t.preferred and t.lang not in concept.pref:
            concept.pref[t.lang] = t.label
        else:
            concept.alt.setdefault(t.lang, []).append(t.label)
    edges = session.execute(
        sa.select(TaxonomyBroader.concept, TaxonomyBroader.broader).order_by(
            TaxonomyBroader.concept, TaxonomyBroader.broader
        )
    ).all()
    for c, b in edges:
        if c in concepts and b in concepts:
            concepts[c].broader.append(b)
    return Taxonomy(
        concepts=concepts,
        terms=[Term(t.key, t.concept, t.label, t.lang, t.preferred) for t in terms],
        edges=[(c, b) for c, b in edges],
    )


def _chunks(keys: Iterable[str]) -> Iterable[list[str]]:
    items = list(keys)
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


def _terms_of(session: Session, concepts: Iterable[str]) -> dict[str, list[TaxonomyTerm]]:
    """Every name of each concept: its preferred English label first, then the other preferred
    labels, then the synonyms."""
    out: dict[str, list[TaxonomyTerm]] = {}
    for chunk in _chunks(set(concepts)):
        for t in session.scalars(sa.select(TaxonomyTerm).where(TaxonomyTerm.concept.in_(chunk))):
            out.setdefault(t.concept, []).append(t)
    for names in out.values():
        names.sort(
            key=lambda t: (t.key != t.concept, not t.preferred, t.lang != ENGLISH, t.lang, t.label)
        )
    return out


def _label_of(names: list[TaxonomyTerm] | None, key: str) -> str:
    return names[0].label if names else key


def _neighbours(session: Session, keys: Iterable[str], *, up: bool) -> dict[str, list[str]]:
    """Direct broader (``up``) or narrower concepts of each key."""
    src, dst = (TaxonomyBroader.concept, TaxonomyBroader.broader)
    if not up:
        src, dst = dst, src
    out: dict[str, list[str]] = {}
    for chunk in _chunks(set(keys)):
        for a, b in session.execute(sa.select(src, dst).where(src.in_(chunk)).order_by(src, dst)):
            out.setdefault(a, []).append(b)
    return out


def _walk(
    session: Session, start: Iterable[str], *, up: bool, max_depth: int
) -> list[tuple[str, int]]:
    """Breadth-first walk from ``start``: (concept, depth) of every concept reached, nearest
    first, each once (several parents are common; a cycle cannot loop)."""
    seen = set(start)
    frontier = list(seen)
    out: list[tuple[str, int]] = []
    for depth in range(1, max_depth + 1):
        edges = _neighbours(session, frontier, up=up)
        frontier = []
        for key in sorted(edges):
            for nxt in edges[key]:
                if nxt not in seen:
                    seen.add(nxt)
                    frontier.append(nxt)
                    out.append((nxt, depth))
        if not frontier:
            break
    return out


def lookup(session: Session, name: str) -> str | None:
    """The key of the concept ``name`` names (a preferred label or a synonym, any language, any
    case), or None when the taxonomy does not know the name."""
    term = session.get(TaxonomyTerm, label_key(name))
    return term.concept if term is not None else None


def expand(
    session: Session, name: str, *, descendants: bool = False, max_depth: int = MAX_DEPTH
) -> list[Expansion]:
    """The label keys a search for ``name`` matches, each with the term that matches and why.

    The first entry is always ``name`` itself (``via='name'``; its key is ``label_key(name)``),
    so a term the taxonomy does not know expands to just itself. Then every other name of its
    concept (``synonym``: the preferred labels and synonyms in every language), then, with
    ``descendants``, every name of every narrower concept down to ``max_depth`` levels
    (``descendant``, nearest first). Each key appears once.
    """
    key = label_key(name)
    term = session.get(TaxonomyTerm, key)
    if term is None:
        return [Expansion(key, " ".join(name.split()), "name")]
    out: dict[str, Expansion] = {key: Expansion(key, term.label, "name")}
    levels = [(term.concept, 0)]
    if descendants:
        levels += _walk(session, [term.concept], up=False, max_depth=max_depth)
    names = _terms_of(session, [c for c, _d in levels])
    for concept, depth in levels:
        for t in names.get(concept, []):
            if t.key not in out:
                out[t.key] = Expansion(
                    t.key, t.label, "synonym" if depth == 0 else "descendant", depth
                )
    return list(out.values())


def _refs(session: Session, keys: list[str]) -> list[ConceptRef]:
    names = _terms_of(session, keys)
    return [ConceptRef(k, _label_of(names.get(k), k)) for k in keys]


def parents(session: Session, name: str, *, transitive: bool = False) -> list[ConceptRef]:
    """The broader concepts of the concept ``name`` names (a key or any of its names): direct
    ones, or with ``transitive`` every ancestor, nearest first. Empty for an unknown name."""
    concept = lookup(session, name)
    if concept is None:
        return []
    if transitive:
        keys = [k for k, _d in _walk(session, [concept], up=True, max_depth=MAX_DEPTH)]
    else:
        keys = _neighbours(session, [concept], up=True).get(concept, [])
    return _refs(session, keys)


def children(session: Session, name: str) -> list[ConceptRef]:
    """The direct narrower concepts of the concept ``name`` names."""
    concept = lookup(session, name)
    if concept is None:
        return []
    return _refs(session, _neighbours(session, [concept], up=False).get(concept, []))


def aliases(session: Session, name: str) -> list[Alias]:
    """Every name of the concept ``name`` names except its preferred English label (other
    languages' preferred labels first, then synonyms). Empty for an unknown name."""
    concept = lookup(session, name)
    if concept is None:
        return []
    return [Alias(t.label, t.lang, t.preferred) for t in _terms_of(session, [concept])[concept][1:]]


def describe(session: Session, name: str) -> ConceptInfo | None:
    """The concept ``name`` names with its labels, aliases, parents and children (None when
    the taxonomy does not know ``name``)."""
    term = session.get(TaxonomyTerm, label_key(name))
    if term is None:
        return None
    names = _terms_of(session, [term.concept])[term.concept]
    labels: dict[str, str] = {}
    for t in names:
        if t.preferred:
            labels.setdefault(t.lang, t.label)
    return ConceptInfo(
        key=term.concept,
        label=names[0].label,
        matched=term.label,
        labels=labels,
        aliases=[Alias(t.label, t.lang, t.preferred) for t in names[1:]],
        parents=parents(session, term.concept),
        children=children(session, term.concept),
    )


def tag_relations(session: Session, english_names: Iterable[str]) -> dict[str, TagRelations]:
    """Parents (every ancestor's preferred English label, nearest first) and aliases (the
    concept's other names, any language) of each tag name, by the name's ``label_key``; a name
    the taxonomy does not know is left out. A few queries for the whole page of tags."""
    keys = {label_key(n) for n in english_names}
    concept_of: dict[str, str] = {}
    for chunk in _chunks(keys):
        for k, c in session.execute(
            sa.select(TaxonomyTerm.key, TaxonomyTerm.concept).where(TaxonomyTerm.key.in_(chunk))
        ):
            concept_of[k] = c
    if not concept_of:
        return {}
    concepts = set(concept_of.values())
    ancestors = {
        c: [a for a, _d in _walk(session, [c], up=True, max_depth=MAX_DEPTH)] for c in concepts
    }
    names = _terms_of(session, concepts | {a for chain in ancestors.values() for a in chain})
    out = {}
    for key, concept in concept_of.items():
        out[key] = TagRelations(
            parents=[_label_of(names.get(a), a) for a in ancestors[concept]],
            aliases=[t.label for t in names.get(concept, []) if t.key != key],
        )
    return out


def stats(session: Session) -> TaxonomyStats:
    """Counts of the stored taxonomy: concepts, names (per language), edges, roots, depth."""
    by_lang = dict(
        session.execute(
            sa.select(TaxonomyTerm.lang, sa.func.count())
            .group_by(TaxonomyTerm.lang)
            .order_by(TaxonomyTerm.lang)
        ).all()
    )
    concepts = session.scalars(sa.select(TaxonomyTerm.concept).distinct()).all()
    edges = session.execute(sa.select(TaxonomyBroader.concept, TaxonomyBroader.broader)).all()
    up: dict[str, list[str]] = {}
    for c, b in edges:
        up.setdefault(c, []).append(b)
    depth: dict[str, int] = {}

    def height(key: str, guard: int = 0) -> int:  # longest chain upwards, memoised
        if key not in depth:
            depth[key] = (
                0
                if guard > MAX_DEPTH
                else max((1 + height(b, guard + 1) for b in up.get(key, [])), default=0)
            )
        return depth[key]

    return TaxonomyStats(
        concepts=len(concepts),
        terms=sum(by_lang.values()),
        terms_by_lang={str(k): int(v) for k, v in by_lang.items()},
        edges=len(edges),
        roots=sum(1 for c in concepts if c not in up),
        depth=max((height(c) for c in concepts), default=0),
    )
