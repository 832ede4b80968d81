"""Assets, concepts, tags and jobs through the API (PostgreSQL and SQLite): upload, dedup, bad
files, thumbnails and originals, delete everywhere, register by path, threshold overrides, and
concepts that become tags through their backfill."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from api.submit import upload_source
from indexer.models import configured_model_id
from indexer.stores import token_store_path
from indexer.token_store import TokenStore
from tests.ingest_fixtures import encode, photo_like, write_images

pytest_plugins = ["tests.api_support"]


def upload(archive, data: bytes, name: str = "x.jpg", headers=None):
    return archive.client.post(
        "/assets", files={"file": (name, data)}, headers=headers or archive.keys.write
    )


def test_upload_returns_a_job_and_the_asset(archive, wait_job) -> None:
    data = encode(photo_like(120, 90, seed=7), "WEBP")
    reply = upload(archive, data, name="../../etc/passwd\\..\\evil.webp")
    assert reply.status_code == 202, reply.text
    body = reply.json()
    asset_id = body["asset_ids"][0]
    assert wait_job(archive.client, archive.keys.read, body["job"]["id"])["done"] == 1
    detail = archive.client.get(f"/assets/{asset_id}", headers=archive.keys.read).json()
    assert detail["status"] == "done" and (detail["width"], detail["height"]) == (120, 90)
    # The client's file name is a label only: no folders.
    assert detail["sources"][0]["uri"] == "upload:evil.webp"
    original = archive.client.get(f"/assets/{asset_id}/original", headers=archive.keys.read)
    assert original.status_code == 200 and original.content == data
    assert original.headers["content-type"] == "image/webp"
    thumb = archive.client.get(f"/assets/{asset_id}/thumbnail", headers=archive.keys.read)
    assert thumb.headers["content-type"] == "image/webp"
    with Image.open(io.BytesIO(thumb.content)) as image:
        assert max(image.size) <= archive.settings.ingest.thumbnail_size
    again = archive.client.get(
        f"/assets/{asset_id}/thumbnail",
        headers={**archive.keys.read, "If-None-Match": thumb.headers["etag"]},
    )
    assert again.status_code == 304


@pytest.mark.parametrize(
    ("name", "source"),
    [
        ("../../etc/passwd", "upload:passwd"),
        ("C:\\Windows\\win.ini", "upload:win.ini"),
        ("a\x00b/c\x07d\r\n.jpg", "upload:c_d_.jpg"),
        ("..", "upload:unnamed"),
        (None, "upload:unnamed"),
        ("x" * 500, "upload:" + "x" * 200),
    ],
)
def test_upload_names_are_labels_not_paths(name, source) -> None:
    assert upload_source(name) == source


def test_same_bytes_twice_are_one_asset(archive) -> None:
    asset_id, data = next(iter(archive.images.items()))
    reply = upload(archive, data, name="copy.jpg")
    assert reply.status_code == 200 and reply.json()["duplicates"] == [asset_id]
    detail = archive.client.get(f"/assets/{asset_id}", headers=archive.keys.read).json()
    assert "upload:copy.jpg" in [s["uri"] for s in detail["sources"]]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"%PDF-1.4 definitely not an image", "not a supported image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, None),  # a PNG signature, then garbage
    ],
)
def test_bad_files_are_refused_or_fail_with_a_reason(archive, wait_job, data, reason) -> None:
    reply = upload(archive, data, name="bad.png")
    if reason is not None:  # refused at registration
        assert reply.status_code == 422, reply.text
        assert reason in reply.json()["detail"]
        return
    assert reply.status_code == 202  # looks like an image: fails when decoded
    job = wait_job(archive.client, archive.keys.read, reply.json()["job"]["id"])
    assert job["failed"] == 1
    detail = archive.client.get(
        f"/assets/{reply.json()['asset_ids'][0]}", headers=archive.keys.read
    ).json()
    assert detail["status"] == "failed" and detail["error"]


def test_oversize_upload_is_413(archive) -> None:
    data = b"\xff\xd8\xff" + b"\x00" * (archive.settings.api.max_upload_bytes + 1)
    reply = upload(archive, data, name="huge.jpg")
    assert reply.status_code == 413
    assert reply.headers["content-type"].startswith("application/problem+json")


def test_uploads_need_the_write_scope(archive) -> None:
    reply = upload(archive, b"x", headers=archive.keys.read)
    assert reply.status_code == 403


def test_delete_removes_the_asset_everywhere(archive, wait_job) -> None:
    reply = upload(archive, encode(photo_like(64, 64, seed=77), "JPEG"), name="gone.jpg")
    asset_id = reply.json()["asset_ids"][0]
    wait_job(archive.client, archive.keys.read, reply.json()["job"]["id"])
    c, k = archive.client, archive.keys
    sha = c.get(f"/assets/{asset_id}", headers=k.read).json()["sha256"]
    media_files = [p for p in archive.settings.media_dir.rglob(f"{sha}*") if p.is_file()]
    assert len(media_files) == 2  # the original and its thumbnail
    store_path = token_store_path(archive.settings, configured_model_id(archive.settings))
    assert asset_id in TokenStore(store_path, read_only=True)
    ranked = c.post("/search", json={"text": "gone", "limit": 200}, headers=k.read).json()
    assert asset_id in [h["asset"]["id"] for h in ranked["hits"]]

    assert c.delete(f"/assets/{asset_id}", headers=k.read).status_code == 403
    assert c.delete(f"/assets/{asset_id}", headers=k.write).status_code == 204
    assert c.get(f"/assets/{asset_id}", headers=k.read).status_code == 404
    assert c.get(f"/assets/{asset_id}/original", headers=k.read).status_code == 404
    assert c.delete(f"/assets/{asset_id}", headers=k.write).status_code == 404
    assert asset_id not in TokenStore(store_path, read_only=True)
    for body in ({"text": "gone", "limit": 200}, {"limit": 200}):
        page = c.post("/search", json=body, headers=k.read).json()
        assert asset_id not in [h["asset"]["id"] for h in page["hits"]]
    other = min(archive.images)
    page = c.post("/search", json={"similar_to": other, "limit": 200}, headers=k.read).json()
    assert asset_id not in [h["asset"]["id"] for h in page["hits"]]
    assert not any(p.exists() for p in media_files)


def test_register_server_paths_is_admin_only(archive, wait_job, tmp_path, monkeypatch) -> None:
    folder = tmp_path / "incoming"
    write_images(folder, 2, size=(50, 40), start=500)
    c, k = archive.client, archive.keys
    body = {"paths": [str(folder)]}
    assert c.post("/assets/register", json=body, headers=k.write).status_code == 403
    assert (
        c.post("/assets/register", json={"paths": ["relative/x"]}, headers=k.admin).status_code
        == 422
    )
    assert (
        c.post(
            "/assets/register", json={"urls": ["file:///etc/passwd"]}, headers=k.admin
        ).status_code
        == 422
    )
    # Server paths only inside storage.allowed_roots (tests/test_api_hardening.py goes further).
    monkeypatch.setattr(archive.settings.storage, "allowed_roots", [tmp_path])
    reply = c.post("/assets/register", json=body, headers=k.admin)
    assert reply.status_code == 202, reply.text
    job = wait_job(c, k.read, reply.json()["job"]["id"])
    assert (job["status"], job["done"], job["failed"]) == ("done", 2, 0)
    missing = c.post(
        "/assets/register", json={"paths": [str(tmp_path / "nope.jpg")]}, headers=k.admin
    )
    job = wait_job(c, k.read, missing.json()["job"]["id"])
    assert job["params"]["failures"][0]["reason"] == "no such file or folder"


def test_threshold_override_changes_what_a_tag_matches(archive) -> None:
    c, k = archive.client, archive.keys
    tag = c.get("/tags?limit=1", headers=k.read).json()["items"][0]
    before = c.post("/search", json={"all": [tag["name"]], "limit": 200}, headers=k.read).json()
    reply = c.patch(f"/tags/{tag['id']}", json={"threshold_override": 0.0}, headers=k.admin)
    assert reply.status_code == 200 and reply.json()["threshold"] == 0.0
    after = c.post("/search", json={"all": [tag["name"]], "limit": 200}, headers=k.read).json()
    holders = [
        i for i in archive.images
        if tag["name"] in [t["name"] for t in c.get(f"/assets/{i}", headers=k.read).json()["tags"]]
    ]  # fmt: skip
    assert {h["asset"]["id"] for h in after["hits"]} >= set(holders)
    assert len(after["hits"]) > len(before["hits"])
    reset = c.patch(f"/tags/{tag['id']}", json={"threshold_override": None}, headers=k.admin)
    assert reset.json()["threshold"] == pytest.approx(tag["model_threshold"])
    assert (
        c.patch(f"/tags/{tag['id']}", json={"threshold_override": 2}, headers=k.admin).status_code
        == 422
    )


def test_probabilities_too_small_for_a_real_column_are_stored_as_zero(archive) -> None:
    """Found by the fuzzer: 1e-320 made PostgreSQL's REAL column raise "underflow" (a 500)."""
    c, k = archive.client, archive.keys
    tag = c.get("/tags?limit=1", headers=k.read).json()["items"][0]
    reply = c.patch(f"/tags/{tag['id']}", json={"threshold_override": 1e-320}, headers=k.admin)
    assert reply.status_code == 200 and reply.json()["threshold"] == 0.0
    c.patch(f"/tags/{tag['id']}", json={"threshold_override": None}, headers=k.admin)
    found = c.post("/search", json={"all": [tag["name"]], "min_score": 1e-320}, headers=k.read)
    assert found.status_code == 200


def test_tag_prefix_search_for_autocomplete(archive) -> None:
    c, k = archive.client, archive.keys
    items = c.get("/tags?prefix=AB&limit=10", headers=k.read).json()["items"]
    assert items and all(t["name"].lower().startswith("ab") for t in items)
    zh = items[0]["name_zh"]
    by_zh = c.get("/tags", params={"prefix": zh[:1]}, headers=k.read).json()["items"]
    assert items[0]["id"] in [t["id"] for t in by_zh]
    assert c.get("/tags?prefix=%25", headers=k.read).json()["items"] == []  # LIKE wildcards escaped
    assert c.get("/tags?prefix=_", headers=k.read).json()["items"] == []


def test_concept_becomes_a_tag_scored_for_every_asset(archive, wait_job, reference_probs) -> None:
    c, k = archive.client, archive.keys
    name = "sustainability campaign"
    mine = ["a poster about recycling and green energy"]
    reply = c.post("/concepts", json={"name": name, "descriptions": mine}, headers=k.write)
    assert reply.status_code == 202, reply.text
    created = reply.json()
    job = wait_job(c, k.read, created["job"]["id"])
    assert job["status"] == "done" and job["kind"] == "backfill"
    assert job["done"] == job["total"] >= len(archive.images)
    concept = c.get(f"/concepts/{created['concept']['id']}", headers=k.read).json()
    assert concept["status"] == "promoted" and concept["tag_id"]
    assert concept["descriptions"] == [  # given descriptions: no prompt templates added
        f"a photo of a {name}.",
        "a poster about recycling and green energy",
    ]
    tag = c.get(f"/tags/{concept['tag_id']}", headers=k.read).json()
    assert tag["origin"] == "concept" and tag["name"] == name
    assert name in [
        t["name"] for t in c.get("/tags?prefix=sustain", headers=k.read).json()["items"]
    ]

    # Every asset got the model's score for the concept (those above the floor are stored):
    # it is now filterable like a built-in tag.
    as_tag = c.post(
        "/search", json={"all": [name], "min_score": 0.0, "limit": 200}, headers=k.read
    ).json()
    tag_scores = {h["asset"]["id"]: h["score"] for h in as_tag["hits"]}
    floor = archive.settings.index.score_floor
    reference = reference_probs(archive.settings, name, mine)
    assert tag_scores == pytest.approx({i: p for i, p in reference.items() if p >= floor}, abs=1e-5)
    assert len(tag_scores) >= len(archive.images) // 2

    # New ingests are scored for the concept too.
    reply = upload(archive, encode(photo_like(70, 50, seed=4242), "JPEG"), name="later.jpg")
    new_id = reply.json()["asset_ids"][0]
    wait_job(c, k.read, reply.json()["job"]["id"])
    archive.client.app.state.services.wait_background(timeout_s=60)
    after = c.post(
        "/search", json={"all": [name], "min_score": 0.0, "limit": 200}, headers=k.read
    ).json()
    expected = reference_probs(archive.settings, name, mine)[new_id]
    new_scores = {h["asset"]["id"]: h["score"] for h in after["hits"]}
    if expected >= floor:
        assert new_scores[new_id] == pytest.approx(expected, abs=1e-5)
    else:
        assert new_id not in new_scores

    # Run again (as a redelivered backfill task would): its parts are done, so nothing is
    # scored twice and progress is counted once (the later asset was scored at its ingest).
    services = archive.client.app.state.services
    services.backfill_concept(created["concept"]["id"], created["job"]["id"])
    again = c.get(f"/jobs/{created['job']['id']}", headers=k.read).json()
    assert again["status"] == "done" and again["done"] == again["total"] == job["total"]
    rerun = c.post(
        "/search", json={"all": [name], "min_score": 0.0, "limit": 200}, headers=k.read
    ).json()
    assert {h["asset"]["id"]: h["score"] for h in rerun["hits"]} == new_scores

    dupe = c.post("/concepts", json={"name": name}, headers=k.write)
    assert dupe.status_code == 409
    builtin = c.get("/tags?origin=builtin&limit=1", headers=k.read).json()["items"][0]["name"]
    assert c.post("/concepts", json={"name": builtin.upper()}, headers=k.write).status_code == 409
    assert (
        c.post("/concepts", json={"name": "x", "generate": True}, headers=k.write).status_code
        == 422
    )
    assert c.delete(f"/concepts/{concept['id']}", headers=k.read).status_code == 403
    assert c.delete(f"/concepts/{concept['id']}", headers=k.write).status_code == 204
    assert c.get(f"/tags/{concept['tag_id']}", headers=k.read).status_code == 404
    assert c.post("/search", json={"all": [name]}, headers=k.read).status_code == 422


def test_jobs_list_and_not_found(archive) -> None:
    c, k = archive.client, archive.keys
    jobs = c.get("/jobs?limit=5", headers=k.read).json()["items"]
    assert jobs and all(j["kind"] in ("ingest", "backfill", "reindex") for j in jobs)
    assert [j["id"] for j in jobs] == sorted((j["id"] for j in jobs), reverse=True)
    assert c.get("/jobs/999999", headers=k.read).status_code == 404
    assert c.get("/jobs?status=bogus", headers=k.read).status_code == 422


def test_with_a_broker_uploads_become_model_tasks_and_queue_depth_is_reported(
    sqlite_url, settings_for, tmp_path
) -> None:
    """Broker mode against the real Redis: the upload is a message on the model queue (no worker
    consumes this test's own queue), and /metrics reports the queue's depth."""
    import uuid

    import redis
    from fastapi.testclient import TestClient

    from api.app import create_app
    from tests.api_support import make_keys

    settings = settings_for(tmp_path, sqlite_url)
    queue = f"ramdex-api-test-{uuid.uuid4().hex[:8]}"
    settings.broker.url = "redis://127.0.0.1:6379/14"
    settings.broker.model_queue = f"{queue}.model"
    settings.broker.default_queue = f"{queue}.default"
    keys = make_keys(sqlite_url)
    client_redis = redis.Redis.from_url(settings.broker.url)
    try:
        with TestClient(create_app(settings)) as client:
            data = encode(photo_like(40, 30, seed=901), "JPEG")
            reply = client.post("/assets", files={"file": ("q.jpg", data)}, headers=keys.write)
            assert reply.status_code == 202, reply.text
            assert reply.json()["job"]["status"] in ("pending", "running")
            assert client.get("/readyz").json()["checks"]["broker"]["detail"] == "redis"
            metrics = client.get("/metrics", headers=keys.read).text
            assert f'ramdex_queue_depth{{queue="{settings.broker.model_queue}"}} 1.0' in metrics
            assert f'ramdex_queue_depth{{queue="{settings.broker.default_queue}"}} 0.0' in metrics
            message = json.loads(client_redis.lindex(settings.broker.model_queue, 0))
            assert message["headers"]["task"] == "ramdex.process_assets"
            assert message["headers"]["argsrepr"].startswith(f"[[{reply.json()['asset_ids'][0]}]")
    finally:
        for key in client_redis.scan_iter(f"*{queue}*"):
            client_redis.delete(key)
