"""Boolean tag search on PostgreSQL and SQLite, checked against a NumPy oracle built from the
same random score matrix (not from the code under test)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import sqlalchemy as sa

from indexer import db
from indexer.db.session import session_scope
from ram_pp.vocab import TagVocabulary

pytest_plugins = ["tests.db_fixtures"]

MODEL = "search-model@1"
FLOOR = 0.2
ENGLISH = ("cat", "dog", "car", "tree", "sky", "kitten")
CHINESE = ("猫", "狗", "汽车", "树", "天空", "猫")  # "猫" names two tags, as in the built-in list
THRESHOLDS = np.array([0.6, 0.5, 0.55, 0.7, 0.4, 0.65], np.float32)
MIMES = ("image/jpeg", "image/png", "image/webp")
N = 80
T0 = datetime(2024, 1, 1, tzinfo=UTC)


class Corpus:
    """Assets with known scores; ``matches``/``rank`` implement the documented semantics."""

    def __init__(self, url: str) -> None:
        rng = np.random.default_rng(42)
        self.scores = rng.random((N, len(ENGLISH))).astype(np.float32)
        self.scores[10:14, 0] = np.float32(0.8125)  # ties on the ranking score
        self.thresholds = THRESHOLDS.copy()
        with session_scope(url) as s:
            self.tag_ids = db.ensure_vocabulary(
                s, MODEL, TagVocabulary(ENGLISH, CHINESE, THRESHOLDS)
            )
            self.ids = np.array(
                [
                    db.get_or_create_asset_by_sha(
                        s, sha256=hashlib.sha256(str(i).encode()).hexdigest()
                    ).id
                    for i in range(N)
                ]
            )
            db.write_asset_results(
                s,
                [
                    db.AssetResult(int(a), self.scores[i], mime=MIMES[i % 3])
                    for i, a in enumerate(self.ids)
                ],
                model_name=MODEL,
                tag_ids=self.tag_ids,
                score_floor=FLOOR,
            )
            # created_at one day apart, so date filters have something to select
            for i, a in enumerate(self.ids):
                s.execute(
                    sa.update(db.Asset)
                    .where(db.Asset.id == int(a))
                    .values(created_at=T0 + timedelta(days=i))
                )
            # two assets never scored: never found by tag, not "done" for asset-only queries
            for i in range(2):
                db.get_or_create_asset_by_sha(
                    s, sha256=hashlib.sha256(f"p{i}".encode()).hexdigest()
                )

    def col(self, name: str) -> list[int]:
        return [j for j in range(len(ENGLISH)) if name.lower() == ENGLISH[j] or name == CHINESE[j]]

    def matches(self, j: int, min_score: float | None) -> np.ndarray:
        s = self.scores[:, j]
        stored = s >= np.float32(FLOOR)
        if min_score is not None:
            return stored & (s >= min_score)
        return stored & (s > self.thresholds[j])

    def query(
        self, all_=(), any_=(), none=(), min_score=None, keep=None
    ) -> list[tuple[int, float]]:
        ok = np.ones(N, bool) if keep is None else keep.copy()
        for name in all_:
            ok &= np.any([self.matches(j, min_score) for j in self.col(name)], axis=0)
        if any_:
            ok &= np.any([self.matches(j, min_score) for n in any_ for j in self.col(n)], axis=0)
        for name in none:
            ok &= ~np.any([self.matches(j, min_score) for j in self.col(name)], axis=0)
        rank_cols = self.col(all_[0]) if all_ else [j for n in any_ for j in self.col(n)]
        out = []
        for i in np.flatnonzero(ok):
            best = max(float(self.scores[i, j]) for j in rank_cols if self.matches(j, min_score)[i])
            out.append((int(self.ids[i]), best))
        return sorted(out, key=lambda x: (-x[1], -x[0]))


@pytest.fixture(scope="module")
def corpus(module_db_url: str) -> Corpus:
    """Built once per backend; tests only read it (or restore what they change)."""
    return Corpus(module_db_url)


@pytest.fixture()
def url(corpus: Corpus, module_db_url: str) -> str:
    return module_db_url


def run(url: str, **kwargs) -> list[tuple[int, float]]:
    with session_scope(url) as s:
        page = db.search_by_tags(s, model_name=MODEL, limit=1000, **kwargs)
    assert page.next_cursor is None
    return [(h.asset_id, h.score) for h in page.hits]


def assert_same(got: list[tuple[int, float]], expected: list[tuple[int, float]]) -> None:
    assert [g[0] for g in got] == [e[0] for e in expected]
    assert np.allclose([g[1] for g in got], [e[1] for e in expected], atol=1e-6)


@pytest.mark.parametrize(
    "query",
    [
        {"all_": ["cat"]},
        {"all_": ["dog", "sky"]},
        {"any_": ["car", "tree"]},
        {"all_": ["sky"], "any_": ["car", "tree"], "none": ["dog"]},
        {"any_": ["dog"], "none": ["sky", "tree"]},
        {"all_": ["猫"]},  # two tags named 猫: either matches, ranked by the better
        {"all_": ["DOG"], "min_score": 0.3},
        {"any_": ["sky", "cat"], "min_score": 0.9},
        {"all_": ["tree", "car", "sky"]},
    ],
    ids=lambda q: "-".join(f"{k}={v}" for k, v in q.items()),
)
def test_search_matches_oracle(url: str, corpus: Corpus, query: dict) -> None:
    expected = corpus.query(**query)
    assert expected, "query should match something in the corpus"
    assert_same(run(url, **query), expected)


def test_search_reports_matched_tags(url: str, corpus: Corpus) -> None:
    with session_scope(url) as s:
        page = db.search_by_tags(s, model_name=MODEL, all_=["sky"], any_=["car", "tree"])
    assert page.hits
    for hit in page.hits:
        row = int(np.flatnonzero(corpus.ids == hit.asset_id)[0])
        expected = {ENGLISH[j] for j in (4, 2, 3) if corpus.matches(j, None)[row]}
        assert {t.english for t in hit.tags} == expected
        assert [t.score for t in hit.tags] == sorted((t.score for t in hit.tags), reverse=True)
        for t in hit.tags:
            assert t.chinese == CHINESE[ENGLISH.index(t.english)]
            assert t.score == pytest.approx(float(corpus.scores[row, ENGLISH.index(t.english)]))


@pytest.mark.parametrize("query", [{"all_": ["cat"]}, {"any_": ["car", "tree"]}, {"none": ["sky"]}])
def test_pages_cover_everything_once(url: str, corpus: Corpus, query: dict) -> None:
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        with session_scope(url) as s:
            page = db.search_by_tags(s, model_name=MODEL, limit=7, cursor=cursor, **query)
        assert len(page.hits) <= 7
        seen += [h.asset_id for h in page.hits]
        pages += 1
        cursor = page.next_cursor
        if cursor is None:
            break
    if "none" in query and len(query) == 1:
        keep = ~corpus.matches(4, None)
        expected = sorted(corpus.ids[keep].tolist(), reverse=True)  # newest first, no score
    else:
        expected = [a for a, _ in corpus.query(**query)]
    assert seen == expected
    assert pages == max(1, -(-len(expected) // 7))


def test_asset_filters(url: str, corpus: Corpus) -> None:
    index = np.arange(N)
    png = index % 3 == 1
    assert_same(run(url, all_=["dog"], mime="image/png"), corpus.query(all_=["dog"], keep=png))
    not_jpeg = index % 3 != 0
    assert_same(
        run(url, any_=["car"], mime=["image/png", "image/webp"]),
        corpus.query(any_=["car"], keep=not_jpeg),
    )
    assert_same(run(url, any_=["car"], mime="image/*"), corpus.query(any_=["car"]))
    window = (index >= 20) & (index < 50)
    since, until = T0 + timedelta(days=20), T0 + timedelta(days=50)
    assert_same(
        run(url, all_=["sky"], since=since, until=until),
        corpus.query(all_=["sky"], keep=window),
    )
    only_dates = run(url, since=since, until=until)
    assert [a for a, _ in only_dates] == sorted(corpus.ids[window].tolist(), reverse=True)
    assert all(score is None for _, score in only_dates)


def test_threshold_override_changes_results(url: str, corpus: Corpus) -> None:
    before = run(url, all_=["tree"])
    try:
        with session_scope(url) as s:
            db.set_threshold_override(s, int(corpus.tag_ids[3]), 0.3)
        corpus.thresholds[3] = np.float32(0.3)
        after = run(url, all_=["tree"])
        assert len(after) > len(before)
        assert_same(after, corpus.query(all_=["tree"]))
    finally:
        with session_scope(url) as s:
            db.set_threshold_override(s, int(corpus.tag_ids[3]), None)
        corpus.thresholds[3] = THRESHOLDS[3]


def test_bad_queries_raise_clear_errors(url: str, corpus: Corpus) -> None:
    with session_scope(url) as s:
        with pytest.raises(db.UnknownTagError, match="unicorn"):
            db.search_by_tags(s, model_name=MODEL, all_=["cat", "unicorn"])
        with pytest.raises(ValueError, match="limit"):
            db.search_by_tags(s, model_name=MODEL, all_=["cat"], limit=0)
        with pytest.raises(ValueError, match="min_score"):
            db.search_by_tags(s, model_name=MODEL, all_=["cat"], min_score=2)
        with pytest.raises(ValueError, match="cursor"):
            db.search_by_tags(s, model_name=MODEL, all_=["cat"], cursor="not-a-cursor")
        asset_page = db.search_by_tags(s, model_name=MODEL, limit=1)
        with pytest.raises(ValueError, match="cursor"):
            db.search_by_tags(s, model_name=MODEL, all_=["cat"], cursor=asset_page.next_cursor)
        with pytest.raises(db.UnknownTagError):
            db.search_by_tags(s, model_name="another-model", all_=["cat"])


@pytest.mark.parametrize("query", [{"all_": ["cat"]}, {"any_": ["car", "tree"], "none": ["dog"]}])
def test_date_order_returns_every_match_newest_first(url: str, corpus: Corpus, query: dict) -> None:
    """Every match, newest created_at first, ties by id, paged exactly; ten assets share one
    instant (on SQLite written in both of its text layouts, which do not compare as strings)."""
    tied = [int(a) for a in corpus.ids[10:20]]
    instant = datetime(2024, 6, 1, tzinfo=UTC)  # later than every other asset
    sqlite = url.startswith("sqlite")
    with session_scope(url) as s:
        for k, asset_id in enumerate(tied):
            text = "2024-06-01 00:00:00+00"
            if sqlite:
                text = "2024-06-01 00:00:00" if k % 2 else "2024-06-01 00:00:00.000000"
            s.execute(
                sa.text("UPDATE assets SET created_at = :t WHERE id = :i"),
                {"t": text, "i": asset_id},
            )
    try:
        created = {
            int(a): instant if int(a) in tied else T0 + timedelta(days=i)
            for i, a in enumerate(corpus.ids)
        }
        ranked = dict(corpus.query(**query))
        expected = sorted(ranked, key=lambda a: (created[a], a), reverse=True)
        assert any(a in tied for a in expected)
        seen: list[tuple[int, float | None]] = []
        cursor = None
        while True:
            with session_scope(url) as s:
                page = db.search_by_tags(
                    s, model_name=MODEL, limit=3, cursor=cursor, order="date", **query
                )
            seen += [(h.asset_id, h.score) for h in page.hits]
            cursor = page.next_cursor
            if cursor is None:
                break
        assert [a for a, _ in seen] == expected
        for asset_id, score in seen:  # the score shown is still the ranking tag's
            assert score == pytest.approx(ranked[asset_id], abs=1e-6)
        with session_scope(url) as s, pytest.raises(ValueError, match="date-ordered"):
            first = db.search_by_tags(s, model_name=MODEL, limit=3, **query)
            db.search_by_tags(
                s, model_name=MODEL, limit=3, cursor=first.next_cursor, order="date", **query
            )
    finally:
        with session_scope(url) as s:
            for i, a in enumerate(corpus.ids[10:20], start=10):
                s.execute(
                    sa.update(db.Asset)
                    .where(db.Asset.id == int(a))
                    .values(created_at=T0 + timedelta(days=i))
                )
