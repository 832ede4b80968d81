"""Tagging throughput and peak memory: ramdex's RAM++ vs an upstream-style baseline.

Random weights (speed does not depend on them). For each config, batch size and precision it
prints images/s, ms per image, the peak resident memory added by the run and the load average
at the time. The baseline, run in the same process, computes the same logits the way the
upstream implementation does: timm's stock Swin (upstream's window attention: float32 bias and
mask added per window, separate softmax), description re-weighting with a per-image Python loop
over a (tags x descriptions x 512) temporary, and the head's attention as matmul + softmax.
The process takes `ramdex tag`'s thread policy (indexer/threads.py) before torch loads.

    python benchmarks/bench_tagging.py                      # tiny + Swin-L, CPU
    python benchmarks/bench_tagging.py --configs ram_plus_swin_large_14m --batches 4 --repeats 2
    python benchmarks/bench_tagging.py --compile --channels-last  # the GPU workers' options
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from indexer.threads import apply_policy

apply_policy("tag")  # as `ramdex tag` runs: before torch loads

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ram_pp.factory import random_model  # noqa: E402
from ram_pp.inference import TaggingEngine  # noqa: E402
from ram_pp.model import RamPlus, TaggingLayer  # noqa: E402

GOLDEN = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "golden_tiny"


def _read_status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    return 0


def reset_peak_rss() -> int:
    """Reset the kernel's peak-RSS counter (Linux) and return the current RSS in bytes."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    return _read_status("VmRSS:")


def peak_rss() -> int:
    return _read_status("VmHWM:")


# ---- upstream-style baseline -------------------------------------------------------------


def _baseline_layer(layer: TaggingLayer, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    sa = layer.crossattention.self
    heads = sa.num_heads

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.view(t.shape[0], t.shape[1], heads, -1).permute(0, 2, 1, 3)

    q, k, v = split(sa.query(x)), split(sa.key(e)), split(sa.value(e))
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    context = torch.matmul(scores.softmax(dim=-1), v).permute(0, 2, 1, 3).flatten(2)
    h = layer.crossattention.output(context, x)
    return layer.output(layer.intermediate(h), h)


def baseline_logits(model: RamPlus, pixels: torch.Tensor) -> torch.Tensor:
    """Upstream-style forward (same maths, upstream's loop and temporaries)."""
    e = model.image_proj(model.visual_encoder.forward_reference(pixels))  # timm's stock Swin
    bs = e.shape[0]
    cls = e[:, 0] / e[:, 0].norm(dim=-1, keepdim=True)
    d = model.config.labels.descriptions_per_tag
    weights = (model.reweight_scale.exp() * cls @ model.label_embed.t()).view(bs, -1, d).softmax(2)
    reweighted = torch.empty(bs, weights.shape[1], e.shape[-1])
    bank = model.label_embed.view(-1, d, e.shape[-1])
    for i in range(bs):  # upstream: a (tags, D, 512) product per image
        reweighted[i] = (weights[i].unsqueeze(-1) * bank).sum(dim=1)
    x = F.relu(model.wordvec_proj(reweighted))
    for layer in model.tagging_head.encoder.layer:
        x = _baseline_layer(layer, x, e)
    return model.fc(x).squeeze(-1)


# ---- measurement ------------------------------------------------------------------------


def measure(fn: Callable[[], object], repeats: int) -> list[float]:
    fn()  # warm-up (allocator, oneDNN kernels)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def agreement_pixels(size: int, images: int) -> torch.Tensor:
    """Real-ish inputs: the golden test photos and procedural scenes (ram_pp.synth), not noise."""
    from ram_pp.preprocess import DecodeOptions, Preprocessor, open_image
    from ram_pp.synth import render, sample_scene

    pre = Preprocessor(size)
    pictures = [open_image(p, DecodeOptions()) for p in sorted(GOLDEN.glob("*.[jp][pn]g"))]
    pictures += [render(sample_scene(7, "train", i), 256) for i in range(images)]
    return torch.stack([pre(p) for p in pictures[:images]])


def _baseline_step(model: RamPlus, pixels: torch.Tensor) -> object:
    with torch.inference_mode():
        return baseline_logits(model, pixels)


def interleaved(
    steps: dict[str, Callable[[], object]], repeats: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Median seconds per case and peak MB added by its first (warm-up) call, the cases run
    in rounds (A B C, A B C, ...) so that other processes' load weighs on each alike."""
    peaks: dict[str, float] = {}
    for label, fn in steps.items():
        base = reset_peak_rss()
        fn()  # warm-up (allocator, oneDNN kernels, compilation)
        peaks[label] = (peak_rss() - base) / 2**20
    times: dict[str, list[float]] = {label: [] for label in steps}
    for _ in range(repeats):
        for label, fn in steps.items():
            start = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - start)
    return {label: statistics.median(t) for label, t in times.items()}, peaks


def bf16_agreement(name: str, images: int = 8, **options: bool) -> tuple[float, float]:
    """Share of (image, tag) decisions where bf16 agrees with fp32, in the worst case.

    Random weights put every probability near 0.5, far from the thresholds, which would make
    agreement trivially perfect. So each tag's fc bias is shifted until half of the images sit
    above its threshold: every tag is then at its decision boundary.
    """
    exact = random_model(name)
    size = exact.config.vision.image_size
    pixels = agreement_pixels(size, images)
    fp32 = TaggingEngine(exact, device="cpu", dtype="float32")
    logits = fp32.run(pixels).logits
    thresholds = torch.from_numpy(exact.vocabulary.thresholds).clamp(max=0.99)
    target = torch.log(thresholds / (1 - thresholds))
    # logits = fc(h) = w.h + b for every tag at once; emulate a per-tag bias by shifting after
    shift = target - logits.quantile(0.5, dim=0)  # midway between the two middle images
    base = logits + shift
    fast = TaggingEngine(random_model(name), device="cpu", dtype="bfloat16", **options)
    low = fast.run(pixels).logits + shift
    agree = ((base > target) == (low > target)).float().mean().item()
    return agree, (torch.sigmoid(base) - torch.sigmoid(low)).abs().max().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--configs", nargs="+", default=["test_tiny_golden", "ram_plus_swin_large_14m"]
    )
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 4, 16])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--no-agreement", action="store_true")
    parser.add_argument("--cuda-batches", nargs="+", type=int, default=[64, 128, 256])
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["bfloat16", "float32"],
        # bf16 first: a bf16 engine built after the fp32 one ran about 2x slower in the same
        # process here (not explained yet; docs/model.md, "Speed")
        help="CPU precisions to time",
    )
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the engines (compile time excluded)"
    )
    parser.add_argument("--channels-last", action="store_true", help="channels-last pixels")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    options = {"compile": args.compile, "channels_last": args.channels_last}
    print(
        f"torch {torch.__version__}, {args.threads} threads, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}, "
        f"compile={args.compile}, channels_last={args.channels_last}"
    )
    header = ("config", "device", "mode", "batch", "img/s", "ms/img", "peak MB", "load 1m")
    print("{:26} {:6} {:10} {:>5} {:>9} {:>9} {:>8} {:>7}".format(*header))

    def row(name: str, device: str, mode: str, batch: int, ips: float, mb: float) -> None:
        load = os.getloadavg()[0]
        print(
            f"{name:26} {device:6} {mode:10} {batch:5d} {ips:9.3f} {1000 / ips:9.1f} {mb:8.0f}"
            f" {load:7.2f}",
            flush=True,
        )

    for name in args.configs:
        engines = {
            # a reduced-precision engine converts its model: each engine gets its own copy
            mode: TaggingEngine(random_model(name), device="cpu", dtype=mode, **options)
            for mode in args.modes
        }
        size = next(iter(engines.values())).loaded.config.vision.image_size
        baseline_model = (engines.get("float32") or TaggingEngine(random_model(name))).model
        for batch in args.batches:
            pixels = torch.randn(batch, 3, size, size)
            steps: dict[str, Callable[[], object]] = {
                mode: partial(engine.run, pixels) for mode, engine in engines.items()
            }
            if not args.no_baseline and batch == (4 if 4 in args.batches else args.batches[0]):
                steps["baseline"] = partial(_baseline_step, baseline_model, pixels)
            # one round of every case after the other, so a load change hits them all alike
            times, peaks = interleaved(steps, args.repeats)
            for label in steps:
                row(name, "cpu", label, batch, batch / times[label], peaks[label])
            if "baseline" in steps:
                ratios = ", ".join(
                    f"{mode} {times['baseline'] / times[mode]:.2f}x" for mode in engines
                )
                print(
                    f"  ratio vs upstream-style baseline at batch {batch} (same process, "
                    f"interleaved): {ratios}  [load {os.getloadavg()[0]:.2f}]"
                )
        if not args.no_agreement:
            agree, worst = bf16_agreement(name, **options)
            print(
                f"  bf16 vs fp32 decisions, real-ish images, every tag at its boundary: "
                f"{agree:.2%} agree, max |dp| {worst:.4f}"
            )
        if torch.cuda.is_available():
            for mode in ("float16", "bfloat16"):
                engine = TaggingEngine(random_model(name), device="cuda", dtype=mode, **options)
                for batch in args.cuda_batches:
                    size = engine.loaded.config.vision.image_size
                    pixels = torch.randn(batch, 3, size, size)  # host: the pinned copy counts

                    def step(engine: TaggingEngine = engine, pixels: torch.Tensor = pixels) -> None:
                        engine.run(pixels)
                        torch.cuda.synchronize()

                    torch.cuda.reset_peak_memory_stats()
                    ips = batch / statistics.median(measure(step, args.repeats))
                    row(name, "cuda", mode, batch, ips, torch.cuda.max_memory_allocated() / 2**20)


if __name__ == "__main__":
    main()
