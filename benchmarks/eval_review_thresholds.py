"""Do thresholds learned from review raise precision? Measured on the demo archive.

Builds (or reuses) a demo archive: the synthetic sample images of ``ramdex demo`` (seeded, with
ground-truth tags per image) ingested with the bundled demo model into an embedded archive under
``--home``. The assets are split at random into a *review pool* and a *held-out* half. A
simulated curator reviews, per tag, ``--reviews`` pool assets (accept when the tag is in the
image's ground truth, reject otherwise), picked

* ``queue``: from the review queue (nearest the tag's threshold first, :func:`review_queue`),
  in ``--rounds`` rounds with thresholds suggested and applied after each (the queue then centres
  on the new threshold, as it would for a person working through it);
* ``random``: at random among the pool assets with a stored score for the tag;
* ``mixed``: each round half from the queue, half at random.

After the reviews, :func:`indexer.thresholds.suggest_thresholds` + ``apply_suggestions`` set the
overrides; precision and recall of the *model tags* (stored score above the effective threshold)
are measured against the ground truth on the held-out assets, before and after, micro (all tag
decisions pooled) and macro (mean over tags). Labels and overrides are cleared before each
strategy, so the archive is reusable.

    .venv/bin/python benchmarks/eval_review_thresholds.py --images 1000 --reviews 30
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from api.cli.demo import SAMPLE_SEED, demo_settings
from indexer.db.assets import AssetSource
from indexer.db.label_repo import QueueCursor, change_labels, review_queue
from indexer.db.labels import AssetLabel, LabelChange, label_key
from indexer.db.session import session_scope
from indexer.db.tags import AssetTag, Tag
from indexer.models import configured_model_id
from indexer.thresholds import EvidenceRule, apply_suggestions, suggest_thresholds

ACTOR = "bench:simulated-curator"


@dataclass
class Measure:
    """Precision/recall of model tags on the held-out assets (``per_tag``: tag -> (true
    positives, predicted, true))."""

    tp: int
    predicted: int
    positives: int
    macro_precision: float
    macro_recall: float
    per_tag: dict[str, tuple[int, int, int]]

    @property
    def precision(self) -> float:
        return self.tp / self.predicted if self.predicted else 0.0

    @property
    def recall(self) -> float:
        return self.tp / self.positives if self.positives else 0.0


def build(home: Path, images: int) -> tuple[str, str, dict[int, set[str]]]:
    """The demo archive under ``home`` (generated and ingested unless there already):
    (database URL, model id, ground-truth tags per asset id)."""
    from indexer.ingest.pipeline import ingest
    from ram_pp.synth import SynthSpec, write_dataset
    from ram_pp.train_data import read_tag_list

    settings = demo_settings(home)
    samples = home / "samples"
    if not (samples / "manifest.json").is_file():
        print(f"generating {images} sample images in {samples} ...")
        write_dataset(samples, SynthSpec(seed=SAMPLE_SEED, n_train=0, n_val=0, n_test=images))
    start = time.perf_counter()
    summary = ingest([samples / "images" / "test"], settings=settings, progress=False)
    print(
        f"ingest: done {summary.done}, duplicate {summary.duplicate}, failed {summary.failed} "
        f"in {time.perf_counter() - start:.1f} s"
    )
    listed = read_tag_list(samples / "test.txt")
    by_name = {p.name: set(t) for p, t in zip(listed.paths, listed.tags, strict=True)}
    url = settings.database_url
    with session_scope(url) as s:
        sources = s.execute(sa.select(AssetSource.asset_id, AssetSource.uri)).all()
    truth = {int(a): by_name[Path(uri).name] for a, uri in sources if Path(uri).name in by_name}
    return url, configured_model_id(settings), truth


def reset(url: str, model_id: str) -> None:
    """No labels, no overrides."""
    with session_scope(url) as s:
        s.execute(sa.delete(LabelChange))
        s.execute(sa.delete(AssetLabel))
        s.execute(sa.update(Tag).where(Tag.model_name == model_id).values(threshold_override=None))


def measure(url: str, model_id: str, truth: dict[int, set[str]], held: set[int]) -> Measure:
    """Model-tag precision/recall over the held-out assets at the effective thresholds."""
    tp = predicted = positives = 0
    precisions, recalls = [], []
    per_tag: dict[str, tuple[int, int, int]] = {}
    with session_scope(url) as s:
        tags = list(s.scalars(sa.select(Tag).where(Tag.model_name == model_id)))
        for tag in tags:
            rows = s.execute(
                sa.select(AssetTag.asset_id).where(
                    AssetTag.tag_id == tag.id, AssetTag.score > tag.effective_threshold
                )
            ).scalars()
            hits = {int(a) for a in rows} & held
            true = {a for a in held if tag.english in truth[a]}
            t = len(hits & true)
            tp, predicted, positives = tp + t, predicted + len(hits), positives + len(true)
            per_tag[tag.english] = (t, len(hits), len(true))
            if hits:
                precisions.append(t / len(hits))
            if true:
                recalls.append(t / len(true))
    return Measure(
        tp,
        predicted,
        positives,
        sum(precisions) / max(1, len(precisions)),
        sum(recalls) / max(1, len(recalls)),
        per_tag,
    )


def review(url: str, asset_ids: list[int], tag: Tag, truth: dict[int, set[str]]) -> None:
    """The simulated curator's decisions on ``asset_ids`` for ``tag``."""
    key = label_key(tag.english)
    accept = [a for a in asset_ids if tag.english in truth[a]]
    reject = [a for a in asset_ids if tag.english not in truth[a]]
    with session_scope(url) as s:
        if accept:
            change_labels(s, accept, key, tag.english, "accept", ACTOR)
        if reject:
            change_labels(s, reject, key, tag.english, "reject", ACTOR)


def queue_pick(url: str, tag_id: int, pool: set[int], n: int) -> list[int]:
    """The first ``n`` pool assets of the tag's review queue (the held-out ones skipped)."""
    picked: list[int] = []
    cursor: QueueCursor | None = None
    with session_scope(url) as s:
        tag = s.get(Tag, tag_id)
        assert tag is not None
        while len(picked) < n:
            items, cursor = review_queue(s, tag, limit=200, after=cursor)
            picked += [i.asset_id for i in items if i.asset_id in pool][: n - len(picked)]
            if cursor is None:
                break
    return picked


def random_pick(url: str, tag_id: int, pool: set[int], n: int, rng: random.Random) -> list[int]:
    """``n`` random pool assets with a stored score for the tag."""
    with session_scope(url) as s:
        scored = s.scalars(sa.select(AssetTag.asset_id).where(AssetTag.tag_id == tag_id))
        candidates = sorted(int(a) for a in scored if int(a) in pool)
    return rng.sample(candidates, min(n, len(candidates)))


def suggest_apply(
    url: str, model_id: str, target: float, rule: EvidenceRule, lower: bool
) -> tuple[int, int]:
    """Suggest and apply; (tags with a suggestion, overrides changed)."""
    with session_scope(url) as s:
        suggestions = suggest_thresholds(s, model_id, target=target, rule=rule, lower=lower)
        applied = apply_suggestions(s, suggestions)
    return sum(x.suggested is not None for x in suggestions), len(applied)


def run_strategy(
    name: str,
    lower: bool,
    url: str,
    model_id: str,
    truth: dict[int, set[str]],
    pool: set[int],
    args: argparse.Namespace,
) -> tuple[Measure, int, int, float]:
    """Reviews + suggest/apply under one sampling strategy; (after, reviews, changed, s)."""
    reset(url, model_id)
    rng = random.Random(args.seed)
    rule = EvidenceRule(args.min_reviews, args.min_positives, args.min_negatives)
    with session_scope(url) as s:
        tag_ids = [t.id for t in s.scalars(sa.select(Tag).where(Tag.model_name == model_id))]
    start = time.perf_counter()
    rounds = args.rounds if name != "random" else 1
    per_round = [args.reviews // rounds + (r < args.reviews % rounds) for r in range(rounds)]
    changed = reviews = 0
    for n in per_round:
        for tag_id in tag_ids:
            if name == "queue":
                ids = queue_pick(url, tag_id, pool, n)
            elif name == "random":
                ids = random_pick(url, tag_id, pool - _reviewed(url, tag_id), n, rng)
            else:  # mixed: half from the queue, half at random among the rest
                ids = queue_pick(url, tag_id, pool, n // 2)
                rest = pool - _reviewed(url, tag_id) - set(ids)
                ids += random_pick(url, tag_id, rest, n - len(ids), rng)
            if ids:
                with session_scope(url) as s:
                    tag = s.get(Tag, tag_id)
                    assert tag is not None
                    s.expunge(tag)
                review(url, ids, tag, truth)
                reviews += len(ids)
        _suggested, changed_now = suggest_apply(url, model_id, args.target, rule, lower)
        changed += changed_now
    elapsed = time.perf_counter() - start
    with session_scope(url) as s:
        overridden = s.scalar(
            sa.select(sa.func.count())
            .select_from(Tag)
            .where(Tag.model_name == model_id, Tag.threshold_override.is_not(None))
        )
    return measure(url, model_id, truth, set(truth) - pool), reviews, int(overridden or 0), elapsed


def _reviewed(url: str, tag_id: int) -> set[int]:
    with session_scope(url) as s:
        tag = s.get(Tag, tag_id)
        assert tag is not None
        rows = s.scalars(
            sa.select(AssetLabel.asset_id).where(AssetLabel.key == label_key(tag.english))
        )
        return {int(a) for a in rows}


def _line(label: str, m: Measure) -> str:
    return (
        f"  {label:<24} micro P {m.precision:.3f} R {m.recall:.3f} "
        f"(TP {m.tp} / predicted {m.predicted} / true {m.positives})   "
        f"macro P {m.macro_precision:.3f} R {m.macro_recall:.3f}"
    )


def _group(label: str, m: Measure, tags: set[str]) -> str:
    tp = sum(m.per_tag[t][0] for t in tags)
    n = sum(m.per_tag[t][1] for t in tags)
    true = sum(m.per_tag[t][2] for t in tags)
    return f"{label:<26} micro P {tp / max(1, n):.3f} R {tp / max(1, true):.3f}"


def main() -> None:
    """Parse arguments, build, review, measure, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, help="archive folder (reused; default: a temp dir)")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--reviews", type=int, default=30, help="reviews per tag")
    parser.add_argument("--rounds", type=int, default=3, help="queue rounds (apply after each)")
    parser.add_argument("--target", type=float, default=0.9)
    parser.add_argument("--min-reviews", type=int, default=10)
    parser.add_argument("--min-positives", type=int, default=3)
    parser.add_argument("--min-negatives", type=int, default=3)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--sampling", choices=("queue", "random", "mixed", "all"), default="all")
    args = parser.parse_args()
    os.environ.setdefault("RAMDEX_MODEL__DEVICE", "cpu")
    home = (args.home or Path(tempfile.mkdtemp(prefix="ramdex-thresholds-"))).resolve()
    url, model_id, truth = build(home, args.images)
    rng = random.Random(args.seed)
    assets = sorted(truth)
    pool = set(rng.sample(assets, len(assets) // 2))
    held = set(assets) - pool
    print(
        f"archive {home}: {len(assets)} assets ({len(pool)} review pool, {len(held)} held out), "
        f"model {model_id}, target precision {args.target}, {args.reviews} reviews per tag"
    )
    reset(url, model_id)
    before = measure(url, model_id, truth, held)
    print(_line("model thresholds", before))
    strategies = ("queue", "random", "mixed") if args.sampling == "all" else (args.sampling,)
    short = {t for t, (tp, n, _) in before.per_tag.items() if n and tp / n < args.target}
    print(f"  tags below the target on held-out assets: {len(short)} ({', '.join(sorted(short))})")
    print(_group("    those tags", before, short))
    for name in strategies:
        for lower, policy in ((True, "both ways"), (False, "raise only")):
            after, reviews, overridden, elapsed = run_strategy(
                name, lower, url, model_id, truth, pool, args
            )
            rounds = f", {args.rounds} rounds" if name != "random" else ""
            print(
                f"{name}{rounds}, {policy}: {reviews} reviews, {overridden} tags overridden, "
                f"{elapsed:.1f} s (reviews + suggest + apply)"
            )
            print(_line(f"after ({name}, {policy})", after))
            print(_group("    tags below target", after, short))
    reset(url, model_id)
    print("load average: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
