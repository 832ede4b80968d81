"""Labels and review on PostgreSQL and SQLite: manual tags and review decisions on many assets
with their audit trail, rows deleted when they say nothing, provenance, the review queue's order
and paging, and labels surviving a re-scoring."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import sqlalchemy as sa

from indexer import db
from indexer.db import label_repo
from indexer.db.errors import InvalidCursorError, NotFoundError, UnknownTagError
from indexer.db.label_repo import QueueCursor, change_labels, review_queue
from indexer.db.labels import AssetLabel, LabelChange
from indexer.db.session import session_scope
from indexer.errors import RamdexError
from indexer.review import change, provenance, queue, resolve_name
from ram_pp.vocab import TagVocabulary

pytest_plugins = ["tests.db_fixtures"]

MODEL = "ram@review"
VOCAB = TagVocabulary(
    ("dog", "cat", "Hot Dog", "car"),
    ("狗", "猫", "热狗", "汽车"),
    np.array([0.7, 0.5, 0.6, 0.8], np.float32),
)


def make_assets(url: str, n: int) -> tuple[dict[str, int], list[int]]:
    """The vocabulary (name -> tag id) and ``n`` assets without scores."""
    with session_scope(url) as s:
        s.execute(sa.delete(LabelChange))
        s.execute(sa.delete(AssetLabel))
        ids = db.ensure_vocabulary(s, MODEL, VOCAB)
        assets = [
            db.get_or_create_asset_by_sha(s, sha256=hashlib.sha256(b"%d" % i).hexdigest()).id
            for i in range(n)
        ]
    return dict(zip(VOCAB.english, (int(i) for i in ids), strict=True)), assets


def rows(url: str) -> dict[tuple[int, str], tuple[bool, bool, str | None, str]]:
    with session_scope(url) as s:
        return {
            (r.asset_id, r.key): (r.manual, r.embedded, r.review, r.label)
            for r in s.scalars(sa.select(AssetLabel))
        }


def changes(url: str) -> list[tuple[int, str, str, dict | None, dict | None, str]]:
    with session_scope(url) as s:
        return [
            (c.asset_id, c.key, c.action, c.before, c.after, c.actor)
            for c in s.scalars(sa.select(LabelChange).order_by(LabelChange.id))
        ]


def test_changes_record_before_after_and_actor(db_url: str) -> None:
    _, (a, b, c) = make_assets(db_url, 3)
    with session_scope(db_url) as s:
        assert change_labels(s, [a, b], "sunset", "Sunset", "add", "alice") == (2, 0)
    with session_scope(db_url) as s:
        # a already manual: unchanged and not recorded; c is new
        assert change_labels(s, [a, c, a], "sunset", "sunset", "add", "bob") == (1, 1)
        assert change_labels(s, [b], "sunset", "sunset", "reject", "bob") == (1, 0)
    assert rows(db_url) == {
        (a, "sunset"): (True, False, None, "Sunset"),
        (b, "sunset"): (True, False, "rejected", "Sunset"),  # reject keeps the display text
        (c, "sunset"): (True, False, None, "sunset"),
    }
    manual = {"manual": True, "embedded": False, "review": None}
    assert changes(db_url) == [
        (a, "sunset", "add", None, manual, "alice"),
        (b, "sunset", "add", None, manual, "alice"),
        (c, "sunset", "add", None, manual, "bob"),
        (b, "sunset", "reject", manual, {**manual, "review": "rejected"}, "bob"),
    ]


def test_clearing_the_last_flag_deletes_the_row(db_url: str) -> None:
    _, (a, b) = make_assets(db_url, 2)
    with session_scope(db_url) as s:
        change_labels(s, [a, b], "dog", "dog", "add", "x")
        change_labels(s, [a], "dog", "dog", "accept", "x")
    with session_scope(db_url) as s:
        assert change_labels(s, [a, b], "dog", "dog", "remove", "y") == (2, 0)
    assert rows(db_url) == {(a, "dog"): (False, False, "accepted", "dog")}
    with session_scope(db_url) as s:
        assert change_labels(s, [a, b], "dog", "dog", "unreview", "z") == (1, 1)
    assert rows(db_url) == {}
    last = changes(db_url)[-1]
    assert last == (
        a,
        "dog",
        "unreview",
        {"manual": False, "embedded": False, "review": "accepted"},
        None,
        "z",
    )


def test_unknown_assets_change_nothing(db_url: str) -> None:
    _, (a,) = make_assets(db_url, 1)
    with session_scope(db_url) as s, pytest.raises(NotFoundError, match=f"{a + 7}, {a + 9}"):
        change_labels(s, [a, a + 9, a + 7], "dog", "dog", "add", "x")
    assert rows(db_url) == {} and changes(db_url) == []
    with session_scope(db_url) as s, pytest.raises(ValueError, match="at most 1000"):
        change_labels(s, list(range(1, 1002)), "dog", "dog", "add", "x")
    with session_scope(db_url) as s, pytest.raises(ValueError, match="no asset ids"):
        change_labels(s, [], "dog", "dog", "add", "x")


def test_many_assets_in_one_change(db_url: str) -> None:
    _, assets = make_assets(db_url, 1000)
    with session_scope(db_url) as s:
        assert change_labels(s, assets, "dog", "dog", "reject", "bulk") == (1000, 0)
    with session_scope(db_url) as s:
        assert change_labels(s, assets, "dog", "dog", "add", "bulk") == (1000, 0)
    got = rows(db_url)
    assert len(got) == 1000 and set(got.values()) == {(True, False, "rejected", "dog")}
    assert len(changes(db_url)) == 2000


def test_names_resolve_to_vocabulary_keys(db_url: str) -> None:
    tags, (a,) = make_assets(db_url, 1)
    with session_scope(db_url) as s:
        assert resolve_name(s, MODEL, "  HOT   dog ").key == "hot dog"
        chinese = resolve_name(s, MODEL, "热狗")
        assert (chinese.key, chinese.label, chinese.tag.id) == (
            "hot dog",
            "Hot Dog",
            tags["Hot Dog"],
        )
        free = resolve_name(s, MODEL, "My  Trip")
        assert (free.key, free.label, free.tag) == ("my trip", "My Trip", None)
        with pytest.raises(RamdexError, match="empty"):
            resolve_name(s, MODEL, "   ")
        # a free keyword can be added, not accepted
        assert change(s, MODEL, [a], "狗", "add", "x").changed == 1
        with pytest.raises(UnknownTagError):
            change(s, MODEL, [a], "my trip", "accept", "x")
        with pytest.raises(RamdexError, match="unknown action"):
            change(s, MODEL, [a], "dog", "embed", "x")
    assert rows(db_url) == {(a, "dog"): (True, False, None, "dog")}


def write_scores(url: str, tag_id: int, scores: dict[int, float]) -> None:
    with session_scope(url) as s:
        db.write_tag_scores(s, tag_id, list(scores), list(scores.values()), score_floor=0.05)


def test_provenance_of_an_asset(db_url: str) -> None:
    tags, (a, other) = make_assets(db_url, 2)
    write_scores(db_url, tags["dog"], {a: 0.9})  # above 0.7
    write_scores(db_url, tags["cat"], {a: 0.95})  # above, but rejected below
    write_scores(db_url, tags["car"], {a: 0.3})  # below 0.8, accepted below
    write_scores(db_url, tags["Hot Dog"], {a: 0.2})  # below, no label: not shown
    with session_scope(db_url) as s:
        change(s, MODEL, [a], "cat", "reject", "x")
        change(s, MODEL, [a], "car", "accept", "x")
        change(s, MODEL, [a], "Beach", "add", "x")
        change(s, MODEL, [a], "dog", "add", "x")
        change(s, MODEL, [other], "cat", "add", "x")
    with session_scope(db_url) as s:
        views = provenance(s, MODEL, a)
        with pytest.raises(NotFoundError):
            provenance(s, MODEL, other + 100)
    got = [(v.key, v.sources, v.review, v.manual, v.matches, v.score) for v in views]
    assert got == [
        ("dog", ["model", "manual"], None, True, True, pytest.approx(0.9)),
        ("car", ["model"], "accepted", False, True, pytest.approx(0.3)),
        ("beach", ["manual"], None, True, True, None),  # matching, no score: after scored ones
        ("cat", [], "rejected", False, False, pytest.approx(0.95)),
    ]
    dog = views[0]
    assert (dog.tag_id, dog.chinese, dog.threshold) == (tags["dog"], "狗", pytest.approx(0.7))
    assert views[2].tag_id is None and views[2].name == "Beach"


def test_queue_nearest_threshold_first_and_undecided_only(db_url: str) -> None:
    tags, assets = make_assets(db_url, 8)
    scores = [0.72, 0.66, 0.95, 0.7, 0.2, 0.61, 0.79, 0.74]  # threshold 0.7
    write_scores(db_url, tags["dog"], dict(zip(assets, scores, strict=True)))
    with session_scope(db_url) as s:
        change(s, MODEL, [assets[1]], "dog", "reject", "x")  # decided
        change(s, MODEL, [assets[6]], "dog", "add", "x")  # manual
        change(s, MODEL, [assets[7]], "dog", "add", "x")
        change(s, MODEL, [assets[7]], "dog", "remove", "x")  # no label left: in the queue
    expected = [assets[i] for i in (3, 0, 7, 5, 2, 4)]  # 0, .02, .04, .09, .25, .5
    with session_scope(db_url) as s:
        page = queue(s, MODEL, "狗", limit=50)
    assert [i.asset_id for i in page.items] == expected and page.next_cursor is None
    assert [i.distance for i in page.items] == pytest.approx(
        [0, 0.02, 0.04, 0.09, 0.25, 0.5], abs=1e-6
    )
    assert page.threshold == pytest.approx(0.7)
    # pages of 2 give the same order, each once
    seen, cursor = [], None
    with session_scope(db_url) as s:
        while True:
            page = queue(s, MODEL, "dog", limit=2, cursor=cursor)
            seen += [i.asset_id for i in page.items]
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert seen == expected
        with pytest.raises(InvalidCursorError):
            queue(s, MODEL, "cat", limit=2, cursor=QueueCursor(tags["dog"]).encode())
        with pytest.raises(InvalidCursorError):
            queue(s, MODEL, "dog", cursor="bm90IGpzb24")
        with pytest.raises(UnknownTagError):
            queue(s, MODEL, "beach")


def test_queue_ties_on_both_sides_page_exactly(db_url: str) -> None:
    tags, assets = make_assets(db_url, 6)
    # cat threshold 0.5: 0.75 and 0.25 are both 0.25 away; ties go by asset id
    scores = [0.75, 0.25, 0.75, 0.25, 0.5, 0.5]
    write_scores(db_url, tags["cat"], dict(zip(assets, scores, strict=True)))
    with session_scope(db_url) as s:
        tag = s.get(db.Tag, tags["cat"])
        full, _ = review_queue(s, tag, 10)
        paged, cursor = [], None
        while True:
            items, cursor = review_queue(s, tag, 1, cursor)
            paged += items
            if cursor is None:
                break
    assert [i.asset_id for i in full] == [assets[4], assets[5], *assets[:4]]
    assert paged == full


def test_rescoring_leaves_labels_untouched(db_url: str) -> None:
    tags, (a, b) = make_assets(db_url, 2)
    write_scores(db_url, tags["dog"], {a: 0.9, b: 0.9})
    with session_scope(db_url) as s:
        change(s, MODEL, [a], "dog", "reject", "x")
        change(s, MODEL, [b], "dog", "add", "x")
    before = rows(db_url)
    # the model scores again: a now below the floor, b low; then ingest's writer for a
    write_scores(db_url, tags["dog"], {a: 0.01, b: 0.1})
    with session_scope(db_url) as s:
        tag_ids = np.array([tags[n] for n in VOCAB.english], np.int64)
        result = db.AssetResult(a, np.array([0.99, 0.1, 0.1, 0.1], np.float32))
        db.write_asset_results(s, [result], model_name=MODEL, tag_ids=tag_ids, score_floor=0.05)
    assert rows(db_url) == before and len(changes(db_url)) == 2
    with session_scope(db_url) as s:
        views = {v.key: v for v in provenance(s, MODEL, b)}
    assert views["dog"].matches and views["dog"].sources == ["manual"]
    assert views["dog"].score == pytest.approx(0.1)
    with session_scope(db_url) as s:
        dog = {v.key: v for v in provenance(s, MODEL, a)}["dog"]
    assert (dog.score, dog.review, dog.matches) == (pytest.approx(0.99), "rejected", False)


def test_history_newest_first(db_url: str) -> None:
    _, (a, b) = make_assets(db_url, 2)
    with session_scope(db_url) as s:
        for action in ("add", "remove", "add"):
            change_labels(s, [a], "kite", "kite", action, "x")
        change_labels(s, [b], "kite", "kite", "add", "x")
    with session_scope(db_url) as s:
        got = label_repo.history(s, a, limit=2)
    assert [c.action for c in got] == ["add", "remove"] and got[0].id > got[1].id
    assert all(c.asset_id == a for c in got)


def test_a_synonym_names_its_tag(db_url: str) -> None:
    from indexer.db import taxonomy_repo
    from indexer.db.taxonomy import TaxonomyTerm

    if not hasattr(taxonomy_repo, "lookup"):
        pytest.skip("the taxonomy has no lookup yet")
    tags, (a,) = make_assets(db_url, 1)
    with session_scope(db_url) as s:
        s.execute(sa.delete(TaxonomyTerm))
        s.add(TaxonomyTerm(key="automobile", concept="car", label="Automobile", lang="en"))
    try:
        with session_scope(db_url) as s:
            name = resolve_name(s, MODEL, "AUTOMOBILE")
            assert (name.key, name.tag.id) == ("car", tags["car"])
            change(s, MODEL, [a], "automobile", "accept", "x")
        assert rows(db_url) == {(a, "car"): (False, False, "accepted", "car")}
    finally:
        with session_scope(db_url) as s:
            s.execute(sa.delete(TaxonomyTerm))


@pytest.mark.postgres
def test_concurrent_changes_of_one_asset_take_turns(pg_migrated_url: str) -> None:
    """The second change waits for the first's commit and sees its row: one audit row, not two
    (and no primary-key clash)."""
    import threading

    url = pg_migrated_url
    _, (a,) = make_assets(url, 1)
    results: list[tuple[int, int]] = []

    def second() -> None:
        with session_scope(url) as s:
            results.append(change_labels(s, [a], "kite", "kite", "add", "second"))

    with session_scope(url) as s:
        results.append(change_labels(s, [a], "kite", "kite", "add", "first"))
        thread = threading.Thread(target=second)
        thread.start()
        thread.join(0.5)
        assert thread.is_alive()  # blocked on the asset's row lock
    thread.join(10)
    assert results == [(1, 0), (0, 1)]
    assert [c[-1] for c in changes(url)] == ["first"]


def test_remove_takes_the_file_keyword_off_too_and_reject_beats_it() -> None:
    """A person's word wins over a file's keyword: remove clears manual and embedded, and a
    rejection keeps an embedded tag from matching (indexer/db/tag_match.py)."""
    from indexer.db.label_repo import LabelState, apply_action
    from indexer.db.tag_match import match_sources

    both = LabelState(True, True, None)
    assert apply_action(both, "remove") == LabelState(False, False, None)
    rejected = LabelState(False, True, "rejected")
    assert apply_action(rejected, "remove") == LabelState(False, False, "rejected")
    assert match_sources(score_source="model", above=True, embedded=True, review="rejected") == ()
    assert match_sources(score_source=None, above=False, embedded=True) == ("embedded",)
