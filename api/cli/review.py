"""`ramdex review`: manual tags, accepting or rejecting model tags, the queue, history."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Review tags: manual tags, accept or reject model tags, the review queue, history.",
    no_args_is_help=True,
)
