"""Benchmark: distributed concept backfill, 1 vs 2 real Celery model workers on this machine.

An archive of N synthetic assets is built directly (asset rows in a fresh PostgreSQL database,
random float16 E for each in the token store), with a published-size open-set head (random
weights; the image encoder is never run) saved as the workers' checkpoint. Then, for each worker
set-up, a new concept is backfilled through Redis and ``ramdex worker`` processes exactly as in
production (``start_backfill`` -> prepare task -> part tasks on the model queue), and timed from
the first part claimed to the job done (the prepare step, calibration included, printed apart).

Printed with the load average: assets/s per set-up and its ratio to one worker with all cores,
beside the same head scoring the whole store in this process without a database (the bound).

Run: ``flock /tmp/ramdex-bench.lock python benchmarks/bench_backfill.py --n 20000``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import psycopg
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_retroactive import load, planted_head  # noqa: E402

from indexer.settings import Settings  # noqa: E402

T, C = 145, 512
ADMIN = "postgresql://127.0.0.1:5432/test"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=20_000, help="synthetic assets")
    ap.add_argument("--part", type=int, default=2_000, help="assets per part")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/13")
    ap.add_argument(
        "--setups",
        default="1x2,2x1,2x2",
        help="comma list of WORKERSxTHREADS (torch threads per worker); the first is the baseline",
    )
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ramdex-bench-backfill-"))
    db = f"ramdex_bench_backfill_{os.getpid()}"
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    try:
        env, settings = build_archive(args, work, db)
        print(f"bound: {in_process_rate(settings):,.0f} assets/s in this process, no database "
              f"(float32 head, all cores) [load {load()}]", flush=True)  # fmt: skip
        base = None
        for setup in args.setups.split(","):
            workers, threads = (int(x) for x in setup.split("x"))
            prepare_s, parts_s = run_backfill(env, settings, workers, threads, work, setup)
            rate = args.n / parts_s
            base = base or rate
            print(
                f"{workers} worker(s) x {threads} thread(s): {rate:,.0f} assets/s "
                f"(parts {parts_s:.1f} s, prepare {prepare_s:.1f} s), "
                f"{rate / base:.2f}x the first [load {load()}]",
                flush=True,
            )
    finally:
        from indexer.db.session import dispose_engines

        dispose_engines()
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        shutil.rmtree(work, ignore_errors=True)


def build_archive(args: argparse.Namespace, work: Path, db: str) -> tuple[dict[str, str], Settings]:
    """Checkpoint, database rows and token store of N assets; the workers' environment."""
    from indexer.models import configured_model_id
    from indexer.stores import ensure_schema, token_store_path
    from indexer.token_store import TokenStore
    from ram_pp.convert import save_checkpoint
    from ram_pp.text_encoder import build_random_clip_text_encoder

    model = planted_head(seed=0)
    checkpoint = work / "bench-head.safetensors"
    save_checkpoint(checkpoint, model.state_dict(), model.config)
    clip = build_random_clip_text_encoder(work / "clip")
    prefix = f"rdxbench{uuid.uuid4().hex[:8]}"
    env = {
        "RAMDEX_HOME": str(work / "home"),
        "RAMDEX_DATABASE__URL": f"postgresql+psycopg://127.0.0.1:5432/{db}",
        "RAMDEX_BROKER__URL": args.redis,
        "RAMDEX_BROKER__MODEL_QUEUE": f"{prefix}.model",
        "RAMDEX_BROKER__DEFAULT_QUEUE": f"{prefix}.default",
        "RAMDEX_MODEL__CHECKPOINT": str(checkpoint),
        "RAMDEX_MODEL__TEXT_ENCODER": str(clip),
        "RAMDEX_MODEL__DEVICE": "cpu",
        "RAMDEX_INDEX__BACKFILL_PART_ASSETS": str(args.part),
    }
    settings = Settings(
        home=work / "home",
        database={"url": env["RAMDEX_DATABASE__URL"]},
        broker={"url": args.redis, "model_queue": f"{prefix}.model",
                "default_queue": f"{prefix}.default"},
        model={"checkpoint": checkpoint, "text_encoder": str(clip), "device": "cpu"},
        index={"backfill_part_assets": args.part},
    )  # fmt: skip
    ensure_schema(settings.database_url)
    model_id = configured_model_id(settings)
    t0 = time.perf_counter()
    with psycopg.connect(f"postgresql://127.0.0.1:5432/{db}", autocommit=True) as conn:
        conn.execute(
            "INSERT INTO assets (sha256, status, model_name) SELECT md5(g::text) || md5(g::text),"
            " 'done', %s FROM generate_series(1, %s) g",
            (model_id, args.n),
        )
        ids = np.array([r[0] for r in conn.execute("SELECT id FROM assets ORDER BY id")])
    store = TokenStore(token_store_path(settings, model_id), tokens=T, dim=C, fmt="float16")
    rng = np.random.default_rng(0)
    for a in range(0, len(ids), 1000):
        batch = ids[a : a + 1000]
        store.add(batch, (rng.standard_normal((len(batch), T, C)) * 0.15).astype(np.float16))
    print(f"archive: {args.n:,} assets, parts of {args.part:,}, built in "
          f"{time.perf_counter() - t0:.1f} s [load {load()}]", flush=True)  # fmt: skip
    return env, settings


def in_process_rate(settings: Settings) -> float:
    """The same head over the whole store in this process, no database: assets/s."""
    from indexer.models import configured_model_id, load_configured_model
    from indexer.stores import token_store_path
    from indexer.token_store import TokenStore
    from ram_pp.concepts import encode_concepts, make_concept
    from ram_pp.openset import OpenSetScorer
    from ram_pp.text_encoder import load_text_encoder

    loaded = load_configured_model(settings)
    encoder = load_text_encoder(settings.model.text_encoder)
    bank = encode_concepts([make_concept("bound", ["a bound"], use_templates=False)], encoder)
    store = TokenStore(token_store_path(settings, configured_model_id(settings)), read_only=True)
    scorer = OpenSetScorer(loaded.model)
    t0 = time.perf_counter()
    n = 0
    for _, embeds in store.iter_chunks(1024):
        scorer.logits(embeds, bank)
        n += len(embeds)
    return n / (time.perf_counter() - t0)


def run_backfill(
    env: dict[str, str], settings: Settings, workers: int, threads: int, work: Path, label: str
) -> tuple[float, float]:
    """Start the workers, backfill one new concept, stop them: (prepare s, parts s)."""
    from indexer.db.concept_repo import create_concept
    from indexer.db.job_repo import create_job
    from indexer.db.session import session_scope
    from indexer.models import configured_model_id
    from indexer.tasks import start_backfill

    procs = [start_worker(env, threads, work / f"{label}-{k}.log") for k in range(workers)]
    try:
        logs = [work / f"{label}-{k}.log" for k in range(workers)]
        for proc, log_path in zip(procs, logs, strict=True):
            wait_ready(proc, log_path)
        warm_up(settings, logs)
        with session_scope(settings.database_url) as s:
            concept = create_concept(
                s,
                model_name=configured_model_id(settings),
                name=f"concept {label}",
                descriptions=[f"a description of {label}"],
            )
            job = create_job(s, kind="backfill", params={"concept_id": concept.id})
            s.flush()
            concept_id, job_id = int(concept.id), int(job.id)
        sent = time.perf_counter()
        start_backfill(concept_id, job_id, settings=settings)
        url = f"postgresql://127.0.0.1:5432/{settings.database_url.rsplit('/', 1)[1]}"
        with psycopg.connect(url, autocommit=True) as conn:
            first = None
            while True:
                status = conn.execute("SELECT status FROM jobs WHERE id = %s", (job_id,)).fetchone()
                claimed = conn.execute(
                    "SELECT count(*) FROM backfill_parts WHERE job_id = %s AND status <> 'pending'",
                    (job_id,),
                ).fetchone()
                now = time.perf_counter()
                if first is None and claimed and claimed[0]:
                    first = now
                if status and status[0] in ("done", "failed"):
                    if status[0] != "done":
                        raise SystemExit(f"backfill failed; see {work}")
                    return (first or now) - sent, now - (first or now)
                time.sleep(0.02)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


def start_worker(env: dict[str, str], threads: int, log_path: Path) -> subprocess.Popen:
    """A ``ramdex worker`` (one pool child) on the model and default queues."""
    queues = f"{env['RAMDEX_BROKER__MODEL_QUEUE']},{env['RAMDEX_BROKER__DEFAULT_QUEUE']}"
    ramdex = str(Path(sys.executable).parent / "ramdex")
    command = [ramdex, "worker", "--queues", queues, "--concurrency", "1", "--loglevel", "info",
               "--hostname", f"{log_path.stem}@%h"]  # fmt: skip
    child_env = {**os.environ, **env, "OMP_NUM_THREADS": str(threads)}
    with open(log_path, "ab") as log:
        return subprocess.Popen(command, env=child_env, stdout=log, stderr=subprocess.STDOUT)


def warm_up(settings: Settings, logs: list[Path], timeout_s: float = 120.0) -> None:
    """Until every worker has loaded its model: part tasks of no job (each loads the model,
    finds nothing to claim and returns), sent one by one until each log shows one done."""
    from indexer.ingest.backfills import send_part

    deadline = time.monotonic() + timeout_s
    while not all("backfill_part[" in p.read_text(errors="replace") and "succeeded" in
                  p.read_text(errors="replace") for p in logs):  # fmt: skip
        if time.monotonic() > deadline:
            raise SystemExit("workers did not warm up")
        send_part(settings, -1, 0)
        time.sleep(0.5)


def wait_ready(proc: subprocess.Popen, log_path: Path, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while " ready." not in log_path.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"worker did not start:\n{log_path.read_text()[-2000:]}")
        time.sleep(0.1)


if __name__ == "__main__":
    # A SIGTERM (timeout, Ctrl-C in a pipeline) still stops the workers and drops the database.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    torch.set_grad_enabled(False)
    main()
