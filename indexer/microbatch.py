"""Micro-batching: items submitted one at a time by many callers, run together in batches.

A model forward over 8 images costs far less than 8 forwards over one (the weights are read once,
the matrix products are wider), so concurrent requests that each bring one image should share a
forward. :class:`MicroBatcher` takes items from any thread (``submit`` returns a
:class:`~concurrent.futures.Future`; asyncio callers wrap it with ``asyncio.wrap_future``) and runs
them in ONE thread of its own, in batches of at most ``max_batch`` items:

- the thread waits for a first item, then at most ``max_wait_s`` after that item was SUBMITTED for
  more (a lone request pays at most ``max_wait_s`` on top of its forward);
- items that arrived while a batch ran have waited already: the next batch starts at once with
  what is there, so under load batches fill up without any added wait;
- the queue is bounded (``max_queue`` items): past it ``submit`` raises :class:`BatcherFull`
  at once, so a server sheds load (503 + Retry-After) instead of queueing for ever.

The batch function gets the items in submission order and returns one result per item; if it
raises, every item of that batch gets the exception. Nothing here knows about models.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class BatcherFull(RuntimeError):
    """The batcher's queue holds ``max_queue`` items already: try again later."""


class BatcherClosed(RuntimeError):
    """The batcher was closed (the server is shutting down)."""


@dataclass
class BatchStats:
    """What a batcher has run so far (read without a lock: counters for tests and metrics)."""

    batches: int = 0
    items: int = 0
    largest: int = 0
    seconds: float = 0.0  # spent in the batch function
    sizes: dict[int, int] = field(default_factory=dict)  # batch size -> how many batches


@dataclass
class _Pending(Generic[T, R]):
    item: T
    future: Future[R]
    submitted: float


class MicroBatcher(Generic[T, R]):
    """Runs ``run_batch`` over batches of submitted items in one thread of its own.

    Args:
        run_batch: items -> one result per item, in order (called only from the batch thread).
        max_batch: the most items per call of ``run_batch``.
        max_wait_s: the longest a first item waits for company before its batch runs.
        max_queue: items waiting (not yet in a running batch) before ``submit`` refuses.
        name: the thread's name.
    """

    def __init__(
        self,
        run_batch: Callable[[list[T]], Sequence[R]],
        *,
        max_batch: int = 8,
        max_wait_s: float = 0.01,
        max_queue: int = 64,
        name: str = "ramdex-microbatch",
    ) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait_s < 0:
            raise ValueError("max_batch and max_queue must be >= 1, max_wait_s >= 0")
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.stats = BatchStats()
        self._queue: queue.Queue[_Pending[T, R] | None] = queue.Queue(maxsize=max_queue)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    # ---------- callers ----------
    def submit(self, item: T) -> Future[R]:
        """Queue one item; its future gets the result (or the batch's exception).

        Raises:
            BatcherFull: ``max_queue`` items are waiting already.
            BatcherClosed: the batcher was closed.
        """
        if self._closed.is_set():
            raise BatcherClosed("the batcher is closed")
        future: Future[R] = Future()
        try:
            self._queue.put_nowait(_Pending(item, future, time.monotonic()))
        except queue.Full:
            raise BatcherFull(f"{self.max_queue} items are already waiting for the model") from None
        return future

    def waiting(self) -> int:
        """Items queued and not yet taken into a batch (approximate, as any queue size)."""
        return self._queue.qsize()

    def drain_estimate_s(self) -> float:
        """About how long the items waiting now take to run, from the mean batch time so far
        (what a 503's Retry-After tells a client)."""
        stats = self.stats
        per_batch = stats.seconds / stats.batches if stats.batches else 1.0
        return -(-self.waiting() // self.max_batch) * per_batch

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop taking items; the batch running finishes, items still queued fail with
        :class:`BatcherClosed`."""
        if self._closed.is_set():
            return
        self._closed.set()
        try:
            self._queue.put_nowait(None)  # wakes the thread if it waits for a first item
        except queue.Full:
            pass  # the thread is busy and will see the flag
        self._thread.join(timeout_s)
        while True:
            try:
                pending = self._queue.get_nowait()
            except queue.Empty:
                break
            if pending is not None and pending.future.set_running_or_notify_cancel():
                pending.future.set_exception(BatcherClosed("the server is shutting down"))

    # ---------- the batch thread ----------
    def _collect(self) -> list[_Pending[T, R]] | None:
        """The next batch: a first item, then more until ``max_batch`` or its deadline."""
        first = self._queue.get()
        if first is None or self._closed.is_set():
            return None
        batch = [first]
        deadline = first.submitted + self.max_wait_s
        while len(batch) < self.max_batch:
            try:  # what is already queued joins at once, whatever the deadline
                nxt = self._queue.get_nowait()
            except queue.Empty:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    nxt = self._queue.get(timeout=left)
                except queue.Empty:
                    break
            if nxt is None:  # closing: run what we have, then stop
                self._closed.set()
                break
            batch.append(nxt)
        return batch

    def _loop(self) -> None:
        while not self._closed.is_set():
            batch = self._collect()
            if batch is None:
                return
            # A caller that gave up (cancelled its future) needs no result.
            live = [p for p in batch if p.future.set_running_or_notify_cancel()]
            if not live:
                continue
            self._run(live)

    def _run(self, batch: list[_Pending[T, R]]) -> None:
        stats = self.stats
        stats.batches += 1
        stats.items += len(batch)
        stats.largest = max(stats.largest, len(batch))
        stats.sizes[len(batch)] = stats.sizes.get(len(batch), 0) + 1
        started = time.monotonic()
        try:
            results = list(self.run_batch([p.item for p in batch]))
            if len(results) != len(batch):
                raise RuntimeError(
                    f"the batch function returned {len(results)} results for {len(batch)} items"
                )
        except BaseException as exc:  # every caller of the batch hears it; the thread goes on
            if not isinstance(exc, Exception):
                log.error("micro-batch interrupted", exc_info=True)
            for pending in batch:
                pending.future.set_exception(exc)
            return
        finally:
            stats.seconds += time.monotonic() - started
        for pending, result in zip(batch, results, strict=True):
            pending.future.set_result(result)
