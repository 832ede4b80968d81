"""Errors raised by the data-access functions (all carry a readable message)."""

from __future__ import annotations

from collections.abc import Sequence


class NotFoundError(LookupError):
    """A row the caller named (asset, tag, concept, job) does not exist."""


class DuplicateError(ValueError):
    """A row with the same unique key already exists."""


class UnknownTagError(LookupError):
    """Tag names or ids that match no tag of the model.

    Attributes:
        names: the names or ids that matched nothing.
        model_name: the model whose vocabulary was searched.
    """

    def __init__(self, names: Sequence[str | int], model_name: str) -> None:
        self.names = list(names)
        self.model_name = model_name
        shown = ", ".join(repr(n) for n in self.names[:10])
        more = f" and {len(self.names) - 10} more" if len(self.names) > 10 else ""
        super().__init__(f"unknown tag(s) for model {model_name!r}: {shown}{more}")


class InvalidCursorError(ValueError):
    """A paging cursor that is not one of ours (malformed) or belongs to another query."""


class CursorOutOfRangeError(InvalidCursorError):
    """A well-formed cursor whose values are out of range or of the wrong kind (an id past
    BIGINT, a score that is not a probability, a date cursor of the other database backend)."""
