"""The demo's last lines tell a new user commands that work as printed (issue: `ramdex serve` was
suggested while `ramdex` is not on PATH after `scripts/demo.sh`)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from api.cli import demo


def _commands(text: str) -> list[list[str]]:
    """The indented command lines of the next-steps text, without their trailing comments."""
    lines = [line.split("#")[0].strip() for line in text.splitlines() if line.startswith("  ")]
    return [shlex.split(line) for line in lines if line]


def test_next_steps_name_a_runnable_program_when_it_is_not_on_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # the venv's bin folder is not on PATH
    text = demo._next_steps(tmp_path / "home")
    commands = _commands(text)
    assert commands[0] == ["export", f"RAMDEX_HOME={tmp_path / 'home'}"]
    program = commands[1][0]
    assert program != "ramdex"
    assert Path(program).resolve() == (Path(sys.executable).parent / "ramdex").resolve()
    # It runs as printed, with the arguments printed (help only: nothing is created).
    done = subprocess.run(
        [program, *commands[1][1:3], "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "--scope" in done.stdout
    assert commands[2][0] == program and commands[2][1] == "serve"


def test_next_steps_say_plain_ramdex_when_it_is_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}/usr/bin:/bin")
    commands = _commands(demo._next_steps(Path("/tmp/h")))
    assert commands[1][0] == "ramdex" and commands[2] == ["ramdex", "serve"]
