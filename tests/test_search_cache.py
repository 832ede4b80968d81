"""The search caches: entries expire, the least recently used go first, and one build runs per
key at a time (concurrent requests for one new concept score it once)."""

from __future__ import annotations

import threading
import time

import pytest

from indexer.search.cache import TtlCache


def test_concurrent_callers_of_one_key_share_one_build() -> None:
    cache = TtlCache()
    calls = []
    started = threading.Event()

    def build() -> str:
        calls.append(1)
        started.set()
        time.sleep(0.3)  # a concept being scored
        return "ranking"

    results = []
    first = threading.Thread(target=lambda: results.append(cache.get_or_build("k", build)))
    first.start()
    started.wait(5)
    others = [
        threading.Thread(target=lambda: results.append(cache.get_or_build("k", build)))
        for _ in range(3)
    ]
    for t in others:
        t.start()
    for t in (first, *others):
        t.join(5)
    assert results == ["ranking"] * 4
    assert len(calls) == 1


def test_a_failed_build_lets_the_waiter_build() -> None:
    cache = TtlCache()
    started = threading.Event()

    def failing() -> str:
        started.set()
        time.sleep(0.2)
        raise RuntimeError("model unavailable")

    errors = []

    def first() -> None:
        try:
            cache.get_or_build("k", failing)
        except RuntimeError as exc:
            errors.append(exc)

    thread = threading.Thread(target=first)
    thread.start()
    started.wait(5)
    assert cache.get_or_build("k", lambda: "built again") == "built again"
    thread.join(5)
    assert len(errors) == 1
    assert cache.get_or_build("k", lambda: pytest.fail("cached")) == "built again"


def test_entries_expire_and_the_oldest_go_first() -> None:
    cache = TtlCache(size=2, ttl_s=0.2)
    assert cache.get_or_build("a", lambda: 1) == 1
    assert cache.get_or_build("a", lambda: 2) == 1
    cache.get_or_build("b", lambda: 3)
    cache.get_or_build("c", lambda: 4)  # "a" is the least recently used: dropped
    assert cache.get_or_build("a", lambda: 5) == 5
    time.sleep(0.25)
    assert cache.get_or_build("c", lambda: 6) == 6
