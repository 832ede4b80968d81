"""Benchmark: a new concept's descriptions through the CLIP text tower, fast path vs plain.

A free-text concept is encoded as 31 texts (the base description and the 30 prompt templates).
The plain path is the model's own forward pass over the batch padded to its longest text; the
fast path (``ram_pp/clip_prefix.py``) packs the tokens, reuses the templates' prefixes' keys and
values and runs the last layer at the pooled token only; "fast bf16" is the fast path with its
dense layers in bf16 (``RAMDEX_MODEL__TEXT_DTYPE=bfloat16``). All run a random text tower of the
published size (``openai/clip-vit-base-patch16``: width 512, 12 layers, 8 heads) whose
tokenizer makes the templates' words one token each, as CLIP's BPE does. Prints the median
milliseconds per concept for each name, the ratio, the largest difference between the paths and
the load average.

    python benchmarks/bench_text_encoder.py
    python benchmarks/bench_text_encoder.py --repeats 21 --names "red kite,khinkali"
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import tempfile
import time
from pathlib import Path

import torch

DEFAULT_NAMES = "red kite,brutalist stairwell,foggy harbour a1b2c3 17 0.123456"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--names", default=DEFAULT_NAMES, help="comma-separated concept names")
    parser.add_argument("--repeats", type=int, default=11, help="timed encodings per path")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from ram_pp.concepts import PROMPT_TEMPLATES, TEMPLATE_PREFIXES, make_concept
    from ram_pp.text_encoder import ClipTextEncoder, build_clip_size_text_encoder, load_text_encoder

    words = set(re.findall(r"[a-z]+", " ".join(PROMPT_TEMPLATES).lower()))
    words |= {w for n in args.names.split(",") for w in re.findall(r"[a-z]+", n.lower())}
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_clip_size_text_encoder(Path(tmp) / "clip", words=sorted(words))
        fast = load_text_encoder(folder)
    assert isinstance(fast, ClipTextEncoder)
    plain = ClipTextEncoder(fast.model, fast.tokenizer, "plain", fast=False)
    low = ClipTextEncoder(fast.model, fast.tokenizer, "bf16", dtype="bfloat16")
    started = time.perf_counter()
    fast.share_prefixes(TEMPLATE_PREFIXES)
    prefix_ms = (time.perf_counter() - started) * 1000
    low.share_prefixes(TEMPLATE_PREFIXES)
    print(
        f"text tower: width {fast.model.config.hidden_size}, {fast.model.config.num_hidden_layers}"
        f" layers; {torch.get_num_threads()} threads; {len(TEMPLATE_PREFIXES)} template prefixes"
        f" cached in {prefix_ms:.0f} ms (once per process)"
    )
    for name in args.names.split(","):
        texts = list(make_concept(name.strip()).descriptions)
        tokens = [len(t) for t in fast.tokenizer(texts)["input_ids"]]
        reference = plain.encode(texts)
        diff = float((fast.encode(texts) - reference).abs().max())
        cosine = float((low.encode(texts) * reference).sum(-1).min())
        load = os.getloadavg()
        medians = {}
        for label, encoder in (("plain", plain), ("fast", fast), ("bf16", low)):
            times = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                encoder.encode(texts)
                times.append((time.perf_counter() - started) * 1000)
            medians[label] = statistics.median(times)
        print(
            f"{name!r:38} {len(texts)} texts, {statistics.mean(tokens):.1f} tokens/text "
            f"(max {max(tokens)}): plain {medians['plain']:6.1f} ms, fast {medians['fast']:6.1f}"
            f" ms, {medians['plain'] / medians['fast']:.2f}x; max |fast - plain| {diff:.1e}; "
            f"fast bf16 {medians['bf16']:6.1f} ms, {medians['plain'] / medians['bf16']:.2f}x, "
            f"min cosine to float32 {cosine:.5f}  (load {load[0]:.2f} -> {os.getloadavg()[0]:.2f})"
        )


if __name__ == "__main__":
    main()
