"""The dispatcher: fan out new events, seal batches, send what is due, record every attempt.

One pass (:func:`dispatch_once`) is run by whichever process holds the ``webhooks`` service
lease (a Celery worker process, or an embedded ``ramdex serve``), every ``webhooks.interval_s``,
in a thread of its own: ingest never waits for it, and a dead or slow receiver costs at most
``webhooks.timeout_s`` of one of ``webhooks.concurrency`` sending threads. Each delivery is
claimed by a conditional UPDATE before it is sent, so even two passes at once never send one
delivery concurrently; a sender that dies leaves it due again after its claim's lease.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass

from indexer.db.leases import release_service_lease, take_service_lease
from indexer.db.session import session_scope
from indexer.db.webhook_repo import Claimed, claim, due_delivery_ids, has_work, record_attempt
from indexer.settings import Settings
from indexer.webhooks.batching import SealConflict, fan_out, seal_all
from indexer.webhooks.retention import prune
from indexer.webhooks.retry import retry_delay_s
from indexer.webhooks.sender import Attempt, post
from indexer.webhooks.signing import SIGNATURE_HEADER, signature_header

log = logging.getLogger(__name__)

SERVICE = "webhooks"
PRUNE_EVERY_S = 60.0
MAX_SEND_ROUNDS = 20  # claim/send rounds per pass, so one pass ends and the lease renews


@dataclass
class DispatchReport:
    """What one pass did."""

    fanned_out: int = 0
    sealed: int = 0
    delivered: int = 0
    failed: int = 0
    dead: int = 0
    pruned_events: int = 0
    pruned_deliveries: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def owner_name() -> str:
    """This process as a claimant (host:pid, like the ingest leases)."""
    return f"{os.uname().nodename}:{os.getpid()}:webhooks"


def _headers(claimed: Claimed) -> tuple[bytes, dict[str, str]]:
    body = claimed.body.encode("utf-8")
    types = sorted({e["type"] for e in json.loads(claimed.body).get("events", [])})
    return body, {
        SIGNATURE_HEADER: signature_header(claimed.secret, body),
        "X-Ramdex-Delivery": str(claimed.id),
        "X-Ramdex-Webhook": str(claimed.webhook_id),
        "X-Ramdex-Attempt": str(claimed.attempt),
        "X-Ramdex-Event-Types": ",".join(types),
    }


def send_one(settings: Settings, claimed: Claimed) -> Attempt:
    """POST one claimed delivery (never raises)."""
    body, headers = _headers(claimed)
    return post(
        claimed.url,
        body,
        headers,
        timeout_s=settings.webhooks.timeout_s,
        allow_private=settings.ingest.allow_private_urls,
    )


def _record(settings: Settings, owner: str, claimed: Claimed, attempt: Attempt) -> str:
    hooks = settings.webhooks
    retry = None
    if attempt.error is not None:
        retry = retry_delay_s(
            claimed.attempt,
            base_s=hooks.retry_base_s,
            max_s=hooks.retry_max_s,
            max_attempts=hooks.max_attempts,
        )
    with session_scope(settings.database_url) as session:
        return record_attempt(
            session,
            claimed.id,
            owner,
            status_code=attempt.status_code,
            error=attempt.error,
            retry_in_s=retry,
        )


def _claim_lease_s(settings: Settings) -> float:
    # Long enough for the POST (connect + read) and its recording, with room for a slow DB.
    return settings.webhooks.timeout_s * 3 + 10.0


def send_due(
    settings: Settings, owner: str, pool: ThreadPoolExecutor, report: DispatchReport
) -> None:
    """Claim and send due deliveries, ``webhooks.concurrency`` at a time, until none is due."""
    batch = settings.webhooks.concurrency * 2
    tried: set[int] = set()  # a pass tries each delivery once; retries wait for a later pass
    for _round in range(MAX_SEND_ROUNDS):
        with session_scope(settings.database_url) as session:
            due = [i for i in due_delivery_ids(session, batch + len(tried)) if i not in tried]
            taken = claim(session, due[:batch], owner, _claim_lease_s(settings))
        if not taken:
            return
        tried.update(c.id for c in taken)
        futures = {pool.submit(send_one, settings, c): c for c in taken}
        for future in as_completed(futures):
            try:
                attempt = future.result()
            except Exception as exc:  # a bug in the sender: a failed attempt, not a dead pass
                attempt = Attempt(None, f"{type(exc).__name__}: {exc}"[:300], 0.0)
            status = _record(settings, owner, futures[future], attempt)
            if status == "delivered":
                report.delivered += 1
            elif status == "failed":
                report.failed += 1
            elif status == "dead":
                report.dead += 1


def send_now(settings: Settings, delivery_id: int, owner: str | None = None) -> str:
    """Send one delivery at once in this thread (replay, test ping); returns the status
    recorded, or "" when it is not due (another sender holds it)."""
    owner = owner or owner_name()
    with session_scope(settings.database_url) as session:
        taken = claim(session, [delivery_id], owner, _claim_lease_s(settings))
    if not taken:
        return ""
    return _record(settings, owner, taken[0], send_one(settings, taken[0]))


def prepare(settings: Settings, report: DispatchReport) -> None:
    """Fan out new events and seal ripe batches (each in its own transaction)."""
    url = settings.database_url
    while True:
        with session_scope(url) as session:
            n = fan_out(session)
        report.fanned_out += n
        if n == 0:
            break
    try:
        with session_scope(url) as session:
            report.sealed += len(seal_all(session))
    except SealConflict as exc:  # another pass sealed them: nothing lost, nothing doubled
        log.info("webhooks: %s", exc)


def dispatch_once(
    settings: Settings,
    owner: str | None = None,
    pool: ThreadPoolExecutor | None = None,
    *,
    prune_now: bool = False,
) -> DispatchReport:
    """One full pass in the calling thread (tests and the CLI call it directly)."""
    owner = owner or owner_name()
    report = DispatchReport()
    prepare(settings, report)
    own = pool is None
    pool = pool or ThreadPoolExecutor(
        settings.webhooks.concurrency, thread_name_prefix="ramdex-hook"
    )
    try:
        send_due(settings, owner, pool, report)
    finally:
        if own:
            pool.shutdown(wait=True)
    if prune_now:
        with session_scope(settings.database_url) as session:
            report.pruned_events, report.pruned_deliveries = prune(session, settings.webhooks)
    return report


class Dispatcher:
    """The periodic dispatcher of a process: while holding the ``webhooks`` service lease, a
    pass every ``webhooks.interval_s``; otherwise it only tries to take the lease, every five
    intervals (one statement), so a dead holder is replaced within seconds."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.interval_s = settings.webhooks.interval_s
        self.owner = owner_name()
        self.passes = 0
        self.last: DispatchReport | None = None
        self._last_prune = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(
            settings.webhooks.concurrency, thread_name_prefix="ramdex-hook"
        )

    def tick(self) -> DispatchReport | None:
        """Take (or keep) the lease and, holding it, run one pass; None when not holding it
        or when there is nothing to do (checked with one read, so an archive without webhooks
        sees no writes from here)."""
        lease_s = max(self.interval_s * 5, 10.0) + _claim_lease_s(self.settings)
        with session_scope(self.settings.database_url) as session:
            if not has_work(session):
                return None
            if not take_service_lease(session, SERVICE, self.owner, lease_s):
                return None
        now = time.monotonic()
        prune_now = now - self._last_prune >= PRUNE_EVERY_S
        if prune_now:
            self._last_prune = now
        self.passes += 1
        self.last = dispatch_once(self.settings, self.owner, self._pool, prune_now=prune_now)
        return self.last

    def start(self) -> Dispatcher:
        """Run :meth:`tick` periodically in a daemon thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ramdex-webhooks", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread, give the lease up (another process takes it at once)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self.passes == 0:
            return  # never held the lease
        try:
            with session_scope(self.settings.database_url) as session:
                release_service_lease(session, SERVICE, self.owner)
        except Exception:
            log.debug("could not release the webhooks lease", exc_info=True)

    def _run(self) -> None:
        wait = 0.0
        while not self._stop.wait(wait):
            held = None
            try:
                held = self.tick()
            except Exception as exc:  # database away: the next tick tries again
                log.warning("webhook dispatch failed: %s: %s", type(exc).__name__, exc)
            wait = self.interval_s if held is not None else max(self.interval_s * 5, 5.0)


_worker: tuple[int, Dispatcher] | None = None


def start_worker_dispatcher(settings: Settings) -> None:
    """One dispatcher thread per worker process (called from the Celery start hooks)."""
    global _worker
    if not settings.webhooks.enabled or (_worker is not None and _worker[0] == os.getpid()):
        return
    _worker = (os.getpid(), Dispatcher(settings).start())


def stop_worker_dispatcher() -> None:
    """Stop this process's dispatcher, if it runs one."""
    if _worker is not None and _worker[0] == os.getpid():
        _worker[1].stop()
