"""The ``ramdex`` command line: one typer app, one module per area."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="ramdex",
    help="Index, tag and search images with RAM++ (Recognize Anything Plus).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

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
