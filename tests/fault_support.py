"""Fault-injection harness: servers the tests own, real worker and CLI processes, one invariant.

Import it into a test module with ``pytest_plugins = ["tests.fault_support"]`` (the session
fixtures :func:`pg_cluster` and :func:`redis_server` are then shared by every fault module).

Everything is real and belongs to the test, so it can be stopped and started at will:

- :class:`PgCluster`: a PostgreSQL cluster created with ``initdb`` in a temporary folder and
  started on a free port (as the ``postgres`` user when the tests run as root: PostgreSQL refuses
  to run as root). The machine's own server on 5432 is never touched.
- :class:`RedisServer`: ``redis-server`` on a free port with no persistence, so a restart loses
  every queued message, as a broker restart without persistence does.
- :class:`Worker`: a ``ramdex worker`` process (prefork, one pool child); :meth:`Worker.kill_child`
  SIGKILLs the pool child (what a segfault or the OOM killer does to it), :meth:`Worker.kill_main`
  the main process.
- :class:`IngestRun`: ``ramdex ingest ... --json`` as a subprocess, which a test SIGKILLs or
  interrupts (SIGINT, what Ctrl-C sends) at a seeded point.
- :func:`check_invariants`: the one end state every scenario must reach *by itself*. The only
  recovery a scenario may perform is running ``ramdex ingest`` again on the same files, or
  waiting (the reconciler runs every ``ingest.reconcile_interval_s``); never ``ramdex reindex``,
  ``ramdex index sync`` or SQL repairs.

Settings come from ``RAMDEX_*`` variables exactly as a deployment sets them (see
:func:`FaultStack.env`): short leases and reconcile interval so a dead process's work comes
back in seconds, a Redis visibility timeout far longer than any test (so a recovery seen in a
test is the lease's doing, not Redis redelivering), and ``index.score_floor = 0`` so every score
is stored and "scores present" is an exact count.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest

from tests.ingest_fixtures import (
    encode,
    photo_like,
    settings_from_env,
    stack_env,
    unique_name,
    worker_env,
    write_images,
)

REPO = Path(__file__).resolve().parent.parent

# Settings of every fault scenario (a scenario may override any of them).
FAST_RECOVERY_ENV = {
    # A dead process's assets are runnable again 3 s after its last renewal...
    "RAMDEX_INGEST__LEASE_S": "3",
    # ...and the reconciler looks for them every second.
    "RAMDEX_INGEST__RECONCILE_INTERVAL_S": "1",
    # A waiting client gives up (with a message) after a minute without progress.
    "RAMDEX_INGEST__STALL_TIMEOUT_S": "60",
    # Redis would hand a dead worker's message back only after 10 minutes: longer than any
    # scenario, so what brings work back in a test is the lease, not Redis.
    "RAMDEX_BROKER__VISIBILITY_TIMEOUT_S": "600",
    # Every score is stored: a done asset has exactly one row per tag of the model.
    "RAMDEX_INDEX__SCORE_FLOOR": "0",
}


# Worker test hook: each model batch sleeps this long after writing its token records and before
# its database commit, the most awkward moment to die, and a window wide enough to aim at.
PAUSE = {"RAMDEX_DEBUG_PAUSE_BEFORE_COMMIT_S": "0.2"}
BATCH = 4  # RAMDEX_BROKER__BATCH_SIZE and RAMDEX_MODEL__BATCH_SIZE of the stacks (stack_env)


def free_port() -> int:
    """A TCP port nobody listens on right now (on 127.0.0.1)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    predicate: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = ""
) -> Any:
    """Poll ``predicate`` until it returns something truthy (returned); TimeoutError after
    ``timeout`` seconds. Exceptions from the predicate count as "not yet"."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # a server mid-restart: try again
            last = exc
        if time.monotonic() > deadline:
            raise TimeoutError(f"not reached after {timeout} s: {what} (last error: {last})")
        time.sleep(interval)


# ------------------------------------------------------------------------------------------
# PostgreSQL and Redis servers owned by the test


def die_with_parent() -> None:
    """``preexec_fn``: the child is SIGKILLed when the test process dies, however it dies, so
    an interrupted test run leaves no worker, command or server behind (Linux ``prctl``)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _postgres_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    path = found[0] if found else shutil.which(name)
    if not path:
        pytest.skip(f"PostgreSQL's {name} is not installed")
    return path


def _as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run it as the ``postgres`` user then."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


class PgCluster:
    """A PostgreSQL cluster in a temporary folder, on its own port, stoppable at will."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="ramdex-faults-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self.root.chmod(0o700)
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = free_port()
        subprocess.run(
            _as_postgres(
                [_postgres_bin("initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust"]
                + ["-E", "UTF8", "--no-sync", "--no-instructions"]
            ),
            check=True,
            capture_output=True,
        )
        self._watchdog()

    def _watchdog(self) -> None:
        """A detached shell that stops the cluster and deletes its folder once the test process
        is gone (the server is a daemon: nothing else would stop it after a killed test run)."""
        pg_ctl = " ".join(_as_postgres([_postgres_bin("pg_ctl")]))
        script = (
            f"while kill -0 {os.getpid()} 2>/dev/null && [ -d {self.root} ]; do sleep 1; done; "
            f"[ -d {self.root} ] && {pg_ctl} -D {self.data} -m immediate stop >/dev/null 2>&1; "
            f"rm -rf {self.root}"
        )
        subprocess.Popen(
            ["sh", "-c", script],
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    @property
    def admin_dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        """SQLAlchemy URL of a database of this cluster."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        """Start the server (same port, same data) and wait until it accepts connections."""
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root}"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            " -c max_connections=300"
        )
        subprocess.run(
            _as_postgres(
                [_postgres_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log)]
                + ["-o", options, "-w", "-t", "60", "start"]
            ),
            check=True,
            capture_output=True,
        )
        wait_until(self.accepts_connections, 30, 0.1, "PostgreSQL accepting connections")

    def accepts_connections(self) -> bool:
        with psycopg.connect(self.admin_dsn, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
        return True

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self, mode: str = "fast") -> None:
        """Stop the server at once: ``fast`` (SIGINT: sessions terminated, clean shutdown) or
        ``immediate`` (SIGQUIT: like a crash). Returns when the postmaster has exited."""
        pid = self.postmaster_pid()
        if pid is None:
            return
        sig = {"fast": signal.SIGINT, "immediate": signal.SIGQUIT, "smart": signal.SIGTERM}[mode]
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        wait_until(lambda: not _alive(pid), 60, 0.02, "PostgreSQL stopped")
        # postmaster.pid is removed at the end of a clean shutdown; an immediate one leaves it.
        with contextlib.suppress(FileNotFoundError):
            if mode == "immediate":
                (self.data / "postmaster.pid").unlink()

    def create_database(self, prefix: str = "faults") -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        name = unique_name(prefix)
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("fast")
        shutil.rmtree(self.root, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) is dead for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


class RedisServer:
    """``redis-server`` on its own port, no RDB snapshots, no AOF: a restart starts empty."""

    def __init__(self) -> None:
        self.binary = shutil.which("redis-server")
        if not self.binary:
            pytest.skip("redis-server is not installed")
        self.root = Path(tempfile.mkdtemp(prefix="ramdex-faults-redis-"))
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--dir", str(self.root)]
        log = open(self.root / "redis.log", "ab")  # noqa: SIM115 - the server keeps writing
        self.process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent
        )
        log.close()
        wait_until(self.ping, 20, 0.05, "Redis answering PING")

    def ping(self) -> bool:
        import redis

        return bool(redis.Redis(port=self.port, socket_timeout=1).ping())

    def kill(self) -> None:
        """SIGKILL the server: every queued and unacknowledged message is gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def restart(self, down_s: float = 0.0) -> None:
        """Kill, stay down ``down_s`` seconds, start again empty on the same port."""
        self.kill()
        time.sleep(down_s)
        self.start()

    def flush(self) -> None:
        import redis

        redis.Redis(port=self.port).flushall()

    def destroy(self) -> None:
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """This session's own PostgreSQL cluster (a fault test may stop and start it)."""
    cluster = PgCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """This session's own Redis server (a fault test may restart it, losing everything)."""
    server = RedisServer()
    try:
        server.start()
        yield server
    finally:
        server.destroy()


# ------------------------------------------------------------------------------------------
# Processes: workers and ``ramdex ingest``


def ramdex_command() -> list[str]:
    """How to run the ``ramdex`` console script of this environment."""
    script = Path(sys.executable).with_name("ramdex")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from api.cli import main; main()"]


def children_of(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (Linux /proc)."""
    out: list[int] = []
    for task in glob.glob(f"/proc/{pid}/task/*/children"):
        with contextlib.suppress(OSError):
            out += [int(p) for p in Path(task).read_text().split()]
    return [p for p in out if _alive(p)]


@dataclass
class Worker:
    """A ``ramdex worker`` process in its own process group, logging to a file."""

    name: str
    process: subprocess.Popen
    log_path: Path
    host: str | None = None  # its own host name (``other_host``), else this machine's

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Until the worker consumes (Celery logs ``ready.``) and its pool child is up."""

        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"worker {self.name} exited:\n{self.log()[-3000:]}")
            return " ready." in self.log() and bool(children_of(self.pid))

        try:
            wait_until(ready, timeout, 0.1, f"worker {self.name} ready")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self.log()[-3000:]}") from None

    def tasks_in_hand(self) -> set[str]:
        """Ids of model tasks this worker received and has not finished (from its log)."""
        log = self.log()
        received = set(re.findall(r"process_assets\[([0-9a-f-]+)\] received", log))
        ended = set(
            re.findall(r"process_assets\[([0-9a-f-]+)\] (?:succeeded|retry|raised|ignored)", log)
        )
        return received - ended

    def kill_child(self) -> int:
        """SIGKILL the pool child (main process survives and forks a new one); returns its pid."""
        [child, *_] = wait_until(lambda: children_of(self.pid), 30, 0.05, "a pool child")
        os.kill(child, signal.SIGKILL)
        wait_until(lambda: not _alive(child), 10, 0.02, "child gone")
        return child

    def wait_new_child(self, old: int, timeout: float = 60.0) -> None:
        wait_until(
            lambda: [c for c in children_of(self.pid) if c != old], timeout, 0.1, "a new child"
        )

    def kill_main(self, whole_group: bool = False) -> None:
        """SIGKILL the main worker process (``whole_group``: its pool children too, as when the
        machine or container goes away)."""
        if self.process.poll() is None:
            if whole_group:
                os.killpg(self.process.pid, signal.SIGKILL)
            else:
                os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        """Teardown: SIGKILL the whole process group (orphaned pool children included)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)


@dataclass
class IngestRun:
    """One ``ramdex ingest ... --json`` subprocess."""

    process: subprocess.Popen
    stdout_path: Path
    stderr_path: Path
    started: float = field(default_factory=time.monotonic)

    def wait(self, timeout: float = 180.0) -> int:
        """Exit code; AssertionError (with the output) when it does not end in ``timeout``."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"ramdex ingest still running after {timeout} s\n{self.output()}"
            ) from None

    def running(self) -> bool:
        return self.process.poll() is None

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def output(self) -> str:
        return f"--- stdout\n{self.stdout()[-3000:]}\n--- stderr\n{self.stderr()[-3000:]}"

    def summary(self) -> dict[str, Any]:
        """The JSON summary the command printed (AssertionError when there is none)."""
        text = self.stdout()
        start = text.find("{")
        try:
            return json.loads(text[start:])
        except ValueError:
            raise AssertionError(f"no JSON summary\n{self.output()}") from None

    def kill(self) -> None:
        """SIGKILL the command and anything it started (decoder processes)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def interrupt(self) -> None:
        """What Ctrl-C does: SIGINT to the command's (foreground) process group."""
        os.killpg(self.process.pid, signal.SIGINT)


# ------------------------------------------------------------------------------------------
# One scenario's stack: a database, a home, queues, the processes


@dataclass
class ImageSet:
    """A synthetic folder: distinct JPEGs, one byte-identical copy, one truncated JPEG."""

    folder: Path
    files: list[Path]
    corrupt: Path
    copy: Path

    def digests(self) -> dict[str, list[Path]]:
        """sha256 -> the files with those bytes."""
        out: dict[str, list[Path]] = {}
        for path in self.files:
            out.setdefault(hashlib.sha256(path.read_bytes()).hexdigest(), []).append(path)
        return out

    @property
    def distinct(self) -> int:
        return len(self.digests())


def image_set(folder: Path, count: int, seed: int = 0) -> ImageSet:
    """``count`` distinct images plus a copy of the first (a duplicate) and a truncated JPEG
    (its signature passes registration; it fails in processing, with a reason)."""
    images = write_images(folder, count, start=10_000 + seed * 1_000)
    copy = folder / "copy_of_first.jpg"
    copy.write_bytes(images[0].read_bytes())
    corrupt = folder / "truncated.jpg"
    corrupt.write_bytes(encode(photo_like(96, 72, seed=900_000 + seed), "JPEG")[:400])
    return ImageSet(folder, [*images, copy, corrupt], corrupt, copy)


def _plain_dsn(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


class Probe:
    """Cheap progress readings by SQL on one persistent connection (reconnects after outages)."""

    def __init__(self, url: str) -> None:
        self.dsn = _plain_dsn(url)
        self.conn: psycopg.Connection | None = None

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        for attempt in (1, 2):  # a connection the server dropped in a restart: one new try
            if self.conn is None or self.conn.closed:
                self.conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=3)
            try:
                return self.conn.execute(sql, params).fetchall()
            except psycopg.OperationalError:
                with contextlib.suppress(Exception):
                    self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def statuses(self) -> Counter[str]:
        """Assets by status (empty before the schema exists)."""
        try:
            return Counter(dict(self._query("SELECT status, count(*) FROM assets GROUP BY 1")))
        except psycopg.errors.UndefinedTable:
            return Counter()

    def registered(self) -> int:
        return sum(self.statuses().values())

    def done(self) -> int:
        counts = self.statuses()
        return counts["done"] + counts["failed"]

    def ids_with_status(self, status: str) -> list[int]:
        return [r[0] for r in self._query("SELECT id FROM assets WHERE status = %s", (status,))]

    def held_by(self, host: str | None) -> list[int]:
        """Unfinished assets whose processing lease a process of ``host`` holds (lease owners
        are ``host|...``); without lease columns, every asset being processed."""
        if host is None:
            return self.ids_with_status("processing")
        try:
            rows = self._query(
                "SELECT id, lease_owner FROM assets WHERE status = 'processing' "
                "OR (status = 'pending' AND lease_owner LIKE %s)",
                (host + "|%",),
            )
        except psycopg.errors.UndefinedColumn:
            return self.ids_with_status("processing")
        if any(owner is None for _, owner in rows):  # a version that records no leases
            return [i for i, _ in rows]
        return [i for i, owner in rows if owner.startswith(host + "|")]

    def jobs(self) -> list[dict[str, Any]]:
        try:
            rows = self._query(
                "SELECT id, kind, status, total, done, failed, error FROM jobs ORDER BY id"
            )
        except psycopg.errors.UndefinedTable:
            return []
        keys = ("id", "kind", "status", "total", "done", "failed", "error")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()


class FaultStack:
    """A scenario's own database (in the session cluster), home folder, queues and processes.

    Args:
        broker: whether ``ramdex`` runs with the Redis broker (workers) or embedded.
        overrides: ``RAMDEX_*`` variables on top of :data:`FAST_RECOVERY_ENV`.
    """

    def __init__(
        self,
        root: Path,
        pg: PgCluster,
        redis: RedisServer | None,
        overrides: dict[str, str] | None = None,
    ) -> None:
        self.root = root
        self.pg = pg
        self.redis = redis
        self.db_url = pg.create_database()
        broker_url = redis.url() if redis is not None else ""
        base = stack_env(root / "home", self.db_url, broker_url, unique_name("rdxfault"))
        base.update(FAST_RECOVERY_ENV)
        base.update(overrides or {})
        self.env = worker_env(base)
        self.settings = settings_from_env(self.env)
        self.workers: list[Worker] = []
        self.runs: list[IngestRun] = []
        self.servers: list[tuple[subprocess.Popen, Path]] = []
        self.probe = Probe(self.db_url)

    @property
    def queues(self) -> str:
        return f"{self.settings.broker.model_queue},{self.settings.broker.default_queue}"

    def start_worker(
        self, name: str = "w", ready: bool = True, other_host: bool = False, **extra_env: str
    ) -> Worker:
        """A ``ramdex worker`` (prefork, one pool child) on the model and default queues.

        Args:
            other_host: run it under its own host name (a UTS namespace, root only), as on
                another machine: nobody here can then tell from its pid that it died, only its
                lease running out says so.
        """
        name = unique_name(name)
        host = f"faulthost-{name[-8:]}"
        log_path = self.root / f"{name}.log"
        command = [*ramdex_command(), "worker", "--queues", self.queues, "--concurrency", "1"]
        command += ["--loglevel", "info", "--hostname", f"{name}@%h"]
        if other_host:
            if os.geteuid() != 0 or not shutil.which("unshare"):
                pytest.skip("a worker 'on another host' needs root and unshare")
            command = ["unshare", "--uts", "sh", "-c", f'hostname {host} && exec "$@"', "sh"]
            command += [*ramdex_command(), "worker", "--queues", self.queues]
            command += ["--concurrency", "1", "--loglevel", "info", "--hostname", f"{name}@%h"]
        with open(log_path, "ab") as log:  # the worker keeps its own copy of the descriptor
            process = self._spawn(command, log, subprocess.STDOUT, extra_env)
        worker = Worker(name, process, log_path, host if other_host else None)
        self.workers.append(worker)
        if ready:
            worker.wait_ready()
        return worker

    def _spawn(self, command: list[str], stdout, stderr, extra_env: dict[str, str]):  # noqa: ANN001
        """Start a ``ramdex`` process of this stack: its own process group (a kill reaches its
        helpers), dying with the test process, in the stack's folder and environment."""
        return subprocess.Popen(
            command,
            env={**self.env, **extra_env},
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
            preexec_fn=die_with_parent,
            cwd=str(self.root),
        )

    def ingest(self, sources: Sequence[Path | str], *args: str, **extra_env: str) -> IngestRun:
        """Start ``ramdex ingest SOURCES ARGS --json`` (returns at once)."""
        n = len(self.runs)
        out, err = self.root / f"ingest-{n}.out", self.root / f"ingest-{n}.err"
        command = [*ramdex_command(), "ingest", *map(str, sources), *args, "--json"]
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            process = self._spawn(command, stdout, stderr, extra_env)
        run = IngestRun(process, out, err)
        self.runs.append(run)
        return run

    def serve(self, **extra_env: str) -> tuple[subprocess.Popen, int]:
        """Start ``ramdex serve`` on a free port (returns at once) and return it and its port;
        it stops with the test."""
        port = free_port()
        log_path = self.root / f"serve-{port}.log"
        command = [*ramdex_command(), "serve", "--host", "127.0.0.1", "--port", str(port)]
        with open(log_path, "ab") as log:  # the server keeps its own copy of the descriptor
            process = self._spawn(command, log, subprocess.STDOUT, extra_env)
        self.servers.append((process, log_path))
        return process, port

    def logs(self) -> str:
        """Tails of every worker log and ingest output (for assertion messages)."""
        parts = [f"=== worker {w.name}\n{w.log()[-2500:]}" for w in self.workers]
        parts += [f"=== server\n{p.read_text(errors='replace')[-2500:]}" for _, p in self.servers]
        parts += [f"=== ingest {i}\n{r.output()}" for i, r in enumerate(self.runs)]
        return "\n".join(parts)

    def close(self) -> None:
        for run in self.runs:
            if run.running():
                run.kill()
        for worker in self.workers:
            worker.stop()
        for server, _ in self.servers:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(server.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.wait(10)
        self.probe.close()
        from indexer.db.session import dispose_engines

        dispose_engines()


@pytest.fixture()
def make_stack(
    tmp_path: Path, pg_cluster: PgCluster, redis_server: RedisServer
) -> Iterator[Callable[..., FaultStack]]:
    """Factory of :class:`FaultStack`; ``make_stack(broker=False)`` for the embedded mode.
    Stops every process it started at the end of the test."""
    stacks: list[FaultStack] = []

    def make(broker: bool = True, **overrides: str) -> FaultStack:
        if broker:
            if redis_server.process is None or redis_server.process.poll() is not None:
                redis_server.start()  # a previous test left it down
            redis_server.flush()
        if not _pg_up(pg_cluster):
            pg_cluster.start()
        stack = FaultStack(
            tmp_path / f"stack{len(stacks)}", pg_cluster, redis_server if broker else None,
            overrides,
        )  # fmt: skip
        stack.root.mkdir(parents=True, exist_ok=True)
        stacks.append(stack)
        return stack

    try:
        yield make
    finally:
        for stack in stacks:
            stack.close()
        if not _pg_up(pg_cluster):
            pg_cluster.start()  # the next test needs it


def _pg_up(cluster: PgCluster) -> bool:
    try:
        return cluster.accepts_connections()
    except psycopg.Error:
        return False


# ------------------------------------------------------------------------------------------
# The invariant


@dataclass
class EndState:
    """What :func:`check_invariants` found (for reports and scenario-specific assertions)."""

    assets: int
    done: int
    failed: int
    jobs: list[dict[str, Any]]
    settle_s: float = 0.0


def _model_id(stack: FaultStack) -> str:
    from indexer.models import configured_model_id

    return configured_model_id(stack.settings)


def _num_tags(stack: FaultStack) -> int:
    from ram_pp.config import get_config

    return int(get_config(stack.settings.model.name).labels.num_tags)


def _quiet(stack: FaultStack, model_id: str) -> bool:
    """Nothing left to do: no unfinished asset or job, and the FAISS index holds every done
    asset (in broker mode the index is synced by a task after jobs end, or by the reconciler)."""
    from indexer.faiss_index import index_path, read_meta

    counts = stack.probe.statuses()
    if counts["pending"] or counts["processing"]:
        return False
    if any(j["status"] in ("pending", "running") for j in stack.probe.jobs()):
        return False
    if not counts["done"]:
        return True
    path = index_path(stack.settings.index_dir, model_id)
    return path.exists() and read_meta(path).count == counts["done"]


def check_invariants(
    stack: FaultStack, images: ImageSet | Sequence[ImageSet], settle_timeout: float = 90.0
) -> EndState:
    """Wait (only wait: no command is run) until the stack is quiet, then assert the end state
    every fault must lead to:

    - every distinct file is exactly one asset, each of its paths one source of that asset;
    - every asset is ``done`` or ``failed`` with a reason; only the corrupt files failed;
    - scores (one per model tag), embedding, token-store record and FAISS entry exist exactly
      for done assets, each once;
    - every job ended truthfully: ``done`` with done + failed = total (and its ledger of assets,
      when there is one, credited and agreeing with the assets' states) or ``failed`` with a
      reason; no job ``pending`` or ``running``;
    - no manual command: no ``reindex`` job was ever created.
    """
    sets = [images] if isinstance(images, ImageSet) else list(images)
    model_id = _model_id(stack)
    started = time.monotonic()
    try:
        wait_until(lambda: _quiet(stack, model_id), settle_timeout, 0.25, "a quiet stack")
        quiet = True
    except TimeoutError:
        quiet = False  # the checks below say what is wrong
    settle_s = time.monotonic() - started
    try:
        end = _assert_end_state(stack, sets, model_id)
        assert quiet, "the stack never settled"  # (the checks above should have said why)
    except AssertionError as exc:
        state = f"assets: {dict(stack.probe.statuses())}\njobs: {stack.probe.jobs()}"
        raise AssertionError(
            f"{exc}\n(after waiting {settle_s:.0f} s)\n{state}\n{stack.logs()}"
        ) from None
    end.settle_s = settle_s
    return end


def _assert_end_state(stack: FaultStack, sets: list[ImageSet], model_id: str) -> EndState:
    import sqlalchemy as sa

    from indexer.faiss_index import VectorIndex, index_path
    from indexer.stores import token_store_path
    from indexer.token_store import TokenStore

    digests: dict[str, list[Path]] = {}
    corrupt: set[str] = set()
    for s in sets:
        for digest, paths in s.digests().items():
            digests.setdefault(digest, []).extend(paths)
        corrupt.add(hashlib.sha256(s.corrupt.read_bytes()).hexdigest())

    engine = sa.create_engine(stack.db_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            assets = conn.execute(
                sa.text(
                    "SELECT id, sha256, status, error, embedding, embedding_dim, token_shard "
                    "FROM assets"
                )
            ).all()
            sources = conn.execute(sa.text("SELECT asset_id, uri FROM asset_sources")).all()
            scores = dict(
                conn.execute(
                    sa.text("SELECT asset_id, count(*) FROM asset_tags GROUP BY asset_id")
                ).all()
            )
            duplicate_scores = conn.execute(
                sa.text(
                    "SELECT count(*) FROM (SELECT asset_id, tag_id FROM asset_tags "
                    "GROUP BY 1, 2 HAVING count(*) > 1) AS d"
                )
            ).scalar_one()
            jobs = [
                dict(r._mapping)
                for r in conn.execute(
                    sa.text("SELECT id, kind, status, total, done, failed, error FROM jobs")
                )
            ]
            ledger = None
            if sa.inspect(conn).has_table("job_assets"):
                ledger = conn.execute(
                    sa.text(
                        "SELECT l.job_id, l.asset_id, l.outcome, a.status FROM job_assets l "
                        "JOIN assets a ON a.id = l.asset_id"
                    )
                ).all()
    finally:
        engine.dispose()

    # Every distinct file is exactly one asset; every path is one source of it.
    by_sha = {row.sha256: row for row in assets}
    assert len(by_sha) == len(assets)
    assert set(by_sha) == set(digests), (
        f"files without an asset: {[digests[d] for d in set(digests) - set(by_sha)]}; "
        f"assets without a file: {len(set(by_sha) - set(digests))}"
    )
    uris = Counter((row.asset_id, row.uri) for row in sources)
    for digest, paths in digests.items():
        for path in paths:
            assert uris[(by_sha[digest].id, str(path.resolve()))] == 1, (path, digest)

    # Every asset done, or failed with a reason; only the corrupt files failed.
    for row in assets:
        assert row.status in ("done", "failed"), (row.id, row.status)
        assert (row.status == "failed") == bool(row.error), (row.id, row.status, row.error)
        expected = "failed" if row.sha256 in corrupt else "done"
        assert row.status == expected, (row.id, row.status, row.error, stack.logs())
    done = {int(r.id) for r in assets if r.status == "done"}

    # Scores, embedding, token record and index entry exactly for done assets.
    tags = _num_tags(stack)
    assert duplicate_scores == 0
    for row in assets:
        if row.id in done:
            assert scores.get(row.id) == tags, (row.id, scores.get(row.id), tags)
            assert row.embedding is not None and row.embedding_dim
            assert len(row.embedding) == 4 * row.embedding_dim
            assert row.token_shard is not None, row.id
        else:
            assert row.id not in scores, row.id
            assert row.embedding is None and row.token_shard is None, row.id
    if done:
        store = TokenStore(token_store_path(stack.settings, model_id), read_only=True)
        stored = store.ids().tolist()
        assert len(stored) == len(set(stored)), "an asset's tokens are stored twice"
        assert set(stored) == done, (
            f"token store: {len(done - set(stored))} done assets missing, "
            f"{len(set(stored) - done)} records of assets not done"
        )
        path = index_path(stack.settings.index_dir, model_id)
        assert path.exists(), f"no FAISS index at {path}"
        indexed = VectorIndex.load(path).ids()
        assert len(np.unique(indexed)) == len(indexed)
        assert set(indexed.tolist()) == done, (
            f"FAISS index: {len(done - set(indexed.tolist()))} done assets missing, "
            f"{len(set(indexed.tolist()) - done)} entries of assets not done"
        )

    # Jobs tell the truth; nothing manual was run.
    for job in jobs:
        assert job["kind"] != "reindex", f"a manual reindex ran: {job}"
        assert job["status"] in ("done", "failed"), job
        if job["status"] == "failed":
            assert job["error"], job
        else:
            assert job["done"] + job["failed"] == job["total"], job
    if ledger is not None:
        for job_id, asset_id, outcome, status in ledger:
            assert outcome == status, (job_id, asset_id, outcome, status)
        for job in jobs:
            outcomes = Counter(r.outcome for r in ledger if r.job_id == job["id"])
            if job["status"] == "done":
                assert job["done"] == outcomes["done"], (job, outcomes)
                # Registration failures (no asset) count as failed too.
                assert job["failed"] >= outcomes["failed"], (job, outcomes)
    return EndState(
        assets=len(assets),
        done=len(done),
        failed=len(assets) - len(done),
        jobs=jobs,
    )


_TASK_RESULT = re.compile(
    r"process_assets\[[0-9a-f-]+\] succeeded in [0-9.]+s: "
    r"\{'done': (\d+), 'failed': (\d+), 'skipped': (\d+), 'split': \d+\}"
)


def assert_each_asset_processed_once(stack: FaultStack) -> tuple[int, int]:
    """No asset was processed twice, however many messages named it (for scenarios without a
    crash): every finished asset started exactly one processing run (``attempts``), and the
    workers' task results add up to one outcome per asset; the rest of the messages' ids were
    skipped (already done, or in another worker's hands).

    Returns:
        ``(model tasks that succeeded, ids they skipped)``.
    """
    rows = stack.probe._query("SELECT id, status, attempts FROM assets")
    again = [(i, status, n) for i, status, n in rows if n != 1]
    assert not again, f"assets whose processing started more than once (or never): {again}"
    results = [tuple(map(int, m)) for w in stack.workers for m in _TASK_RESULT.findall(w.log())]
    ended = sum(done + failed for done, failed, _ in results)
    assert ended == len(rows), f"task results count {ended} outcomes for {len(rows)} assets"
    return len(results), sum(skipped for *_, skipped in results)


def report(name: str, **numbers: Any) -> None:
    """Print a scenario's measurements and append them to test-output/faults.jsonl."""
    line = json.dumps({"scenario": name, **numbers}, default=str)
    print(line)
    out = REPO / "test-output"
    with contextlib.suppress(OSError):
        out.mkdir(exist_ok=True)
        with open(out / "faults.jsonl", "a") as handle:
            handle.write(line + "\n")
