"""Benchmark: token-store formats (float16, int8, pq128, pq64) on the synthetic archive.

For each format, N assets of bench_retroactive's synthetic archive (planted concept detector,
3 query concepts) are written to a token store, then every asset is read back and scored
exhaustively with the float32 reference head. Printed per format, with the load average:

- bytes per asset, write time (pq: including the codebook's training on the first batch),
- top-100 overlap of each concept's ranking against the float16 store's ranking (the goal for a
  compact format: >= 0.97), and the logit error against float16 (max, mean; logit std beside),
- read time (decode into float32) and score time for the whole store, and their ratio to float16.

This archive's E is mostly isotropic noise, which no format under ~20 kB keeps; for E from a
trained model (the bundled demo model) see ``bench_token_formats_demo.py``.

Run: ``flock /tmp/ramdex-bench.lock python benchmarks/bench_token_formats.py --n 20000``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_retroactive import QUERY_RANKS, Archive, load, planted_head  # noqa: E402

from indexer.retroactive import recall_at_k  # noqa: E402
from indexer.token_store import TokenStore  # noqa: E402
from ram_pp.openset import OpenSetScorer  # noqa: E402

T, C = 145, 512


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=20_000, help="synthetic assets")
    ap.add_argument("--formats", default="float16,int8,pca128i8,pca64i8,pq128")
    ap.add_argument("--batch", type=int, default=2000, help="assets per add() (first trains pq)")
    ap.add_argument("--chunk", type=int, default=512, help="assets per read/score chunk")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument(
        "--projected",
        type=int,
        default=0,
        help="only time the attention algebra on decoded vs projected pca128i8 tokens, N assets",
    )
    args = ap.parse_args()
    if args.projected:
        projected_vs_decoded(args.projected, args.seed)
        return
    formats = args.formats.split(",")
    if "float16" not in formats:
        formats.insert(0, "float16")
    work = Path(tempfile.mkdtemp(prefix="bench-token-formats-"))
    try:
        fig = run(args, formats, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(fig, indent=1))


def run(args, formats: list[str], work: Path) -> dict:
    model = planted_head(args.seed)
    ref = OpenSetScorer(model, asset_chunk=256)  # float32: the format's error alone
    archive = Archive(args.seed)
    qtopics = [int(np.argsort(-archive.popularity)[r]) for r in QUERY_RANKS]
    bank = archive.concept_bank(qtopics, seed=args.seed + 1)
    stores = {f: TokenStore(work / f, tokens=T, dim=C, fmt=f) for f in formats}
    write_s = dict.fromkeys(formats, 0.0)
    for start in range(0, args.n, args.batch):
        n = min(args.batch, args.n - start)
        e = archive.chunk(start, n)
        ids = np.arange(start, start + n, dtype=np.int64)
        for f, store in stores.items():
            t0 = time.perf_counter()
            store.add(ids, e)
            write_s[f] += time.perf_counter() - t0
    print(f"wrote {args.n} assets in each of {', '.join(formats)} [load {load()}]")

    fig: dict = {"n": args.n, "formats": {}}
    logits: dict[str, np.ndarray] = {}
    for f, store in stores.items():
        read_s = score_s = 0.0
        parts = []
        it = store.iter_chunks(args.chunk, dtype=np.float32)
        while True:
            t0 = time.perf_counter()
            item = next(it, None)
            read_s += time.perf_counter() - t0
            if item is None:
                break
            t0 = time.perf_counter()
            parts.append(ref.logits(item[1], bank).numpy())
            score_s += time.perf_counter() - t0
        logits[f] = np.concatenate(parts)
        fig["formats"][f] = {
            "bytes_per_asset": store.bytes_per_asset,
            "write_s": write_s[f],
            "read_s": read_s,
            "score_s": score_s,
            "load": load(),
        }
    base = logits["float16"]
    for f in formats:
        err = np.abs(logits[f] - base)
        overlap = [
            recall_at_k(np.argsort(-logits[f][:, k]), np.argsort(-base[:, k]), 100)
            for k in range(bank.num_tags)
        ]
        row = fig["formats"][f]
        row.update(
            top100_overlap=float(np.mean(overlap)),
            top100_overlap_min=float(np.min(overlap)),
            max_logit_err=float(err.max()),
            mean_logit_err=float(err.mean()),
            logit_std=float(base.std()),
        )
        r16 = fig["formats"]["float16"]
        row["smaller_than_float16"] = r16["bytes_per_asset"] / row["bytes_per_asset"]
        print(
            f"{f:8s} {row['bytes_per_asset']:7d} B/asset ({row['smaller_than_float16']:.1f}x "
            f"smaller than float16); write {row['write_s']:.1f}s; top-100 overlap vs float16 "
            f"{row['top100_overlap']:.3f} (min {row['top100_overlap_min']:.2f}); logit error max "
            f"{row['max_logit_err']:.4f} mean {row['mean_logit_err']:.5f} (logit std "
            f"{row['logit_std']:.3f}); read {row['read_s']:.2f}s "
            f"({row['read_s'] / max(r16['read_s'], 1e-9):.2f}x float16), score "
            f"{row['score_s']:.2f}s [load {row['load']}]"
        )
    return fig


def projected_vs_decoded(n: int, seed: int, heads: int = 4) -> dict:
    """The fast path's per-token work (attention logits against W_k^T q per head, softmax, the
    attention-weighted sum of E) for one concept: on E decoded from pca128i8 (decode, then 512-d)
    against the same algebra on the stored k-d coordinates (query-side vectors projected by the
    basis: q . e = (B q) . z + q . mean; sum a_j e_j = mean + B^T sum a_j z_j)."""
    import torch

    from indexer.token_codecs import PCACodec

    archive = Archive(seed)
    e = archive.chunk(0, max(n, 100))
    codec = PCACodec.train("pca128i8", e)
    rec = codec.encode(e[:n])
    u = torch.randn(heads, C)  # W_k^T q per head
    basis, mean = torch.from_numpy(codec.basis), torch.from_numpy(codec.mean)

    def decoded() -> torch.Tensor:
        x = torch.from_numpy(codec.decode(rec))  # (n, T, 512)
        a = torch.softmax(x @ u.T, dim=1)  # (n, T, heads)
        return a.transpose(1, 2) @ x  # (n, heads, 512)

    def projected() -> torch.Tensor:
        z = torch.from_numpy(rec["q"].astype(np.float32) * rec["scale"][..., None])
        a = torch.softmax(z @ (basis @ u.T) + (mean @ u.T), dim=1)
        return (a.transpose(1, 2) @ z) @ basis + mean  # weights sum to 1

    ref = decoded()
    diff = float((projected() - ref).abs().max())
    best = {}
    for name, fn in (("decoded", decoded), ("projected", projected)):
        best[name] = min(_timed(fn) for _ in range(3))
    out = {
        "assets": n,
        "decoded_s": best["decoded"],
        "projected_s": best["projected"],
        "ratio": best["decoded"] / best["projected"],
        "max_abs_diff": diff,
        "load": load(),
    }
    print(
        f"pca128i8 attention algebra, {n} assets x {heads} heads: decode + 512-d "
        f"{best['decoded'] * 1e3:.0f} ms, projected 128-d {best['projected'] * 1e3:.0f} ms "
        f"({out['ratio']:.1f}x faster), max |diff| {diff:.1e} [load {out['load']}]"
    )
    return out


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
