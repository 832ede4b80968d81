"""Tag search with provenance (issue 13): model scores and people's labels together, on
PostgreSQL and SQLite, checked against a NumPy oracle of the documented rule (not against the
code under test):

- manual labels always match, embedded ones unless rejected, an accepted model tag at any score;
- a model score matches above the tag's threshold (or >= min_score) unless the tag is rejected;
- ``sources`` keeps only some of those; a label match ranks as 1.0;
- re-scoring (the same model again, or a new model) never brings back a rejected tag or drops a
  manual one.

Labels are written straight into ``asset_labels`` here; the review commands that write them
have their own tests (tests/test_review*.py).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from indexer import db
from indexer.db.labels import AssetLabel
from indexer.db.session import session_scope
from indexer.db.taxonomy_repo import import_concepts
from indexer.taxonomy import read_file
from ram_pp.vocab import TagVocabulary

pytest_plugins = ["tests.db_fixtures"]

MODEL = "provenance-model@1"
FLOOR = 0.2
ENGLISH = ("cat", "dog", "car", "sky")
CHINESE = ("猫", "狗", "汽车", "天空")
THRESHOLDS = np.array([0.6, 0.5, 0.55, 0.4], np.float32)
N = 60
ALL = ("model", "concept", "manual", "embedded")


class Corpus:
    """Assets with random scores and random labels; ``matches`` is the documented rule."""

    def __init__(self, url: str) -> None:
        rng = np.random.default_rng(7)
        self.scores = rng.random((N, len(ENGLISH))).astype(np.float32)
        self.manual = rng.random((N, len(ENGLISH))) < 0.12
        self.embedded = rng.random((N, len(ENGLISH))) < 0.08
        review = rng.random((N, len(ENGLISH)))
        self.accepted = review < 0.1
        self.rejected = (review >= 0.1) & (review < 0.3)
        # the cases the rule is about, for certain: a rejected high score, an accepted score
        # below the threshold, a manual tag with no stored score at all
        self.scores[0, 1], self.rejected[0, 1], self.accepted[0, 1] = 0.95, True, False
        self.scores[1, 1], self.accepted[1, 1], self.rejected[1, 1] = 0.3, True, False
        self.scores[2, 1], self.manual[2, 1] = 0.05, True
        with session_scope(url) as s:
            tag_ids = db.ensure_vocabulary(s, MODEL, TagVocabulary(ENGLISH, CHINESE, THRESHOLDS))
            self.ids = np.array(
                [
                    db.get_or_create_asset_by_sha(
                        s, sha256=hashlib.sha256(f"prov{i}".encode()).hexdigest()
                    ).id
                    for i in range(N)
                ]
            )
            db.write_asset_results(
                s,
                [db.AssetResult(int(a), self.scores[i]) for i, a in enumerate(self.ids)],
                model_name=MODEL,
                tag_ids=tag_ids,
                score_floor=FLOOR,
            )
            s.add_all(self.label_rows())

    def label_rows(self) -> list[AssetLabel]:
        rows = []
        said = self.manual | self.embedded | self.accepted | self.rejected
        for i, j in zip(*np.nonzero(said), strict=True):
            review = (
                "accepted" if self.accepted[i, j] else "rejected" if self.rejected[i, j] else None
            )
            rows.append(
                AssetLabel(
                    asset_id=int(self.ids[i]),
                    key=ENGLISH[j],
                    label=ENGLISH[j],
                    manual=bool(self.manual[i, j]),
                    embedded=bool(self.embedded[i, j]),
                    review=review,
                    updated_by="test",
                )
            )
        return rows

    def labelled(self, j: int, sources: tuple[str, ...]) -> np.ndarray:
        out = np.zeros(N, bool)
        if "manual" in sources:
            out |= self.manual[:, j]
        if "embedded" in sources:  # the file's keyword, unless a person rejected it
            out |= self.embedded[:, j] & ~self.rejected[:, j]
        if "model" in sources:  # every tag here is a built-in one
            out |= self.accepted[:, j]
        return out

    def matches(self, j: int, min_score: float | None, sources: tuple[str, ...]) -> np.ndarray:
        s = self.scores[:, j]
        scored = (s >= np.float32(FLOOR)) & (
            s >= min_score if min_score is not None else s > THRESHOLDS[j]
        )
        by_model = scored & ~self.rejected[:, j] if "model" in sources else np.zeros(N, bool)
        return by_model | self.labelled(j, sources)

    def query(self, all_=(), any_=(), none=(), min_score=None, sources=ALL) -> list[tuple]:
        col = ENGLISH.index
        ok = np.ones(N, bool)
        for name in all_:
            ok &= self.matches(col(name), min_score, sources)
        if any_:
            ok &= np.any([self.matches(col(n), min_score, sources) for n in any_], axis=0)
        for name in none:
            ok &= ~self.matches(col(name), min_score, sources)
        rank = [col(all_[0])] if all_ else [col(n) for n in any_]
        out = []
        for i in np.flatnonzero(ok):
            best = max(
                1.0 if self.labelled(j, sources)[i] else float(self.scores[i, j])
                for j in rank
                if self.matches(j, min_score, sources)[i]
            )
            out.append((int(self.ids[i]), best))
        return sorted(out, key=lambda x: (-x[1], -x[0]))


@pytest.fixture(scope="module")
def corpus(module_db_url: str) -> Corpus:
    return Corpus(module_db_url)


def pages(url: str, limit: int, **kwargs) -> list[tuple[int, float]]:
    """Every page of a search, concatenated."""
    out: list[tuple[int, float]] = []
    cursor = None
    while True:
        with session_scope(url) as s:
            page = db.search_by_tags(s, model_name=MODEL, limit=limit, cursor=cursor, **kwargs)
        out += [(h.asset_id, h.score) for h in page.hits]
        cursor = page.next_cursor
        if cursor is None:
            return out


QUERIES = [
    {"all_": ["dog"]},
    {"all_": ["dog", "sky"]},
    {"any_": ["cat", "dog"]},
    {"all_": ["sky"], "none": ["dog"]},
    {"any_": ["car", "sky"], "none": ["cat"]},
    {"all_": ["dog"], "min_score": 0.8},
    {"all_": ["dog"], "sources": ("model",)},
    {"any_": ["dog", "car"], "sources": ("manual", "embedded")},
    {"all_": ["cat"], "none": ["dog"], "sources": ("model", "manual")},
]


@pytest.mark.parametrize("query", QUERIES, ids=lambda q: "-".join(f"{k}={v}" for k, v in q.items()))
@pytest.mark.parametrize("limit", [1000, 6])
def test_search_follows_the_provenance_rule(module_db_url, corpus, query, limit) -> None:
    expected = corpus.query(**query)
    assert expected, "the query should match something"
    got = pages(module_db_url, limit, **query)
    assert [a for a, _ in got] == [a for a, _ in expected]
    assert np.allclose([s for _, s in got], [s for _, s in expected], atol=1e-6)


def test_the_rule_cases_and_the_reasons(module_db_url, corpus) -> None:
    rejected, accepted, manual = (int(corpus.ids[i]) for i in range(3))
    with session_scope(module_db_url) as s:
        page = db.search_by_tags(s, model_name=MODEL, all_=["dog"], limit=1000)
    hits = {h.asset_id: h for h in page.hits}
    assert rejected not in hits  # 0.95, far above the threshold, but a person rejected it
    assert hits[accepted].score == 1.0 and hits[manual].score == 1.0
    (reason,) = hits[accepted].tags
    assert reason.sources == ("model",) and reason.review == "accepted"
    (reason,) = hits[manual].tags
    assert "manual" in reason.sources and "model" not in reason.sources  # no stored score
    plain = next(a for a in hits if a not in (accepted, manual) and hits[a].score < 1.0)
    assert hits[plain].tags[0].sources == ("model",) and hits[plain].tags[0].review is None


def test_date_order_follows_the_rule(module_db_url, corpus) -> None:
    with session_scope(module_db_url) as s:
        page = db.search_by_tags(s, model_name=MODEL, any_=["dog", "car"], order="date", limit=1000)
    assert sorted(h.asset_id for h in page.hits) == sorted(
        a for a, _ in corpus.query(any_=["dog", "car"])
    )


def test_rescoring_keeps_labels(db_url) -> None:
    """A reindex (new scores from the same model) and a new model's vocabulary: the rejected
    tag stays out, the manual one stays in, though the new scores say the opposite."""
    with session_scope(db_url) as s:
        tag_ids = db.ensure_vocabulary(s, MODEL, TagVocabulary(ENGLISH, CHINESE, THRESHOLDS))
        a, b = (
            db.get_or_create_asset_by_sha(s, sha256=hashlib.sha256(x).hexdigest()).id
            for x in (b"a", b"b")
        )
        low = np.zeros(len(ENGLISH), np.float32)
        high = np.full(len(ENGLISH), 0.9, np.float32)
        db.write_asset_results(
            s,
            [db.AssetResult(a, high), db.AssetResult(b, low)],
            model_name=MODEL,
            tag_ids=tag_ids,
            score_floor=FLOOR,
        )
        s.add(AssetLabel(asset_id=a, key="dog", label="dog", review="rejected", updated_by="t"))
        s.add(AssetLabel(asset_id=b, key="dog", label="dog", manual=True, updated_by="t"))

    def dog(model: str) -> list[int]:
        with session_scope(db_url) as s:
            return [h.asset_id for h in db.search_by_tags(s, model_name=model, all_=["dog"]).hits]

    assert dog(MODEL) == [b]
    new_model = "provenance-model@2"
    for model in (MODEL, new_model):  # re-score with the same model, then with a new one
        with session_scope(db_url) as s:
            ids = db.ensure_vocabulary(s, model, TagVocabulary(ENGLISH, CHINESE, THRESHOLDS))
            db.write_asset_results(
                s,
                [db.AssetResult(a, high), db.AssetResult(b, low)],
                model_name=model,
                tag_ids=ids,
                score_floor=FLOOR,
            )
        assert dog(model) == [b], model
        with session_scope(db_url) as s:
            labels = s.execute(sa.select(AssetLabel.asset_id, AssetLabel.review)).all()
        assert sorted(labels) == sorted([(a, "rejected"), (b, None)])


# --- the taxonomy in tag search (examples/taxonomy-example.csv) and free keywords -------------

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "taxonomy-example.csv"
TAX_MODEL = "taxonomy-model@1"
TAX_TAGS = ("car", "truck", "dog", "cat", "sparrow", "sky")
TAX_ZH = ("汽车", "卡车", "狗", "猫", "麻雀", "天空")


@pytest.fixture()
def archive_with_taxonomy(db_url: str) -> dict[str, int]:
    """One asset per tag, scored 0.9 for it and 0 elsewhere; one asset with a manual free
    keyword; the example taxonomy imported (in an empty database: labels hold across models)."""
    with session_scope(db_url) as s:
        thresholds = np.full(len(TAX_TAGS), 0.5, np.float32)
        tag_ids = db.ensure_vocabulary(s, TAX_MODEL, TagVocabulary(TAX_TAGS, TAX_ZH, thresholds))
        ids: dict[str, int] = {}
        for j, name in enumerate((*TAX_TAGS, "keyword-only")):
            ids[name] = db.get_or_create_asset_by_sha(
                s, sha256=hashlib.sha256(f"tax-{name}".encode()).hexdigest()
            ).id
            scores = np.zeros(len(TAX_TAGS), np.float32)
            if j < len(TAX_TAGS):
                scores[j] = 0.9
            db.write_asset_results(
                s,
                [db.AssetResult(ids[name], scores)],
                model_name=TAX_MODEL,
                tag_ids=tag_ids,
                score_floor=FLOOR,
            )
        s.add(
            AssetLabel(
                asset_id=ids["keyword-only"],
                key="project x",
                label="Project X",
                manual=True,
                updated_by="t",
            )
        )
        import_concepts(s, read_file(EXAMPLE))
    return ids


def tax_search(url: str, **kwargs) -> list[db.SearchHit]:
    with session_scope(url) as s:
        return db.search_by_tags(s, model_name=TAX_MODEL, limit=100, **kwargs).hits


def test_synonyms_match_and_hits_say_which_term(db_url, archive_with_taxonomy) -> None:
    ids = archive_with_taxonomy
    for name in ("automobile", "AUTO", "轿车", "汽车", "car"):
        hits = tax_search(db_url, all_=[name])
        assert [h.asset_id for h in hits] == [ids["car"]], name
        (reason,) = hits[0].tags
        assert reason.english == "car"
        expected = None if name in ("car", "汽车") else name  # the tag's own names need no note
        assert reason.expanded_from == expected, name


def test_narrower_concepts_match_on_request(db_url, archive_with_taxonomy) -> None:
    ids = archive_with_taxonomy
    # "animal" is a taxonomy concept, no tag: by itself it matches labels only (none here)
    assert tax_search(db_url, all_=["animal"]) == []
    hits = tax_search(db_url, all_=["animal"], narrower=True)
    assert {h.asset_id for h in hits} == {ids["dog"], ids["cat"], ids["sparrow"]}
    assert {h.tags[0].expanded_from for h in hits} == {"animal"}
    hits = tax_search(db_url, any_=["vehicle", "sky"], narrower=True)
    assert {h.asset_id for h in hits} == {ids["car"], ids["truck"], ids["sky"]}
    kept = tax_search(db_url, none=["animal"], narrower=True)
    assert {h.asset_id for h in kept} == set(ids.values()) - {
        ids["dog"],
        ids["cat"],
        ids["sparrow"],
    }


def test_free_keywords_and_unknown_names(db_url, archive_with_taxonomy) -> None:
    hits = tax_search(db_url, all_=["project  X"])
    assert [h.asset_id for h in hits] == [archive_with_taxonomy["keyword-only"]]
    assert hits[0].tags[0].sources == ("manual",) and hits[0].tags[0].english == "Project X"
    with pytest.raises(db.UnknownTagError) as err:
        tax_search(db_url, all_=["no such thing"])
    assert err.value.names == ["no such thing"]
