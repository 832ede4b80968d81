"""Manifest registration (``ramdex ingest --manifest``): rows staged per second and peak memory.

For each ``--sizes`` (default 100k and 1M rows) a child process writes a CSV manifest (url, id
and one metadata column), stages it with :func:`indexer.ingest.manifest.stage_manifest` into a
fresh PostgreSQL database (``COPY`` in batches) and reports its rate and peak RSS (memory flat
in the file size means the same peak for both sizes). Then, side by side on ``--sample`` rows,
the obvious baseline: row-by-row ORM inserts (``session.add`` + flush per row, one commit), and
the same sample through the batched path; the ratio is batched / baseline. Optionally the same on
SQLite (``--sqlite``). Prints the load average beside the figures.

Run under the bench lock: ``flock /tmp/ramdex-bench.lock .venv/bin/python
benchmarks/bench_manifest.py``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_manifest(path: Path, rows: int, offset: int = 0) -> None:
    """A CSV manifest of ``rows`` URLs with an id and a caption."""
    with open(path, "w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["url", "id", "caption"])
        for i in range(offset, offset + rows):
            out.writerow([f"https://images.example.com/{i % 997}/{i:09d}.jpg", f"x{i}", f"c {i}"])


def _settings(url: str, home: Path):  # noqa: ANN202 - a Settings
    from indexer.settings import Settings

    return Settings(home=home, database={"url": url})


def child(url: str, rows: int, batch: int) -> dict:
    """Stage one manifest of ``rows`` rows; rate and peak RSS of this process."""
    from indexer.ingest.manifest import stage_manifest
    from indexer.stores import ensure_schema

    tmp = Path(tempfile.mkdtemp(prefix="ramdex-bench-manifest-"))
    path = tmp / "m.csv"
    write_manifest(path, rows)
    ensure_schema(url)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    result = stage_manifest(_settings(url, tmp / "home"), path, batch=batch)
    elapsed = time.perf_counter() - started
    return {
        "rows": rows,
        "staged": result.rows_staged_now,
        "seconds": round(elapsed, 2),
        "rate": round(rows / elapsed),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_before_mb": round(rss_before / 1024, 1),
    }


def baseline(url: str, rows: int) -> dict:
    """Row-by-row ORM inserts vs the batched path on the same ``rows`` rows."""
    from indexer.db.manifests import Manifest, ManifestRow
    from indexer.db.session import session_scope
    from indexer.ingest.manifest import read_manifest, stage_manifest
    from indexer.stores import ensure_schema

    tmp = Path(tempfile.mkdtemp(prefix="ramdex-bench-manifest-"))
    ensure_schema(url)
    path = tmp / "base.csv"
    write_manifest(path, rows, offset=10**8)
    started = time.perf_counter()
    with session_scope(url) as session:
        m = Manifest(key="baseline", path=str(path), format="csv")
        session.add(m)
        session.flush()
        for _, records, _ in read_manifest(path, 1000):
            for r in records:
                session.add(
                    ManifestRow(
                        manifest_id=m.id,
                        row_no=r.row_no,
                        uri=r.uri,
                        external_id=r.external_id,
                        meta=r.meta,
                    )
                )
                session.flush()
    row_s = time.perf_counter() - started
    path2 = tmp / "batched.csv"
    write_manifest(path2, rows, offset=2 * 10**8)
    started = time.perf_counter()
    stage_manifest(_settings(url, tmp / "home"), path2)
    batch_s = time.perf_counter() - started
    return {
        "rows": rows,
        "row_by_row_rate": round(rows / row_s),
        "batched_rate": round(rows / batch_s),
        "ratio": round(row_s / batch_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--sample", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--sqlite", action="store_true", help="also measure SQLite")
    parser.add_argument(
        "--child", nargs=3, metavar=("URL", "ROWS", "BATCH"), help=argparse.SUPPRESS
    )
    parser.add_argument("--baseline", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), int(args.child[2]))))
        return
    if args.baseline:
        print(json.dumps(baseline(args.baseline, args.sample)))
        return
    from tests.db_fixtures import fresh_postgres_database

    def run(*extra: str) -> dict:
        out = subprocess.run(
            [sys.executable, __file__, *extra], capture_output=True, text=True, check=True
        )
        return json.loads(out.stdout.strip().splitlines()[-1])

    print(f"load average before: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    backends = ["postgresql"] + (["sqlite"] if args.sqlite else [])
    for backend in backends:
        for rows in [int(s) for s in args.sizes.split(",")]:
            if backend == "postgresql":
                with fresh_postgres_database("ramdex_bench_manifest") as url:
                    res = run("--child", url, str(rows), str(args.batch))
            else:
                db = Path(tempfile.mkdtemp()) / "bench.sqlite3"
                res = run("--child", f"sqlite:///{db}", str(rows), str(args.batch))
            print(
                f"{backend:<10} {rows:>9,} rows: {res['rate']:>8,} rows/s ({res['seconds']} s), "
                f"peak RSS {res['peak_rss_mb']} MB (before staging {res['rss_before_mb']} MB)"
                f"  load {os.getloadavg()[0]:.2f}"
            )
        if backend == "postgresql":
            with fresh_postgres_database("ramdex_bench_manifest") as url:
                res = run("--baseline", url)
        else:
            db = Path(tempfile.mkdtemp()) / "base.sqlite3"
            res = run("--baseline", f"sqlite:///{db}")
        print(
            f"{backend:<10} {res['rows']:>9,} rows side by side: row-by-row ORM "
            f"{res['row_by_row_rate']:,}/s, batched {res['batched_rate']:,}/s: "
            f"{res['ratio']}x  load {os.getloadavg()[0]:.2f}"
        )
    print(f"load average after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
