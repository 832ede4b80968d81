"""Scan rate of an S3 source: listing + diff of a prefix of N objects, and a full re-scan of an
unchanged prefix, against the obvious baseline (a HEAD request per known object).

A moto S3 server started here on loopback holds N small objects under one prefix. Timed, in one
process:

1. **listing + diff** of the whole prefix against an empty table (what the first scan does
   before reading anything): ``list_objects_v2`` pages of 1,000 and the in-memory diff;
2. **re-scan, unchanged**: :func:`indexer.sources.scan.scan_source` end to end (its lease,
   listing, the diff against N ``source_objects`` rows, the source's bookkeeping) when every
   object is unchanged: nothing is read;
3. **baseline**: one ``HEAD`` per object (ETag compared with the table), sequential and with 8
   threads, on a sample of the objects (the rate is per object).

moto is a Python server sharing this machine's cores: its speed bounds both sides, so the
ratio (requests saved) matters more than the absolute rates.

    flock -w 60 /tmp/ramdex-bench.lock .venv/bin/python benchmarks/bench_s3_scan.py --n 10000
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.s3_support: the server

from indexer.db.assets import Asset
from indexer.db.collection_repo import ensure_collection
from indexer.db.session import session_scope
from indexer.db.source_repo import create_source, known_objects, record_object
from indexer.migrate import upgrade_database
from indexer.settings import Settings
from indexer.sources import s3
from indexer.sources.diff import diff_listing
from indexer.sources.globs import KeyFilter
from indexer.sources.scan import scan_source
from tests.s3_support import CREDS, s3_client, start_server, stop_server

BUCKET = "bench"
PREFIX = "photos"


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} {five:.2f} {fifteen:.2f}"


def _fill(endpoint: str, n: int) -> None:
    client = s3_client(endpoint)
    client.create_bucket(Bucket=BUCKET)

    def put(i: int) -> None:
        client.put_object(
            Bucket=BUCKET, Key=f"{PREFIX}/{i // 1000:03d}/img_{i:06d}.jpg", Body=b"%d" % i
        )

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(n)))


def _register_all(settings: Settings, source_id: int) -> int:
    """Rows as a completed first scan leaves them (one asset per object)."""
    listed = list(s3.list_objects(settings, BUCKET, f"{PREFIX}/", KeyFilter()))
    with session_scope(settings.database_url) as session:
        session.execute(
            sa.insert(Asset),
            [
                {"sha256": hashlib.sha256(e.key.encode()).hexdigest(), "status": "done"}
                for e in listed
            ],
        )
        ids = dict(session.execute(sa.select(Asset.sha256, Asset.id)).all())
        for e in listed:
            record_object(
                session,
                source_id,
                e.key,
                etag=e.etag,
                size=e.size,
                mtime=e.mtime,
                asset_id=ids[hashlib.sha256(e.key.encode()).hexdigest()],
            )
    return len(listed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="objects under the prefix")
    parser.add_argument("--head-sample", type=int, default=1000, help="objects HEADed")
    parser.add_argument("--db", default="", help="database URL (default: a SQLite file)")
    args = parser.parse_args()
    os.environ.update(CREDS)
    proc, endpoint = start_server()
    try:
        t0 = time.perf_counter()
        _fill(endpoint, args.n)
        print(f"filled {args.n} objects in {time.perf_counter() - t0:.1f} s ({_load()})")
        home = Path(tempfile.mkdtemp(prefix="bench-s3-scan-"))
        url = args.db or f"sqlite:///{home / 'ramdex.sqlite3'}"
        upgrade_database(url)
        settings = Settings(home=home, database={"url": url}, sources={"s3_endpoint_url": endpoint})
        with session_scope(url) as session:
            coll = ensure_collection(session, "bench").id
            sid = create_source(
                session, kind="s3", uri=f"s3://{BUCKET}/{PREFIX}", collection_id=coll
            ).id

        # 1. Listing + diff against an empty table.
        t0 = time.perf_counter()
        listed = list(s3.list_objects(settings, BUCKET, f"{PREFIX}/", KeyFilter()))
        with session_scope(url) as session:
            diff = diff_listing(listed, known_objects(session, sid))
        first = time.perf_counter() - t0
        assert len(diff.new) == args.n
        print(
            f"listing + diff, {args.n} new objects: {first:.2f} s = "
            f"{args.n / first:,.0f} objects/s ({_load()})"
        )

        # 2. Full re-scan of the unchanged prefix, through scan_source.
        _register_all(settings, sid)
        t0 = time.perf_counter()
        report = scan_source(settings, sid)
        rescan = time.perf_counter() - t0
        assert report.unchanged == args.n and report.job_id is None, report
        print(
            f"re-scan, {args.n} unchanged objects (scan_source): {rescan:.2f} s = "
            f"{args.n / rescan:,.0f} objects/s, 0 objects read, {-(-args.n // 1000)} list "
            f"requests ({_load()})"
        )

        # 3. Baseline: HEAD per object, compared with the table.
        with session_scope(url) as session:
            known = known_objects(session, sid)
        sample = sorted(known)[: args.head_sample]
        client = s3.s3_client(settings)

        def head(key: str) -> bool:
            reply = client.head_object(Bucket=BUCKET, Key=f"{PREFIX}/{key}")
            return reply["ETag"].strip('"') == known[key].etag

        t0 = time.perf_counter()
        assert all(head(k) for k in sample)
        seq = time.perf_counter() - t0
        with ThreadPoolExecutor(8) as pool:
            t0 = time.perf_counter()
            assert all(pool.map(head, sample))
            par = time.perf_counter() - t0
        seq_rate, par_rate = len(sample) / seq, len(sample) / par
        rate = args.n / rescan
        print(
            f"baseline HEAD per object ({len(sample)} sampled): sequential {seq_rate:,.0f} "
            f"objects/s, 8 threads {par_rate:,.0f} objects/s ({_load()})"
        )
        print(
            f"re-scan vs HEAD per object: {rate / seq_rate:.1f}x sequential, "
            f"{rate / par_rate:.1f}x 8 threads; requests {-(-args.n // 1000)} vs {args.n}"
        )
    finally:
        stop_server(proc)


if __name__ == "__main__":
    main()
