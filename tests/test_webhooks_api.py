"""/webhooks and ``ramdex webhooks`` on PostgreSQL and SQLite, with a real receiver on loopback
(``ingest.allow_private_urls`` on, loopback being private, except in the SSRF checks).

The app runs its embedded dispatcher (as ``ramdex serve`` does): an upload's asset.done and
job.done reach the receiver without anything but the server running.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api.app import create_app
from api.auth import create_key
from indexer.db.collections import Collection
from indexer.db.session import create_engine_for
from indexer.settings import Settings
from tests.api_support import MODEL, make_keys
from tests.cli_support import assert_first_line_error, run_ramdex
from tests.ingest_fixtures import encode, photo_like
from tests.webhook_support import Receiver

pytest_plugins = ["tests.api_support"]

SECRET = "whsec_api_test_secret_00000"


def app_settings(home: Path, url: str, *, private: bool = True) -> Settings:
    return Settings(
        home=home,
        database={"url": url},
        model={"name": MODEL, "device": "cpu"},
        broker={"url": ""},
        ingest={"allow_private_urls": private, "read_keywords": False},
        api={"require_auth": True, "warm_start": False},
        webhooks={"interval_s": 0.1, "timeout_s": 1.0, "retry_base_s": 0.05, "retry_max_s": 0.1},
    )


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def env(request, tmp_path_factory):
    # A database of its own: webhooks other modules left in the session's shared one (pointing
    # at receivers long gone) would get this module's events too, and their timeouts would
    # hold this module's deliveries back on a loaded machine.
    from tests.api_support import fresh_database

    with fresh_database(request.param, tmp_path_factory.mktemp("hooks-db")) as url:
        settings = app_settings(tmp_path_factory.mktemp("hooks-home"), url)
        keys = make_keys(url)
        receiver = Receiver(secret=SECRET).start()
        with TestClient(create_app(settings)) as client:
            yield client, keys, settings, receiver
        receiver.stop()


def wait_until(check, timeout_s: float = 30.0):
    deadline = time.monotonic() + timeout_s
    while not (found := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return found


def create(client, headers, **body):
    body = {"url": body.pop("url"), "events": ["asset.done"], **body}
    return client.post("/webhooks", json=body, headers=headers)


def test_create_list_show_delete_and_the_secret_shown_once(env):
    client, keys, _, receiver = env
    reply = create(client, keys.admin, url=receiver.url, events=["asset.done", "job.done"])
    assert reply.status_code == 201, reply.text
    made = reply.json()
    assert made["secret"].startswith("whsec_") and len(made["secret"]) > 30
    listed = client.get("/webhooks", headers=keys.admin).json()["items"]
    mine = [h for h in listed if h["id"] == made["id"]]
    assert mine and mine[0]["secret"] is None and mine[0]["events"] == ["asset.done", "job.done"]
    assert client.get(f"/webhooks/{made['id']}", headers=keys.admin).json()["secret"] is None
    assert create(client, keys.write, url=receiver.url).status_code == 403  # admin manages
    assert client.get("/webhooks", headers=keys.read).status_code == 403
    assert client.delete(f"/webhooks/{made['id']}", headers=keys.admin).status_code == 204
    assert client.get(f"/webhooks/{made['id']}", headers=keys.admin).status_code == 404


@pytest.mark.parametrize(
    "body,words",
    [
        ({"url": "ftp://example.com/hook"}, "http or https"),
        ({"url": "https://example.com/h", "events": ["asset.exploded"]}, "unknown event type"),
        ({"url": "RECEIVER", "collection_ids": [999999]}, "no collection"),
    ],
)
def test_bad_input_is_a_problem(env, body, words):
    client, keys, _, receiver = env
    body = {k: receiver.url if v == "RECEIVER" else v for k, v in body.items()}
    reply = create(client, keys.admin, **body)
    assert reply.status_code == 422
    assert reply.headers["content-type"].startswith("application/problem+json")
    assert words in reply.json()["detail"]


def test_private_addresses_are_refused(env, tmp_path):
    _, keys, settings, receiver = env
    strict = app_settings(tmp_path, settings.database_url, private=False)
    with TestClient(create_app(strict)) as client:
        for url in (receiver.url, "http://192.168.1.10/hook", "http://169.254.169.254/"):
            reply = create(client, keys.admin, url=url)
            assert reply.status_code == 422 and "not a public address" in reply.json()["detail"]


def test_ping_deliveries_and_replay(env):
    client, keys, _, receiver = env
    hid = create(client, keys.admin, url=receiver.url, secret=SECRET).json()["id"]
    receiver.mode = "fail"
    try:
        failed = client.post(f"/webhooks/{hid}/test", headers=keys.admin).json()
        assert (failed["status"], failed["attempts"], failed["last_status_code"]) == (
            "failed",
            1,
            500,
        )
    finally:
        receiver.mode = "ok"
    page = client.get(f"/webhooks/{hid}/deliveries", headers=keys.admin).json()["items"]
    assert [d["id"] for d in page][:1] == [failed["id"]]
    assert page[0]["body"]["events"][0]["type"] == "ping"
    again = client.post(
        f"/webhooks/{hid}/deliveries/{failed['id']}/replay", headers=keys.admin
    ).json()
    # Delivered now, by the replay or by the dispatcher's retry: never twice at once.
    assert again["status"] == "delivered" or wait_until(
        lambda: (
            client.get(f"/webhooks/{hid}/deliveries", headers=keys.admin).json()["items"][0][
                "status"
            ]
            == "delivered"
        )
    )
    pings = [r for r in receiver.requests if r.headers["X-Ramdex-Delivery"] == str(failed["id"])]
    assert len(pings) >= 2 and all(r.verified for r in pings)
    missing = client.post(f"/webhooks/{hid}/deliveries/987654/replay", headers=keys.admin)
    assert missing.status_code == 404
    client.delete(f"/webhooks/{hid}", headers=keys.admin)


def test_embedded_serve_delivers_upload_events(env):
    client, keys, _, receiver = env
    hid = create(
        client,
        keys.admin,
        url=receiver.url,
        secret=SECRET,
        events=["asset.done", "job.done"],
        max_wait_s=0,
    ).json()["id"]
    data = encode(photo_like(64, 48, seed=4242), "JPEG")
    reply = client.post("/assets", files={"file": ("x.jpg", data)}, headers=keys.write)
    assert reply.status_code == 202, reply.text
    asset_id, job_id = reply.json()["asset_ids"][0], reply.json()["job"]["id"]

    def got() -> bool:
        done = [e for e in receiver.events("asset.done") if asset_id in e["data"]["asset_ids"]]
        jobs = [e for e in receiver.events("job.done") if e["data"]["job_id"] == job_id]
        return bool(done and jobs)

    # The upload is processed first (slow on a machine loaded by a whole suite: the ingest's
    # own pace, up to two minutes), then its events must arrive within the usual 30 s.
    def ended() -> bool:
        job = client.get(f"/jobs/{job_id}", headers=keys.write).json()
        return job["status"] in ("done", "failed")

    wait_until(ended, timeout_s=120.0)
    wait_until(got)
    assert all(r.verified for r in receiver.requests)
    client.delete(f"/webhooks/{hid}", headers=keys.admin)


def test_a_collection_key_sees_and_makes_only_its_webhooks(env):
    client, keys, settings, receiver = env
    engine = create_engine_for(settings.database_url)
    try:
        with Session(engine) as s:
            a, b = Collection(name=f"A-{time.time_ns()}"), Collection(name=f"B-{time.time_ns()}")
            s.add_all([a, b])
            s.flush()
            token = create_key(s, name="team-a", scopes=["admin"], collection_ids=[a.id]).token
            s.commit()
            ca, cb = a.id, b.id
    finally:
        engine.dispose()
    team = {"Authorization": f"Bearer {token}"}
    everything = create(client, keys.admin, url=receiver.url).json()["id"]
    assert create(client, team, url=receiver.url).status_code == 403  # every asset: not its own
    assert create(client, team, url=receiver.url, collection_ids=[cb]).status_code == 403
    own = create(client, team, url=receiver.url, collection_ids=[ca])
    assert own.status_code == 201, own.text
    seen = [h["id"] for h in client.get("/webhooks", headers=team).json()["items"]]
    assert seen == [own.json()["id"]]
    for path in (f"/webhooks/{everything}", f"/webhooks/{everything}/deliveries"):
        assert client.get(path, headers=team).status_code == 404
    assert client.post(f"/webhooks/{everything}/test", headers=team).status_code == 404
    assert client.delete(f"/webhooks/{everything}", headers=team).status_code == 404
    client.delete(f"/webhooks/{everything}", headers=keys.admin)
    client.delete(f"/webhooks/{own.json()['id']}", headers=keys.admin)


def test_cli_add_list_test_deliveries_replay_remove(env, monkeypatch):
    _, _, settings, receiver = env
    monkeypatch.setenv("RAMDEX_DATABASE__URL", settings.database_url)
    monkeypatch.setenv("RAMDEX_HOME", str(settings.home))
    monkeypatch.setenv("RAMDEX_INGEST__ALLOW_PRIVATE_URLS", "true")
    code, out = run_ramdex(
        "webhooks", "add", receiver.url, "--events", "asset.done,job.done", "--secret", SECRET
    )
    assert code == 0, out
    hid = int(out.split()[1].rstrip(":"))
    assert f"secret: {SECRET}" in out
    code, out = run_ramdex("webhooks", "list")
    assert code == 0 and receiver.url in out and SECRET not in out
    code, out = run_ramdex("webhooks", "test", str(hid))
    assert code == 0 and "delivered" in out, out
    code, out = run_ramdex("webhooks", "deliveries", str(hid))
    assert code == 0 and "delivered" in out and "HTTP 204" in out
    delivery = out.split()[0]
    code, out = run_ramdex("webhooks", "replay", str(hid), delivery)
    assert code == 0 and "delivered" in out, out
    code, out = run_ramdex("webhooks", "remove", str(hid))
    assert code == 0
    code, out = run_ramdex("webhooks", "remove", str(hid))
    assert_first_line_error(code, out, "no webhook")


@pytest.mark.parametrize(
    "args,words",
    [
        (["file:///etc/passwd", "--events", "asset.done"], "http or https"),
        (["https://example.com/x", "--events", "asset.nope"], "unknown event type"),
        (["https://example.com/x", "--events", "asset.done", "--collection", "nope"], "nope"),
    ],
)
def test_cli_bad_input_is_one_error_line(env, monkeypatch, args, words):
    _, _, settings, _ = env
    monkeypatch.setenv("RAMDEX_DATABASE__URL", settings.database_url)
    monkeypatch.setenv("RAMDEX_HOME", str(settings.home))
    assert_first_line_error(*run_ramdex("webhooks", "add", *args), words)


def test_cli_refuses_a_private_address(env, monkeypatch):
    _, _, settings, receiver = env
    monkeypatch.setenv("RAMDEX_DATABASE__URL", settings.database_url)
    monkeypatch.setenv("RAMDEX_HOME", str(settings.home))
    monkeypatch.setenv("RAMDEX_INGEST__ALLOW_PRIVATE_URLS", "false")
    code, out = run_ramdex("webhooks", "add", receiver.url, "--events", "asset.done")
    assert_first_line_error(code, out, "not a public address")
