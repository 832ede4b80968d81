"""Robustness: the OpenAPI schema fuzzed with schemathesis against a live app on a small archive
(PostgreSQL and SQLite), plus hostile inputs aimed at the usual weak spots.

Every response must be a documented status with a documented content type and a body matching
its schema, and no request may cause a server error. Errors are problem documents, so the checks
also hold the error paths to their schema.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app
from indexer.settings import Settings

pytest_plugins = ["tests.api_support"]

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
EXAMPLES = 10  # per operation, mode and backend: enough to walk every parameter, bounded in time


def _operations() -> list[tuple[str, str, GenerationMode]]:
    """(method, path, mode) of every documented operation: valid inputs for all, invalid ones
    for those that take any input. Building the app touches no database."""
    settings = Settings(home=Path("/nonexistent-ramdex-home"), database={"url": "sqlite:///x.db"})
    cases = []
    for path, item in create_app(settings).openapi()["paths"].items():
        if path == "/assets/register":
            # Registering server paths walks the file system in the background: never with
            # random paths (the route's own validation is tested in test_api_assets).
            continue
        for method, operation in item.items():
            cases.append((method.upper(), path, GenerationMode.POSITIVE))
            if operation.get("parameters") or operation.get("requestBody"):
                cases.append((method.upper(), path, GenerationMode.NEGATIVE))
    return cases


@pytest.fixture(scope="module")
def live_schema(archive):
    """The schema as the running app serves it (lifespan entered)."""
    return schemathesis.openapi.from_asgi("/openapi.json", archive.client.app)


@pytest.mark.parametrize(("method", "path", "mode"), _operations())
def test_openapi_fuzz(archive, live_schema, method: str, path: str, mode: GenerationMode) -> None:
    operation = live_schema[path][method]
    # Admin routes get an admin key; everything else a write key (every data route reachable).
    headers = archive.keys.admin if method == "PATCH" else archive.keys.write

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def run(case) -> None:
        case.call_and_validate(headers=headers, checks=CHECKS)

    run()


HOSTILE_TEXT = [
    "'; DROP TABLE assets; --",
    '" OR 1=1 --',
    "%",
    "_",
    "\\",
    "../../../../etc/passwd",
    "\x00",
    "🐈\u200b\u202e",
    "a" * 5000,
    "狗'--",
]


@pytest.mark.parametrize("text", HOSTILE_TEXT)
def test_hostile_text_in_every_text_field(archive, text) -> None:
    c, k = archive.client, archive.keys
    checks = [
        c.get("/tags", params={"prefix": text}, headers=k.read),
        c.post("/search", json={"all": [text]}, headers=k.read),
        c.post("/search", json={"none": [text], "any": [text]}, headers=k.read),
        c.get("/search", params={"mime": text, "cursor": text}, headers=k.read),
        c.post("/search", json={"text": text, "limit": 1}, headers=k.read),
        c.post("/concepts", json={"name": text, "descriptions": [text]}, headers=k.write),
        c.get(f"/assets/{quote(text, safe='')}", headers=k.read),
        c.get(f"/tags/{quote(text, safe='')}", headers=k.read),
    ]
    for reply in checks:
        assert reply.status_code < 500, (reply.request.url, reply.text)
        if reply.status_code >= 400:
            assert reply.headers["content-type"].startswith("application/problem+json")
    # The tables survived.
    assert c.get("/tags?limit=1", headers=k.read).json()["items"]


@given(
    token=st.text(max_size=80)
    | st.builds(lambda s: f"rdx_{s}", st.text(alphabet="0123456789abcdef_", max_size=40))
)
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_random_keys_are_refused_cleanly(archive, token) -> None:
    # Every token must reach the key check: lift the per-client failure throttle (after
    # api.auth_failure_limit failures it answers 429 first; tests/test_api_hardening.py).
    state = archive.client.app.state
    throttle, state.auth_throttle = state.auth_throttle, None
    try:
        for headers in ({"Authorization": f"Bearer {token}"}, {"X-API-Key": token}):
            try:
                reply = archive.client.get("/me", headers=headers)
            except (UnicodeEncodeError, ValueError):
                continue  # not a valid header value: no HTTP request can carry it
            assert reply.status_code == 401, reply.text
            assert reply.headers["content-type"].startswith("application/problem+json")
    finally:
        state.auth_throttle = throttle


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b"{" * 10_000),
        ("application/json", b"[]"),
        ("application/json", b"\xff\xfe\x00garbage"),
        ("text/plain", b"text=dog"),
        ("multipart/form-data; boundary=x", b"--x\r\nbroken"),
    ],
)
def test_malformed_bodies_are_client_errors(archive, content_type, body) -> None:
    for path in ("/search", "/concepts", "/assets"):
        reply = archive.client.post(
            path, content=body, headers={**archive.keys.write, "Content-Type": content_type}
        )
        assert 400 <= reply.status_code < 500, (path, reply.text)
        assert reply.headers["content-type"].startswith("application/problem+json")
