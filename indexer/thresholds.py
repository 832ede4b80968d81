"""Per-tag thresholds learned from review decisions (docs/thresholds.md).

Evidence for a tag T is every label row of the tag's key (``label_key(T.english)``) that a person
decided: ``review = accepted`` or ``manual`` is a *positive* (T is on the asset; a manual tag
wins over a rejection of the model's tag, as in search), ``review = rejected`` a *negative*.
Embedded keywords alone are not evidence (nobody looked at the model's score). Each decision is
paired with the asset's stored score for T, 0 when none is stored (scores below the score floor
are not stored: such a positive is a false negative at every threshold).

Estimates. Review decisions are taken on assets picked by *score* (the review queue: nearest
the threshold first; or at random), never by truth, so P(true | score) is the same for reviewed
and unreviewed assets even though the reviewed ones crowd around the threshold. We therefore
fit P(true | score) to the decisions (isotonic regression: monotone in the score, nothing else
assumed) and apply it to *every* stored score of the tag, counted in score bins by one SQL
aggregate: precision(t) = expected true assets above t / assets above t, over the whole archive,
not only over the reviewed few. Raw counts over the reviewed assets are kept beside it, with a
Wilson score interval (sound at proportions near 1 and at small n, where the normal interval
claims certainty from 10 of 10), so the person applying a threshold sees how much evidence
stands behind it.

Suggestion: the lowest threshold (on a 0.01 grid, finer above 0.99) whose estimated precision
reaches the target, not below the current threshold (``lower=True``: down to the score floor,
trading precision above the target for recall); the current one when that selects the same
assets; none when the target is not reached or the evidence rule (enough reviews, enough of
each class) is not met.
Applying writes ``tags.threshold_override``; search uses it at once (scores are stored).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.orm import Session

from indexer.db._sql import chunks
from indexer.db.base import Real
from indexer.db.labels import AssetLabel, Review, label_key
from indexer.db.tag_repo import resolve_tags, set_threshold_override
from indexer.db.tags import AssetTag, Tag

DEFAULT_TARGET = 0.9
GRID_STEP = 0.01
WILSON_Z = 1.96  # 95 % two-sided
_SAME = 1e-6


@dataclass(frozen=True, slots=True)
class EvidenceRule:
    """How much review a tag needs before a threshold is suggested for it."""

    min_reviews: int = 10
    min_positives: int = 3
    min_negatives: int = 3

    def __post_init__(self) -> None:
        if min(self.min_reviews, self.min_positives, self.min_negatives) < 0:
            raise ValueError("evidence minimums must be >= 0")


@dataclass(frozen=True, slots=True)
class OperatingPoint:
    """What a threshold gives, estimated for the whole archive and counted over the reviews.

    Attributes:
        threshold: a tag matches when its score is above this.
        matched: stored scores above it (assets the model tag would match).
        precision: estimated share of true assets among ``matched`` (None: nothing matched).
        recall: estimated share of the tag's true assets that are matched (None: no positive).
        reviewed_above: reviewed assets scoring above it; ``reviewed_true_above`` of them true.
        sample_precision: ``reviewed_true_above / reviewed_above`` (None when 0 reviewed).
        precision_low, precision_high: Wilson 95 % interval of ``sample_precision``.
        sample_recall: reviewed positives above it / all reviewed positives.
    """

    threshold: float
    matched: int
    precision: float | None
    recall: float | None
    reviewed_above: int
    reviewed_true_above: int
    sample_precision: float | None
    precision_low: float | None
    precision_high: float | None
    sample_recall: float | None


@dataclass(frozen=True, slots=True)
class Suggestion:
    """One tag's evidence, its threshold now, and the threshold suggested (if any).

    ``suggested`` is None when no threshold is suggested; ``reason`` then says why.
    ``confident`` is True when the Wilson lower bound at the suggested threshold reaches the
    target (the reviewed evidence alone supports it at 95 %).
    """

    tag_id: int
    tag: str
    model_threshold: float
    override: float | None
    current: float
    target: float
    reviews: int
    positives: int
    negatives: int
    unscored_positives: int
    before: OperatingPoint
    suggested: float | None = None
    after: OperatingPoint | None = None
    reason: str | None = None
    confident: bool = False

    @property
    def changes(self) -> bool:
        """Whether applying the suggestion changes the tag's effective threshold."""
        return self.suggested is not None and abs(self.suggested - self.current) > _SAME


@dataclass(slots=True)
class _Evidence:
    points: list[tuple[float, int]] = field(default_factory=list)  # (score or 0, 1 true / 0)
    unscored_positives: int = 0


def wilson_interval(successes: int, n: int, z: float = WILSON_Z) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (``(0, 1)`` when ``n`` is 0)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def isotonic_fit(points: Sequence[tuple[float, int]]) -> list[tuple[float, float, float]]:
    """P(true | score) as a non-decreasing step function fitted to ``(score, 0|1)`` points
    (pool-adjacent-violators). Returns blocks ``(lowest score, highest score, probability)``
    in score order; empty for no points."""
    blocks: list[list[float]] = []  # [lo, hi, sum of y, count]
    for score, y in sorted(points):
        blocks.append([score, score, float(y), 1.0])
        while len(blocks) > 1 and blocks[-2][2] / blocks[-2][3] >= blocks[-1][2] / blocks[-1][3]:
            top = blocks.pop()
            blocks[-1][1] = top[1]
            blocks[-1][2] += top[2]
            blocks[-1][3] += top[3]
    return [(lo, hi, total / n) for lo, hi, total, n in blocks]


def _probability(blocks: list[tuple[float, float, float]], score: float) -> float:
    """The fitted P(true | score): constant over a block's scores, linear between two blocks
    (as scikit-learn's IsotonicRegression predicts), the nearest block's value outside them.

    Outside the reviewed scores nothing is known; the nearest block's value is the estimate
    (docs/thresholds.md discusses what that means for reviews taken from the queue)."""
    if score <= blocks[0][0]:
        return blocks[0][2]
    for (_lo, hi, p), (next_lo, _next_hi, next_p) in zip(blocks, blocks[1:], strict=False):
        if score <= hi:
            return p
        if score < next_lo:
            return p + (next_p - p) * (score - hi) / (next_lo - hi)
    return blocks[-1][2]


def _grid(floor: float, current: float) -> list[float]:
    """Candidate thresholds: every 0.01, finer above 0.99 (a confident model's scores crowd
    just below 1), the score floor and the current threshold."""
    steps = round(1 / GRID_STEP)
    cuts = {round(i * GRID_STEP, 6) for i in range(steps + 1)}
    cuts |= {round(0.99 + i * 0.001, 6) for i in range(10)} | {0.9995, 0.9999}
    return sorted(cuts | {floor, current})


def _counts_above(session: Session, tag_id: int, cuts: Sequence[float]) -> list[int]:
    """Stored scores of the tag strictly above each cut, in one scan of the tag's scores.

    Cuts are compared as REAL, like the stored scores and the thresholds search compares them
    with (on PostgreSQL a double 0.7 is above the REAL 0.7 read back as 0.699999988).
    """
    sums = [
        sa.func.coalesce(
            sa.func.sum(sa.case((AssetTag.score > sa.cast(sa.literal(c, sa.Float()), Real), 1))),
            0,
        )
        for c in cuts
    ]
    row = session.execute(sa.select(*sums).where(AssetTag.tag_id == tag_id)).one()
    return [int(v) for v in row]


def _evidence(session: Session, tags: Sequence[Tag]) -> dict[int, _Evidence]:
    """Review evidence per tag id: decided label rows of each tag's key with the stored score."""
    by_key = {label_key(t.english): t for t in tags}
    found: dict[int, _Evidence] = {t.id: _Evidence() for t in tags}
    decided = sa.or_(AssetLabel.manual.is_(True), AssetLabel.review.is_not(None))
    for part in chunks(list(by_key), 500):
        rows = session.execute(
            sa.select(AssetLabel.key, AssetLabel.asset_id, AssetLabel.manual, AssetLabel.review)
            .where(AssetLabel.key.in_(part), decided)
            .order_by(AssetLabel.key, AssetLabel.asset_id)
        ).all()
        per_tag: dict[int, list[tuple[int, int]]] = {}
        for key, asset_id, manual, review in rows:
            truth = 1 if manual or review == Review.ACCEPTED.value else 0
            per_tag.setdefault(by_key[key].id, []).append((asset_id, truth))
        for tag_id, decisions in per_tag.items():
            scores: dict[int, float] = {}
            for ids in chunks([a for a, _ in decisions], 1000):
                stmt = sa.select(AssetTag.asset_id, AssetTag.score).where(
                    AssetTag.tag_id == tag_id, AssetTag.asset_id.in_(ids)
                )
                scores.update((int(a), float(s)) for a, s in session.execute(stmt))
            evidence = found[tag_id]
            for asset_id, truth in decisions:
                score = scores.get(asset_id)
                if score is None and truth:
                    evidence.unscored_positives += 1
                evidence.points.append((0.0 if score is None else score, truth))
    return found


def _operating_points(
    evidence: _Evidence, cuts: Sequence[float], above: Sequence[int]
) -> dict[float, OperatingPoint]:
    """Each cut's operating point: archive estimates from the fit over the binned stored
    scores, counts over the reviewed points."""
    blocks = isotonic_fit(evidence.points)
    # Expected true assets in each bin (cuts[i], cuts[i+1]]; the last bin is (cuts[-1], 1].
    expected: list[float] = []
    for i, cut in enumerate(cuts):
        upper = cuts[i + 1] if i + 1 < len(cuts) else 1.0
        in_bin = above[i] - (above[i + 1] if i + 1 < len(cuts) else 0)
        expected.append(in_bin * _probability(blocks, (cut + upper) / 2) if blocks else 0.0)
    true_above = [sum(expected[i:]) for i in range(len(cuts))]
    # Known positives without a stored score are missed at every threshold (they count in the
    # recall denominator); positives below the floor that nobody tagged cannot be counted.
    total_true = sum(expected) + evidence.unscored_positives
    positives = sum(y for _, y in evidence.points)
    points: dict[float, OperatingPoint] = {}
    for i, cut in enumerate(cuts):
        reviewed = [y for s, y in evidence.points if s > cut]
        k, n = sum(reviewed), len(reviewed)
        low, high = wilson_interval(k, n) if n else (None, None)
        points[cut] = OperatingPoint(
            threshold=cut,
            matched=above[i],
            precision=true_above[i] / above[i] if above[i] else None,
            recall=true_above[i] / total_true if total_true > 0 else None,
            reviewed_above=n,
            reviewed_true_above=k,
            sample_precision=k / n if n else None,
            precision_low=low,
            precision_high=high,
            sample_recall=k / positives if positives else None,
        )
    return points


def suggest_for_tag(
    session: Session,
    tag: Tag,
    evidence: _Evidence,
    *,
    target: float,
    rule: EvidenceRule,
    score_floor: float,
    lower: bool = False,
) -> Suggestion:
    """The suggestion for one tag from its evidence (see the module docstring): by default never
    below the current threshold (only tags short of the target change); with ``lower`` the
    lowest threshold reaching the target, which may be below (more recall)."""
    current = float(tag.effective_threshold)
    cuts = _grid(score_floor, current)
    above = _counts_above(session, tag.id, cuts)
    points = _operating_points(evidence, cuts, above)
    positives = sum(y for _, y in evidence.points)
    base = Suggestion(
        tag_id=tag.id,
        tag=tag.english,
        model_threshold=float(tag.threshold),
        override=None if tag.threshold_override is None else float(tag.threshold_override),
        current=current,
        target=target,
        reviews=len(evidence.points),
        positives=positives,
        negatives=len(evidence.points) - positives,
        unscored_positives=evidence.unscored_positives,
        before=points[current],
    )
    short = _short_of(base, rule)
    if short:
        return _replace(base, reason=short)
    # Below the floor every cut selects the same stored scores: start at the floor (or at the
    # current threshold when that is lower, so "keep it" stays possible).
    start = current if not lower else min(score_floor, current)
    usable = [c for c in cuts if c >= start - _SAME and points[c].precision is not None]
    reached = [c for c in usable if points[c].precision >= target - 1e-9]  # type: ignore[operator]
    if not reached:
        best = max(usable, key=lambda c: points[c].precision, default=None)  # type: ignore[arg-type, return-value]
        shown = (
            f" (at best {points[best].precision:.2f} above {best:.4g})" if best is not None else ""
        )
        return _replace(
            base, reason=f"estimated precision never reaches {target:.2f}{shown}: review more"
        )
    chosen = reached[0]
    if points[chosen].matched == points[current].matched:
        chosen = current  # the same assets match: keep what is set
    after = points[chosen]
    confident = after.precision_low is not None and after.precision_low >= target
    return _replace(base, suggested=chosen, after=after, confident=confident)


def _short_of(s: Suggestion, rule: EvidenceRule) -> str | None:
    wants = []
    if s.reviews < rule.min_reviews:
        wants.append(f"{rule.min_reviews} reviews (has {s.reviews})")
    if s.positives < rule.min_positives:
        wants.append(f"{rule.min_positives} positives (has {s.positives})")
    if s.negatives < rule.min_negatives:
        wants.append(f"{rule.min_negatives} negatives (has {s.negatives})")
    return "not enough evidence: needs " + ", ".join(wants) if wants else None


def _replace(s: Suggestion, **changes: object) -> Suggestion:
    from dataclasses import replace

    return replace(s, **changes)  # type: ignore[arg-type]


def _tags(session: Session, model_id: str, names: Sequence[str] | None) -> list[Tag]:
    """The named tags (raises UnknownTagError), or every tag of the model with a decision."""
    if names:
        resolved = resolve_tags(session, model_id, list(names))
        unique = {t.id: t for found in resolved.values() for t in found}
        return sorted(unique.values(), key=lambda t: t.english)
    keys = set(
        session.scalars(
            sa.select(AssetLabel.key)
            .where(sa.or_(AssetLabel.manual.is_(True), AssetLabel.review.is_not(None)))
            .distinct()
        )
    )
    if not keys:
        return []
    tags = session.scalars(sa.select(Tag).where(Tag.model_name == model_id).order_by(Tag.english))
    return [t for t in tags if label_key(t.english) in keys]


def _target_of(
    session: Session, model_id: str, targets: Mapping[str, float] | None
) -> dict[int, float]:
    if not targets:
        return {}
    resolved = resolve_tags(session, model_id, list(targets))
    return {t.id: float(targets[str(name)]) for name, found in resolved.items() for t in found}


def suggest_thresholds(
    session: Session,
    model_id: str,
    *,
    target: float = DEFAULT_TARGET,
    targets: Mapping[str, float] | None = None,
    names: Sequence[str] | None = None,
    rule: EvidenceRule | None = None,
    score_floor: float | None = None,
    lower: bool = False,
) -> list[Suggestion]:
    """Suggested thresholds for the model's reviewed tags (or the named ones), by tag name.

    Args:
        session: the unit of work (read only).
        model_id: the stored model id (``tags.model_name``).
        target: the precision to reach, for every tag.
        targets: per-tag targets by name (English or Chinese), over ``target``.
        names: only these tags (English, case-insensitive, or Chinese); default: every tag of
            the model with at least one decision.
        rule: minimum evidence (default :class:`EvidenceRule`).
        score_floor: the lowest stored score (default: the configured ``index.score_floor``).
        lower: also suggest thresholds below the current ones (more recall where precision is
            above the target); default: only raise the thresholds of tags short of the target.

    Raises:
        UnknownTagError: a name in ``names`` or ``targets`` is not a tag of the model.
        ValueError: a target outside (0, 1].
    """
    rule = rule or EvidenceRule()
    for value in [target, *(targets or {}).values()]:
        if not 0.0 < value <= 1.0:
            raise ValueError(f"target precision must be in (0, 1], got {value}")
    if score_floor is None:
        from indexer.settings import get_settings

        score_floor = get_settings().index.score_floor
    tags = _tags(session, model_id, names)
    per_tag = _target_of(session, model_id, targets)
    evidence = _evidence(session, tags)
    return [
        suggest_for_tag(
            session,
            tag,
            evidence[tag.id],
            target=per_tag.get(tag.id, target),
            rule=rule,
            score_floor=score_floor,
            lower=lower,
        )
        for tag in tags
    ]


def apply_suggestions(session: Session, suggestions: Sequence[Suggestion]) -> list[Suggestion]:
    """Write the suggested thresholds as overrides (those that change something); returns
    the suggestions applied. Search uses them at once; nothing is committed here."""
    applied = []
    for s in suggestions:
        if s.changes:
            set_threshold_override(session, s.tag_id, s.suggested)
            applied.append(s)
    return applied


def reset_overrides(session: Session, model_id: str, names: Sequence[str] | None = None) -> int:
    """Clear threshold overrides of the named tags (default: every tag of the model); returns
    how many tags had one.

    Raises:
        UnknownTagError: a name is not a tag of the model.
    """
    stmt = sa.select(Tag).where(Tag.model_name == model_id, Tag.threshold_override.is_not(None))
    if names:
        resolved = resolve_tags(session, model_id, list(names))
        ids = {t.id for found in resolved.values() for t in found}
        stmt = stmt.where(Tag.id.in_(ids))
    cleared = 0
    for tag in session.scalars(stmt):
        set_threshold_override(session, tag.id, None)
        cleared += 1
    return cleared
