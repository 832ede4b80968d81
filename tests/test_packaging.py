"""Install as a user installs: declared dependencies; the README's main command on a clean clone.

1. deptry ([tool.deptry] in pyproject.toml) finds no import in ram_pp, indexer or api of a module
   that is undeclared (DEP001), only transitive (DEP003) or a dev tool (DEP004); two tests prove the
   check bites (a fixture package with an undeclared import, and ramdex's own pyproject without
   urllib3, the case a new user once met).
2. ``bash scripts/demo.sh --images 50`` runs on a fresh ``git clone`` of HEAD (no shared/ beside it)
   in a virtual environment created from scratch with the runtime dependencies only, as the README
   tells a new user to. It is part of every run of the suite (CI included) and is never skipped:
   the clone, the install (a few minutes; torch from the pip cache or a local index) and the demo
   are what a person meets first. It tests what is committed, not uncommitted edits.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _deptry(root: Path, *args: str) -> list[dict]:
    """Run deptry on ``root`` (from ``root``) as a subprocess and return its JSON violations."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "deptry.json"
        proc = subprocess.run(
            [sys.executable, "-m", "deptry", ".", "--json-output", str(out), *args],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.is_file(), f"deptry wrote no report:\n{proc.stdout}\n{proc.stderr}"
        violations = json.loads(out.read_text())
    # deptry exits 1 exactly when it found something: the report and the exit code agree.
    assert proc.returncode == (1 if violations else 0), proc.stdout + proc.stderr
    return violations


def _summary(violations: list[dict]) -> str:
    return "\n".join(
        f"{v['location']['file']}:{v['location']['line']}: {v['error']['code']} "
        f"{v['error']['message']}"
        for v in violations
    )


def test_every_imported_third_party_module_is_a_declared_dependency() -> None:
    violations = _deptry(REPO)
    assert violations == [], (
        "declare these in pyproject.toml [project] dependencies (or fix [tool.deptry]):\n"
        + _summary(violations)
    )


def test_dependency_check_reports_an_undeclared_import(tmp_path: Path) -> None:
    """A package importing a module that nothing declares or installs gets DEP001; a declared one
    passes, so the check does not merely fail on everything."""
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "fixture"\nversion = "0"\ndependencies = ["numpy"]\n'
        '[tool.deptry]\nknown_first_party = ["fixture"]\n'
    )
    package = tmp_path / "fixture"
    package.mkdir()
    (package / "__init__.py").write_text(
        "import numpy\nimport ramdex_fixture_not_installed_anywhere\n"
    )
    codes = {(v["module"], v["error"]["code"]) for v in _deptry(tmp_path)}
    assert codes == {("ramdex_fixture_not_installed_anywhere", "DEP001")}


def test_dependency_check_reports_urllib3_when_it_is_only_transitive(tmp_path: Path) -> None:
    """ramdex's own configuration with urllib3 left out of the dependencies: deptry names
    indexer/fetch.py (urllib3 is installed, through other packages, so only DEP003 can catch it)."""
    text = (REPO / "pyproject.toml").read_text()
    without, removed = re.subn(r'^\s*"urllib3[^"]*",\n', "", text, flags=re.MULTILINE)
    assert removed == 1, "pyproject.toml should declare urllib3 on a line of its own"
    config = tmp_path / "pyproject.toml"
    config.write_text(without)
    violations = _deptry(REPO, "--config", str(config))
    found = {(v["module"], v["error"]["code"], v["location"]["file"]) for v in violations}
    assert ("urllib3", "DEP003", "indexer/fetch.py") in found, _summary(violations)
    assert {v["module"] for v in violations} == {"urllib3"}, _summary(violations)


def _user_environment(venv: Path) -> dict[str, str]:
    """This process's environment without the test venv and without RAMDEX_* settings: what a
    person's shell has before the first `bash scripts/demo.sh`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("RAMDEX_")
        and k not in {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTEST_CURRENT_TEST"}
    }
    ours = {str(Path(sys.prefix) / "bin"), str(REPO / ".venv" / "bin")}
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if p and p not in ours
    )
    env["RAMDEX_VENV"] = str(venv)
    return env


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_readme_demo_runs_on_a_clean_clone_with_runtime_dependencies_only(tmp_path: Path) -> None:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.fail("needs git and a git checkout: this test clones HEAD as a new user would")
    clone, venv = tmp_path / "clone", tmp_path / "venv"
    started = time.monotonic()
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True, timeout=300)
    assert not (tmp_path / "shared").exists()
    try:
        proc = subprocess.run(
            ["bash", "scripts/demo.sh", "--images", "50"],
            cwd=clone,
            env=_user_environment(venv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=1700,
        )
        elapsed = time.monotonic() - started
        print(f"clean clone + runtime-only venv + demo: {elapsed:.0f} s")
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"bash scripts/demo.sh --images 50 failed:\n{output[-6000:]}"
        # The argument reached `ramdex demo` (it once became the name of a pip extra).
        assert re.search(r"done 50\b.*failed 0", proc.stdout), output[-6000:]
        assert "Open-set search" in proc.stdout, output[-6000:]
        # Runtime dependencies only: none of the dev tools came along.
        probe = subprocess.run(
            [
                str(venv / "bin" / "python"),
                "-c",
                "import importlib.util as u; "
                "print([m for m in ('pytest', 'deptry', 'hypothesis', 'ruff') if u.find_spec(m)])",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        assert probe.stdout.strip() == "[]", probe.stdout
    finally:
        # About 6 GB (torch and its CUDA libraries): do not leave it for pytest's tmp retention.
        shutil.rmtree(venv, ignore_errors=True)
