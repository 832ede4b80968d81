"""Running ``ramdex`` in the test process as a person types it (typer's CliRunner through the
root group and its error handler, as the console script), and the house error format."""

from __future__ import annotations

from typer.testing import CliRunner

from api.cli import app
from indexer.settings import get_settings


def run_ramdex(*args: str, stdin: str | None = None) -> tuple[int, str]:
    """Run ``ramdex ARGS`` in this process with settings read afresh from the environment:
    (exit code, stdout and stderr). An unexplained exception is a bug: CliRunner keeps it
    instead of printing a traceback, so it fails the test here."""
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, list(args), input=stdin)
    finally:
        get_settings.cache_clear()
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{type(result.exception).__name__}: {result.exception}\n{result.output}"
    )
    return result.exit_code, result.output


def assert_first_line_error(code: int, out: str, *words: str) -> None:
    """Exit 2 with one ``error:`` line first and at most a ``hint:`` line, no traceback; each
    of ``words`` in the error line."""
    lines = [line for line in out.splitlines() if line.strip()]
    assert code == 2 and lines[0].startswith("error: ") and len(lines) <= 2, out
    assert "Traceback" not in out
    for word in words:
        assert word in lines[0], out
