"""Errors of sources a person can act on (a bad URI, a bucket that does not exist, no
credentials, a server that does not answer): :class:`indexer.errors.RamdexError` with a kind the
API answers with."""

from __future__ import annotations

from indexer.errors import RamdexError


class SourceError(RamdexError):
    """A source that cannot be added or scanned; ``kind`` names the problem for the API
    (``invalid-source``, ``source-not-found``, ``source-unreachable``, ``source-forbidden``)."""

    def __init__(self, message: str, *, hint: str | None = None, kind: str = "invalid-source"):
        super().__init__(message, hint=hint)
        self.kind = kind


class SourceUnavailable(SourceError):
    """The object store did not answer or refused us (network, credentials): a scan records it
    as the source's ``last_error`` and is tried again at the next interval."""

    def __init__(self, message: str, *, hint: str | None = None, kind: str = "source-unreachable"):
        super().__init__(message, hint=hint, kind=kind)
