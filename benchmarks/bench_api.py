"""Benchmark: the HTTP API on loopback over a synthetic archive (PostgreSQL, FAISS, token store).

Builds, in a throw-away PostgreSQL database and a temporary data folder:

* N assets (default 100,000) with about 40 stored tag scores each over the 4,585 built-in tags
  (power-law tag frequencies; the loader of ``bench_tag_query.py``, reused), a unit-norm 512-d
  image embedding each, and their 145 x 512 token embeddings E in the token store;
* the FAISS index built from the database, as a worker's sync would;
* a model checkpoint with the published head size (hidden 768, 4 heads, FFN 3072, 2 layers,
  145 tokens, random weights; the image encoder is tiny since no image is encoded here) and a
  random CLIP text tower: tiny by default, the published size with ``--clip-size`` (width 512,
  12 layers: what a new concept's text encoding costs with ``openai/clip-vit-base-patch16``).

Then starts ``ramdex serve`` (one process) and measures from a client on the same machine, per
kind of search: sequential latency p50 / p95 / p99 and throughput with concurrent clients, each
bounded by a request count and a time budget.

* tag search: a rotation of boolean queries (common, mid and rare tags, AND, AND NOT, OR, type
  and date filters, min score), first pages of 40;
* concept search: a *new* free-text concept per request (text encoding, calibration on a 512-asset
  background sample, FAISS shortlist of 2,000, exact RAM++ scores), the worst case; and the same
  concept again (ranking cached, e.g. the next page);
* similar search: ``similar_to`` a random asset (FAISS flat inner product over all N).

    python benchmarks/bench_api.py                 # N = 100,000: about 15 GB of token files
    python benchmarks/bench_api.py --n 10000 --token-format int8
    python benchmarks/bench_api.py --clip-size --archive /var/tmp/bench-100k --kinds concept_new

``--archive DIR`` builds the archive there once and keeps it (database and files; DIR/archive.json
names them); later runs with the same DIR reuse it. Remove it with ``--drop-archive``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg
import torch

ROOT = Path(__file__).resolve().parent.parent
ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"
URL = "postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
TOKENS, DIM = 145, 512
DISTINCT_E = 1024  # distinct token blocks written (tiled over the archive; reads are by id)
WORDS = ["brutalist", "red", "foggy", "neon", "wooden", "glass", "crowded", "empty"]
THINGS = ["stairwell", "harbour", "market", "kite", "bicycle", "library", "bridge", "cafe"]


def clip_size_encoder(folder: Path) -> Path:
    """A random text tower of the published size whose tokenizer makes the prompt templates'
    and the benchmark's words one token each (as CLIP's BPE does for common English words), so
    texts have about as many tokens as with CLIP; digits and other letters stay one token each,
    as in CLIP. Built once per folder."""
    import re

    from ram_pp.concepts import PROMPT_TEMPLATES
    from ram_pp.text_encoder import build_clip_size_text_encoder

    if (folder / "config.json").exists():
        return folder
    words = set(re.findall(r"[a-z]+", " ".join(PROMPT_TEMPLATES).lower())) | {*WORDS, *THINGS}
    return build_clip_size_text_encoder(folder, words=sorted(words))


def _tag_bench():
    """The storage benchmark's loader (assets and power-law tag scores, generated server-side)."""
    spec = importlib.util.spec_from_file_location(
        "bench_tag_query", ROOT / "benchmarks/bench_tag_query.py"
    )
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def make_checkpoint(path: Path) -> None:
    """Published-size head and label layout for the 4,585 tags; tiny image encoder (unused)."""
    from ram_pp.config import HeadConfig, LabelConfig, RamPlusConfig, VisionConfig
    from ram_pp.convert import save_checkpoint
    from ram_pp.model import RamPlus

    cfg = RamPlusConfig(
        name="bench_api",
        vision=VisionConfig(
            image_size=96, patch_size=4, window_size=6, embed_dim=8, depths=(1, 1), num_heads=(1, 2)
        ),
        head=HeadConfig(),
        labels=LabelConfig(num_tags=4585, descriptions_per_tag=1),
    )
    assert cfg.vision.num_tokens == TOKENS
    torch.manual_seed(0)
    save_checkpoint(path, RamPlus(cfg).state_dict(), cfg)


def load_embeddings(url: str, n: int, seed: int) -> np.ndarray:
    """A unit-norm 512-d image embedding per asset (COPY into the assets table)."""
    rng = np.random.default_rng(seed)
    ids = []
    with psycopg.connect(url.replace("+psycopg", "")) as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM assets ORDER BY id")]
        conn.execute("CREATE TEMP TABLE emb (id bigint, embedding bytea)")
        with conn.cursor().copy("COPY emb (id, embedding) FROM STDIN") as copy:
            for start in range(0, len(ids), 10_000):
                part = ids[start : start + 10_000]
                vectors = rng.standard_normal((len(part), DIM)).astype(np.float32)
                vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
                for asset_id, vector in zip(part, vectors, strict=True):
                    copy.write_row((asset_id, vector.astype("<f4").tobytes()))
        conn.execute(
            "UPDATE assets SET embedding = emb.embedding, embedding_dim = %s, token_shard = 0, "
            "token_offset = 0 FROM emb WHERE emb.id = assets.id",
            (DIM,),
        )
        conn.commit()
    return np.asarray(ids, np.int64)


def load_tokens(settings: Any, model_id: str, ids: np.ndarray, fmt: str, seed: int) -> float:
    """E for every asset in the token store (DISTINCT_E random blocks, tiled). Returns GB."""
    from indexer.stores import open_token_store

    settings.index.token_format = fmt
    store = open_token_store(settings, model_id, TOKENS, DIM)
    rng = np.random.default_rng(seed)
    blocks = (rng.standard_normal((DISTINCT_E, TOKENS, DIM)) * 0.5).astype(np.float16)
    chunk = 512
    for start in range(0, len(ids), chunk):
        part = ids[start : start + chunk]
        store.add(part, blocks[np.arange(start, start + len(part)) % DISTINCT_E])
    return store.stats()["data_bytes"] / 1e9


def build_index(settings: Any, model_id: str) -> None:
    from indexer.db.session import session_scope
    from indexer.faiss_index import VectorIndex, index_path

    with session_scope(settings.database_url) as session:
        index = VectorIndex.rebuild_from_database(
            session, model_id, exact_max_size=settings.index.exact_max_size
        )
    index.save(index_path(settings.index_dir, model_id))


def start_server(env: dict[str, str], shortlist: int) -> tuple[subprocess.Popen, str]:
    """``ramdex serve`` in its own process, ready (warm start done); returns it and its URL."""
    port = free_port()
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "ramdex"),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-migrate",
            "--log-level",
            "warning",
        ],  # fmt: skip
        cwd=ROOT,
        env={**os.environ, **env, "RAMDEX_INDEX__SHORTLIST": str(shortlist)},
    )
    base = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    deadline = started + 300
    while True:
        try:
            reply = httpx.get(base + "/readyz", timeout=5)
            if reply.status_code == 200:
                warm = reply.json()["checks"].get("warmup", {}).get("detail", "")
                print(f"server ready after {time.monotonic() - started:.1f} s ({warm})")
                return server, base
        except httpx.TransportError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise RuntimeError("the API did not become ready")
        time.sleep(0.5)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------------- measuring
def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(samples: list[float]) -> dict[str, float]:
    return {
        "requests": len(samples),
        "p50_ms": statistics.median(samples),
        "p95_ms": percentile(samples, 0.95),
        "p99_ms": percentile(samples, 0.99),
        "max_ms": max(samples),
    }


def phase_summary(timed: list[dict[str, float]], client_p50_ms: float) -> dict[str, float]:
    """Median milliseconds per Server-Timing phase over sequential replies, and ``client``: the
    client's median beyond the server's total (loopback, HTTP parsing on the client side)."""
    names: list[str] = []
    for timing in timed:
        names += [n for n in timing if n not in names]
    out = {n: statistics.median(t.get(n, 0.0) for t in timed) for n in names}
    if "total" in out:
        out["client"] = max(0.0, client_p50_ms - out["total"])
    return {k: round(v, 1) for k, v in out.items()}


def sequential(call: Callable[[int], str], count: int, budget_s: float) -> dict[str, Any]:
    """Latency of one request at a time: at most ``count`` requests or ``budget_s`` seconds,
    overall and by the query shape each call names."""
    samples: list[float] = []
    by_shape: dict[str, list[float]] = {}
    deadline = time.monotonic() + budget_s
    for i in range(count):
        start = time.perf_counter()
        shape = call(i)
        elapsed = (time.perf_counter() - start) * 1000
        samples.append(elapsed)
        by_shape.setdefault(shape, []).append(elapsed)
        if time.monotonic() > deadline:
            break
    out: dict[str, Any] = summary(samples)
    if len(by_shape) > 1:
        out["by_shape"] = {k: summary(v) for k, v in by_shape.items()}
    return out


def concurrent(make_call: Callable[[], Callable[[int], str]], clients: int, budget_s: float,
               limit: int) -> dict[str, float]:  # fmt: skip
    """Requests per second with ``clients`` threads for ``budget_s`` (or ``limit`` requests)."""
    done = [0] * clients
    stop = time.monotonic() + budget_s
    counter = iter(range(limit))
    lock = threading.Lock()

    def worker(slot: int) -> None:
        call = make_call()
        while time.monotonic() < stop:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            call(i)
            done[slot] += 1

    start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(s,)) for s in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    return {
        "clients": clients,
        "concurrent_requests": sum(done),
        "requests_per_s": sum(done) / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="synthetic assets")
    parser.add_argument("--scores", type=int, default=40, help="tag score draws per asset")
    parser.add_argument("--token-format", choices=["float16", "int8"], default="float16")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients")
    parser.add_argument(
        "--shortlists", default="2000,500", help="stage-1 sizes to measure concept search with"
    )
    parser.add_argument(
        "--torch-threads", type=int, default=0, help="torch threads in the server (0: default)"
    )
    parser.add_argument("--budget", type=float, default=30.0, help="seconds per measurement")
    parser.add_argument(
        "--kinds",
        default="tag,similar,concept_cached,concept_new",
        help="searches to measure (comma-separated; default all)",
    )
    parser.add_argument(
        "--text-encoder",
        default="",
        help="text encoder folder (a real CLIP text tower); default: a tiny random CLIP tower",
    )
    parser.add_argument(
        "--clip-size",
        action="store_true",
        help="a random CLIP text tower of the published size (width 512, 12 layers)",
    )
    parser.add_argument(
        "--text-dtype",
        choices=["float32", "bfloat16"],
        default="float32",
        help="the server's model.text_dtype (CLIP text tower's dense layers)",
    )
    parser.add_argument(
        "--archive", type=Path, default=None, help="build the archive here once, reuse it after"
    )
    parser.add_argument(
        "--drop-archive", action="store_true", help="drop the --archive database and folder"
    )
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the database and files")
    args = parser.parse_args()

    from api.auth import create_key
    from api.server_timing import parse_header
    from indexer.db.session import dispose_engines, session_scope
    from indexer.migrate import upgrade_database
    from indexer.models import configured_model_id
    from indexer.settings import Settings
    from ram_pp.text_encoder import build_random_clip_text_encoder

    meta_file = args.archive / "archive.json" if args.archive else None
    meta = json.loads(meta_file.read_text()) if meta_file and meta_file.exists() else None
    if args.drop_archive:
        if meta is not None:
            with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{meta["database"]}" WITH (FORCE)')
        if args.archive:
            shutil.rmtree(args.archive, ignore_errors=True)
        print(f"dropped {args.archive}")
        return
    if meta is not None and (meta["n"], meta["token_format"]) != (args.n, args.token_format):
        raise SystemExit(
            f"error: {args.archive} holds n={meta['n']} {meta['token_format']}: "
            "pass the same --n/--token-format, or --drop-archive first"
        )
    keep = args.keep or args.archive is not None
    if args.archive:
        args.archive.mkdir(parents=True, exist_ok=True)
        work = args.archive
    else:
        work = Path(tempfile.mkdtemp(prefix="ramdex-bench-api-", dir=args.workdir))
    name = meta["database"] if meta else f"ramdex_bench_api_{uuid.uuid4().hex[:8]}"
    url = URL.format(name=name)
    if meta is None:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    server: subprocess.Popen | None = None
    results: dict[str, Any] = {"n": args.n, "token_format": args.token_format}
    try:
        checkpoint = work / "bench_api.pth"
        if meta is None:
            make_checkpoint(checkpoint)
        if args.text_encoder:
            encoder = Path(args.text_encoder)
        elif args.clip_size:
            encoder = clip_size_encoder(work / "text-encoder-clip-size")
        else:
            encoder = work / "text-encoder"
            if not (encoder / "config.json").exists():
                build_random_clip_text_encoder(encoder)
        results["text_dtype"] = args.text_dtype
        results["text_encoder"] = "clip-size" if args.clip_size else args.text_encoder or "tiny"
        env = {
            "RAMDEX_HOME": str(work / "home"),
            "RAMDEX_DATABASE__URL": url,
            "RAMDEX_MODEL__NAME": "bench_api",
            "RAMDEX_MODEL__CHECKPOINT": str(checkpoint),
            "RAMDEX_MODEL__TEXT_ENCODER": str(encoder),
            "RAMDEX_MODEL__TEXT_DTYPE": args.text_dtype,
            "RAMDEX_MODEL__DEVICE": "cpu",
            "RAMDEX_INDEX__TOKEN_FORMAT": args.token_format,
            "RAMDEX_BROKER__URL": "",
        }
        if args.torch_threads:
            env["OMP_NUM_THREADS"] = str(args.torch_threads)  # torch's intra-op threads
        results["torch_threads"] = args.torch_threads or torch.get_num_threads()
        os.environ.update(env)
        settings = Settings()
        model_id = configured_model_id(settings)

        tagbench = _tag_bench()
        tagbench.MODEL = model_id  # the loader names the model the service runs
        if meta is None:
            t0 = time.perf_counter()
            upgrade_database(url)
            tagbench.load(url, args.n, args.scores, seed=0.42)
            t1 = time.perf_counter()
            ids = load_embeddings(url, args.n, seed=1)
            t2 = time.perf_counter()
            gigabytes = load_tokens(settings, model_id, ids, args.token_format, seed=2)
            t3 = time.perf_counter()
            build_index(settings, model_id)
            t4 = time.perf_counter()
            results["load_s"] = {
                "assets_and_scores": round(t1 - t0, 1),
                "embeddings": round(t2 - t1, 1),
                "token_store": round(t3 - t2, 1),
                "faiss_index": round(t4 - t3, 1),
            }
            if meta_file is not None:
                meta = {"database": name, "n": args.n, "token_format": args.token_format,
                        "token_store_gb": gigabytes, "load_s": results["load_s"]}  # fmt: skip
                meta_file.write_text(json.dumps(meta, indent=1))
        else:
            with psycopg.connect(url.replace("+psycopg", "")) as conn:
                ids = np.asarray(
                    [r[0] for r in conn.execute("SELECT id FROM assets ORDER BY id")], np.int64
                )
            gigabytes = meta["token_store_gb"]
            results["load_s"] = {"reused": str(args.archive), **meta["load_s"]}
        tags = tagbench.pick_tags(url)
        with session_scope(url) as session:
            key = create_key(session, name="bench", scopes=["read"]).token
        dispose_engines()
        results["token_store_gb"] = round(gigabytes, 2)
        print(f"archive: {args.n} assets, token store {gigabytes:.1f} GB; load {results['load_s']}")

        headers = {"Authorization": f"Bearer {key}"}
        shortlists = [int(x) for x in args.shortlists.split(",")]
        server, base = start_server(env, shortlists[0])
        tag_queries = {
            "1 tag, common": {"all": [tags["common"]]},
            "1 tag, rare": {"all": [tags["rare"]]},
            "2 tags AND": {"all": [tags["common"], tags["mid"]]},
            "AND NOT": {"all": [tags["common"]], "none": [tags["second"]]},
            "any of 3": {"any": [tags["mid"], tags["rare"], tags["second"]]},
            "tag + mime + dates": {
                "all": [tags["mid"]],
                "mime": ["image/png"],
                "created_after": "2024-03-01T00:00:00Z",
                "created_before": "2024-06-01T00:00:00Z",
            },
            "min_score 0.9": {"all": [tags["common"]], "min_score": 0.9},
            "sort by date (1,000 recalled)": {"all": [tags["second"]], "sort": "date"},
        }
        shapes = list(tag_queries)
        words, things = WORDS, THINGS
        run_id = uuid.uuid4().hex[:6]

        def client() -> httpx.Client:
            return httpx.Client(base_url=base, headers=headers, timeout=120)

        def caller(kind: str) -> Callable[[], Callable[[int], str]]:
            def make() -> Callable[[int], str]:
                http = client()
                rng = random.Random(f"{kind}-{threading.get_ident()}")

                def call(i: int) -> str:
                    shape = kind
                    if kind == "tag":
                        shape = shapes[i % len(shapes)]
                        body = {**tag_queries[shape], "limit": 40}
                    elif kind == "concept_new":
                        noun = f"{rng.choice(words)} {rng.choice(things)}"
                        body = {"text": f"{noun} {run_id} {i} {rng.random():.6f}", "limit": 40}
                    elif kind == "concept_cached":
                        body = {"text": f"{words[i % 3]} {things[i % 3]} {run_id}", "limit": 40}
                    else:
                        body = {"similar_to": int(ids[rng.randrange(len(ids))]), "limit": 40}
                    reply = http.post("/search", json=body)
                    if reply.status_code != 200:
                        raise RuntimeError(f"{kind}: {reply.status_code} {reply.text[:300]}")
                    timed.append(parse_header(reply.headers.get("server-timing", ""))[0])
                    return shape

                return call

            return make

        plan = {  # kind: (sequential requests, concurrent request limit, time budget factor)
            "tag": (400, 4000, 1),
            "similar": (300, 3000, 1),
            "concept_cached": (200, 2000, 1),
            "concept_new": (40, 200, 3),
        }

        timed: list[dict[str, float]] = []  # Server-Timing of each reply, milliseconds

        def measure(kind: str, label: str) -> None:
            count, limit, factor = plan[kind]
            call = caller(kind)()
            for i in range(3):
                call(i)  # warm-up: connections, page cache, and the cached concepts' rankings
            timed.clear()
            load = os.getloadavg()
            latency = sequential(call, count, args.budget * factor)
            phases = phase_summary(timed, latency["p50_ms"])
            throughput = concurrent(caller(kind), args.clients, args.budget * factor / 2, limit)
            results[label] = {
                **latency,
                **throughput,
                "phases_ms": phases,
                "load_average": [round(x, 2) for x in (*load, *os.getloadavg())],
            }
            for shape, numbers in latency.get("by_shape", {}).items():
                p50, p95 = numbers["p50_ms"], numbers["p95_ms"]
                print(f"    {shape:30} p50 {p50:7.1f} ms  p95 {p95:7.1f} ms")
            print(
                f"{label:22} p50 {latency['p50_ms']:8.1f} ms  p95 {latency['p95_ms']:8.1f} ms  "
                f"p99 {latency['p99_ms']:8.1f} ms  ({latency['requests']:3d} requests)  "
                f"{throughput['requests_per_s']:7.1f} req/s with {args.clients} clients  "
                f"(load {load[0]:.2f} -> {os.getloadavg()[0]:.2f})",
                flush=True,
            )
            print("    phases, median ms:", "  ".join(f"{k} {v:.1f}" for k, v in phases.items()))

        kinds = [k for k in plan if k in args.kinds.split(",")]
        for kind in kinds:
            measure(kind, kind if kind != "concept_new" else f"concept_new@{shortlists[0]}")
        for shortlist in shortlists[1:] if "concept_new" in kinds else []:
            server.terminate()
            server.wait(timeout=30)
            server, base = start_server(env, shortlist)
            measure("concept_new", f"concept_new@{shortlist}")
        metrics = httpx.get(base + "/metrics", timeout=10).text
        results["model_latency_metrics"] = [
            line
            for line in metrics.splitlines()
            if line.startswith("ramdex_model_latency_seconds_sum")
        ]
        goals = {}
        if "tag" in results:
            goals["tag_p95_under_50ms"] = results["tag"]["p95_ms"] < 50
        for k in shortlists:
            if f"concept_new@{k}" in results:
                goals[f"concept_p95_under_1s@{k}"] = results[f"concept_new@{k}"]["p95_ms"] < 1000
        results["goals"] = goals
        print("goals:", goals)
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        if meta_file is not None and not meta_file.exists():
            keep = False  # the build did not finish: nothing to reuse
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
            with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        else:
            print(f"kept: database {name}, folder {work}")


if __name__ == "__main__":
    main()
