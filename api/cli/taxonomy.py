"""`ramdex taxonomy`: The vocabulary file: synonyms, preferred labels, hierarchy."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="The vocabulary file: synonyms, preferred labels, hierarchy.", no_args_is_help=True
)
