"""Ingest pipeline throughput vs the bare model, fast-decode speed and agreement, storage per asset.

What it measures, on the same generated images (a few large photo-like JPEGs and many small):

1. **Bare model**: ``TaggingEngine.tag_files`` (decode + pre-process in threads, overlapped with
   the forward passes): the ceiling for the pipeline.
2. **Pipeline**: ``indexer.ingest.pipeline.ingest`` in the embedded mode (walk, hash + copy into
   the media store, dedup, decode, thumbnail, model, one transaction per batch, token store,
   FAISS sync) on SQLite and on PostgreSQL. Overhead = pipeline time / bare time - 1.
3. **Decoding** of one large JPEG, exact vs fast (JPEG draft, reduced DCT), single thread.
4. **Fast-decode agreement** with exact decoding: identical tag decisions, mean and max
   probability differences, and the pre-processed input difference at 384 px.
5. **Storage**: database bytes per asset (SQLite file, PostgreSQL database size, beyond an empty
   migrated schema), token store bytes per asset, thumbnail bytes per asset.

    python benchmarks/bench_ingest.py                    # tiny golden model, CPU
    python benchmarks/bench_ingest.py --large 4 --small 32 --repeats 2 --json out.json
    python benchmarks/bench_ingest.py --checkpoint model.safetensors   # a real model

Not a test: numbers depend on the machine and its load. Images are cached in --images.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

# The thread policy of `ramdex ingest` (indexer/threads.py), set before torch loads.
from indexer.threads import apply_policy  # noqa: E402

apply_policy("ingest")

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from indexer.ingest.pipeline import ingest  # noqa: E402
from indexer.ingest.process import AssetProcessor  # noqa: E402
from indexer.media import decode_image  # noqa: E402
from indexer.settings import Settings  # noqa: E402
from indexer.stores import ensure_schema, token_store_path  # noqa: E402
from ram_pp.factory import LoadedModel, load_model  # noqa: E402
from ram_pp.inference import TaggingEngine  # noqa: E402
from ram_pp.preprocess import DecodeOptions, Preprocessor  # noqa: E402
from tests.ingest_fixtures import encode, photo_like  # noqa: E402

GOLDEN = REPO / "tests" / "fixtures" / "golden_tiny" / "checkpoint.pth"
ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"


def make_images(folder: Path, large: int, small: int) -> list[Path]:
    """Large 4000x3000 and small 800x600 photo-like JPEGs (cached between runs)."""
    folder.mkdir(parents=True, exist_ok=True)
    wanted = [(f"large_{i:03d}.jpg", (4000, 3000), 1000 + i) for i in range(large)]
    wanted += [(f"small_{i:03d}.jpg", (800, 600), 2000 + i) for i in range(small)]
    paths = []
    for name, size, seed in wanted:
        path = folder / name
        if not path.exists():
            path.write_bytes(encode(photo_like(*size, seed=seed), "JPEG", quality=90))
        paths.append(path)
    return paths


def bare_run(loaded: LoadedModel, files: list[Path], workers: int, draft: int | None, batch: int):
    engine = TaggingEngine(
        loaded,
        device="cpu",
        batch_size=batch,
        decode=DecodeOptions(draft_size=draft),
        decode_workers=workers,
    )
    start = time.perf_counter()
    results = list(engine.tag_files(files))
    return time.perf_counter() - start, results


def _pg_create() -> str:
    import psycopg

    name = f"ramdex_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def _pg_drop(url: str) -> None:
    import psycopg

    from indexer.db.session import dispose_engines

    dispose_engines()
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


def _db_bytes(url: str) -> int:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "sqlite":
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
                path = Path(url.split("///", 1)[1])
                return path.stat().st_size
            return int(conn.exec_driver_sql("SELECT pg_database_size(current_database())").scalar())
    finally:
        engine.dispose()


def _pg_tables(url: str) -> dict[str, int]:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT relname, pg_total_relation_size(relid) FROM pg_statio_user_tables"
            ).all()
            tag_rows = conn.exec_driver_sql("SELECT count(*) FROM asset_tags").scalar()
        return {**{r[0]: int(r[1]) for r in rows}, "_asset_tag_rows": int(tag_rows)}
    finally:
        engine.dispose()


def _folder_bytes(path: Path, pattern: str = "*") -> int:
    return sum(p.stat().st_size for p in path.rglob(pattern) if p.is_file()) if path.exists() else 0


def pipeline_run(
    loaded: LoadedModel,
    folder: Path,
    backend: str,
    fast: bool,
    workers: int,
    batch: int,
    scratch: Path,
) -> dict[str, Any]:
    """One embedded ingest of ``folder`` into a fresh home and database."""
    home = scratch / f"home-{uuid.uuid4().hex[:8]}"
    url = f"sqlite:///{home / 'ramdex.sqlite3'}" if backend == "sqlite" else _pg_create()
    try:
        settings = Settings(
            home=home,
            database={"url": url},
            broker={"url": ""},
            model={"device": "cpu", "batch_size": batch, "fast_decode": fast},
            ingest={"decode_workers": workers},
        )
        ensure_schema(url)  # once per database in real life: not part of the ingest rate
        empty = _db_bytes(url)
        processor = AssetProcessor(settings, loaded=loaded, model_id="bench@tiny")
        start = time.perf_counter()
        summary = ingest([folder], settings=settings, processor=processor, progress=False)
        seconds = time.perf_counter() - start
        n = summary.done
        if summary.failed or n == 0:
            raise RuntimeError(f"benchmark ingest failed: {summary.to_dict()}")
        out: dict[str, Any] = {
            "seconds": seconds,
            "assets": n,
            "db_bytes_per_asset": (_db_bytes(url) - empty) / n,
            "token_bytes_per_asset": _folder_bytes(
                token_store_path(settings, "bench@tiny"), "*.bin"
            )
            / n,
            "thumb_bytes_per_asset": _folder_bytes(settings.media_dir / "thumbs") / n,
        }
        if backend == "postgresql":
            tables = _pg_tables(url)
            out["pg_tables_bytes"] = {k: v for k, v in tables.items() if not k.startswith("_")}
            out["asset_tag_rows_per_asset"] = tables["_asset_tag_rows"] / n
        return out
    finally:
        if backend == "postgresql":
            _pg_drop(url)
        shutil.rmtree(home, ignore_errors=True)


def storage_run(loaded: LoadedModel, backend: str, count: int, scratch: Path) -> dict[str, Any]:
    """Database bytes per asset and per stored score, from ``count`` small images.

    Every score is stored (floor 0) so the per-row cost is measured on many rows; bytes per
    asset for a real model are then ``fixed + rows x per_row`` with its own number of rows
    above the floor (0.2 by default).
    """
    import sqlalchemy as sa

    folder = scratch / "storage-images"
    if not folder.exists():
        folder.mkdir(parents=True)
        for i in range(count):
            (folder / f"s_{i:05d}.jpg").write_bytes(
                encode(photo_like(160, 120, seed=5000 + i), "JPEG", quality=85)
            )
    home = scratch / f"storage-{uuid.uuid4().hex[:8]}"
    url = f"sqlite:///{home / 'ramdex.sqlite3'}" if backend == "sqlite" else _pg_create()
    try:
        settings = Settings(
            home=home,
            database={"url": url},
            broker={"url": ""},
            model={"device": "cpu"},
            index={"score_floor": 0.0},
        )
        ensure_schema(url)
        empty = _db_bytes(url)
        processor = AssetProcessor(settings, loaded=loaded, model_id="bench@tiny")
        summary = ingest([folder], settings=settings, processor=processor, progress=False)
        n = summary.done
        total = _db_bytes(url) - empty
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            rows = int(conn.exec_driver_sql("SELECT count(*) FROM asset_tags").scalar())
            if backend == "postgresql":
                tag_bytes = int(
                    conn.exec_driver_sql("SELECT pg_total_relation_size('asset_tags')").scalar()
                )
            else:
                try:
                    tag_bytes = int(
                        conn.exec_driver_sql(
                            "SELECT sum(pgsize) FROM dbstat WHERE name = 'asset_tags' "
                            "OR name LIKE '%asset_tags%'"
                        ).scalar()
                    )
                except sa.exc.OperationalError:  # SQLite built without dbstat
                    tag_bytes = 0
        engine.dispose()
        per_row = tag_bytes / rows if rows and tag_bytes else float("nan")
        fixed = (total - tag_bytes) / n if tag_bytes else float("nan")
        return {
            "assets": n,
            "db_bytes_per_asset_all_scores": total / n,
            "score_rows_per_asset": rows / n,
            "bytes_per_score_row": per_row,
            "fixed_bytes_per_asset": fixed,
        }
    finally:
        if backend == "postgresql":
            _pg_drop(url)
        shutil.rmtree(home, ignore_errors=True)


def decode_timing(path: Path, image_size: int, draft: int, repeats: int) -> dict[str, float]:
    """Single-thread ms to decode one large JPEG and pre-process it, exact vs draft."""
    prep = Preprocessor(image_size)
    out = {}
    for label, size in (("exact", None), ("fast", draft)):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            decoded = decode_image(path, draft_size=size)
            prep(decoded.image)
            times.append(time.perf_counter() - start)
        out[f"{label}_ms"] = 1000 * min(times)  # least disturbed by other load
    out["speedup"] = out["exact_ms"] / out["fast_ms"]
    return out


def agreement(loaded: LoadedModel, exact: list, fast: list) -> dict[str, float]:
    """Tag decisions and probabilities of fast-decoded vs exactly decoded images."""
    thresholds = loaded.vocabulary.thresholds
    pe = np.stack([r.probabilities for r in exact])
    pf = np.stack([r.probabilities for r in fast])
    de, df = pe > thresholds, pf > thresholds
    same_sets = float(np.mean([(a == b).all() for a, b in zip(de, df, strict=True)]))
    return {
        "decision_agreement": float((de == df).mean()),
        "identical_tag_sets": same_sets,
        "mean_abs_prob_diff": float(np.abs(pe - pf).mean()),
        "max_abs_prob_diff": float(np.abs(pe - pf).max()),
    }


def input_difference(files: list[Path], size: int = 384) -> float:
    """Mean |exact - fast| of the normalised model input at ``size`` px (model-independent)."""
    prep = Preprocessor(size)
    diffs = []
    for path in files:
        exact = prep(decode_image(path).image)
        fast = prep(decode_image(path, draft_size=max(size, 320)).image)
        diffs.append(float((exact - fast).abs().mean()))
    return float(np.mean(diffs))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--large", type=int, default=6, help="4000x3000 JPEGs")
    parser.add_argument("--small", type=int, default=42, help="800x600 JPEGs")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement (median)")
    parser.add_argument("--batch", type=int, default=8, help="images per forward pass")
    parser.add_argument("--workers", type=int, default=2, help="decoding threads")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--checkpoint", type=Path, default=GOLDEN, help="model checkpoint")
    parser.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL run")
    parser.add_argument(
        "--images", type=Path, default=Path(tempfile.gettempdir()) / "ramdex-bench-images"
    )
    parser.add_argument("--storage-assets", type=int, default=300, help="assets for storage")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    loaded = load_model(args.checkpoint)
    image_size = loaded.config.vision.image_size
    draft = max(image_size, Settings().ingest.thumbnail_size)
    files = make_images(args.images, args.large, args.small)
    n = len(files)
    scratch = Path(tempfile.mkdtemp(prefix="ramdex-bench-"))
    backends = ["sqlite"] + ([] if args.no_postgres else ["postgresql"])
    print(
        f"{n} images ({args.large} x 4000x3000, {args.small} x 800x600), model "
        f"{args.checkpoint.name} ({image_size} px, {len(loaded.vocabulary)} tags), batch "
        f"{args.batch}, {args.workers} decode threads, torch threads {torch.get_num_threads()}"
    )
    bare_run(loaded, files[-8:], args.workers, None, args.batch)  # warm-up

    times: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    extra: dict[str, dict[str, Any]] = {}
    results: dict[str, list] = {}
    clock = [time.process_time()]

    def record(key: str, seconds: float) -> None:
        # CPU seconds of this process (all threads) since the previous record: less sensitive
        # than wall time to other load on a shared machine.
        now = time.process_time()
        cpu.setdefault(key, []).append(now - clock[0])
        clock[0] = now
        times.setdefault(key, []).append(seconds)

    try:
        for _ in range(args.repeats):  # interleaved, so drift in machine load hits all alike
            for fast in (False, True):
                mode = "fast" if fast else "exact"
                clock[0] = time.process_time()
                seconds, res = bare_run(
                    loaded, files, args.workers, draft if fast else None, args.batch
                )
                record(f"bare/{mode}", seconds)
                results[mode] = res
                for backend in backends:
                    clock[0] = time.process_time()
                    run = pipeline_run(
                        loaded, args.images, backend, fast, args.workers, args.batch, scratch
                    )
                    record(f"pipeline/{backend}/{mode}", run.pop("seconds"))
                    extra[f"{backend}/{mode}"] = run
            clock[0] = time.process_time()
            seconds, _ = bare_run(loaded, files, 0, None, args.batch)
            record("bare/exact/serial-decode", seconds)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    scratch_storage = Path(tempfile.mkdtemp(prefix="ramdex-bench-storage-"))

    report: dict[str, Any] = {"images": n, "large": args.large, "small": args.small}
    rates = {key: n / statistics.median(values) for key, values in times.items()}
    report["assets_per_s"] = rates
    overhead = {}
    for key, rate in rates.items():
        if key.startswith("pipeline/"):
            mode = key.rsplit("/", 1)[1]
            overhead[key] = 100.0 * (rates[f"bare/{mode}"] / rate - 1.0)
    report["pipeline_overhead_pct"] = overhead
    cpu_ms = {key: 1000 * statistics.median(values) / n for key, values in cpu.items()}
    report["cpu_ms_per_asset"] = cpu_ms
    cpu_overhead = {
        key: 100.0 * (ms / cpu_ms[f"bare/{key.rsplit('/', 1)[1]}"] - 1.0)
        for key, ms in cpu_ms.items()
        if key.startswith("pipeline/")
    }
    report["pipeline_cpu_overhead_pct"] = cpu_overhead
    report["decode_one_large_jpeg"] = (
        decode_timing(files[0], image_size, draft, 5) if args.large else {}
    )
    report["fast_decode_agreement"] = agreement(loaded, results["exact"], results["fast"])
    report["fast_decode_input_diff_384px"] = input_difference(
        files[: max(1, args.large)] + files[-4:]
    )
    report["storage"] = extra
    report["storage_model"] = {
        backend: storage_run(loaded, backend, args.storage_assets, scratch_storage)
        for backend in backends
    }
    from indexer.token_store import bytes_per_asset

    report["token_bytes_per_asset_published_model"] = {
        fmt: bytes_per_asset(fmt, 145, 512) for fmt in ("float16", "int8")
    }

    print(f"\nthroughput (median of {args.repeats}, assets/s):")
    for key in sorted(rates):
        line = f"  {key:<34} {rates[key]:8.2f}   cpu {cpu_ms[key]:6.1f} ms/asset"
        if key in overhead:
            line += f"   overhead wall {overhead[key]:+6.1f} %, cpu {cpu_overhead[key]:+6.1f} %"
        print(line)
    if report["decode_one_large_jpeg"]:
        d = report["decode_one_large_jpeg"]
        print(
            f"\ndecode + pre-process one 4000x3000 JPEG (1 thread): exact {d['exact_ms']:.0f} ms, "
            f"fast {d['fast_ms']:.0f} ms ({d['speedup']:.1f}x)"
        )
    a = report["fast_decode_agreement"]
    print(
        f"fast-decode vs exact: decisions {100 * a['decision_agreement']:.2f} % equal, "
        f"identical tag sets {100 * a['identical_tag_sets']:.1f} %, mean |dp| "
        f"{a['mean_abs_prob_diff']:.5f}, max |dp| {a['max_abs_prob_diff']:.4f}; input diff at "
        f"384 px {report['fast_decode_input_diff_384px']:.4f} (normalised units)"
    )
    print("\nstorage per asset (bytes):")
    for key, run in extra.items():
        if key.endswith("/exact"):
            db, tok = run["db_bytes_per_asset"], run["token_bytes_per_asset"]
            thumb = run["thumb_bytes_per_asset"]
            line = (
                f"  {key.split('/')[0]:<11} database {db:>9.0f}   token store {tok:>9.0f}"
                f"   thumbnail {thumb:>7.0f}"
            )
            if "asset_tag_rows_per_asset" in run:
                line += f"   ({run['asset_tag_rows_per_asset']:.1f} score rows/asset)"
            print(line)
    print(f"\ndatabase cost model ({args.storage_assets} small images, every score stored):")
    for backend, m in report["storage_model"].items():
        fixed, row = m["fixed_bytes_per_asset"], m["bytes_per_score_row"]
        print(
            f"  {backend:<11} fixed {fixed:>7.0f} bytes/asset + {row:.1f} bytes per stored score "
            f"(e.g. 100 scores >= floor: {fixed + 100 * row:.0f})"
        )
    tokens = report["token_bytes_per_asset_published_model"]
    print(
        f"token store, published model (145 x 512): float16 {tokens['float16']} bytes/asset, "
        f"int8 {tokens['int8']}"
    )
    shutil.rmtree(scratch_storage, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
