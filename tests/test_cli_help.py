"""Every ``--help`` screen shows types and defaults in click's notation (issue 10, section 5).

Not Python annotations (``<bool>`` after flags, ``<list[Path]>``, ``<str>``) and not typer's
``{inputs}...`` in the usage line; ``serve --help`` states the default host and port.
"""

from __future__ import annotations

import re

import pytest
import typer.main
from typer.testing import CliRunner

from api.cli import app
from indexer.settings import ApiSettings
from tests.cli_support import assert_first_line_error, run_ramdex

ANNOTATION = re.compile(r"<(bool|str|int|float|path|file|directory|[a-z]+ range|list\[[^>]*\])>")


def _command_paths() -> list[list[str]]:
    paths: list[list[str]] = [[]]
    pending = [([], typer.main.get_command(app))]
    while pending:
        prefix, group = pending.pop()
        for name, command in getattr(group, "commands", {}).items():
            paths.append([*prefix, name])
            if getattr(command, "commands", None):
                pending.append(([*prefix, name], command))
    return sorted(paths)


def _help(path: list[str]) -> str:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("path", _command_paths(), ids=lambda p: " ".join(p) or "ramdex")
def test_help_uses_click_notation(path: list[str]) -> None:
    text = _help(path)
    assert not ANNOTATION.search(text), ANNOTATION.search(text)
    usage = next(line for line in text.splitlines() if "Usage:" in line)
    assert "{" not in usage, usage
    # Arguments are upper case in the usage line, as in click: INPUTS..., [JOB_ID].
    words = usage.split("Usage:", 1)[1].split()
    for word in words[len(path) + 1 :]:
        if word not in ("[OPTIONS]", "COMMAND", "[ARGS]..."):
            assert word.strip("[].") == word.strip("[].").upper(), usage


def test_flags_show_no_type_and_values_show_theirs() -> None:
    text = _help(["tag"])
    rows = {line.split()[1]: line for line in text.splitlines() if line.startswith("│ --")}
    assert "BOOLEAN" not in rows["--all-scores"] and "bool" not in rows["--all-scores"]
    assert " PATH " in rows["--checkpoint"] and " FLOAT " in rows["--threshold"]
    assert "[en|zh|both]" in rows["--lang"]
    assert "Usage: ramdex tag [OPTIONS] INPUTS..." in text


def test_serve_help_states_default_host_and_port() -> None:
    text = " ".join(_help(["serve"]).split())
    for field in ("host", "port"):
        default = ApiSettings.model_fields[field].default
        assert f"RAMDEX_API__{field.upper()}, else {default}" in text, text


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["search", "--limit", "0", "blue"], ["--limit", "greater than or equal to 1"]),
        (["search", "--bogus"], ["No such option: --bogus"]),
        (["bogus"], ["No such command 'bogus'"]),
        (["review", "queue"], ["Missing argument"]),
    ],
)
def test_usage_errors_print_as_one_error_and_one_hint(args: list[str], words: list[str]) -> None:
    """Out-of-range values, unknown options and commands: the house format, not a boxed panel."""
    code, out = run_ramdex(*args)
    assert_first_line_error(code, out, *words)
    assert "╭" not in out and "hint: `ramdex" in out
