"""Benchmark: training throughput of the demo model (``ramdex train --preset demo``'s step).

Runs the preset's training step (forward, the three losses, backward, AdamW) on batches of
synthetic images, two ways side by side in one process:

* **cached** (what training does): rendered images are kept as uint8 after their first use, so
  epochs after the first read them from memory;
* **baseline**: every image is rendered again each time it is used (what a plain on-the-fly
  data set does).

Prints per-step latency percentiles, images per second, the ratio, the share of a step spent
producing its pixels, and peak resident memory.

    python benchmarks/bench_train.py                 # 30 steps of batch 64 each way
    python benchmarks/bench_train.py --steps 60 --threads 2
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

from ram_pp import synth
from ram_pp.preprocess import Preprocessor
from ram_pp.train import (
    SYNTH_CACHE_BYTES,
    SynthImages,
    _losses,
    build_label_bank,
    load_encoder,
    model_config_for,
    preset,
)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cfg = preset("demo")
    n = args.steps * args.batch
    spec = synth.SynthSpec(seed=0, n_train=n, n_val=0, n_test=0)
    scenes = [s for _, s in synth.iter_split(spec, "train")]
    encoder = load_encoder("minilm")
    model_cfg = model_config_for(cfg, len(synth.TAGS), 6)
    from ram_pp.model import RamPlus

    model = RamPlus(model_cfg)
    bank = build_label_bank(encoder, [synth.tag_descriptions(t) for t in synth.TAGS], 6)
    with torch.no_grad():
        model.label_embed.copy_(bank)
    targets = torch.zeros(n, len(synth.TAGS))
    for i, scene in enumerate(scenes):
        for tag in scene.tags():
            targets[i, synth.TAGS.index(tag)] = 1.0
    captions = encoder.encode([s.caption for s in scenes])
    caption_ids = torch.arange(n)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    pre = Preprocessor(model_cfg.vision.image_size, model_cfg.mean, model_cfg.std)

    def run(images: SynthImages, label: str) -> tuple[list[float], list[float]]:
        steps, pixel_times = [], []
        for s in range(args.steps):
            idx = torch.arange(s * args.batch, (s + 1) * args.batch)
            t0 = time.perf_counter()
            pixels = torch.stack([images[int(i)][0] for i in idx])
            t1 = time.perf_counter()
            parts = _losses(model, cfg, pixels, targets[idx], captions[idx], caption_ids[idx])
            optimizer.zero_grad(set_to_none=True)
            parts["loss"].backward()
            optimizer.step()
            steps.append(time.perf_counter() - t0)
            pixel_times.append(t1 - t0)
        print(
            f"{label:>9}: step p50 {statistics.median(steps) * 1e3:.0f} ms, "
            f"p95 {_percentile(steps, 0.95) * 1e3:.0f} ms, "
            f"{args.batch / statistics.mean(steps):.1f} img/s, "
            f"pixels {100 * sum(pixel_times) / sum(steps):.0f}% of the step"
        )
        return steps, pixel_times

    model.train()
    cached = SynthImages(scenes, spec.image_size, pre)
    for i in range(n):  # the first epoch fills the cache; later epochs are what is measured
        cached[i]
    baseline = SynthImages(scenes, spec.image_size, pre)
    baseline._pixels = None  # no cache: render on every read
    run(cached, "warm-up")
    fast, _ = run(cached, "cached")
    slow, _ = run(baseline, "baseline")
    ratio = statistics.median(slow) / statistics.median(fast)
    print(f"ratio (baseline step / cached step, median): {ratio:.2f}x")
    cache_mb = n * spec.image_size**2 * 3 / 2**20
    preset_gb = 48000 * spec.image_size**2 * 3 / 2**30
    print(
        f"cache: {cache_mb:.0f} MB for {n} images (48,000 in the preset: {preset_gb:.1f} GB; "
        f"limit {SYNTH_CACHE_BYTES / 2**30:.0f} GB)"
    )
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
