"""Compact token-store formats: product quantisation of the per-asset tokens E (T x 512).

A ``pqM`` format stores each token as M one-byte codes: the 512 channels are cut into M groups of
512 / M, and each group is replaced by the nearest of 256 centroids of a codebook learnt for that
group (FAISS ``ProductQuantizer``, k-means per group). With T = 145 tokens:

- ``pq128``: 128 groups of 4 channels, 128 B per token, 18,560 B per asset (8x smaller than
  float16, 4x smaller than int8),
- ``pq64``: 64 groups of 8 channels, 64 B per token, 9,280 B per asset.

The codebook (M x 256 x 512/M float32: 512 kB) is part of the store: it is trained once, from the
tokens of the first ``add`` (at most :data:`TRAIN_TOKENS` tokens sampled from it, at least
:func:`min_train_assets` assets), saved as ``codebook-<n>.npy`` under a fresh name and named in the
manifest (``codec``: file, format, version) in the same commit as the first records, so a crash
before that commit leaves no half-trained store. It is never retrained in place: codes are only
meaningful with the codebook that made them. To retrain (the distribution of E changed, e.g. a new
model: which means a new store anyway), create a new store and copy the assets into it; the first
batch copied trains the new codebook.

Decoding is a gather (``centroids[m, code]`` for each group), done in numpy straight into the
requested dtype.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

CODEC_VERSION = 1
PQ_BITS = 8
TRAIN_TOKENS = 16_384  # tokens sampled from the first batch to train a codebook
MIN_TRAIN_TOKENS = 256 * 39  # FAISS k-means wants 39 points per centroid (69 assets of 145)
_PQ = re.compile(r"^pq(\d+)$")
_PCA = re.compile(r"^pca(\d+)i8$")
PQ_FORMATS: tuple[str, ...] = ("pq64", "pq128")
PCA_FORMATS: tuple[str, ...] = ("pca128i8", "pca64i8")
CODEC_FORMATS: tuple[str, ...] = (*PCA_FORMATS, *PQ_FORMATS)


class CodecError(ValueError):
    """A codec that cannot be built or used as asked (with the reason)."""


def is_codec_format(fmt: str) -> bool:
    """True for the formats this module encodes (they need a trained codebook)."""
    return fmt in CODEC_FORMATS


def subquantizers(fmt: str) -> int:
    """M, the one-byte codes per token, of a ``pqM`` format."""
    match = _PQ.match(fmt)
    if not match or fmt not in PQ_FORMATS:
        raise CodecError(f"unknown codec format {fmt!r}; use one of {', '.join(CODEC_FORMATS)}")
    return int(match.group(1))


def components(fmt: str) -> int:
    """k, the principal components kept per token, of a ``pcaKi8`` format."""
    match = _PCA.match(fmt)
    if not match or fmt not in PCA_FORMATS:
        raise CodecError(f"unknown codec format {fmt!r}; use one of {', '.join(CODEC_FORMATS)}")
    return int(match.group(1))


def record_dtype(fmt: str, tokens: int, dim: int) -> np.dtype:
    """numpy dtype of one asset's record: (T, M) uint8 codes for pq, per-token float32 scale
    and (T, k) int8 for pca."""
    if fmt in PCA_FORMATS:
        k = components(fmt)
        if k > dim:
            raise CodecError(f"{fmt}: {k} components of a {dim}-d embedding")
        return np.dtype([("scale", "<f4", (tokens,)), ("q", "i1", (tokens, k))])
    m = subquantizers(fmt)
    if dim % m:
        raise CodecError(f"{fmt}: embedding width {dim} is not a multiple of {m}")
    return np.dtype((np.uint8, (tokens, m)))


def min_train_assets(tokens: int) -> int:
    """Assets the first ``add`` of a codec store must hold (to train the codebook)."""
    return -(-MIN_TRAIN_TOKENS // tokens)


class PQCodec:
    """A trained product quantiser: M groups of ``dim / M`` channels, 256 centroids each.

    Args:
        fmt: ``pq64`` or ``pq128``.
        centroids: (M, 256, dim / M) float32.
    """

    def __init__(self, fmt: str, centroids: np.ndarray) -> None:
        m = subquantizers(fmt)
        centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        if centroids.ndim != 3 or centroids.shape[0] != m or centroids.shape[1] != 1 << PQ_BITS:
            raise CodecError(f"{fmt}: centroids must be ({m}, 256, dim/{m}), got {centroids.shape}")
        self.fmt = fmt
        self.m = m
        self.dsub = int(centroids.shape[2])
        self.dim = m * self.dsub
        self.centroids = centroids
        self._pq = None  # the FAISS quantiser, built on first encode

    @classmethod
    def train(cls, fmt: str, embeds: np.ndarray, seed: int = 0) -> PQCodec:
        """Learn a codebook from tokens: ``embeds`` (n, T, dim) or (n_tokens, dim)."""
        import faiss

        m = subquantizers(fmt)
        x = np.asarray(embeds, dtype=np.float32)
        x = x.reshape(-1, x.shape[-1])
        if x.shape[1] % m:
            raise CodecError(f"{fmt}: embedding width {x.shape[1]} is not a multiple of {m}")
        if len(x) < MIN_TRAIN_TOKENS:
            raise CodecError(
                f"{fmt}: training the codebook needs at least {MIN_TRAIN_TOKENS} tokens, "
                f"got {len(x)}"
            )
        if len(x) > TRAIN_TOKENS:
            rng = np.random.default_rng(seed)
            x = x[np.sort(rng.choice(len(x), TRAIN_TOKENS, replace=False))]
        pq = faiss.ProductQuantizer(x.shape[1], m, PQ_BITS)
        pq.cp.seed = seed
        pq.cp.niter = 12  # 128 k-means of 16k points: seconds, not a minute
        pq.train(np.ascontiguousarray(x))
        centroids = faiss.vector_to_array(pq.centroids).reshape(m, 1 << PQ_BITS, -1)
        codec = cls(fmt, centroids)
        codec._pq = pq
        return codec

    def _quantizer(self):
        if self._pq is None:
            import faiss

            pq = faiss.ProductQuantizer(self.dim, self.m, PQ_BITS)
            faiss.copy_array_to_vector(self.centroids.reshape(-1), pq.centroids)
            self._pq = pq
        return self._pq

    def encode(self, embeds: np.ndarray) -> np.ndarray:
        """(n, T, dim) floats -> (n, T, M) uint8 codes (nearest centroid per group)."""
        x = np.ascontiguousarray(embeds, dtype=np.float32)
        if x.shape[-1] != self.dim:
            raise CodecError(f"{self.fmt}: expected width {self.dim}, got {x.shape[-1]}")
        codes = self._quantizer().compute_codes(x.reshape(-1, self.dim))
        return codes.reshape(*x.shape[:-1], self.m)

    def decode(self, codes: np.ndarray, dtype: np.dtype = np.float32) -> np.ndarray:
        """(..., M) uint8 codes -> (..., dim) in ``dtype``."""
        codes = np.asarray(codes)
        key = (np.dtype(dtype).str,)
        if getattr(self, "_table_key", None) != key:
            self._table = self.centroids.reshape(-1, self.dsub).astype(dtype)
            self._offsets = np.arange(self.m, dtype=np.intp) << PQ_BITS
            self._table_key = key
        flat = codes.astype(np.intp) + self._offsets  # one gather into (M x 256, dsub)
        return self._table[flat].reshape(*codes.shape[:-1], self.dim)

    # -- persistence --------------------------------------------------------------------------

    def save(self, fh) -> None:
        """Write the centroids as one .npy to an open file (the caller makes it durable)."""
        np.save(fh, self.centroids)

    @classmethod
    def load(cls, fmt: str, path: Path) -> PQCodec:
        return cls(fmt, _read_codebook(path))

    def manifest_entry(self, file: str) -> dict[str, object]:
        """What the store's manifest records about this codec."""
        return {"file": file, "format": self.fmt, "version": CODEC_VERSION, "m": self.m}


def _read_codebook(path: Path) -> np.ndarray:
    """A codebook's .npy; CodecError naming the file when it cannot be read."""
    try:
        return np.load(path)
    except (OSError, ValueError) as exc:
        raise CodecError(f"cannot read codebook {path}: {exc}") from exc


class PCACodec:
    """A learnt rotation: tokens are centred, projected on their k leading principal components
    (the covariance of a token sample), and each token's k coordinates stored as int8 with one
    float32 scale (max |z| / 127). Decoded as ``mean + (q * scale) @ basis``.

    Args:
        fmt: ``pca128i8`` or ``pca64i8``.
        mean: (dim,) float32, basis: (k, dim) float32 with orthonormal rows.
    """

    def __init__(self, fmt: str, mean: np.ndarray, basis: np.ndarray) -> None:
        k = components(fmt)
        basis = np.ascontiguousarray(basis, dtype=np.float32)
        mean = np.ascontiguousarray(mean, dtype=np.float32).reshape(-1)
        if basis.shape != (k, len(mean)):
            raise CodecError(f"{fmt}: basis must be ({k}, {len(mean)}), got {basis.shape}")
        self.fmt, self.k, self.dim = fmt, k, len(mean)
        self.mean, self.basis = mean, basis

    @classmethod
    def train(cls, fmt: str, embeds: np.ndarray, seed: int = 0) -> PCACodec:
        """Principal components of a token sample: ``embeds`` (n, T, dim) or (n_tokens, dim)."""
        k = components(fmt)
        x = np.asarray(embeds, dtype=np.float32)
        x = x.reshape(-1, x.shape[-1])
        if len(x) < max(MIN_TRAIN_TOKENS, 4 * x.shape[1]):
            raise CodecError(f"{fmt}: training needs at least {MIN_TRAIN_TOKENS} tokens")
        if len(x) > TRAIN_TOKENS * 4:
            rng = np.random.default_rng(seed)
            x = x[np.sort(rng.choice(len(x), TRAIN_TOKENS * 4, replace=False))]
        mean = x.mean(0)
        xc = (x - mean).astype(np.float64)
        _, vecs = np.linalg.eigh(xc.T @ xc)  # ascending eigenvalues
        basis = vecs[:, ::-1][:, :k].T
        return cls(fmt, mean, basis)

    def project(self, x: np.ndarray) -> np.ndarray:
        """Coordinates of (..., dim) vectors in the kept components (no quantisation)."""
        x = np.asarray(x, np.float32)
        # one 2-D GEMM: numpy's stacked (n, T, dim) @ (dim, k) loops over n without BLAS (~9x
        # slower here)
        z = (x.reshape(-1, self.dim) - self.mean) @ self.basis.T
        return z.reshape(*x.shape[:-1], self.k)

    def encode(self, embeds: np.ndarray) -> np.ndarray:
        """(n, T, dim) floats -> records (n,) of per-token scale and (T, k) int8."""
        z = self.project(embeds)
        scale = np.abs(z).max(axis=-1) / 127.0
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        out = np.empty(len(z), dtype=record_dtype(self.fmt, z.shape[1], self.dim))
        out["scale"] = scale
        out["q"] = np.clip(np.rint(z / scale[..., None]), -127, 127)
        return out

    def decode(self, records: np.ndarray, dtype: np.dtype = np.float32) -> np.ndarray:
        """Records -> (n, T, dim) in ``dtype``."""
        z = np.asarray(records["q"], np.float32) * np.asarray(records["scale"])[..., None]
        out = z.reshape(-1, self.k) @ self.basis  # one 2-D GEMM (see project)
        out += self.mean
        return out.reshape(*z.shape[:-1], self.dim).astype(dtype, copy=False)

    def save(self, fh) -> None:
        """Mean (first row) and basis as one (k + 1, dim) .npy."""
        np.save(fh, np.concatenate([self.mean[None], self.basis]))

    @classmethod
    def load(cls, fmt: str, path: Path) -> PCACodec:
        a = _read_codebook(path)
        return cls(fmt, a[0], a[1:])

    def manifest_entry(self, file: str) -> dict[str, object]:
        """What the store's manifest records about this codec."""
        return {"file": file, "format": self.fmt, "version": CODEC_VERSION, "k": self.k}


Codec = PQCodec | PCACodec


def train_codec(fmt: str, embeds: np.ndarray, seed: int = 0) -> Codec:
    """Train the codec of a format on a sample of E."""
    return (PCACodec if fmt in PCA_FORMATS else PQCodec).train(fmt, embeds, seed)


def load_codec(fmt: str, path: Path) -> Codec:
    """A trained codec from its saved file."""
    return (PCACodec if fmt in PCA_FORMATS else PQCodec).load(fmt, path)
