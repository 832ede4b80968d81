"""Taxonomy (issue 13 section 5): vocabulary files in both formats, their errors with line or
entry numbers, and the stored taxonomy on PostgreSQL and SQLite: atomic replace, merge, look-up,
expansion through synonyms and descendants at any depth, parents and aliases of tags."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from indexer.db import taxonomy_repo as repo
from indexer.db.session import session_scope
from indexer.db.taxonomy import TaxonomyBroader, TaxonomyTerm
from indexer.taxonomy import TaxonomyFileError, build, parse_csv, parse_json, read_file, to_csv

pytest_plugins = ["tests.db_fixtures"]

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CSV = EXAMPLES / "taxonomy-example.csv"


def concepts_of(text: str, fmt: str = "csv") -> dict:
    """{key: (pref, alt, broader keys)} of a file's checked taxonomy."""
    parsed = parse_csv(text) if fmt == "csv" else parse_json(text)
    tax = build(parsed, tag_names={"plant"})
    return {k: (c.pref, c.alt, c.broader) for k, c in tax.concepts.items()}


def error_of(text: str, fmt: str = "csv", **kw) -> str:
    with pytest.raises(TaxonomyFileError) as info:
        parsed = parse_csv(text) if fmt == "csv" else parse_json(text)
        build(parsed, **kw)
    assert info.value.exit_code == 2
    return info.value.message


# ---------- files ----------


def test_csv_and_json_state_the_same_vocabulary() -> None:
    text = "en,zh,alt_en,alt_zh,broader\nvehicle,车辆,,,\nCar,汽车,Automobile| auto ,轿车,vehicle\n"
    got = concepts_of(text)
    assert got == {
        "vehicle": ({"en": "vehicle", "zh": "车辆"}, {}, []),
        "car": (
            {"en": "Car", "zh": "汽车"},
            {"en": ["Automobile", "auto"], "zh": ["轿车"]},
            ["vehicle"],
        ),
    }
    json_text = (
        '{"concepts": [{"prefLabel": {"en": "vehicle", "zh": "车辆"}},'
        ' {"prefLabel": {"en": "Car", "zh": "汽车"},'
        ' "altLabel": {"en": ["Automobile", "auto"], "zh": "轿车"}, "broader": ["车辆"]}]}'
    )
    assert concepts_of(json_text, "json") == got  # a broader may be named in Chinese too
    # the shipped examples agree with each other
    a = build(read_file(CSV), tag_names={"plant"})
    b = build(read_file(EXAMPLES / "taxonomy-example.json"), tag_names={"plant"})
    assert (a.terms, a.edges) == (b.terms, b.edges)
    assert len(a.concepts) >= 15 and a.bare == ["plant"]
    # export, then import: the same taxonomy
    again = build(parse_csv(to_csv(a)), tag_names=set())
    assert (again.terms, again.edges) == (a.terms, a.edges)


def test_comments_blank_rows_and_bom_are_skipped() -> None:
    text = "\ufeff# a comment\n\nen,alt_en\n# another\ncar,automobile\n\n"
    from indexer.taxonomy import parse_bytes

    parsed = parse_bytes(text.encode(), name="x.csv")
    assert [(c.label, c.alt, c.where) for c in parsed] == [
        ("car", {"en": ["automobile"]}, "line 5")
    ]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("zh,broader\n狗,\n", ["line 1", "no 'en' column"]),
        ("en,colour\ncar,red\n", ["line 1", "unknown column 'colour'"]),
        ("en,zh\ncar,汽车\n,狗\n", ["line 3", "no English label"]),
        ("en,en\ncar,car\n", ["line 1", "appears twice"]),
        ("en\ncar,extra\n", ["line 2", "2 cells"]),
        ("# only a comment\n", ["empty"]),
        (
            "en,alt_en\ncar,automobile\ntruck,lorry\nauto,automobile\n",
            ["line 4", "'automobile'", "'car' (line 2)"],
        ),
        ("en,zh\ncar,车\nvehicle,车\n", ["line 3", "'车' names two concepts"]),
        ("en\ncar\nCar\n", ["line 3", "already defined at line 2"]),
        ("en,broader\ncar,vehical\n", ["line 2", "'vehical'", "neither a concept"]),
        ("en,broader\na,c\nb,a\nc,b\n", ["cycle in broader", "line 2", "line 3", "line 4"]),
        ("en,broader\ndog,dog\n", ["cycle in broader: dog -> dog"]),
        ("en,alt_en\ncar,auto|\n", []),  # an empty synonym between separators is ignored: fine
    ],
)
def test_csv_errors_name_the_line(text: str, words: list[str]) -> None:
    if not words:
        assert concepts_of(text)["car"][1] == {"en": ["auto"]}
        return
    message = error_of(text)
    for word in words:
        assert word in message, message


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (
            '{"concepts": [\n{"prefLabel": {"en": "car"}},\n{"prefLabel": {"en": "x"}, }]}',
            ["line 3", "not JSON"],
        ),
        ('[{"prefLabel": {"en": "car"}}]', ['{"concepts": [...]}']),
        (
            '{"concepts": [{"prefLabel": {"en": "car"}}, {"prefLabel": {"zh": "狗"}}]}',
            ["concept 2", "English"],
        ),
        (
            '{"concepts": [{"prefLabel": {"en": "car"}, "narrower": []}]}',
            ["concept 1", "'narrower'"],
        ),
        (
            '{"concepts": [{"prefLabel": {"EN": "car"}}]}',
            ["concept 1", "'EN' is not a language code"],
        ),
        (
            '{"concepts": [{"prefLabel": {"en": "car"}, "altLabel": {"en": [3]}}]}',
            ["concept 1 (car)", "string"],
        ),
        ('{"concepts": [{"prefLabel": {"en": "a|b"}}]}', ["concept 1", "'|'"]),
        (
            '{"concepts": [{"prefLabel": {"en": "car"}, "altLabel": {"en": ["auto"]}},'
            ' {"prefLabel": {"en": "auto"}}]}',
            ["concept 2 (auto)", "names two concepts", "concept 1 (car)"],
        ),
        (
            '{"concepts": [{"prefLabel": {"en": "a"}, "broader": ["b"]},'
            ' {"prefLabel": {"en": "b"}, "broader": ["a"]}]}',
            ["cycle in broader: a -> b -> a"],
        ),
    ],
)
def test_json_errors_name_the_entry(text: str, words: list[str]) -> None:
    message = error_of(text, "json")
    for word in words:
        assert word in message, message


def test_a_broader_tag_name_without_a_row_is_a_bare_concept() -> None:
    tax = build(parse_csv("en,broader\nflower,plant\n"), tag_names={"plant"})
    assert tax.bare == ["plant"] and ("flower", "plant") in tax.edges
    assert "plant" in error_of("en,broader\nflower,plant\n", tag_names=set())


# ---------- the stored taxonomy ----------


@pytest.fixture
def url(db_url: str) -> str:
    """An empty migrated database on each backend, taxonomy tables emptied too."""
    with session_scope(db_url) as s:
        s.execute(sa.delete(TaxonomyBroader))
        s.execute(sa.delete(TaxonomyTerm))
    return db_url


@pytest.fixture
def example(url: str) -> str:
    with session_scope(url) as s:
        repo.import_concepts(s, read_file(CSV))
    return url


def keys(expansions: list[repo.Expansion]) -> dict[str, tuple[str, str, int]]:
    return {e.key: (e.matched_term, e.via, e.depth) for e in expansions}


def test_expand_synonyms_chinese_and_unknown_terms(example: str) -> None:
    with session_scope(example) as s:
        got = repo.expand(s, "  AUTOMOBILE ")
        assert got[0] == repo.Expansion("automobile", "automobile", "name", 0)
        assert keys(got) == {
            "automobile": ("automobile", "name", 0),
            "car": ("car", "synonym", 0),
            "auto": ("auto", "synonym", 0),
            "汽车": ("汽车", "synonym", 0),
            "轿车": ("轿车", "synonym", 0),
        }
        assert keys(repo.expand(s, "汽车")).keys() == {"汽车", "car", "automobile", "auto", "轿车"}
        # descendants asked for a leaf: nothing more
        assert len(repo.expand(s, "car", descendants=True)) == 5
        # a term the taxonomy does not know expands to itself only
        assert repo.expand(s, "Zebra  Crossing") == [
            repo.Expansion("zebra crossing", "Zebra Crossing", "name", 0)
        ]
        assert repo.lookup(s, "Hound") == "dog" and repo.lookup(s, "犬") == "dog"
        assert repo.lookup(s, "zebra") is None


def test_expand_descendants_at_every_depth(example: str) -> None:
    with session_scope(example) as s:
        plain = keys(repo.expand(s, "animal"))
        assert set(plain) == {"animal", "动物"}
        got = keys(repo.expand(s, "Animal", descendants=True))
    assert got["mammal"] == ("mammal", "descendant", 1)
    assert got["bird"] == ("bird", "descendant", 1)
    assert got["dog"] == ("dog", "descendant", 2)  # animal > mammal > dog
    assert got["hound"] == ("hound", "descendant", 2)  # a synonym of a descendant
    assert got["犬"][1:] == ("descendant", 2)
    assert got["parrot"] == ("parrot", "descendant", 2)
    assert "car" not in got and "pet" not in got  # pet is a parent of dog, not under animal
    with session_scope(example) as s:
        capped = keys(repo.expand(s, "animal", descendants=True, max_depth=1))
        flowers = keys(repo.expand(s, "plant", descendants=True))  # a bare concept (a tag name)
    assert "mammal" in capped and "dog" not in capped
    assert flowers["rose"] == ("rose", "descendant", 2) and flowers["bloom"][1] == "descendant"


def test_parents_aliases_describe_and_tag_relations(example: str) -> None:
    with session_scope(example) as s:
        assert [p.key for p in repo.parents(s, "hound")] == ["mammal", "pet"]
        assert [p.key for p in repo.parents(s, "dog", transitive=True)] == [
            "mammal",
            "pet",
            "animal",
        ]
        assert [(a.label, a.lang, a.preferred) for a in repo.aliases(s, "dog")] == [
            ("狗", "zh", True),
            ("doggy", "en", False),
            ("hound", "en", False),
            ("犬", "zh", False),
        ]
        info = repo.describe(s, "狗")
        assert info is not None
        assert (info.key, info.label, info.matched, info.labels) == (
            "dog",
            "dog",
            "狗",
            {"en": "dog", "zh": "狗"},
        )
        assert [c.label for c in repo.describe(s, "bird").children] == ["parrot", "sparrow"]
        assert repo.describe(s, "unicorn") is None and repo.parents(s, "unicorn") == []
        rel = repo.tag_relations(s, ["Dog", "lorry", "unicorn", "animal"])
    assert rel["dog"] == repo.TagRelations(
        ["mammal", "pet", "animal"], ["狗", "doggy", "hound", "犬"]
    )
    assert rel["lorry"] == repo.TagRelations(["vehicle"], ["truck", "卡车"])
    assert rel["animal"].parents == [] and "unicorn" not in rel


def test_stats_and_round_trip_through_the_database(example: str) -> None:
    with session_scope(example) as s:
        st = repo.stats(s)
        stored = repo.load(s)
    file = build(read_file(CSV), tag_names={"plant"})
    assert st.concepts == len(file.concepts) and st.terms == len(file.terms)
    # longest chain: two edges (rose > flower > plant, dog > mammal > animal)
    assert st.edges == len(file.edges) and st.depth == 2
    assert st.terms_by_lang["zh"] == sum(t.lang == "zh" for t in file.terms)
    assert sorted(stored.terms, key=lambda t: t.key) == sorted(file.terms, key=lambda t: t.key)
    assert sorted(stored.edges) == sorted(file.edges)


def test_replace_is_atomic_and_merge_keeps_the_rest(example: str) -> None:
    with session_scope(example) as s:
        before = repo.stats(s)
    bad = parse_csv("en,broader\nzebra,\nunicorn,horse-ish\n")
    with pytest.raises(TaxonomyFileError), session_scope(example) as s:
        repo.import_concepts(s, bad)
    with session_scope(example) as s:
        assert repo.stats(s) == before and repo.lookup(s, "zebra") is None
    # a failure after the rows were replaced, before the commit, rolls the delete back too
    with pytest.raises(RuntimeError), session_scope(example) as s:
        repo.replace_taxonomy(s, build(parse_csv("en\nzebra\n")))
        raise RuntimeError("crash before commit")
    with session_scope(example) as s:
        assert repo.stats(s) == before and repo.lookup(s, "zebra") is None
    # merge: the file's dog replaces the stored one; everything else stays
    with session_scope(example) as s:
        repo.import_concepts(
            s, parse_csv("en,alt_en,broader\ndog,canine,animal\nzebra,,animal\n"), merge=True
        )
    with session_scope(example) as s:
        assert repo.lookup(s, "canine") == "dog" and repo.lookup(s, "hound") is None
        assert [p.key for p in repo.parents(s, "dog")] == ["animal"]
        assert repo.lookup(s, "automobile") == "car" and repo.lookup(s, "zebra") == "zebra"
    # a merge conflicting with the stored taxonomy is refused, naming it
    with pytest.raises(TaxonomyFileError, match="stored taxonomy"), session_scope(example) as s:
        repo.import_concepts(s, parse_csv("en,alt_en\ntruck2,automobile\n"), merge=True)
    with pytest.raises(TaxonomyFileError, match="cycle"), session_scope(example) as s:
        repo.import_concepts(s, parse_csv("en,broader\nanimal,dog\n"), merge=True)
    # replace: only the new file remains
    with session_scope(example) as s:
        repo.import_concepts(s, parse_csv("en\nzebra\n"))
    with session_scope(example) as s:
        assert repo.stats(s).concepts == 1 and repo.lookup(s, "car") is None
