"""Benchmark: compact token formats on E from a TRAINED model (the bundled demo model).

bench_token_formats.py measures the formats on bench_retroactive's synthetic archive, whose E is
mostly isotropic noise, so it cannot say what a compact format keeps of a trained model's E. This
one computes E with the bundled demo model (``ram_pp/demo/model.safetensors``) for procedural
images (``ram_pp.synth``):

- the evaluated assets: the demo archive's images (the ``test`` split of ``ramdex demo``'s seed,
  2026), which carry the held-out concepts' ground truth,
- the codebook / rotation training set: the ``test`` split of another seed (disjoint images of the
  same distribution: what the store's first ``add`` would see).

E is cached under ``--cache`` (default /tmp) as float16, keyed by the model file's digest, so a
rerun only codes and scores. For each format the assets' E is encoded and decoded, then scored
(float32) two ways, exactly as the service does:

- open-set: the 23 held-out concepts of ``ram_pp.synth`` (never trained), their descriptions
  encoded by the model's text encoder into a label bank (``ram_pp.concepts.encode_concepts``) and
  scored with ``OpenSetScorer`` (the retroactive searcher's stage 2),
- built-in: the model's 40 tags (``model.logits_from_embeddings``).

Printed per format, with the load average: bytes per asset at the demo shape (17 x 384) and at the
published shape (145 x 512: bytes per token x 145), top-100 overlap of every concept's ranking with
the float16 ranking (mean / min), logit error against float16 (max / mean), mAP against the synth
ground truth (held-out concepts and built-in tags) beside float16's, and encode / decode time.

Run: ``flock /tmp/ramdex-bench.lock python benchmarks/bench_token_formats_demo.py --n 4000``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from indexer import token_codecs  # noqa: E402
from indexer.retroactive import recall_at_k  # noqa: E402
from indexer.token_store import quantize_int8  # noqa: E402

DEMO_SEED = 2026  # api/cli/demo.py SAMPLE_SEED: the demo archive's images
TRAIN_SEED = 2027  # the codebooks' training images (disjoint from the evaluated ones)
PUBLISHED_T = 145


def load() -> float:
    """1-minute load average (printed beside every figure)."""
    return round(os.getloadavg()[0], 2)


def demo_embeddings(seed: int, n: int, cache: Path, batch: int = 100) -> np.ndarray:
    """E (n, T, dim) float16 of the first n images of synth's test split for ``seed``, computed
    with the demo model once and cached (keyed by the model file's digest)."""
    from ram_pp import synth
    from ram_pp.factory import demo_checkpoint, load_model
    from ram_pp.preprocess import Preprocessor

    ckpt = demo_checkpoint()
    if ckpt is None:
        raise SystemExit("this build ships no demo model")
    digest = hashlib.sha256(ckpt.read_bytes()).hexdigest()[:12]
    path = cache / f"ramdex-demo-E-{digest}-s{seed}-n{n}.npy"
    cached = sorted(
        (int(p.stem.rsplit("-n", 1)[1]), p)
        for p in cache.glob(f"ramdex-demo-E-{digest}-s{seed}-n*[0-9].npy")
    )
    for have, p in cached:  # each image depends on (seed, index) alone: a prefix is reusable
        if have >= n:
            return np.load(p, mmap_mode="r")[:n].copy()
    loaded = load_model(ckpt)
    cfg = loaded.config
    pre = Preprocessor(cfg.vision.image_size, cfg.mean, cfg.std)
    out = np.empty((n, cfg.vision.num_tokens, cfg.head.embed_dim), np.float16)
    done = 0
    if cached:
        done, p = cached[-1]
        out[:done] = np.load(p)
    t0 = time.perf_counter()
    with torch.no_grad():
        for start in range(done, n, batch):
            stop = min(n, start + batch)
            pixels = torch.stack(
                [
                    pre(synth.render(synth.sample_scene(seed, "test", i), cfg.vision.image_size))
                    for i in range(start, stop)
                ]
            )
            # float16 like the store: the reference every format is compared with
            out[start:stop] = loaded.model.encode_image(pixels).numpy().astype(np.float16)
    print(
        f"E of {n - done} demo images (seed {seed}, from index {done}) in "
        f"{time.perf_counter() - t0:.0f} s [load {load()}] -> {path}"
    )
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, out)
    tmp.replace(path)
    return out


def truth(seed: int, n: int) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """(held-out concept targets (n, 23), built-in tag targets (n, 40), their names)."""
    from ram_pp import synth

    scenes = [synth.sample_scene(seed, "test", i) for i in range(n)]
    names = [c.name for c in synth.HELDOUT]
    held = np.array([[c.predicate(s) for c in synth.HELDOUT] for s in scenes], np.float32)
    tags = list(synth.TAGS)
    tag_idx = {t: k for k, t in enumerate(tags)}
    built = np.zeros((n, len(tags)), np.float32)
    for i, s in enumerate(scenes):
        for t in s.tags():
            built[i, tag_idx[t]] = 1
    return held, built, names, tags


# -- formats under test: train on one set, code and decode another ------------------------------


@dataclass
class Format:
    """A format: bytes per token at a width, and train -> (encode+decode) of tokens."""

    name: str
    token_bytes: Callable[[int], int]  # dim -> bytes per token
    fit: Callable[[np.ndarray], Callable[[np.ndarray], np.ndarray]]  # train E -> round trip
    exact_token0: bool = False  # token 0 kept as float16 (its bytes: 2 x dim)

    def asset_bytes(self, tokens: int, dim: int) -> int:
        if self.exact_token0:
            return 2 * dim + (tokens - 1) * self.token_bytes(dim)
        return tokens * self.token_bytes(dim)


def _store_codec(fmt: str) -> Callable[[np.ndarray], Callable[[np.ndarray], np.ndarray]]:
    def fit(train: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        codec = token_codecs.train_codec(fmt, train.astype(np.float32))
        return lambda e: codec.decode(codec.encode(e.astype(np.float32)))

    return fit


def _int8(train: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    def rt(e: np.ndarray) -> np.ndarray:
        q, s = quantize_int8(e)
        return q.astype(np.float32) * s[..., None]

    return rt


def _with_exact_token0(
    fit: Callable[[np.ndarray], Callable[[np.ndarray], np.ndarray]],
) -> Callable[[np.ndarray], Callable[[np.ndarray], np.ndarray]]:
    """Train the coder on tokens 1.. only (token 0, the mean token, is distributed differently)
    and keep token 0 as float16."""

    def outer(train: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        inner = fit(np.ascontiguousarray(train[:, 1:]))

        def rt(e: np.ndarray) -> np.ndarray:
            out = np.empty(e.shape, np.float32)
            out[:, 0] = e[:, 0].astype(np.float16)
            out[:, 1:] = inner(np.ascontiguousarray(e[:, 1:]))
            return out

        return rt

    return outer


def _pca_groups(k: int, group: int, bits: int = 8):
    """PCA onto k components, int ``bits`` codes with one float16 scale per ``group``
    consecutive components per token (leading components are larger than trailing ones: one
    scale per token spends the trailing components' bits on range they never use)."""
    qmax = (1 << (bits - 1)) - 1

    def fit(train: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        x = train.reshape(-1, train.shape[-1]).astype(np.float32)
        mean = x.mean(0)
        xc = (x - mean).astype(np.float64)
        _, vecs = np.linalg.eigh(xc.T @ xc)
        basis = vecs[:, ::-1][:, :k].T.astype(np.float32)

        def rt(e: np.ndarray) -> np.ndarray:
            z = (e.astype(np.float32) - mean) @ basis.T
            zg = z.reshape(*z.shape[:-1], k // group, group)
            scale = (np.abs(zg).max(-1, keepdims=True) / qmax).astype(np.float16)
            scale = np.where(scale > 0, scale, np.float16(1)).astype(np.float32)
            q = np.clip(np.rint(zg / scale), -qmax, qmax)
            return (q * scale).reshape(z.shape) @ basis + mean

        return rt

    return fit


def _opq(m: int):
    """OPQ rotation (faiss.OPQMatrix) then a product quantiser of m one-byte codes."""

    def fit(train: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        import faiss

        x = train.reshape(-1, train.shape[-1]).astype(np.float32)
        rng = np.random.default_rng(0)
        if len(x) > token_codecs.TRAIN_TOKENS * 2:
            x = x[np.sort(rng.choice(len(x), token_codecs.TRAIN_TOKENS * 2, replace=False))]
        d = x.shape[1]
        opq = faiss.OPQMatrix(d, m)
        opq.niter = 20
        opq.train(np.ascontiguousarray(x))
        pq = faiss.ProductQuantizer(d, m, 8)
        pq.cp.niter = 12
        pq.train(opq.apply(np.ascontiguousarray(x)))

        def rt(e: np.ndarray) -> np.ndarray:
            flat = np.ascontiguousarray(e.reshape(-1, d), dtype=np.float32)
            back = pq.decode(pq.compute_codes(opq.apply(flat)))
            return opq.reverse_transform(back).reshape(e.shape)

        return rt

    return fit


def formats(dim: int, wanted: list[str]) -> list[Format]:
    """The formats by name (see ``--formats``)."""
    table: dict[str, Format] = {
        "float16": Format("float16", lambda d: 2 * d, lambda tr: lambda e: e.astype(np.float32)),
        "int8": Format("int8", lambda d: d + 4, _int8),
    }
    for k in (64, 128):
        f = f"pca{k}i8"
        table[f] = Format(f, lambda d, k=k: k + 4, _store_codec(f))
        table[f + "+t0"] = Format(
            f + "+t0", lambda d, k=k: k + 4, _with_exact_token0(_store_codec(f)), True
        )
        # per-group float16 scales: k codes + 2 bytes per group of 16
        g = f"pca{k}i8g16"
        table[g] = Format(g, lambda d, k=k: k + 2 * (k // 16), _pca_groups(k, 16))
        table[g + "+t0"] = Format(
            g + "+t0",
            lambda d, k=k: k + 2 * (k // 16),
            _with_exact_token0(_pca_groups(k, 16)),
            True,
        )
    for k in (16, 32, 48, 96, 192):  # a sweep of kept components (one float16 scale per token)
        table[f"pca{k}"] = Format(f"pca{k}", lambda d, k=k: k + 2, _pca_groups(k, k))
    for m in (64, 128):
        f = f"pq{m}"
        table[f] = Format(f, lambda d, m=m: m, _store_codec(f))
        table[f + "+t0"] = Format(
            f + "+t0", lambda d, m=m: m, _with_exact_token0(_store_codec(f)), True
        )
        table[f"opq{m}"] = Format(f"opq{m}", lambda d, m=m: m, _opq(m))
        table[f"opq{m}+t0"] = Format(
            f"opq{m}+t0", lambda d, m=m: m, _with_exact_token0(_opq(m)), True
        )
    missing = [w for w in wanted if w not in table]
    if missing:
        raise SystemExit(f"unknown formats {missing}; known: {', '.join(table)}")
    return [table[w] for w in wanted]


# -- scoring -------------------------------------------------------------------------------------


def scorers(chunk: int = 256):
    """(open-set logits fn, built-in logits fn), float32, as the service scores."""
    from ram_pp import synth
    from ram_pp.concepts import Concept, encode_concepts
    from ram_pp.factory import demo_checkpoint, load_model
    from ram_pp.openset import OpenSetScorer
    from ram_pp.text_encoder import load_text_encoder

    loaded = load_model(demo_checkpoint())
    model = loaded.model.float().eval()
    encoder = load_text_encoder(loaded.config.text_encoder)
    bank = encode_concepts([Concept(c.name, c.descriptions) for c in synth.HELDOUT], encoder)
    head = OpenSetScorer(model, asset_chunk=chunk)

    def open_set(e: np.ndarray) -> np.ndarray:
        return head.logits(e, bank).numpy()

    @torch.no_grad()
    def built_in(e: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(e, dtype=np.float32))
        return torch.cat(
            [model.logits_from_embeddings(x[i : i + chunk]) for i in range(0, len(x), chunk)]
        ).numpy()

    return open_set, built_in


def overlaps(logits: np.ndarray, base: np.ndarray, k: int = 100) -> np.ndarray:
    """Top-k overlap of every column's ranking with the reference ranking."""
    return np.array(
        [
            recall_at_k(
                np.argsort(-logits[:, j], kind="stable"), np.argsort(-base[:, j], kind="stable"), k
            )
            for j in range(base.shape[1])
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=4000, help="evaluated assets (the demo archive)")
    ap.add_argument("--train", type=int, default=2000, help="codebook training assets")
    ap.add_argument(
        "--formats",
        default="float16,int8,pca128i8,pca64i8,pq128,pq64,pca128i8+t0,pq128+t0,opq128,"
        "opq128+t0,pca128i8g16,pca128i8g16+t0",
    )
    ap.add_argument("--cache", type=Path, default=Path("/tmp"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from ram_pp.evaluation import mean_average_precision

    ev = demo_embeddings(DEMO_SEED, args.n, args.cache)
    tr = demo_embeddings(TRAIN_SEED, args.train, args.cache)
    n, t, dim = ev.shape
    x = tr.reshape(-1, dim).astype(np.float64)
    xc = x - x.mean(0)
    eig = np.linalg.eigvalsh(xc.T @ xc)[::-1]
    energy = np.cumsum(eig) / eig.sum()
    kept = ", ".join(f"{energy[k - 1]:.4f}" for k in (32, 48, 64, 96, 128, 192))
    print(
        f"demo E: {n} assets x {t} tokens x {dim}; centred energy in the leading "
        f"32/48/64/96/128/192 components: {kept}; "
        f"rank (eigenvalue > 1e-6 x largest) {(eig > 1e-6 * eig[0]).sum()}"
    )
    held, built, held_names, tag_names = truth(DEMO_SEED, args.n)
    open_set, built_in = scorers()
    ref = ev.astype(np.float32)  # float16 as stored
    base_o, base_b = open_set(ref), built_in(ref)
    fig: dict = {"n": n, "tokens": t, "dim": dim, "energy": energy[:256].tolist(), "formats": {}}
    print(
        "format          B/asset 17x384 | 145x512 | open-set top-100 overlap mean/min | "
        "built-in mean/min | logit err (open) max/mean | open-set mAP | built-in mAP | "
        "train / round trip s"
    )
    for fmt in formats(dim, args.formats.split(",")):
        t0 = time.perf_counter()
        rt = fmt.fit(tr)
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        back = rt(ev)
        rt_s = time.perf_counter() - t0
        lo, lb = open_set(back), built_in(back)
        ov_o, ov_b = overlaps(lo, base_o), overlaps(lb, base_b)
        err = np.abs(lo - base_o)
        map_o, _ = mean_average_precision(lo, held)
        map_b, _ = mean_average_precision(lb, built)
        row = {
            "bytes_demo": fmt.asset_bytes(t, dim),
            "bytes_published": fmt.asset_bytes(PUBLISHED_T, 512),
            "open_overlap_mean": float(ov_o.mean()),
            "open_overlap_min": float(ov_o.min()),
            "builtin_overlap_mean": float(ov_b.mean()),
            "builtin_overlap_min": float(ov_b.min()),
            "open_logit_err_max": float(err.max()),
            "open_logit_err_mean": float(err.mean()),
            "builtin_logit_err_max": float(np.abs(lb - base_b).max()),
            "logit_std": float(base_o.std()),
            "rel_err": float(np.linalg.norm(back - ref) / np.linalg.norm(ref)),
            "open_mAP": map_o,
            "builtin_mAP": map_b,
            "fit_s": fit_s,
            "roundtrip_s": rt_s,
            "load": load(),
            "per_concept_overlap": dict(zip(held_names, ov_o.tolist(), strict=True)),
        }
        fig["formats"][fmt.name] = row
        print(
            f"{fmt.name:15s} {row['bytes_demo']:6d} | {row['bytes_published']:7d} | "
            f"{row['open_overlap_mean']:.3f} / {row['open_overlap_min']:.2f} | "
            f"{row['builtin_overlap_mean']:.3f} / {row['builtin_overlap_min']:.2f} | "
            f"{row['open_logit_err_max']:.3f} / {row['open_logit_err_mean']:.4f} "
            f"(std {row['logit_std']:.2f}) | {map_o:.4f} | {map_b:.4f} | rel err "
            f"{row['rel_err']:.4f} | {fit_s:.1f} / {rt_s:.2f} [load {row['load']}]",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(fig, indent=1))


if __name__ == "__main__":
    main()
