"""Benchmark: stage-1 recall of retroactive concept search, each stage-1 method side by side.

Stage 1 (:mod:`indexer.stage1`) turns a concept into query vectors against the stored unit-norm
image embeddings c and returns a shortlist; stage 2 scores the shortlist exactly. The figure that
matters is recall@100: the fraction of the exhaustive exact top 100 (RAM++ head over every asset)
that the shortlist contains, since stage 2 then ranks exactly those.

Two data sources, both with the exact scores of every asset computed once:

- ``synthetic``: the archive and planted published-size head of ``bench_retroactive.py`` (its
  generators are imported by name, not copied): 100,000 assets, query topics at popularity ranks
  10, 50, 200 (the issue's figures) plus ranks 25 and 100 as a check against over-fitting.
- ``demo``: the bundled demo model on its procedural test split (``ram_pp/synth.py``), held-out
  concepts only (never trained), each encoded twice: with its written descriptions
  (``demo-desc``) and as a free-text query by name with ramdex's prompt templates
  (``demo-tmpl``). The shortlist is scaled to the same fraction of the archive as 2,000 of
  100,000.

Building the exact scores is the slow part (about 7 minutes for the synthetic 100,000 on two busy
cores), so it is cached under ``--cache`` in parts and resumed: run ``--build-only`` under the
bench lock until it says done, then the comparison takes seconds. Latency is stage 1 alone
(``indexer.stage1.shortlist``) against the service's own :class:`indexer.faiss_index.VectorIndex`
(flat, and IVF-PQ with ``--ivf``), median of repeated calls, load average printed beside it.

Run: ``flock /tmp/ramdex-bench.lock python benchmarks/bench_stage1.py [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_retroactive, run as a script
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_retroactive as retro  # noqa: E402

from indexer.faiss_index import VectorIndex  # noqa: E402
from indexer.stage1 import (  # noqa: E402
    METHODS,
    AdaptiveRule,
    adaptive_scores,
    ranked_candidates,
    shortlist,
)
from ram_pp.labels import LabelBank  # noqa: E402
from ram_pp.openset import OpenSetScorer  # noqa: E402

SYNTH_RANKS = (10, 50, 200, 25, 100)  # the three first, then two checks
PART = 10_000  # assets per cached part


@dataclass
class Source:
    """An archive's c vectors, its concepts and every asset's exact logit for each concept."""

    name: str
    c: np.ndarray  # (N, d) float32 unit-norm
    names: list[str]
    bank: LabelBank  # K concepts (ragged)
    exact: np.ndarray  # (N, K) float32 exact RAM++ logits

    def truth(self, k: int, top: int = 100) -> np.ndarray:
        """Asset ids (= row numbers) of the exact top ``top`` of concept ``k``."""
        return np.argsort(-self.exact[:, k], kind="stable")[:top]


class Exact:
    """Stand-in candidate source: exact inner product over every c (numpy, for recall)."""

    def __init__(self, c: np.ndarray) -> None:
        self.index = faiss.IndexFlatIP(c.shape[1])
        self.index.add(np.ascontiguousarray(c, np.float32))

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(np.ascontiguousarray(query, np.float32), k)


class AllStored:
    """Token-store stand-in for recall runs: every id is stored."""

    def has(self, ids: np.ndarray) -> np.ndarray:
        return np.ones(len(ids), dtype=bool)


# -- data sources ------------------------------------------------------------------------------


def _bank_arrays(bank: LabelBank) -> tuple[np.ndarray, np.ndarray]:
    rows = bank.embeddings.float().numpy()
    counts = (
        bank.mask.sum(1).numpy() if bank.mask is not None else np.full(bank.num_tags, rows.shape[1])
    )
    return rows, counts


def _bank_from(rows: np.ndarray, counts: np.ndarray) -> LabelBank:
    return LabelBank.from_ragged([torch.from_numpy(rows[k, :n]) for k, n in enumerate(counts)])


def _build_parts(
    folder: Path,
    n: int,
    make: callable,
    budget_s: float,
) -> bool:
    """Compute missing parts ``(c, exact)`` of ``n`` assets with ``make(start, count)``; stop
    after ``budget_s`` seconds. Returns whether every part exists."""
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for start in range(0, n, PART):
        path = folder / f"part-{start:07d}.npz"
        if path.exists():
            continue
        if time.perf_counter() - t0 > budget_s:
            return False
        c, exact = make(start, min(PART, n - start))
        np.savez(path, c=c, exact=exact)
        print(f"  {folder.name}: part {start} done ({time.perf_counter() - t0:.0f}s)", flush=True)
    return True


def _load_parts(folder: Path, n: int) -> tuple[np.ndarray, np.ndarray]:
    parts = [np.load(folder / f"part-{s:07d}.npz") for s in range(0, n, PART)]
    return np.concatenate([p["c"] for p in parts]), np.concatenate([p["exact"] for p in parts])


def synthetic_source(cache: Path, n: int, seed: int, budget_s: float) -> Source | None:
    """bench_retroactive's archive and planted head (None until every part is cached)."""
    archive = retro.Archive(seed)
    order = np.argsort(-archive.popularity)
    topics = [int(order[r]) for r in SYNTH_RANKS]
    bank = archive.concept_bank(topics, seed=seed + 1)
    scorer = OpenSetScorer(retro.planted_head(seed), asset_chunk=1024)

    def make(start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        cs, ex = [], []
        for s in range(start, start + count, 2000):
            e = archive.chunk(s, min(2000, start + count - s))
            e16 = e.astype(np.float16)  # what the token store keeps and stage 2 reads
            c = e16[:, 0].astype(np.float32)
            cs.append(c / np.linalg.norm(c, axis=1, keepdims=True))
            ex.append(scorer.logits(e16, bank).numpy())
        return np.concatenate(cs), np.concatenate(ex)

    folder = cache / f"synthetic-n{n}-s{seed}"
    if not _build_parts(folder, n, make, budget_s):
        return None
    c, exact = _load_parts(folder, n)
    names = [f"topic@rank{r}" for r in SYNTH_RANKS]
    return Source("synthetic", c, names, bank, exact)


def demo_sources(cache: Path, n: int, budget_s: float) -> list[Source] | None:
    """The demo model on its test split: held-out concepts with descriptions / templates."""
    from ram_pp import synth
    from ram_pp.concepts import Concept, encode_concepts, make_concept
    from ram_pp.factory import demo_checkpoint, load_model
    from ram_pp.preprocess import Preprocessor
    from ram_pp.text_encoder import load_text_encoder

    loaded = load_model(demo_checkpoint())
    model = loaded.model.float().eval()
    encoder = load_text_encoder(loaded.config.text_encoder or "minilm")
    names = [c.name for c in synth.HELDOUT]
    kinds = {
        "demo-desc": encode_concepts(
            [Concept(c.name, c.descriptions) for c in synth.HELDOUT], encoder
        ),
        "demo-tmpl": encode_concepts([make_concept(c.name) for c in synth.HELDOUT], encoder),
    }
    scorer = OpenSetScorer(model, asset_chunk=1024)
    size = loaded.config.vision.image_size
    pre = Preprocessor(size)

    def make(start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        cs, ex = [], []
        for s in range(start, start + count, 500):
            scenes = [
                synth.sample_scene(0, "test", i) for i in range(s, min(s + 500, start + count))
            ]
            pixels = torch.stack([pre(synth.render(sc, size)) for sc in scenes])
            with torch.inference_mode():
                e = model.encode_image(pixels).float().numpy()
            c = e[:, 0]
            cs.append(c / np.linalg.norm(c, axis=1, keepdims=True))
            ex.append(np.concatenate([scorer.logits(e, b).numpy() for b in kinds.values()], 1))
        return np.concatenate(cs), np.concatenate(ex)

    folder = cache / f"demo-n{n}"
    if not _build_parts(folder, n, make, budget_s):
        return None
    c, exact = _load_parts(folder, n)
    out, col = [], 0
    for kind, bank in kinds.items():
        out.append(Source(kind, c, names, bank, exact[:, col : col + bank.num_tags]))
        col += bank.num_tags
    return out


def token_groups(e: np.ndarray, groups: int = 4, iterations: int = 5) -> np.ndarray:
    """Per asset, the mean grid token of each of ``groups`` token groups (spherical k-means
    started from the largest token), (n, groups, dim) float16: a few vectors that keep a small
    strong occurrence that the mean token c dilutes (the experiment of ``--peaks``)."""
    x = torch.from_numpy(np.ascontiguousarray(e[:, 1:], np.float32))
    unit = torch.nn.functional.normalize(x, dim=-1)
    n = x.shape[0]
    first = x.norm(dim=-1).argmax(1)
    chosen = [unit[torch.arange(n), first]]
    best = torch.einsum("ntd,nd->nt", unit, chosen[0])
    for _ in range(groups - 1):
        nxt = best.argmin(1)
        chosen.append(unit[torch.arange(n), nxt])
        best = torch.maximum(best, torch.einsum("ntd,nd->nt", unit, chosen[-1]))
    centres = torch.stack(chosen, 1)
    for _ in range(iterations):
        assign = torch.einsum("ntd,ngd->ntg", unit, centres).argmax(-1)
        onehot = torch.nn.functional.one_hot(assign, groups).float()  # (n, t, g)
        means = torch.einsum("ntg,ntd->ngd", onehot, x) / onehot.sum(1).clamp(min=1)[..., None]
        centres = torch.nn.functional.normalize(means, dim=-1)
    return means.numpy().astype(np.float16)


def peaks_experiment(cache: Path, n: int, seed: int, budget_s: float) -> None:
    """Recall when stage 1 also searches a few token-group vectors per asset (not a stage-1
    query: a second index, measured here to size what a query over c alone cannot reach)."""
    archive = retro.Archive(seed)
    folder = cache / f"synthetic-n100000-s{seed}"
    t0 = time.perf_counter()
    for start in range(0, n, PART):
        path = folder / f"peaks-{start:07d}.npy"
        if path.exists():
            continue
        if time.perf_counter() - t0 > budget_s:
            print("peaks incomplete: run again")
            return
        np.save(
            path,
            np.concatenate(
                [
                    token_groups(archive.chunk(s, min(2000, start + PART - s)).astype(np.float16))
                    for s in range(start, start + PART, 2000)
                ]
            ),
        )
        print(f"  peaks part {start} done ({time.perf_counter() - t0:.0f}s)", flush=True)
    src = synthetic_source(cache, 100_000, seed, 0.0)
    assert src is not None
    c, exact = src.c[:n], src.exact[:n]
    peaks = np.concatenate([np.load(folder / f"peaks-{s:07d}.npy") for s in range(0, n, PART)])
    g = peaks.shape[1]
    k = round(2000 * n / 100_000)
    flat = peaks.reshape(-1, peaks.shape[-1]).astype(np.float32)
    owner = np.repeat(np.arange(n), g)
    unit_flat = flat / np.linalg.norm(flat, axis=1, keepdims=True)
    rows = {}
    for j, name in enumerate(src.names):
        rows_j = src.bank.embeddings[j].float().numpy()
        q = rows_j.mean(0)
        q /= np.linalg.norm(q)
        truth = np.argsort(-exact[:, j], kind="stable")[:100]
        mean_ids = np.argsort(-(c @ q))[:k]
        out = {"mean_c": float(np.isin(truth, mean_ids).mean())}
        for label, vecs in (("peaks_ip", flat), ("peaks_cos", unit_flat)):
            per_asset = np.full(n, -np.inf, np.float32)
            np.maximum.at(per_asset, owner, vecs @ q)
            ids = np.argsort(-per_asset)[:k]
            out[label] = float(np.isin(truth, ids).mean())
            half = np.concatenate([mean_ids[: k // 2], ids])
            _, first = np.unique(half, return_index=True)
            out[label + "+c"] = float(np.isin(truth, half[np.sort(first)][:k]).mean())
        rows[name] = out
    print(f"peaks experiment: N={n}, shortlist {k}, {g} token groups per asset, {os.getloadavg()}")
    for name, out in rows.items():
        print(f"  {name}: " + "  ".join(f"{m} {v:.2f}" for m, v in out.items()))


# -- measurements ------------------------------------------------------------------------------


def recall_table(src: Source, methods: list[str], k: int) -> dict[str, list[float]]:
    """recall@100 per concept and method at shortlist ``k`` (exact candidate source)."""
    cands, store = Exact(src.c), AllStored()
    table: dict[str, list[float]] = {}
    for method in methods:
        row = []
        for j in range(src.bank.num_tags):
            found = shortlist(src.bank.select(slice(j, j + 1)), cands, store, k, method=method)
            truth = src.truth(j)
            row.append(float(np.isin(truth, found).mean()))
        table[method] = row
    return table


def adaptive_table(src: Source, k: int) -> dict[str, list[float]]:
    """recall@100 and shortlist size per concept with the opt-in adaptive rule (scaled to ``k``:
    first 3/4 k, rounds of k/8, limit 1.5 k), stage 2 simulated by the cached exact logits."""
    rule = AdaptiveRule(first=3 * k // 4, step=max(1, k // 8), limit=3 * k // 2)
    cands = Exact(src.c)
    recall, size = [], []
    for j in range(src.bank.num_tags):
        ranked = ranked_candidates(src.bank.select(slice(j, j + 1)), cands, rule.limit)
        ids, _ = adaptive_scores(ranked, lambda ids, j=j: src.exact[ids, j], rule)
        recall.append(float(np.isin(src.truth(j), ids).mean()))
        size.append(float(len(ids)))
    return {"recall": recall, "shortlist": size}


def latency(src: Source, methods: list[str], k: int, ivf: bool, repeat: int) -> dict[str, float]:
    """Median seconds of one ``shortlist`` call per method against the service's VectorIndex."""
    n = len(src.c)
    index = VectorIndex(
        src.c.shape[1], exact_max_size=(n // 2 if ivf else n + 1), nlist=1024, pq_m=64
    )
    index.add(np.arange(n), src.c)
    store = AllStored()
    out = {}
    for method in methods:
        times = []
        for r in range(repeat):
            j = r % src.bank.num_tags
            concept = src.bank.select(slice(j, j + 1))
            t0 = time.perf_counter()
            shortlist(concept, index, store, k, method=method)
            times.append(time.perf_counter() - t0)
        out[method] = float(np.median(times[1:] if repeat > 1 else times))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", type=Path, default=Path("/tmp/ramdex-stage1-cache"))
    ap.add_argument("--n", type=int, default=100_000, help="synthetic assets")
    ap.add_argument("--demo-n", type=int, default=20_000, help="demo test-split images")
    ap.add_argument("--shortlist", type=int, default=2000, help="per 100,000 assets")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--sources", default="synthetic,demo")
    ap.add_argument("--ivf", action="store_true", help="latency with IVF-PQ too")
    ap.add_argument("--repeat", type=int, default=11)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--budget", type=float, default=270.0, help="seconds of cache building")
    ap.add_argument("--build-only", action="store_true")
    ap.add_argument("--sweep", action="store_true", help="recall by shortlist size")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument(
        "--subset", type=int, default=0, help="use the first N cached synthetic assets only"
    )
    ap.add_argument("--peaks", type=int, default=0, help="token-group experiment on N assets")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    methods = args.methods.split(",")
    wanted = args.sources.split(",")
    print(f"threads={args.threads} loadavg={os.getloadavg()}")

    if args.peaks:
        peaks_experiment(args.cache, args.peaks, 0, args.budget)
        return
    t0 = time.perf_counter()
    sources: list[Source] = []
    pending = False
    if "synthetic" in wanted:
        src = synthetic_source(args.cache, args.n, 0, args.budget)
        pending |= src is None
        if src and args.subset:
            src = Source(
                src.name, src.c[: args.subset], src.names, src.bank, src.exact[: args.subset]
            )
        sources += [src] if src else []
    if "demo" in wanted:
        left = max(0.0, args.budget - (time.perf_counter() - t0))
        demo = None if pending else demo_sources(args.cache, args.demo_n, left)
        pending |= demo is None
        sources += demo or []
    if pending or args.build_only:
        print("cache " + ("incomplete: run again" if pending else "complete"))
        if pending:
            return

    fig: dict[str, object] = {"threads": args.threads, "methods": methods, "sources": {}}
    for src in sources:
        n = len(src.c)
        k = max(1, round(args.shortlist * n / 100_000))
        table = recall_table(src, methods, k)
        load = os.getloadavg()
        lat = latency(src, methods, k, False, args.repeat)
        lat_ivf = latency(src, methods, k, True, args.repeat) if args.ivf else {}
        entry: dict[str, object] = {
            "n": n,
            "shortlist": k,
            "concepts": src.names,
            "recall_at_100": table,
            "min_recall": {m: min(v) for m, v in table.items()},
            "stage1_s_flat": lat,
            "stage1_s_ivfpq": lat_ivf,
            "load": load,
        }
        print(f"\n== {src.name}: N={n}, shortlist {k}, loadavg {load}")
        width = max(len(s) for s in src.names)
        print(f"{'concept':{width}s} " + " ".join(f"{m:>10s}" for m in methods))
        for j, name in enumerate(src.names):
            print(f"{name:{width}s} " + " ".join(f"{table[m][j]:10.2f}" for m in methods))
        print(f"{'min':{width}s} " + " ".join(f"{min(table[m]):10.2f}" for m in methods))
        print(f"{'mean':{width}s} " + " ".join(f"{np.mean(table[m]):10.3f}" for m in methods))
        print(f"{'flat ms':{width}s} " + " ".join(f"{lat[m] * 1e3:10.1f}" for m in methods))
        if lat_ivf:
            print(
                f"{'ivfpq ms':{width}s} " + " ".join(f"{lat_ivf[m] * 1e3:10.1f}" for m in methods)
            )
        if args.sweep:
            sweep = {}
            for size in (0.25, 0.5, 1, 2, 5, 10):
                kk = max(1, round(args.shortlist * size * n / 100_000))
                t = recall_table(src, methods, kk)
                sweep[kk] = {m: [min(v), float(np.mean(v))] for m, v in t.items()}
                print(
                    f"  shortlist {kk:6d} min/mean: "
                    + "  ".join(f"{m} {v[0]:.2f}/{v[1]:.2f}" for m, v in sweep[kk].items())
                )
            entry["sweep"] = sweep
        adaptive = adaptive_table(src, k)
        entry["adaptive"] = adaptive
        print(
            f"{'adaptive':{width}s} "
            + " ".join(
                f"{r:.2f}@{int(n)}"
                for r, n in zip(adaptive["recall"], adaptive["shortlist"], strict=True)
            )
            + f"  (mean shortlist {np.mean(adaptive['shortlist']):.0f})"
        )
        fig["sources"][src.name] = entry  # type: ignore[index]
    print(f"\nloadavg at the end {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps(fig, indent=1))


if __name__ == "__main__":
    main()
