"""Thread policy per process: how torch's OpenMP threads wait and how many run, per workload.

OpenMP reads ``OMP_WAIT_POLICY`` once, when torch loads its runtime, so each entry point calls
:func:`apply_policy` first thing, before anything imports torch (this module never imports
torch). A variable the operator set wins: the policy only fills in what is unset.

Why each row (measured on the 2-core CPU of docs/model.md, "Thread policy"):

- ``tag``: the model is the only heavy work (two decoding threads read ahead, a small fraction
  of a forward pass). OpenMP threads that sleep between parallel regions (PASSIVE) cost the
  model about 15% (hundreds of small regions per Swin-L forward, each waking the team), so
  they spin (ACTIVE).
- ``ingest`` (embedded) and ``worker`` (Celery): decoding, thumbnails, hashing and database
  writes run in threads beside the model; spinning OpenMP threads take the cores from them
  (the tiny model ran 3-6x slower), so idle OpenMP threads sleep (PASSIVE).
- ``serve``: request handlers, the event loop and the database driver share the cores with
  search scoring; scoring uses every core (intra-op threads = cores) and its idle threads
  sleep (PASSIVE), so a request waiting for I/O never competes with spinning threads.
- ``default`` (other commands: search, concepts, train): torch's own behaviour.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

WAIT_ENV = "OMP_WAIT_POLICY"
THREADS_ENV = "OMP_NUM_THREADS"


@dataclass(frozen=True)
class ThreadPolicy:
    """How a process's torch threads behave.

    Attributes:
        workload: the row's name.
        wait_policy: ``ACTIVE`` (spin between parallel regions), ``PASSIVE`` (sleep) or None
            (OpenMP's default: spin briefly, then sleep).
        all_cores: set ``OMP_NUM_THREADS`` to the core count, so that every process the
            command starts (uvicorn's workers too) runs torch and FAISS on all cores whatever
            a library or parent chose.
    """

    workload: str
    wait_policy: str | None
    all_cores: bool = False


POLICIES: dict[str, ThreadPolicy] = {
    "tag": ThreadPolicy("tag", "ACTIVE"),
    "ingest": ThreadPolicy("ingest", "PASSIVE"),
    "worker": ThreadPolicy("worker", "PASSIVE"),
    "serve": ThreadPolicy("serve", "PASSIVE", all_cores=True),
    "default": ThreadPolicy("default", None),
}


def policy_for(workload: str) -> ThreadPolicy:
    """The policy of ``workload`` (a key of :data:`POLICIES`).

    Raises:
        KeyError: an unknown workload (a programming error: entry points name their row).
    """
    return POLICIES[workload]


def apply_policy(workload: str) -> ThreadPolicy:
    """Set the environment for ``workload`` before torch loads; returns the policy.

    Variables already set (by the operator) are kept. When torch is already imported (a
    Python caller, the test suite), OpenMP has read its environment: nothing is changed, so
    the environment never claims a policy the process does not run.
    """
    policy = policy_for(workload)
    if "torch" in sys.modules:
        return policy
    if policy.wait_policy:
        os.environ.setdefault(WAIT_ENV, policy.wait_policy)
    if policy.all_cores:
        os.environ.setdefault(THREADS_ENV, str(os.cpu_count() or 1))
    return policy
