"""Token store on object storage against the local store, side by side in one process.

A store of N synthetic float16 assets (T = 145 x 512, 148,480 bytes each) is written both to a
local :class:`indexer.token_store.TokenStore` and to an :class:`indexer.token_store_s3.S3TokenStore`
on a moto S3 server started here on loopback. Timed: ``get`` of a stage-2 shortlist (random ids,
put in storage order, as the searcher does) with a cold cache, the same with a warm cache, the same
with no gap merging (one GET per run of adjacent cache blocks), and a full ``iter_chunks`` stream.

moto is a Python server on this machine: its throughput bounds these figures, so they measure the
client's overheads (requests made, bytes moved, cache), not what S3 or MinIO would deliver.

Run under the benchmark lock::

    flock /tmp/ramdex-bench.lock .venv/bin/python benchmarks/bench_token_store_s3.py --n 5000
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from indexer.token_store import TokenStore
from indexer.token_store_s3 import S3Options, S3TokenStore

T, C = 145, 512


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} {five:.2f} {fifteen:.2f}"


def _start_moto() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(300):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto server did not start")


def _timed(fn):  # noqa: ANN001, ANN202
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="assets in the store")
    parser.add_argument("--shortlist", type=int, default=2000, help="ids per get")
    parser.add_argument("--batch", type=int, default=250, help="assets per add() (a segment)")
    args = parser.parse_args()
    for key, value in (("AWS_ACCESS_KEY_ID", "bench"), ("AWS_SECRET_ACCESS_KEY", "bench")):
        os.environ.setdefault(key, value)
    proc, endpoint = _start_moto()
    try:
        import boto3

        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
            Bucket="bench"
        )
        with tempfile.TemporaryDirectory() as tmp_dir:
            run(Path(tmp_dir), endpoint, args)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def run(tmp: Path, endpoint: str, args: argparse.Namespace) -> None:
    def opts(cache: str, **kw) -> S3Options:  # noqa: ANN003
        return S3Options(endpoint_url=endpoint, region="us-east-1", cache_dir=tmp / cache, **kw)

    s3 = S3TokenStore("s3://bench/tokens", tokens=T, dim=C, options=opts("writer", cache_bytes=0))
    local = TokenStore(tmp / "local", tokens=T, dim=C)
    rng = np.random.default_rng(0)
    t_s3 = t_local = 0.0
    for start in range(0, args.n, args.batch):
        ids = np.arange(start, min(start + args.batch, args.n), dtype=np.int64)
        e = rng.standard_normal((len(ids), T, C), dtype=np.float32).astype(np.float16)
        t_s3 += _timed(lambda ids=ids, e=e: s3.add(ids, e))[1]
        t_local += _timed(lambda ids=ids, e=e: local.add(ids, e))[1]
    rec = local.bytes_per_asset
    total_mb = args.n * rec / 1e6
    print(f"store: {args.n} float16 assets, {total_mb:.0f} MB, {len(s3.segments())} segments")
    print(
        f"write: local {total_mb / t_local:7.1f} MB/s   s3 {total_mb / t_s3:7.1f} MB/s   "
        f"ratio s3/local time {t_s3 / t_local:5.1f}x   {_load()}"
    )

    shortlist = np.random.default_rng(1).choice(args.n, args.shortlist, replace=False)
    shortlist = shortlist[local.storage_order(shortlist)]
    mb = args.shortlist * rec / 1e6
    want, t_loc = _timed(lambda: local.get(shortlist, dtype=np.float16))
    print(
        f"get {args.shortlist} ids ({mb:.0f} MB): local (page cache) {t_loc:6.2f} s "
        f"{mb / t_loc:7.1f} MB/s   {_load()}"
    )
    for label, store in (
        ("s3 cold cache   ", S3TokenStore(s3.url, read_only=True, options=opts("c1"))),
        (
            "s3 no gap merge ",
            S3TokenStore(
                s3.url, read_only=True, options=opts("c2", gap_bytes=0, request_bytes=rec)
            ),
        ),
    ):
        got, t = _timed(lambda store=store: store.get(shortlist, dtype=np.float16))
        assert np.array_equal(got, want)
        print(
            f"get {args.shortlist} ids: {label} {t:6.2f} s {mb / t:7.1f} MB/s  "
            f"{store.requests:5d} GETs {store.bytes_fetched / 1e6:6.0f} MB fetched  "
            f"ratio s3/local {t / t_loc:5.1f}x   {_load()}"
        )
        if label.startswith("s3 cold"):
            before = store.requests
            got, t = _timed(lambda store=store: store.get(shortlist, dtype=np.float16))
            assert np.array_equal(got, want)
            print(
                f"get {args.shortlist} ids: s3 warm cache    {t:6.2f} s {mb / t:7.1f} MB/s  "
                f"{store.requests - before:5d} GETs   cache {store.cache.nbytes() / 1e6:6.0f} MB"
                f"  ratio s3/local {t / t_loc:5.1f}x   {_load()}"
            )

    n_loc, t_loc = _timed(lambda: sum(len(i) for i, _ in local.iter_chunks(1024, np.float16)))
    reader = S3TokenStore(s3.url, read_only=True, options=opts("c3"))
    n_s3, t = _timed(lambda: sum(len(i) for i, _ in reader.iter_chunks(1024, np.float16)))
    assert n_loc == n_s3 == args.n
    print(
        f"iter_chunks full stream ({total_mb:.0f} MB): local {total_mb / t_loc:7.1f} MB/s   "
        f"s3 {total_mb / t:7.1f} MB/s ({reader.requests} GETs)   ratio s3/local time "
        f"{t / t_loc:5.1f}x   {_load()}"
    )


if __name__ == "__main__":
    main()
