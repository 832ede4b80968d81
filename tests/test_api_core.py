"""API basics on both backends: health, readiness, metrics, keys and scopes, problem documents,
body limits, CORS and the OpenAPI description of errors."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api.app import create_app
from api.auth import create_key, hash_secret, parse_token, revoke_key
from indexer.db.api_keys import ApiKey
from indexer.db.session import create_engine_for

pytest_plugins = ["tests.api_support"]

PROBLEM = "application/problem+json"


def assert_problem(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["status"] == status
    assert body["title"]
    assert body["instance"] == response.request.url.path
    return body


def test_health_needs_no_key(api_env) -> None:
    client, _, _ = api_env
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    checks = ready.json()["checks"]
    assert checks["database"]["ok"] and checks["broker"]["ok"] and checks["index"]["ok"]
    assert "k001" in checks["database"]["detail"] or "schema" in checks["database"]["detail"]


def test_readyz_reports_an_unmigrated_database(tmp_path, settings_for) -> None:
    url = f"sqlite:///{tmp_path / 'empty.sqlite3'}"
    with TestClient(create_app(settings_for(tmp_path / "home", url))) as client:
        body = assert_problem(client.get("/readyz"), 503)
    assert body["checks"]["database"]["ok"] is False
    assert "migrate" in body["checks"]["database"]["detail"]


def test_readyz_reports_a_broker_that_is_down(tmp_path, sqlite_url, settings_for) -> None:
    settings = settings_for(tmp_path, sqlite_url)
    settings.broker.url = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    with TestClient(create_app(settings)) as client:
        response = client.get("/readyz")
    body = assert_problem(response, 503)
    assert response.headers["retry-after"] == "5"
    assert body["checks"]["broker"]["ok"] is False and body["checks"]["database"]["ok"] is True


def test_readyz_reports_embeddings_without_an_index(archive) -> None:
    from indexer.faiss_index import index_path
    from indexer.models import configured_model_id

    client, settings = archive.client, archive.settings
    assert client.get("/readyz").json()["checks"]["index"]["detail"].startswith("flat, ")
    path = index_path(settings.index_dir, configured_model_id(settings))
    moved = path.with_name(path.name + ".away")
    path.rename(moved)
    try:
        client.app.state.services.forget("vector_index")
        body = assert_problem(client.get("/readyz"), 503)
        assert "ramdex index sync" in body["checks"]["index"]["detail"]
    finally:
        moved.rename(path)
        client.app.state.services.forget("vector_index")
    assert client.get("/readyz").status_code == 200


def test_metrics_expose_request_latency_by_route(api_env) -> None:
    client, keys, _ = api_env
    client.get("/jobs/12345", headers=keys.read)
    text = client.get("/metrics", headers=keys.read).text
    assert re.search(
        r'ramdex_http_request_duration_seconds_count\{method="GET",route="/jobs/\{job_id\}",'
        r'status="404"\} [1-9]',
        text,
    ), text[:2000]
    for family in ("ramdex_assets", "ramdex_jobs", "ramdex_queue_depth", "ramdex_model_latency"):
        assert f"# TYPE {family}" in text
    assert "ramdex_ingest_rate_assets_per_second" in text


def test_archive_gauges_are_counted_once_per_cache_period(api_env, monkeypatch) -> None:
    from api.metrics import ArchiveStats

    client, keys, settings = api_env
    services = client.app.state.services
    counts = []

    def count_now() -> ArchiveStats:  # each real count returns a new number
        counts.append(1)
        return ArchiveStats(assets_by_status={"done": len(counts)})

    monkeypatch.setattr(services, "read_archive_stats", count_now)
    monkeypatch.setattr(services, "_stats", None)
    monkeypatch.setattr(settings.api, "metrics_cache_s", 3600.0)
    for _ in range(3):
        assert 'ramdex_assets{status="done"} 1.0' in client.get("/metrics", headers=keys.read).text
    monkeypatch.setattr(settings.api, "metrics_cache_s", 0.0)
    assert 'ramdex_assets{status="done"} 2.0' in client.get("/metrics", headers=keys.read).text


def test_every_data_route_needs_a_key(api_env) -> None:
    client, _, _ = api_env
    openapi = client.get("/openapi.json").json()
    open_paths = {"/healthz", "/readyz"}  # /metrics needs a key too (api.metrics_access=key)
    checked = 0
    for path, item in openapi["paths"].items():
        if path in open_paths:
            continue
        for method in item:
            concrete = re.sub(r"\{[^}]+\}", "1", path)
            response = client.request(method.upper(), concrete)
            body = assert_problem(response, 401)
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert "API key" in body["detail"]
            checked += 1
    assert checked >= 8


@pytest.mark.parametrize(
    "header",
    [
        {"Authorization": "Bearer nonsense"},
        {"Authorization": "Bearer rdx_0123456789ab_wrongsecret"},
        {"X-API-Key": "rdx_zzzzzzzzzzzz_x"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
    ],
)
def test_wrong_keys_are_refused(api_env, header) -> None:
    client, _, _ = api_env
    assert_problem(client.get("/me", headers=header), 401)


def test_key_with_right_id_but_wrong_secret_is_refused(api_env) -> None:
    client, keys, _ = api_env
    token = keys.read["Authorization"].removeprefix("Bearer ")
    key_id, secret = parse_token(token)
    forged = f"rdx_{key_id}_{secret[:-1]}{'A' if secret[-1] != 'A' else 'B'}"
    assert_problem(client.get("/me", headers={"Authorization": f"Bearer {forged}"}), 401)


def test_scopes_nest_and_are_enforced(api_env) -> None:
    client, keys, _ = api_env
    me = client.get("/me", headers=keys.read).json()
    assert me["scopes"] == ["read"] and me["name"] == "test-read"
    assert client.get("/me", headers={"X-API-Key": keys.admin["Authorization"][7:]}).json()[
        "scopes"
    ] == ["admin"]
    # Setting a tag threshold needs admin: read and write keys get 403, admin passes auth (404).
    for headers in (keys.read, keys.write):
        body = assert_problem(
            client.patch("/tags/999999", json={"threshold_override": 0.5}, headers=headers), 403
        )
        assert "admin" in body["detail"]
    assert_problem(
        client.patch("/tags/999999", json={"threshold_override": 0.5}, headers=keys.admin), 404
    )


def test_keys_are_hashed_at_rest_and_revocable(api_env, api_db_url) -> None:
    client, _, _ = api_env
    engine = create_engine_for(api_db_url)
    try:
        with Session(engine) as session:
            key = create_key(session, name="temp", scopes=["read"])
            session.commit()
        with Session(engine) as session:
            row = session.query(ApiKey).filter_by(key_id=key.key_id).one()
            secret = key.token.split("_", 2)[2]
            assert secret not in row.secret_hash and row.secret_hash == hash_secret(secret)
        headers = {"Authorization": f"Bearer {key.token}"}
        assert client.get("/me", headers=headers).status_code == 200
        with Session(engine) as session:
            assert revoke_key(session, key.key_id)
            session.commit()
        assert_problem(client.get("/me", headers=headers), 401)
    finally:
        engine.dispose()


def test_auth_can_be_switched_off(tmp_path, sqlite_url, settings_for) -> None:
    settings = settings_for(tmp_path, sqlite_url, require_auth=False)
    with TestClient(create_app(settings)) as client:
        assert client.get("/me").json()["scopes"] == ["read", "write", "admin"]


def test_unknown_path_and_wrong_method_are_problems(api_env) -> None:
    client, keys, _ = api_env
    assert_problem(client.get("/no/such/thing", headers=keys.read), 404)
    assert_problem(client.put("/healthz"), 405)


def test_validation_errors_are_problems_with_field_errors(api_env) -> None:
    client, keys, _ = api_env
    body = assert_problem(client.get("/tags?limit=0", headers=keys.read), 422)
    assert body["errors"][0]["loc"] == ["query", "limit"]
    body = assert_problem(client.get("/assets/abc", headers=keys.read), 422)
    assert body["errors"][0]["loc"][:2] == ["path", "asset_id"]
    assert_problem(client.get(f"/assets/{2**70}", headers=keys.read), 422)
    body = assert_problem(
        client.patch(
            "/tags/1",
            content=b"{not json",
            headers={**keys.admin, "Content-Type": "application/json"},
        ),
        422,
    )
    assert body["errors"]


def test_oversize_json_body_is_413(api_env) -> None:
    client, keys, settings = api_env
    big = b'{"threshold_override": 0.5, "pad": "' + b"x" * settings.api.max_json_bytes + b'"}'
    response = client.patch(
        "/tags/1", content=big, headers={**keys.admin, "Content-Type": "application/json"}
    )
    assert_problem(response, 413)


def test_cors_is_off_by_default_and_configurable(
    tmp_path, sqlite_url, api_env, settings_for
) -> None:
    client, _, _ = api_env
    preflight = {"Origin": "https://dam.example", "Access-Control-Request-Method": "GET"}
    assert "access-control-allow-origin" not in client.options("/me", headers=preflight).headers
    settings = settings_for(tmp_path, sqlite_url, cors_origins=["https://dam.example"])
    with TestClient(create_app(settings)) as cors_client:
        response = cors_client.options(
            "/me", headers={**preflight, "Access-Control-Request-Headers": "authorization"}
        )
        assert response.headers["access-control-allow-origin"] == "https://dam.example"
        other = cors_client.options("/me", headers={**preflight, "Origin": "https://evil.example"})
        assert other.headers.get("access-control-allow-origin") != "https://evil.example"


def test_openapi_documents_errors_as_problems(api_env) -> None:
    client, _, _ = api_env
    schema = client.get("/openapi.json").json()
    assert "Problem" in schema["components"]["schemas"]
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    for item in schema["paths"].values():
        for operation in item.values():
            for code, response in operation["responses"].items():
                if code == "default" or code[0] in "45":
                    assert list(response["content"]) == [PROBLEM], (code, operation["summary"])


def test_web_ui_is_served(api_env) -> None:
    client, _, _ = api_env
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text):
        assert client.get(asset).status_code == 200, asset
