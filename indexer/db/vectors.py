"""Vectors as bytes: float32 little-endian, the same layout on PostgreSQL (bytea) and SQLite."""

from __future__ import annotations

import numpy as np

_DTYPE = np.dtype("<f4")


def encode_vectors(values: np.ndarray) -> bytes:
    """Bytes of a float vector or matrix as little-endian float32.

    Raises:
        ValueError: if ``values`` is empty, not 1-D/2-D, or holds NaN or infinity.
    """
    array = np.asarray(values)
    if array.ndim not in (1, 2) or array.size == 0:
        raise ValueError(f"expected a non-empty 1-D or 2-D array, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"expected numbers, got dtype {array.dtype}")
    array = np.ascontiguousarray(array, dtype=_DTYPE)
    if not np.isfinite(array).all():
        raise ValueError("vector holds NaN or infinity")
    return array.tobytes()


def decode_vectors(data: bytes, dim: int) -> np.ndarray:
    """A (n, dim) float32 array from bytes written by :func:`encode_vectors`.

    Raises:
        ValueError: if the byte length is not a multiple of ``dim`` float32 values.
    """
    if dim <= 0 or len(data) % (dim * _DTYPE.itemsize):
        raise ValueError(f"{len(data)} bytes are not rows of {dim} float32 values")
    return np.frombuffer(data, dtype=_DTYPE).reshape(-1, dim).astype(np.float32, copy=True)


def decode_vector(data: bytes, dim: int) -> np.ndarray:
    """A (dim,) float32 vector from bytes written by :func:`encode_vectors`."""
    rows = decode_vectors(data, dim)
    if rows.shape[0] != 1:
        raise ValueError(f"expected one vector of {dim} values, got {rows.shape[0]}")
    return rows[0]
