"""FAISS index over image embeddings c, keyed by asset id; the database is the source of truth.

One wrapper, :class:`VectorIndex`:

* up to ``exact_max_size`` vectors: exact inner product, ``IndexIDMap2(IndexFlatIP)``;
* beyond: IVF-PQ (``IVF{nlist},PQ{m}x{nbits}``, inner product) trained on a random sample, with
  FAISS's native 64-bit ids and a hash-table direct map. (``IndexIDMap2`` is not used around IVF:
  its ``remove_ids`` compacts its id map while IVF keeps the old internal ids, so after a delete
  searches return the wrong assets. Checked with faiss 1.15.)
* ``save`` commits a new version folder (the FAISS file and its JSON metadata: model, dim,
  count, kind, database watermark, so staleness can be detected) behind one pointer replaced
  with ``os.replace`` (:mod:`indexer.index_versions`): a reader never pairs the file of one save
  with the metadata of another;
* ``load(mmap=True)`` maps the committed version read-only (readers share the page cache; the
  loaded snapshot keeps serving, even once removed from disk, until ``reload_if_changed``);
* ``rebuild_from_database``, ``check`` (drift report) and ``sync`` (incremental repair);
* one writer and many reader threads per object (a readers-writer lock); across processes, one
  writer at a time (:func:`writer_lock`) and any number of memory-mapping readers;
* GPU: when faiss-gpu is installed and ``faiss.get_num_gpus() > 0``, searches run on a GPU copy
  (kept in step lazily after writes). That path exists but is untested here (no GPU, CPU wheel).

Vectors are expected unit-norm (the model's c), so inner product is cosine similarity.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import math
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import faiss as _faiss
import numpy as np
from sqlalchemy.orm import Session

from indexer import index_versions
from indexer.db import embedding_repo
from indexer.db.base import utcnow
from indexer.db.embedding_repo import Watermark
from indexer.index_versions import IndexFiles, TornReadError

# faiss ships partial type stubs (no DirectMap, SearchParameters keywords, ...): use it untyped.
faiss: Any = _faiss
log = logging.getLogger(__name__)

FORMAT_VERSION = 1
INDEX_SUFFIX = ".faiss"
FLAT = "flat"
IVFPQ = "ivfpq"
IVFFLAT = "ivfflat"  # IVF with full float32 vectors (benchmarks, or when memory allows)
IVF_KINDS = (IVFPQ, IVFFLAT)
# Drift (:meth:`VectorIndex.drift`): a rebuild is due when vectors added since training sit this
# much farther from their coarse centroid than the training sample did, when the lists are this
# much more imbalanced than at training, or when the index outgrew a clamped nlist this much.
DRIFT_DISTANCE_RATIO = 1.2
DRIFT_IMBALANCE_RATIO = 2.0
DRIFT_GROWTH = 4.0
DRIFT_MIN_ADDED = 256  # fewer added vectors say nothing yet
# A transaction that committed late can carry an updated_at older than the watermark taken before
# it committed; sync re-reads this much history to catch it.
COMMIT_LAG = timedelta(minutes=10)
_MIN_POINTS_PER_CENTROID = 39  # FAISS warns below this


@dataclass(frozen=True, slots=True)
class IndexDrift:
    """How far an IVF index has drifted from its training (:meth:`VectorIndex.drift`).

    Attributes:
        kind: the index kind (a flat index never drifts).
        added: vectors added since training.
        distance_ratio: their mean squared distance to the nearest coarse centroid over the
            training sample's (1.0: like the training data).
        imbalance_ratio: the lists' imbalance factor now over at training.
        growth: vectors now over vectors at training.
        reasons: why a rebuild is due (empty: it is not).
    """

    kind: str
    added: int
    distance_ratio: float
    imbalance_ratio: float
    growth: float
    reasons: tuple[str, ...]

    @property
    def needs_rebuild(self) -> bool:
        """Whether retraining on a fresh sample is due."""
        return bool(self.reasons)


class IndexReadOnlyError(RuntimeError):
    """A write was attempted on an index loaded memory-mapped (read-only)."""


@dataclass(frozen=True, slots=True)
class DriftReport:
    """Differences between the index and the database's embedding set of a model.

    Attributes:
        model_name: the model checked.
        db_count: embeddings in the database.
        index_count: vectors in the index.
        missing_from_index: ids in the database but not in the index (sorted).
        extra_in_index: ids in the index but not in the database (sorted).
        model_matches: the index was built for this model.
        stale: the database changed since the index's recorded watermark.
    """

    model_name: str
    db_count: int
    index_count: int
    missing_from_index: np.ndarray
    extra_in_index: np.ndarray
    model_matches: bool
    stale: bool

    @property
    def in_sync(self) -> bool:
        """No missing or extra ids and the right model."""
        return (
            self.model_matches
            and self.missing_from_index.size == 0
            and self.extra_in_index.size == 0
        )

    def summary(self) -> str:
        """One line for humans (``ramdex index check``)."""
        state = "in sync" if self.in_sync else "DRIFT"
        return (
            f"{state}: model {self.model_name!r}, database {self.db_count}, index "
            f"{self.index_count}, missing {self.missing_from_index.size}, extra "
            f"{self.extra_in_index.size}" + ("" if self.model_matches else ", WRONG MODEL")
        )


@dataclass(slots=True)
class IndexMeta:
    """The JSON metadata committed with the index file (``meta.json`` of its version folder;
    ``<name>.json`` next to the file in the old layout).

    ``version`` and ``previous`` name the version folder and the one it replaced (empty in the
    old layout).
    """

    model_name: str
    dim: int
    count: int
    kind: str
    params: dict[str, int] = field(default_factory=dict)
    watermark: dict[str, Any] | None = None
    training: dict[str, float] = field(default_factory=dict)
    saved_at: str = ""
    format: int = FORMAT_VERSION
    version: str = ""
    previous: str = ""

    def watermark_obj(self) -> Watermark | None:
        if not self.watermark:
            return None
        raw = self.watermark.get("max_updated_at")
        return Watermark(
            count=int(self.watermark["count"]),
            max_id=int(self.watermark["max_id"]),
            max_updated_at=datetime.fromisoformat(raw) if raw else None,
        )


def _watermark_dict(mark: Watermark) -> dict[str, Any]:
    stamp = mark.max_updated_at.isoformat() if mark.max_updated_at else None
    return {"count": mark.count, "max_id": mark.max_id, "max_updated_at": stamp}


class _RWLock:
    """Many readers or one writer; a waiting writer blocks new readers (no writer starvation)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._waiting_writers:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._waiting_writers += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting_writers -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


def index_path(index_dir: Path, model_name: str) -> Path:
    """Where the index of ``model_name`` lives: a filesystem-safe name plus a short hash."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", model_name).strip("._") or "model"
    digest = hashlib.sha256(model_name.encode()).hexdigest()[:8]
    return Path(index_dir) / f"{safe[:80]}-{digest}{INDEX_SUFFIX}"


def sidecar_path(path: Path) -> Path:
    """The JSON sidecar of an index file in the old two-file layout (read, never written)."""
    return index_versions.legacy_meta_path(path)


def read_meta(path: Path) -> IndexMeta:
    """The metadata of the index committed at ``path``.

    Raises:
        FileNotFoundError: no index or no metadata.
        ValueError: unreadable or from a newer format.
    """
    return index_versions.read_committed(path, lambda files: _parse_meta(files.meta))


def _parse_meta(meta_path: Path) -> IndexMeta:
    data = index_versions.read_json(meta_path)
    if int(data.get("format", 0)) > FORMAT_VERSION:
        raise ValueError(f"{meta_path} has format {data['format']}; upgrade ramdex")
    known = {f.name for f in fields(IndexMeta)}
    try:
        return IndexMeta(**{k: v for k, v in data.items() if k in known})
    except TypeError as exc:  # a required field is missing
        raise ValueError(f"{meta_path} is incomplete: {exc}") from exc


@contextlib.contextmanager
def writer_lock(path: Path) -> Iterator[None]:
    """Exclusive cross-process lock for the one process allowed to modify and save ``path``."""
    lock_file = Path(path).with_suffix(".lock")
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _as_ids(ids: Sequence[int] | np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(np.asarray(ids, dtype=np.int64).reshape(-1))
    if array.size and array.min() < 0:
        raise ValueError("asset ids must be >= 0")
    return array


def _largest_divisor_at_most(n: int, limit: int) -> int:
    return max(m for m in range(1, max(1, min(n, limit)) + 1) if n % m == 0)


def ivfpq_params(n: int, dim: int, nlist: int, pq_m: int) -> dict[str, int]:
    """IVF-PQ parameters clamped for ``n`` training vectors of ``dim`` values.

    nlist: at most ``n / 39`` (FAISS wants >= 39 points per centroid); m: the largest divisor of
    ``dim`` not above ``pq_m``; nbits: 8, fewer when ``n`` cannot train 256 centroids per
    sub-quantizer.
    """
    if n < 1:
        raise ValueError("IVF-PQ needs training vectors")
    nlist = max(1, min(nlist, n // _MIN_POINTS_PER_CENTROID))
    m = _largest_divisor_at_most(dim, pq_m)
    nbits = int(min(8, max(1, math.floor(math.log2(max(2, n // _MIN_POINTS_PER_CENTROID))))))
    return {"nlist": nlist, "m": m, "nbits": nbits}


class VectorIndex:
    """Similarity index of one model's image embeddings, keyed by asset id.

    Args:
        dim: embedding dimension.
        model_name: the model whose embeddings these are.
        exact_max_size: flat (exact) index up to this many vectors, IVF-PQ beyond
            (default ``settings.index.exact_max_size``).
        nlist, pq_m: IVF-PQ sizes before clamping (defaults from settings).
        nprobe: IVF lists visited per query.
        use_gpu: search on GPU when available (None: when faiss-gpu sees a GPU).
    """

    def __init__(
        self,
        dim: int,
        *,
        model_name: str = "",
        exact_max_size: int | None = None,
        nlist: int | None = None,
        pq_m: int | None = None,
        nprobe: int = 32,
        use_gpu: bool | None = None,
    ) -> None:
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if exact_max_size is None or nlist is None or pq_m is None:
            from indexer.settings import get_settings

            cfg = get_settings().index
            exact_max_size = cfg.exact_max_size if exact_max_size is None else exact_max_size
            nlist = cfg.ivf_nlist if nlist is None else nlist
            pq_m = cfg.pq_m if pq_m is None else pq_m
        self.dim = dim
        self.model_name = model_name
        self.exact_max_size = exact_max_size
        self.nlist = nlist
        self.pq_m = pq_m
        self.nprobe = nprobe
        self.use_gpu = use_gpu
        self.kind = FLAT
        self.params: dict[str, int] = {}
        # IVF only: the coarse quantizer's fit at training time and of the vectors added since
        # (see drift()): trained_count, train_distance, train_imbalance, added, added_distance.
        self.training: dict[str, float] = {}
        self.watermark: Watermark | None = None
        self.read_only = False
        self.path: Path | None = None
        self._token: tuple[Any, ...] | None = None  # the committed state loaded (reload checks)
        self._index: Any = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self._gpu_index: Any = None
        self._gpu_dirty = True
        self._gpu_lock = threading.Lock()
        self._lock = _RWLock()

    # ----------------------------------------------------------------------------- properties
    @property
    def count(self) -> int:
        """Vectors in the index."""
        return int(self._index.ntotal)

    def __len__(self) -> int:
        return self.count

    def ids(self) -> np.ndarray:
        """Sorted ids of every vector in the index."""
        with self._lock.read():
            return np.sort(self._ids_unlocked())

    def _ids_unlocked(self) -> np.ndarray:
        if self.kind == FLAT:
            return faiss.vector_to_array(self._index.id_map).astype(np.int64)
        ivf = faiss.extract_index_ivf(self._index)
        lists = ivf.invlists
        parts = [
            faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
            for i in range(lists.nlist)
            if lists.list_size(i)
        ]
        return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, np.int64)

    def __contains__(self, asset_id: int) -> bool:
        with self._lock.read():
            return bool(self._present(np.array([asset_id], np.int64))[0])

    def _present(self, ids: np.ndarray) -> np.ndarray:
        if self.kind in IVF_KINDS:
            ivf = faiss.extract_index_ivf(self._index)
            if ivf.direct_map.type == faiss.DirectMap.NoMap:  # read-only IVF: scan the lists
                return np.isin(ids, self._ids_unlocked())
        # reconstruct() looks the id up in IDMap2's reverse map / IVF's hash-table direct map.
        found = np.zeros(ids.size, dtype=bool)
        for i, asset_id in enumerate(ids.tolist()):
            try:
                self._index.reconstruct(asset_id)
                found[i] = True
            except RuntimeError:
                pass
        return found

    # ----------------------------------------------------------------------------- writes
    def _check_writable(self) -> None:
        if self.read_only:
            raise IndexReadOnlyError("index was loaded read-only (memory-mapped); load mmap=False")

    def _as_vectors(self, vectors: np.ndarray, n: int) -> np.ndarray:
        array = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
        if array.ndim == 1:
            array = array.reshape(1, -1)
        if array.shape != (n, self.dim):
            raise ValueError(f"expected ({n}, {self.dim}) vectors, got {array.shape}")
        if not np.isfinite(array).all():
            raise ValueError("vectors hold NaN or infinity")
        return array

    def add(self, ids: Sequence[int] | np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors; an id already present is replaced (re-scored assets).

        Switches from the exact index to IVF-PQ when the count passes ``exact_max_size``.

        Raises:
            ValueError: shapes disagree, duplicate or negative ids, non-finite values.
            IndexReadOnlyError: the index is memory-mapped read-only.
        """
        id_array = _as_ids(ids)
        array = self._as_vectors(vectors, id_array.size)
        if np.unique(id_array).size != id_array.size:
            raise ValueError("duplicate ids in one add() call")
        with self._lock.write():
            self._check_writable()
            present = self._present(id_array)
            if present.any():
                self._remove_unlocked(id_array[present])
            if self.kind == FLAT and self.count + id_array.size > self.exact_max_size:
                self._switch_to_ivfpq(id_array, array)
            elif id_array.size:
                if self.kind in IVF_KINDS:
                    self._note_added(array)
                self._index.add_with_ids(array, id_array)
            self._gpu_dirty = True

    def remove(self, ids: Sequence[int] | np.ndarray) -> int:
        """Remove vectors by asset id (absent ids are ignored). Returns how many were removed.

        Raises:
            IndexReadOnlyError: the index is memory-mapped read-only.
        """
        id_array = _as_ids(ids)
        with self._lock.write():
            self._check_writable()
            if not id_array.size or not self.count:
                return 0
            removed = self._remove_unlocked(id_array)
            self._gpu_dirty = True
            return removed

    def _remove_unlocked(self, ids: np.ndarray) -> int:
        # IVF's hash-table direct map only accepts IDSelectorArray; IDMap2 takes any selector.
        ivf = self.kind in IVF_KINDS
        selector = faiss.IDSelectorArray(ids) if ivf else faiss.IDSelectorBatch(ids)
        return int(self._index.remove_ids(selector))

    def _all_vectors_unlocked(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) held by a flat index."""
        ids = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        flat = faiss.downcast_index(self._index.index)
        vectors = faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * self.dim).reshape(-1, self.dim)
        return ids, vectors.copy()

    def _new_ivfpq(self, train: np.ndarray, kind: str = IVFPQ) -> Any:
        """A trained, empty IVF index (``kind`` IVF-PQ or IVF-Flat) for ``train``'s distribution;
        records the quantizer's fit on the sample (``training``) for :meth:`drift`."""
        self.params = ivfpq_params(train.shape[0], self.dim, self.nlist, self.pq_m)
        p = self.params
        # "np": no polysemous training. It only reorders each sub-quantizer's centroids so that
        # Hamming distances between codes mean something, for polysemous filtering, which the
        # index never uses (asymmetric distances are unchanged), and it was nearly all of the
        # build: 86.9 s -> 2.5 s training 16,384 x 512-d at nlist 256, PQ64 (2 cores).
        codes = f"PQ{p['m']}x{p['nbits']}np" if kind == IVFPQ else "Flat"
        index = faiss.index_factory(
            self.dim, f"IVF{p['nlist']},{codes}", faiss.METRIC_INNER_PRODUCT
        )
        index.train(train)
        index.set_direct_map_type(faiss.DirectMap.Hashtable)
        ivf = faiss.extract_index_ivf(index)
        ivf.nprobe = min(self.nprobe, p["nlist"])
        distance, assign = _coarse_fit(ivf.quantizer, train)
        sizes = np.bincount(assign, minlength=p["nlist"])
        self.training = {
            "trained_count": float(train.shape[0]),
            "train_distance": float(distance.mean()),
            "train_imbalance": _imbalance(sizes),
            "added": 0.0,
            "added_distance": 0.0,
        }
        return index

    def _note_added(self, vectors: np.ndarray) -> None:
        """Accumulate how far added vectors sit from their coarse centroid (drift)."""
        if not self.training or not vectors.shape[0]:
            return
        distance, _ = _coarse_fit(faiss.extract_index_ivf(self._index).quantizer, vectors)
        self.training["added"] += float(vectors.shape[0])
        self.training["added_distance"] += float(distance.sum())

    def list_sizes(self) -> np.ndarray:
        """Vectors per inverted list (IVF; empty for a flat index)."""
        if self.kind not in IVF_KINDS:
            return np.zeros(0, np.int64)
        lists = faiss.extract_index_ivf(self._index).invlists
        return np.array([lists.list_size(i) for i in range(lists.nlist)], np.int64)

    def drift(self) -> IndexDrift:
        """How far the index has drifted from the distribution it was trained on.

        Measured, not guessed: (1) the mean squared distance of the vectors added since
        training to their nearest coarse centroid, over the same mean of the training sample
        (``distance_ratio``; new content unlike the old lands far from every centroid); (2) the
        lists' imbalance factor (``nlist * sum(n_i^2) / N^2``, 1 = even) now over at training
        (``imbalance_ratio``; new content piling into a few lists makes their scans long);
        (3) growth beyond a clamped nlist (trained small, now large enough for more lists).
        A flat index never drifts.
        """
        t = self.training
        if self.kind not in IVF_KINDS or not t:
            return IndexDrift(self.kind, 0, 1.0, 1.0, 1.0, ())
        added = int(t.get("added", 0))
        train_distance = max(float(t.get("train_distance", 0.0)), 1e-12)
        ratio = (t["added_distance"] / added) / train_distance if added else 1.0
        imbalance = _imbalance(self.list_sizes()) / max(float(t.get("train_imbalance", 1.0)), 1e-12)
        growth = self.count / max(float(t.get("trained_count", 1.0)), 1.0)
        reasons = []
        if added >= DRIFT_MIN_ADDED and ratio > DRIFT_DISTANCE_RATIO:
            reasons.append(f"added vectors {ratio:.2f}x farther from their centroids")
        if added >= DRIFT_MIN_ADDED and imbalance > DRIFT_IMBALANCE_RATIO:
            reasons.append(f"lists {imbalance:.2f}x more imbalanced")
        clamped = self.params.get("nlist", self.nlist) < self.nlist
        if clamped and growth > DRIFT_GROWTH:
            reasons.append(f"grew {growth:.1f}x past a clamped nlist {self.params.get('nlist')}")
        return IndexDrift(self.kind, added, ratio, imbalance, growth, tuple(reasons))

    def _switch_to_ivfpq(self, new_ids: np.ndarray, new_vectors: np.ndarray) -> None:
        old_ids, old_vectors = self._all_vectors_unlocked()
        ids = np.concatenate([old_ids, new_ids])
        vectors = np.concatenate([old_vectors, new_vectors])
        sample = _sample_rows(vectors.shape[0], self._train_size(vectors.shape[0]))
        index = self._new_ivfpq(vectors[sample])
        index.add_with_ids(vectors, ids)
        self._index = index
        self.kind = IVFPQ
        self.training["trained_count"] = float(index.ntotal)
        log.info("FAISS index of %s switched to IVF-PQ at %d vectors", self.model_name, len(ids))

    def _train_size(self, n: int) -> int:
        # enough for the coarse quantizer (~64 per list) and for 256 PQ centroids (~39 each)
        return int(min(n, max(64 * min(self.nlist, n), 256 * _MIN_POINTS_PER_CENTROID, 1), 500_000))

    # ----------------------------------------------------------------------------- search
    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        allowed_ids: Sequence[int] | np.ndarray | None = None,
        nprobe: int | None = None,
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The ``k`` most similar vectors for each query row.

        Args:
            queries: (n, dim) float32 (unit-norm for cosine similarity).
            k: results per query, >= 1.
            allowed_ids: restrict results to these asset ids (tag filter + similarity): FAISS
                skips the others while scanning (an id selector), it does not filter afterwards.
            nprobe: IVF lists visited for this call (default: the index's; ignored when flat).

        Returns:
            ``(scores, ids)``: per query, 1-D arrays best first; FAISS's -1 padding removed, so
            a row can be shorter than ``k``.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        array = np.ascontiguousarray(np.asarray(queries, dtype=np.float32))
        if array.ndim != 2 or array.shape[1] != self.dim:
            raise ValueError(f"expected (n, {self.dim}) queries, got {array.shape}")
        if not np.isfinite(array).all():
            raise ValueError("queries hold NaN or infinity")
        with self._lock.read():
            if not self.count or not array.shape[0]:
                empty = [np.empty(0, np.float32)] * array.shape[0]
                return list(empty), [np.empty(0, np.int64)] * array.shape[0]
            k_eff = min(k, self.count)
            if allowed_ids is not None:
                allowed = _as_ids(allowed_ids)
                if not allowed.size:
                    return (
                        [np.empty(0, np.float32)] * array.shape[0],
                        [np.empty(0, np.int64)] * array.shape[0],
                    )
                selector = faiss.IDSelectorBatch(allowed)  # must outlive the search call
                params = self._search_params(selector, nprobe)
                scores, ids = self._index.search(array, k_eff, params=params)
            elif nprobe is not None and self.kind in IVF_KINDS:
                params = self._search_params(None, nprobe)
                scores, ids = self._index.search(array, k_eff, params=params)
            else:
                scores, ids = self._search_index().search(array, k_eff)
        keep = ids >= 0
        return (
            [scores[i][keep[i]] for i in range(len(ids))],
            [ids[i][keep[i]].astype(np.int64) for i in range(len(ids))],
        )

    def search_one(
        self,
        vector: np.ndarray,
        k: int,
        *,
        allowed_ids: Sequence[int] | np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`search` for one (dim,) vector: ``(scores, ids)`` 1-D, best first."""
        scores, ids = self.search(
            np.asarray(vector, np.float32).reshape(1, -1), k, allowed_ids=allowed_ids
        )
        return scores[0], ids[0]

    def _search_params(self, selector: Any, nprobe: int | None = None) -> Any:
        if self.kind in IVF_KINDS:
            ivf = faiss.extract_index_ivf(self._index)
            probes = ivf.nprobe if nprobe is None else max(1, min(int(nprobe), ivf.nlist))
            if selector is None:
                return faiss.SearchParametersIVF(nprobe=probes)
            return faiss.SearchParametersIVF(sel=selector, nprobe=probes)
        return faiss.SearchParameters(sel=selector) if selector is not None else None

    def _search_index(self) -> Any:
        """The CPU index, or a GPU copy when faiss-gpu sees a GPU (untested here)."""
        wanted = self.use_gpu if self.use_gpu is not None else True
        if not wanted or not hasattr(faiss, "index_cpu_to_all_gpus") or faiss.get_num_gpus() < 1:
            return self._index
        with self._gpu_lock:  # readers share the read lock; build the copy once
            if self._gpu_dirty or self._gpu_index is None:
                try:
                    options = faiss.GpuMultipleClonerOptions()
                    # IVF-PQ at m=64: float32 lookup tables (64 x 256 x 4 B) exceed the 48 KB of
                    # shared memory per block, so the GPU copy would fail; float16 tables fit.
                    # Flat copies keep float32 vectors (exact search).
                    options.useFloat16 = self.kind == IVFPQ
                    self._gpu_index = faiss.index_cpu_to_all_gpus(self._index, co=options)
                    self._gpu_dirty = False
                except RuntimeError as exc:  # an index type the GPU cloner does not support
                    log.warning("FAISS GPU copy failed (%s); searching on CPU", exc)
                    self.use_gpu = False
                    return self._index
            return self._gpu_index

    # ----------------------------------------------------------------------------- persistence
    def meta(self) -> IndexMeta:
        """The sidecar content describing the current state."""
        return IndexMeta(
            model_name=self.model_name,
            dim=self.dim,
            count=self.count,
            kind=self.kind,
            params=dict(self.params),
            training=dict(self.training),
            watermark=_watermark_dict(self.watermark) if self.watermark else None,
            saved_at=utcnow().isoformat(),
        )

    def save(self, path: Path | str) -> None:
        """Commit the index and its metadata as one new version (see :mod:`indexer.index_versions`):
        both files written and fsynced in a fresh version folder, then the pointer at ``path``
        replaced with ``os.replace``. A crash or an error before that leaves the previous version
        in force; an index in the old two-file layout is migrated by the first save.

        Readers that loaded a previous version keep serving it until they reload.

        Raises:
            IndexReadOnlyError: the index is memory-mapped read-only.
        """
        path = Path(path)
        with self._lock.write():
            self._check_writable()
            files = index_versions.commit(path, self._write_unlocked, asdict(self.meta()))
            self.path = path
            self._token = files.token

    def _write_unlocked(self, target: Path) -> None:
        if self.kind in IVF_KINDS:
            # Readers do not need the id hash table; keep it out of the file.
            self._index.set_direct_map_type(faiss.DirectMap.NoMap)
        try:
            faiss.write_index(self._index, str(target))
        finally:
            if self.kind in IVF_KINDS:
                self._index.set_direct_map_type(faiss.DirectMap.Hashtable)

    @classmethod
    def load(
        cls, path: Path | str, *, mmap: bool = True, use_gpu: bool | None = None
    ) -> VectorIndex:
        """Load the index committed at ``path``.

        The index file and metadata come from one committed version; when a writer commits (and
        removes the version being opened) meanwhile, the newer one is loaded.

        Args:
            path: the index's ``.faiss`` path (a pointer to the current version, or an index file
                with its ``.json`` sidecar next to it in the old layout).
            mmap: map the file read-only (readers); False loads a writable copy (the writer).
            use_gpu: as in the constructor.

        Raises:
            FileNotFoundError: no index, or its metadata is missing.
            ValueError: the file and its metadata disagree.
        """
        path = Path(path)
        return index_versions.read_committed(
            path, lambda files: cls._load_files(path, files, mmap=mmap, use_gpu=use_gpu)
        )

    @classmethod
    def _load_files(
        cls, path: Path, files: IndexFiles, *, mmap: bool, use_gpu: bool | None
    ) -> VectorIndex:
        meta = _parse_meta(files.meta)
        if mmap:
            # Flat codes need IO_FLAG_MMAP_IFC; IVF lists need IO_FLAG_MMAP (the two flags
            # together fail on IVF files), both with IO_FLAG_READ_ONLY.
            flag = faiss.IO_FLAG_MMAP_IFC if meta.kind == FLAT else faiss.IO_FLAG_MMAP
            raw = _read_index(files.index, flag | faiss.IO_FLAG_READ_ONLY)
        else:
            raw = _read_index(files.index, 0)
        if raw.d != meta.dim or raw.ntotal != meta.count:
            raise TornReadError(
                f"{path}: index has {raw.ntotal} x {raw.d}, metadata says {meta.count} x {meta.dim}"
            )
        obj = cls(meta.dim, model_name=meta.model_name, use_gpu=use_gpu)
        if meta.kind in IVF_KINDS:
            if not mmap:
                raw.set_direct_map_type(faiss.DirectMap.Hashtable)
            obj.nprobe = faiss.extract_index_ivf(raw).nprobe
        obj._index = raw
        obj.kind = meta.kind
        obj.params = dict(meta.params)
        obj.training = {k: float(v) for k, v in meta.training.items()}
        obj.watermark = meta.watermark_obj()
        obj.read_only = mmap
        obj.path = path
        obj._token = files.token
        return obj

    @property
    def version(self) -> str | None:
        """The version folder this index was loaded from or saved to (None: old layout, unsaved)."""
        token = self._token
        return str(token[1]) if token and token[0] == "version" else None

    def reload_if_changed(self) -> bool:
        """Readers: swap in the newer version if a writer committed one since this was loaded
        (one ``readlink``). Returns whether it did. Searches in flight finish on the old
        mapping."""
        if self.path is None or not self.read_only:
            return False
        try:
            if index_versions.current_token(self.path) == self._token:
                return False
        except FileNotFoundError:
            return False
        fresh = VectorIndex.load(self.path, mmap=True, use_gpu=self.use_gpu)
        with self._lock.write():
            self._index, self.kind, self.params = fresh._index, fresh.kind, fresh.params
            self.dim, self.model_name, self.watermark = fresh.dim, fresh.model_name, fresh.watermark
            self.nprobe, self._token = fresh.nprobe, fresh._token
            self.training = fresh.training
            self._gpu_dirty = True
        return True

    # ----------------------------------------------------------------------------- database
    @classmethod
    def rebuild_from_database(
        cls,
        session: Session,
        model_name: str,
        *,
        dim: int | None = None,
        exact_max_size: int | None = None,
        nlist: int | None = None,
        pq_m: int | None = None,
        batch_size: int = 10_000,
        seed: int = 0,
    ) -> VectorIndex:
        """Build a fresh index from the database's embeddings of ``model_name``.

        Flat when the set fits ``exact_max_size``; otherwise IVF-PQ trained on a random sample
        (read by id), then every embedding streamed in id order.

        Args:
            dim: dimension for an empty set (otherwise taken from the data).

        Raises:
            ValueError: no embeddings and no ``dim``; embeddings of mixed dimensions.
        """
        mark = embedding_repo.embedding_watermark(session, model_name)
        ids = embedding_repo.embedding_ids(session, model_name)
        first_ids, first = embedding_repo.get_embeddings(session, model_name, ids[:1])
        if first_ids.size:
            dim = first.shape[1]
        elif dim is None:
            raise ValueError(f"no embeddings stored for model {model_name!r}; pass dim")
        index = cls(
            int(dim), model_name=model_name, exact_max_size=exact_max_size, nlist=nlist, pq_m=pq_m
        )
        if ids.size > index.exact_max_size:
            rng = np.random.default_rng(seed)
            sample_ids = np.sort(rng.choice(ids, index._train_size(ids.size), replace=False))
            _, train = embedding_repo.get_embeddings(session, model_name, sample_ids)
            index._index = index._new_ivfpq(train)
            index.kind = IVFPQ
        for batch_ids, vectors in embedding_repo.iter_embeddings(
            session, model_name, batch_size=batch_size
        ):
            if vectors.shape[1] != index.dim:
                raise ValueError(f"embeddings of {model_name!r} have different dimensions")
            index._index.add_with_ids(np.ascontiguousarray(vectors), batch_ids)
        if index.training:
            index.training["trained_count"] = float(index.count)
        index.watermark = mark
        return index

    def replace_with(self, fresh: VectorIndex) -> None:
        """Swap in ``fresh``'s contents (a rebuilt index) under the write lock: searches in
        flight finish on the old contents, the next ones see the new.

        Raises:
            IndexReadOnlyError: this index is memory-mapped read-only.
        """
        with self._lock.write():
            self._check_writable()
            self._index, self.kind, self.params = fresh._index, fresh.kind, fresh.params
            self.dim, self.model_name, self.watermark = fresh.dim, fresh.model_name, fresh.watermark
            self.training, self.nprobe = fresh.training, fresh.nprobe
            self._gpu_dirty = True

    def is_stale(self, session: Session) -> bool:
        """Whether the database's embedding set changed since the recorded watermark."""
        current = embedding_repo.embedding_watermark(session, self.model_name)
        return self.watermark != current

    def check(self, session: Session, model_name: str | None = None) -> DriftReport:
        """Compare the index with the database (the source of truth).

        Args:
            model_name: the model the index should serve (default: the one it was built for).
        """
        model = model_name or self.model_name
        db_ids = embedding_repo.embedding_ids(session, model)
        current = embedding_repo.embedding_watermark(session, model)
        index_ids = self.ids()
        return DriftReport(
            model_name=model,
            db_count=int(db_ids.size),
            index_count=int(index_ids.size),
            missing_from_index=np.setdiff1d(db_ids, index_ids),
            extra_in_index=np.setdiff1d(index_ids, db_ids),
            model_matches=model == self.model_name,
            stale=self.watermark != current,
        )

    def sync(self, session: Session) -> DriftReport:
        """Bring the index up to date with the database, incrementally.

        Re-adds embeddings updated since the recorded watermark (minus ``COMMIT_LAG``); when the
        counts still disagree (deletes, or no watermark), falls back to a full id comparison and
        adds missing / removes extra ids. Records the new watermark.

        Returns:
            The drift found before repairing (empty arrays when the cheap path sufficed).

        Raises:
            IndexReadOnlyError: the index is memory-mapped read-only.
        """
        self._check_writable()
        mark = embedding_repo.embedding_watermark(session, self.model_name)
        empty = np.empty(0, np.int64)
        previous = self.watermark
        if previous is not None and previous == mark and self.count == mark.count:
            return DriftReport(self.model_name, mark.count, self.count, empty, empty, True, False)
        changed = empty
        if previous is not None and previous.max_updated_at is not None:
            since = previous.max_updated_at - COMMIT_LAG
            changed = embedding_repo.ids_updated_since(session, self.model_name, since)
            self._add_from_db(session, changed)
        if previous is not None and self.count == mark.count:
            self.watermark = mark
            return DriftReport(self.model_name, mark.count, self.count, empty, empty, True, True)
        report = self.check(session)
        self._add_from_db(session, report.missing_from_index)
        if report.extra_in_index.size:
            self.remove(report.extra_in_index)
        self.watermark = mark
        return report

    def _add_from_db(self, session: Session, ids: np.ndarray) -> None:
        for start in range(0, ids.size, 10_000):
            got_ids, vectors = embedding_repo.get_embeddings(
                session, self.model_name, ids[start : start + 10_000]
            )
            if got_ids.size:
                self.add(got_ids, vectors)


def rebuild_and_swap(
    index: VectorIndex,
    session: Session,
    path: Path | str,
    *,
    before_swap: Callable[[VectorIndex], None] | None = None,
    **build: Any,
) -> VectorIndex:
    """Retrain ``index`` from the database on a fresh sample while it keeps serving.

    The new index is built without holding ``index``'s lock, so searches on it (and on every
    memory-mapped replica of the committed version) go on meanwhile; then its contents are
    swapped into ``index`` and committed as a new version at ``path``; replicas pick that up on
    their next :meth:`VectorIndex.reload_if_changed`. Vectors the database gained during the
    build are newer than the rebuilt index's watermark: the next :meth:`VectorIndex.sync`
    adds them. Hold :func:`writer_lock`.

    Args:
        before_swap: called with the built index just before the swap (progress, tests).
        build: :meth:`VectorIndex.rebuild_from_database` options (``exact_max_size``, ...).
    """
    options = {"exact_max_size": index.exact_max_size, "nlist": index.nlist, "pq_m": index.pq_m}
    options.update(build)
    fresh = VectorIndex.rebuild_from_database(session, index.model_name, dim=index.dim, **options)
    if before_swap is not None:
        before_swap(fresh)
    index.replace_with(fresh)
    index.save(path)
    return index


def open_index(
    session: Session,
    model_name: str,
    *,
    index_dir: Path | None = None,
    dim: int = 512,
    rebuild_if_stale: bool = True,
    exact_max_size: int | None = None,
) -> VectorIndex:
    """The writer's index for ``model_name``: loaded writable from ``index_dir`` (default
    ``settings.index_dir``), rebuilt from the database when missing, unreadable or for another
    model, synced when stale (incremental adds, no retraining), and retrained by
    :func:`rebuild_and_swap` once :meth:`VectorIndex.drift` says a rebuild is due. Saves when it
    changed anything. Hold :func:`writer_lock`.

    Args:
        exact_max_size: flat up to this many vectors (default: the settings').
    """
    if index_dir is None:
        from indexer.settings import get_settings

        index_dir = get_settings().index_dir
    path = index_path(index_dir, model_name)
    index: VectorIndex | None = None
    try:
        index = VectorIndex.load(path, mmap=False)
        if index.model_name != model_name:
            index = None
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        log.info("FAISS index %s not usable (%s); rebuilding from the database", path, exc)
    if index is None:
        index = VectorIndex.rebuild_from_database(
            session, model_name, dim=dim, exact_max_size=exact_max_size
        )
        index.save(path)
        return index
    if exact_max_size is not None:
        index.exact_max_size = exact_max_size
    if rebuild_if_stale and index.is_stale(session):
        index.sync(session)
        drift = index.drift()
        if drift.needs_rebuild:
            log.info("FAISS index %s drifted (%s): retraining", path, "; ".join(drift.reasons))
            return rebuild_and_swap(index, session, path)
        index.save(path)
    return index


def _coarse_fit(quantizer: Any, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Squared L2 distance of each unit vector to its nearest coarse centroid (the quantizer
    ranks by inner product), and that centroid's list number."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    scores, assign = quantizer.search(vectors, 1)
    norms = np.einsum("ij,ij->i", vectors, vectors)
    centroids = quantizer.reconstruct_n(0, quantizer.ntotal)
    c_norms = np.einsum("ij,ij->i", centroids, centroids)
    distance = norms + c_norms[assign[:, 0]] - 2.0 * scores[:, 0]
    return np.maximum(distance, 0.0), assign[:, 0].astype(np.int64)


def _imbalance(sizes: np.ndarray) -> float:
    """FAISS's imbalance factor: ``nlist * sum(n_i^2) / N^2`` (1.0 when the lists are even)."""
    total = float(sizes.sum())
    if not total:
        return 1.0
    return float(sizes.size * np.square(sizes.astype(np.float64)).sum() / total**2)


def _read_index(path: Path, flags: int) -> Any:
    """``faiss.read_index``, with a missing file reported as FileNotFoundError (FAISS raises a
    RuntimeError), so that a version removed under a reader is retried."""
    try:
        return faiss.read_index(str(path), flags)
    except RuntimeError:
        if not path.exists():
            raise FileNotFoundError(f"{path} was removed") from None
        raise


def _sample_rows(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n, size=min(n, size), replace=False))
