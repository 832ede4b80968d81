"""Vocabulary files: synonyms, preferred labels and hierarchy, read, checked and written back.

Two formats (docs/taxonomy.md):

- **CSV**, one row per concept, a header naming the columns: ``en`` (the preferred English
  label, required), ``zh`` (preferred Chinese label), ``alt_en`` / ``alt_zh`` (synonyms, ``|``
  between them), ``broader`` (the concepts it is narrower than, ``|`` between them). Any other
  language works the same way (``fr``, ``alt_fr``). Blank rows and rows whose first cell starts
  with ``#`` are skipped.
- **JSON**, SKOS-like: ``{"concepts": [{"prefLabel": {"en": "car", "zh": "汽车"},
  "altLabel": {"en": ["automobile"]}, "broader": ["vehicle"]}]}``.

A concept is named by its key, ``label_key`` of its preferred English label. Every name (a
preferred or alternative label in any language) names exactly one concept. A ``broader`` entry is
any name of a concept of the file or, when the file does not define it, a tag name of the
archive (``vehicle`` is a built-in RAM++ tag): such a *bare* concept is stored with that one name.
The hierarchy has no cycles. Every violation is a :class:`TaxonomyFileError` naming the line (CSV)
or the entry (JSON) to fix.

Nothing here touches the database (:mod:`indexer.db.taxonomy_repo` stores a :class:`Taxonomy`).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Container, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from indexer.db.labels import MAX_LABEL_LENGTH, label_key
from indexer.errors import RamdexError

Format = Literal["csv", "json"]

SEPARATOR = "|"  # between synonyms and between broader concepts in one CSV cell
BROADER = "broader"
ALT_PREFIX = "alt_"
ENGLISH = "en"
_LANG = re.compile(r"^[a-z]{2,3}(-[a-z0-9]{1,4})?$")  # en, zh, pt-br: fits terms.lang (8)
_JSON_KEYS = {"prefLabel", "altLabel", "broader"}
_HINT = "fix the file and import it again (docs/taxonomy.md describes both formats)"


class TaxonomyFileError(RamdexError):
    """A vocabulary file that cannot be imported; the message names the line or entry."""

    def __init__(self, message: str, *, hint: str = _HINT) -> None:
        super().__init__(message, hint=hint)


@dataclass
class Concept:
    """One concept as a file (or the stored taxonomy) states it.

    ``where`` says where it was stated (``line 4``, ``concept 3``, ``the stored taxonomy``) for
    error messages; ``broader`` holds names as written until :func:`build` resolves them to keys.
    """

    pref: dict[str, str]
    alt: dict[str, list[str]] = field(default_factory=dict)
    broader: list[str] = field(default_factory=list)
    where: str = ""

    @property
    def key(self) -> str:
        """The concept's key: ``label_key`` of its preferred English label."""
        return label_key(self.pref[ENGLISH])

    @property
    def label(self) -> str:
        """The preferred English label as written."""
        return self.pref[ENGLISH]


@dataclass(frozen=True)
class Term:
    """One name of a concept: a row of ``taxonomy_terms``."""

    key: str
    concept: str
    label: str
    lang: str
    preferred: bool


@dataclass
class Taxonomy:
    """A checked vocabulary: concepts by key (broader resolved to keys), their names, the edges."""

    concepts: dict[str, Concept]
    terms: list[Term]
    edges: list[tuple[str, str]]  # (concept, broader)

    @property
    def bare(self) -> list[str]:
        """Keys of concepts stated only as a broader tag name (no row or entry of their own)."""
        return [k for k, c in self.concepts.items() if c.where.startswith("tag ")]


# ---------- reading ----------


def detect_format(
    name: str | None = None, content_type: str | None = None, text: str = ""
) -> Format:
    """The format of a file: by content type, then by file suffix, then by its first character."""
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind.endswith("json"):
        return "json"
    if kind in ("text/csv", "application/csv"):
        return "csv"
    suffix = Path(name).suffix.lower() if name else ""
    if suffix in (".json", ".csv"):
        return suffix[1:]  # type: ignore[return-value]
    return "json" if text.lstrip().startswith("{") else "csv"


def read_file(path: Path) -> list[Concept]:
    """Parse the vocabulary file at ``path`` (format from its suffix or its first character).

    Raises:
        TaxonomyFileError: no such file, not UTF-8, or not a valid vocabulary file.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TaxonomyFileError(
            f"no such file: {path}", hint="give a .csv or .json vocabulary file"
        ) from None
    except IsADirectoryError:
        raise TaxonomyFileError(
            f"{path} is a folder", hint="give a .csv or .json vocabulary file"
        ) from None
    return parse_bytes(data, name=path.name)


def parse_bytes(
    data: bytes, *, name: str | None = None, content_type: str | None = None
) -> list[Concept]:
    """Parse a vocabulary file's bytes (UTF-8, a BOM allowed) in the format detected for it.

    Raises:
        TaxonomyFileError: not UTF-8, or not a valid vocabulary file.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TaxonomyFileError(f"the file is not UTF-8 text (byte {exc.start})") from None
    fmt = detect_format(name, content_type, text)
    return parse_json(text) if fmt == "json" else parse_csv(text)


def _label(text: Any, where: str, what: str) -> str:
    if not isinstance(text, str):
        raise TaxonomyFileError(
            f"{where}: {what} must be a string, not {json.dumps(text, ensure_ascii=False)}"
        )
    label = " ".join(text.split())
    if not label:
        raise TaxonomyFileError(f"{where}: {what} is empty")
    if len(label) > MAX_LABEL_LENGTH:
        raise TaxonomyFileError(f"{where}: {what} is longer than {MAX_LABEL_LENGTH} characters")
    if SEPARATOR in label:  # it would read back as two names from CSV
        raise TaxonomyFileError(f"{where}: {what} {label!r} contains {SEPARATOR!r}")
    return label


def _lang(code: Any, where: str) -> str:
    if not isinstance(code, str) or not _LANG.match(code):
        raise TaxonomyFileError(
            f"{where}: {code!r} is not a language code",
            hint="use lower-case codes such as en, zh or pt-br",
        )
    return code


def _split(cell: str) -> list[str]:
    return [part for part in (p.strip() for p in cell.split(SEPARATOR)) if part]


def parse_csv(text: str) -> list[Concept]:
    """Parse the CSV layout (one row per concept; see the module docstring).

    Raises:
        TaxonomyFileError: a bad header, a row without its English label, an unreadable row; the
            message names the line.
    """
    reader = csv.reader(io.StringIO(text))
    header: list[str] | None = None
    concepts: list[Concept] = []
    while True:
        start = reader.line_num + 1  # where the next record starts (records may span lines)
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise TaxonomyFileError(f"line {start}: {exc}") from None
        if not any(cell.strip() for cell in row) or row[0].lstrip().startswith("#"):
            continue
        where = f"line {start}"
        if header is None:
            header = _header(row, where)
            continue
        if len(row) > len(header) and any(c.strip() for c in row[len(header) :]):
            raise TaxonomyFileError(
                f"{where}: {len(row)} cells but the header names {len(header)} columns"
            )
        concept = Concept(pref={}, where=where)
        for column, cell in zip(header, row, strict=False):
            if not cell.strip():
                continue
            if column == BROADER:
                concept.broader = [_label(b, where, "a broader concept") for b in _split(cell)]
            elif column.startswith(ALT_PREFIX):
                names = [_label(a, where, f"a {column} label") for a in _split(cell)]
                concept.alt[column[len(ALT_PREFIX) :]] = names
            else:
                concept.pref[column] = _label(cell, where, f"the {column} label")
        if ENGLISH not in concept.pref:
            raise TaxonomyFileError(
                f"{where}: no English label (column {ENGLISH!r}); every concept needs one"
            )
        concepts.append(concept)
    if header is None:
        raise TaxonomyFileError(
            "the file is empty",
            hint=f"start with a header such as {ENGLISH},zh,alt_en,alt_zh,{BROADER}",
        )
    return concepts


def _header(row: list[str], where: str) -> list[str]:
    columns = [c.strip().lower() for c in row]
    seen: set[str] = set()
    for column in columns:
        if column in seen:
            raise TaxonomyFileError(f"{where}: column {column!r} appears twice in the header")
        seen.add(column)
        if column != BROADER:
            lang = column[len(ALT_PREFIX) :] if column.startswith(ALT_PREFIX) else column
            if not _LANG.match(lang):
                raise TaxonomyFileError(
                    f"{where}: unknown column {column!r} in the header",
                    hint=f"columns are {ENGLISH}, zh (or another language code), alt_<language> "
                    f"and {BROADER}",
                )
    if ENGLISH not in seen:
        raise TaxonomyFileError(
            f"{where}: the header has no {ENGLISH!r} column (the preferred English label)"
        )
    return columns


def parse_json(text: str) -> list[Concept]:
    """Parse the SKOS-like JSON layout (see the module docstring).

    Raises:
        TaxonomyFileError: not JSON (with its line), or an entry that is not a concept (named by
            its number, 1-based).
    """
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TaxonomyFileError(f"line {exc.lineno}: not JSON ({exc.msg})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("concepts"), list):
        raise TaxonomyFileError('the file is not a vocabulary: expected {"concepts": [...]}')
    concepts = []
    for number, entry in enumerate(doc["concepts"], 1):
        where = f"concept {number}"
        if not isinstance(entry, dict):
            raise TaxonomyFileError(
                f"{where}: expected an object with prefLabel, altLabel, broader"
            )
        unknown = sorted(set(entry) - _JSON_KEYS)
        if unknown:
            raise TaxonomyFileError(
                f"{where}: unknown field {unknown[0]!r} (fields: prefLabel, altLabel, broader)"
            )
        pref = entry.get("prefLabel")
        if not isinstance(pref, dict):
            raise TaxonomyFileError(f'{where}: prefLabel must be an object such as {{"en": "car"}}')
        concept = Concept(
            pref={_lang(k, where): _label(v, where, f"prefLabel {k!r}") for k, v in pref.items()},
            where=where,
        )
        if ENGLISH not in concept.pref:
            raise TaxonomyFileError(f"{where}: no English prefLabel; every concept needs one")
        where = f"{where} ({concept.label})"
        alt = entry.get("altLabel", {})
        if not isinstance(alt, dict):
            raise TaxonomyFileError(
                f'{where}: altLabel must be an object such as {{"en": ["automobile"]}}'
            )
        for lang, names in alt.items():
            names = [names] if isinstance(names, str) else names
            if not isinstance(names, list):
                raise TaxonomyFileError(f"{where}: altLabel {lang!r} must be a list of strings")
            concept.alt[_lang(lang, where)] = [
                _label(n, where, f"altLabel {lang!r}") for n in names
            ]
        broader = entry.get("broader", [])
        broader = [broader] if isinstance(broader, str) else broader
        if not isinstance(broader, list):
            raise TaxonomyFileError(f"{where}: broader must be a list of concept names")
        concept.broader = [_label(b, where, "a broader concept") for b in broader]
        concept.where = where
        concepts.append(concept)
    return concepts


# ---------- checking ----------


def build(
    concepts: Iterable[Concept],
    *,
    base: Iterable[Concept] = (),
    tag_names: Container[str] = frozenset(),
) -> Taxonomy:
    """Check ``concepts`` and resolve their broader names to concept keys.

    Args:
        concepts: what a file states, in file order.
        base: concepts already stored (``--merge``): a concept of the file replaces the one of
            the same key; the others stay and are checked together with the file's.
        tag_names: keys (``label_key``) of the archive's tag names: a broader name that no
            concept defines is accepted, as a bare concept, when it is one of them.

    Raises:
        TaxonomyFileError: a concept stated twice, a name naming two concepts, a broader name
            that is neither a concept nor a tag, a cycle in broader.
    """
    merged: dict[str, Concept] = {c.key: c for c in base}
    seen: dict[str, Concept] = {}
    for concept in concepts:
        if concept.key in seen:
            first = seen[concept.key]
            raise TaxonomyFileError(
                f"{concept.where}: concept {concept.label!r} is already defined at {first.where}"
            )
        seen[concept.key] = merged[concept.key] = concept
    names = _name_index(merged.values())
    by_key = dict(merged)
    for concept in merged.values():
        resolved: list[str] = []
        for name in concept.broader:
            target = names.get(label_key(name))
            if target is None:
                key = label_key(name)
                if key not in tag_names:
                    raise TaxonomyFileError(
                        f"{concept.where}: broader {name!r} is neither a concept of the file "
                        "nor a tag name",
                        hint="define it on a row (entry) of its own, or check the spelling",
                    )
                bare = by_key.get(key) or Concept(pref={ENGLISH: name}, where=f"tag {name!r}")
                by_key[key] = bare
                target = key
            if target not in resolved:
                resolved.append(target)
        concept.broader = resolved
    _check_cycles(by_key)
    terms = [t for c in by_key.values() for t in _terms(c)]
    edges = [(c.key, b) for c in by_key.values() for b in c.broader]
    return Taxonomy(concepts=by_key, terms=terms, edges=edges)


def _names(concept: Concept) -> list[tuple[str, str, bool]]:
    """(label, lang, preferred) of every name of a concept, the preferred English label first."""
    out = [(concept.label, ENGLISH, True)]
    out += [(label, lang, True) for lang, label in concept.pref.items() if lang != ENGLISH]
    out += [(label, lang, False) for lang, labels in concept.alt.items() for label in labels]
    return out


def _terms(concept: Concept) -> list[Term]:
    terms: dict[str, Term] = {}
    for label, lang, preferred in _names(concept):
        terms.setdefault(
            label_key(label), Term(label_key(label), concept.key, label, lang, preferred)
        )
    return list(terms.values())


def _name_index(concepts: Iterable[Concept]) -> dict[str, str]:
    """Name key -> concept key; a name of two concepts is an error naming both."""
    owner: dict[str, Concept] = {}
    for concept in concepts:
        for label, _lang, _preferred in _names(concept):
            key = label_key(label)
            other = owner.setdefault(key, concept)
            if other is not concept:
                raise TaxonomyFileError(
                    f"{concept.where}: {label!r} names two concepts: {other.label!r} "
                    f"({other.where}) and {concept.label!r}",
                    hint="a synonym or label may name one concept only; remove one of them",
                )
    return {k: c.key for k, c in owner.items()}


def _check_cycles(concepts: dict[str, Concept]) -> None:
    """Depth-first search over broader edges; a back edge is a cycle, reported as a path."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in concepts:
        if state.get(root):
            continue
        path: list[str] = [root]
        stack = [iter(concepts[root].broader)]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
                continue
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt) :] + [nxt]
                shown = " -> ".join(concepts[k].label for k in cycle)
                where = ", ".join(concepts[k].where for k in cycle[:-1])
                raise TaxonomyFileError(
                    f"cycle in broader: {shown} ({where})",
                    hint="a concept cannot be (transitively) broader than itself; remove one edge",
                )
            if not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(concepts[nxt].broader))


# ---------- writing ----------


def _languages(concepts: Iterable[Concept]) -> list[str]:
    langs = {lang for c in concepts for lang in (*c.pref, *c.alt)}
    return [ENGLISH] + (["zh"] if "zh" in langs else []) + sorted(langs - {ENGLISH, "zh"})


def to_csv(taxonomy: Taxonomy) -> str:
    """The taxonomy in the CSV layout (broader concepts by their preferred English label)."""
    concepts = list(taxonomy.concepts.values())
    langs = _languages(concepts)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(langs + [ALT_PREFIX + lang for lang in langs] + [BROADER])
    for c in concepts:
        writer.writerow(
            [c.pref.get(lang, "") for lang in langs]
            + [SEPARATOR.join(c.alt.get(lang, [])) for lang in langs]
            + [SEPARATOR.join(taxonomy.concepts[b].label for b in c.broader)]
        )
    return out.getvalue()


def to_json(taxonomy: Taxonomy) -> str:
    """The taxonomy in the SKOS-like JSON layout."""
    entries = []
    for c in taxonomy.concepts.values():
        entry: dict[str, Any] = {"prefLabel": dict(c.pref)}
        if c.alt:
            entry["altLabel"] = {lang: list(names) for lang, names in c.alt.items()}
        if c.broader:
            entry["broader"] = [taxonomy.concepts[b].label for b in c.broader]
        entries.append(entry)
    # one concept per line: readable, and a change shows as one line in a diff
    lines = ",\n".join("  " + json.dumps(e, ensure_ascii=False) for e in entries)
    return '{"concepts": [\n' + lines + ("\n" if entries else "") + "]}\n"
