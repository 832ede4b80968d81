"""What the command line says about the model it uses: its human name, and once per process,
on stderr, what the demo model is (40 synthetic tags, nothing about photographs), so nobody reads
its tags on a real photograph as the real thing.

Commands that tag, search or serve call :func:`announce` (a described model) or
:func:`announce_configured` (the model the settings point at).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from ram_pp.factory import ModelDescription

_announced: set[str] = set()


def announce(described: ModelDescription) -> ModelDescription:
    """Print the demo model's notice on stderr, once per process and model; other models are
    not announced. Returns ``described`` (for chaining)."""
    notice = described.notice
    key = described.digest or described.name
    if notice and key not in _announced:
        _announced.add(key)
        typer.echo(notice, err=True)
    return described


def announce_configured(settings) -> ModelDescription:  # noqa: ANN001 - indexer Settings
    """Describe the configured model (without loading it) and announce it as :func:`announce`."""
    from indexer.models import describe_configured_model

    return announce(describe_configured_model(settings))
