"""`ramdex export`: Export assets with their tags: XMP sidecars, CSV, JSON."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Export assets with their tags: XMP sidecars, CSV, JSON.", no_args_is_help=True
)
