"""Moments of a video as people read them (``1:05.5``), for the commands that print them."""

from __future__ import annotations


def clock(seconds: float) -> str:
    """``1:05.5``: a moment of a video (``h:mm:ss.s`` past an hour)."""
    minutes, rest = divmod(max(0.0, seconds), 60.0)
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours}:{minutes:02d}:{rest:04.1f}" if hours else f"{minutes}:{rest:04.1f}"
