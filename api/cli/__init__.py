"""The ``ramdex`` command line: one typer app, one module per area.

The root group runs every command inside one error handler (:func:`api.cli.errors.handle`):
invalid settings, an unreachable or unsupported database or broker, a missing device or
checkpoint end the command with one or two lines that say what to change, exit code 2;
``--debug`` (or ``RAMDEX_DEBUG=1``) adds the traceback. Modules are imported lazily inside the
commands, so that no setting is read at import time and every error reaches that handler.
"""

from __future__ import annotations

import importlib
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
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException, KeyboardInterrupt):
            raise  # typer's own exits and usage errors, Ctrl-C
        except Exception as exc:  # explained (one line, exit 2) or re-raised as a bug
            handle(exc, ctx.meta.get(LEAF_CONTEXT, ctx))


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
    ("api.cli.assets", "app", "assets"),
    ("api.cli.review", "app", "review"),
    ("api.cli.thresholds", "app", "thresholds"),
    ("api.cli.export", "app", "export"),
    ("api.cli.taxonomy", "app", "taxonomy"),
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
