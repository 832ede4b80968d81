"""Thread policy per process (indexer/threads.py): each command sets its row before torch loads."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from api.cli import app
from indexer import threads


def _fresh(code: str, **env: str) -> str:
    """stdout of ``code`` run by a fresh interpreter (torch not loaded yet) without OMP_*."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("OMP_")}
    out = subprocess.run(
        [sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_module_does_not_load_torch():
    assert _fresh("import sys, indexer.threads; print('torch' in sys.modules)") == "False"


@pytest.mark.parametrize(
    ("workload", "expected"),
    [("tag", "ACTIVE"), ("ingest", "PASSIVE"), ("worker", "PASSIVE"), ("serve", "PASSIVE")],
)
def test_policy_reaches_openmp_before_torch(workload, expected):
    code = (
        "import os; from indexer.threads import apply_policy; "
        f"apply_policy({workload!r}); import torch; "
        "print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('OMP_NUM_THREADS'), "
        "torch.get_num_threads())"
    )
    wait, env_threads, torch_threads = _fresh(code).split()
    assert wait == expected
    if workload == "serve":  # scoring on every core, in every uvicorn worker process
        assert env_threads == str(os.cpu_count()) and torch_threads == str(os.cpu_count())
    else:
        assert env_threads == "None"


def test_operator_settings_win():
    code = (
        "import os; from indexer.threads import apply_policy; apply_policy('tag'); "
        "print(os.environ['OMP_WAIT_POLICY'])"
    )
    assert _fresh(code, OMP_WAIT_POLICY="PASSIVE") == "PASSIVE"


def test_nothing_changes_once_torch_is_loaded():
    code = (
        "import os, torch; from indexer.threads import apply_policy; apply_policy('serve'); "
        "print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('OMP_NUM_THREADS'))"
    )
    assert _fresh(code) == "None None"


def test_celery_app_applies_the_worker_row():
    code = "import os, indexer.celery_app; print(os.environ.get('OMP_WAIT_POLICY'))"
    assert _fresh(code) == "PASSIVE"


@pytest.mark.parametrize(
    ("argv", "workload"),
    [
        (["tag", "missing.jpg"], "tag"),
        (["ingest", "missing.jpg"], "ingest"),
        (["reindex"], "ingest"),
        (["worker"], "worker"),
        (["serve"], "serve"),
        (["demo"], "ingest"),
    ],
)
def test_each_command_applies_its_row_first(monkeypatch, argv, workload):
    """The policy is the command's first act (stopped there, before anything else runs)."""
    seen: list[str] = []

    def stop(name: str) -> threads.ThreadPolicy:
        seen.append(name)
        raise typer.Exit(99)

    monkeypatch.setattr(threads, "policy_for", stop)
    result = CliRunner().invoke(app, argv)
    assert seen == [workload] and result.exit_code == 99, result.output
