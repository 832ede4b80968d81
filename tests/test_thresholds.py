"""Thresholds learned from review, on PostgreSQL and SQLite: synthetic scores whose true
boundary is known (an asset truly has the tag exactly when its score is above 0.6), reviews of
some assets, and the suggestion recovering the boundary; applied, a tag search over the
unreviewed assets gets more precise at once. Plus the evidence rule, manual tags without a
stored score, reset, the Wilson interval and the isotonic fit."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import pytest
import sqlalchemy as sa

from indexer import db
from indexer.db.labels import AssetLabel, LabelChange
from indexer.db.session import session_scope
from indexer.db.tags import Tag
from indexer.thresholds import (
    EvidenceRule,
    apply_suggestions,
    isotonic_fit,
    reset_overrides,
    suggest_thresholds,
    wilson_interval,
)
from ram_pp.vocab import TagVocabulary

pytest_plugins = ["tests.db_fixtures"]

MODEL = "ram@thresholds"
VOCAB = TagVocabulary(
    ("dog", "cat", "car"), ("狗", "猫", "汽车"), np.array([0.3, 0.5, 0.5], np.float32)
)
BOUNDARY = 0.6  # the truth: an asset shows a dog exactly when its dog score is above this
N_ASSETS = 400
N_REVIEWED = 120
FLOOR = 0.2


def dog_archive(url: str, model: str = MODEL) -> tuple[dict[str, int], dict[int, float], set[int]]:
    """400 assets with dog scores evenly spread over [0.2, 1) (the model's threshold 0.3 is far
    too low: below the boundary it tags 0.3 of every 0.7 matched assets wrongly), 120 of them
    reviewed by the truth. Returns (tag ids by name, dog score per asset, reviewed assets)."""
    rng = random.Random(7)
    scores = [FLOOR + (1 - FLOOR) * (i + 0.5) / N_ASSETS for i in range(N_ASSETS)]
    rng.shuffle(scores)
    with session_scope(url) as s:
        s.execute(sa.delete(LabelChange))
        s.execute(sa.delete(AssetLabel))
        ids = db.ensure_vocabulary(s, model, VOCAB)
        tags = dict(zip(VOCAB.english, (int(i) for i in ids), strict=True))
        assets = [
            db.get_or_create_asset_by_sha(s, sha256=hashlib.sha256(b"%d" % i).hexdigest()).id
            for i in range(N_ASSETS)
        ]
        db.write_tag_scores(s, tags["dog"], assets, scores, score_floor=FLOOR)
        reviewed = rng.sample(assets, N_REVIEWED)
        score_of = dict(zip(assets, scores, strict=True))
        s.add_all(
            AssetLabel(
                asset_id=a,
                key="dog",
                label="dog",
                review="accepted" if score_of[a] > BOUNDARY else "rejected",
                updated_by="test",
            )
            for a in reviewed
        )
    return tags, score_of, set(reviewed)


def searched(url: str, tag: str, model: str = MODEL) -> set[int]:
    """Assets a default tag search for ``tag`` returns (the search the API and CLI run)."""
    with session_scope(url) as s:
        page = db.search_by_tags(s, model_name=model, all_=[tag], limit=1000)
    return {h.asset_id for h in page.hits}


def test_suggestion_recovers_the_boundary_and_raises_held_out_precision(db_url: str) -> None:
    tags, score_of, reviewed = dog_archive(db_url)
    held = set(score_of) - reviewed
    truly = {a for a in held if score_of[a] > BOUNDARY}

    def held_out_precision() -> float:
        hits = searched(db_url, "dog") & held
        return len(hits & truly) / len(hits)

    before = held_out_precision()
    assert before == pytest.approx(0.4 / 0.7, abs=0.05)  # (1 - 0.6) / (1 - 0.3) of the scores

    with session_scope(db_url) as s:
        (exact,) = suggest_thresholds(s, MODEL, target=1.0, score_floor=FLOOR)
        (ninety,) = suggest_thresholds(s, MODEL, target=0.9, score_floor=FLOOR)
    # Precision 1 starts at the boundary; 0.9 where 0.4 / (1 - t) = 0.9, t = 0.556 (all scores
    # count, not only the reviewed ones: the reviewed sample alone would say the same only by luck).
    assert exact.suggested == pytest.approx(BOUNDARY, abs=0.011)
    assert ninety.suggested == pytest.approx(1 - 0.4 / 0.9, abs=0.02)
    assert (exact.reviews, exact.positives + exact.negatives) == (N_REVIEWED, N_REVIEWED)
    assert exact.positives == sum(score_of[a] > BOUNDARY for a in reviewed)
    assert exact.before.precision == pytest.approx(0.4 / 0.7, abs=0.02)
    assert exact.after is not None and exact.after.precision == pytest.approx(1.0, abs=0.01)
    assert exact.after.recall == pytest.approx(1.0, abs=0.03)
    assert ninety.after is not None and (ninety.after.precision or 0) >= 0.9
    # the Wilson interval of the reviewed assets above the suggestion: all true
    assert exact.after.reviewed_true_above == exact.after.reviewed_above > 0
    assert exact.after.precision_low == pytest.approx(
        wilson_interval(exact.after.reviewed_above, exact.after.reviewed_above)[0]
    )

    with session_scope(db_url) as s:
        assert [a.tag for a in apply_suggestions(s, [exact])] == ["dog"]
    with session_scope(db_url) as s:
        assert s.get(Tag, tags["dog"]).threshold_override == pytest.approx(exact.suggested)
    after = held_out_precision()
    assert after > 0.97 > before  # search used the override at once (scores are stored)

    with session_scope(db_url) as s:
        assert reset_overrides(s, MODEL, ["狗"]) == 1
    assert held_out_precision() == pytest.approx(before)


def test_only_raised_unless_lowering_is_allowed(db_url: str) -> None:
    tags, _, _ = dog_archive(db_url)
    with session_scope(db_url) as s:
        db.set_threshold_override(s, tags["dog"], 0.8)  # above the boundary: precise already
    with session_scope(db_url) as s:
        (kept,) = suggest_thresholds(s, MODEL, target=0.95, score_floor=FLOOR)
        (lowered,) = suggest_thresholds(s, MODEL, target=0.95, score_floor=FLOOR, lower=True)
    assert kept.current == pytest.approx(0.8) and not kept.changes
    # lowest reaching 0.95: 0.4 / (1 - t) = 0.95, t = 0.579; recall rises
    assert lowered.suggested == pytest.approx(1 - 0.4 / 0.95, abs=0.02)
    assert lowered.after is not None
    assert (lowered.after.recall or 0) > (lowered.before.recall or 0) + 0.3


def test_evidence_rule_and_manual_tags_without_scores(db_url: str) -> None:
    _, score_of, reviewed = dog_archive(db_url)
    unscored = min(set(score_of) - reviewed)  # an unreviewed asset, its dog score dropped
    low = sorted(score_of, key=score_of.__getitem__)  # lowest dog scores first
    with session_scope(db_url) as s:
        s.execute(sa.delete(db.AssetTag).where(db.AssetTag.asset_id == unscored))
        # cat: 5 reviews only; a manual tag over a rejection still says "cat is there"
        s.add_all(
            AssetLabel(asset_id=a, key="cat", label="cat", review="rejected", updated_by="t")
            for a in low[:4]
        )
        s.add(AssetLabel(asset_id=low[4], key="cat", label="cat", manual=True, review="rejected"))
        # the unscored asset was tagged dog by hand: a false negative at every threshold
        s.add(AssetLabel(asset_id=unscored, key="dog", label="dog", manual=True))
    with session_scope(db_url) as s:
        by_tag = {x.tag: x for x in suggest_thresholds(s, MODEL, score_floor=FLOOR)}
        strict = suggest_thresholds(s, MODEL, names=["DOG"], rule=EvidenceRule(500, 3, 3))
    assert set(by_tag) == {"dog", "cat"}  # car has no decision
    cat = by_tag["cat"]
    assert (cat.reviews, cat.positives, cat.negatives) == (5, 1, 4)
    assert cat.suggested is None and "10 reviews" in (cat.reason or "")
    assert "3 positives" in (cat.reason or "")
    dog = by_tag["dog"]
    assert dog.unscored_positives == 1 and dog.suggested is not None
    assert dog.before.sample_recall == pytest.approx(1 - 1 / dog.positives)
    assert strict[0].suggested is None and "500 reviews" in (strict[0].reason or "")
    with session_scope(db_url) as s, pytest.raises(db.UnknownTagError):
        suggest_thresholds(s, MODEL, names=["unicorn"])
    with session_scope(db_url) as s, pytest.raises(ValueError, match="target"):
        suggest_thresholds(s, MODEL, target=1.5)


def test_wilson_interval_and_isotonic_fit() -> None:
    # p = 1: the lower bound is n / (n + z^2); the normal interval would claim [1, 1]
    low, high = wilson_interval(10, 10)
    assert low == pytest.approx(10 / (10 + 1.96**2)) and high == 1.0
    low, high = wilson_interval(45, 50)
    assert 0.78 < low < 0.79 and 0.95 < high < 0.96  # the textbook 45/50 interval
    assert wilson_interval(0, 0) == (0.0, 1.0)
    blocks = isotonic_fit([(0.4, 1), (0.1, 0), (0.3, 0), (0.2, 1)])
    assert blocks == [(0.1, 0.1, 0.0), (0.2, 0.3, 0.5), (0.4, 0.4, 1.0)]
    assert isotonic_fit([(0.5, 1), (0.6, 0)]) == [(0.5, 0.6, 0.5)]
