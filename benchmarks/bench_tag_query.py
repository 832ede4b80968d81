"""Tag-search latency on PostgreSQL: ramdex's indexes vs the obvious baseline.

Builds a throw-away database (``ramdex_bench_<random>`` on the server, dropped afterwards unless
``--keep``) migrated to head, loads N synthetic assets with about S stored scores each (tag
frequencies follow a power law, as real tag distributions do: a few tags on half the assets, a
long tail on few), then times :func:`indexer.db.search_by_tags` (the function the API calls):

* with the schema's indexes (``asset_tags (tag_id, score, asset_id)`` + PK ``(asset_id, tag_id)``);
* baseline: the same queries after dropping the composite index, i.e. only the primary key, which
  cannot find a tag's rows without scanning.

Prints p50 / p95 per query side by side, table and index sizes, and with ``--explain`` the
PostgreSQL plans (EXPLAIN ANALYZE, BUFFERS) of the indexed runs.

    python benchmarks/bench_tag_query.py --assets 100000 --scores 40 --explain
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import sqlalchemy as sa

from indexer import db
from indexer.db.session import dispose_engines, get_engine, session_scope
from indexer.migrate import upgrade_database
from ram_pp.vocab import builtin_vocabulary

ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"
URL = "postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
MODEL = "bench-model@0"
COMPOSITE = "ix_asset_tags_tag_id_score_asset_id"


def load(url: str, assets: int, scores: int, seed: float) -> float:
    """Synthetic assets and scores, generated server-side (bulk-load style: constraints off
    during the insert, then the primary key and index built once). Returns seconds."""
    start = time.perf_counter()
    with session_scope(url) as s:
        tag_ids = db.ensure_vocabulary(s, MODEL, builtin_vocabulary())
    first, ntags = int(tag_ids.min()), len(tag_ids)
    # rank r -> tag (r * 1009 + 577) mod T: popular tags spread over the vocabulary
    tag_of_rank = f"(floor({ntags} * power(random(), 2))::int * 1009 + 577) %% {ntags}"
    engine = get_engine(url)
    with engine.begin() as conn:
        run = conn.exec_driver_sql
        run(f"SELECT setseed({seed})")
        run(
            "INSERT INTO assets (sha256, mime, size_bytes, width, height, status, model_name, "
            "created_at, updated_at) "
            "SELECT encode(sha256(i::text::bytea), 'hex'), "
            "(ARRAY['image/jpeg','image/png','image/webp'])[1 + i %% 3], 100000 + i, 1024, 768, "
            f"'done', '{MODEL}', "
            "timestamptz '2024-01-01' + (i * interval '5 minutes'), now() "
            f"FROM generate_series(1, {assets}) AS i"
        )
        run("ALTER TABLE asset_tags DROP CONSTRAINT pk_asset_tags")
        run(f"DROP INDEX {COMPOSITE}")
        run("SET LOCAL session_replication_role = replica")  # skip FK triggers for the bulk load
        # tag rank = floor(T * u^2): P(rank 0 per draw) ~ 1.5%, so the top tag is on ~45% of
        # assets at 40 draws; duplicates per asset are dropped. Scores skew low (0.2 .. 1).
        run(
            "INSERT INTO asset_tags (asset_id, tag_id, score) "
            "SELECT DISTINCT ON (a.id, t.tag) a.id, t.tag, t.score FROM assets a "
            f"CROSS JOIN LATERAL (SELECT {first} + {tag_of_rank} AS tag,"
            " (0.2 + 0.8 * power(random(), 2))::real AS score, a.id AS dep "
            f"FROM generate_series(1, {scores})) AS t"
        )
        run("ALTER TABLE asset_tags ADD CONSTRAINT pk_asset_tags PRIMARY KEY (asset_id, tag_id)")
        run(f"CREATE INDEX {COMPOSITE} ON asset_tags (tag_id, score, asset_id)")
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
            "VACUUM ANALYZE assets, asset_tags, tags"
        )
    return time.perf_counter() - start


def pick_tags(url: str) -> dict[str, str]:
    """English names of the most common tag, one at ~2% of assets and one at ~0.1%."""
    with get_engine(url).connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT t.english, count(*) FROM asset_tags a JOIN tags t ON t.id = a.tag_id "
            "GROUP BY t.english ORDER BY count(*) DESC"
        ).all()
        total = conn.exec_driver_sql("SELECT count(*) FROM assets").scalar_one()

    def near(fraction: float) -> str:
        return min(rows, key=lambda r: abs(r[1] / total - fraction))[0]

    return {"common": rows[0][0], "mid": near(0.02), "rare": near(0.001), "second": rows[1][0]}


def queries(tags: dict[str, str]) -> dict[str, dict[str, Any]]:
    return {
        "1 tag, common, top 50": {"all_": [tags["common"]]},
        "1 tag, rare, top 50": {"all_": [tags["rare"]]},
        "1 tag, common, page 5 (cursor)": {"all_": [tags["common"]], "_pages": 5},
        "2 tags AND (common+mid)": {"all_": [tags["common"], tags["mid"]]},
        "common AND NOT second": {"all_": [tags["common"]], "none": [tags["second"]]},
        "any of 3 (OR, ranked by max)": {"any_": [tags["mid"], tags["rare"], tags["second"]]},
        "1 tag + mime + date range": {
            "all_": [tags["mid"]],
            "mime": "image/png",
            "since": "2024-03-01",
            "until": "2024-06-01",
        },
        "1 tag, min_score 0.9": {"all_": [tags["common"]], "min_score": 0.9},
        "date order: common, newest 50": {"all_": [tags["common"]], "order": "date"},
        "date order: common, page 5": {"all_": [tags["common"]], "order": "date", "_pages": 5},
        "date order: mid, newest 50": {"all_": [tags["mid"]], "order": "date"},
        "date order: rare, newest 50": {"all_": [tags["rare"]], "order": "date"},
        # What the API did before date order reached the database: the 1,000 best by score,
        # sorted by date in Python (inexact: older matches beyond the 1,000 never show).
        "old: common, best 1000 then sort": {"all_": [tags["common"]], "_recall_sort": 1000},
    }


def run_query(url: str, query: dict[str, Any]) -> int:
    from datetime import UTC, datetime

    args = {k: v for k, v in query.items() if not k.startswith("_")}
    for key in ("since", "until"):
        if key in args:
            args[key] = datetime.fromisoformat(args[key]).replace(tzinfo=UTC)
    cursor = None
    hits = 0
    with session_scope(url) as s:
        if "_recall_sort" in query:
            page = db.search_by_tags(s, model_name=MODEL, limit=query["_recall_sort"], **args)
            ids = [h.asset_id for h in page.hits]
            rows = s.execute(
                sa.select(db.Asset.id, db.Asset.created_at).where(db.Asset.id.in_(ids))
            ).all()
            return len(sorted(rows, key=lambda r: (r.created_at, r.id), reverse=True)[:50])
        for _ in range(query.get("_pages", 1)):
            page = db.search_by_tags(s, model_name=MODEL, limit=50, cursor=cursor, **args)
            hits, cursor = len(page.hits), page.next_cursor
            if cursor is None:
                break
    return hits


def timed(fn: Callable[[], int], runs: int) -> tuple[float, float, int]:
    fn()  # warm the cache and the session
    samples = []
    hits = 0
    for _ in range(runs):
        start = time.perf_counter()
        hits = fn()
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    p95 = samples[min(len(samples) - 1, round(0.95 * (len(samples) - 1)))]
    return statistics.median(samples), p95, hits


def explain(url: str, query: dict[str, Any]) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of the tag query search_by_tags sends for ``query``."""
    captured: list[tuple[str, Any]] = []
    engine = get_engine(url)

    def grab(conn, cursor, statement, parameters, context, executemany) -> None:  # noqa: ANN001
        if "FROM asset_tags AS d0" in statement:
            captured.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", grab)
    try:
        run_query(url, query)
    finally:
        sa.event.remove(engine, "before_cursor_execute", grab)
    statement, parameters = captured[-1]  # the last page's query for paged runs
    with engine.connect() as conn:
        rows = conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters)
        return "\n".join(r[0] for r in rows)


def sizes(url: str) -> list[tuple[str, int]]:
    with get_engine(url).connect() as conn:
        return [
            (name, conn.exec_driver_sql(f"SELECT pg_relation_size('{name}')").scalar_one())
            for name in ("assets", "asset_tags", "pk_asset_tags", COMPOSITE)
        ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--assets", type=int, default=100_000)
    parser.add_argument("--scores", type=int, default=40, help="score draws per asset")
    parser.add_argument("--runs", type=int, default=30, help="timed runs per query (indexed)")
    parser.add_argument("--baseline-runs", type=int, default=5)
    parser.add_argument("--explain", action="store_true", help="print the indexed plans")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args()

    name = f"ramdex_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = URL.format(name=name)
    try:
        upgrade_database(url)
        seconds = load(url, args.assets, args.scores, seed=0.42)
        with get_engine(url).connect() as conn:
            rows = conn.exec_driver_sql("SELECT count(*) FROM asset_tags").scalar_one()
        print(f"database {name}: {args.assets} assets, {rows} scores "
              f"({rows / args.assets:.1f}/asset), loaded in {seconds:.1f} s")  # fmt: skip
        for rel, size in sizes(url):
            print(f"  {rel:40} {size / 2**20:8.1f} MiB  ({size / rows:5.1f} B/score row)")
        tags = pick_tags(url)
        print("tags:", tags)
        qs = queries(tags)

        indexed = {
            label: timed(lambda q=q: run_query(url, q), args.runs) for label, q in qs.items()
        }
        plans = {label: explain(url, q) for label, q in qs.items()} if args.explain else {}
        with get_engine(url).begin() as conn:
            conn.exec_driver_sql(f"DROP INDEX {COMPOSITE}")
            conn.exec_driver_sql("ANALYZE asset_tags")
        baseline = {
            label: timed(lambda q=q: run_query(url, q), args.baseline_runs)
            for label, q in qs.items()
        }
        if args.explain:
            first = next(iter(qs))
            plans[f"BASELINE (no composite index): {first}"] = explain(url, qs[first])

        print(f"\n{'query':34} {'hits':>5} | {'indexed p50':>11} {'p95':>8} | "
              f"{'baseline p50':>12} {'p95':>8} | speed-up")  # fmt: skip
        for label in qs:
            i50, i95, hits = indexed[label]
            b50, b95, _ = baseline[label]
            print(f"{label:34} {hits:5d} | {i50:9.2f}ms {i95:6.2f}ms | "
                  f"{b50:10.2f}ms {b95:6.2f}ms | {b50 / i50:6.1f}x")  # fmt: skip
        for label, plan in plans.items():
            print(f"\n--- EXPLAIN: {label}\n{plan}")
    finally:
        dispose_engines()
        if not args.keep:
            with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
