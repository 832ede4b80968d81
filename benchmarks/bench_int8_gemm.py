"""Benchmark: int8 GEMM paths of torch on this CPU against bf16 F.linear, at the shapes of the
open-set head's feed-forward (rows = assets x concepts, 768 -> 3072 -> 768).

Prints GFLOP/s (2 x multiply-adds per second) per path and the ratio to bf16, with the load
average. Used to decide whether int8 feed-forward GEMMs are worth prototyping (>= 1.6x bf16).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from functools import partial

import torch
import torch.nn.functional as F


def _rate(fn, flops: float, reps: int) -> float:
    fn()
    fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return flops * reps / (time.perf_counter() - t0) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[256, 768, 2048])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out: dict = {"load": os.getloadavg()[0], "threads": args.threads, "shapes": []}
    for rows in args.rows:
        for k_in, k_out in ((768, 3072), (3072, 768)):
            flops = 2.0 * rows * k_in * k_out
            x = torch.randn(rows, k_in)
            w = torch.randn(k_out, k_in) / k_in**0.5
            xb, wb = x.bfloat16(), w.bfloat16()
            fig = {"rows": rows, "in": k_in, "out": k_out}
            fig["bf16_gflops"] = _rate(partial(F.linear, xb, wb), flops, args.reps)
            fig["fp32_gflops"] = _rate(partial(F.linear, x, w), flops, args.reps)
            xi = torch.randint(-127, 127, (rows, k_in), dtype=torch.int8)
            wi = torch.randint(-127, 127, (k_in, k_out), dtype=torch.int8)
            try:
                fig["int_mm_gflops"] = _rate(partial(torch._int_mm, xi, wi), flops, args.reps)
            except Exception as exc:  # noqa: BLE001 - report which path is missing
                fig["int_mm_gflops"] = None
                fig["int_mm_error"] = str(exc).splitlines()[0][:120]
            lin = torch.nn.Linear(k_in, k_out)
            try:
                torch.backends.quantized.engine = "fbgemm"
                q = torch.ao.quantization.quantize_dynamic(
                    torch.nn.Sequential(lin), {torch.nn.Linear}, dtype=torch.qint8
                )
                fig["dynamic_qlinear_gflops"] = _rate(partial(q, x), flops, args.reps)
            except Exception as exc:  # noqa: BLE001
                fig["dynamic_qlinear_gflops"] = None
                fig["dynamic_qlinear_error"] = str(exc).splitlines()[0][:120]
            best = max(v for k, v in fig.items() if k.endswith("gflops") and v and "bf16" not in k)
            fig["best_int8_or_fp32_vs_bf16"] = best / fig["bf16_gflops"]
            out["shapes"].append(fig)
            print(
                f"rows {rows:5d} {k_in}->{k_out}: bf16 {fig['bf16_gflops']:.0f}, "
                f"fp32 {fig['fp32_gflops']:.0f}, _int_mm {fig['int_mm_gflops'] or 0:.0f}, "
                f"dyn-qlinear {fig['dynamic_qlinear_gflops'] or 0:.0f} GFLOP/s "
                f"(load {os.getloadavg()[0]:.2f})"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
