"""When a failed delivery is tried again: exponential backoff with jitter, then dead."""

from __future__ import annotations

import random


def retry_delay_s(
    attempt: int,
    *,
    base_s: float,
    max_s: float,
    max_attempts: int,
    rng: random.Random | None = None,
) -> float | None:
    """Seconds until the next try after failed attempt number ``attempt`` (1-based), or None
    when that was the last one (the delivery is dead).

    ``base_s * 2**(attempt-1)``, capped at ``max_s``, times a random factor in [0.5, 1.0]
    ("equal jitter"): receivers that failed together do not get their retries together.
    """
    if attempt >= max_attempts:
        return None
    ceiling = min(max_s, base_s * 2 ** (attempt - 1))
    return ceiling * (0.5 + 0.5 * (rng or random).random())
