"""The ``ramdex`` command line: one typer app, one module per area.

The root group runs every command inside one error handler (:func:`api.cli.errors.handle`):
invalid settings, an unreachable or unsupported database or broker, a missing device or
checkpoint end the command with one or two lines that say what to change, exit code 2;
``--debug`` (or ``RAMDEX_DEBUG=1``) adds the traceback. Modules are imported lazily inside the
commands, so that no setting is read at import time and every error reaches that handler.
"""

from __future__ import annotations

import importlib
import sys
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from api.cli.errors import DEBUG_ENV, handle
from api.cli.help import tidy_params

LEAF_CONTEXT = "ramdex.leaf_context"


class RamdexContext(typer.Context):
    """A context that tidies its command's help display and remembers itself as the innermost
    one (``ctx.meta`` is shared by a context and its parents), for the error handler."""

    def __init__(self, command: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(command, *args, **kwargs)
        self.meta[LEAF_CONTEXT] = self
        tidy_params(command.get_params(self))


class RamdexGroup(TyperGroup):
    """The root ``ramdex`` group: every command below it gets :class:`RamdexContext`, and the
    errors of every command go through :func:`api.cli.errors.handle`."""

    context_class = RamdexContext

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        pending = list(self.commands.values())
        while pending:
            command = pending.pop()
            command.context_class = RamdexContext
            pending.extend(getattr(command, "commands", {}).values())

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException, KeyboardInterrupt):
            raise  # typer's own exits and usage errors, Ctrl-C
        except Exception as exc:  # explained (one line, exit 2) or re-raised as a bug
            handle(exc, ctx.meta.get(LEAF_CONTEXT, ctx))
        # A command's return value means nothing on the command line; returning None keeps it
        # apart from the exit code that non-standalone click returns for an explicit Exit.
        return None

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        """Run the command line. A usage error (unknown option, out-of-range value) prints as
        ramdex's other errors do, ``error:`` and ``hint:`` lines on stderr with exit 2, not
        as typer's boxed panel."""
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except typer.TyperException as exc:  # typer's (vendored click's) usage errors
            sys.exit(_show_usage_error(exc))
        except typer.Abort:
            typer.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


def _show_usage_error(exc: Any) -> int:
    """Print a usage error the way :func:`api.cli.errors.handle` prints the others; its exit code.

    Duck-typed: typer 0.29 vendors click, whose exception classes are not public there."""
    kinds = {cls.__name__ for cls in type(exc).__mro__}
    if "NoArgsIsHelpError" in kinds:
        exc.show()  # `ramdex` or a group alone: its help
    elif "UsageError" in kinds:
        ctx = getattr(exc, "ctx", None)
        where = ctx.command_path if ctx is not None else "ramdex"
        typer.echo(f"error: {exc.format_message()}", err=True)
        typer.echo(f"hint: `{where} --help` lists the commands, options and their ranges", err=True)
    else:
        typer.echo(f"error: {exc.format_message()}", err=True)
    return int(getattr(exc, "exit_code", 2))


app = typer.Typer(
    name="ramdex",
    cls=RamdexGroup,
    help="Index, tag and search images with RAM++ (Recognize Anything Plus).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            envvar=DEBUG_ENV,
            help="Show the full traceback of an error.",
        ),
    ] = False,
) -> None:
    """Index, tag and search images with RAM++ (Recognize Anything Plus)."""


# (module, attribute, sub-command name or None to merge its commands at the top level)
_SUBCOMMANDS: list[tuple[str, str, str | None]] = [
    ("api.cli.demo", "app", None),
    ("api.cli.tag", "app", None),
    ("api.cli.models", "app", "models"),
    ("api.cli.concepts", "app", "concepts"),
    ("api.cli.ingest", "app", None),
    ("api.cli.serve", "app", None),
    ("api.cli.serve", "keys_app", "keys"),
    ("api.cli.db", "app", "db"),
    ("api.cli.index", "app", "index"),
    ("api.cli.tokens", "app", "tokens"),
    ("api.cli.search", "app", None),
    ("api.cli.tags", "app", None),
    ("api.cli.assets", "app", "assets"),
    ("api.cli.review", "app", "review"),
    ("api.cli.thresholds", "app", "thresholds"),
    ("api.cli.export", "app", "export"),
    ("api.cli.taxonomy", "app", "taxonomy"),
    ("api.cli.sources", "app", "sources"),
    ("api.cli.collections", "app", "collections"),
    ("api.cli.webhooks", "app", "webhooks"),
    ("api.cli.train", "app", None),
    ("api.cli.train", "datasets_app", "datasets"),
]

for module_name, attribute, group in _SUBCOMMANDS:
    sub = getattr(importlib.import_module(module_name), attribute)
    if group is None:
        for command in sub.registered_commands:
            app.registered_commands.append(command)
    else:
        app.add_typer(sub, name=group)


def main() -> None:
    """Console-script entry point."""
    app()
