"""The vector index at scale: flat vs IVF-Flat vs IVF-PQ, and filtered search by selectivity.

Synthetic data: ``--n`` unit 512-d vectors around 2,000 centres (clustered like image
embeddings; uniform random vectors have no structure for IVF to use), ``--queries`` held-out
queries from the same distribution. Ground truth: exact inner-product top 100.

Prints, per index and nprobe: single-query latency p50/p95, recall@100 against the exact top
100, the ratio of latency vs flat; then filtered search (filters passing 0.1 %, 1 %, 10 %, 50 %
of the vectors, random ids) through :func:`indexer.search.filtered.filtered_search` on the
IVF-PQ index: its plan, recall@100 against the exhaustive filtered top 100, latency, and what
"recall 1,000 then filter" would have returned. And the load average.

Run under the bench lock: ``flock /tmp/ramdex-bench.lock python benchmarks/bench_index.py``.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import faiss
import numpy as np

from indexer.faiss_index import IVFFLAT, IVFPQ, VectorIndex
from indexer.search.filtered import IdFilter, filtered_search

DIM = 512
K = 100


def clustered(n: int, centres: np.ndarray, seed: int, chunk: int = 100_000) -> np.ndarray:
    """Unit vectors around ``centres`` (noise of norm about 0.7 per unit centre)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, DIM), np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        x = centres[rng.integers(0, len(centres), m)]
        x = x + (0.7 / np.sqrt(DIM)) * rng.standard_normal((m, DIM), dtype=np.float32)
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def recall(found: list[np.ndarray], truth: np.ndarray) -> float:
    pairs = zip(found, truth, strict=True)
    return float(
        np.mean([np.intersect1d(f[:K], t).size / max(1, min(K, len(t))) for f, t in pairs])
    )


def timed(fn: Any, queries: np.ndarray) -> tuple[list[np.ndarray], float, float]:
    lat, found = [], []
    for q in queries:
        t0 = time.perf_counter()
        found.append(fn(q))
        lat.append(time.perf_counter() - t0)
    ms = np.array(lat) * 1000
    return found, float(np.percentile(ms, 50)), float(np.percentile(ms, 95))


def build(kind: str, xb: np.ndarray, ids: np.ndarray, sample: np.ndarray, args: Any) -> VectorIndex:
    """An IVF index of ``kind`` trained on ``sample`` (as in production), then all added."""
    index = VectorIndex(
        DIM, model_name="bench", exact_max_size=0, nlist=args.nlist, pq_m=args.pq_m, nprobe=32
    )
    t0 = time.perf_counter()
    index._index = index._new_ivfpq(sample, kind)
    index.kind = kind
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    for start in range(0, len(ids), 200_000):
        index.add(ids[start : start + 200_000], xb[start : start + 200_000])
    drift = index.drift()
    print(
        f"# {kind} {index.params}: trained on {len(sample)} in {t_train:.1f} s, "
        f"{len(ids)} added in {time.perf_counter() - t0:.1f} s, drift ratio "
        f"{drift.distance_ratio:.3f}, imbalance x{drift.imbalance_ratio:.2f}, "
        f"rebuild due: {drift.needs_rebuild}"
    )
    return index


def filtered_only(
    args: Any, xb: np.ndarray, xq: np.ndarray, ids: np.ndarray, rng: np.random.Generator
) -> None:
    """Only the filtered-search table (IVF-PQ built as in the full run)."""
    sample = xb[
        np.sort(rng.choice(args.n, min(args.n, args.sample or 64 * args.nlist), replace=False))
    ]
    index = build(IVFPQ, xb, ids, sample, args)
    print(f"\nunfiltered, re-scored (load {os.getloadavg()[0]:.2f})")
    rescored_rows(index, xb, xq, exact_truth(xb, xq), args.nprobe)
    filtered_section(index, xb, xq, rng, args.n)
    print(f"\nload average after: {os.getloadavg()}")


def exact_truth(xb: np.ndarray, xq: np.ndarray) -> np.ndarray:
    """The exact top K of each query by inner product (numpy, in chunks of the base)."""
    best_s = np.full((len(xq), K), -np.inf, np.float32)
    best_i = np.zeros((len(xq), K), np.int64)
    for start in range(0, len(xb), 200_000):
        sims = xq @ xb[start : start + 200_000].T
        part = np.argpartition(-sims, K - 1, axis=1)[:, :K]
        s_all = np.concatenate([best_s, np.take_along_axis(sims, part, 1)], axis=1)
        i_all = np.concatenate([best_i, part + start], axis=1)
        top = np.argsort(-s_all, axis=1, kind="stable")[:, :K]
        best_s, best_i = np.take_along_axis(s_all, top, 1), np.take_along_axis(i_all, top, 1)
    return best_i


def rescored_rows(
    index: VectorIndex, xb: np.ndarray, xq: np.ndarray, truth: np.ndarray, nprobes: str
) -> None:
    """IVF-PQ as the service's similar search runs it: 1,000 candidates recalled, re-scored
    exactly from c (here the array; the database in the service), the top 100 kept."""
    from indexer.search.filtered import exact_scores

    def read(chosen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return chosen, xb[chosen]

    for nprobe in (int(p) for p in nprobes.split(",")):

        def run(q: np.ndarray, nprobe: int = nprobe) -> np.ndarray:
            _, cand = index.search(q.reshape(1, -1), 1000, nprobe=nprobe)
            cand = cand[0][cand[0] >= 0]
            return exact_scores(q, cand, read, K)[1]

        found, p50, p95 = timed(run, xq)
        label = f"{IVFPQ} + exact 1000"
        print(f"{label:<22} {nprobe:>6} {p50:9.2f} {p95:9.2f} {recall(found, truth):10.3f}")


def filtered_section(
    index: VectorIndex, xb: np.ndarray, xq: np.ndarray, rng: np.random.Generator, n: int
) -> None:
    """Filtered search through the planner against the exhaustive filtered top 100."""

    def read(chosen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return chosen, xb[chosen]

    print(f"\nfiltered search on {IVFPQ} (nprobe {index.nprobe}; exact c read for re-scoring)")
    print(
        f"{'passing':>8} {'plan':>9} {'nprobe':>6} {'p50 ms':>9} {'p95 ms':>9} "
        f"{'recall@100':>10} {'recall-then-filter':>19}"
    )
    for share in (0.001, 0.01, 0.1, 0.5):
        allowed = IdFilter(np.sort(rng.choice(n, int(n * share), replace=False)))
        sub = xb[allowed.allowed]
        exact_truth = [allowed.allowed[np.argsort(-(sub @ q))[:K]] for q in xq[:30]]
        plans = []

        def run(q: np.ndarray, allowed: IdFilter = allowed, plans: list = plans) -> np.ndarray:
            _, got, plan = filtered_search(index, q, K, allowed, read_vectors=read)
            plans.append(plan)
            return got

        found, p50, p95 = timed(run, xq[:30])
        naive = [
            got[allowed.contains(got)][:K]
            for got in (index.search(q.reshape(1, -1), 1000)[1][0] for q in xq[:30])
        ]
        naive_hits = np.mean([len(g) for g in naive])
        print(
            f"{share:8.1%} {plans[0].strategy:>9} {plans[0].nprobe or '-':>6} {p50:9.2f} "
            f"{p95:9.2f} {recall(found, np.array(exact_truth)):10.3f} "
            f"{recall(naive, np.array(exact_truth)):9.3f} ({naive_hits:.0f} hits)"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--nlist", type=int, default=1024)
    ap.add_argument("--pq-m", type=int, default=64)
    ap.add_argument("--nprobe", default="8,32,128")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only-filtered", action="store_true", help="skip flat and IVF-Flat")
    ap.add_argument("--sample", type=int, default=0, help="training sample (0: 64 x nlist)")
    args = ap.parse_args()
    faiss.omp_set_num_threads(args.threads)
    print(f"load average before: {os.getloadavg()}")
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((2000, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    t0 = time.perf_counter()
    xb = clustered(args.n, centres, seed=1)
    xq = clustered(args.queries, centres, seed=2)
    ids = np.arange(args.n, dtype=np.int64)
    print(f"{args.n} x {DIM} vectors generated in {time.perf_counter() - t0:.1f} s")

    if args.only_filtered:
        filtered_only(args, xb, xq, ids, rng)
        return
    flat: Any = faiss.IndexFlatIP(DIM)
    flat.add(xb)
    t0 = time.perf_counter()
    _, truth = flat.search(xq, K)
    print(f"exact top-{K} of {args.queries} queries (batched): {time.perf_counter() - t0:.1f} s")
    _, f50, f95 = timed(lambda q: flat.search(q.reshape(1, -1), K)[1][0], xq[:30])
    print(
        f"\n{'index':<22} {'nprobe':>6} {'p50 ms':>9} {'p95 ms':>9} {'recall@100':>10} "
        f"{'x flat':>7}"
    )
    print(f"{'flat (exact)':<22} {'-':>6} {f50:9.2f} {f95:9.2f} {1.0:10.3f} {1.0:7.2f}")
    flat.reset()  # free its 2 GB

    indexes: dict[str, VectorIndex] = {}
    sample = xb[
        np.sort(rng.choice(args.n, min(args.n, args.sample or 64 * args.nlist), replace=False))
    ]
    for kind in (IVFFLAT, IVFPQ):
        index = VectorIndex(
            DIM, model_name="bench", exact_max_size=0, nlist=args.nlist, pq_m=args.pq_m, nprobe=32
        )
        t0 = time.perf_counter()
        index._index = index._new_ivfpq(sample, kind)  # trained on a sample, as in production
        index.kind = kind
        t_train = time.perf_counter() - t0
        t0 = time.perf_counter()
        for start in range(0, args.n, 200_000):
            index.add(ids[start : start + 200_000], xb[start : start + 200_000])
        t_add = time.perf_counter() - t0
        drift = index.drift()
        print(
            f"# {kind} {index.params}: trained on {len(sample)} in {t_train:.1f} s, "
            f"{args.n} added in {t_add:.1f} s, drift ratio {drift.distance_ratio:.3f}, "
            f"imbalance x{drift.imbalance_ratio:.2f}, rebuild due: {drift.needs_rebuild}"
        )
        for nprobe in (int(p) for p in args.nprobe.split(",")):
            found, p50, p95 = timed(
                lambda q, nprobe=nprobe, index=index: index.search(
                    q.reshape(1, -1), K, nprobe=nprobe
                )[1][0],
                xq,
            )
            print(
                f"{kind:<22} {nprobe:>6} {p50:9.2f} {p95:9.2f} {recall(found, truth):10.3f} "
                f"{p50 / f50:7.2f}"
            )
        indexes[kind] = index
        if kind == IVFPQ:
            rescored_rows(index, xb, xq, truth, args.nprobe)

    index = indexes[IVFPQ]
    del indexes[IVFFLAT]

    filtered_section(index, xb, xq, rng, args.n)
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
