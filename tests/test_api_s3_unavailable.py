"""The API when the token store on object storage goes away: a concept search answers 503 with a
problem document that names the cause and what to do, never a 500.

The object store is a real moto S3 server this test starts (tests/s3_support.py) and kills; the
archive is ingested through the API into it (embedded mode, SQLite, the tiny random model).
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from tests.api_support import fresh_database, make_keys, make_settings, wait_for_job
from tests.ingest_fixtures import encode, photo_like
from tests.s3_support import CREDS, s3_client, start_server, stop_server

pytest_plugins = ["tests.api_support"]


def _assert_unavailable(reply) -> None:  # noqa: ANN001 - an httpx response
    assert reply.status_code == 503, reply.text
    assert reply.headers["content-type"].startswith("application/problem+json")
    problem = reply.json()
    assert problem["status"] == 503 and problem["type"].endswith("/token-store-unavailable")
    detail = problem["detail"]
    assert "token store s3://" in detail and "did not answer" in detail, detail  # the cause
    assert "RAMDEX_INDEX__S3__ENDPOINT_URL" in detail, detail  # what to check


def test_concept_search_is_503_when_the_object_store_is_away(
    tmp_path, monkeypatch: pytest.MonkeyPatch, text_encoder_dir
) -> None:
    for key, value in CREDS.items():
        monkeypatch.setenv(key, value)
    proc, endpoint = start_server()
    try:
        s3_client(endpoint).create_bucket(Bucket="tokens")
        for key, value in {
            "TOKEN_STORE_URL": "s3://tokens/archive",
            "S3__ENDPOINT_URL": endpoint,
            "S3__REGION": "us-east-1",
            "S3__CONNECT_TIMEOUT_S": "1",
            "S3__READ_TIMEOUT_S": "2",
        }.items():
            monkeypatch.setenv(f"RAMDEX_INDEX__{key}", value)  # make_settings leaves index alone
        with fresh_database("sqlite", tmp_path) as url:
            settings = make_settings(tmp_path / "home", url, text_encoder_dir)
            assert settings.index.token_store_url == "s3://tokens/archive"
            keys = make_keys(url)
            body = {"text": "red kite over a harbour", "limit": 10}
            with TestClient(create_app(settings)) as client:
                jobs = []
                for i in range(3):
                    data = encode(photo_like(64, 48, seed=200 + i), "JPEG")
                    reply = client.post(
                        "/assets", files={"file": (f"p{i}.jpg", data)}, headers=keys.write
                    )
                    assert reply.status_code == 202, reply.text
                    jobs.append(reply.json()["job"]["id"])
                for job_id in jobs:
                    assert wait_for_job(client, keys.read, job_id)["status"] == "done"
                client.app.state.services.wait_background(timeout_s=60)
                stored = s3_client(endpoint).list_objects_v2(Bucket="tokens")["Contents"]
                assert any(o["Key"].endswith("manifest.json") for o in stored)
                reply = client.post("/search", json=body, headers=keys.read)
                assert reply.status_code == 200 and len(reply.json()["hits"]) == 3, reply.text

                stop_server(proc)  # the object store goes away under a running service
                # the open store's refresh (and then its reads) cannot reach it; a new concept
                # (the same one's ranking is cached for a minute and still answers)
                other = {"text": "lighthouse in fog", "limit": 10}
                _assert_unavailable(client.post("/search", json=other, headers=keys.read))
                reply = client.post("/search", json={"limit": 5}, headers=keys.read)
                assert reply.status_code == 200, reply.text  # no concept: no token store needed

            # a service started while the store is away: Archive.token_store() cannot open it
            with TestClient(create_app(settings)) as client:
                _assert_unavailable(client.post("/search", json=body, headers=keys.read))
    finally:
        stop_server(proc)
