"""``Server-Timing`` (W3C) on API responses: where the server spent a request's time.

The middleware gives each HTTP request a :class:`~indexer.search.timing.Phases` (routes reach
it with :func:`request_phases`) and, when the response starts, sends what was recorded::

    Server-Timing: request;dur=3.1, db;dur=1.0, encode;dur=12.4, calibrate;dur=210.5,
        stage1;dur=8.2, stage2;dur=402.7, rows;dur=4.0, page;dur=0.9, respond;dur=1.6,
        total;dur=644.4, ranking;desc="built"

Durations are milliseconds. ``request`` is the time from the request's arrival to its route
(body, validation, the key check, the hand-over to a worker thread); ``respond`` is what is
left of ``total`` (the response model's validation and JSON, middleware); the rest are the
search service's phases (:mod:`indexer.search.timing`). Browsers show the header in their
network panel; ``benchmarks/bench_api.py`` prints it per phase. Recording costs a few
``perf_counter`` calls, so it is always on.
"""

from __future__ import annotations

import time

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from indexer.search.timing import Phases

SCOPE_KEY = "ramdex.phases"  # ASGI scope entry that carries the request's phases
_START_KEY = "ramdex.started"  # perf_counter() when the request reached the middleware
REQUEST = "request"
PAGE = "page"
RESPOND = "respond"
TOTAL = "total"


def request_phases(request: Request) -> Phases:
    """The request's phases (a throw-away one when the middleware is not installed), with the
    ``request`` phase (arrival to now) recorded on first use."""
    phases = request.scope.get(SCOPE_KEY)
    if phases is None:
        return Phases()
    started = request.scope.get(_START_KEY)
    if started is not None and REQUEST not in phases.seconds():
        phases.add(REQUEST, time.perf_counter() - started)
    return phases


def header_value(phases: Phases, total_s: float) -> str:
    """The ``Server-Timing`` value: every phase, ``respond`` (the rest), ``total`` and notes."""
    seconds = phases.seconds()
    metrics = [f"{name};dur={s * 1000:.1f}" for name, s in seconds.items()]
    if seconds:
        metrics.append(f"{RESPOND};dur={max(0.0, total_s - sum(seconds.values())) * 1000:.1f}")
    metrics.append(f"{TOTAL};dur={total_s * 1000:.1f}")
    # Notes are fixed words chosen by the service (never request text), quoted as the
    # header's grammar asks.
    metrics += [f'{name};desc="{value}"' for name, value in phases.notes.items()]
    return ", ".join(metrics)


def parse_header(value: str) -> tuple[dict[str, float], dict[str, str]]:
    """Milliseconds per metric and the notes of a ``Server-Timing`` value (clients, tests)."""
    durations: dict[str, float] = {}
    notes: dict[str, str] = {}
    for metric in filter(None, (m.strip() for m in value.split(","))):
        name, *params = (p.strip() for p in metric.split(";"))
        for param in params:
            key, _, raw = param.partition("=")
            if key == "dur":
                durations[name] = float(raw)
            elif key == "desc":
                notes[name] = raw.strip('"')
    return durations, notes


class ServerTiming:
    """ASGI middleware adding ``Server-Timing`` to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        phases = Phases()
        scope[SCOPE_KEY] = phases
        scope[_START_KEY] = start

        async def send_with_timing(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.append("Server-Timing", header_value(phases, time.perf_counter() - start))
            await send(message)

        await self.app(scope, receive, send_with_timing)
