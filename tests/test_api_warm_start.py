"""Warm start (``api.warm_start``): ``ramdex serve`` loads the model, the text encoder and the
searcher in the background, ``/healthz`` answers at once, ``/readyz`` says ``warming`` until it
is done, and the first concept query after readiness pays no load (its ``Server-Timing``
``encode`` phase is small). A query during warm-up waits for the same load, never a second."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.server_timing import parse_header
from ram_pp.factory import DEMO_MODEL
from tests.webui_support import free_port

if TYPE_CHECKING:
    from tests.search_support import SearchArchive

pytest_plugins = ["tests.api_support"]

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo_archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SearchArchive]:
    """A small SQLite archive ingested with the demo model (its MiniLM text encoder)."""
    from tests.search_support import search_archive  # after tests.api_support is a plugin

    with search_archive(tmp_path_factory.mktemp("warm"), "sqlite", size=12) as found:
        yield found


@contextmanager
def serve(archive: SearchArchive, warm: bool, log: Path) -> Iterator[tuple[str, float]]:
    """``ramdex serve`` as its own process on the archive; yields its URL and the monotonic
    time at which ``/healthz`` first answered."""
    settings = archive.settings
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAMDEX_")}
    env.update(
        RAMDEX_HOME=str(settings.home),
        RAMDEX_DATABASE__URL=settings.database.url,
        RAMDEX_MODEL__NAME=DEMO_MODEL,
        RAMDEX_MODEL__DEVICE="cpu",
        RAMDEX_BROKER__URL="",
        RAMDEX_API__REQUIRE_AUTH="false",
        RAMDEX_API__WARM_START=str(warm).lower(),
    )
    port = free_port()
    ramdex = str(Path(sys.executable).parent / "ramdex")
    args = [ramdex, "serve", "--host", "127.0.0.1", "--port", str(port), "--no-migrate"]
    with open(log, "w") as out:
        proc = subprocess.Popen([*args, "--log-level", "warning"], env=env, cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 90
            while True:
                try:
                    if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.02)
            yield base, time.monotonic()
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def readiness(base: str) -> tuple[int, dict]:
    reply = httpx.get(base + "/readyz", timeout=10)
    return reply.status_code, reply.json()["checks"]["warmup"]


def first_concept_encode_ms(base: str, text: str) -> float:
    reply = httpx.post(base + "/search", json={"text": text, "limit": 5}, timeout=120)
    assert reply.status_code == 200, reply.text
    durations, notes = parse_header(reply.headers["server-timing"])
    assert notes == {"ranking": "built"}
    return durations["encode"]


def test_first_concept_after_readiness_pays_no_load(demo_archive, tmp_path) -> None:
    with serve(demo_archive, warm=True, log=tmp_path / "warm.log") as (base, healthy_at):
        status, check = readiness(base)
        # /healthz answered while the warm-up was still going: /readyz says so
        assert status == 503 and not check["ok"], check
        assert check["detail"].startswith("warming: "), check
        while status != 200:
            assert time.monotonic() - healthy_at < 120, check
            time.sleep(0.05)
            status, check = readiness(base)
        assert check["ok"] and check["detail"].startswith("warm in "), check
        for part in ("model", "text encoder", "searcher (exhaustive, 12 assets)"):
            assert part in check["detail"], check
        warm_ms = first_concept_encode_ms(base, "striped kite")
    with serve(demo_archive, warm=False, log=tmp_path / "cold.log") as (base, _):
        status, check = readiness(base)
        assert status == 200 and check == {"ok": True, "detail": check["detail"]}
        assert check["detail"].startswith("off"), check
        cold_ms = first_concept_encode_ms(base, "striped kite")
    print(f"first concept's encode phase: warm start {warm_ms:.1f} ms, cold {cold_ms:.1f} ms")
    assert warm_ms < 500 and warm_ms * 4 < cold_ms, (warm_ms, cold_ms)


def test_query_during_warm_up_waits_for_the_same_load(demo_archive) -> None:
    settings = demo_archive.settings.model_copy(deep=True)
    settings.api.require_auth = False
    settings.api.warm_start = True
    with TestClient(create_app(settings)) as client:
        services = client.app.state.services
        replies: list[httpx.Response] = []
        asked = threading.Thread(
            target=lambda: replies.append(client.post("/search", json={"text": "red bicycle"}))
        )
        warming = client.get("/readyz").json()["checks"]["warmup"]
        asked.start()
        assert services.warmup.wait(120)
        asked.join(120)
        assert not warming["ok"] and warming["detail"].startswith("warming"), warming
        assert replies and replies[0].status_code == 200, replies
        assert replies[0].json()["hits"], replies[0].text
        for part in ("model", "text_encoder", "searcher"):
            assert services.loads[part] == 1, (part, services.loads)
        assert client.get("/readyz").status_code == 200


def test_parts_missing_here_do_not_keep_the_service_unready(tmp_path, sqlite_url, settings_for):
    """Nothing ingested and a text encoder neither local nor cached: ready at once, saying so,
    without waiting on a download (a failed hub download takes about 30 s here)."""
    settings = settings_for(tmp_path / "home", sqlite_url, warm_start=True)
    settings.model.cache_dir = tmp_path / "empty-hub-cache"
    started = time.monotonic()
    with TestClient(create_app(settings)) as client:
        assert client.app.state.services.warmup.wait(60)
        reply = client.get("/readyz")
    assert time.monotonic() - started < 20
    assert reply.status_code == 200, reply.text
    detail = reply.json()["checks"]["warmup"]["detail"]
    assert "warm in" in detail and "text encoder not on this machine" in detail, detail
