"""Exhaustive retroactive search with every asset's E resident in device memory (GPU path).

An exhaustive exact scan of a new concept reads E of every asset; from a token store on disk that
is bound by the disk (docs/retroactive.md: 75 GB per million assets in int8). On a GPU with enough
memory (an H200 holds 1M assets in int8: 74.8 GB) E is loaded once, kept in the store's own format
(int8 codes + per-token float32 scales, or float16), and each scan dequantises one chunk at a time
on the device into the scorer's dtype (bf16 on a GPU) and scores it with
:class:`ram_pp.openset.OpenSetScorer`'s fast path. Nothing of E crosses PCIe after the load.

Pieces:

- :class:`ResidentTokens`: the device copy of a token store, in blocks of ``block_assets``
  records. :meth:`ResidentTokens.sync` follows the store's commits: records the new manifest no
  longer names (deleted, replaced, compacted away) are masked out, records it added are loaded;
  more than half of the rows dead -> reloaded compactly.
- :class:`DeviceScanner`: ``search(bank, ...)`` -> the same ``ConceptResult`` list as
  ``RetroactiveSearcher.search(mode="exhaustive")``, calibration included (the same background
  sample: ``TokenStore.sample_ids`` with the rule's seed).

Chunking: one scan step dequantises ``scorer.asset_chunk`` assets (so the scorer makes a single
pass over them) and the scorer splits concepts by its ``work_budget``. Logits of a chunk come back
to the host ((n, K) float32, 4 bytes per asset-concept) where the running top-k is kept; the
(n, T, 512) work never leaves the device.

The same code runs with ``device="cpu"`` (tests compare it with the CPU searcher); a CUDA device
is refused with a clear error on a machine without one. Reading the store's records as stored
uses :class:`indexer.token_store.TokenStore` internals (its snapshot and ``_read``): the store
has no public raw-record reader yet.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from indexer.errors import RamdexError
from indexer.retroactive import (
    CalibrationRule,
    ConceptResult,
    RunningTopK,
    calibrate_logits,
    rank_by_logit,
)
from indexer.token_store import TokenStore
from ram_pp.labels import LabelBank
from ram_pp.openset import OpenSetScorer

READ_RECORDS = 4096  # records per read from the store while loading (one preadv run or more)
HEADROOM = 0.9  # use at most this share of the device memory that is free at load time


def check_device(device: str | torch.device) -> torch.device:
    """The device, refused when it is CUDA and this machine has none (never a CUDA-only branch)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise RamdexError(
                f"device {str(device)!r} is not available: PyTorch finds no CUDA GPU here",
                hint="use device='cpu', or run on a machine with a CUDA GPU",
            )
        if dev.index is not None and dev.index >= count:
            raise RamdexError(f"device {str(device)!r}: this machine has {count} CUDA GPU(s)")
    elif dev.type != "cpu":
        raise RamdexError(f"resident token scans run on cuda or cpu, not {dev.type!r}")
    return dev


def _shard_number(name: str) -> int:
    return int(name.rsplit("-", 1)[1])


@dataclass
class _Block:
    """``capacity`` record slots on the device; rows below ``used`` hold records."""

    codes: torch.Tensor  # (cap, T, C) int8 or float16
    scales: torch.Tensor | None  # (cap, T) float32 for int8
    ids: np.ndarray  # (cap,) int64 asset ids (host)
    keys: np.ndarray  # (cap,) int64 store position: shard number << 32 | slot (host)
    alive: np.ndarray  # (cap,) bool (host)
    used: int = 0

    @property
    def capacity(self) -> int:
        return int(self.codes.shape[0])


class ResidentTokens:
    """Every stored asset's E held in device memory, in the store's format.

    Args:
        device: ``cuda``, ``cuda:N`` or ``cpu``.
        fmt: "int8" or "float16" (as the token store).
        tokens, dim: E is (tokens, dim) per asset.
        block_assets: records per device allocation (the last block fills up first).
    """

    def __init__(
        self,
        device: str | torch.device,
        fmt: str,
        tokens: int,
        dim: int,
        block_assets: int = 65_536,
    ) -> None:
        if fmt not in ("int8", "float16"):
            raise ValueError(f"unknown token format {fmt!r}")
        if block_assets < 1:
            raise ValueError("block_assets must be >= 1")
        self.device = check_device(device)
        self.format = fmt
        self.tokens = tokens
        self.dim = dim
        self.block_assets = block_assets
        self.blocks: list[_Block] = []
        self.generation: object = None  # the store manifest's generation last synced
        self._lookup: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    # -- sizes --------------------------------------------------------------------------------

    @property
    def bytes_per_asset(self) -> int:
        """Device bytes per record (int8: codes + float32 scales; float16: E)."""
        if self.format == "int8":
            return self.tokens * self.dim + 4 * self.tokens
        return 2 * self.tokens * self.dim

    def __len__(self) -> int:
        return int(sum(int(b.alive[: b.used].sum()) for b in self.blocks))

    @property
    def rows(self) -> int:
        """Rows held, dead ones included."""
        return sum(b.used for b in self.blocks)

    @property
    def nbytes(self) -> int:
        """Device memory allocated for records."""
        return sum(b.capacity for b in self.blocks) * self.bytes_per_asset

    def ids(self) -> np.ndarray:
        """Sorted ids of the live records."""
        return self._index()[0].copy()

    # -- building -----------------------------------------------------------------------------

    @classmethod
    def from_store(
        cls, store: TokenStore, device: str | torch.device, block_assets: int = 65_536
    ) -> ResidentTokens:
        """Load every live record of a token store onto the device."""
        resident = cls(device, store.format, store.tokens, store.dim, block_assets)
        resident.sync(store, refresh=False)
        return resident

    @classmethod
    def from_tensors(
        cls,
        ids: np.ndarray,
        codes: torch.Tensor,
        scales: torch.Tensor | None = None,
        device: str | torch.device | None = None,
    ) -> ResidentTokens:
        """Records given as tensors (benchmarks, tests): int8 ``codes`` with float32 ``scales``
        (n, T) decode as ``codes * scales``; float16 ``codes`` without scales are E itself."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        fmt = "int8" if codes.dtype == torch.int8 else "float16"
        if fmt == "int8" and (scales is None or scales.shape != codes.shape[:2]):
            raise ValueError("int8 codes need (n, T) float32 scales")
        if fmt == "float16" and (codes.dtype != torch.float16 or scales is not None):
            raise ValueError("codes must be int8 (with scales) or float16 (without)")
        if codes.dim() != 3 or codes.shape[0] != len(ids):
            raise ValueError(f"codes must be ({len(ids)}, T, C), got {tuple(codes.shape)}")
        n, tokens, dim = codes.shape
        dev = check_device(device if device is not None else codes.device)
        resident = cls(dev, fmt, int(tokens), int(dim), max(1, int(n)))
        block = _Block(
            codes.to(dev),
            None if scales is None else scales.to(dev, torch.float32),
            ids.copy(),
            np.arange(n, dtype=np.int64),
            np.ones(n, dtype=bool),
            used=int(n),
        )
        resident.blocks.append(block)
        return resident

    def _new_block(self) -> _Block:
        cap, t, c = self.block_assets, self.tokens, self.dim
        kind = torch.int8 if self.format == "int8" else torch.float16
        return _Block(
            torch.empty(cap, t, c, dtype=kind, device=self.device),
            torch.empty(cap, t, dtype=torch.float32, device=self.device)
            if self.format == "int8"
            else None,
            np.full(cap, -1, np.int64),
            np.full(cap, -1, np.int64),
            np.zeros(cap, bool),
        )

    def _check_room(self, records: int) -> None:
        if self.device.type != "cuda" or records <= 0:
            return
        free, total = torch.cuda.mem_get_info(self.device)
        spare = sum(b.capacity - b.used for b in self.blocks)
        need = max(0, records - spare)
        blocks = -(-need // self.block_assets)
        want = blocks * self.block_assets * self.bytes_per_asset
        if want > HEADROOM * free:
            raise RamdexError(
                f"{records} more records of E need {want / 1e9:.1f} GB on {self.device}; "
                f"{free / 1e9:.1f} GB of {total / 1e9:.1f} GB are free",
                hint="use the int8 token format (index.token_format), a larger GPU, or two-stage "
                "search (stage 2 reads only the shortlist)",
            )

    def _append(
        self, ids: np.ndarray, keys: np.ndarray, codes: np.ndarray, scales: np.ndarray | None
    ) -> None:
        done = 0
        while done < len(ids):
            if not self.blocks or self.blocks[-1].used >= self.blocks[-1].capacity:
                self.blocks.append(self._new_block())
            block = self.blocks[-1]
            take = min(block.capacity - block.used, len(ids) - done)
            a, b = block.used, block.used + take
            block.codes[a:b].copy_(torch.from_numpy(codes[done : done + take]))
            if scales is not None and block.scales is not None:
                block.scales[a:b].copy_(torch.from_numpy(scales[done : done + take]))
            block.ids[a:b] = ids[done : done + take]
            block.keys[a:b] = keys[done : done + take]
            block.alive[a:b] = True
            block.used = b
            done += take

    def sync(self, store: TokenStore, refresh: bool = True) -> dict[str, int]:
        """Follow the store's latest commit: load its new records, drop those it no longer names.

        Args:
            store: the token store this copy mirrors (same format and shape).
            refresh: re-read the store's manifest first (``TokenStore.refresh``).

        Returns:
            ``{"added": n, "dropped": n, "reloaded": 0 or 1}``.
        """
        if (store.format, store.tokens, store.dim) != (self.format, self.tokens, self.dim):
            raise ValueError("the token store's format or shape differs from this copy's")
        if refresh:
            store.refresh()
        snap = store._snap  # one snapshot for the whole sync (internals: see the module doc)
        generation = snap.manifest.get("generation")
        if generation == self.generation and self.blocks:
            return {"added": 0, "dropped": 0, "reloaded": 0}
        live: list[tuple[object, np.ndarray, np.ndarray]] = []  # (shard, slots, keys)
        for shard in snap.shards:
            slots = np.flatnonzero(shard.ids >= 0).astype(np.int64)
            live.append((shard, slots, (_shard_number(shard.name) << 32) | slots))
        all_keys = np.concatenate([k for _, _, k in live]) if live else np.zeros(0, np.int64)
        dropped = 0
        for block in self.blocks:
            rows = np.flatnonzero(block.alive[: block.used])
            gone = rows[~np.isin(block.keys[rows], all_keys)]
            block.alive[gone] = False
            dropped += len(gone)
        held = np.concatenate([b.keys[: b.used][b.alive[: b.used]] for b in self.blocks] or [[]])
        if self.rows and len(held) < 0.5 * self.rows:  # mostly dead (compaction): reload
            self.blocks = []
            self.generation = None
            self._lookup = None
            result = self.sync(store, refresh=False)
            return {"added": result["added"], "dropped": dropped, "reloaded": 1}
        todo = [(shard, slots[~np.isin(keys, held)]) for shard, slots, keys in live]
        self._check_room(sum(len(s) for _, s in todo))
        added = 0
        for shard, slots in todo:
            for start in range(0, len(slots), READ_RECORDS):
                part = slots[start : start + READ_RECORDS]
                records = store._read(shard, part)
                keys = (_shard_number(shard.name) << 32) | part
                if self.format == "int8":
                    codes = np.ascontiguousarray(records["q"])
                    scales = np.ascontiguousarray(records["scale"], dtype=np.float32)
                else:
                    codes, scales = np.ascontiguousarray(records, dtype=np.float16), None
                self._append(shard.ids[part], keys, codes, scales)
                added += len(part)
        self.generation = generation
        self._lookup = None
        return {"added": added, "dropped": dropped, "reloaded": 0}

    # -- reading ------------------------------------------------------------------------------

    def _index(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(sorted live ids, their block, their row)."""
        if self._lookup is None:
            ids, blk, row = [], [], []
            for i, block in enumerate(self.blocks):
                rows = np.flatnonzero(block.alive[: block.used])
                ids.append(block.ids[rows])
                blk.append(np.full(len(rows), i, np.int64))
                row.append(rows)
            if ids:
                all_ids, all_blk, all_row = (np.concatenate(x) for x in (ids, blk, row))
            else:
                all_ids = all_blk = all_row = np.zeros(0, np.int64)
            order = np.argsort(all_ids, kind="stable")
            self._lookup = (all_ids[order], all_blk[order], all_row[order])
        return self._lookup

    def _decode(
        self, codes: torch.Tensor, scales: torch.Tensor | None, dtype: torch.dtype
    ) -> torch.Tensor:
        if scales is None:
            return codes.to(dtype)
        # int8 codes are exact in bf16/fp16/fp32; the product is computed in float32 (type
        # promotion of the in-place multiply) and rounded once into ``dtype``.
        return codes.to(dtype).mul_(scales.unsqueeze(-1))

    def get(self, ids: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """E (n, T, C) of the given live ids, in that order, on the device.

        Raises:
            KeyError: some ids are not held.
        """
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        sorted_ids, blk, row = self._index()
        pos = np.minimum(np.searchsorted(sorted_ids, ids), max(len(sorted_ids) - 1, 0))
        if not len(sorted_ids) or not (sorted_ids[pos] == ids).all():
            raise KeyError("some asset ids are not held on the device")
        out = torch.empty(len(ids), self.tokens, self.dim, dtype=dtype, device=self.device)
        for b in np.unique(blk[pos]):
            at = np.flatnonzero(blk[pos] == b)
            rows = torch.from_numpy(row[pos][at]).to(self.device)
            block = self.blocks[int(b)]
            scales = None if block.scales is None else block.scales[rows]
            out[torch.from_numpy(at).to(self.device)] = self._decode(
                block.codes[rows], scales, dtype
            )
        return out

    def chunks(
        self, chunk: int, dtype: torch.dtype
    ) -> Iterator[tuple[np.ndarray, np.ndarray, torch.Tensor]]:
        """Every held row in chunks: ``(ids, alive mask, E (n, T, C) in dtype on the device)``.

        Chunks with no live row are skipped; dead rows in the others are the caller's to mask.
        """
        for block in self.blocks:
            for a in range(0, block.used, chunk):
                b = min(a + chunk, block.used)
                alive = block.alive[a:b]
                if not alive.any():
                    continue
                scales = None if block.scales is None else block.scales[a:b]
                yield block.ids[a:b], alive, self._decode(block.codes[a:b], scales, dtype)


class DeviceScanner:
    """Exhaustive exact concept search over :class:`ResidentTokens`.

    Args:
        scorer: the open-set scorer, on the residents' device (bf16 on a GPU); its
            ``asset_chunk`` is the scan's chunk.
        tokens: the resident E.
        store: the token store ``tokens`` mirrors; when given, each search first follows its
            commits (:meth:`ResidentTokens.sync`: one manifest read when nothing changed).
        calibration: the threshold rule (as :class:`indexer.retroactive.RetroactiveSearcher`).
    """

    def __init__(
        self,
        scorer: OpenSetScorer,
        tokens: ResidentTokens,
        store: TokenStore | None = None,
        calibration: CalibrationRule | None = None,
    ) -> None:
        if (scorer.device.type, scorer.device.index or 0) != (
            tokens.device.type,
            tokens.device.index or 0,
        ):
            raise ValueError(
                f"the scorer runs on {scorer.device}, the tokens are on {tokens.device}"
            )
        if scorer.embed_dim != tokens.dim:
            raise ValueError(f"tokens are {tokens.dim}-d, the model needs {scorer.embed_dim}-d")
        self.scorer = scorer
        self.tokens = tokens
        self.store = store
        self.rule = calibration or CalibrationRule()

    def _sample(self) -> np.ndarray:
        """The calibration sample: ``TokenStore.sample_ids``'s rule over the live ids."""
        ids = self.tokens.ids()
        if self.rule.sample >= len(ids):
            return ids
        rng = np.random.default_rng(self.rule.seed)
        return np.sort(rng.choice(ids, size=self.rule.sample, replace=False))

    def calibrate(self, bank: LabelBank) -> list:
        """Per-concept thresholds from the background sample, scored on the device."""
        sample = self._sample()
        if not len(sample):
            return [calibrate_logits(np.zeros(0), self.rule)] * bank.num_tags
        logits = np.empty((len(sample), bank.num_tags), np.float32)
        step = self.scorer.asset_chunk
        for a in range(0, len(sample), step):
            embeds = self.tokens.get(sample[a : a + step], self.scorer.dtype)
            logits[a : a + step] = self.scorer.logits(embeds, bank).numpy()
        return [calibrate_logits(logits[:, k], self.rule) for k in range(bank.num_tags)]

    def scan(
        self, bank: LabelBank, top_k: int | None = 100
    ) -> tuple[list[tuple[np.ndarray, np.ndarray]], int]:
        """Score every live asset; per concept ``(ids, logits)`` best first, and the count."""
        best = RunningTopK(bank.num_tags, top_k)
        for ids, alive, embeds in self.tokens.chunks(self.scorer.asset_chunk, self.scorer.dtype):
            logits = self.scorer.logits(embeds, bank).numpy()
            best.add(ids[alive], logits[alive])
        return [rank_by_logit(ids, logits, top_k) for ids, logits in best.kept()], best.scored

    def search(
        self,
        bank: LabelBank,
        names: Sequence[str] | None = None,
        top_k: int | None = 100,
        calibrate: bool = True,
    ) -> list[ConceptResult]:
        """Rank every held asset for each concept (``mode="exhaustive"`` results).

        Same contract as ``RetroactiveSearcher.search(..., mode="exhaustive")``.
        """
        if top_k is not None and top_k < 1:
            raise ValueError("top_k must be >= 1 (or None for all)")
        names = [str(k) for k in range(bank.num_tags)] if names is None else list(names)
        if len(names) != bank.num_tags:
            raise ValueError(f"{len(names)} names for {bank.num_tags} concepts")
        t0 = time.perf_counter()
        if self.store is not None:
            self.tokens.sync(self.store)
        t1 = time.perf_counter()
        if calibrate:
            calibrations = self.calibrate(bank)
        else:
            calibrations = [calibrate_logits(np.zeros(0), self.rule)] * bank.num_tags
        t2 = time.perf_counter()
        ranked, scored = self.scan(bank, top_k)
        t3 = time.perf_counter()
        timings = {"sync": t1 - t0, "stage1": 0.0, "stage2": t3 - t2, "calibration": t2 - t1}
        results = []
        for k, (ids, logits) in enumerate(ranked):
            logits = logits.astype(np.float32)
            scores = (1.0 / (1.0 + np.exp(-logits.astype(np.float64)))).astype(np.float32)
            results.append(
                ConceptResult(
                    names[k], ids, logits, scores, calibrations[k], "exhaustive", scored, timings
                )
            )
        return results
