"""Prometheus metrics: request latency, model latency, queue depth and ingest rate.

Each app owns its :class:`Metrics` (its own registry), so several apps in one process (tests) never
collide. Gauges about the archive (assets by status, queue depth, ingest rate) are read at scrape
time by a collector the app registers with a callable that returns :class:`ArchiveStats`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Histogram,
    ProcessCollector,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class ArchiveStats:
    """What the scrape-time collector reports; any part may be unknown (empty)."""

    assets_by_status: dict[str, int] = field(default_factory=dict)
    jobs_by_state: dict[str, int] = field(default_factory=dict)
    queue_depth: dict[str, int] = field(default_factory=dict)
    ingested_last_window: int | None = None
    window_s: float = 300.0


class _ArchiveCollector(Collector):
    def __init__(self, read: Callable[[], ArchiveStats]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        try:
            stats = self._read()
        except Exception:  # a scrape must not fail because the database is down
            log.warning("metrics: could not read archive statistics", exc_info=True)
            stats = ArchiveStats()
        assets = GaugeMetricFamily("ramdex_assets", "Assets by status", labels=["status"])
        for status, count in sorted(stats.assets_by_status.items()):
            assets.add_metric([status], count)
        yield assets
        jobs = GaugeMetricFamily("ramdex_jobs", "Jobs by state", labels=["state"])
        for state, count in sorted(stats.jobs_by_state.items()):
            jobs.add_metric([state], count)
        yield jobs
        queue = GaugeMetricFamily(
            "ramdex_queue_depth", "Messages waiting in each broker queue", labels=["queue"]
        )
        for name, depth in sorted(stats.queue_depth.items()):
            queue.add_metric([name], depth)
        yield queue
        if stats.ingested_last_window is not None:
            yield GaugeMetricFamily(
                "ramdex_ingest_rate_assets_per_second",
                f"Assets indexed per second over the last {stats.window_s:.0f} s",
                value=stats.ingested_last_window / stats.window_s,
            )


class Metrics:
    """The metrics of one app: its registry, its histograms, its scrape-time collector."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.request_latency = Histogram(
            "ramdex_http_request_duration_seconds",
            "HTTP request latency by route template",
            ["method", "route", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.model_latency = Histogram(
            "ramdex_model_latency_seconds",
            "Latency of model, scoring and index work done by the API",
            ["operation"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._archive: _ArchiveCollector | None = None

    def watch_archive(self, read: Callable[[], ArchiveStats]) -> None:
        """Report the archive gauges from ``read()`` at every scrape."""
        if self._archive is not None:
            self.registry.unregister(self._archive)
        self._archive = _ArchiveCollector(read)
        self.registry.register(self._archive)

    @contextmanager
    def time_model(self, operation: str) -> Iterator[None]:
        """Observe the duration of one model, scoring or index operation."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.model_latency.labels(operation).observe(time.perf_counter() - start)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def parse_bind(bind: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port).

    Raises:
        ValueError: not of that shape, or the port is not 1-65535.
    """
    host, sep, port = bind.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"api.metrics_bind must be host:port, not {bind!r}")
    return host, int(port)


def start_metrics_listener(metrics: Metrics, bind: str) -> WSGIServer:
    """Serve ``metrics`` on their own address (``api.metrics_access=bind``) in a daemon thread;
    call ``shutdown()`` and ``server_close()`` on the result to stop it.

    Raises:
        ValueError: a malformed ``bind``.
        OSError: the address cannot be bound (in use, not local).
    """
    host, port = parse_bind(bind)
    server, _thread = start_http_server(port, addr=host, registry=metrics.registry)
    log.info("metrics served on %s", bind)
    return server


class LatencyMiddleware:
    """ASGI middleware observing each HTTP request's latency under its route template.

    Unmatched paths share one label so a scanner cannot blow up the series count.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.request_latency.labels(scope["method"], template, str(status)).observe(
                time.perf_counter() - start
            )
