"""Retroactive concept search: rank archived assets for a new concept without the image model.

Two stages:

1. **Shortlist** (:mod:`indexer.stage1`). The concept's text-side query (today the mean of its
   unit-norm description embeddings) is searched against the stored unit-norm image embeddings
   c (the same 512-d space as the label bank) through any candidate source with
   ``search(query (1, d) float32, k) -> (scores, ids)`` (the FAISS index). ``shortlist`` assets
   (settings ``index.shortlist``, 2000 by default) come back.
2. **Exact scores.** The shortlist's token embeddings E are read from the token store and scored
   with the full RAM++ head (:class:`ram_pp.openset.OpenSetScorer`), then ranked.

``mode="exhaustive"`` skips stage 1 and streams every asset of the token store through stage 2
(recall checks, small archives); all concepts of the bank share every read of E.

Reading overlaps scoring: E comes from the token store in chunks sorted by storage position
(each chunk one pass over its shard, straight into its buffer) on a reader thread while the
previous chunk is scored, and the background sample that calibration scores is kept in memory
in the scorer's compute dtype (so a new concept's calibration costs compute only).

Exact results in the fast dtype: when the scorer computes in bfloat16 (``index.score_dtype``),
the ``exact_top`` best assets per concept plus a margin (``exact_margin``) are scored again in
float32 and re-ranked, so the first ``exact_top`` results carry exact logits and the exact order
(bf16 errors, ~0.03 logit on average, only decide which assets make the margin).

Calibration (per concept; see :class:`CalibrationRule`): open-set logits run lower than the
built-in tags', so one fixed cut-off does not fit every concept. The concept is scored exactly on
a uniform random background sample of the archive; with median m and robust spread
s = 1.4826 * MAD of those logits, the outlier cut is m + z * s (z = 3). The threshold is the lower
of that cut and upstream's open-set rule (probability 0.5, logit 0): an asset is a hit when the
model itself says yes, or when it stands out from the archive by z robust deviations. With fewer
than ``min_background`` assets in the archive the rule falls back to probability 0.5.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import numpy as np
import torch

from indexer.stage1 import CandidateSource
from indexer.stage1 import shortlist as stage1_shortlist
from indexer.token_store import TokenStore
from ram_pp.labels import LabelBank
from ram_pp.openset import Int8Embeds, OpenSetScorer

Mode = Literal["two_stage", "exhaustive"]
T_co = TypeVar("T_co")


@dataclass(frozen=True)
class CalibrationRule:
    """How a concept's threshold is derived from its scores over the archive.

    Attributes:
        sample: background assets scored (uniform random, reproducible by ``seed``).
        z: robust standard deviations above the median for the outlier cut.
        min_background: below this many assets the rule falls back to ``fallback_probability``.
        fallback_probability: upstream's open-set threshold (0.5); also the cap: the threshold
            is never above it.
        seed: sampling seed.
    """

    sample: int = 512
    z: float = 3.0
    min_background: int = 32
    fallback_probability: float = 0.5
    seed: int = 0


@dataclass(frozen=True)
class Calibration:
    """A concept's threshold and how it was found.

    Attributes:
        threshold_logit: assets with a logit strictly above it are hits.
        threshold: the same as a probability (sigmoid).
        rule: "robust_outlier" (the cut m + z*s was lower than the fallback), "fallback"
            (too few background assets, or the fallback was lower).
        background: number of background assets scored.
        median: background median logit (nan without background).
        spread: 1.4826 * MAD of the background logits (nan without background).
    """

    threshold_logit: float
    threshold: float
    rule: str
    background: int
    median: float = float("nan")
    spread: float = float("nan")


@dataclass
class ConceptResult:
    """Ranked assets for one concept (best first).

    Attributes:
        name: concept name (or its index as a string when no names were given).
        ids: (n,) int64 asset ids, best first.
        logits: (n,) float32 exact RAM++ logits.
        scores: (n,) float32 probabilities (sigmoid of the logits).
        calibration: the concept's threshold.
        mode: "two_stage" or "exhaustive".
        scored: assets that received exact scores.
        timings: seconds per stage ("stage1", "stage2", "calibration").
    """

    name: str
    ids: np.ndarray
    logits: np.ndarray
    scores: np.ndarray
    calibration: Calibration
    mode: str
    scored: int
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def threshold(self) -> float:
        """The concept's probability threshold."""
        return self.calibration.threshold

    @property
    def hits(self) -> np.ndarray:
        """Boolean mask of results above the threshold."""
        return self.logits > self.calibration.threshold_logit


def _logit(p: float) -> float:
    return float(np.log(p) - np.log1p(-p))


def _sigmoid(x: np.ndarray | float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def calibrate_logits(background: np.ndarray, rule: CalibrationRule) -> Calibration:
    """Apply the calibration rule to one concept's background logits."""
    fallback = _logit(rule.fallback_probability)
    background = np.asarray(background, dtype=np.float64)
    if len(background) < rule.min_background:
        return Calibration(fallback, rule.fallback_probability, "fallback", len(background))
    median = float(np.median(background))
    spread = max(1.4826 * float(np.median(np.abs(background - median))), 1e-6)
    cut = median + rule.z * spread
    chosen, name = (cut, "robust_outlier") if cut < fallback else (fallback, "fallback")
    return Calibration(chosen, float(_sigmoid(chosen)), name, len(background), median, spread)


def rank_by_logit(
    ids: np.ndarray, logits: np.ndarray, top_k: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Sort by logit descending, ties by id ascending (every searcher ranks so); keep top_k."""
    order = np.lexsort((ids, -logits))
    if top_k is not None:
        order = order[:top_k]
    return ids[order], logits[order]


def prefetch(items: Iterable[T_co], depth: int = 1) -> Iterator[T_co]:
    """The items of an iterable, each produced on one reader thread ``depth`` items ahead.

    File reads (``preadv``) release the GIL, so the next chunk is read while the caller
    scores the current one. One worker thread: the iterable is never advanced concurrently.
    """
    done = object()
    source = iter(items)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ramdex-read") as pool:
        pending = [pool.submit(next, source, done) for _ in range(depth + 1)]
        while True:
            item = pending.pop(0).result()
            if item is done:
                return
            pending.append(pool.submit(next, source, done))
            yield item


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int = 100) -> float:
    """Fraction of the first k true ids that appear among the first k found ids."""
    truth_k = np.asarray(truth)[:k]
    if not len(truth_k):
        return 1.0
    return float(np.isin(truth_k, np.asarray(found)[:k]).sum() / len(truth_k))


class RunningTopK:
    """The best ``keep`` (asset id, logit) pairs per concept over a stream of scored chunks.

    Args:
        concepts: number of concepts (columns of each chunk's logits).
        keep: pairs kept per concept (None = all).
    """

    def __init__(self, concepts: int, keep: int | None) -> None:
        self.keep = keep
        self.scored = 0
        self._ids = [np.zeros(0, np.int64) for _ in range(concepts)]
        self._logits = [np.zeros(0, np.float32) for _ in range(concepts)]

    def add(self, ids: np.ndarray, logits: np.ndarray) -> None:
        """Merge one chunk: ``ids`` (n,), ``logits`` (n, concepts)."""
        self.scored += len(ids)
        for k in range(len(self._ids)):
            cand_ids = np.concatenate([self._ids[k], ids])
            cand_logits = np.concatenate([self._logits[k], logits[:, k]])
            if self.keep is not None and len(cand_ids) > self.keep:
                top = np.argpartition(-cand_logits, self.keep - 1)[: self.keep]
                cand_ids, cand_logits = cand_ids[top], cand_logits[top]
            self._ids[k], self._logits[k] = cand_ids, cand_logits

    def kept(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per concept, the kept ``(ids, logits)``, unordered (:func:`rank_by_logit` ranks)."""
        return list(zip(self._ids, self._logits, strict=True))


class RetroactiveSearcher:
    """Ranks stored assets for new concepts (two-stage or exhaustive).

    Args:
        scorer: the open-set scorer (wraps the RAM++ head).
        store: the token store with every asset's E.
        candidates: stage-1 source over the stored image embeddings c (the FAISS index); may be
            None when only exhaustive search is used.
        shortlist: stage-1 candidates per concept (settings ``index.shortlist``).
        chunk: assets read from the token store per batch (192 float16 records are 28.5 MB:
            under glibc's 32 MB mmap threshold, so read buffers are reused, not page-faulted).
        calibration: the threshold rule.
        exact_top: results per concept re-scored in float32 when the scorer computes in a
            reduced dtype (0: never).
        exact_margin: extra candidates re-scored beyond ``exact_top``.
    """

    def __init__(
        self,
        scorer: OpenSetScorer,
        store: TokenStore,
        candidates: CandidateSource | None = None,
        shortlist: int = 2000,
        chunk: int = 192,
        calibration: CalibrationRule | None = None,
        exact_top: int = 100,
        exact_margin: int = 100,
    ) -> None:
        if shortlist < 1 or chunk < 1 or exact_top < 0 or exact_margin < 0:
            raise ValueError("shortlist and chunk must be >= 1")
        if store.dim != scorer.embed_dim:
            raise ValueError(
                f"token store holds {store.dim}-d embeddings, the model needs {scorer.embed_dim}-d"
            )
        self.scorer = scorer
        self.store = store
        self.candidates = candidates
        self.shortlist = shortlist
        self.chunk = chunk
        self.rule = calibration or CalibrationRule()
        self.exact_top = exact_top
        self.exact_margin = exact_margin
        self._exact: OpenSetScorer | None = None
        self._calibrations: dict[str, tuple[int, Calibration]] = {}
        # (archive size, sample ids, their E in the scorer's compute dtype): 512 assets are
        # 76 MB in bf16, scored for every new concept
        self._background: tuple[int, np.ndarray, torch.Tensor] | None = None
        # float16 stores are read as stored; the scorer converts one chunk at a time (on its
        # device), which avoids a float32 copy of the whole shortlist.
        # int8 stores are read as stored too (q and scale, half the bytes of float16) and
        # dequantized block by block into the scorer's buffer (see _read).
        self._read_dtype = np.float16 if store.format == "float16" else np.float32

    @classmethod
    def from_settings(
        cls,
        scorer: OpenSetScorer,
        store: TokenStore,
        candidates: CandidateSource | None = None,
        settings=None,
    ) -> RetroactiveSearcher:
        """A searcher with the shortlist size from ``settings.index.shortlist`` (the scorer's
        compute dtype comes from ``settings.index.score_dtype`` where the scorer is built)."""
        if settings is None:
            from indexer.settings import get_settings

            settings = get_settings()
        return cls(scorer, store, candidates, shortlist=settings.index.shortlist)

    # -- calibration --------------------------------------------------------------------------

    @staticmethod
    def _bank_key(bank: LabelBank, k: int) -> str:
        rows = bank.embeddings[k]
        if bank.mask is not None:
            rows = rows[bank.mask[k]]
        return hashlib.sha1(rows.float().contiguous().numpy().tobytes()).hexdigest()

    def calibrate(self, bank: LabelBank) -> list[Calibration]:
        """Per-concept thresholds (cached per concept until the archive grows or shrinks 10%)."""
        keys = [self._bank_key(bank, k) for k in range(bank.num_tags)]
        size = len(self.store)
        todo = [
            k
            for k, key in enumerate(keys)
            if key not in self._calibrations
            or abs(self._calibrations[key][0] - size) > 0.1 * max(size, 1)
        ]
        if todo:
            sub = bank.select(torch.tensor(todo))
            sample, embeds = self.background()
            if len(sample):
                logits = self.scorer.logits(embeds, sub).numpy()
            else:
                logits = np.zeros((0, len(todo)), np.float32)
            for j, k in enumerate(todo):
                self._calibrations[keys[k]] = (size, calibrate_logits(logits[:, j], self.rule))
        return [self._calibrations[key][1] for key in keys]

    def background(self) -> tuple[np.ndarray, torch.Tensor]:
        """The calibration sample's ids and E (compute dtype, in memory), read once and kept
        until the archive size changes by more than 10 %."""
        size = len(self.store)
        cached = self._background
        if cached is None or abs(cached[0] - size) > 0.1 * max(size, 1):
            sample = self.store.sample_ids(self.rule.sample, seed=self.rule.seed)
            sample = sample[self.store.storage_order(sample)]
            embeds = self.scorer.to_compute(self._read(sample))
            cached = self._background = (size, sample, embeds)
        return cached[1], cached[2]

    # -- scoring ------------------------------------------------------------------------------

    def _read(self, ids: np.ndarray) -> np.ndarray | Int8Embeds:
        """E of stored assets as the scorer takes it: int8 records as stored, else float16 /
        float32 arrays."""
        if self.store.format == "int8":
            return Int8Embeds.from_numpy(*self.store.get_int8(ids))
        return self.store.get(ids, dtype=self._read_dtype)

    def _chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray | Int8Embeds]]:
        """Every stored asset, a chunk at a time, as :meth:`_read` returns E."""
        if self.store.format == "int8":
            for ids, q, scale in self.store.iter_int8_chunks(self.chunk):
                yield ids, Int8Embeds.from_numpy(q, scale)
        else:
            yield from self.store.iter_chunks(self.chunk, dtype=self._read_dtype)

    def _score_ids(self, ids: np.ndarray, bank: LabelBank) -> np.ndarray:
        """Exact logits (n, K) for stored assets, in the order given.

        The ids are read sorted by storage position, a chunk at a time on the reader thread
        (overlapping the scoring of the previous chunk); the logits go back to the given order.
        """
        out = np.empty((len(ids), bank.num_tags), dtype=np.float32)
        order = self.store.storage_order(ids)
        parts = [order[i : i + self.chunk] for i in range(0, len(order), self.chunk)]

        def read(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | Int8Embeds]:
            return rows, self._read(ids[rows])

        for rows, embeds in prefetch(read(rows) for rows in parts):
            out[rows] = self.scorer.logits(embeds, bank).numpy()
        return out

    def _exact_scorer(self) -> OpenSetScorer | None:
        """The float32 scorer for the re-scored head of each ranking (None when exact already)."""
        if self.scorer.dtype == torch.float32 or not self.exact_top:
            return None
        if self._exact is None:  # shares the model's float32 modules: no copy of the head
            self._exact = OpenSetScorer(
                self.scorer.model, device=self.scorer.device, asset_chunk=self.scorer.asset_chunk
            )
        return self._exact

    def _refine(
        self, ids: np.ndarray, logits: np.ndarray, bank: LabelBank, top_k: int | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rank; with a reduced-precision scorer, re-score the head of the ranking in float32."""
        exact = self._exact_scorer()
        if exact is None:
            return rank_by_logit(ids, logits, top_k)
        ids, logits = rank_by_logit(ids, logits, None)
        head = min(len(ids), self.exact_top + self.exact_margin)
        if top_k is not None:
            head = min(head, top_k + self.exact_margin)
        logits = logits.copy()
        order = self.store.storage_order(ids[:head])
        embeds = self._read(ids[:head][order])
        logits[:head][order] = exact.logits(embeds, bank).numpy()[:, 0]
        return rank_by_logit(ids, logits, top_k)

    def _stage1(self, concept: LabelBank, k: int) -> np.ndarray:
        if self.candidates is None:
            raise ValueError("two-stage search needs a candidate source (the FAISS index)")
        return stage1_shortlist(concept, self.candidates, self.store, k)

    def _exhaustive(
        self, bank: LabelBank, top_k: int | None
    ) -> tuple[list[tuple[np.ndarray, np.ndarray]], int]:
        """Stream every stored asset; keep the best top_k per concept."""
        keep_n = top_k
        if top_k is not None and self._exact_scorer() is not None:
            keep_n = top_k + self.exact_margin  # the margin that _refine re-scores
        best = RunningTopK(bank.num_tags, keep_n)
        chunks = prefetch(self._chunks())
        for ids, logits in self.scorer.stream(chunks, bank):
            best.add(ids, logits.numpy())
        ranked = [
            self._refine(ids, logits, bank.select(slice(k, k + 1)), top_k)
            for k, (ids, logits) in enumerate(best.kept())
        ]
        return ranked, best.scored

    # -- public -------------------------------------------------------------------------------

    def search(
        self,
        bank: LabelBank,
        names: Sequence[str] | None = None,
        top_k: int | None = 100,
        mode: Mode = "two_stage",
        shortlist: int | None = None,
        calibrate: bool = True,
    ) -> list[ConceptResult]:
        """Rank assets for each concept of a label bank.

        Args:
            bank: the concepts (``ram_pp.concepts.encode_concepts`` output).
            names: one name per concept, for the results.
            top_k: results kept per concept (None = every scored asset).
            mode: "two_stage" (shortlist from the candidate source, then exact scores) or
                "exhaustive" (exact scores for every stored asset).
            shortlist: stage-1 size for this call (default: the searcher's).
            calibrate: compute per-concept thresholds (else the fallback 0.5 rule).

        Returns:
            One :class:`ConceptResult` per concept, in bank order.
        """
        if mode not in ("two_stage", "exhaustive"):
            raise ValueError(f"mode must be 'two_stage' or 'exhaustive', got {mode!r}")
        if top_k is not None and top_k < 1:
            raise ValueError("top_k must be >= 1 (or None for all)")
        names = [str(k) for k in range(bank.num_tags)] if names is None else list(names)
        if len(names) != bank.num_tags:
            raise ValueError(f"{len(names)} names for {bank.num_tags} concepts")
        shortlist = self.shortlist if shortlist is None else shortlist
        if shortlist < 1:
            raise ValueError("shortlist must be >= 1")

        t0 = time.perf_counter()
        if calibrate:
            calibrations = self.calibrate(bank)
        else:
            calibrations = [calibrate_logits(np.zeros(0), self.rule)] * bank.num_tags
        t_cal = time.perf_counter() - t0

        results = []
        if mode == "exhaustive":
            t1 = time.perf_counter()
            ranked, scored = self._exhaustive(bank, top_k)
            t_scan = time.perf_counter() - t1
            for k, (ids, logits) in enumerate(ranked):
                results.append(
                    self._result(
                        names[k],
                        ids,
                        logits,
                        calibrations[k],
                        mode,
                        scored,
                        {"stage1": 0.0, "stage2": t_scan, "calibration": t_cal},
                    )
                )
            return results

        for k in range(bank.num_tags):
            t1 = time.perf_counter()
            sub = bank.select(slice(k, k + 1))
            cand = self._stage1(sub, shortlist)
            t2 = time.perf_counter()
            logits = self._score_ids(cand, sub)[:, 0] if len(cand) else np.zeros(0, np.float32)
            ids, logits = self._refine(cand, logits, sub, top_k)
            t3 = time.perf_counter()
            results.append(
                self._result(
                    names[k],
                    ids,
                    logits,
                    calibrations[k],
                    mode,
                    len(cand),
                    {"stage1": t2 - t1, "stage2": t3 - t2, "calibration": t_cal},
                )
            )
        return results

    @staticmethod
    def _result(name, ids, logits, calibration, mode, scored, timings) -> ConceptResult:
        logits = logits.astype(np.float32)
        scores = _sigmoid(logits).astype(np.float32)
        return ConceptResult(
            name, ids.astype(np.int64), logits, scores, calibration, mode, scored, timings
        )
