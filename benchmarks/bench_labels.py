"""Tag search with people's labels (issue 13) on PostgreSQL: what provenance costs the hot path.

Builds a database of its own (``--db``, default ``ramdex_labels``): N done assets, 20 tags of a
model, per asset each tag scored ``Beta(0.6, 2.4)`` mapped onto [0.2, 1] (stored above the 0.2
floor), all written server-side with ``generate_series``. Then, in one process, side by side:

- **baseline**: the tag searches with no label on the query's tags (the SQL of before issue 13:
  :mod:`indexer.db.tag_match` adds label conditions only for keys that carry labels);
- **labelled**: the same searches after ``--labelled`` (default 2 %) of the assets got a label
  on the ranking tag (half manual, a quarter accepted, a quarter rejected) and 1 % a manual
  label on the second tag;
- the review queue of the tag (nearest the threshold first) and one change of 1,000 assets.

Each figure is p50 / p95 over ``--runs`` runs with the load average printed beside it; the ratio
column is labelled / baseline.

    flock /tmp/ramdex-bench.lock python benchmarks/bench_labels.py --assets 200000
    python benchmarks/bench_labels.py --drop
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import psycopg
import sqlalchemy as sa

from indexer import db
from indexer.db import label_repo
from indexer.db.session import dispose_engines, session_scope
from indexer.migrate import upgrade_database
from ram_pp.vocab import TagVocabulary

ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"
URL = "postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
MODEL = "labels-model@0"
TAGS = [f"tag{i:02d}" for i in range(20)]

QUERIES: dict[str, dict] = {
    "one tag, page 50": {"all_": ["tag00"]},
    "one tag, page 3": {"all_": ["tag00"], "cursor_pages": 3},
    "two tags AND": {"all_": ["tag00", "tag01"]},
    "any of two": {"any_": ["tag00", "tag01"]},
    "tag AND NOT tag": {"all_": ["tag00"], "none": ["tag02"]},
    "newest first": {"all_": ["tag00"], "order": "date"},
}


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} {five:.2f} {fifteen:.2f}"


def build(url: str, assets: int) -> None:
    """Assets, vocabulary and scores, server-side."""
    upgrade_database(url)
    with session_scope(url) as s:
        thresholds = np.full(len(TAGS), 0.6, np.float32)
        ids = db.ensure_vocabulary(
            s, MODEL, TagVocabulary(TAGS, [f"标签{i}" for i in range(len(TAGS))], thresholds)
        )
        s.execute(
            sa.text(
                "INSERT INTO assets (sha256, status, model_name, created_at) "
                "SELECT md5(i::text) || md5((i + 1)::text), 'done', :m, "
                "now() - i * interval '1 minute' FROM generate_series(1, :n) AS i"
            ),
            {"m": MODEL, "n": assets},
        )
        lo, hi = min(int(i) for i in ids), max(int(i) for i in ids)
        # Beta(0.6, 2.4) by inversion is not in SQL: power(random(), 1/0.6) * (1 - ...) gives
        # a similar skew (most scores near the floor, a few percent above the thresholds)
        s.execute(
            sa.text(
                "INSERT INTO asset_tags (asset_id, tag_id, score) "
                "SELECT a.id, t.id, 0.2 + 0.8 * power(random(), 2.5) "
                "FROM assets a CROSS JOIN tags t WHERE t.id BETWEEN :lo AND :hi"
            ),
            {"lo": lo, "hi": hi},
        )
    with psycopg.connect(url.replace("+psycopg", "")) as conn:
        conn.execute("ANALYZE")


def label(url: str, share: float, seed: int = 3) -> None:
    """Labels on ``share`` of the assets for tag00 and half that share for tag01."""
    rng = np.random.default_rng(seed)
    with session_scope(url) as s:
        ids = np.array(s.scalars(sa.select(db.Asset.id)).all(), np.int64)
    chosen = rng.choice(ids, size=int(len(ids) * share), replace=False)
    quarter = len(chosen) // 4
    groups = {
        "add": chosen[: 2 * quarter],
        "accept": chosen[2 * quarter : 3 * quarter],
        "reject": chosen[3 * quarter :],
    }
    with session_scope(url) as s:
        for action, group in groups.items():
            for start in range(0, len(group), 1000):
                part = [int(i) for i in group[start : start + 1000]]
                label_repo.change_labels(s, part, "tag00", "tag00", action, "bench")
        second = rng.choice(ids, size=int(len(ids) * share / 2), replace=False)
        for start in range(0, len(second), 1000):
            part = [int(i) for i in second[start : start + 1000]]
            label_repo.change_labels(s, part, "tag01", "tag01", "add", "bench")
    with psycopg.connect(url.replace("+psycopg", "")) as conn:
        conn.execute("ANALYZE asset_labels")


def timed(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    fn()  # warm
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return statistics.median(times) * 1e3, times[int(0.95 * (len(times) - 1))] * 1e3


def search(url: str, query: dict) -> Callable[[], object]:
    query = dict(query)
    pages = query.pop("cursor_pages", 1)

    def run() -> object:
        cursor = None
        for _ in range(pages):
            with session_scope(url) as s:
                page = db.search_by_tags(s, model_name=MODEL, limit=50, cursor=cursor, **query)
            cursor = page.next_cursor
        return cursor

    return run


def measure(url: str, runs: int) -> dict[str, tuple[float, float]]:
    return {name: timed(search(url, q), runs) for name, q in QUERIES.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default="ramdex_labels")
    parser.add_argument("--assets", type=int, default=200_000)
    parser.add_argument("--labelled", type=float, default=0.02, help="share of assets labelled")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--drop", action="store_true", help="drop the database and stop")
    args = parser.parse_args()
    url = URL.format(name=args.db)
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{args.db}" WITH (FORCE)')
        if args.drop:
            return
        conn.execute(f'CREATE DATABASE "{args.db}"')
    t0 = time.perf_counter()
    build(url, args.assets)
    print(f"built {args.assets:,} assets x {len(TAGS)} tags in {time.perf_counter() - t0:.1f} s")
    base = measure(url, args.runs)
    print(f"baseline measured ({load()})")
    t0 = time.perf_counter()
    label(url, args.labelled)
    labelled_n = int(args.assets * args.labelled) + int(args.assets * args.labelled / 2)
    print(f"{labelled_n:,} labels written in {time.perf_counter() - t0:.1f} s ({load()})")
    after = measure(url, args.runs)
    print(f"\n{'query':<22} {'no labels p50/p95 ms':>22} {'labelled p50/p95 ms':>22} {'ratio':>6}")
    for name in QUERIES:
        (b50, b95), (a50, a95) = base[name], after[name]
        print(f"{name:<22} {b50:>10.2f} {b95:>10.2f} {a50:>11.2f} {a95:>10.2f} {a50 / b50:>6.2f}")
    print(f"({load()})")

    def queue() -> object:
        with session_scope(url) as s:
            tag = s.scalars(sa.select(db.Tag).where(db.Tag.english == "tag00")).one()
            return label_repo.review_queue(s, tag, 50, None)

    q50, q95 = timed(queue, args.runs)
    print(f"review queue, 50 nearest the threshold: p50 {q50:.2f} ms, p95 {q95:.2f} ms ({load()})")
    with session_scope(url) as s:
        ids = [int(i) for i in s.scalars(sa.select(db.Asset.id).limit(1000))]
    t0 = time.perf_counter()
    with session_scope(url) as s:
        changed, _ = label_repo.change_labels(s, ids, "tag05", "tag05", "reject", "bench")
    took = (time.perf_counter() - t0) * 1e3
    print(f"reject one tag on {changed:,} assets (one transaction, audit rows): {took:.0f} ms")
    dispose_engines()


if __name__ == "__main__":
    main()
