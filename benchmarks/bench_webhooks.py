"""Benchmark: webhook delivery rate to a loopback receiver, batched vs one event per delivery,
and what writing events costs ingest.

1. **Delivery rate** (SQLite and PostgreSQL): N ``asset.done`` events (each one committed batch
   of ``--ids-per-event`` assets, as ingest writes them) drained by the dispatcher
   (``dispatch_once`` in a loop: fan out, seal, claim, sign, POST with ``webhooks.concurrency``
   threads, record) to a real HTTP receiver on loopback (``http.server``, threads; it verifies
   every signature). Batched: ``max_events=100``; baseline: ``max_events=1`` (a POST per event,
   what a per-asset webhook system does per batch). Printed: events/s, deliveries/s, the ratio,
   and the deliveries a 1.1M-asset re-tag would take (events of 32 assets, batched by 100).
2. **Event-write cost**: the per-transaction cost of ``record_asset_event`` with no subscriber
   (the cached check only), and with one (one INSERT), against an empty transaction; and an
   embedded ingest of ``--images`` small images with the tiny random model, without and with
   an active ``asset.done`` webhook (median of ``--repeats``), as a ratio.

    flock -w 60 /tmp/ramdex-bench.lock .venv/bin/python benchmarks/bench_webhooks.py
    .venv/bin/python benchmarks/bench_webhooks.py --events 20000 --backends postgresql

Not a test: numbers depend on the machine and its load (printed beside them).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from indexer.threads import apply_policy  # noqa: E402

apply_policy("ingest")

import psycopg  # noqa: E402
import sqlalchemy as sa  # noqa: E402

from indexer.db.asset_repo import get_or_create_asset_by_sha  # noqa: E402
from indexer.db.assets import Asset  # noqa: E402
from indexer.db.event_repo import forget_subscriptions, record_asset_event  # noqa: E402
from indexer.db.events import EventType, WebhookDelivery  # noqa: E402
from indexer.db.session import dispose_engines, session_scope  # noqa: E402
from indexer.db.webhook_repo import delete_webhook  # noqa: E402
from indexer.migrate import upgrade_database  # noqa: E402
from indexer.settings import Settings  # noqa: E402
from indexer.webhooks.dispatcher import dispatch_once  # noqa: E402
from indexer.webhooks.subscriptions import add_webhook  # noqa: E402
from tests.ingest_fixtures import write_images  # noqa: E402
from tests.webhook_support import Receiver  # noqa: E402

ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
SECRET = "whsec_benchmark_secret_000000"


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def database(backend: str, folder: Path) -> str:
    if backend == "sqlite":
        url = f"sqlite:///{folder / f'bench-{uuid.uuid4().hex[:6]}.sqlite3'}"
    else:
        name = f"ramdex_bench_hooks_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    upgrade_database(url)
    return url


def drop(url: str) -> None:
    dispose_engines()
    if url.startswith("postgresql"):
        name = url.rsplit("/", 1)[1]
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def settings_for(url: str, home: Path) -> Settings:
    return Settings(
        home=home,
        database={"url": url},
        broker={"url": ""},
        model={"name": "test_micro", "device": "cpu", "batch_size": 8},
        ingest={"allow_private_urls": True, "read_keywords": False, "decode_workers": 1},
    )


def subscribe(settings: Settings, url: str, max_events: int) -> int:
    with session_scope(settings.database_url) as s:
        new = add_webhook(
            s,
            settings,
            url=url,
            event_types=["asset.done"],
            created_by="bench",
            secret=SECRET,
            max_events=max_events,
            max_wait_s=0,
        )
        s.commit()
        return new.webhook.id


def emit(settings: Settings, events: int, ids_per_event: int) -> None:
    next_id = 1
    per_tx = 100
    for start in range(0, events, per_tx):
        with session_scope(settings.database_url) as s:
            for _ in range(min(per_tx, events - start)):
                record_asset_event(
                    s, EventType.ASSET_DONE, range(next_id, next_id + ids_per_event), model="m"
                )
                next_id += ids_per_event
            s.commit()


class ReceiverProcess:
    """The loopback receiver in a process of its own (in this one it would share the GIL
    with the dispatcher's threads and measure that, not the dispatcher)."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.webhook_support", SECRET],
            cwd=str(REPO),
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().strip()

    def stats(self) -> dict[str, int]:
        return json.loads(urllib.request.urlopen(self.url.replace("/hook", "/stats")).read())

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def drain(
    settings: Settings, hook_id: int, receiver: ReceiverProcess, events: int
) -> tuple[float, int]:
    started = time.perf_counter()
    while receiver.stats()["events"] < events:
        dispatch_once(settings)
        if time.perf_counter() - started > 600:
            raise TimeoutError("deliveries did not drain in 10 minutes")
    elapsed = time.perf_counter() - started
    with session_scope(settings.database_url) as s:
        sent = s.scalar(
            sa.select(sa.func.count()).where(
                WebhookDelivery.webhook_id == hook_id, WebhookDelivery.status == "delivered"
            )
        )
    return elapsed, int(sent or 0)


def delivery_rate(backend: str, folder: Path, events: int, ids_per_event: int) -> None:
    url = database(backend, folder)
    settings = settings_for(url, folder / "home")
    try:
        results = {}
        for label, max_events in (("batched (100 per delivery)", 100), ("one per delivery", 1)):
            receiver = ReceiverProcess()
            try:
                hook_id = subscribe(settings, receiver.url, max_events)
                emit(settings, events, ids_per_event)
                elapsed, sent = drain(settings, hook_id, receiver, events)
                stats = receiver.stats()
                assert stats["verified"] == stats["requests"] == sent, stats
                with session_scope(url) as s:
                    delete_webhook(s, hook_id)
                    s.commit()
            finally:
                receiver.stop()
            results[label] = (events / elapsed, sent / elapsed, sent, elapsed)
            print(
                f"  {backend:<10} {label:<27} {events} events in {sent:>5} deliveries, "
                f"{elapsed:6.2f} s: {events / elapsed:8.0f} events/s, "
                f"{sent / elapsed:6.0f} deliveries/s   ({load()})"
            )
        batched = results["batched (100 per delivery)"][0]
        single = results["one per delivery"][0]
        print(f"  {backend:<10} batched / one-per-delivery event rate: {batched / single:.1f}x")
        retag = 1_100_000 // 32
        print(
            f"  {backend:<10} a 1.1M-asset re-tag ({retag} batch events of 32 assets): "
            f"{-(-retag // 100)} deliveries, about {retag / batched:.0f} s at this rate"
        )
    finally:
        drop(url)


def write_cost(folder: Path, backend: str, rounds: int = 400) -> None:
    url = database(backend, folder)
    settings = settings_for(url, folder / "home")
    try:

        def per_tx(write: bool) -> float:
            started = time.perf_counter()
            for i in range(rounds):
                with session_scope(url) as s:
                    # A batch transaction writes anyway (its commit flushes the log): the
                    # baseline updates one row, so what is left is the event's own cost.
                    s.execute(
                        sa.update(Asset).where(Asset.id == asset_id).values(mime="image/jpeg")
                    )
                    if write:
                        record_asset_event(s, EventType.ASSET_DONE, range(i * 32, i * 32 + 32))
                    s.commit()
            return (time.perf_counter() - started) / rounds * 1000.0

        with session_scope(url) as s:
            asset_id = get_or_create_asset_by_sha(s, sha256="ab" * 32).id
            s.commit()
        forget_subscriptions()
        with session_scope(url) as s:  # the call alone, no subscriber: the cached check
            calls = 20000
            started = time.perf_counter()
            for i in range(calls):
                record_asset_event(s, EventType.ASSET_DONE, (i,))
            per_call_us = (time.perf_counter() - started) / calls * 1e6
        print(f"  {backend:<10} record_asset_event with no subscriber: {per_call_us:.1f} us a call")
        empty = per_tx(False)
        unsubscribed = per_tx(True)
        receiver = Receiver(secret=SECRET).start()
        subscribe(settings, receiver.url, 100)
        subscribed = per_tx(True)
        receiver.stop()
        print(
            f"  {backend:<10} per batch transaction: one-row update {empty:.3f} ms, "
            f"with the event call "
            f"and no subscriber {unsubscribed:.3f} ms (+{unsubscribed - empty:.3f}), "
            f"subscribed (one INSERT) {subscribed:.3f} ms (+{subscribed - empty:.3f})   ({load()})"
        )
    finally:
        drop(url)


def ingest_overhead(folder: Path, images: int, repeats: int) -> None:
    from indexer.ingest.pipeline import ingest
    from indexer.ingest.process import AssetProcessor
    from ram_pp.factory import random_model

    micro = random_model("test_micro", seed=0)
    photos = folder / "photos"
    write_images(photos, images)
    times: dict[bool, list[float]] = {False: [], True: []}
    receiver = Receiver(secret=SECRET).start()
    try:
        for r in range(repeats):
            for hooked in (False, True):
                run = folder / f"run-{r}-{int(hooked)}"
                url = f"sqlite:///{run / 'ramdex.sqlite3'}"
                run.mkdir()
                upgrade_database(url)
                settings = settings_for(url, run / "home")
                if hooked:
                    subscribe(settings, receiver.url, 100)
                forget_subscriptions()
                processor = AssetProcessor(settings, loaded=micro, model_id="test_micro@random")
                started = time.perf_counter()
                summary = ingest([photos], settings=settings, processor=processor, progress=False)
                times[hooked].append(time.perf_counter() - started)
                assert summary.done == images
                dispose_engines()
    finally:
        receiver.stop()
    off, on = statistics.median(times[False]), statistics.median(times[True])
    print(
        f"  embedded ingest of {images} images (SQLite, tiny model), median of {repeats}: "
        f"no webhook {off:.2f} s, asset.done webhook {on:.2f} s, ratio {on / off:.3f}   ({load()})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--ids-per-event", type=int, default=32)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"bench_webhooks ({load()}, {os.cpu_count()} cores)")
    with tempfile.TemporaryDirectory(prefix="ramdex-bench-hooks-") as tmp:
        folder = Path(tmp)
        print("1. delivery rate to a loopback receiver")
        for backend in args.backends.split(","):
            delivery_rate(backend, folder, args.events, args.ids_per_event)
        print("2. cost of writing events")
        for backend in args.backends.split(","):
            write_cost(folder, backend)
        ingest_overhead(folder, args.images, args.repeats)


if __name__ == "__main__":
    main()
