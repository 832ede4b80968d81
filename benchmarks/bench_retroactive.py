"""Benchmark: retroactive open-set scoring over a token store (CPU, synthetic archive).

Measures, for N synthetic assets stored on disk in the token store:

- exhaustive exact scan rate (asset-concepts per second; a single-concept rate too),
- fast (query-side attention) vs plain (model head) path speed ratio, on a subset,
- two-stage latency p50/p95 for one concept (FAISS flat inner product + exact scores),
- bytes per asset for float16 and int8 token formats, and int8's logit error vs float16,
- stage-1 recall@100 against exhaustive exact scoring,
- the compute dtype (``--dtype``, default ``auto`` as the service: bf16 on CPUs with native bf16)
  and its agreement with the float32 reference (top-100 overlap, logit errors),
- time per phase (reading E, conversion, queries, attention, feed-forward, calibration) and the
  peak bound (measured GEMM rate / multiply-adds per pair).

Every figure is printed with the load average at the time (the machine is shared).

Synthetic archive (so that stage-1 recall means something): 1,000 "topics" are random unit
vectors in a 128-d subspace of the 512-d embedding space. Each asset shows 3 topics drawn with
Zipf-like popularity; each topic covers a random fraction (2-50 %) of the 144 grid tokens with a
random amplitude (0.5-2), over Gaussian noise; channel 511 carries the summed amplitude
("objectness"); token 0 is the mean token, as in RAM++. A concept is a topic: 51 descriptions,
each the topic direction plus noise. The head has the published size (hidden 768, 4 heads, FFN
3072, 2 layers, 145 tokens) with random weights, into which a detector is planted: layer-0
attention of a concept query focuses on tokens that contain the concept, the attended objectness
is read out, and ``fc`` reports it. The exact score therefore follows the concept's *peak*
strength in the image, whereas stage 1 (c . concept vector, c = normalised mean token) follows
its *average* over the image: small strong occurrences are where the two disagree, as small
objects do for a trained model.

Run: ``python benchmarks/bench_retroactive.py`` (N = 100,000, about 10 minutes on 2 busy cores);
``--n`` scales it down. The store goes to a temporary folder (``--workdir`` to choose; removed
unless ``--keep``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import torch
import torch.nn.functional as F

from indexer.retroactive import RetroactiveSearcher, recall_at_k
from indexer.token_store import TokenStore, bytes_per_asset, quantize_int8
from ram_pp.config import HeadConfig, LabelConfig, RamPlusConfig, get_config
from ram_pp.labels import LabelBank
from ram_pp.model import RamPlus
from ram_pp.openset import Int8Embeds, OpenSetScorer, concept_vectors, resolve_score_dtype

T, C, SUB = 145, 512, 128  # tokens, embedding width, topic subspace dims
N_TOPICS, TOPICS_PER_ASSET = 1000, 3
PRESENCE = 511  # the objectness channel
QUERY_RANKS = (10, 50, 200)  # popularity ranks of the query topics


class FlatIP:
    """Stage-1 candidate source: exact inner product with FAISS (IndexIDMap2 over IndexFlatIP)."""

    def __init__(self, dim: int) -> None:
        self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        self.index.add_with_ids(np.ascontiguousarray(vectors, np.float32), ids.astype(np.int64))

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(query, k)


def planted_head(
    seed: int, gain: float = 0.3, curvature: float = 0.15, anchor_bias: float = 10.0
) -> RamPlus:
    """Published-size head with random weights and a planted concept detector (module doc).

    Layer 0: the concept query r (the re-weighted descriptions) attends to the tokens e_j with
    the largest r . e_j; the values copy the tokens' 128 topic coordinates, so the attention
    output is ebar, a soft arg-max token. The feed-forward block then computes r . ebar with
    GELU pairs (gelu(z) + gelu(-z) ~ 0.8 z^2 near 0, so (r+ebar)^2 - (r-ebar)^2 ~ r . ebar) into
    a read-out unit that ``fc`` reports. Everything else keeps its random initialisation.
    """
    torch.manual_seed(seed)
    vision = get_config("test_micro").vision  # the image encoder is never run here
    cfg = RamPlusConfig(
        name="bench", vision=vision, head=HeadConfig(), labels=LabelConfig(1, 1, "ram")
    )
    m = RamPlus(cfg).eval()
    hd = cfg.head.hidden_size // cfg.head.num_heads
    idx = torch.arange(SUB)
    pos_r, neg_r, ebar = idx, SUB + idx, 2 * SUB + idx  # hidden dims holding r+, r-, ebar
    readout, anchor = 700, 701
    with torch.no_grad():
        wv = m.wordvec_proj.weight
        wv[: 2 * SUB] = 0
        wv[pos_r, idx] = 1.0  # x[i] = relu(r_i), x[128 + i] = relu(-r_i)
        wv[neg_r, idx] = -1.0
        m.wordvec_proj.bias[: 2 * SUB] = 0
        layer0 = m.tagging_head.encoder.layer[0]
        sa = layer0.crossattention.self
        for h in range(cfg.head.num_heads):
            rows = h * hd + idx
            sa.query.weight[rows] = 0
            sa.query.weight[rows, pos_r] = 200.0  # q_h[i] = 200 * r_i
            sa.query.weight[rows, neg_r] = -200.0
            sa.query.bias[rows] = 0
            sa.key.weight[rows] = 0
            sa.key.weight[rows, idx] = 1.0  # k_h[i] = e_j[i]: score = 200 * r . e_j / sqrt(d)
            sa.key.bias[rows] = 0
        sa.value.weight[idx] = 0
        sa.value.weight[idx, idx] = 1.0  # head 0 returns ebar's topic coordinates
        sa.value.bias[idx] = 0
        dense = layer0.crossattention.output.dense
        dense.weight[ebar] = 0
        dense.weight[ebar, idx] = gain
        dense.bias[ebar] = 0
        ffn_in, ffn_out = layer0.intermediate.dense, layer0.output.dense
        units = torch.arange(4 * SUB).view(4, SUB)
        ffn_in.weight[units.flatten()] = 0
        ffn_in.bias[units.flatten()] = 0
        for row, (sign_r, sign_e) in zip(units, ((1, 1), (-1, -1), (1, -1), (-1, 1)), strict=True):
            ffn_in.weight[row, pos_r] = sign_r * curvature
            ffn_in.weight[row, neg_r] = -sign_r * curvature
            ffn_in.weight[row, ebar] = sign_e * curvature / gain
        ffn_out.weight[readout] = 0
        ffn_out.weight[readout, units[:2].flatten()] = 1.0  # (r + ebar)^2 terms
        ffn_out.weight[readout, units[2:].flatten()] = -1.0  # minus (r - ebar)^2 terms
        ffn_out.weight[anchor] = 0
        ffn_out.bias[anchor] = anchor_bias  # keeps LayerNorm from erasing the read-out's scale
        m.fc.weight.mul_(0.1)
        m.fc.weight[0, readout] = 1.0
        m.fc.bias.fill_(-8.0)
    return m


class Archive:
    """Deterministic synthetic assets (module doc), generated in chunks."""

    def __init__(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        topics = rng.normal(size=(N_TOPICS, SUB)).astype(np.float32)
        self.topics = topics / np.linalg.norm(topics, axis=1, keepdims=True)
        pop = 1.0 / (np.arange(N_TOPICS) + 10.0)
        self.popularity = pop / pop.sum()
        self.noise_pool = (rng.normal(size=(1 << 16, C)) * 0.15).astype(np.float32)
        self.noise_pool[:, PRESENCE] = 0
        self.seed = seed

    def chunk(self, start: int, n: int) -> np.ndarray:
        rng = np.random.default_rng((self.seed, start))
        grid = T - 1
        e = self.noise_pool[rng.integers(0, len(self.noise_pool), size=(n, grid))]
        topic = np.stack(
            [
                rng.choice(N_TOPICS, TOPICS_PER_ASSET, replace=False, p=self.popularity)
                for _ in range(n)
            ]
        )
        amp = rng.uniform(0.5, 2.0, size=(n, TOPICS_PER_ASSET)).astype(np.float32)
        cover = rng.uniform(0.02, 0.5, size=(n, TOPICS_PER_ASSET, 1))
        mask = (rng.random((n, TOPICS_PER_ASSET, grid)) < cover).astype(np.float32)
        weight = mask * amp[:, :, None]  # (n, 3, grid)
        e[:, :, :SUB] += np.einsum("nkt,nkc->ntc", weight, self.topics[topic])
        e[:, :, PRESENCE] = weight.sum(1)
        out = np.empty((n, T, C), np.float32)
        out[:, 1:] = e
        out[:, 0] = e.mean(1)
        return out

    def concept_bank(self, topic_ids: list[int], seed: int) -> LabelBank:
        rng = np.random.default_rng(seed)
        groups = []
        for t in topic_ids:
            rows = np.zeros((51, C), np.float32)
            rows[:, :SUB] = self.topics[t] + rng.normal(size=(51, SUB)) * (0.6 / math.sqrt(SUB))
            groups.append(F.normalize(torch.from_numpy(rows), dim=-1))
        return LabelBank.from_ragged(groups)


def macs_per_asset_concept(cfg: HeadConfig, tokens: int) -> dict[str, int]:
    """Multiply-adds per (asset, concept) of the fast and plain paths (K = 1)."""
    h, c, i, heads = cfg.hidden_size, cfg.embed_dim, cfg.intermediate_size, cfg.num_heads
    shared = c * h  # wordvec_proj
    per_layer_common = h * h + h * h + 2 * h * i  # query, output dense, FFN
    fast = shared + cfg.num_layers * (per_layer_common + 2 * c * h + 2 * heads * tokens * c)
    plain = shared + cfg.num_layers * (per_layer_common + 2 * tokens * c * h + 2 * tokens * h)
    return {"fast": fast, "plain": plain}


def load() -> float:
    """1-minute load average (printed beside every figure)."""
    return round(os.getloadavg()[0], 2)


def gemm_rate(dtype: torch.dtype) -> float:
    """Measured FLOP/s of a feed-forward-shaped GEMM (4096x768 @ 768x3072) at these threads."""
    a = torch.randn(4096, 768).to(dtype)
    b = torch.randn(768, 3072).to(dtype)
    a @ b
    best = min(timed(torch.mm, a, b)[1] for _ in range(5))
    return 2 * 4096 * 768 * 3072 / best


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="synthetic assets")
    ap.add_argument("--shortlist", type=int, default=2000)
    ap.add_argument("--queries", type=int, default=9, help="two-stage queries timed")
    ap.add_argument("--plain-n", type=int, default=512, help="assets for the plain-path timing")
    ap.add_argument("--single-n", type=int, default=4096, help="assets for the 1-concept rate")
    ap.add_argument("--int8-n", type=int, default=2048, help="assets for the int8 error")
    ap.add_argument(
        "--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)"
    )
    ap.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "float32", "bfloat16"),
        help="scoring dtype of the searcher (index.score_dtype); float32 is always the reference",
    )
    ap.add_argument("--chunk", type=int, default=256, help="assets per scoring batch")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the token store")
    ap.add_argument(
        "--reuse",
        type=Path,
        default=None,
        help="a store directory kept by an earlier --keep run (the bench_retro_* folder): reuse "
        "its float16 store when it holds exactly --n assets, else build it there",
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument(
        "--scan-only",
        action="store_true",
        help="only the exhaustive-scan comparison (section 4b): the session-5 attention kernel "
        "(bmm) against the scorer's default, 1 / 3 / 8 concepts, in memory and from the store",
    )
    ap.add_argument(
        "--scan-concepts", default="1,3,8", help="concept counts of the scan comparison"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    if args.reuse is not None:
        work = args.reuse
        work.mkdir(parents=True, exist_ok=True)
        args.keep = True
    else:
        work = Path(tempfile.mkdtemp(prefix="bench_retro_", dir=args.workdir))
    dtype = resolve_score_dtype(args.dtype)
    fig: dict[str, object] = {
        "n": args.n,
        "threads": args.threads,
        "score_dtype": str(dtype).removeprefix("torch."),
        "load": os.getloadavg(),
    }
    print(
        f"N={args.n} threads={args.threads} score dtype {fig['score_dtype']} store={work} "
        f"loadavg={os.getloadavg()}"
    )
    try:
        run(args, work, fig)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(fig, indent=1, default=float))


def run(args, work: Path, fig: dict) -> None:
    model = planted_head(args.seed)
    ref = OpenSetScorer(model, asset_chunk=args.chunk)  # float32: the exact reference
    scorer = OpenSetScorer(model, dtype=resolve_score_dtype(args.dtype), asset_chunk=args.chunk)
    archive = Archive(args.seed)
    qtopics = [int(np.argsort(-archive.popularity)[r]) for r in QUERY_RANKS]
    bank = archive.concept_bank(qtopics, seed=args.seed + 1)
    names = [f"topic@rank{r}" for r in QUERY_RANKS]

    if args.scan_only:  # the store only (FAISS is not used by the exhaustive scan)
        store = build_store(args, work, archive)
        fig["scan"] = scan_comparison(args, model, store, archive)
        return

    # 1. Build the archive: float16 token store + FAISS over c.
    reuse = (work / "f16").exists() and len(TokenStore(work / "f16")) == args.n
    if not reuse:
        shutil.rmtree(work / "f16", ignore_errors=True)
    store = TokenStore(work / "f16", tokens=T, dim=C, fmt="float16")
    cands = FlatIP(C)
    t0 = time.perf_counter()
    gen_s = 0.0
    step = 2000
    if reuse:  # the kept store: only c (token 0 of the stored E) goes back into FAISS
        for ids, e in store.iter_chunks(step, dtype=np.float16):
            e0 = e[:, 0].astype(np.float32)
            cands.add(e0 / np.linalg.norm(e0, axis=1, keepdims=True), ids)
        print(f"reused the store in {work} ({len(store)} assets)")
    for start in range(0, 0 if reuse else args.n, step):
        n = min(step, args.n - start)
        e, dt = timed(archive.chunk, start, n)
        gen_s += dt
        ids = np.arange(start, start + n, dtype=np.int64)
        store.add(ids, e)
        e0 = e[:, 0].astype(np.float16).astype(np.float32)  # c from the stored E
        cands.add(e0 / np.linalg.norm(e0, axis=1, keepdims=True), ids)
    build = time.perf_counter() - t0
    disk = sum(p.stat().st_size for p in (work / "f16").glob("shard-*.bin"))
    print(f"built {args.n} assets in {build:.1f}s (generation {gen_s:.1f}s), {disk / 1e9:.2f} GB")
    fig["build_s"] = build

    # 2. Formats: bytes per asset, int8 logit error vs float16 on a subset.
    sub_ids = np.arange(min(args.int8_n, args.n))
    e16 = store.get(sub_ids)
    shutil.rmtree(work / "i8", ignore_errors=True)  # rebuilt each run (also on --reuse)
    q8 = TokenStore(work / "i8", tokens=T, dim=C, fmt="int8")
    q8.add(sub_ids, e16)
    l16 = ref.logits(e16, bank).numpy()
    l8 = ref.logits(q8.get(sub_ids), bank).numpy()
    err = np.abs(l8 - l16)
    fig["bytes_per_asset"] = {
        "float16": bytes_per_asset("float16"),
        "int8": bytes_per_asset("int8"),
    }
    fig["int8_logit_err"] = {"max": float(err.max()), "mean": float(err.mean())}
    fig["int8_top100_overlap"] = float(
        np.mean(
            [
                recall_at_k(np.argsort(-l8[:, k]), np.argsort(-l16[:, k]), 100)
                for k in range(bank.num_tags)
            ]
        )
    )
    print(
        f"bytes/asset: float16 {bytes_per_asset('float16')}, int8 {bytes_per_asset('int8')}; "
        f"int8 logit error vs float16 over {len(sub_ids)} assets x {bank.num_tags} concepts: "
        f"max {err.max():.4f}, mean {err.mean():.5f}; logit std {l16.std():.3f}; "
        f"top-100 overlap {fig['int8_top100_overlap']:.3f} (float32 compute) [load {load()}]"
    )

    # 2b. Compute dtype vs the float32 reference on the same float16 E.
    lfast = scorer.logits(e16, bank).numpy()
    ferr = np.abs(lfast - l16)
    overlap = float(
        np.mean(
            [
                recall_at_k(np.argsort(-lfast[:, k]), np.argsort(-l16[:, k]), 100)
                for k in range(bank.num_tags)
            ]
        )
    )
    fig["dtype_agreement"] = {
        "dtype": fig["score_dtype"],
        "assets": len(sub_ids),
        "top100_overlap": overlap,
        "max_logit_err": float(ferr.max()),
        "mean_logit_err": float(ferr.mean()),
        "logit_std": float(l16.std()),
        "load": load(),
    }
    print(
        f"{fig['score_dtype']} vs float32 over {len(sub_ids)} assets x {bank.num_tags} concepts: "
        f"top-100 overlap {overlap:.3f}, max logit error {ferr.max():.4f}, mean "
        f"{ferr.mean():.5f} (logit std {l16.std():.3f}) [load {load()}]"
    )
    del e16

    # 3. Fast vs plain on the same subset (one concept).
    one = bank.select(slice(0, 1))
    e_plain = store.get(np.arange(min(args.plain_n, args.n)))
    ref.logits(e_plain[:8], one)  # warm-up
    t_fast = t_plain = float("inf")
    for _ in range(3):  # interleaved, best of 3: the machine is shared
        fast_l, dt = timed(ref.logits, e_plain, one)
        t_fast = min(t_fast, dt)
        plain_l, dt = timed(ref.logits, e_plain, one, "plain")
        t_plain = min(t_plain, dt)
    diff = float((fast_l - plain_l).abs().max())
    macs = macs_per_asset_concept(model.config.head, T)
    fig["fast_vs_plain"] = {
        "assets": len(e_plain),
        "fast_assets_s": len(e_plain) / t_fast,
        "plain_assets_s": len(e_plain) / t_plain,
        "ratio": t_plain / t_fast,
        "max_abs_diff": diff,
        "macs": macs,
        "macs_ratio": macs["plain"] / macs["fast"],
        "load": load(),
    }
    print(
        f"fast vs plain, float32 ({len(e_plain)} assets, 1 concept): fast "
        f"{len(e_plain) / t_fast:.0f}/s, plain {len(e_plain) / t_plain:.0f}/s, ratio "
        f"{t_plain / t_fast:.1f}x (multiply-adds {macs['fast'] / 1e6:.1f}M vs "
        f"{macs['plain'] / 1e6:.1f}M per asset, {macs['plain'] / macs['fast']:.1f}x); "
        f"max |diff| {diff:.2e} [load {load()}]"
    )
    del e_plain

    # 3b. In memory, compute dtype: one concept, all query concepts, and the peak bound.
    n_mem = min(args.single_n, args.n)
    e_mem = scorer.to_compute(store.get(np.arange(n_mem), dtype=np.float16))
    scorer.logits(e_mem[: args.chunk], bank)  # warm-up
    t_one = min(timed(scorer.logits, e_mem, one)[1] for _ in range(2))
    t_all = min(timed(scorer.logits, e_mem, bank)[1] for _ in range(2))
    rate = gemm_rate(scorer.dtype)
    bound = rate / (2 * macs["fast"])
    fig["in_memory"] = {
        "assets": n_mem,
        "single_concept_assets_s": n_mem / t_one,
        "asset_concepts_s": n_mem * bank.num_tags / t_all,
        "concepts": bank.num_tags,
        "gemm_flop_s": rate,
        "peak_bound_asset_concepts_s": bound,
        "load": load(),
    }
    print(
        f"in memory ({fig['score_dtype']}, E already converted, {n_mem} assets): 1 concept "
        f"{n_mem / t_one:.0f} assets/s, {bank.num_tags} concepts "
        f"{n_mem * bank.num_tags / t_all:.0f} asset-concepts/s; peak bound: GEMM "
        f"{rate / 1e9:.0f} GFLOP/s / {2 * macs['fast'] / 1e6:.1f} MFLOP per pair = "
        f"{bound:.0f} asset-concepts/s [load {load()}]"
    )
    del e_mem

    # 4. Exhaustive exact scan over the whole store (all query concepts in one pass).
    searcher = RetroactiveSearcher(scorer, store, cands, shortlist=args.shortlist)
    n1 = min(args.single_n, args.n)
    for _, e in itertools.islice(store.iter_chunks(searcher.chunk, dtype=np.float16), 2):
        scorer.logits(e, bank)  # warm-up: the GEMM primitives for these shapes
    single_chunks = itertools.islice(
        store.iter_chunks(searcher.chunk, dtype=np.float16), math.ceil(n1 / searcher.chunk)
    )
    single, t_single = timed(lambda: [s for _, s in scorer.stream(single_chunks, one)])
    n1c = sum(len(s) for s in single)
    exh, t_exh = timed(searcher.search, bank, names, top_k=100, mode="exhaustive", calibrate=False)
    rate = args.n * bank.num_tags / t_exh
    fig["exhaustive"] = {
        "seconds": t_exh,
        "concepts": bank.num_tags,
        "asset_concepts_s": rate,
        "single_concept_assets_s": n1c / t_single,
        "load": load(),
    }
    print(
        f"exhaustive scan: {args.n} assets x {bank.num_tags} concepts in {t_exh:.1f}s = "
        f"{rate:.0f} asset-concepts/s; one concept alone: {n1c / t_single:.0f} assets/s "
        f"(over {n1c} assets, read from the store) [load {load()}]"
    )

    # 5. Calibration (cost, then cached) and two-stage latency.
    cal, t_cal = timed(searcher.calibrate, bank)
    fig["calibration_s"] = t_cal  # first call: reads the background sample, then scores it
    searcher._calibrations.clear()
    _, t_cal_hot = timed(searcher.calibrate, bank)
    fig["calibration_hot_s"] = t_cal_hot  # background already in memory (later new concepts)
    fig["thresholds"] = {n: c.threshold for n, c in zip(names, cal, strict=True)}
    lat, s1, s2, recalls = [], [], [], {}
    for q in range(max(args.queries, bank.num_tags)):
        k = q % bank.num_tags
        res, dt = timed(searcher.search, bank.select(slice(k, k + 1)), [names[k]], top_k=100)
        lat.append(dt)
        s1.append(res[0].timings["stage1"])
        s2.append(res[0].timings["stage2"])
        recalls[names[k]] = recall_at_k(res[0].ids, exh[k].ids, 100)
    p50, p95 = np.percentile(lat, [50, 95])
    fresh = []  # a new concept each time: pays its calibration (hot background) too
    for q in range(max(args.queries, bank.num_tags)):
        k = q % bank.num_tags
        searcher._calibrations.clear()
        fresh.append(timed(searcher.search, bank.select(slice(k, k + 1)), [names[k]])[1])
    f50, f95 = np.percentile(fresh, [50, 95])
    fig["two_stage"] = {
        "shortlist": args.shortlist,
        "p50_s": p50,
        "p95_s": p95,
        "stage1_median_s": float(np.median(s1)),
        "stage2_median_s": float(np.median(s2)),
        "recall_at_100": recalls,
        "new_concept_p50_s": f50,
        "new_concept_p95_s": f95,
        "load": load(),
    }
    fig["two_stage"]["final_top100_vs_float32"] = final_agreement(searcher, ref, bank, names)
    fig["phases"] = stage2_phases(searcher, bank.select(slice(0, 1)), cands, vectors_of(bank))
    print(
        f"calibration: {t_cal:.2f}s for {bank.num_tags} concepts (first, reads the background), "
        f"{t_cal_hot:.3f}s with the background in memory; thresholds "
        + ", ".join(f"{n} p>{c.threshold:.3f} ({c.rule})" for n, c in zip(names, cal, strict=True))
    )
    print(
        f"two-stage (shortlist {args.shortlist}, top 100), {len(lat)} queries: p50 {p50:.3f}s, "
        f"p95 {p95:.3f}s (stage 1 median {np.median(s1) * 1e3:.1f} ms, "
        f"stage 2 median {np.median(s2):.3f}s); a new concept each time (its calibration "
        f"included): p50 {f50:.3f}s, p95 {f95:.3f}s [load {load()}]"
    )
    fa = fig["two_stage"]["final_top100_vs_float32"]
    print(
        f"two-stage results vs a float32 searcher (same shortlist, top 100): overlap "
        f"{fa['overlap']:.3f}, max logit difference {fa['max_logit_err']:.2e} [load {fa['load']}]"
    )
    fig["int8_two_stage"] = int8_agreement(searcher, ref, bank, names)
    i8 = fig["int8_two_stage"]
    print(
        f"int8 E (quantized shortlist) straight into {fig['score_dtype']}, float32 head "
        f"re-scored, vs the float16 searcher (top 100): overlap {i8['overlap']:.3f} (min "
        f"{i8['min_overlap']:.3f}), max logit difference {i8['max_logit_err']:.3f}; scoring "
        f"{i8['shortlist']} assets: int8 {i8['score_int8_s']:.3f}s (convert "
        f"{i8['convert_int8_s'] * 1e3:.0f} ms) vs float16 {i8['score_float16_s']:.3f}s (convert "
        f"{i8['convert_float16_s'] * 1e3:.0f} ms) [load {i8['load']}]"
    )
    ph = fig["phases"]
    print(
        "stage 2 phases for one concept over the shortlist (ms): "
        + ", ".join(f"{k} {v * 1e3:.1f}" for k, v in ph.items() if k != "load")
        + f" [load {ph['load']}]"
    )
    for name, k in zip(names, range(bank.num_tags), strict=True):
        positives = int(
            sum(
                (archive_has_topic(archive, start, min(2000, args.n - start), qtopics[k]))
                for start in range(0, args.n, 2000)
            )
        )
        print(
            f"  {name}: in {positives} assets; stage-1 recall@100 vs exhaustive "
            f"{recalls[name]:.2f}; hits above threshold in exhaustive top 100: "
            f"{int(exh[k].hits.sum())}"
        )
    sweep = {}
    vectors = concept_vectors(bank).numpy()
    for size in (250, 500, 1000, 2000, 5000, 10000, 20000):
        if size > args.n:
            break
        found = [cands.search(vectors[k : k + 1], size)[1][0] for k in range(bank.num_tags)]
        sweep[size] = [float(np.isin(exh[k].ids, found[k]).mean()) for k in range(bank.num_tags)]
    fig["recall_vs_shortlist"] = sweep
    print("stage-1 recall@100 by shortlist size (per concept, stage 1 only):")
    for size, values in sweep.items():
        print(f"  {size:6d}: " + "  ".join(f"{v:.2f}" for v in values))
    mean_recall = float(np.mean(list(recalls.values())))
    fig["recall_at_100_mean"] = mean_recall
    print(f"mean stage-1 recall@100: {mean_recall:.3f}")


SCAN_RANKS = (10, 50, 200, 5, 20, 100, 300, 400)  # query topics of the scan comparison


def build_store(args, work: Path, archive: Archive) -> TokenStore:
    """The float16 token store of ``args.n`` synthetic assets (reused when it holds them)."""
    reuse = (work / "f16").exists() and len(TokenStore(work / "f16")) == args.n
    if not reuse:
        shutil.rmtree(work / "f16", ignore_errors=True)
    store = TokenStore(work / "f16", tokens=T, dim=C, fmt="float16")
    t0 = time.perf_counter()
    for start in range(0, 0 if reuse else args.n, 2000):
        n = min(2000, args.n - start)
        store.add(np.arange(start, start + n, dtype=np.int64), archive.chunk(start, n))
    print(
        f"store of {len(store)} assets ({'reused' if reuse else 'built'}, "
        f"{time.perf_counter() - t0:.1f}s) [load {load()}]"
    )
    return store


def scan_comparison(args, model: RamPlus, store: TokenStore, archive: Archive) -> dict[str, object]:
    """Exhaustive exact scan: the session-5 kernel (``attention="bmm"``: scores and the
    weighted sum as two batched products over the whole chunk) against the scorer's default
    (``auto``), same dtype, side by side in this process, for 1 / 3 / 8 concepts; E in memory
    (already in the compute dtype) and streamed from the store (the searcher's exhaustive
    mode). Also the default's time per phase in memory."""
    dtype = resolve_score_dtype(args.dtype)
    kernels = {
        "bmm (session 5)": OpenSetScorer(
            model, dtype=dtype, asset_chunk=args.chunk, attention="bmm"
        ),
        "default": OpenSetScorer(model, dtype=dtype, asset_chunk=args.chunk),
    }
    new = kernels["default"]
    rate = gemm_rate(dtype)
    macs = macs_per_asset_concept(model.config.head, T)["fast"]
    bound = rate / (2 * macs)
    print(
        f"scan comparison: dtype {dtype}, default attention kernel {new.attention!r}; "
        f"peak bound: GEMM {rate / 1e9:.0f} GFLOP/s / {2 * macs / 1e6:.1f} MFLOP per pair = "
        f"{bound:.0f} asset-concepts/s [load {load()}]"
    )
    pop = np.argsort(-archive.popularity)
    counts = [int(c) for c in args.scan_concepts.split(",")]
    full = archive.concept_bank([int(pop[r]) for r in SCAN_RANKS[: max(counts)]], args.seed + 1)
    n_mem = min(args.single_n, len(store))
    e_mem = new.to_compute(store.get(np.arange(n_mem), dtype=np.float16))
    out: dict[str, object] = {
        "dtype": str(dtype),
        "kernel": new.attention,
        "gemm_flop_s": rate,
        "peak_bound_asset_concepts_s": bound,
        "in_memory": {},
    }
    for k in counts:
        bank = full.select(slice(0, k))
        for sc in kernels.values():
            sc.logits(e_mem[: args.chunk], bank)  # warm-up: primitives for these shapes
        best = dict.fromkeys(kernels, float("inf"))
        for _ in range(2):  # interleaved, best of 2: the machine is shared
            for name, sc in kernels.items():
                best[name] = min(best[name], timed(sc.logits, e_mem, bank)[1])
        diff = float(
            (kernels["bmm (session 5)"].logits(e_mem[:256], bank) - new.logits(e_mem[:256], bank))
            .abs()
            .max()
        )
        rates = {name: n_mem * k / t for name, t in best.items()}
        out["in_memory"][k] = {**rates, "max_abs_diff": diff, "load": load()}
        print(
            f"  in memory, {n_mem} assets x {k} concepts: "
            + ", ".join(f"{name} {r:.0f}" for name, r in rates.items())
            + f" asset-concepts/s; ratio {rates['default'] / rates['bmm (session 5)']:.2f}x; "
            f"max |diff| {diff:.1e} [load {load()}]"
        )
        for name, sc in kernels.items():
            sc.profile = {}
            sc.logits(e_mem, bank)
            prof, sc.profile = sc.profile, None
            total = sum(prof.values())
            per_pair = {p: v * 1e6 / (n_mem * k) for p, v in prof.items()}
            out["in_memory"][k][f"phases_us_per_pair {name}"] = per_pair
            print(
                f"    phases, {name} (us per asset-concept, share): "
                + ", ".join(
                    f"{p} {per_pair[p]:.1f} ({100 * v / total:.0f}%)" for p, v in prof.items()
                )
                + f" [load {load()}]"
            )
    del e_mem
    out["from_store"] = {}
    t0 = time.perf_counter()  # reading alone (and the page cache warmed for the runs below)
    for _ in store.iter_chunks(192, dtype=np.float16):
        pass
    read_s = time.perf_counter() - t0
    out["read_only_assets_s"] = len(store) / read_s
    print(
        f"  reading the store alone (float16, 192-record chunks): {len(store) / read_s:.0f} "
        f"assets/s ({len(store) * bytes_per_asset('float16') / read_s / 1e9:.2f} GB/s) "
        f"[load {load()}]"
    )
    for k in counts:
        bank = full.select(slice(0, k))
        rates = {}
        phases = {}
        for name, sc in kernels.items():
            searcher = RetroactiveSearcher(sc, store, None)
            sc.profile = {}  # scoring thread only; the reads run on the reader thread
            _, t = timed(searcher.search, bank, top_k=100, mode="exhaustive", calibrate=False)
            phases[name], sc.profile = sc.profile, None
            rates[name] = len(store) * k / t
        out["from_store"][k] = {**rates, "phases_s": phases, "load": load()}
        print(
            f"  from the store (exhaustive search, {len(store)} assets x {k} concepts): "
            + ", ".join(f"{name} {r:.0f}" for name, r in rates.items())
            + f" asset-concepts/s; ratio {rates['default'] / rates['bmm (session 5)']:.2f}x "
            f"[load {load()}]"
        )
        for name, prof in phases.items():
            print(f"    phases, {name} (s): " + ", ".join(f"{p} {v:.2f}" for p, v in prof.items()))
    return out


def vectors_of(bank: LabelBank) -> np.ndarray:
    """Stage-1 query vectors (K, 512) float32."""
    return concept_vectors(bank).numpy()


def final_agreement(
    searcher: RetroactiveSearcher, ref: OpenSetScorer, bank: LabelBank, names: list[str]
) -> dict[str, float]:
    """Top-100 of the searcher (its dtype, head re-scored) vs a float32 searcher, per concept."""
    exact = RetroactiveSearcher(ref, searcher.store, searcher.candidates, searcher.shortlist)
    overlaps, errs = [], []
    for k in range(bank.num_tags):
        one = bank.select(slice(k, k + 1))
        a = searcher.search(one, [names[k]], top_k=100, calibrate=False)[0]
        b = exact.search(one, [names[k]], top_k=100, calibrate=False)[0]
        overlaps.append(recall_at_k(a.ids, b.ids, 100))
        common, ia, ib = np.intersect1d(a.ids, b.ids, return_indices=True)
        errs.append(float(np.abs(a.logits[ia] - b.logits[ib]).max()) if len(common) else 0.0)
    return {"overlap": float(np.mean(overlaps)), "max_logit_err": max(errs), "load": load()}


def int8_agreement(
    searcher: RetroactiveSearcher, ref: OpenSetScorer, bank: LabelBank, names: list[str]
) -> dict[str, float]:
    """Each concept's two-stage ranking with its shortlist's E quantized to int8 (as an int8
    store would hold it) and scored straight from int8 (bf16 buffer, float32 re-scoring of the
    head from the same int8 E), against the float16 searcher's final top 100."""
    scorer = searcher.scorer
    head = searcher.exact_top + searcher.exact_margin
    overlaps, errs = [], []
    t = {"score_int8_s": 0.0, "score_float16_s": 0.0, "convert_int8_s": 0.0}
    t["convert_float16_s"] = 0.0
    for k in range(bank.num_tags):
        one = bank.select(slice(k, k + 1))
        want = searcher.search(one, [names[k]], top_k=100, calibrate=False)[0]
        cand = searcher._stage1(one, searcher.shortlist)
        cand = cand[searcher.store.storage_order(cand)]
        e16 = searcher.store.get(cand, dtype=np.float16)
        e8 = Int8Embeds.from_numpy(*quantize_int8(e16))
        got = {}
        for name, e in (("int8", e8), ("float16", e16)):
            scorer.profile = {}
            got[name], dt = timed(scorer.logits, e, one)
            t[f"score_{name}_s"] += dt / bank.num_tags
            t[f"convert_{name}_s"] += scorer.profile.get("convert", 0.0) / bank.num_tags
        scorer.profile = None
        order = np.argsort(-got["int8"][:, 0].numpy(), kind="stable")
        top = np.sort(order[:head])  # re-score the head in float32 from the same int8 E
        sel = torch.from_numpy(top)
        exact = ref.logits(Int8Embeds(e8.q[sel], e8.scale[sel]), one)[:, 0].numpy()
        best = np.argsort(-exact, kind="stable")[:100]
        got_ids, got_logits = cand[top[best]], exact[best]
        overlaps.append(recall_at_k(got_ids, want.ids, 100))
        common, ia, ib = np.intersect1d(got_ids, want.ids, return_indices=True)
        errs.append(float(np.abs(got_logits[ia] - want.logits[ib]).max()) if len(common) else 0.0)
    return {
        "shortlist": searcher.shortlist,
        "overlap": float(np.mean(overlaps)),
        "min_overlap": float(np.min(overlaps)),
        "max_logit_err": max(errs),
        **t,
        "load": load(),
    }


def stage2_phases(
    searcher: RetroactiveSearcher, concept: LabelBank, cands: FlatIP, vectors: np.ndarray
) -> dict[str, float]:
    """Seconds per phase of one two-stage query, each phase run on its own (no overlap)."""
    _, cand = cands.search(vectors[:1], searcher.shortlist)
    cand = cand[0][cand[0] >= 0]
    store, scorer = searcher.store, searcher.scorer
    t0 = time.perf_counter()
    ordered = cand[store.storage_order(cand)]
    embeds = store.get(ordered, dtype=np.float16)
    t_read = time.perf_counter() - t0
    scorer.profile = {}
    scorer.logits(embeds, concept)
    prof, scorer.profile = scorer.profile, None
    searcher._calibrations.clear()
    _, t_cal = timed(searcher.calibrate, concept)
    out = {"read_E": t_read}
    out.update(prof)
    out["calibration"] = t_cal
    out["load"] = load()
    return out


def archive_has_topic(archive: Archive, start: int, n: int, topic: int) -> int:
    """How many assets of a chunk show a topic (regenerates the chunk's topic draw only)."""
    rng = np.random.default_rng((archive.seed, start))
    rng.integers(0, len(archive.noise_pool), size=(n, T - 1))  # same draws as Archive.chunk
    count = 0
    for _ in range(n):
        picks = rng.choice(N_TOPICS, TOPICS_PER_ASSET, replace=False, p=archive.popularity)
        count += int(topic in picks)
    return count


if __name__ == "__main__":
    main()
