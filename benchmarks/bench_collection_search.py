"""Search within a collection: a 1 % collection of a 100k-asset archive on PostgreSQL, against
the unrestricted search and against the naive "recall from the whole archive, then filter".

Builds a database of its own (``--db``, default ``ramdex_collections``): N done assets with a
512-d image embedding c each (clustered random unit vectors, COPY), 8 tags scored for every
asset (``generate_series``), one collection holding ``--share`` (default 1 %) of the assets at
random, and the archive's vector index over c (flat below ``index.exact_max_size``, as the
service builds it). Then, in one process, p50 / p95 over ``--runs`` queries:

- **similar, whole archive**: the FAISS top 1,000 (what the service recalls unrestricted);
- **similar, in the collection (planned)**: :func:`indexer.search.filtered.filtered_search`
  with the collection as an SQL filter (``CollectionScope.asset_condition``): it counts the
  collection, sees it is small, reads the members' c and scores them all (exact);
- **similar, naive recall-then-filter**: the whole-archive top 1,000, then membership looked up:
  fast, but it keeps about 1 % of what it recalled, so its recall@40 of the collection's true
  top 40 is printed beside it;
- **tag search** (one tag, page of 40, by score and newest first): unrestricted vs the
  collection's EXISTS on ``asset_collections`` (indexer/db/search.py).

    flock -w 60 /tmp/ramdex-bench.lock python benchmarks/bench_collection_search.py
    python benchmarks/bench_collection_search.py --drop
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
from indexer.db.assets import Asset
from indexer.db.collection_scope import CollectionScope
from indexer.db.session import dispose_engines, session_scope
from indexer.faiss_index import VectorIndex
from indexer.migrate import upgrade_database
from indexer.search.filtered import SqlFilter, database_reader, filtered_search
from ram_pp.vocab import TagVocabulary

ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"
URL = "postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
MODEL = "collections-model@0"
DIM = 512
TAGS = [f"tag{i}" for i in range(8)]
RECALL = 1000  # what the search service recalls (indexer.search.rankings.RECALL)
PAGE = 40


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} {five:.2f} {fifteen:.2f}"


def vectors(n: int, seed: int) -> np.ndarray:
    """Unit vectors around 64 random centres (clustered like image embeddings)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((64, DIM)).astype(np.float32)
    x = centres[rng.integers(0, 64, n)] + 0.6 * rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def build(url: str, n: int, share: float) -> tuple[int, np.ndarray, np.ndarray]:
    """The archive; returns (collection id, asset ids, their c)."""
    upgrade_database(url)
    with session_scope(url) as s:
        thresholds = np.full(len(TAGS), 0.6, np.float32)
        db.ensure_vocabulary(s, MODEL, TagVocabulary(TAGS, [f"标签{i}" for i in TAGS], thresholds))
    xb = vectors(n, 1)
    raw = psycopg.connect(url.replace("+psycopg", ""))
    with raw, raw.cursor() as cur:
        copy_sql = (
            "COPY assets (sha256, status, model_name, embedding, embedding_dim, created_at) "
            "FROM STDIN"
        )
        with cur.copy(copy_sql) as copy:
            for i in range(n):
                copy.write_row(
                    (
                        f"{i:064x}",
                        "done",
                        MODEL,
                        xb[i].astype("<f4").tobytes(),
                        DIM,
                        "2026-01-01T00:00:00Z",
                    )
                )
        cur.execute("UPDATE assets SET created_at = created_at + id * interval '1 second'")
        cur.execute(
            "INSERT INTO asset_tags (asset_id, tag_id, score) "
            "SELECT a.id, t.id, 0.2 + 0.8 * power(random(), 2.5) FROM assets a CROSS JOIN tags t"
        )
        cur.execute("INSERT INTO collections (name) VALUES ('bench') RETURNING id")
        collection = int(cur.fetchone()[0])  # type: ignore[index]
        cur.execute(
            "INSERT INTO asset_collections (collection_id, asset_id) "
            "SELECT %s, id FROM assets WHERE random() < %s",
            (collection, share),
        )
        cur.execute("SELECT id FROM assets ORDER BY id")
        ids = np.array([r[0] for r in cur.fetchall()], np.int64)
    raw.close()
    with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    return collection, ids, xb


def timed(fn: Callable[[int], object], runs: int) -> tuple[float, float]:
    fn(0)  # warm
    times = []
    for r in range(runs):
        t0 = time.perf_counter()
        fn(r + 1)
        times.append(time.perf_counter() - t0)
    times.sort()
    return statistics.median(times) * 1e3, times[int(0.95 * (len(times) - 1))] * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default="ramdex_collections")
    parser.add_argument("--assets", type=int, default=100_000)
    parser.add_argument("--share", type=float, default=0.01, help="the collection's share")
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
    collection, ids, xb = build(url, args.assets, args.share)
    index = VectorIndex(DIM, model_name=MODEL, exact_max_size=200_000, nlist=4096, pq_m=64)
    index.add(ids, xb)
    scope = CollectionScope(frozenset({collection}))
    with session_scope(url) as s:
        members = np.array(
            s.scalars(
                sa.select(db.AssetCollection.asset_id).where(
                    db.AssetCollection.collection_id == collection
                )
            ).all(),
            np.int64,
        )
    print(
        f"built {args.assets:,} assets, a collection of {members.size:,} "
        f"({members.size / args.assets:.1%}), {index.kind} index, in "
        f"{time.perf_counter() - t0:.1f} s ({load()})"
    )
    queries = vectors(args.runs + 1, 7)
    position = {int(i): k for k, i in enumerate(ids)}
    member_rows = np.array([position[int(i)] for i in members])

    def truth(q: np.ndarray) -> set[int]:
        scores = xb[member_rows] @ q
        return set(members[np.argsort(-scores)[:PAGE]].tolist())

    def whole(r: int) -> object:
        return index.search(queries[r : r + 1], RECALL)

    planned_recall: list[float] = []
    plans: list[str] = []

    def planned(r: int) -> object:
        with session_scope(url) as s:
            allowed = SqlFilter(s, scope.asset_conditions(Asset.__table__.c.id))
            scores, found, plan = filtered_search(
                index, queries[r], RECALL, allowed, read_vectors=database_reader(s, MODEL)
            )
        plans.append(plan.strategy)
        planned_recall.append(len(set(found[:PAGE].tolist()) & truth(queries[r])) / PAGE)
        return found

    naive_recall: list[float] = []
    naive_kept: list[int] = []

    def naive(r: int) -> object:
        _, found = index.search(queries[r : r + 1], RECALL)
        with session_scope(url) as s:
            seen = scope.visible_assets(s, found[0].tolist())
        kept = [int(i) for i in found[0] if int(i) in seen]
        naive_kept.append(len(kept))
        naive_recall.append(len(set(kept[:PAGE]) & truth(queries[r])) / PAGE)
        return kept

    rows = [
        ("similar, whole archive (top 1,000)", timed(whole, args.runs), ""),
        ("similar, collection, planned", timed(planned, args.runs), ""),
        ("similar, collection, recall-then-filter", timed(naive, args.runs), ""),
    ]
    rows[1] = (
        rows[1][0],
        rows[1][1],
        f"recall@{PAGE} {np.mean(planned_recall):.2f}, plan {max(set(plans), key=plans.count)}",
    )
    rows[2] = (
        rows[2][0],
        rows[2][1],
        f"recall@{PAGE} {np.mean(naive_recall):.2f}, {np.mean(naive_kept):.1f} of {RECALL} kept",
    )
    for order in ("score", "date"):
        for label, chosen in (("whole archive", CollectionScope()), ("collection", scope)):

            def tag_search(r: int, chosen: CollectionScope = chosen, order: str = order) -> object:
                with session_scope(url) as s:
                    return db.search_by_tags(
                        s,
                        model_name=MODEL,
                        all_=[TAGS[r % len(TAGS)]],
                        limit=PAGE,
                        order=order,  # type: ignore[arg-type]
                        scope=chosen,
                    )

            rows.append((f"tag search by {order}, {label}", timed(tag_search, args.runs), ""))
    # each row against its whole-archive counterpart: similar vs row 0, tag rows vs row 3 / 5
    baselines = [0, 0, 0, 3, 3, 5, 5]
    print(f"\n{'search':<42} {'p50 ms':>8} {'p95 ms':>8} {'vs whole':>9}")
    for (name, (p50, p95), note), base in zip(rows, baselines, strict=True):
        ratio = p50 / rows[base][1][0]
        print(f"{name:<42} {p50:>8.2f} {p95:>8.2f} {ratio:>8.2f}x  {note}")
    print(f"({load()})")
    dispose_engines()


if __name__ == "__main__":
    main()
