"""Where a search's time went: named phases in the order they ran (database, text encoding,
calibration, stage 1, stage 2, the page's rows), for the API's ``Server-Timing`` header,
``ramdex search`` and benchmarks.

A :class:`Phases` belongs to one request; recording costs two ``perf_counter`` calls a phase.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

# Phase names are Server-Timing metric names (RFC 7230 tokens): short, no spaces.
DB = "db"  # model id, pending count, tag names, the stored concept's descriptions
ENCODE = "encode"  # the concept's descriptions through the text encoder
CALIBRATE = "calibrate"  # exact scores of the background sample (the concept's threshold)
STAGE1 = "stage1"  # the FAISS shortlist
STAGE2 = "stage2"  # exact scores of the shortlist
SIMILAR = "similar"  # FAISS for similar-image search
FILTER = "filter"  # tag, type and date filters over the ranked list
ROWS = "rows"  # the page's asset rows and matched tags


class Phases:
    """Seconds per named phase of one request (a phase recorded twice adds up), plus notes
    (``cache=hit``) that say how the request was served."""

    def __init__(self) -> None:
        self._seconds: dict[str, float] = {}
        self.notes: dict[str, str] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block as ``name``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def add(self, name: str, seconds: float) -> None:
        """Add ``seconds`` to phase ``name``."""
        self._seconds[name] = self._seconds.get(name, 0.0) + max(0.0, float(seconds))

    def seconds(self) -> dict[str, float]:
        """Seconds per phase, in the order the phases first ran."""
        return dict(self._seconds)

    def total(self) -> float:
        """Seconds of every recorded phase together."""
        return sum(self._seconds.values())
