"""Tag vocabulary on PostgreSQL and SQLite: bulk creation in logit order, idempotence, prefix
search, name resolution, threshold overrides, per-asset detail and per-tag score writes."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import sqlalchemy as sa

from indexer import db
from indexer.db.session import session_scope
from ram_pp.vocab import TagVocabulary, builtin_vocabulary

pytest_plugins = ["tests.db_fixtures"]

MODEL = "ram@abc"


def count_tags(url: str) -> int:
    with session_scope(url) as s:
        return int(s.scalar(sa.select(sa.func.count()).select_from(db.Tag)))


def test_builtin_vocabulary_ids_follow_logit_order_and_are_stable(db_url: str) -> None:
    vocab = builtin_vocabulary()
    with session_scope(db_url) as s:
        ids = db.ensure_vocabulary(s, MODEL, vocab)
    assert ids.dtype == np.int64 and ids.shape == (len(vocab),)
    assert len(set(ids.tolist())) == len(vocab)
    with session_scope(db_url) as s:
        rows = {t.id: t for t in s.scalars(sa.select(db.Tag))}
    for pos in (0, 1, 1000, len(vocab) - 1):
        tag = rows[int(ids[pos])]
        assert (tag.english, tag.chinese, tag.position) == (
            vocab.english[pos],
            vocab.chinese[pos],
            pos,
        )
        assert tag.threshold == pytest.approx(float(vocab.thresholds[pos]), abs=1e-6)
        assert tag.origin == "builtin"
    with session_scope(db_url) as s:
        again = db.ensure_vocabulary(s, MODEL, vocab)
        other_model = db.ensure_vocabulary(s, "another@1", vocab.head(10))
    np.testing.assert_array_equal(again, ids)
    assert not set(other_model.tolist()) & set(ids.tolist())
    assert count_tags(db_url) == len(vocab) + 10


def test_vocabulary_updates_keep_overrides(db_url: str) -> None:
    vocab = TagVocabulary.from_names(["cat", "dog", "car"], threshold=0.7)
    with session_scope(db_url) as s:
        ids = db.ensure_vocabulary(s, MODEL, vocab)
        db.set_threshold_override(s, int(ids[0]), 0.9)
    changed = TagVocabulary(
        ("dog", "cat", "bus"), ("狗", "猫", "公共汽车"), np.array([0.5, 0.6, 0.8], np.float32)
    )
    with session_scope(db_url) as s:
        new_ids = db.ensure_vocabulary(s, MODEL, changed)
    assert new_ids[0] == ids[1] and new_ids[1] == ids[0]
    with session_scope(db_url) as s:
        cat = db.get_tag(s, int(ids[0]))
        car = db.get_tag(s, int(ids[2]))
        assert (cat.position, cat.chinese, cat.threshold_override) == (1, "猫", 0.9)
        assert cat.threshold == pytest.approx(0.6)
        assert cat.effective_threshold == pytest.approx(0.9)
        assert car.position is None  # no longer in the vocabulary, kept for stored scores


def test_vocabulary_rejects_duplicates_and_concept_clashes(db_url: str) -> None:
    with session_scope(db_url) as s, pytest.raises(ValueError, match="duplicate"):
        db.ensure_vocabulary(s, MODEL, TagVocabulary.from_names(["a", "b", "a"]))
    with session_scope(db_url) as s:
        emb = np.eye(2, 8, dtype=np.float32)
        concept = db.create_concept(
            s, model_name=MODEL, name="zebra crossing", descriptions=["x", "y"], embeddings=emb
        )
        db.promote_concept(s, concept.id)
    with session_scope(db_url) as s, pytest.raises(ValueError, match="concept tags"):
        db.ensure_vocabulary(s, MODEL, TagVocabulary.from_names(["zebra crossing"]))


def test_list_tags_prefix_search(db_url: str) -> None:
    vocab = TagVocabulary(
        ("Cat", "catamaran", "dog", "100%_cotton", "100 percent"),
        ("猫", "双体船", "狗", "纯棉", "百分百"),
        np.full(5, 0.7, np.float32),
    )
    with session_scope(db_url) as s:
        db.ensure_vocabulary(s, MODEL, vocab)
        db.ensure_vocabulary(s, "other", TagVocabulary.from_names(["cattle"]))
    with session_scope(db_url) as s:
        names = lambda **kw: [t.english for t in db.list_tags(s, MODEL, **kw)]  # noqa: E731
        assert names(prefix="cat") == ["Cat", "catamaran"]
        assert names(prefix="CAT") == ["Cat", "catamaran"]
        assert names(prefix="猫") == ["Cat"]
        assert names(prefix="双") == ["catamaran"]
        assert names(prefix="100%") == ["100%_cotton"]  # % is literal, not a wildcard
        assert names(prefix="100_") == []
        assert names() == ["100 percent", "100%_cotton", "Cat", "catamaran", "dog"]
        assert names(limit=2, offset=1) == ["100%_cotton", "Cat"]
        assert names(origin="concept") == []
        with pytest.raises(ValueError):
            db.list_tags(s, MODEL, limit=0)


def test_resolve_tags_by_english_chinese_and_id(db_url: str) -> None:
    vocab = TagVocabulary(
        ("Airport", "airfield", "sock"), ("机场", "机场", "短袜"), np.full(3, 0.7, np.float32)
    )
    with session_scope(db_url) as s:
        ids = db.ensure_vocabulary(s, MODEL, vocab)
    with session_scope(db_url) as s:
        found = db.resolve_tags(s, MODEL, ["airport", "机场", int(ids[2])])
        assert [t.id for t in found["airport"]] == [ids[0]]
        assert sorted(t.id for t in found["机场"]) == sorted([ids[0], ids[1]])
        assert [t.english for t in found[int(ids[2])]] == ["sock"]
        with pytest.raises(db.UnknownTagError) as info:
            db.resolve_tags(s, MODEL, ["sock", "unicorn", 10_000_000])
        assert info.value.names == ["unicorn", 10_000_000]
        assert "unicorn" in str(info.value)
        with pytest.raises(db.UnknownTagError):
            db.resolve_tags(s, "other-model", ["sock"])


def test_threshold_override_validation(db_url: str) -> None:
    with session_scope(db_url) as s:
        (tag_id,) = db.ensure_vocabulary(s, MODEL, TagVocabulary.from_names(["x"]))
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            db.set_threshold_override(s, int(tag_id), 1.5)
        with pytest.raises(db.NotFoundError):
            db.set_threshold_override(s, 10_000_000, 0.5)
        assert db.set_threshold_override(s, int(tag_id), 0.3).effective_threshold == 0.3
        assert db.set_threshold_override(s, int(tag_id), None).threshold_override is None


def test_asset_tag_detail_and_per_tag_scores(db_url: str) -> None:
    vocab = TagVocabulary.from_names(["a", "b", "c", "d"], threshold=0.5)
    digest = hashlib.sha256(b"x").hexdigest()
    with session_scope(db_url) as s:
        ids = db.ensure_vocabulary(s, MODEL, vocab)
        asset = db.get_or_create_asset_by_sha(s, sha256=digest).id
        scores = np.array([0.9, 0.5, 0.3, 0.1], np.float32)
        db.write_asset_results(
            s, [db.AssetResult(asset, scores)], model_name=MODEL, tag_ids=ids, score_floor=0.2
        )
    with session_scope(db_url) as s:
        shown = db.get_asset_tags(s, asset)
        everything = db.get_asset_tags(s, asset, include_below_threshold=True)
    # 0.5 is not output at threshold 0.5 (RAM++ outputs prob > threshold); 0.1 is below the floor.
    assert [(t.english, t.above_threshold) for t in shown] == [("a", True)]
    assert [t.english for t in everything] == ["a", "b", "c"]
    assert [t.score for t in everything] == pytest.approx([0.9, 0.5, 0.3])

    with session_scope(db_url) as s:
        written = db.write_tag_scores(s, int(ids[3]), [asset], [0.95], score_floor=0.2)
        assert written == 1
        db.write_tag_scores(s, int(ids[0]), [asset], [0.1], score_floor=0.2)  # below floor
        with pytest.raises(ValueError):
            db.write_tag_scores(s, int(ids[0]), [asset], [0.1, 0.2])
    with session_scope(db_url) as s:
        names = [t.english for t in db.get_asset_tags(s, asset, include_below_threshold=True)]
    assert names == ["d", "b", "c"]


def ids(url: str, **query: object) -> list[int]:
    with session_scope(url) as s:
        return [h.asset_id for h in db.search_by_tags(s, model_name=MODEL, **query).hits]


def test_threshold_is_strict_and_min_score_inclusive(db_url: str) -> None:
    """RAM++ outputs a tag when prob > threshold; min_score is a >= bound. Scores exactly on the
    bound (as 4-byte floats) are the edge cases."""
    vocab = TagVocabulary.from_names(["edge"], threshold=0.6)
    with session_scope(db_url) as s:
        tag_ids = db.ensure_vocabulary(s, MODEL, vocab)
        on, above = (
            db.get_or_create_asset_by_sha(s, sha256=hashlib.sha256(x).hexdigest()).id
            for x in (b"on", b"above")
        )
        results = [
            db.AssetResult(on, np.array([0.6], np.float32)),
            db.AssetResult(above, np.array([np.nextafter(np.float32(0.6), 1)], np.float32)),
        ]
        db.write_asset_results(s, results, model_name=MODEL, tag_ids=tag_ids, score_floor=0.2)
    assert ids(db_url, all_=["edge"]) == [above]
    assert ids(db_url, all_=["edge"], min_score=0.6) == [above, on]
