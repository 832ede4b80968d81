"""`ramdex thresholds`: Per-tag thresholds learned from review decisions: suggest and apply."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Per-tag thresholds learned from review decisions: suggest and apply.",
    no_args_is_help=True,
)
