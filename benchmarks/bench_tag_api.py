"""Benchmark: ``POST /tag`` throughput and latency with micro-batching vs one forward per request.

Starts ``ramdex serve`` (its own process, embedded mode, a throw-away SQLite archive, auth off)
twice in this one run: with micro-batching (``api.tag_batch_size``, ``api.tag_batch_wait_ms``)
and with one-request-one-forward (``tag_batch_size=1``, no wait). For 1, 4 and 16 concurrent
clients (threads of this process, one image per request, JPEGs of ``--side`` px rotated), each
for ``--seconds``, it prints images/s, p50 / p95 latency, the batched/unbatched throughput ratio
and the load average beside each row.

    flock -w 60 /tmp/ramdex-bench.lock .venv/bin/python benchmarks/bench_tag_api.py
    ... --model swin-b --device cuda      # RAM++ Swin-B 384 px, random weights, on a GPU

Models: ``demo`` (the bundled 128 px demo model, what ``ramdex serve`` runs by default),
``test_micro`` (tiny: the HTTP and decoding overhead alone), ``swin-b`` (the published Swin-B
384 px RAM++ architecture with random weights and one description per tag: the real model's
compute, where a GPU gains most from wider batches).
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def make_images(count: int, side: int, seed: int = 0) -> list[bytes]:
    """Photo-like JPEGs: smooth colour fields plus noise (decode cost as a real photo's)."""
    rng = np.random.default_rng(seed)
    out = []
    h, w = side * 3 // 4, side
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for _ in range(count):
        base = np.stack(
            [
                128 + 100 * np.sin(xx / rng.uniform(20, 80) + rng.uniform(0, 6)),
                128 + 100 * np.cos(yy / rng.uniform(20, 80) + rng.uniform(0, 6)),
                128 + 60 * np.sin((xx + yy) / rng.uniform(30, 90)),
            ],
            axis=-1,
        )
        pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "JPEG", quality=88)
        out.append(buf.getvalue())
    return out


def swin_b_checkpoint(path: Path) -> Path:
    """RAM++ with the Swin-B 384 px encoder and the published head, random weights, one
    description per tag (the label bank's size only matters for step 5)."""
    if path.exists():
        return path
    import dataclasses

    import torch

    from ram_pp.config import get_config
    from ram_pp.convert import save_checkpoint
    from ram_pp.model import RamPlus

    cfg = get_config("ram_plus_swin_base_384")
    cfg = dataclasses.replace(
        cfg, name="bench_swin_b", labels=dataclasses.replace(cfg.labels, descriptions_per_tag=1)
    )
    torch.manual_seed(0)
    save_checkpoint(path, RamPlus(cfg).state_dict(), cfg)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """``ramdex serve`` in its own process; returns it and its URL once /readyz answers 200."""
    port = free_port()
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "ramdex"),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],  # fmt: skip
        cwd=ROOT,
        env={**os.environ, **env},
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        try:
            if httpx.get(base + "/readyz", timeout=5).status_code == 200:
                return server, base
        except httpx.TransportError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise RuntimeError("the API did not become ready")
        time.sleep(0.3)


def load(base: str, images: list[bytes], clients: int, seconds: float) -> dict[str, float]:
    """``clients`` threads posting one image per request for ``seconds``."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    start_at = time.monotonic() + 0.2
    stop_at = start_at + seconds

    def client(k: int) -> None:
        with httpx.Client(base_url=base, timeout=120) as http:
            i = k
            while time.monotonic() < start_at:
                time.sleep(0.001)
            while time.monotonic() < stop_at:
                data = images[i % len(images)]
                i += clients
                t0 = time.perf_counter()
                reply = http.post("/tag", files={"file": ("q.jpg", data, "image/jpeg")})
                took = time.perf_counter() - t0
                with lock:
                    if reply.status_code == 200:
                        latencies.append(took)
                    else:
                        errors[0] += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = max(time.monotonic() - start_at, 1e-9)
    ordered = sorted(latencies) or [float("nan")]
    return {
        "images_s": len(latencies) / elapsed,
        "p50_ms": 1000 * statistics.median(ordered),
        "p95_ms": 1000 * ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
        "requests": len(latencies),
        "errors": errors[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["demo", "test_micro", "swin-b"], default="demo")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clients", default="1,4,16", help="concurrency levels")
    parser.add_argument("--seconds", type=float, default=8.0, help="per level and mode")
    parser.add_argument("--batch", type=int, default=8, help="api.tag_batch_size when batching")
    parser.add_argument("--wait-ms", type=float, default=10.0, help="api.tag_batch_wait_ms")
    parser.add_argument("--side", type=int, default=640, help="image width (4:3 JPEGs)")
    parser.add_argument("--images", type=int, default=32, help="distinct images rotated")
    args = parser.parse_args()
    levels = [int(c) for c in args.clients.split(",")]

    work = Path(tempfile.mkdtemp(prefix="ramdex-bench-tag-"))
    from indexer.migrate import upgrade_database

    url = f"sqlite:///{work / 'ramdex.sqlite3'}"
    upgrade_database(url)
    env = {
        "RAMDEX_HOME": str(work / "home"),
        "RAMDEX_DATABASE__URL": url,
        "RAMDEX_BROKER__URL": "",
        "RAMDEX_MODEL__DEVICE": args.device,
        "RAMDEX_API__REQUIRE_AUTH": "false",
        "RAMDEX_API__TAG_QUEUE_SIZE": str(max(64, 4 * max(levels))),
    }
    if args.model == "swin-b":
        env["RAMDEX_MODEL__CHECKPOINT"] = str(swin_b_checkpoint(work / "swin_b.safetensors"))
    else:
        env["RAMDEX_MODEL__NAME"] = args.model
    images = make_images(args.images, args.side)
    modes = {
        f"batched (max_batch={args.batch}, wait {args.wait_ms:g} ms)": {
            "RAMDEX_API__TAG_BATCH_SIZE": str(args.batch),
            "RAMDEX_API__TAG_BATCH_WAIT_MS": str(args.wait_ms),
        },
        "one request, one forward (max_batch=1)": {
            "RAMDEX_API__TAG_BATCH_SIZE": "1",
            "RAMDEX_API__TAG_BATCH_WAIT_MS": "0",
        },
    }
    print(
        f"POST /tag, model {args.model} on {args.device}, {args.side}x{args.side * 3 // 4} JPEGs "
        f"({sum(map(len, images)) // len(images) // 1024} KB), one image per request, "
        f"{args.seconds:g} s per level; {os.cpu_count()} CPUs, load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    results: dict[str, dict[int, dict[str, float]]] = {}
    for mode, extra in modes.items():
        server, base = start_server({**env, **extra})
        try:
            with httpx.Client(base_url=base, timeout=120) as http:  # warm: model, kernels
                for data in images[:4]:
                    http.post("/tag", files={"file": ("w.jpg", data, "image/jpeg")})
            results[mode] = {}
            print(f"\n{mode}")
            print(f"{'clients':>8} {'images/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'n':>6}  load avg")
            for clients in levels:
                row = load(base, images, clients, args.seconds)
                results[mode][clients] = row
                print(
                    f"{clients:>8} {row['images_s']:>9.1f} {row['p50_ms']:>8.0f} "
                    f"{row['p95_ms']:>8.0f} {row['requests']:>6}  {os.getloadavg()[0]:.2f}"
                    + (f"  ({row['errors']} errors)" if row["errors"] else "")
                )
        finally:
            server.terminate()
            server.wait(timeout=30)
    batched, single = (results[m] for m in modes)
    print("\nthroughput ratio, batched / one-forward-per-request:")
    for clients in levels:
        ratio = batched[clients]["images_s"] / max(single[clients]["images_s"], 1e-9)
        print(f"{clients:>8} clients: {ratio:.2f}x")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
