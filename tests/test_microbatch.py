"""The micro-batcher (indexer/microbatch.py): batching, the bounded wait, backpressure, errors."""

from __future__ import annotations

import threading
import time

import pytest

from indexer.microbatch import BatcherClosed, BatcherFull, MicroBatcher


class Recorder:
    """A batch function that records its batches (and can be held at a gate)."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, items: list[int]) -> list[int]:
        self.entered.set()
        self.gate.wait(10)
        self.batches.append(list(items))
        return [i * 10 for i in items]


def test_items_submitted_together_share_one_batch_in_order() -> None:
    run = Recorder()
    batcher = MicroBatcher(run, max_batch=8, max_wait_s=0.5, max_queue=16)
    try:
        futures = [batcher.submit(i) for i in range(8)]
        assert [f.result(5) for f in futures] == [i * 10 for i in range(8)]
        assert run.batches == [list(range(8))]  # full at once: one call, submission order
        assert batcher.stats.batches == 1 and batcher.stats.largest == 8
    finally:
        batcher.close()


def test_a_full_batch_runs_without_waiting_for_the_deadline() -> None:
    batcher = MicroBatcher(Recorder(), max_batch=4, max_wait_s=5.0, max_queue=16)
    try:
        started = time.monotonic()
        futures = [batcher.submit(i) for i in range(4)]
        for f in futures:
            f.result(5)
        assert time.monotonic() - started < 2.0  # far below the 5 s wait
    finally:
        batcher.close()


def test_a_lone_item_waits_at_most_max_wait() -> None:
    wait = 0.2
    batcher = MicroBatcher(Recorder(), max_batch=8, max_wait_s=wait, max_queue=16)
    try:
        started = time.monotonic()
        assert batcher.submit(1).result(5) == 10
        took = time.monotonic() - started
        assert wait * 0.9 <= took < wait + 0.5, took  # waited for company, then ran alone
    finally:
        batcher.close()


def test_items_arriving_during_a_batch_form_the_next_batch_at_once() -> None:
    run = Recorder()
    run.gate.clear()
    batcher = MicroBatcher(run, max_batch=8, max_wait_s=0.0, max_queue=16)
    try:
        first = batcher.submit(0)
        assert run.entered.wait(5)  # batch [0] is running, held at the gate
        rest = [batcher.submit(i) for i in range(1, 6)]
        run.gate.set()
        first.result(5)
        assert [f.result(5) for f in rest] == [10, 20, 30, 40, 50]
        assert run.batches == [[0], [1, 2, 3, 4, 5]]  # the backlog ran as one batch
    finally:
        batcher.close()


def test_a_full_queue_refuses_at_once() -> None:
    run = Recorder()
    run.gate.clear()
    batcher = MicroBatcher(run, max_batch=1, max_wait_s=0.0, max_queue=2)
    try:
        running = batcher.submit(0)
        assert run.entered.wait(5)  # taken out of the queue, held in the batch function
        queued = [batcher.submit(1), batcher.submit(2)]
        with pytest.raises(BatcherFull, match="2 items are already waiting"):
            batcher.submit(3)
        run.gate.set()
        assert running.result(5) == 0 and [f.result(5) for f in queued] == [10, 20]
        assert batcher.submit(4).result(5) == 40  # room again
    finally:
        batcher.close()


def test_an_error_reaches_every_item_of_its_batch_and_the_thread_goes_on() -> None:
    calls = []

    def run(items: list[int]) -> list[int]:
        calls.append(items)
        if len(calls) == 1:
            raise ValueError("bad batch")
        return items

    batcher = MicroBatcher(run, max_batch=2, max_wait_s=0.5, max_queue=8)
    try:
        futures = [batcher.submit(1), batcher.submit(2)]
        for f in futures:
            with pytest.raises(ValueError, match="bad batch"):
                f.result(5)
        assert batcher.submit(3).result(5) == 3
    finally:
        batcher.close()


def test_a_cancelled_item_is_not_run_and_closing_fails_what_waits() -> None:
    run = Recorder()
    run.gate.clear()
    batcher = MicroBatcher(run, max_batch=1, max_wait_s=0.0, max_queue=8)
    running = batcher.submit(0)
    assert run.entered.wait(5)
    cancelled = batcher.submit(1)
    assert cancelled.cancel()
    waiting = batcher.submit(2)
    closer = threading.Thread(target=batcher.close)
    closer.start()
    run.gate.set()
    closer.join(10)
    assert running.result(5) == 0
    assert [b for b in run.batches if 1 in b] == []
    with pytest.raises(BatcherClosed):
        waiting.result(5)
    with pytest.raises(BatcherClosed):
        batcher.submit(5)
