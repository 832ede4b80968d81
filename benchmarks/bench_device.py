"""Device check: the GPU path of ramdex, each part timed against its limit (docs/gpu.md).

Run through ``benchmarks/device_check.sh`` (one process per stage, each under its own time
budget); by hand::

    python benchmarks/bench_device.py --stage tagging --budget 200 --json /tmp/tagging.json
    python benchmarks/bench_device.py --summary /tmp/dir      # merge the stages' JSON files

Stages (``--smoke``: tiny sizes, the same code, for machines without CUDA):

- ``env``: versions, the device, a large bf16 GEMM (TFLOP/s) and a device copy (GB/s);
- ``decode``: synthetic JPEGs decoded and pre-processed to 384 px on the device
  (:mod:`indexer.device_decode`), against the CPU path per core;
- ``scan``: exhaustive exact scan of new concepts over synthetic int8 E resident on the device
  (:mod:`indexer.device_scan`), published head size, bf16, plus the bf16-vs-float32 agreement and
  the load rate from a real token store;
- ``flat``: exact search over c on the device (:mod:`indexer.device_flat`; FAISS GPU when the
  installed faiss has it), against FAISS CPU flat;
- ``tagging``: RAM++ Swin-L (random weights) in bf16 at batch 64/128/256, eager and with
  ``torch.compile``.

Every figure is printed with its limit and the ratio to it (achieved share of the limit: rate /
limit, or limit time / time) and, where the issue sets one, its goal. Each stage writes its JSON
after every figure, so a stage stopped by its budget keeps what it measured.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a fresh copy without installing ramdex

NOMINAL_BF16_TFLOPS = {"H200": 790.0, "H100": 790.0, "A100": 312.0}  # dense, the figure
RAM_PLUS_GFLOP = 321.0  # per 384 px image, Swin-L RAM++ (the figure; counted below too)
GOAL_TAGGING_IMG_S = 1200.0
GOAL_SCAN_S = 1.0  # "well under a second" per concept over 1M assets


class Stage:
    """Collects one stage's figures and writes them as JSON after each one."""

    def __init__(self, name: str, budget: float, json_path: Path | None, smoke: bool) -> None:
        self.name = name
        self.start = time.perf_counter()
        self.deadline = self.start + budget
        self.json_path = json_path
        self.smoke = smoke
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.data: dict[str, Any] = {
            "stage": name,
            "device": device_name(self.device),
            "smoke": smoke,
            "ok": False,
            "figures": [],
            "notes": [],
            "error": None,
        }
        self.flush()

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def note(self, text: str) -> None:
        print(f"  [{self.name}] {text}", flush=True)
        self.data["notes"].append(text)
        self.flush()

    def figure(
        self,
        name: str,
        value: float,
        unit: str,
        limit: float | None = None,
        basis: str = "",
        goal: float | None = None,
        higher_is_better: bool = True,
    ) -> None:
        """Record a figure; ratio = achieved share of the limit (1.0 = at the limit)."""
        ratio = None
        if limit and value:
            ratio = value / limit if higher_is_better else limit / value
        meets = None
        if goal is not None:
            meets = value >= goal if higher_is_better else value <= goal
        load = os.getloadavg()[0]
        entry = {
            "name": name,
            "value": value,
            "unit": unit,
            "limit": limit,
            "limit_basis": basis,
            "ratio_to_limit": ratio,
            "goal": goal,
            "meets_goal": meets,
            "loadavg_1m": load,
        }
        self.data["figures"].append(entry)
        print(format_figure(entry), flush=True)
        self.flush()

    def flush(self) -> None:
        self.data["seconds"] = round(time.perf_counter() - self.start, 2)
        if self.json_path is not None:
            tmp = self.json_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.data, indent=1))
            tmp.replace(self.json_path)


def format_figure(f: dict[str, Any]) -> str:
    text = f"  {f['name']:<38} {f['value']:>12.4g} {f['unit']:<14}"
    if f.get("ratio_to_limit") is not None:
        text += f" limit {f['limit']:.4g} ({f['limit_basis']}) ratio {f['ratio_to_limit']:.2f}"
    if f.get("goal") is not None:
        text += f" | goal {f['goal']:g}: {'MET' if f['meets_goal'] else 'NOT MET'}"
    return text + f" [load {f['loadavg_1m']:.2f}]"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median seconds of ``fn`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def gemm_tflops(device: torch.device, dtype: torch.dtype, n: int) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = timed(lambda: a @ b, device, repeats=3 if device.type == "cpu" else 10)
    return 2 * n**3 / seconds / 1e12


def bf16_limit(device: torch.device, smoke: bool) -> tuple[float, str]:
    """(TFLOP/s, basis): the nominal dense bf16 rate for known GPUs, else a measured GEMM."""
    name = device_name(device)
    for key, tflops in NOMINAL_BF16_TFLOPS.items():
        if key in name:
            return tflops, f"nominal {key} bf16 {tflops:g} TFLOP/s"
    measured = gemm_tflops(device, torch.bfloat16, 1024 if smoke else 8192)
    return measured, f"measured bf16 GEMM {measured:.3g} TFLOP/s"


def count_flops(fn: Callable[[], object]) -> int:
    """Multiply-add FLOPs (2 per MAC) of one call, as torch's flop counter sees them."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


# ---- stages ---------------------------------------------------------------------------------


def stage_env(st: Stage) -> None:
    import torchvision

    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda_build": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "cpu_threads": torch.get_num_threads(),
    }
    try:
        from indexer.device_flat import faiss_gpu_info

        info["faiss"] = faiss_gpu_info()
    except Exception as exc:  # noqa: BLE001 - faiss missing is a finding, not a failure
        info["faiss"] = f"not importable: {exc}"
    if st.device.type == "cuda":
        free, total = torch.cuda.mem_get_info()
        info.update(
            gpu=torch.cuda.get_device_name(),
            capability=".".join(map(str, torch.cuda.get_device_capability())),
            memory_gb=round(total / 1e9, 1),
            free_gb=round(free / 1e9, 1),
            bf16=torch.cuda.is_bf16_supported(),
        )
    st.data["env"] = info
    st.note(json.dumps(info))
    tflops = gemm_tflops(st.device, torch.bfloat16, 1024 if st.smoke else 8192)
    nominal = next((v for k, v in NOMINAL_BF16_TFLOPS.items() if k in st.data["device"]), None)
    st.figure("env.gemm_bf16", tflops, "TFLOP/s", nominal, "nominal dense bf16" if nominal else "")
    n = (64 if st.smoke else 4096) * 2**20 // 4
    x = torch.empty(n, dtype=torch.float32, device=st.device)
    y = torch.empty_like(x)
    seconds = timed(lambda: y.copy_(x), st.device, repeats=5)
    hbm = {"H200": 4800.0, "H100": 3350.0}
    limit = next((v for k, v in hbm.items() if k in st.data["device"]), None)
    st.figure("env.copy_bandwidth", 2 * n * 4 / seconds / 1e9, "GB/s", limit, "HBM nominal")


def _synthetic_jpegs(count: int, width: int, height: int) -> list[bytes]:
    """Photo-like JPEGs (smooth shapes + mild noise), quality 90, some with EXIF rotation."""
    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    out = []
    for i in range(count):
        fx, fy, ph = rng.uniform(0.002, 0.02, 3)
        base = np.stack(
            [
                127 + 100 * np.sin(x * fx + ph),
                127 + 100 * np.cos(y * fy + 2 * ph),
                127 + 100 * np.sin((x + y) * fx * 0.5),
            ],
            -1,
        )
        noisy = base + rng.normal(0, 6, base.shape)
        image = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")
        buf = io.BytesIO()
        exif = Image.Exif()
        if i % 4 == 1:
            exif[0x0112] = 6
        image.save(buf, "JPEG", quality=90, exif=exif.tobytes())
        out.append(buf.getvalue())
    return out


def stage_decode(st: Stage) -> None:
    from indexer.device_decode import DeviceDecoder
    from ram_pp.preprocess import Preprocessor, open_image

    size = 384
    width, height = (320, 240) if st.smoke else (1600, 1200)
    files = _synthetic_jpegs(8 if st.smoke else 48, width, height)
    mean_kb = sum(map(len, files)) / len(files) / 1024
    st.note(f"{len(files)} synthetic JPEGs {width}x{height}, mean {mean_kb:.0f} KiB")
    decoder = DeviceDecoder(size, device=st.device)
    batches = (8, 16) if st.smoke else (64, 128, 256)
    model_limit = NOMINAL_BF16_TFLOPS.get("H200", 790.0) * 1e12 / (RAM_PLUS_GFLOP * 1e9)
    for batch in batches:
        if st.left() < 10:
            st.note(f"batch {batch}: skipped, stage budget spent")
            break
        data = [files[i % len(files)] for i in range(batch)]
        out = decoder.decode(data)
        assert all(out.on_device) and out.pixels.shape == (batch, 3, size, size), "device path"
        seconds = timed(lambda d=data: decoder.decode(d), st.device, repeats=3)
        st.figure(
            f"decode.device.b{batch}",
            batch / seconds,
            "img/s",
            model_limit,
            "Swin-L bf16 limit it must feed",
            goal=None if st.smoke else GOAL_TAGGING_IMG_S,
        )
    pre = Preprocessor(size)
    n_cpu = 4 if st.smoke else 12
    t = time.perf_counter()
    for i in range(n_cpu):
        pre(open_image(files[i % len(files)]))
    per_core = n_cpu / (time.perf_counter() - t)
    cores = os.cpu_count() or 1
    st.figure("decode.cpu_pillow.one_core", per_core, "img/s")
    st.note(f"CPU path x {cores} cores (ideal scaling): {per_core * cores:.0f} img/s")


def _scan_head(smoke: bool):
    from ram_pp.config import HeadConfig, LabelConfig, RamPlusConfig, get_config
    from ram_pp.model import RamPlus

    head = HeadConfig(hidden_size=128, intermediate_size=512) if smoke else HeadConfig()
    cfg = RamPlusConfig(
        name="bench-head",
        vision=get_config("test_micro").vision,  # the image encoder is never run here
        head=head,
        labels=LabelConfig(1, 1, "ram"),
    )
    torch.manual_seed(0)
    return RamPlus(cfg).eval()


def _bank(k: int, dim: int = 512, descriptions: int = 51, seed: int = 1):
    import torch.nn.functional as F

    from ram_pp.labels import LabelBank

    gen = torch.Generator().manual_seed(seed)
    rows = F.normalize(torch.randn(k, descriptions, dim, generator=gen), dim=-1)
    return LabelBank(rows)


def _resident(n: int, tokens: int, device: torch.device):
    """n synthetic int8 records made on the device (no host copy, no disk)."""
    from indexer.device_scan import ResidentTokens

    codes = torch.empty(n, tokens, 512, dtype=torch.int8, device=device)
    for a in range(0, n, 65_536):
        codes[a : a + 65_536].random_(-127, 128)
    scales = torch.rand(n, tokens, device=device) * 0.02 + 0.005
    return ResidentTokens.from_tensors(np.arange(n, dtype=np.int64), codes, scales)


def stage_scan(st: Stage) -> None:
    from indexer.device_scan import DeviceScanner, ResidentTokens
    from indexer.token_store import TokenStore
    from ram_pp.openset import OpenSetScorer

    n = 2_000 if st.smoke else 1_000_000
    tokens = 145
    dtype = torch.bfloat16 if st.device.type == "cuda" else torch.float32
    chunk = 256 if st.smoke else 16_384
    model = _scan_head(st.smoke)
    flops_model = _scan_head(st.smoke)
    probe_scorer = OpenSetScorer(flops_model, device="cpu", asset_chunk=8)
    probe = torch.randn(8, tokens, 512)
    flops = count_flops(lambda: probe_scorer.logits(probe, _bank(1))) / 8
    st.note(f"fast path: {flops / 1e6:.1f} MFLOP per (asset, concept) counted")
    t = time.perf_counter()
    resident = _resident(n, tokens, st.device)
    sync(st.device)
    st.note(
        f"{n} synthetic int8 assets resident: {resident.nbytes / 1e9:.1f} GB on {st.device} "
        f"(made in {time.perf_counter() - t:.1f} s)"
    )
    scorer = OpenSetScorer(
        model,
        device=st.device,
        dtype=dtype,
        asset_chunk=chunk,
        work_budget=chunk * 4 * 512 * 8,  # up to 8 concepts per pass over a chunk
    )
    scanner = DeviceScanner(scorer, resident)
    tflops, basis = bf16_limit(st.device, st.smoke)
    for k in (1, 8):
        if st.left() < 15:
            st.note(f"{k} concepts: skipped, stage budget spent")
            break
        bank = _bank(k)
        scanner.scan(bank, top_k=100)  # warm-up (kernels, allocator)
        sync(st.device)
        t = time.perf_counter()
        _, scored = scanner.scan(bank, top_k=100)
        sync(st.device)
        seconds = time.perf_counter() - t
        assert scored == n
        limit_s = n * k * flops / (tflops * 1e12)
        per = seconds / k
        st.figure(
            f"scan.exhaustive.{n}.k{k}.per_concept",
            per,
            "s",
            limit_s / k,
            f"{flops / 1e6:.0f} MFLOP/asset at {basis}",
            goal=GOAL_SCAN_S if n >= 1_000_000 else None,
            higher_is_better=False,
        )
        st.figure(f"scan.exhaustive.k{k}.rate", n * k / seconds, "asset-concepts/s")
    # bf16 vs float32 on one chunk: the agreement the speed is bought with
    if st.left() > 10:
        sample = np.arange(min(n, 4096))
        embeds32 = resident.get(sample, torch.float32)
        exact = OpenSetScorer(_scan_head(st.smoke), device=st.device, asset_chunk=1024)
        bank = _bank(3)
        ref = exact.logits(embeds32, bank).numpy()
        got = scorer.logits(embeds32.to(dtype), bank).numpy()
        overlap = np.mean(
            [
                len(np.intersect1d(np.argsort(-ref[:, j])[:100], np.argsort(-got[:, j])[:100]))
                / 100
                for j in range(3)
            ]
        )
        st.figure(f"scan.{dtype}_vs_float32.top100_overlap", float(overlap), "share", goal=0.99)
        st.figure(f"scan.{dtype}_vs_float32.max_logit_error", float(np.abs(ref - got).max()), "")
    del resident, scanner
    if st.device.type == "cuda":
        torch.cuda.empty_cache()
    # loading from a real token store (page cache) -> projection for 1M assets
    if st.left() > 20:
        import tempfile

        m = 500 if st.smoke else 16_384
        with tempfile.TemporaryDirectory() as folder:
            store = TokenStore(folder, tokens=tokens, dim=512, fmt="int8")
            rng = np.random.default_rng(0)
            for a in range(0, m, 2048):
                part = min(2048, m - a)
                store.add(np.arange(a, a + part), rng.normal(size=(part, tokens, 512)))
            t = time.perf_counter()
            loaded = ResidentTokens.from_store(store, st.device)
            sync(st.device)
            seconds = time.perf_counter() - t
            assert len(loaded) == m
            gbs = m * loaded.bytes_per_asset / seconds / 1e9
            st.figure("scan.load_from_store", gbs, "GB/s")
            st.note(f"loading 1M int8 assets (74.8 GB) at that rate: {74.8 / gbs:.0f} s")


def stage_flat(st: Stage) -> None:
    import faiss

    from indexer.device_flat import DeviceFlatIndex, faiss_gpu_info

    n = 20_000 if st.smoke else 1_000_000
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(n, 512)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(n, dtype=np.int64)
    index = DeviceFlatIndex(512, device=st.device, capacity=n)
    index.add(ids, vectors)
    cpu = faiss.IndexIDMap2(faiss.IndexFlatIP(512))
    cpu.add_with_ids(vectors, ids)
    hbm = 4800.0 if "H200" in st.data["device"] else None
    for q in (1, 64):
        queries = vectors[:q] + 0.01
        _, got = index.search(queries, 100)
        _, want = cpu.search(queries, 100)
        agree = float((got == want).mean())
        seconds = timed(lambda qq=queries: index.search(qq, 100), st.device, repeats=5)
        limit = n * 512 * 4 / (hbm * 1e9) if hbm else None  # one read of the vectors
        st.figure(
            f"flat.torch.{n}.q{q}",
            seconds * 1000,
            "ms/batch",
            limit * 1000 if limit else None,
            "one read of the vectors at HBM nominal" if limit else "",
            higher_is_better=False,
        )
        st.figure(f"flat.torch.q{q}.ids_equal_faiss_cpu", agree, "share", goal=0.99)
        t_cpu = timed(lambda qq=queries: cpu.search(qq, 100), torch.device("cpu"), repeats=2)
        st.figure(f"flat.faiss_cpu.{n}.q{q}", t_cpu * 1000, "ms/batch", higher_is_better=False)
        if st.left() < 10:
            break
    info = faiss_gpu_info()
    if info["gpu_build"] and info["gpus"] and st.left() > 20:
        from indexer.faiss_index import VectorIndex

        vi = VectorIndex(512, exact_max_size=n + 1, nlist=1024, pq_m=64, use_gpu=True)
        vi.add(ids, vectors)
        vi.search(vectors[:64], 100)
        ok = vi._gpu_index is not None and vi.use_gpu is not False
        seconds = timed(lambda: vi.search(vectors[:64], 100), st.device, repeats=5)
        st.figure(f"flat.faiss_gpu.{n}.q64", seconds * 1000, "ms/batch", higher_is_better=False)
        st.note(f"faiss GPU copy in use: {ok}")
    else:
        st.note(f"faiss has no usable GPU build here ({info}); torch flat search is the path")


def stage_tagging(st: Stage) -> None:
    from ram_pp.factory import random_model
    from ram_pp.inference import cast_matmul_weights

    name = "test_tiny_golden" if st.smoke else "ram_plus_swin_large_14m"
    dtype = torch.bfloat16
    loaded = random_model(name)
    model = loaded.model.to(st.device).eval()
    size = loaded.config.vision.image_size
    probe = torch.randn(1, 3, size, size, device=st.device)

    def forward(pixels: torch.Tensor) -> torch.Tensor:
        tokens = model.encode_image(pixels)
        return model.logits_from_embeddings(tokens)

    with torch.inference_mode():
        flops = count_flops(lambda: forward(probe))
    st.note(f"{name}: {flops / 1e9:.1f} GFLOP per {size} px image counted (issue: 321 for Swin-L)")
    cast_matmul_weights(model, dtype)
    tflops, basis = bf16_limit(st.device, st.smoke)
    limit = tflops * 1e12 / flops
    batches = (2, 4) if st.smoke else (128, 64, 256)
    repeats = 2 if st.smoke else 5

    def run(fn: Callable[[torch.Tensor], torch.Tensor], pixels: torch.Tensor) -> Callable:
        def step() -> torch.Tensor:
            with torch.inference_mode(), torch.autocast(st.device.type, dtype=dtype):
                return fn(pixels)

        return step

    for batch in batches:
        if st.left() < 20:
            st.note(f"eager batch {batch}: skipped, stage budget spent")
            break
        pixels = torch.randn(batch, 3, size, size, device=st.device)
        seconds = timed(run(forward, pixels), st.device, repeats)
        st.figure(f"tagging.eager_bf16.b{batch}", batch / seconds, "img/s", limit, basis)
    # Smoke runs (CPU) trace with dynamo but skip inductor's code generation (minutes on 2 cores).
    # The fused window attention caches its bias per dtype: fill it first, so the compiled graph
    # finds it instead of recompiling on the second call.
    model.visual_encoder.prepare_attention(dtype, st.device)
    compiled = torch.compile(forward, backend="eager" if st.smoke else "inductor")
    first_compile = None
    for batch in batches:
        need = 30 + (first_compile or 60) * 0.8
        if st.left() < need:
            st.note(f"compiled batch {batch}: skipped ({st.left():.0f} s left, ~{need:.0f} needed)")
            continue
        pixels = torch.randn(batch, 3, size, size, device=st.device)
        t = time.perf_counter()
        out = run(compiled, pixels)()
        sync(st.device)
        compile_s = time.perf_counter() - t
        first_compile = first_compile or compile_s
        st.note(f"batch {batch}: compiled in {compile_s:.0f} s")
        eager = run(forward, pixels)()
        diff = float((out.float() - eager.float()).abs().max())
        st.note(f"batch {batch}: compiled vs eager max |logit diff| {diff:.4f}")
        seconds = timed(run(compiled, pixels), st.device, repeats)
        st.figure(
            f"tagging.compiled_bf16.b{batch}",
            batch / seconds,
            "img/s",
            limit,
            basis,
            goal=None if st.smoke else GOAL_TAGGING_IMG_S,
        )


STAGES = {
    "env": stage_env,
    "decode": stage_decode,
    "scan": stage_scan,
    "flat": stage_flat,
    "tagging": stage_tagging,
}


def summarize(folder: Path, total_s: float | None) -> int:
    """Merge the stage files, print the table, write device_check.json next to them."""
    stages = []
    for name in STAGES:
        path = folder / f"{name}.json"
        rc_path = folder / f"{name}.rc"
        rc = int(rc_path.read_text().strip()) if rc_path.exists() else None
        if path.exists():
            data = json.loads(path.read_text())
        else:
            data = {"stage": name, "ok": False, "figures": [], "notes": [], "error": "not run"}
        data["exit_code"] = rc
        if rc in (124, 137):
            data["error"] = (data.get("error") or "") + " (stopped by its time budget)"
        stages.append(data)
    summary = {
        "total_seconds": total_s,
        "device": next((s.get("device") for s in stages if s.get("device")), None),
        "smoke": any(s.get("smoke") for s in stages),
        "stages": stages,
    }
    (folder / "device_check.json").write_text(json.dumps(summary, indent=1))
    print("\n==== device check summary ====")
    print(f"device: {summary['device']}  smoke: {summary['smoke']}  total: {total_s} s")
    for s in stages:
        state = "ok" if s.get("ok") else f"FAILED: {s.get('error')}"
        print(f"[{s['stage']}] {state} ({s.get('seconds', 0)} s, exit {s.get('exit_code')})")
        for f in s.get("figures", []):
            print(format_figure(f))
    return 0 if all(s.get("ok") for s in stages) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stage", choices=sorted(STAGES))
    parser.add_argument("--budget", type=float, default=120.0, help="seconds for the stage")
    parser.add_argument("--json", type=Path, help="where the stage writes its figures")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (CPU smoke run)")
    parser.add_argument("--summary", type=Path, help="merge the stage files in this folder")
    parser.add_argument("--total-s", type=float, default=None)
    args = parser.parse_args()
    if args.summary:
        return summarize(args.summary, args.total_s)
    if not args.stage:
        parser.error("give --stage or --summary")
    smoke = args.smoke or not torch.cuda.is_available()
    st = Stage(args.stage, args.budget, args.json, smoke)
    print(f"== stage {args.stage} on {st.data['device']} (budget {args.budget:.0f} s)", flush=True)
    try:
        STAGES[args.stage](st)
        st.data["ok"] = True
    except Exception as exc:  # noqa: BLE001 - one stage's failure is reported, the check goes on
        st.data["error"] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    st.flush()
    return 0 if st.data["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
