"""Tag search at archive scale on PostgreSQL: hash-partitioned ``asset_tags`` vs one plain table.

``--build`` makes a database of its own (``--db``, default ``ramdex_scale``) migrated to head
(so ``public.asset_tags`` is the table of migration s001, hash-partitioned by tag_id), N
synthetic done assets and RAM++-like stored scores: per asset a uniform 20..60 tags at or above
the 0.2 score floor, tags drawn by a Zipf law over the 4,585 built-in tags (a few tags on most
assets, a long tail on few), scores ``0.2 + 0.8 * Beta(0.6, 2.4)`` (most stored scores just
above the floor, a few percent above typical thresholds). The scores are written once as a
PostgreSQL binary COPY file (``--data``, reused by later builds) and loaded with server-side
``COPY`` into the partitioned table and into ``flat.asset_tags``, a plain table with the same
primary key and composite index (no foreign keys on either: a bulk load; the index builds run
after the load). ``--add-layout byasset`` adds the alternative key, HASH (asset_id) partitions,
in schema ``byasset``.

The measuring run times :func:`indexer.db.search_by_tags` (what the API calls) for each query
shape on each layout present (reached with ``search_path=<schema>,public``), plus the per-asset
read, an asset delete and a concept backfill write (rolled back), and prints p50 / p95 per shape,
the ratio to the plain table and the load average; ``--explain FILE`` writes the
EXPLAIN (ANALYZE, BUFFERS) plans of every layout. ``--time-migration N`` times s001 up and down.

    flock /tmp/ramdex-bench.lock python benchmarks/bench_tag_scale.py --build --assets 2000000
    flock /tmp/ramdex-bench.lock python benchmarks/bench_tag_scale.py --explain plans.txt
    python benchmarks/bench_tag_scale.py --drop
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import sqlalchemy as sa

from indexer import db
from indexer.db.session import dispose_engines, get_engine, session_scope
from indexer.db.tags import ASSET_TAG_PARTITIONS
from indexer.migrate import upgrade_database
from ram_pp.vocab import builtin_vocabulary

ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"
URL = "postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
SCHEMA_PATH = "?options=-csearch_path%3D{schema},public"
MODEL = "scale-model@0"
INDEX = "ix_asset_tags_tag_id_score_asset_id"
COPY_DTYPE = np.dtype(
    [("n", ">i2"), ("l1", ">i4"), ("a", ">i8"), ("l2", ">i4"), ("t", ">i4"), ("l3", ">i4"),
     ("s", ">f4")]
)  # fmt: skip
CHUNK = 50_000


def score_rows(
    assets: int, tag_ids: np.ndarray, *, seed: int = 7, zipf: float = 0.9
) -> Iterator[np.ndarray]:
    """Chunks of (asset_id, tag_id, score) rows as COPY-binary records, asset ids 1..assets."""
    rng = np.random.default_rng(seed)
    ntags = len(tag_ids)
    weights = 1.0 / np.arange(1, ntags + 1) ** zipf
    cdf = np.cumsum(weights) / weights.sum()
    tag_of_rank = rng.permutation(tag_ids)  # popular tags spread over the vocabulary
    for start in range(1, assets + 1, CHUNK):
        n = min(CHUNK, assets + 1 - start)
        draws = np.searchsorted(cdf, rng.random((n, 120)))  # ranks, with repeats
        draws.sort(axis=1)
        dup = np.zeros_like(draws, dtype=bool)
        dup[:, 1:] = draws[:, 1:] == draws[:, :-1]
        priority = np.where(dup, np.inf, rng.random(draws.shape))
        order = np.argsort(priority, axis=1)
        picked = np.take_along_axis(draws, order, axis=1)
        valid = np.take_along_axis(~dup, order, axis=1)
        want = rng.integers(20, 61, size=n)[:, None]
        keep = valid & (np.arange(draws.shape[1])[None, :] < want)
        rows, cols = np.nonzero(keep)
        out = np.empty(len(rows), COPY_DTYPE)
        out["n"], out["l1"], out["l2"], out["l3"] = 3, 8, 4, 4
        out["a"] = start + rows
        out["t"] = tag_of_rank[picked[rows, cols]]
        out["s"] = (0.2 + 0.8 * rng.beta(0.6, 2.4, size=len(rows))).astype(np.float32)
        yield out


def write_copy_file(path: Path, assets: int, tag_ids: np.ndarray) -> int:
    """The scores as one PostgreSQL binary COPY file; returns the row count."""
    total = 0
    with path.open("wb") as f:
        f.write(b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big"))
        for chunk in score_rows(assets, tag_ids):
            f.write(chunk.tobytes())
            total += len(chunk)
        f.write(b"\xff\xff")
    path.chmod(0o644)
    return total


def step(label: str, fn: Callable[[], Any]) -> Any:
    start = time.perf_counter()
    out = fn()
    print(f"  {label}: {time.perf_counter() - start:.1f} s", flush=True)
    return out


def build(name: str, assets: int, data: Path) -> None:
    """Create and load the database (see the module docstring)."""
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = URL.format(name=name)
    upgrade_database(url)
    with session_scope(url) as s:
        tag_ids = db.ensure_vocabulary(s, MODEL, builtin_vocabulary())
    if not data.exists() or data.stat().st_size < assets * 20 * 30:
        rows = step(f"score COPY file {data}", lambda: write_copy_file(data, assets, tag_ids))
        print(f"  {rows} rows, {data.stat().st_size / 2**30:.2f} GiB")
    dsn = f"postgresql://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        run = conn.execute
        run("SET maintenance_work_mem = '1GB'")
        step("assets", lambda: run(
            "INSERT INTO assets (sha256, mime, size_bytes, width, height, status, model_name, "
            "created_at, updated_at) "
            "SELECT encode(sha256(i::text::bytea), 'hex'), "
            "(ARRAY['image/jpeg','image/png','image/webp'])[1 + i % 3], 100000 + i, 1024, 768, "
            f"'done', '{MODEL}', timestamptz '2020-01-01' + i * interval '1 minute', now() "
            f"FROM generate_series(1, {assets}) AS i"
        ))  # fmt: skip
        for fk in ("fk_asset_tags_asset_id_assets", "fk_asset_tags_tag_id_tags", "pk_asset_tags"):
            run(f"ALTER TABLE asset_tags DROP CONSTRAINT {fk}")
        run(f"DROP INDEX {INDEX}")
        load_table(conn, "asset_tags", data)
        run("VACUUM ANALYZE assets, tags")
    add_layout(name, "plain", data)


# Other layouts, each in a schema of its own (reached with search_path=<schema>,public).
LAYOUTS = {"plain": ("flat", ""), "byasset": ("byasset", "PARTITION BY HASH (asset_id)")}


def load_table(conn: psycopg.Connection[Any], table: str, data: Path) -> None:
    """COPY the scores into an empty ``table``, then build its primary key and index once."""
    run = conn.execute
    run("SET maintenance_work_mem = '1GB'")
    step(f"COPY {table}", lambda: run(f"COPY {table} FROM '{data}' WITH (FORMAT binary)"))
    step(f"primary key {table}", lambda: run(
        f"ALTER TABLE {table} ADD CONSTRAINT pk_asset_tags PRIMARY KEY (asset_id, tag_id)"
    ))  # fmt: skip
    step(
        f"index {table}", lambda: run(f"CREATE INDEX {INDEX} ON {table} (tag_id, score, asset_id)")
    )
    step(f"VACUUM ANALYZE {table}", lambda: run(f"VACUUM ANALYZE {table}"))


def add_layout(name: str, layout: str, data: Path) -> None:
    """(Re)create one of LAYOUTS with the same scores: ``plain`` is one table, ``byasset`` 16 hash
    partitions on asset_id (the alternative key to the migration's tag_id)."""
    schema, clause = LAYOUTS[layout]
    dsn = f"postgresql://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(
            f"CREATE TABLE {schema}.asset_tags (asset_id BIGINT NOT NULL, "
            f"tag_id INTEGER NOT NULL, score REAL NOT NULL) {clause}"
        )
        if clause:
            for i in range(ASSET_TAG_PARTITIONS):
                conn.execute(
                    f"CREATE TABLE {schema}.asset_tags_p{i:02d} PARTITION OF {schema}.asset_tags "
                    f"FOR VALUES WITH (MODULUS {ASSET_TAG_PARTITIONS}, REMAINDER {i})"
                )
        load_table(conn, f"{schema}.asset_tags", data)


def drop_layout(name: str, layout: str) -> None:
    dsn = f"postgresql://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {LAYOUTS[layout][0]} CASCADE")


def time_migration(name: str, assets: int, data: Path) -> None:
    """Time migration s001 (and its downgrade) on an archive of ``assets`` assets at the revision
    before it, loaded from its own COPY file; the database is dropped afterwards."""
    from indexer.migrate import downgrade_database

    mig = f"{name}_migration"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{mig}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{mig}"')
    url = URL.format(name=mig)
    try:
        upgrade_database(url, "k003")
        with session_scope(url) as s:
            tag_ids = db.ensure_vocabulary(s, MODEL, builtin_vocabulary())
        if not data.exists():
            step(f"score COPY file {data}", lambda: write_copy_file(data, assets, tag_ids))
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{mig}", autocommit=True) as c:
            c.execute(
                "INSERT INTO assets (sha256, status, model_name) SELECT "
                f"encode(sha256(i::text::bytea), 'hex'), 'done', '{MODEL}' "
                f"FROM generate_series(1, {assets}) AS i"
            )
            c.execute("SET maintenance_work_mem = '1GB'")
            c.execute("SET session_replication_role = replica")  # no per-row FK checks
            c.execute(f"COPY asset_tags FROM '{data}' WITH (FORMAT binary)")
            c.execute("SET session_replication_role = origin")
            c.execute("VACUUM ANALYZE asset_tags")
            rows = c.execute("SELECT count(*) FROM asset_tags").fetchone()[0]  # type: ignore[index]
        dispose_engines()
        up = step(f"upgrade s001, {rows} rows", lambda: _seconds(lambda: upgrade_database(url)))
        down = step("downgrade to k003", lambda: _seconds(lambda: downgrade_database(url, "k003")))
        rates = (
            f"upgrade {rows / up / 1e6:.2f} M rows/s, downgrade {rows / down / 1e6:.2f} M rows/s"
        )
        print(f"  {rates} (load average {os.getloadavg()[0]:.2f})")
    finally:
        dispose_engines()
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{mig}" WITH (FORCE)')


def _seconds(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def pick_tags(url: str) -> dict[str, str]:
    """Tags by frequency (from the statistics-free count of a 1% sample of assets)."""
    with get_engine(url).connect() as conn:
        total = conn.exec_driver_sql("SELECT count(*) FROM assets").scalar_one()
        rows = conn.exec_driver_sql(
            "SELECT t.english, count(*) FROM asset_tags a JOIN tags t ON t.id = a.tag_id "
            f"WHERE a.asset_id <= {total // 100} GROUP BY t.english ORDER BY count(*) DESC"
        ).all()
    sample = total // 100

    def near(fraction: float) -> str:
        return min(rows, key=lambda r: abs(r[1] / sample - fraction))[0]

    picked = {"common": rows[0][0], "second": rows[1][0], "mid": near(0.05),
              "mid2": near(0.03), "rare": near(0.002)}  # fmt: skip
    for key, tag in picked.items():
        count = next(c for t, c in rows if t == tag)
        print(f"  {key:7} {tag!r}: on {100 * count / sample:.1f}% of assets (1% sample)")
    return picked


def shapes(t: dict[str, str]) -> dict[str, dict[str, Any]]:
    return {
        "1 tag common, top 50": {"all_": [t["common"]]},
        "1 tag mid, top 50": {"all_": [t["mid"]]},
        "1 tag rare, top 50": {"all_": [t["rare"]]},
        "1 tag common, min_score 0.5": {"all_": [t["common"]], "min_score": 0.5},
        "1 tag common, page 10": {"all_": [t["common"]], "_pages": 10},
        "AND 2 (common+mid)": {"all_": [t["common"], t["mid"]]},
        "AND 3 (common+mid+mid2)": {"all_": [t["common"], t["mid"], t["mid2"]]},
        "AND 2, min_score 0.4": {"all_": [t["mid"], t["mid2"]], "min_score": 0.4},
        "OR 3 (mid|mid2|rare)": {"any_": [t["mid"], t["mid2"], t["rare"]]},
        "OR 3, page 5": {"any_": [t["mid"], t["mid2"], t["rare"]], "_pages": 5},
        "common AND NOT second": {"all_": [t["common"]], "none": [t["second"]]},
        "mid AND NOT common, min 0.3": {
            "all_": [t["mid"]],
            "none": [t["common"]],
            "min_score": 0.3,
        },  # fmt: skip
        "date order: mid, newest 50": {"all_": [t["mid"]], "order": "date"},
    }


def run_query(url: str, query: dict[str, Any]) -> int:
    args = {k: v for k, v in query.items() if not k.startswith("_")}
    cursor, hits = None, 0
    with session_scope(url) as s:
        for _ in range(query.get("_pages", 1)):
            page = db.search_by_tags(s, model_name=MODEL, limit=50, cursor=cursor, **args)
            hits, cursor = len(page.hits), page.next_cursor
            if cursor is None:
                break
    return hits


def other_shapes(url: str, assets: int, tag: str) -> dict[str, Callable[[int], int]]:
    """Per-asset read, delete of one asset, and a 20k-asset concept backfill of one tag; the
    writes are rolled back. Each takes a run number (to vary the asset)."""
    with session_scope(url) as s:
        tag_id = db.resolve_tags(s, MODEL, [tag])[tag][0].id
    engine = get_engine(url)

    def per_asset(i: int) -> int:
        with session_scope(url) as s:
            return len(db.get_asset_tags(s, 1 + (i * 7919) % assets, include_below_threshold=True))

    def delete_asset(i: int) -> int:
        with engine.connect() as conn:
            with conn.begin() as tx:
                # the assets row stays (its other references would dominate); the score rows go,
                # as ON DELETE CASCADE removes them
                n = conn.exec_driver_sql(
                    "DELETE FROM asset_tags WHERE asset_id = %(a)s",
                    {"a": 1 + (i * 104729) % assets},
                ).rowcount
                tx.rollback()
        return n

    def backfill(i: int) -> int:
        rng = np.random.default_rng(i)
        width = min(20_000, assets // 2)
        first = 1 + (i * width * 37) % (assets - width)
        ids = np.arange(first, first + width)
        with get_engine(url).connect() as conn, conn.begin() as tx:
            with sa.orm.Session(bind=conn) as s:
                n = db.write_tag_scores(s, tag_id, ids, rng.random(len(ids)), score_floor=0.2)
            tx.rollback()
        return n

    return {"per-asset read (all scores)": per_asset, "delete one asset's scores": delete_asset,
            "backfill 1 tag x 20k assets": backfill}  # fmt: skip


def timed(fn: Callable[[int], int], runs: int) -> tuple[float, float, int]:
    fn(10_000)  # warm the session
    samples, out = [], 0
    for i in range(runs):
        start = time.perf_counter()
        out = fn(i)
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return statistics.median(samples), samples[round(0.95 * (len(samples) - 1))], out


def explain(url: str, query: dict[str, Any]) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of the statements search_by_tags sends for ``query`` that read
    asset_tags: the ranked (or date-ordered) page and the hits' matched tags (last page's)."""
    captured: dict[str, tuple[str, Any]] = {}
    engine = get_engine(url)

    def grab(conn, cursor, statement, parameters, context, executemany) -> None:  # noqa: ANN001
        if "FROM unnest" in statement:
            captured["matched tags"] = (statement, parameters)
        elif "FROM asset_tags AS d0" in statement or (
            "FROM assets" in statement and "EXISTS" in statement
        ):
            captured["page"] = (statement, parameters)

    sa.event.listen(engine, "before_cursor_execute", grab)
    try:
        run_query(url, query)
    finally:
        sa.event.remove(engine, "before_cursor_execute", grab)
    out = []
    with engine.connect() as conn:
        if query.get("order") == "date":  # as search_by_tags does for the page walk
            conn.exec_driver_sql("SET max_parallel_workers_per_gather = 0")
        for label, (statement, parameters) in captured.items():
            rows = conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters)
            out.append(f"[{label}]\n" + "\n".join(r[0] for r in rows))
    return "\n".join(out)


def sizes(name: str, tables: dict[str, str]) -> list[tuple[str, float]]:
    """GiB of each layout's heap and heap + indexes (partitions summed), and the database."""
    dsn = f"postgresql://postgres@127.0.0.1:5432/{name}"
    out = []
    with psycopg.connect(dsn) as conn:
        for layout, table in tables.items():
            heap, total = conn.execute(
                "SELECT coalesce(sum(pg_relation_size(relid)), pg_relation_size(%(t)s::regclass)), "
                "coalesce(sum(pg_total_relation_size(relid)), "
                "pg_total_relation_size(%(t)s::regclass)) FROM pg_partition_tree(%(t)s::regclass)",
                {"t": table},
            ).fetchone()  # type: ignore[misc]
            out += [(f"{layout} heap", heap / 2**30), (f"{layout} heap+indexes", total / 2**30)]
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        out.append(("database", size[0] / 2**30))  # type: ignore[index]
    return out


def measure(name: str, runs: int, explain_to: Path | None) -> None:
    url = URL.format(name=name)
    urls = {"partitioned": url}
    with get_engine(url).connect() as conn:
        schemas = {r[0] for r in conn.exec_driver_sql("SELECT nspname FROM pg_namespace")}
    for layout, (schema, _) in LAYOUTS.items():
        if schema in schemas:
            urls[layout] = url + SCHEMA_PATH.format(schema=schema)
    with get_engine(url).connect() as conn:
        assets = conn.exec_driver_sql("SELECT count(*) FROM assets").scalar_one()
        rows = conn.exec_driver_sql(
            "SELECT sum(reltuples)::bigint FROM pg_class WHERE relname LIKE 'asset_tags_p%%' "
            "AND relkind = 'r' AND relnamespace = 'public'::regnamespace"
        ).scalar_one()
    print(f"database {name}: {assets} assets, ~{rows} score rows ({rows / assets:.1f}/asset)")
    tables = {"partitioned": "public.asset_tags"} | {
        k: f"{LAYOUTS[k][0]}.asset_tags" for k in urls if k in LAYOUTS
    }
    for label, gib in sizes(name, tables):
        print(f"  {label:18} {gib:7.2f} GiB")
    tags = pick_tags(url)
    qs = shapes(tags)
    results: dict[str, dict[str, tuple[float, float, int]]] = {k: {} for k in urls}
    for layout, u in urls.items():
        for label, q in qs.items():
            results[layout][label] = timed(lambda _i, u=u, q=q: run_query(u, q), runs)
        for label, fn in other_shapes(u, assets, tags["mid"]).items():
            results[layout][label] = timed(fn, max(5, runs // 3))
    print(f"\nload average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} "
          f"{os.getloadavg()[2]:.2f} (2 cores); runs {runs} per shape")  # fmt: skip
    ref = "plain" if "plain" in urls else "partitioned"
    others = [k for k in urls if k != ref]
    head = f"{'shape':30} {'rows':>5}"
    for layout in urls:
        head += f" | {layout + ' p50':>16} {'p95':>8}"
    for layout in others:
        head += f" | {layout[:4]}/{ref[:4]} p50  p95"
    print(head)
    for label in results[ref]:
        line = f"{label:30} {results[ref][label][2]:5d}"
        for layout in urls:
            p50, p95, _ = results[layout][label]
            line += f" | {p50:14.2f}ms {p95:6.2f}ms"
        for layout in others:
            r50 = results[layout][label][0] / results[ref][label][0]
            r95 = results[layout][label][1] / results[ref][label][1]
            line += f" | {r50:9.2f}x {r95:5.2f}x"
        print(line)
    if explain_to is not None:
        with explain_to.open("w") as f:
            for label, q in qs.items():
                for layout, u in urls.items():
                    f.write(f"--- {label} [{layout}]\n{explain(u, q)}\n\n")
        print(f"plans written to {explain_to}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default="ramdex_scale", help="database name (own, reused)")
    parser.add_argument("--assets", type=int, default=2_000_000)
    parser.add_argument("--data", type=Path, default=Path("/tmp/ramdex_scale_scores.copy"))
    parser.add_argument("--build", action="store_true", help="(re)create and load the database")
    parser.add_argument("--runs", type=int, default=30, help="timed runs per query shape")
    parser.add_argument("--explain", type=Path, help="write both layouts' plans to this file")
    parser.add_argument("--no-measure", action="store_true")
    parser.add_argument("--drop", action="store_true", help="drop the database and data file")
    parser.add_argument(
        "--time-migration",
        type=int,
        metavar="ASSETS",
        help="time migration s001 up and down on an archive of ASSETS assets",
    )
    parser.add_argument("--add-layout", choices=sorted(LAYOUTS), help="load another layout")
    parser.add_argument("--drop-layout", choices=sorted(LAYOUTS), help="drop a layout's schema")
    args = parser.parse_args()
    try:
        if args.drop:
            with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{args.db}" WITH (FORCE)')
            args.data.unlink(missing_ok=True)
            return
        if args.time_migration:
            data = args.data.with_suffix(f".{args.time_migration}.copy")
            time_migration(args.db, args.time_migration, data)
            data.unlink(missing_ok=True)
            return
        if args.build:
            step("build", lambda: build(args.db, args.assets, args.data))
        if args.drop_layout:
            drop_layout(args.db, args.drop_layout)
        if args.add_layout:
            step(
                f"layout {args.add_layout}", lambda: add_layout(args.db, args.add_layout, args.data)
            )
        if not args.no_measure:
            measure(args.db, args.runs, args.explain)
    finally:
        dispose_engines()


if __name__ == "__main__":
    main()
