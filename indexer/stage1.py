"""Stage 1 of retroactive concept search: the shortlist of assets worth exact scores.

A concept (one row group of a label bank) becomes one or more query vectors in the space of the
stored unit-norm image embeddings c; a candidate source (the FAISS index) returns the nearest
assets. :func:`shortlist` returns at most ``k`` distinct asset ids that the token store holds,
best first.

Methods (``method=``):

- ``"mean"``: one query, the normalised mean of the concept's descriptions
  (:func:`ram_pp.openset.concept_vectors`); the re-weighting's limit for a flat softmax.
- ``"probes"``: one query per description, all in one search call; an asset's stage-1 score is
  its best description similarity, max_d c . b_d. RAM++'s step 5 re-weights the descriptions per
  image with a sharp softmax (exp(reweight_scale) ~ 14 over c . b_d), so the query the head sees
  is dominated by the descriptions nearest to c: an image that matches one description well
  (one view, one style) is what the head rewards, and the mean of all descriptions dilutes it.
  With ``k`` results per probe, the merged top ``k`` is exactly the top ``k`` by that maximum.
- ``"softmax"``: the same probes, scored with the re-weighting's own weights,
  sum_d softmax(scale * s)_d s_d over the probes' scores s (a probe that did not return the
  asset contributes its lowest returned score, an upper bound).
- ``"clusters"``: the descriptions grouped (spherical k-means, at most ``max_probes``), one
  query per group mean, merged by max: fewer probes for concepts with many descriptions.
- ``"mixed"``: the mean's ranking and the probes' ranking interleaved (distinct ids), so the
  shortlist holds the best of both.

Opt-in, with stage 2's help: :func:`adaptive_scores` scores a longer ranked list in rank order
and stops once a round of candidates no longer enters the running top 100 (:class:`AdaptiveRule`;
on the synthetic 100k it lifts the most common concept from 0.91 to 1.00 recall@100 at the same
mean stage-2 work, docs/stage1.md).

The candidate source may return (q, k) arrays (FAISS) or one 1-D array per query row
(:meth:`indexer.faiss_index.VectorIndex.search`); FAISS's -1 padding is dropped either way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from indexer.token_store import TokenStore
from ram_pp.labels import LabelBank
from ram_pp.openset import concept_vectors

METHODS = ("mean", "probes", "softmax", "clusters", "mixed")
DEFAULT_SCALE = 1 / 0.07  # exp(reweight_scale) of RAM++ at initialisation (published: ~14)


class CandidateSource(Protocol):
    """Anything that finds the assets whose stored image embedding c is nearest to a query."""

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Inner-product search: (scores, ids) for a (q, d) float32 query; ids < 0 = no hit."""
        ...


def description_rows(concept: LabelBank) -> np.ndarray:
    """The concept's real (unpadded) description rows, (D, dim) float32."""
    rows = concept.embeddings[0].float().numpy()
    if concept.mask is not None:
        rows = rows[concept.mask[0].numpy()]
    return np.ascontiguousarray(rows, dtype=np.float32)


def cluster_rows(rows: np.ndarray, groups: int, iterations: int = 10) -> np.ndarray:
    """Unit-norm means of ``rows`` grouped by spherical k-means (deterministic), (g, dim)."""
    groups = min(groups, len(rows))
    # Farthest-point start from the first row (the base description): deterministic and spread.
    chosen = [0]
    best = rows @ rows[0]
    for _ in range(groups - 1):
        nxt = int(np.argmin(best))
        chosen.append(nxt)
        best = np.maximum(best, rows @ rows[nxt])
    centres = rows[chosen].copy()
    for _ in range(iterations):
        assign = np.argmax(rows @ centres.T, axis=1)
        for g in range(groups):
            members = rows[assign == g]
            if len(members):
                centres[g] = members.sum(0)
        centres /= np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)
    return centres.astype(np.float32)


def _rows(result: Sequence[np.ndarray] | np.ndarray) -> list[np.ndarray]:
    """One 1-D array per query row, from a (q, k) array or a list of rows."""
    if isinstance(result, np.ndarray) and result.ndim == 2:
        return list(result)
    return [np.asarray(r).reshape(-1) for r in result]


def _search(
    candidates: CandidateSource, queries: np.ndarray, k: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    scores, ids = candidates.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    out_s, out_i = [], []
    for s, i in zip(_rows(scores), _rows(ids), strict=True):
        i = np.asarray(i, dtype=np.int64)
        keep = i >= 0
        out_s.append(np.asarray(s, dtype=np.float32)[keep])
        out_i.append(i[keep])
    return out_s, out_i


def _first_distinct(ids: np.ndarray) -> np.ndarray:
    """``ids`` with repeats removed, first occurrence kept, order kept."""
    _, first = np.unique(ids, return_index=True)
    return ids[np.sort(first)]


def _merge_max(scores: list[np.ndarray], ids: list[np.ndarray]) -> np.ndarray:
    """Distinct ids ranked by their best score over all rows (ties: lower id first)."""
    all_s, all_i = np.concatenate(scores), np.concatenate(ids)
    order = np.lexsort((all_i, -all_s))
    return _first_distinct(all_i[order])


def _merge_softmax(scores: list[np.ndarray], ids: list[np.ndarray], scale: float) -> np.ndarray:
    """Distinct ids ranked by sum_d softmax(scale * s)_d s_d over the rows' scores."""
    union = np.unique(np.concatenate(ids))
    table = np.empty((len(scores), len(union)), dtype=np.float64)
    for r, (s, i) in enumerate(zip(scores, ids, strict=True)):
        # an asset a probe did not return scores at most that probe's last (lowest) result
        table[r] = s.min() if len(s) else -1.0
        table[r, np.searchsorted(union, i)] = s
    logits = scale * table
    weights = np.exp(logits - logits.max(0, keepdims=True))
    merged = (weights * table).sum(0) / weights.sum(0)
    return union[np.lexsort((union, -merged))]


def _interleave(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    both = np.empty(len(a) + len(b), dtype=np.int64)
    n = min(len(a), len(b))
    both[: 2 * n : 2], both[1 : 2 * n : 2] = a[:n], b[:n]
    both[2 * n :] = a[n:] if len(a) > n else b[n:]
    return _first_distinct(both)


def ranked_candidates(
    concept: LabelBank,
    candidates: CandidateSource,
    k: int,
    method: str = "mean",
    *,
    max_probes: int = 8,
    scale: float = DEFAULT_SCALE,
) -> np.ndarray:
    """Distinct candidate ids, best first (possibly more than ``k``; not checked for storage)."""
    if method not in METHODS:
        raise ValueError(f"stage-1 method must be one of {METHODS}, got {method!r}")
    if method == "mean":
        vector = concept_vectors(concept).numpy()
        return _first_distinct(_search(candidates, vector, k)[1][0])
    rows = description_rows(concept)
    if method == "clusters":
        rows = cluster_rows(rows, max_probes)
    if method == "mixed":
        mean = concept_vectors(concept).numpy()
        scores, ids = _search(candidates, np.concatenate([mean, rows]), k)
        return _interleave(ids[0], _merge_max(scores[1:], ids[1:]))
    scores, ids = _search(candidates, rows, k)
    if method == "softmax":
        return _merge_softmax(scores, ids, scale)
    return _merge_max(scores, ids)


def shortlist(
    concept: LabelBank,
    candidates: CandidateSource,
    store: TokenStore,
    k: int,
    method: str = "mean",
    *,
    max_probes: int = 8,
    scale: float = DEFAULT_SCALE,
) -> np.ndarray:
    """Up to ``k`` distinct stored asset ids for one concept (a one-tag label bank), best first.

    Args:
        concept: the concept's label bank (one tag, ragged descriptions allowed).
        candidates: the stage-1 source (``search(query (q, d) float32, k)``).
        store: the token store; ids it does not hold (deleted since) are dropped.
        k: shortlist size (>= 1).
        method: one of :data:`METHODS` (module doc).
        max_probes: groups for ``"clusters"``.
        scale: softmax sharpness for ``"softmax"`` (the model's exp(reweight_scale)).
    """
    if concept.num_tags != 1:
        raise ValueError(f"shortlist takes one concept at a time, got {concept.num_tags}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    ids = ranked_candidates(concept, candidates, k, method, max_probes=max_probes, scale=scale)
    return ids[store.has(ids)][:k]


@dataclass(frozen=True)
class AdaptiveRule:
    """How :func:`adaptive_scores` grows a shortlist (opt-in; docs/stage1.md).

    Attributes:
        first: candidates scored before the rule looks at anything.
        step: candidates scored per further round.
        min_new: a round continues the search when at least this many of its assets enter the
            running top ``top`` (scored so far); otherwise the search stops.
        top: the ranking whose cut is watched (the results the caller keeps).
        limit: never more candidates than this (bounds stage 2's worst case).
    """

    first: int = 1500
    step: int = 250
    min_new: int = 1
    top: int = 100
    limit: int = 3000

    def __post_init__(self) -> None:
        if min(self.first, self.step, self.min_new, self.top) < 1 or self.limit < self.first:
            raise ValueError(f"invalid adaptive rule {self}")


def adaptive_scores(
    ranked: np.ndarray,
    score: Callable[[np.ndarray], np.ndarray],
    rule: AdaptiveRule | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact scores of a ranked candidate list, scored in rank order until the tail stops paying.

    ``ranked`` holds stage 1's candidates, best first (at least ``rule.limit`` of them when
    available); ``score(ids)`` returns their exact logits (stage 2). The first ``rule.first``
    are scored; then rounds of ``rule.step`` while a round puts at least ``rule.min_new`` assets
    above the running ``rule.top``-th best logit, up to ``rule.limit``. Common concepts (many
    occurrences ranked by stage 1 just past a fixed cut) get a longer shortlist, concepts whose
    tail holds nothing a shorter one.

    Returns:
        (ids scored, their logits), in ``ranked`` order.
    """
    rule = rule or AdaptiveRule()
    ranked = np.asarray(ranked, dtype=np.int64)[: rule.limit]
    parts = [np.asarray(score(ranked[: rule.first]), dtype=np.float32).reshape(-1)]
    n = len(parts[0])
    while n < len(ranked):
        seen = np.concatenate(parts)
        cut = (
            np.partition(seen, len(seen) - rule.top)[len(seen) - rule.top]
            if len(seen) >= rule.top
            else -np.inf
        )
        nxt = np.asarray(score(ranked[n : n + rule.step]), dtype=np.float32).reshape(-1)
        parts.append(nxt)
        n += len(nxt)
        if int((nxt > cut).sum()) < rule.min_new:
            break
    return ranked[:n], np.concatenate(parts)
