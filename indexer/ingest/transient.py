"""Errors worth retrying (the database or broker was unreachable, a lock timed out, GPU memory ran
out) and a retry helper. Anything else is a bug or bad input and must surface."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
import torch


def _transient_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [
        sa.exc.OperationalError,
        sa.exc.InterfaceError,
        sa.exc.TimeoutError,
        torch.cuda.OutOfMemoryError,
        ConnectionError,
        TimeoutError,
    ]
    try:
        import redis.exceptions

        errors += [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError]
    except ImportError:  # pragma: no cover - redis is a dependency through celery[redis]
        pass
    try:
        import kombu.exceptions

        errors.append(kombu.exceptions.OperationalError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


TRANSIENT = _transient_errors()


def is_transient(exc: BaseException) -> bool:
    """Whether an error is worth retrying later (database/broker down, GPU out of memory)."""
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, TRANSIENT)


def retry_transient(fn: Callable[[], Any], attempts: int = 6, base_s: float = 1.0) -> Any:
    """Call ``fn``, retrying transient errors with exponential backoff (1, 2, 4 ... s)."""
    for attempt in range(attempts):
        try:
            return fn()
        except TRANSIENT:
            if attempt == attempts - 1:
                raise
            time.sleep(min(base_s * 2**attempt, 30.0))
    return None
