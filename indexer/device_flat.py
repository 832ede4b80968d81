"""Exact inner-product search over image embeddings c with torch on a device (no faiss-gpu needed).

The FAISS wheel ramdex installs (``faiss-cpu``) has no GPU code: ``faiss.get_num_gpus`` exists
and answers 0, ``StandardGpuResources`` is missing. :class:`indexer.faiss_index.VectorIndex`
searches a GPU copy when a GPU build is installed (``faiss-gpu``, ``faiss-gpu-cu12``: docs/gpu.md);
:func:`faiss_gpu_info` says whether this process has one.

Where it has not, exact search on the GPU needs no FAISS at all: a flat index is one matrix
product and a top-k. :class:`DeviceFlatIndex` keeps ids and vectors on a torch device (1M x 512
float32 is 2 GB) and answers ``search(queries, k)`` as FAISS does, ``(scores, ids)`` padded with
-1, so it can serve as stage 1's candidate source (:class:`indexer.stage1.CandidateSource`).
Exactness: scores are float32 products (TF32 is turned off for them), so on CPU and GPU the
ranking is FAISS flat's up to ties.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

ROWS_PER_STEP = 1 << 20  # database rows per matrix product (bounds the (q, rows) score block)


def faiss_gpu_info() -> dict[str, Any]:
    """Whether the installed faiss can search on a GPU: build, visible GPUs, version."""
    import faiss

    gpu_build = hasattr(faiss, "StandardGpuResources")
    count = int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0
    return {
        "version": getattr(faiss, "__version__", "?"),
        "gpu_build": gpu_build,
        "gpus": count if gpu_build else 0,
    }


class DeviceFlatIndex:
    """Flat exact inner-product index of (id, vector) rows held on a torch device.

    Args:
        dim: vector width (512 for c).
        device: ``cuda``, ``cuda:N`` or ``cpu``.
        capacity: rows allocated up front (grows by doubling).
    """

    def __init__(self, dim: int, device: str | torch.device = "cpu", capacity: int = 1024) -> None:
        if dim < 1 or capacity < 1:
            raise ValueError("dim and capacity must be >= 1")
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {str(device)!r}: PyTorch finds no CUDA GPU here")
        self.dim = dim
        self.device = dev
        self._vectors = torch.empty(capacity, dim, dtype=torch.float32, device=dev)
        self._alive = torch.zeros(capacity, dtype=torch.bool, device=dev)
        self._ids = np.full(capacity, -1, np.int64)  # host copy: the answer's ids
        self._ids_dev = torch.full((capacity,), -1, dtype=torch.int64, device=dev)
        self._used = 0
        self._row_of: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._row_of)

    def _grow(self, need: int) -> None:
        cap = self._vectors.shape[0]
        if need <= cap:
            return
        while cap < need:
            cap *= 2
        vectors = torch.empty(cap, self.dim, dtype=torch.float32, device=self.device)
        vectors[: self._used] = self._vectors[: self._used]
        alive = torch.zeros(cap, dtype=torch.bool, device=self.device)
        alive[: self._used] = self._alive[: self._used]
        ids_dev = torch.full((cap,), -1, dtype=torch.int64, device=self.device)
        ids_dev[: self._used] = self._ids_dev[: self._used]
        ids = np.full(cap, -1, np.int64)
        ids[: self._used] = self._ids[: self._used]
        self._vectors, self._alive, self._ids_dev, self._ids = vectors, alive, ids_dev, ids

    def add(self, ids: Sequence[int] | np.ndarray, vectors: np.ndarray | torch.Tensor) -> None:
        """Append rows; an id already present is replaced."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        vectors = torch.as_tensor(vectors, dtype=torch.float32)
        if vectors.shape != (len(ids), self.dim):
            raise ValueError(
                f"expected ({len(ids)}, {self.dim}) vectors, got {tuple(vectors.shape)}"
            )
        if len(np.unique(ids)) != len(ids) or (ids < 0).any():
            raise ValueError("ids must be distinct and >= 0")
        self.remove(ids)
        a, b = self._used, self._used + len(ids)
        self._grow(b)
        self._vectors[a:b] = vectors.to(self.device)
        self._alive[a:b] = True
        self._ids[a:b] = ids
        self._ids_dev[a:b] = torch.from_numpy(ids).to(self.device)
        self._row_of.update(zip(ids.tolist(), range(a, b), strict=True))
        self._used = b

    def remove(self, ids: Sequence[int] | np.ndarray) -> int:
        """Drop rows by id (absent ids ignored); returns how many were removed."""
        rows = [r for r in (self._row_of.pop(int(i), None) for i in np.ravel(ids)) if r is not None]
        if rows:
            self._alive[torch.tensor(rows, device=self.device)] = False
        return len(rows)

    def search(
        self,
        queries: np.ndarray | torch.Tensor,
        k: int,
        allowed_ids: Sequence[int] | np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The k best rows per query by inner product: ``(scores (q, k) float32, ids (q, k))``,
        best first, padded with score -inf and id -1 (as FAISS) when fewer rows qualify.

        Args:
            queries: (q, dim) float32.
            k: results per query (>= 1).
            allowed_ids: restrict results to these ids (a tag filter).
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        q = torch.as_tensor(queries, dtype=torch.float32).to(self.device)
        if q.dim() != 2 or q.shape[1] != self.dim:
            raise ValueError(f"expected (n, {self.dim}) queries, got {tuple(q.shape)}")
        mask = self._alive[: self._used]
        if allowed_ids is not None:
            allowed = torch.from_numpy(np.asarray(allowed_ids, dtype=np.int64)).to(self.device)
            mask = mask & torch.isin(self._ids_dev[: self._used], allowed)
        best_s = torch.full((q.shape[0], 0), float("-inf"), device=self.device)
        best_r = torch.zeros((q.shape[0], 0), dtype=torch.int64, device=self.device)
        tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False  # exact float32 products, as FAISS flat
        try:
            for a in range(0, self._used, ROWS_PER_STEP):
                b = min(a + ROWS_PER_STEP, self._used)
                scores = q @ self._vectors[a:b].T
                scores.masked_fill_(~mask[a:b], float("-inf"))
                take = min(k, b - a)
                s, r = scores.topk(take, dim=1)
                best_s = torch.cat([best_s, s], 1)
                best_r = torch.cat([best_r, r + a], 1)
                if best_s.shape[1] > k:
                    best_s, pick = best_s.topk(k, dim=1)
                    best_r = best_r.gather(1, pick)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32
        scores_np = np.full((q.shape[0], k), -np.inf, np.float32)
        ids_np = np.full((q.shape[0], k), -1, np.int64)
        n = best_s.shape[1]
        if n:
            s_host, r_host = best_s.cpu().numpy(), best_r.cpu().numpy()
            found = np.isfinite(s_host)
            scores_np[:, :n] = np.where(found, s_host, -np.inf)
            ids_np[:, :n] = np.where(found, self._ids[r_host], -1)
        return scores_np, ids_np
