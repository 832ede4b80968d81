"""The one place where ``ramdex`` turns failures a person can fix into one or two lines.

Every command runs inside :func:`handle` (wired in ``api/cli/__init__.py``), so no command needs
its own try/except. :func:`explain` maps what the layers below raise onto
:class:`~indexer.errors.RamdexError`:

- invalid settings (pydantic validation of ``indexer.settings.Settings``) -> the variable's name,
  for example ``RAMDEX_API__PORT='abc': Input should be a valid integer``;
- a database that does not answer or cannot be used -> ``RAMDEX_DATABASE__URL`` (or ``--url``);
- a broker that does not answer -> ``RAMDEX_BROKER__URL``;
- a device that is not on this machine -> ``--device`` or ``RAMDEX_MODEL__DEVICE``;
- a missing or unreadable checkpoint, a model that is not here -> ``--checkpoint`` or
  ``RAMDEX_MODEL__CHECKPOINT`` / ``RAMDEX_MODEL__NAME``.

An option is named when the person gave it on the command line, the setting otherwise. Anything
else is a bug and keeps its traceback; ``--debug`` (or ``RAMDEX_DEBUG=1``) shows the traceback of
the explained errors too.
"""

from __future__ import annotations

import json
import os
import re
import sys
import traceback
from typing import Any

import typer

from indexer.errors import RamdexError

DEBUG_ENV = "RAMDEX_DEBUG"
_SECRET_FIELDS = ("key", "password", "secret", "token")


def env_name(loc: tuple[Any, ...]) -> str:
    """The environment variable of a settings field: ``("api", "port")`` -> ``RAMDEX_API__PORT``."""
    parts: list[str] = []
    for part in loc:
        if not isinstance(part, str):
            break  # a list index: the variable holds the whole list
        parts.append(part.upper())
    return "RAMDEX_" + "__".join(parts)


def hide_password(url: str) -> str:
    """``scheme://user:secret@host`` -> ``scheme://user:***@host`` (for messages)."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)  # SQLAlchemy wraps the driver's error
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _given(ctx: Any, param: str) -> bool:
    """Whether the command's option ``param`` was given on the command line (or its envvar)."""
    if ctx is None or param not in ctx.params:
        return False
    source = ctx.get_parameter_source(param)
    return getattr(source, "name", "") in ("COMMANDLINE", "ENVIRONMENT")


def _name(ctx: Any, param: str | None, setting: str) -> str:
    return f"--{param.replace('_', '-')}" if param and _given(ctx, param) else setting


def _configured(read: Any, default: str = "") -> str:
    """A settings value for a message; never fails (the settings may be what is broken)."""
    try:
        from indexer.settings import get_settings

        return str(read(get_settings()) or default)
    except Exception:
        return default


def _settings_errors(exc: Any) -> RamdexError:
    problems = []
    for error in exc.errors(include_url=False)[:3]:
        name = env_name(tuple(error.get("loc", ())))
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        value = error.get("input")
        if isinstance(value, (str, int, float)) and not any(
            word in name.lower() for word in _SECRET_FIELDS
        ):
            shown = hide_password(str(value)) if isinstance(value, str) else value
            problems.append(f"{name}={shown!r}: {message}")
        else:
            problems.append(f"{name}: {message}")
    more = exc.error_count() - len(problems)
    if more > 0:
        problems.append(f"and {more} more")
    return RamdexError(
        "invalid setting " + "; ".join(problems),
        hint="fix or unset it (in the environment or the .env file)",
    )


def _settings_parse_error(exc: Exception) -> RamdexError:
    """pydantic-settings could not decode a list/dict variable (they take JSON)."""
    match = re.search(r'field "(\w+)"', str(exc))
    group = match.group(1) if match else ""
    names = sorted(
        key
        for key, value in os.environ.items()
        if key.upper().startswith(f"RAMDEX_{group.upper()}") and not _is_json(value)
    )
    shown = ", ".join(names) or f"RAMDEX_{group.upper()}__*"
    return RamdexError(
        f"invalid setting {shown}: not valid JSON ({exc.__cause__ or exc})",
        hint="list and table settings take JSON, for example RAMDEX_API__CORS_ORIGINS='[\"https://a.example\"]'",
    )


def _is_json(value: str) -> bool:
    try:
        json.loads(value)
    except ValueError:
        return False
    return True


def _database(exc: Exception, ctx: Any) -> RamdexError:
    name = _name(ctx, "url", "RAMDEX_DATABASE__URL")
    url = ctx.params.get("url") if name == "--url" else None
    url = url or _configured(lambda s: s.database_url)
    first = _first_line(exc)
    if "no such table" in first or ("relation" in first and "does not exist" in first):
        return RamdexError(
            f"the database at {hide_password(url)} has no ramdex tables yet ({first})",
            hint="run `ramdex db upgrade` (or ingest something: that creates them), "
            f"or point {name} at the archive's database",
        )
    return RamdexError(
        f"database unavailable: {first}",
        hint=f"check {name} (now {hide_password(url)}) and that the database server is running",
    )


def _database_url(exc: Exception, ctx: Any) -> RamdexError:
    name = _name(ctx, "url", "RAMDEX_DATABASE__URL")
    return RamdexError(
        f"{name} is not a database URL ramdex can use: {_first_line(exc)}",
        hint="use postgresql+psycopg://USER:PASSWORD@HOST/DATABASE or sqlite:///PATH",
    )


def _broker(exc: Exception) -> RamdexError:
    url = _configured(lambda s: s.broker.url)
    return RamdexError(
        f"broker unavailable: {_first_line(exc)}",
        hint=f"check RAMDEX_BROKER__URL (now {hide_password(url)}) and that Redis or RabbitMQ "
        "is running there, or unset it to run tasks in this process",
    )


def _device(exc: Exception, ctx: Any) -> RamdexError:
    name = _name(ctx, "device", "RAMDEX_MODEL__DEVICE")
    return RamdexError(str(exc), hint=f"set {name} to cpu (or auto: the best device here)")


def _checkpoint(exc: Exception, ctx: Any) -> RamdexError:
    name = _name(ctx, "checkpoint", "RAMDEX_MODEL__CHECKPOINT")
    return RamdexError(
        str(exc),
        hint=f"point {name} at a RAM++ .safetensors or .pth file, or leave it unset for the "
        "configured model (`ramdex models list`)",
    )


def _is(exc: BaseException, module: str, name: str) -> bool:
    """``isinstance(exc, module.name)`` without importing ``module``: a class whose module was
    never imported cannot have raised (and the error path stays fast, no torch import)."""
    cls = getattr(sys.modules.get(module), name, None)
    return isinstance(cls, type) and isinstance(exc, cls)


def explain(exc: BaseException, ctx: Any = None) -> RamdexError | None:
    """The person-facing error for ``exc``, or None when it is not one (a bug: keep the traceback).

    Args:
        exc: what a command raised.
        ctx: the command's click context, to tell an option given on the command line from a
            setting (None: name the settings).
    """
    if isinstance(exc, RamdexError):
        return exc
    if _is(exc, "pydantic_core", "ValidationError") and getattr(exc, "title", "") == "Settings":
        return _settings_errors(exc)
    if _is(exc, "pydantic_settings", "SettingsError"):
        return _settings_parse_error(exc)  # type: ignore[arg-type]
    if _is(exc, "sqlalchemy.exc", "OperationalError") or _is(
        exc, "sqlalchemy.exc", "InterfaceError"
    ):
        return _database(exc, ctx)  # type: ignore[arg-type]
    if _is(exc, "sqlalchemy.exc", "NoSuchModuleError") or (
        _is(exc, "sqlalchemy.exc", "ArgumentError") and "URL" in str(exc)
    ):
        return _database_url(exc, ctx)  # type: ignore[arg-type]
    if _is(exc, "kombu.exceptions", "OperationalError") or _is(
        exc, "redis.exceptions", "ConnectionError"
    ):
        return _broker(exc)  # type: ignore[arg-type]
    if _is(exc, "ram_pp.inference", "DeviceUnavailableError"):
        return _device(exc, ctx)  # type: ignore[arg-type]
    if _is(exc, "ram_pp.convert", "CheckpointError"):
        return _checkpoint(exc, ctx)  # type: ignore[arg-type]
    if _is(exc, "indexer.models", "ModelNotAvailableError"):
        return RamdexError(str(exc))
    return None


def debug_enabled(ctx: Any = None) -> bool:
    """``--debug`` on the root command, or ``RAMDEX_DEBUG`` set to a true value."""
    root = ctx.find_root() if ctx is not None else None
    if root is not None and root.params.get("debug"):
        return True
    return os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def handle(exc: Exception, ctx: Any = None) -> None:
    """Print ``exc`` for a person and exit with its code, or re-raise it when it is a bug.

    Raises:
        typer.Exit: always for an explained error (code 2 unless the error says otherwise).
        Exception: ``exc`` itself when it is not explained (its traceback is the report).
    """
    error = explain(exc, ctx)
    if error is None:
        raise exc
    if debug_enabled(ctx):
        traceback.print_exception(exc, file=sys.stderr)
    for line in error.lines():
        typer.echo(line, err=True)
    raise typer.Exit(error.exit_code) from None


def database_url_option(value: str | None) -> str | None:
    """typer callback for ``--url`` options: refuse an unsupported URL as a usage error (exit 2)."""
    from indexer.settings import database_url_problem

    problem = database_url_problem(value or "")
    if problem:
        raise typer.BadParameter(problem)
    return value
