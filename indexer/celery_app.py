"""The Celery application: broker, queues, routes and reliability settings.

- Broker: ``settings.broker.url``: Redis (``redis://host:6379/0``, the default choice) or
  RabbitMQ (``amqp://user:pass@host:5672//``). No result backend is needed: progress lives in
  the jobs table and outcomes on the assets.
- Queues: model tasks go to ``settings.broker.model_queue`` (GPU workers consume it, one
  process per device), everything else to ``settings.broker.default_queue``.
- Reliability: ``acks_late`` (a message is acknowledged only after its task returns),
  ``task_reject_on_worker_lost`` (a worker child killed mid-task puts the message back),
  prefetch multiplier 1 (a long batch never sits behind another one reserved by a busy worker).
  With Redis, a message whose whole worker died comes back after the *visibility timeout*
  (``broker.visibility_timeout_s``, env ``RAMDEX_BROKER__VISIBILITY_TIMEOUT_S``, default 3600 s;
  keep it above the longest task).
- Embedded mode: an empty broker URL makes every task run in the calling process
  (``task_always_eager``): the same task code, no broker, no worker.

Producers that are given explicit settings (tests, the API) publish with :func:`producer_app`,
which builds an app for those settings; workers use the module-level :data:`app`, configured
from the environment (``ramdex worker`` / ``celery -A indexer.celery_app worker``).
"""

from __future__ import annotations

import os
import threading

from indexer.threads import apply_policy

# Worker processes decode images in threads while torch runs the model (indexer/threads.py,
# "worker"). Set here, in the module Celery imports first (``celery -A indexer.celery_app``),
# because it only takes effect before torch loads.
apply_policy("worker")

from celery import Celery  # noqa: E402

from indexer.settings import Settings, get_settings  # noqa: E402

PROCESS_TASK = "ramdex.process_assets"
REGISTER_TASK = "ramdex.register_sources"
SYNC_TASK = "ramdex.sync_index"
BACKFILL_TASK = "ramdex.backfill_concept"
BACKFILL_PART_TASK = "ramdex.backfill_part"
VIDEO_PART_TASK = "ramdex.video_part"


def configure(app: Celery, settings: Settings) -> Celery:
    """Apply ramdex's Celery configuration for ``settings`` to ``app``."""
    broker = settings.broker
    embedded = not broker.url
    visibility = broker.visibility_timeout_s
    app.conf.update(
        broker_url=broker.url or "memory://",
        result_backend=broker.result_backend or None,
        task_ignore_result=not broker.result_backend,
        task_always_eager=embedded,
        task_eager_propagates=embedded,
        task_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=broker.default_queue,
        task_routes={
            PROCESS_TASK: {"queue": broker.model_queue},
            BACKFILL_TASK: {"queue": broker.model_queue},  # runs the model's open-set head
            BACKFILL_PART_TASK: {"queue": broker.model_queue},
            VIDEO_PART_TASK: {"queue": broker.model_queue},  # decodes and tags a video range
            REGISTER_TASK: {"queue": broker.default_queue},
            SYNC_TASK: {"queue": broker.default_queue},
        },
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": visibility,
            # Sweep for abandoned messages about ten times per visibility timeout.
            "unacked_restore_interval": max(1, min(10, visibility // 10)),
            "unacked_restore_throttle": 1,
        },
        # Tasks publish follow-up tasks; retry publishing through short broker outages.
        task_publish_retry=True,
        task_publish_retry_policy={
            "max_retries": 10,
            "interval_start": 0.5,
            "interval_step": 1.0,
            "interval_max": 5.0,
        },
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        broker_connection_timeout=10,
    )
    return app


def create_app(settings: Settings | None = None) -> Celery:
    """A configured Celery app with ramdex's tasks."""
    app = Celery("ramdex", include=["indexer.tasks"])
    return configure(app, settings or get_settings())


app = create_app()

_producers: dict[tuple, Celery] = {}
_producers_lock = threading.Lock()


def producer_app(settings: Settings) -> Celery:
    """An app that publishes to the broker and queues of ``settings`` (cached per broker)."""
    broker = settings.broker
    if (broker.url or "memory://") == app.conf.broker_url and (
        broker.model_queue,
        broker.default_queue,
    ) == (app.conf.task_routes[PROCESS_TASK]["queue"], app.conf.task_default_queue):
        return app
    key = (broker.url, broker.model_queue, broker.default_queue, os.getpid())
    with _producers_lock:
        produced = _producers.get(key)
        if produced is None:
            produced = configure(Celery("ramdex-producer"), settings)
            _producers[key] = produced
        return produced


def require_broker(settings: Settings, timeout_s: float = 3.0) -> None:
    """Raise at once when the configured broker does not accept a connection (one attempt).

    Publishing retries for a while by design, so that workers ride out a short outage; a person
    starting ``ramdex ingest`` against a broker that is not there should hear so at once, before
    anything is registered. Nothing to check in the embedded mode (no broker URL).

    Raises:
        kombu.exceptions.OperationalError: the broker did not answer (the command line names
            ``RAMDEX_BROKER__URL``, see ``api/cli/errors.py``).
    """
    if not settings.broker.url:
        return
    from kombu import Connection

    with Connection(settings.broker.url, connect_timeout=timeout_s) as connection:
        connection.ensure_connection(
            max_retries=1, interval_start=0, interval_step=0, timeout=timeout_s
        )
