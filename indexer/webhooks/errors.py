"""The error a person registering a webhook can fix."""

from __future__ import annotations

from indexer.errors import RamdexError


class WebhookError(RamdexError):
    """A webhook that cannot be registered as given (URL, event type, collection, limits)."""
