"""A small thread-safe LRU cache whose entries expire (concept label banks, ranked lists)."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

DEFAULT_TTL_S = 60.0


class TtlCache:
    """A small thread-safe LRU whose entries expire after ``ttl_s`` seconds."""

    def __init__(self, size: int = 64, ttl_s: float = DEFAULT_TTL_S) -> None:
        self.size, self.ttl_s = size, ttl_s
        self._items: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def clear(self) -> None:
        """Drop every entry (after a delete, a promoted concept, a threshold change)."""
        with self._lock:
            self._items.clear()

    def get_or_build(self, key: str, build: Callable[[], Any]) -> Any:
        """The fresh entry for ``key``, else ``build()``'s value (stored for ``ttl_s``)."""
        now = time.monotonic()
        with self._lock:
            hit = self._items.get(key)
            if hit is not None and now - hit[0] < self.ttl_s:
                self._items.move_to_end(key)
                return hit[1]
        value = build()  # outside the lock: builds may take a second
        with self._lock:
            self._items[key] = (now, value)
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value
