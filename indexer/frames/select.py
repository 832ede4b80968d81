"""Keyframe choice by scene change, with a minimum and a maximum interval and a frame cap.

A frame's signature is its joint RGB colour histogram (4 x 4 x 4 bins) over a small
downscaled copy; the difference of two signatures is half their L1 distance, 0 (same colours)
to 1 (no colour in common), the measure PySceneDetect's histogram detector uses. A frame is
kept when it is at least ``min_interval_s`` after the last kept one and either differs from it
by ``scene_threshold`` or is ``max_interval_s`` after it (so a static shot still gets a frame
now and then). The first frame is always kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BINS = 4  # per channel: 64 joint bins, coarse enough for noise and compression, fine for scenes


def signature(rgb: np.ndarray) -> np.ndarray:
    """The normalised (64,) joint colour histogram of an (H, W, 3) uint8 picture."""
    q = (np.asarray(rgb, dtype=np.uint8) >> 6).astype(np.int32)  # 256 / 4 = 64 levels per bin
    codes = (q[..., 0] * BINS + q[..., 1]) * BINS + q[..., 2]
    hist = np.bincount(codes.reshape(-1), minlength=BINS**3).astype(np.float32)
    return hist / max(float(hist.sum()), 1.0)


def difference(a: np.ndarray, b: np.ndarray) -> float:
    """Half the L1 distance of two signatures, in [0, 1]."""
    return float(0.5 * np.abs(a - b).sum())


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
