"""Named database leases (:mod:`indexer.db.leases` ``service_leases``) held while work runs:
taken once, renewed by a thread every third of their length, given back at the end. Two
processes never scan one source at once (``source-scan:<id>``), and one process at a time runs
the scheduler (``sources``)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from indexer.db.leases import release_service_lease, take_service_lease
from indexer.db.session import session_scope

log = logging.getLogger(__name__)

SCHEDULER_LEASE = "sources"


def scan_lease_name(source_id: int) -> str:
    """The lease a scan of this source holds."""
    return f"source-scan:{int(source_id)}"


def take(url: str, name: str, owner: str, lease_s: float) -> bool:
    """Take or renew the lease; False while another owner holds it."""
    with session_scope(url) as session:
        return take_service_lease(session, name, owner, lease_s)


def release(url: str, name: str, owner: str) -> None:
    """Give the lease up (best effort: with the database away it runs out by itself)."""
    try:
        with session_scope(url) as session:
            release_service_lease(session, name, owner)
    except Exception:
        log.debug("could not release lease %s", name, exc_info=True)


@contextmanager
def held(url: str, name: str, owner: str, lease_s: float) -> Iterator[bool]:
    """Hold the lease for the block (renewed in a thread); yields False, and runs nothing of
    the lease, when another owner holds it."""
    if not take(url, name, owner, lease_s):
        yield False
        return
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(lease_s / 3):
            try:
                take(url, name, owner, lease_s)
            except Exception as exc:  # the database is away: the lease may run out
                log.warning("could not renew lease %s: %s", name, exc)

    thread = threading.Thread(target=renew, name=f"ramdex-lease-{name}", daemon=True)
    thread.start()
    try:
        yield True
    finally:
        stop.set()
        thread.join(timeout=5)
        release(url, name, owner)
