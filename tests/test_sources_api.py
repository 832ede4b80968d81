"""The /sources API on PostgreSQL and SQLite, with the embedded server's own scheduler scanning
what is added (the app runs in-process, its lifespan and threads as ``ramdex serve`` runs them):
scopes, keys limited to collections (403 for another collection, 404 for its sources), folders
confined to ``storage.allowed_roots``, problems for bad sources.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api.app import create_app
from api.auth import create_key
from indexer.db.collection_repo import ensure_collection
from indexer.db.session import create_engine_for
from indexer.sources.manage import add_source
from tests.api_support import fresh_database, make_keys, make_settings
from tests.sources_support import image_bytes, wait_until


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def app_env(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"sources-api-{request.param}")
    roots = folder / "roots"
    for name in ("one", "team-a", "team-b"):
        (roots / name).mkdir(parents=True)
    for i in range(2):
        (roots / "one" / f"{i}.jpg").write_bytes(image_bytes(200 + i))
    with fresh_database(request.param, folder) as url:
        settings = make_settings(folder / "home", url)
        settings.storage.allowed_roots = [roots]
        settings.sources.tick_s = 0.3
        with session_scope_for(url) as session:
            a = ensure_collection(session, "A").id
            b = ensure_collection(session, "B").id
            limited = create_key(session, name="team-a", scopes=["admin"], collection_ids=[a])
            session.commit()
        keys = make_keys(url)
        with TestClient(create_app(settings)) as client:
            yield {
                "client": client,
                "keys": keys,
                "limited": {"Authorization": f"Bearer {limited.token}"},
                "roots": roots,
                "settings": settings,
                "collections": (a, b),
            }


class session_scope_for:  # noqa: N801 - reads like session_scope
    """A session on ``url`` through its own engine (closed afterwards)."""

    def __init__(self, url: str) -> None:
        self.engine = create_engine_for(url)

    def __enter__(self) -> Session:
        self.session = Session(self.engine)
        return self.session

    def __exit__(self, *exc: object) -> None:
        self.session.close()
        self.engine.dispose()


def test_add_scan_list_remove(app_env):
    client, keys, roots = app_env["client"], app_env["keys"], app_env["roots"]
    body = {"uri": str(roots / "one"), "interval": "1h"}
    assert client.post("/sources", json=body, headers=keys.read).status_code == 403
    reply = client.post("/sources", json=body, headers=keys.admin)
    assert reply.status_code == 201, reply.text
    source = reply.json()
    assert source["collection"] == str((roots / "one").resolve()) and source["kind"] == "folder"
    assert client.post("/sources", json=body, headers=keys.admin).status_code == 409

    # The server's scheduler scans it (due at once), no other step.
    def scanned():
        got = client.get(f"/sources/{source['id']}", headers=keys.admin).json()
        return got["last_status"] == "ok" and got["counts"]["assets"] == 2 and got

    got = wait_until(scanned, timeout_s=30)
    assert got["counts"] == {"objects": 2, "assets": 2, "gone": 0, "failed": 0}
    job = client.get(f"/jobs/{got['last_job_id']}", headers=keys.admin).json()
    assert job["status"] == "done" and job["done"] == 2

    (roots / "one" / "2.jpg").write_bytes(image_bytes(202))
    reply = client.post(f"/sources/{source['id']}/scan", headers=keys.admin)
    assert reply.status_code == 202 and "due now" in reply.json()["detail"]
    wait_until(
        lambda: (
            client.get(f"/sources/{source['id']}", headers=keys.admin).json()["counts"]["assets"]
            == 3
        ),
        timeout_s=30,
    )
    listed = client.get("/sources", headers=keys.read).json()["items"]
    mine = [s for s in listed if s["id"] == source["id"]]
    assert mine and mine[0]["uri"] == "server:one"  # read keys see no server paths

    assert client.delete(f"/sources/{source['id']}", headers=keys.write).status_code == 403
    assert client.delete(f"/sources/{source['id']}", headers=keys.admin).status_code == 204
    assert client.get(f"/sources/{source['id']}", headers=keys.admin).status_code == 404
    assert client.post(f"/sources/{source['id']}/scan", headers=keys.admin).status_code == 404


@pytest.mark.parametrize(
    ("uri", "kind"),
    [
        ("s3://", "invalid-source"),
        ("ftp://host/x", "invalid-source"),
        ("/etc", "source-forbidden"),
    ],
)
def test_bad_sources_are_problems(app_env, uri, kind):
    client, keys = app_env["client"], app_env["keys"]
    reply = client.post("/sources", json={"uri": uri}, headers=keys.admin)
    assert reply.status_code == 422, reply.text
    assert reply.headers["content-type"].startswith("application/problem+json")
    assert reply.json()["type"].endswith(kind)


def test_missing_folder_inside_roots_is_a_problem(app_env):
    client, keys, roots = app_env["client"], app_env["keys"], app_env["roots"]
    reply = client.post("/sources", json={"uri": str(roots / "nope")}, headers=keys.admin)
    assert reply.status_code == 422 and "allowed_roots" in reply.json()["detail"]


def test_key_limited_to_collections_sees_and_manages_only_its_sources(app_env):
    client, keys, limited = app_env["client"], app_env["keys"], app_env["limited"]
    roots, settings = app_env["roots"], app_env["settings"]
    own = add_source(settings, str(roots / "team-a"), collection="A", interval="1h")
    other = add_source(settings, str(roots / "team-b"), collection="B", interval="1h")

    ids = {s["id"] for s in client.get("/sources", headers=limited).json()["items"]}
    assert own.id in ids and other.id not in ids
    assert client.get(f"/sources/{own.id}", headers=limited).status_code == 200
    for method, path in [
        ("get", f"/sources/{other.id}"),
        ("post", f"/sources/{other.id}/scan"),
        ("delete", f"/sources/{other.id}"),
    ]:
        assert getattr(client, method)(path, headers=limited).status_code == 404, path
    assert client.post(f"/sources/{own.id}/scan", headers=limited).status_code == 202

    new = {"uri": str(roots / "one" / "..")}
    for collection in ("B", None, "no-such-collection"):
        reply = client.post("/sources", json={**new, "collection": collection}, headers=limited)
        assert reply.status_code == 403, (collection, reply.text)
    # An unrestricted admin sees both; the limited key removes its own.
    all_ids = {s["id"] for s in client.get("/sources", headers=keys.admin).json()["items"]}
    assert {own.id, other.id} <= all_ids
    assert client.delete(f"/sources/{own.id}", headers=limited).status_code == 204
    assert client.get(f"/sources/{other.id}", headers=keys.admin).status_code == 200
