"""Ingest dispatch: hand assets to the model queue after their registration committed.

The durable record is the asset row itself: a ``pending`` asset is either leased to a live
process that will dispatch (or process) it, or carries ``dispatched_at``, the time its message
was sent. Sending happens only after the commit that made the asset visible, and the dispatch
time is written only after the broker accepted the message, so a broker or database outage in
between loses nothing: the lease runs out, or ``dispatched_at`` stays empty, and the reconciler
(:mod:`indexer.ingest.reconcile`) sends it again. A message sent twice does no harm (processing is
idempotent and leased).

Batching choice: **tasks take a list of asset ids, and producers group ids** (:class:`Dispatcher`:
up to ``broker.batch_size`` ids, or whatever arrived within ``broker.batch_timeout_ms`` of the
first). One message is then one unit of work *and* one unit of redelivery, which keeps
``acks_late`` exact: a worker killed mid-batch loses nothing (the whole message comes back) and
redoes nothing twice (finished assets are skipped, results are replaced, not appended). A
consumer that gathered many single-id messages would have to hold several unacknowledged
messages at once and ack them one by one after a shared commit, which Celery supports only
through third-party batching add-ons whose late-ack behaviour is weaker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType

from indexer.celery_app import PROCESS_TASK, SYNC_TASK, producer_app
from indexer.db.asset_leases import mark_dispatched
from indexer.db.session import session_scope
from indexer.ingest.queue_mark import send_headers
from indexer.settings import Settings
from indexer.stores import sync_vector_index

log = logging.getLogger(__name__)


def one_line(exc: BaseException) -> str:
    """An error as one line for logs a person reads (the CLI shows warnings, never tracebacks)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


SYNC_DELAY_S = 2.0  # let the other batches of a burst commit before an index sync


def send_assets(settings: Settings, asset_ids: Sequence[int], *, force: bool = False) -> None:
    """Publish the ids to the model queue in groups of ``broker.batch_size`` (no retries: the
    caller keeps the ids until this returns, and a failed send is sent again later).

    Raises:
        kombu.exceptions.OperationalError (and other connection errors): the broker refused.
    """
    ids = [int(i) for i in asset_ids]
    sender = producer_app(settings)
    size = settings.broker.batch_size
    with sender.connection_or_acquire() as conn:
        # One quick attempt: a broker that is down must not hold registration up (kombu
        # would otherwise retry the connection for seconds on every send).
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=3)
        for start in range(0, len(ids), size):
            sender.send_task(
                PROCESS_TASK,
                args=[ids[start : start + size], None, force],
                queue=settings.broker.model_queue,
                connection=conn,
                retry=False,
                # Its send time: workers record how far the queue has delivered, which tells
                # the reconciler that older queued assets lost their message (queue_mark).
                headers=send_headers(),
            )


def dispatch(
    settings: Settings, asset_ids: Sequence[int], owner: str | None, *, force: bool = False
) -> None:
    """Send committed assets to the model queue, then record that they were sent.

    Args:
        owner: the process that holds their leases (they drop them once sent), or None for
            unleased assets.

    Raises:
        the broker's connection errors: nothing was recorded; the assets stay leased (or never
            dispatched) and are sent again later.
    """
    ids = [int(i) for i in asset_ids]
    if not ids:
        return
    send_assets(settings, ids, force=force)
    try:
        with session_scope(settings.database_url) as session:
            mark_dispatched(session, ids, owner)
    except Exception as exc:  # sent: at worst the reconciler sends them once more
        log.warning("dispatched %d assets but could not record it (%s)", len(ids), one_line(exc))


def model_queue_depth(settings: Settings) -> int | None:
    """Messages waiting in the model queue (not counting those a worker holds), or None when
    the broker cannot say. An absent queue holds nothing."""
    from kombu.exceptions import ChannelError

    try:
        with producer_app(settings).connection_or_acquire() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=3)
            channel = conn.default_channel
            try:
                ok = channel.queue_declare(queue=settings.broker.model_queue, passive=True)
            except ChannelError:
                return 0  # never declared, or deleted (a broker restarted without persistence)
            return int(ok.message_count)
    except Exception as exc:
        if type(exc).__name__ == "NotFound":  # RabbitMQ: the queue does not exist
            return 0
        log.warning("cannot read the model queue's depth: %s: %s", type(exc).__name__, exc)
        return None


def request_index_sync(
    settings: Settings,
    *,
    final: bool,
    model_id: str | None = None,
    dim: int | None = None,
) -> None:
    """Ask a default-queue worker to sync the model's FAISS index from the database.

    ``final`` syncs always run (a job just completed); others are skipped when the index was
    saved within ``SYNC_MIN_INTERVAL_S`` of the task (saving a large index is expensive). In the
    embedded mode the sync runs here and now.
    """
    if model_id is None:
        from indexer.models import configured_model_id

        model_id = configured_model_id(settings)
    dim = dim or 512
    if not settings.broker.url:
        sync_vector_index(settings, model_id, dim)
        return
    producer_app(settings).send_task(
        SYNC_TASK,
        args=[model_id, dim, final],
        queue=settings.broker.default_queue,
        countdown=SYNC_DELAY_S,  # let the other batches of a burst commit first
    )


class SendBreaker:
    """Stops sending for a while after the broker refused, so registration is not slowed by a
    broker that is down (what was not sent stays leased and is sent later)."""

    def __init__(self, pause_s: float = 5.0) -> None:
        self.pause_s = pause_s
        self._until = 0.0
        self.failures = 0

    def open(self) -> bool:
        """Whether sending should be tried now."""
        return time.monotonic() >= self._until

    def failed(self, exc: BaseException) -> None:
        if self.failures == 0 or self.open():
            log.warning(
                "broker refused a dispatch (%s: %s); the assets stay queued in the database "
                "and are sent when it is back",
                type(exc).__name__,
                str(exc).splitlines()[0][:200] if str(exc) else "",
            )
        self.failures += 1
        self._until = time.monotonic() + self.pause_s


class Dispatcher:
    """Groups asset ids for the model queue: a group goes when it holds ``batch_size`` ids or
    when its first id has waited ``timeout_ms``.

    Use as a context manager; leaving it sends what is left. Errors of a timed send are raised
    by the next :meth:`add` or by :meth:`close`.

    Args:
        send: publishes one group (for example ``lambda ids: dispatch(settings, ids, owner)``).
        batch_size: most ids per group.
        timeout_ms: longest wait of an id before its group is sent anyway.
    """

    def __init__(self, send: Callable[[list[int]], None], batch_size: int, timeout_ms: int) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self._send = send
        self.batch_size = batch_size
        self.timeout_s = max(0, timeout_ms) / 1000.0
        self._group: list[int] = []
        self._first_at = 0.0
        self._cond = threading.Condition()
        self._closed = False
        self._error: BaseException | None = None
        self._send_lock = threading.Lock()  # groups leave in order
        self._timer = threading.Thread(target=self._run_timer, name="ramdex-dispatch", daemon=True)
        self._timer.start()

    def _take(self) -> list[int]:
        group, self._group = self._group, []
        return group

    def _deliver(self, group: list[int]) -> None:
        if not group:
            return
        with self._send_lock:
            self._send(group)

    def _run_timer(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._group:
                    self._cond.wait()
                if self._closed:
                    return
                left = self._first_at + self.timeout_s - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                group = self._take()
            try:
                self._deliver(group)
            except BaseException as exc:  # surfaced by add()/close()
                self._error = exc

    def _raise_pending_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def add(self, asset_id: int) -> None:
        """Queue one id; sends its group when full."""
        self._raise_pending_error()
        with self._cond:
            if self._closed:
                raise RuntimeError("dispatcher is closed")
            if not self._group:
                self._first_at = time.monotonic()
                self._cond.notify()
            self._group.append(int(asset_id))
            group = self._take() if len(self._group) >= self.batch_size else []
        self._deliver(group)

    def flush(self) -> None:
        """Send the current group now."""
        with self._cond:
            group = self._take()
        self._deliver(group)
        self._raise_pending_error()

    def close(self) -> None:
        """Send what is left and stop the timer."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            group = self._take()
            self._cond.notify_all()
        self._timer.join()
        self._deliver(group)
        self._raise_pending_error()

    def __enter__(self) -> Dispatcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
