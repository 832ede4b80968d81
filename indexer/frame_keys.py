"""Keys of frames in the FAISS index and the token store, beside asset ids.

A frame's key is ``FRAME_KEY_BASE + asset_id * FRAMES_PER_ASSET + idx``: far above any asset
id (asset ids stay below 2**52), computed from the frame's place (no lookup), and the same
every time the asset is processed, so a re-score replaces the records instead of leaving
orphans. ``asset_of``/``index_of`` invert it.
"""

from __future__ import annotations

import numpy as np

FRAME_KEY_BASE = 1 << 52
FRAMES_PER_ASSET = 4096  # media.max_frames is capped below this


def frame_key(asset_id: int, idx: int) -> int:
    """The key of frame ``idx`` of asset ``asset_id``."""
    if not 0 <= idx < FRAMES_PER_ASSET:
        raise ValueError(f"frame index {idx} outside 0..{FRAMES_PER_ASSET - 1}")
    return FRAME_KEY_BASE + int(asset_id) * FRAMES_PER_ASSET + int(idx)


def frame_keys(asset_id: int, count: int, start: int = 0) -> np.ndarray:
    """Keys of frames ``start .. start + count - 1`` of one asset (int64)."""
    base = FRAME_KEY_BASE + int(asset_id) * FRAMES_PER_ASSET
    return np.arange(base + start, base + start + count, dtype=np.int64)


def is_frame_key(ids: np.ndarray) -> np.ndarray:
    """Which of ``ids`` are frame keys (the others are asset ids)."""
    return np.asarray(ids, dtype=np.int64) >= FRAME_KEY_BASE


def asset_of(keys: np.ndarray) -> np.ndarray:
    """The asset of each frame key."""
    return (np.asarray(keys, dtype=np.int64) - FRAME_KEY_BASE) // FRAMES_PER_ASSET


def index_of(keys: np.ndarray) -> np.ndarray:
    """The frame index of each frame key."""
    return (np.asarray(keys, dtype=np.int64) - FRAME_KEY_BASE) % FRAMES_PER_ASSET
