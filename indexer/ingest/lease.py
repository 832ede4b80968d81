"""This process's leases: its owner name, the heartbeat that renews what it holds, and telling
whether another owner on this machine is still alive.

An owner name is ``host|pid-namespace|pid|start-time``: unique for the life of a process, and
enough for a process on the same machine to tell at once that the owner is gone (its pid no
longer runs, or now belongs to a younger process). Elsewhere a lease simply runs out.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterable
from pathlib import Path

from indexer.db.asset_leases import renew_asset_leases
from indexer.db.backfill_parts import renew_part
from indexer.db.job_repo import renew_job_lease
from indexer.db.session import session_scope
from indexer.db.video_parts import renew_video_part
from indexer.jobs import renew_job_run
from indexer.settings import Settings

log = logging.getLogger(__name__)

_SEP = "|"


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid").removeprefix("pid:").strip("[]")
    except OSError:  # not Linux: no namespace to tell processes apart by
        return "-"


def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), None if it does not run."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 counts from 1; the command name (field 2) may hold spaces, so split after it.
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


_owner: tuple[int, str] | None = None


def process_owner() -> str:
    """This process's owner name for leases (recomputed after a fork)."""
    global _owner
    pid = os.getpid()
    if _owner is None or _owner[0] != pid:
        host = socket.gethostname()[:100] or "host"
        parts = [host, _pid_namespace(), str(pid), _start_time(pid) or "0"]
        _owner = (pid, _SEP.join(parts))
    return _owner[1]


def local_prefix() -> str:
    """The part of owner names shared by every process of this machine (and pid namespace)."""
    host, namespace, *_ = process_owner().split(_SEP)
    return f"{host}{_SEP}{namespace}{_SEP}"


def is_dead_here(owner: str) -> bool:
    """Whether ``owner`` is a process of this machine that no longer runs.

    False when it runs or when this machine cannot tell (another host or pid namespace, or no
    ``/proc``): then only its lease running out says it is gone.
    """
    if not owner.startswith(local_prefix()) or _pid_namespace() == "-":
        return False
    try:
        _host, _ns, pid_text, started = owner.split(_SEP)
        pid = int(pid_text)
    except ValueError:
        return False
    return _start_time(pid) != started


class LeaseKeeper:
    """Renews the leases this process holds, every third of ``ingest.lease_s``, in one thread.

    Holders tell it what they hold (:meth:`hold_assets`, :meth:`hold_job`, :meth:`hold_run`) and
    drop it when they commit or give up; what is dropped without being finished simply runs
    out, and the reconciler finds it. Renewal failures (database down) are logged, not raised:
    if the database stays away long enough, the leases run out and the work is redone, which is
    safe.
    """

    def __init__(self, settings: Settings) -> None:
        self.url = settings.database_url
        self.lease_s = settings.ingest.lease_s
        self.owner = process_owner()
        self._assets: set[int] = set()
        self._jobs: set[int] = set()
        self._runs: set[int] = set()  # running jobs whose work this process does (backfills)
        self._parts: set[tuple[int, int]] = set()  # (job, part) of backfills run here
        self._video_parts: set[tuple[int, int]] = set()  # (asset, part) of split videos
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def hold_assets(self, asset_ids: Iterable[int]) -> None:
        """Renew the leases of these assets until :meth:`drop_assets`."""
        with self._lock:
            self._assets.update(int(i) for i in asset_ids)
            self._start()

    def drop_assets(self, asset_ids: Iterable[int]) -> None:
        """Stop renewing these assets (finished, handed over, or given up)."""
        with self._lock:
            self._assets.difference_update(int(i) for i in asset_ids)

    def hold_job(self, job_id: int) -> None:
        """Renew a pending job's registration lease until :meth:`drop_job`."""
        with self._lock:
            self._jobs.add(int(job_id))
            self._start()
        self._wake.set()  # renew at once: the job's lease names this process from now on

    def drop_job(self, job_id: int) -> None:
        """Stop renewing the job's registration lease."""
        with self._lock:
            self._jobs.discard(int(job_id))

    def hold_run(self, job_id: int) -> None:
        """Renew the lease of a running job this process works on until :meth:`drop_run`."""
        with self._lock:
            self._runs.add(int(job_id))
            self._start()

    def drop_run(self, job_id: int) -> None:
        """Stop renewing the running job's lease."""
        with self._lock:
            self._runs.discard(int(job_id))

    def hold_part(self, job_id: int, part: int) -> None:
        """Renew the lease of a backfill part this process runs until :meth:`drop_part`."""
        with self._lock:
            self._parts.add((int(job_id), int(part)))
            self._start()

    def drop_part(self, job_id: int, part: int) -> None:
        """Stop renewing the backfill part's lease."""
        with self._lock:
            self._parts.discard((int(job_id), int(part)))

    def hold_video_part(self, asset_id: int, part: int) -> None:
        """Renew the lease of a split video's part this process runs until
        :meth:`drop_video_part`."""
        with self._lock:
            self._video_parts.add((int(asset_id), int(part)))
            self._start()

    def drop_video_part(self, asset_id: int, part: int) -> None:
        """Stop renewing the video part's lease."""
        with self._lock:
            self._video_parts.discard((int(asset_id), int(part)))

    def held_assets(self) -> list[int]:
        """The assets whose leases this keeper renews."""
        with self._lock:
            return list(self._assets)

    def renew(self) -> None:
        """Renew everything held now (the heartbeat; also called by holders between batches)."""
        with self._lock:
            assets = list(self._assets)
            jobs = list(self._jobs)
            runs = list(self._runs)
            parts = list(self._parts)
            video_parts = list(self._video_parts)
        if not assets and not jobs and not runs and not parts and not video_parts:
            return
        try:
            with session_scope(self.url) as session:
                if assets:
                    renew_asset_leases(session, assets, self.owner, self.lease_s)
                for job_id in jobs:
                    renew_job_lease(session, job_id, self.owner, self.lease_s)
                for job_id in runs:
                    renew_job_run(session, job_id, self.owner, self.lease_s)
                for job_id, part in parts:
                    renew_part(session, job_id, part, self.owner, self.lease_s)
                for asset_id, part in video_parts:
                    renew_video_part(session, asset_id, part, self.owner, self.lease_s)
        except Exception as exc:  # the database may be away; leases run out if it stays away
            log.warning("lease renewal failed (%s: %s)", type(exc).__name__, exc)

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="ramdex-lease", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            self._wake.wait(self.lease_s / 3.0)
            self._wake.clear()
            self.renew()


_keepers: dict[tuple[int, str, float], LeaseKeeper] = {}
_keepers_lock = threading.Lock()


def keeper_for(settings: Settings) -> LeaseKeeper:
    """This process's lease keeper for the settings' database (one heartbeat thread each)."""
    key = (os.getpid(), settings.database_url, settings.ingest.lease_s)
    with _keepers_lock:
        keeper = _keepers.get(key)
        if keeper is None:
            keeper = LeaseKeeper(settings)
            _keepers[key] = keeper
        return keeper
