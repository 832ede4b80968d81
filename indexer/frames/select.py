"""Keyframe choice by scene change, with a minimum and a maximum interval and a frame cap.

A frame's signature is its joint RGB colour histogram (4 x 4 x 4 bins) over a small
downscaled copy, plus its brightness on an 8 x 8 grid. The difference of two signatures is the
larger of half the histograms' L1 distance (0: same colours, 1: no colour in common; the
measure PySceneDetect's histogram detector uses) and twice the grids' mean absolute difference
(a new layout in similar colours: a cut between two shots of one room). A frame is
kept when it is at least ``min_interval_s`` after the last kept one and either differs from it
by ``scene_threshold`` or is ``max_interval_s`` after it (so a static shot still gets a frame
now and then). The first frame is always kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BINS = 4  # per channel: 64 joint bins, coarse enough for noise and compression, fine for scenes


GRID = 8  # brightness layout cells per side


def signature(rgb: np.ndarray) -> np.ndarray:
    """(64 + 64,) normalised joint colour histogram and 8 x 8 brightness grid (0-1) of an
    (H, W, 3) uint8 picture."""
    pixels = np.asarray(rgb, dtype=np.uint8)
    q = (pixels >> 6).astype(np.int32)  # 256 / 4 = 64 levels per bin
    codes = (q[..., 0] * BINS + q[..., 1]) * BINS + q[..., 2]
    hist = np.bincount(codes.reshape(-1), minlength=BINS**3).astype(np.float32)
    hist /= max(float(hist.sum()), 1.0)
    grey = pixels.astype(np.float32).mean(axis=-1) / 255.0
    h, w = grey.shape
    rows = np.array_split(np.arange(h), min(GRID, h))
    cols = np.array_split(np.arange(w), min(GRID, w))
    grid = np.zeros((GRID, GRID), np.float32)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            grid[i, j] = grey[np.ix_(r, c)].mean()
    return np.concatenate([hist, grid.reshape(-1)])


def difference(a: np.ndarray, b: np.ndarray) -> float:
    """How different two frames look, in [0, 1] (see the module's docstring)."""
    n = BINS**3
    colours = 0.5 * float(np.abs(a[:n] - b[:n]).sum())
    layout = min(1.0, 2.0 * float(np.abs(a[n:] - b[n:]).mean()))
    return max(colours, layout)


@dataclass
class KeyframeSelector:
    """Decides, frame by frame in time order, which frames to keep.

    Attributes:
        min_interval_s, max_interval_s, threshold, max_frames: the rule above.
    """

    min_interval_s: float
    max_interval_s: float
    threshold: float
    max_frames: int
    kept: int = 0
    last_time: float | None = None
    last_signature: np.ndarray | None = None

    @property
    def full(self) -> bool:
        """Whether the frame cap is reached."""
        return self.kept >= self.max_frames

    def due(self, timestamp_s: float) -> bool:
        """Whether a frame at this time could be kept at all (cheap: no signature needed)."""
        if self.full:
            return False
        return self.last_time is None or timestamp_s - self.last_time >= self.min_interval_s

    def offer(self, timestamp_s: float, sig: np.ndarray) -> bool:
        """Whether to keep the frame at ``timestamp_s`` with signature ``sig`` (recorded if so)."""
        if not self.due(timestamp_s):
            return False
        keep = (
            self.last_time is None
            or self.last_signature is None
            or timestamp_s - self.last_time >= self.max_interval_s
            or difference(sig, self.last_signature) >= self.threshold
        )
        if keep:
            self.kept += 1
            self.last_time = timestamp_s
            self.last_signature = sig
        return keep
