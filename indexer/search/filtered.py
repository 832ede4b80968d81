"""Filtered vector search planned by selectivity: a concept's stage 1 or a similar-image search
restricted to the assets that pass tag, type, date or collection filters.

"Recall 1,000 by similarity, then filter" returns nothing for a rare filter (0.1 % of a large
archive: about one of the 1,000 recalled passes). Instead the filter's selectivity is counted
first (one ``COUNT`` in the database) and the plan follows it, as the NeurIPS'23 filtered-search
track's winners do:

* ``exact``: few assets pass (at most :data:`EXACT_MAX`): read their c and score them all
  (exact inner products; the answer is the exact filtered top k);
* ``selector``: up to :data:`SELECTOR_MAX_FRACTION` of the index passes: FAISS scans with an id
  selector (skipping non-passing ids while it scans), with ``nprobe`` raised so that the lists
  visited hold about :data:`PROBE_MARGIN` x k passing vectors; the best are re-scored exactly
  when their c can be read;
* ``widen``: most assets pass: an ordinary search for ``k / selectivity`` x 2 results, filtered,
  widened (doubled) until k pass or the whole index was asked.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from indexer.archive import Archive
    from indexer.faiss_index import VectorIndex
    from indexer.retroactive import RetroactiveSearcher
    from indexer.search.timing import Phases
    from indexer.stage1 import CandidateSource

EXACT_MAX = 20_000  # passing assets scored directly (20k x 512 inner products: about 1 ms)
SELECTOR_MAX_FRACTION = 0.2  # id selector up to this share of the index; widening beyond
PROBE_MARGIN = 4  # passing vectors the visited lists should hold, per result wanted
SELECTOR_RERANK = 10  # selector results re-scored exactly, per result wanted (PQ scores are coarse)
RERANK_MARGIN = 4  # selector and widen results re-scored exactly, per result wanted

# Reads the image embeddings c of these ids: (ids found, (n, dim) float32).
VectorReader = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


class FilterSet(Protocol):
    """The ids a filter passes (backed by the database in the service, by arrays in tests):
    asset ids, and frame keys when the filter reaches frames (:class:`SqlFilter`)."""

    def count(self) -> int:
        """How many ids pass (the selectivity's numerator)."""
        ...

    def ids(self) -> np.ndarray:
        """Every passing id (int64)."""
        ...

    def contains(self, ids: np.ndarray) -> np.ndarray:
        """Which of ``ids`` pass (bool mask)."""
        ...


@dataclass
class IdFilter:
    """A filter given by its passing ids."""

    allowed: np.ndarray

    def __post_init__(self) -> None:
        self.allowed = np.unique(np.asarray(self.allowed, np.int64))

    def count(self) -> int:
        return int(self.allowed.size)

    def ids(self) -> np.ndarray:
        return self.allowed

    def contains(self, ids: np.ndarray) -> np.ndarray:
        return np.isin(ids, self.allowed)


class SqlFilter:
    """A filter given by SQL conditions on ``assets`` (done assets only): counted once, its ids
    read only when the plan needs them.

    With ``frames`` (the default) the filter also passes the frames of the passing assets under
    their frame keys (:mod:`indexer.frame_keys`): the index and the token store hold a video's
    frames beside its poster, and a filtered search must reach the moment that matches, as the
    unfiltered one does (the ranking is folded onto assets afterwards,
    :func:`indexer.search.frames.fold_frames`). ``count`` then counts vectors (assets and
    frames), which is what the planner compares with the index's size.
    """

    def __init__(
        self, session: Session, conditions: Sequence[object], *, frames: bool = True
    ) -> None:
        self.session = session
        self.conditions = list(conditions)
        self.frames = frames
        self._count: int | None = None
        self._ids: np.ndarray | None = None
        self._assets: np.ndarray | None = None  # the passing asset ids, when read

    def count(self) -> int:
        from indexer.db.frame_repo import count_matching_frames, frame_keys_of
        from indexer.db.search import count_matching_assets, matching_asset_ids

        if self._count is None:
            # One read answers a small filter's count and ids at once (the exact plan needs
            # both: a collection of 1,000 assets, two statements -> one); a larger one is
            # counted in the database.
            probe = matching_asset_ids(self.session, self.conditions, limit=EXACT_MAX + 1)
            if len(probe) <= EXACT_MAX:
                self._assets = np.array(probe, np.int64)
                keys = frame_keys_of(self.session, probe) if self.frames else _NO_IDS
                self._ids = np.concatenate([self._assets, keys])
                self._count = int(self._ids.size)
            else:
                self._count = count_matching_assets(self.session, self.conditions)
                if self.frames:
                    self._count += count_matching_frames(self.session, self.conditions)
        return self._count

    def ids(self) -> np.ndarray:
        from indexer.db.frame_repo import matching_frame_keys
        from indexer.db.search import matching_asset_ids

        if self._ids is None:
            assets = np.array(matching_asset_ids(self.session, self.conditions), np.int64)
            keys = matching_frame_keys(self.session, self.conditions) if self.frames else _NO_IDS
            self._assets, self._ids = assets, np.concatenate([assets, keys])
        return self._ids

    def contains(self, ids: np.ndarray) -> np.ndarray:
        from indexer.db.search import matching_asset_ids
        from indexer.frame_keys import asset_of, is_frame_key

        ids = np.asarray(ids, np.int64)
        owners = ids.copy()  # a frame passes when its asset does
        frame = is_frame_key(ids)
        if self.frames:
            owners[frame] = asset_of(ids[frame])
        if self._assets is not None:
            passes = np.isin(owners, self._assets)
        else:
            passing: list[int] = []
            for part in chunks(np.unique(owners[~frame | self.frames])):
                passing += matching_asset_ids(self.session, self.conditions, among=part.tolist())
            passes = np.isin(owners, np.array(passing, np.int64))
        return passes if self.frames else passes & ~frame


_NO_IDS = np.zeros(0, np.int64)


def database_reader(session: Session, model_name: str) -> VectorReader:
    """Reads stored c of a model's assets from the database (the source of truth)."""
    from indexer.db.embedding_repo import get_embeddings

    def read(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        found, vectors = get_embeddings(session, model_name, ids)
        return found, vectors.astype(np.float32, copy=False)

    return read


def similar_filtered(
    archive: Archive,
    session: Session,
    vector: np.ndarray,
    allowed: FilterSet,
    k: int,
    exclude: int | None = None,
    phases: Phases | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` vectors passing ``allowed`` most similar to ``vector`` (the planned search):
    ``(ids, scores)``, best first, ids of assets and of their frames (frame keys; the caller
    folds them onto assets); ``exclude`` (the query asset) left out with its frames."""
    from indexer.db.frame_repo import frame_counts
    from indexer.frame_keys import asset_of, is_frame_key
    from indexer.search.timing import SIMILAR, Phases

    index = archive.vector_index()
    phases = phases if phases is not None else Phases()
    read = database_reader(session, index.model_name or archive.model_id())
    # The query asset's own frames are its nearest neighbours: ask for enough beyond them
    # (they are left out here, as the unfiltered search's fold leaves them out).
    own = 1 + (frame_counts(session, [exclude]).get(exclude, 0) if exclude is not None else 0)
    with archive.timer("similar_search"), phases.phase(SIMILAR):
        scores, ids, plan = filtered_search(index, vector, k + own, allowed, read_vectors=read)
    phases.notes["plan"] = plan.strategy
    owners = ids.copy()
    frames = is_frame_key(ids)
    owners[frames] = asset_of(ids[frames])
    keep = owners != (exclude if exclude is not None else -1)
    return ids[keep][:k], scores[keep][:k].astype(np.float32)


@dataclass(frozen=True)
class Plan:
    """How one filtered search ran.

    Attributes:
        strategy: ``empty``, ``exact``, ``selector`` or ``widen``.
        passing: vectors passing the filter (assets, and their frames for a frame-aware one).
        selectivity: passing over the vectors in the index.
        nprobe: IVF lists visited (selector and widen on an IVF index).
        asked: results asked of FAISS in the last round (widen), or candidates scored (exact).
        rounds: FAISS searches made.
    """

    strategy: str
    passing: int
    selectivity: float
    nprobe: int | None = None
    asked: int = 0
    rounds: int = 0


def choose(passing: int, total: int) -> str:
    """The strategy for a filter passing ``passing`` of ``total`` indexed vectors."""
    if passing <= 0 or total <= 0:
        return "empty"
    if passing <= EXACT_MAX:
        return "exact"
    if passing <= SELECTOR_MAX_FRACTION * total:
        return "selector"
    return "widen"


def exact_scores(
    query: np.ndarray, ids: np.ndarray, read: VectorReader, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` of ``ids`` by exact inner product with their stored c: (scores, ids),
    best first (ids the reader does not find are dropped)."""
    found, vectors = read(ids)
    if not found.size:
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    scores = np.asarray(vectors, np.float32) @ query
    top = np.argsort(-scores, kind="stable")[:k]
    return scores[top].astype(np.float32), found[top].astype(np.int64)


def _probes(index: VectorIndex, k: int, passing: int) -> int | None:
    """nprobe so that the visited lists hold about PROBE_MARGIN x k passing vectors."""
    nlist = index.params.get("nlist")
    if not nlist:
        return None
    wanted = math.ceil(PROBE_MARGIN * k * nlist / max(passing, 1))
    return int(min(nlist, max(index.nprobe, wanted)))


def filtered_search(
    index: VectorIndex,
    query: np.ndarray,
    k: int,
    allowed: FilterSet,
    *,
    read_vectors: VectorReader | None = None,
) -> tuple[np.ndarray, np.ndarray, Plan]:
    """The ``k`` vectors most similar to ``query`` among those ``allowed`` passes.

    Args:
        index: the vector index.
        query: (dim,) float32, unit-norm.
        k: results wanted, >= 1.
        allowed: the filter.
        read_vectors: reads stored c by id (the database); enables the ``exact`` plan on an
            IVF index and the exact re-scoring of selector results. A flat index holds c
            itself: its exact plan is a selector search over it (no read). Without a reader
            an IVF index's exact plan searches it with a selector over every list.

    Returns:
        ``(scores, ids, plan)``, best first; fewer than ``k`` only when fewer pass.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    query = np.ascontiguousarray(np.asarray(query, np.float32).reshape(-1))
    total = index.count
    passing = allowed.count()
    strategy = choose(passing, total)
    selectivity = passing / total if total else 0.0
    if strategy == "empty":
        empty = np.zeros(0, np.float32), np.zeros(0, np.int64)
        return *empty, Plan("empty", passing, selectivity)
    if strategy == "exact":
        ids = allowed.ids()
        if read_vectors is not None and index.params.get("nlist"):
            scores, found = exact_scores(query, ids, read_vectors, k)
            return scores, found, Plan("exact", passing, selectivity, asked=int(ids.size))
        nlist = index.params.get("nlist")  # every list: exact for flat, all codes for IVF
        scores, found = (
            index.search_one(query, k, allowed_ids=ids)
            if not nlist
            else _one(index.search(query.reshape(1, -1), k, allowed_ids=ids, nprobe=nlist))
        )
        return scores, found, Plan("exact", passing, selectivity, nlist, int(ids.size), 1)
    if strategy == "selector":
        nprobe = _probes(index, k, passing)
        ask = k * SELECTOR_RERANK if read_vectors is not None else k
        scores, found = _one(
            index.search(query.reshape(1, -1), ask, allowed_ids=allowed.ids(), nprobe=nprobe)
        )
        if read_vectors is not None and found.size:
            scores, found = exact_scores(query, found, read_vectors, k)
        return scores[:k], found[:k], Plan("selector", passing, selectivity, nprobe, ask, 1)
    # widen
    ask = min(total, math.ceil(2 * k * RERANK_MARGIN / max(selectivity, 1e-9)))
    nprobe = _probes(index, ask, total)
    rounds = 0
    while True:
        rounds += 1
        scores, found = _one(index.search(query.reshape(1, -1), ask, nprobe=nprobe))
        keep = allowed.contains(found)
        if int(keep.sum()) >= k * RERANK_MARGIN or ask >= total:
            break
        ask = min(total, ask * 2)
        nprobe = _probes(index, ask, total)
    scores, found = scores[keep], found[keep]  # all passing ones asked are re-scored
    if read_vectors is not None and found.size:
        scores, found = exact_scores(query, found, read_vectors, k)
    return scores[:k], found[:k], Plan("widen", passing, selectivity, nprobe, ask, rounds)


def _one(result: tuple[list[np.ndarray], list[np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    scores, ids = result
    return np.asarray(scores[0], np.float32), np.asarray(ids[0], np.int64)


class FilteredCandidates:
    """A stage-1 candidate source for concept search restricted to a filter: what
    :class:`~indexer.retroactive.RetroactiveSearcher` asks (``search(queries, k)``), answered by
    :func:`filtered_search`. When the filter passes no more than the shortlist, stage 1 returns
    every passing asset and stage 2 scores them all exactly."""

    def __init__(
        self, index: VectorIndex, allowed: FilterSet, read_vectors: VectorReader | None = None
    ) -> None:
        self.index = index
        self.allowed = allowed
        self.read_vectors = read_vectors
        self.plans: list[Plan] = []

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Per query row, the ``k`` best passing ids (see :func:`filtered_search`): (q, n)
        scores and ids, rows padded with id -1 (no hit)."""
        rows = np.atleast_2d(np.asarray(query, np.float32))
        if self.allowed.count() <= k:  # the whole filtered set is the shortlist
            ids = self.allowed.ids()
            self.plans.append(Plan("exact", ids.size, 0.0, asked=int(ids.size)))
            n = rows.shape[0]
            return np.ones((n, ids.size), np.float32), np.tile(ids, (n, 1))
        out_s, out_i = [], []
        for row in rows:
            scores, ids, plan = filtered_search(
                self.index, row, k, self.allowed, read_vectors=self.read_vectors
            )
            self.plans.append(plan)
            out_s.append(scores)
            out_i.append(ids)
        width = max(len(i) for i in out_i)
        all_s = np.zeros((len(out_i), width), np.float32)
        all_i = np.full((len(out_i), width), -1, np.int64)
        for r, (sc, ids) in enumerate(zip(out_s, out_i, strict=True)):
            all_s[r, : len(ids)], all_i[r, : len(ids)] = sc, ids
        return all_s, all_i


def filtered_searcher(
    searcher: RetroactiveSearcher, candidates: CandidateSource
) -> RetroactiveSearcher:
    """The concept searcher with its stage 1 restricted to a filter (a shallow copy sharing the
    store, the scorer and the calibration cache)."""
    clone = copy.copy(searcher)
    clone.candidates = candidates
    return clone


def chunks(ids: Sequence[int] | np.ndarray, size: int = 10_000) -> list[np.ndarray]:
    """``ids`` in slices of ``size`` (reads by id stay within a statement's parameter limit)."""
    array = np.asarray(ids, np.int64)
    return [array[i : i + size] for i in range(0, array.size, size)]
