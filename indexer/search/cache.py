"""A small thread-safe LRU cache whose entries expire (concept label banks, ranked lists)."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

DEFAULT_TTL_S = 60.0
_MISSING = object()  # no fresh entry (None is a value a build may return)


class TtlCache:
    """A small thread-safe LRU whose entries expire after ``ttl_s`` seconds."""

    def __init__(self, size: int = 64, ttl_s: float = DEFAULT_TTL_S) -> None:
        self.size, self.ttl_s = size, ttl_s
        self._items: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self._building: dict[str, threading.Event] = {}  # keys being built, set when done

    def clear(self) -> None:
        """Drop every entry (after a delete, a promoted concept, a threshold change)."""
        with self._lock:
            self._items.clear()

    def get_or_build(self, key: str, build: Callable[[], Any]) -> Any:
        """The fresh entry for ``key``, else ``build()``'s value (stored for ``ttl_s``).

        One build per key at a time: a caller asking for a key that another thread is building
        waits for that build (two people typing the same new concept score it once); if that
        build fails, the waiter builds itself.
        """
        with self._lock:
            value = self._fresh(key)
            if value is not _MISSING:
                return value
            running = self._building.get(key)
            if running is None:
                self._building[key] = threading.Event()
        if running is not None:
            running.wait()
            with self._lock:
                value = self._fresh(key)
            # The other build failed: try again, as the builder this time.
            return value if value is not _MISSING else self.get_or_build(key, build)
        try:
            now = time.monotonic()
            value = build()  # outside the lock: builds may take a second
            with self._lock:
                self._items[key] = (now, value)
                self._items.move_to_end(key)
                while len(self._items) > self.size:
                    self._items.popitem(last=False)
            return value
        finally:
            with self._lock:
                self._building.pop(key).set()

    def _fresh(self, key: str) -> Any:
        """The entry for ``key`` when fresh, else :data:`_MISSING` (the lock is held)."""
        hit = self._items.get(key)
        if hit is not None and time.monotonic() - hit[0] < self.ttl_s:
            self._items.move_to_end(key)
            return hit[1]
        return _MISSING
