"""THE isolation test: a key limited to collection A never sees or changes anything of
collection B, on every route of the app (docs/collections.md), while A's own things work.

An archive on PostgreSQL with two collections: A ("alpha-team") and B ("zeta-team"), assets
uploaded through each, one image uploaded through both (shared), one uploaded by an
unrestricted key (in no collection), a concept of each collection (and one name, "logo", in
both), labels, jobs, a source and a webhook of B. Then every route of ``app.routes`` is walked
with A's read, write and admin keys: a route missing from :data:`CHECKS` fails the test, so a
route added later without its isolation check (and its enforcement) cannot slip through.

Everything B owns is named with "zeta" (collection, file names, concept, label, key name), and
every response A's keys get is scanned for it, on top of each route's own checks (ids, counts,
thumbnails, originals, search results, jobs, exports, label changes).

Real parts: PostgreSQL, the app in-process with its embedded background ingest, the tiny random
``test_micro`` model and a tiny random CLIP text tower (tests/api_support.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastapi.routing
import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api.app import create_app
from api.auth import create_key
from indexer.db.session import create_engine_for
from indexer.settings import Settings
from tests.api_support import fresh_database, make_keys, make_settings, wait_for_job
from tests.ingest_fixtures import encode, photo_like

pytest_plugins = ["tests.api_support"]

MARK = "zeta"  # in every name of B's things: no answer to A's keys may contain it
Headers = dict[str, str]


@dataclass
class World:
    """The archive, the keys and the ids of everything the checks look at."""

    client: TestClient
    settings: Settings
    url: str
    admin: Headers  # unrestricted
    a_read: Headers
    a_write: Headers
    a_admin: Headers
    b_write: Headers
    b_admin: Headers
    coll_a: int = 0
    coll_b: int = 0
    a_assets: list[int] = field(default_factory=list)
    b_assets: list[int] = field(default_factory=list)
    shared: int = 0  # uploaded through A and B
    shared_to_delete: int = 0  # likewise, deleted by A in the delete check
    global_asset: int = 0  # uploaded by the unrestricted key: in no collection
    b_bytes: bytes = b""
    a_jobs: list[int] = field(default_factory=list)
    b_jobs: list[int] = field(default_factory=list)
    a_concept: int = 0
    a_logo: int = 0
    b_concept: int = 0
    b_logo: int = 0
    b_tag: int = 0  # B's concept, promoted
    a_tag: int = 0
    global_concept: int = 0
    builtin_tag: int = 0
    b_source: int | None = None
    b_webhook: int | None = None
    folder: Path = Path()
    responses: int = 0

    @property
    def a_visible(self) -> set[int]:
        return {*self.a_assets, self.shared, self.shared_to_delete}

    @property
    def b_only(self) -> set[int]:
        return {*self.b_assets, self.global_asset}

    # every call made with one of A's keys goes through here: the "zeta" scan
    def a(
        self, method: str, path: str, headers: Headers, echo: str = "", **kwargs: Any
    ) -> httpx.Response:
        """A request with one of A's keys; ``echo``: a name A itself sent, which the answer
        may repeat (an unknown name is named in the error)."""
        reply = self.client.request(method, path, headers=headers, **kwargs)
        self.responses += 1
        body = reply.content.decode("utf-8", "replace").lower()
        if echo:
            body = body.replace(echo.lower(), "")
        assert MARK not in body, f"{method} {path} ({reply.status_code}) shows B: {body[:400]}"
        for name, value in reply.headers.items():
            assert MARK not in value.lower(), f"{method} {path} header {name}: {value}"
        return reply


def _key(url: str, name: str, scopes: list[str], collections: list[int] | None) -> Headers:
    engine = create_engine_for(url)
    try:
        with Session(engine) as session:
            key = create_key(session, name=name, scopes=scopes, collection_ids=collections)
            session.commit()
    finally:
        engine.dispose()
    return {"Authorization": f"Bearer {key.token}"}


def _upload(w: World, headers: Headers, name: str, data: bytes, **form: Any) -> dict:
    reply = w.client.post("/assets", files={"file": (name, data)}, data=form, headers=headers)
    assert reply.status_code in (200, 202), reply.text
    return reply.json()


def _image(seed: int) -> bytes:
    return encode(photo_like(72, 56, seed=seed), "JPEG")


def _concept(w: World, headers: Headers, name: str, **body: Any) -> tuple[int, int]:
    reply = w.client.post(
        "/concepts",
        json={"name": name, "descriptions": [f"a photo of {name}"], "threshold": 0.5, **body},
        headers=headers,
    )
    assert reply.status_code == 202, reply.text
    return reply.json()["concept"]["id"], reply.json()["job"]["id"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, text_encoder_dir: Path) -> Any:
    folder = tmp_path_factory.mktemp("isolation")
    served = folder / "served"
    served.mkdir()
    (served / "alpha-folder.jpg").write_bytes(_image(900))
    with fresh_database("postgresql", folder) as url:
        base = make_settings(folder / "home", url, text_encoder_dir, metrics_access="key")
        settings = base.model_copy(
            update={
                "storage": base.storage.model_copy(update={"allowed_roots": [served]}),
                "ingest": base.ingest.model_copy(update={"allow_private_urls": True}),
            }
        )
        admin = make_keys(url).admin
        with TestClient(create_app(settings)) as client:
            w = World(client, settings, url, admin, {}, {}, {}, {}, {}, folder=served)
            w.coll_a = client.post(
                "/collections", json={"name": "alpha-team"}, headers=admin
            ).json()["id"]
            w.coll_b = client.post(
                "/collections", json={"name": "zeta-team"}, headers=admin
            ).json()["id"]
            w.a_read = _key(url, "alpha-read", ["read"], [w.coll_a])
            w.a_write = _key(url, "alpha-write", ["write"], [w.coll_a])
            w.a_admin = _key(url, "alpha-admin", ["admin"], [w.coll_a])
            w.b_write = _key(url, "zeta-key", ["write"], [w.coll_b])
            w.b_admin = _key(url, "zeta-admin", ["admin"], [w.coll_b])
            _populate(w)
            yield w


def _populate(w: World) -> None:
    c = w.client
    for i in range(3):
        reply = _upload(w, w.a_write, f"alpha-{i}.jpg", _image(10 + i))
        w.a_assets += reply["asset_ids"]
        w.a_jobs.append(reply["job"]["id"])
    for i in range(3):
        data = _image(20 + i)
        reply = _upload(w, w.b_write, f"zeta-{i}.jpg", data)
        w.b_assets += reply["asset_ids"]
        w.b_jobs.append(reply["job"]["id"])
        w.b_bytes = w.b_bytes or data
    for attr, seed in (("shared", 30), ("shared_to_delete", 31)):
        data = _image(seed)
        first = _upload(w, w.b_write, f"zeta-shared-{seed}.jpg", data)
        w.b_jobs.append(first["job"]["id"])
        # A uploads the same bytes after B: A is not told they were already there
        second = _upload(w, w.a_write, f"alpha-shared-{seed}.jpg", data)
        assert second["asset_ids"] == first["asset_ids"] and not second["duplicates"], second
        w.a_jobs.append(second["job"]["id"])
        setattr(w, attr, first["asset_ids"][0])
    reply = _upload(w, w.admin, "zeta-global.jpg", _image(40))
    w.global_asset = reply["asset_ids"][0]
    for job in w.a_jobs:
        assert wait_for_job(c, w.a_read, job)["status"] == "done"
    for job in w.b_jobs:
        assert wait_for_job(c, w.b_write, job)["status"] == "done"
    assert wait_for_job(c, w.admin, reply["job"]["id"])["status"] == "done"
    c.app.state.services.wait_background(timeout_s=60)

    # concepts: one of each collection, "logo" in both, one global
    w.b_concept, b_job = _concept(w, w.b_write, "zetaconcept")
    w.b_logo, b_logo_job = _concept(w, w.b_write, "logo")
    w.a_concept, a_job = _concept(w, w.a_write, "alphaconcept")
    w.a_logo, a_logo_job = _concept(w, w.a_write, "logo")  # the same name as B's: allowed
    w.global_concept, g_job = _concept(w, w.admin, "globalconcept")
    for job, headers in (
        (b_job, w.b_write),
        (b_logo_job, w.b_write),
        (a_job, w.a_read),
        (a_logo_job, w.a_read),
        (g_job, w.admin),
    ):
        assert wait_for_job(c, headers, job)["status"] == "done", job
    w.b_tag = c.get(f"/concepts/{w.b_concept}", headers=w.b_write).json()["tag_id"]
    w.a_tag = c.get(f"/concepts/{w.a_concept}", headers=w.a_read).json()["tag_id"]
    assert w.b_tag and w.a_tag
    w.builtin_tag = c.get(
        "/tags", params={"origin": "builtin", "limit": 1}, headers=w.admin
    ).json()["items"][0]["id"]

    # labels by B's key: on its own asset, and on the shared one (labels are the asset's)
    for assets, tag in (([w.b_assets[0]], "zetalabel"), ([w.shared], "sharedlabel")):
        reply = c.post(
            "/labels", json={"asset_ids": assets, "tag": tag, "action": "add"}, headers=w.b_write
        )
        assert reply.status_code == 200, reply.text

    # B's source and webhook, where those routes exist
    paths = {getattr(r, "path", None) for r in _routes(c.app)}
    if "/sources" in paths:
        zeta = w.folder / "zeta-source"
        zeta.mkdir()
        (zeta / "zeta-src.jpg").write_bytes(_image(50))
        reply = c.post(
            "/sources", json={"uri": str(zeta), "collection": "zeta-team"}, headers=w.b_admin
        )
        assert reply.status_code in (200, 201, 202), reply.text
        w.b_source = reply.json()["id"] if "id" in reply.json() else reply.json()["source"]["id"]
    if "/webhooks" in paths:
        reply = c.post(
            "/webhooks",
            json={
                "url": "http://127.0.0.1:9/zeta-hook",
                "events": ["asset.done"],
                "collection_ids": [w.coll_b],
            },
            headers=w.b_admin,
        )
        assert reply.status_code in (200, 201), reply.text
        w.b_webhook = reply.json()["id"]


def _routes(app: Any) -> list[Any]:
    """Every route of the app, included routers flattened."""

    def walk(routes: list[Any]) -> list[Any]:
        out: list[Any] = []
        for route in routes:
            if isinstance(route, fastapi.routing._IncludedRouter):
                out += walk(route.effective_candidates())
            else:
                out.append(route)
        return out

    return walk(list(app.routes))


# ---- helpers for the checks ---------------------------------------------------------------


def status(reply: httpx.Response, *codes: int) -> dict[str, Any]:
    assert reply.status_code in codes, (
        f"{reply.request.method} {reply.request.url}: {reply.status_code} {reply.text[:300]}"
    )
    try:
        return reply.json()
    except ValueError:
        return {}


def all_pages(w: World, path: str, headers: Headers, **params: Any) -> list[int]:
    """Asset ids of every page of a listing (``/assets``) or a search (``/search``)."""
    ids: list[int] = []
    cursor = None
    for _ in range(100):
        query = {**params, **({"cursor": cursor} if cursor else {})}
        page = status(w.a("GET", path, headers, params=query), 200)
        items = page.get("items", page.get("hits", []))
        ids += [i["id"] if "id" in i else i["asset"]["id"] for i in items]
        cursor = page.get("next_cursor")
        if not cursor:
            return ids
    raise AssertionError("too many pages")


def hits(page: dict[str, Any]) -> list[int]:
    return [h["asset"]["id"] for h in page["hits"]]


def admin_sees(w: World, asset_id: int) -> bool:
    return w.client.get(f"/assets/{asset_id}", headers=w.admin).status_code == 200


def some_tag(w: World) -> str:
    """A built-in tag with a stored score on B's first asset (so a min_score=0 search for it
    reaches B's assets if nothing stops it)."""
    tags = w.client.get(f"/assets/{w.b_assets[0]}", headers=w.admin).json()["tags"]
    return next(t["name"] for t in tags if MARK not in t["name"])


# ---- the checks, one per route ------------------------------------------------------------


def check_public(w: World, path: str) -> None:
    """Open pages (UI, docs, OpenAPI, health): they hold no archive data."""
    target = {"/static": "/static/app.js", "/docs-assets": "/docs"}.get(path, path)
    w.a("GET", target, w.a_read)


def check_metrics(w: World) -> None:
    status(w.a("GET", "/metrics", w.a_read), 403)  # archive-wide counts
    assert w.client.get("/metrics", headers=w.admin).status_code == 200


def check_me(w: World) -> None:
    me = status(w.a("GET", "/me", w.a_read), 200)
    assert me["collection_ids"] == [w.coll_a]


def check_assets_list(w: World) -> None:
    assert set(all_pages(w, "/assets", w.a_read, limit=2)) == w.a_visible
    assert set(all_pages(w, "/assets", w.a_read, status="done")) == w.a_visible


def check_asset(w: World) -> None:
    for asset_id in w.b_only:
        status(w.a("GET", f"/assets/{asset_id}", w.a_read), 404)
    own = status(w.a("GET", f"/assets/{w.a_assets[0]}", w.a_read), 200)
    assert own["collections"] == [w.coll_a]
    shared = status(w.a("GET", f"/assets/{w.shared}", w.a_read), 200)
    assert shared["collections"] == [w.coll_a]  # B's membership is not shown
    assert shared["sources"] == []  # B's upload name (and A's) hidden from restricted keys
    assert all(t["id"] != w.b_tag for t in shared["tags"])


def check_thumbnail(w: World) -> None:
    for asset_id in w.b_only:
        status(w.a("GET", f"/assets/{asset_id}/thumbnail", w.a_read), 404)
    reply = w.a("GET", f"/assets/{w.a_assets[0]}/thumbnail", w.a_read)
    assert reply.status_code == 200 and reply.headers["content-type"] == "image/webp"


def check_original(w: World) -> None:
    for asset_id in w.b_only:
        status(w.a("GET", f"/assets/{asset_id}/original", w.a_read), 404)
    reply = w.a("GET", f"/assets/{w.shared}/original", w.a_read)
    assert reply.status_code == 200 and len(reply.content) > 100


def check_media_link(w: World) -> None:
    for asset_id in w.b_only:
        status(w.a("POST", f"/assets/{asset_id}/link", w.a_read), 404)
    link = status(w.a("POST", f"/assets/{w.shared}/link", w.a_read), 200)
    assert link["url"].startswith(f"/media/{w.shared}?")


def check_media(w: World) -> None:
    """A signed link opens what its key sees: one A signs itself for B's asset (the key's
    holder can compute the signature) is refused like a wrong one."""
    from api.auth import hash_secret, parse_token
    from api.routers.media_links import LINK_TTL_S, sign

    link = status(w.a("POST", f"/assets/{w.shared}/link", w.a_read), 200)
    reply = w.a("GET", link["url"], {})
    assert reply.status_code == 200 and len(reply.content) > 100
    key_id, secret = parse_token(w.a_read["Authorization"].split(" ", 1)[1])  # type: ignore[misc]
    exp = int(time.time()) + LINK_TTL_S // 2
    for asset_id in w.b_only:
        sig = sign(hash_secret(secret), asset_id, exp)
        status(w.a("GET", f"/media/{asset_id}?key={key_id}&exp={exp}&sig={sig}", {}), 404)


def check_upload(w: World) -> None:
    data = _image(60)
    status(
        w.a(
            "POST",
            "/assets",
            w.a_write,
            files={"file": ("a.jpg", data)},
            data={"collection": w.coll_b},
        ),
        403,
    )
    reply = status(w.a("POST", "/assets", w.a_write, files={"file": ("a.jpg", data)}), 202)
    asset_id = reply["asset_ids"][0]
    assert wait_for_job(w.client, w.a_read, reply["job"]["id"])["status"] == "done"
    assert reply["job"]["collection_id"] == w.coll_a
    assert status(w.a("GET", f"/assets/{asset_id}", w.a_read), 200)["collections"] == [w.coll_a]
    w.a_assets.append(asset_id)
    # a key limited to two collections says which one (422 without)
    other = w.client.post("/collections", json={"name": "alpha-two"}, headers=w.admin).json()["id"]
    two = _key(w.url, "alpha-two", ["write"], [w.coll_a, other])
    status(w.a("POST", "/assets", two, files={"file": ("b.jpg", _image(61))}), 422)
    reply = w.a(
        "POST", "/assets", two, files={"file": ("b.jpg", _image(61))}, data={"collection": other}
    )
    assert status(reply, 202)["job"]["collection_id"] == other
    # B uploading the same bytes does not learn A had them either
    again = _upload(w, w.b_write, "zeta-again.jpg", data)
    assert again["asset_ids"] == [asset_id] and not again["duplicates"]
    w.client.app.state.services.wait_background(timeout_s=60)


def check_register(w: World) -> None:
    body = {"paths": [str(w.folder / "alpha-folder.jpg")]}
    status(w.a("POST", "/assets/register", w.a_admin, json={**body, "collection": w.coll_b}), 403)
    job = status(w.a("POST", "/assets/register", w.a_admin, json=body), 202)["job"]
    assert wait_for_job(w.client, w.a_read, job["id"])["status"] == "done"
    assert job["collection_id"] == w.coll_a
    w.client.app.state.services.wait_background(timeout_s=60)
    new = set(all_pages(w, "/assets", w.a_read)) - w.a_visible
    assert len(new) == 1, new  # the registered file joined A
    w.a_assets += sorted(new)


def check_delete_asset(w: World) -> None:
    for asset_id in w.b_only:
        status(w.a("DELETE", f"/assets/{asset_id}", w.a_write), 404)
        assert admin_sees(w, asset_id)
    # shared: A's delete takes it out of A only; B keeps it
    status(w.a("DELETE", f"/assets/{w.shared_to_delete}", w.a_write), 204)
    status(w.a("GET", f"/assets/{w.shared_to_delete}", w.a_read), 404)
    kept = w.client.get(f"/assets/{w.shared_to_delete}", headers=w.b_write)
    assert kept.status_code == 200 and kept.json()["collections"] == [w.coll_b]
    w.shared_to_delete = 0
    # A's own asset: deleted for good
    own = w.a_assets.pop()
    status(w.a("DELETE", f"/assets/{own}", w.a_write), 204)
    assert not admin_sees(w, own)


def _search_forms(w: World, method: str) -> None:
    """Every kind of search (listing, tags, date order, concept text, similar) keeps to A."""
    tag = some_tag(w)
    forms: list[dict[str, Any]] = [
        {},
        {"sort": "date"},
        {"any": [tag], "min_score": 0.0},
        {"any": [tag], "min_score": 0.0, "sort": "date"},
        {"none": [tag]},
        {"text": "alphaconcept"},
        {"text": "logo"},
        {"text": "something red", "any": [tag], "min_score": 0.0},
        {"similar_to": w.a_assets[0]},
        {"similar_to": w.a_assets[0], "mime": ["image/*"]},
    ]
    visible = w.a_visible - {0}
    for form in forms:
        if method == "GET":
            page = status(w.a("GET", "/search", w.a_read, params={**form, "limit": 200}), 200)
        else:
            page = status(w.a("POST", "/search", w.a_read, json={**form, "limit": 200}), 200)
        found = set(hits(page))
        assert found <= visible, (form, found - visible)
        if "none" not in form:
            assert found, form  # A's own assets are found
    for form, code in (
        ({"similar_to": w.b_assets[0]}, 404),
        ({"similar_to": w.global_asset}, 404),
        ({"all": ["zetaconcept [zeta-team]"]}, 422),  # B's tag is unknown to A
        ({"all": ["zetalabel"]}, 422),  # B's label, on B's asset only
        ({"collection": [w.coll_b]}, 404),
    ):
        if method == "GET":
            reply = w.client.get("/search", params=form, headers=w.a_read)
        else:
            reply = w.client.post("/search", json=form, headers=w.a_read)
        assert reply.status_code == code, (form, reply.text)
    # an unrestricted key searching within collection A: the same filter, asked for
    within = w.client.post(
        "/search", json={"any": [tag], "min_score": 0.0, "collection": [w.coll_a]}, headers=w.admin
    )
    assert within.status_code == 200 and set(hits(within.json())) <= visible
    # the same search by the unrestricted key reaches B: the restriction is the key's
    wide = w.client.post(
        "/search", json={"any": [tag], "min_score": 0.0, "limit": 200}, headers=w.admin
    )
    assert set(hits(wide.json())) & w.b_only


def check_search_get(w: World) -> None:
    _search_forms(w, "GET")


def check_search_post(w: World) -> None:
    _search_forms(w, "POST")


def check_search_image(w: World) -> None:
    page = status(w.a("POST", "/search/image", w.a_read, files={"file": ("q.jpg", w.b_bytes)}), 200)
    found = set(hits(page))
    assert found and found <= w.a_visible


def check_facets(w: World) -> None:
    summary = status(w.a("POST", "/search/facets", w.a_read, json={}, params={"top": 100}), 200)
    assert summary["total"] == len(w.a_visible - {0})
    assert all(f["tag_id"] != w.b_tag for f in summary["facets"])


def check_names(w: World) -> None:
    ids = sorted(w.b_only | {w.a_assets[0]})
    names = status(w.a("GET", "/search/names", w.a_read, params={"ids": ids}), 200)
    assert [n["id"] for n in names["items"]] == [w.a_assets[0]]


def check_tag_endpoint(w: World) -> None:
    data = _image(70)
    reply = w.a(
        "POST",
        "/tag",
        w.a_read,
        files={"files": ("q.jpg", data)},
        data={"concepts": "alphaconcept"},
    )
    tags = status(reply, 200)["images"][0]["tags"]
    assert reply.status_code == 200 and isinstance(tags, list)
    # B's concept by id (its name would come back in the error: what A asked)
    for form in ({"concepts": str(w.b_concept)}, {"store": "true", "collection": str(w.coll_b)}):
        reply = w.a("POST", "/tag", w.a_write, files={"files": ("q.jpg", data)}, data=form)
        assert reply.status_code in (403, 404, 422), (form, reply.text)


def check_jobs(w: World) -> None:
    listed = {
        j["id"] for j in status(w.a("GET", "/jobs", w.a_read, params={"limit": 500}), 200)["items"]
    }
    assert set(w.a_jobs) <= listed and not listed & set(w.b_jobs)
    for job in w.b_jobs:
        status(w.a("GET", f"/jobs/{job}", w.a_read), 404)
    status(w.a("GET", f"/jobs/{w.a_jobs[0]}", w.a_read), 200)


def check_concepts(w: World) -> None:
    page = status(w.a("GET", "/concepts", w.a_read), 200)
    ids = {c["id"] for c in page["items"]}
    assert {w.a_concept, w.a_logo, w.global_concept} <= ids
    assert not ids & {w.b_concept, w.b_logo}


def check_concept(w: World) -> None:
    for concept in (w.b_concept, w.b_logo):
        status(w.a("GET", f"/concepts/{concept}", w.a_read), 404)
    own = status(w.a("GET", f"/concepts/{w.a_logo}", w.a_read), 200)
    assert own["collection_id"] == w.coll_a


def check_create_concept(w: World) -> None:
    body = {"name": "alphaother", "descriptions": ["x"], "collection": w.coll_b}
    status(w.a("POST", "/concepts", w.a_write, json=body), 403)
    status(
        w.a("POST", "/concepts", w.a_write, json={**body, "name": "logo", "collection": None}), 409
    )


def check_delete_concept(w: World) -> None:
    for concept in (w.b_concept, w.b_logo):
        status(w.a("DELETE", f"/concepts/{concept}", w.a_write), 404)
        assert w.client.get(f"/concepts/{concept}", headers=w.b_write).status_code == 200
    status(w.a("DELETE", f"/concepts/{w.global_concept}", w.a_write), 403)


def check_tags(w: World) -> None:
    names: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
        page = status(w.a("GET", "/tags", w.a_read, params=params), 200)
        names += [t["name"] for t in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert "alphaconcept [alpha-team]" in names and "logo [alpha-team]" in names
    assert status(w.a("GET", "/tags", w.a_read, params={"prefix": "logo"}), 200)["items"]


def check_tag(w: World) -> None:
    status(w.a("GET", f"/tags/{w.b_tag}", w.a_read), 404)
    status(w.a("GET", f"/tags/{w.a_tag}", w.a_read), 200)


def check_threshold(w: World) -> None:
    status(w.a("PATCH", f"/tags/{w.b_tag}", w.a_admin, json={"threshold_override": 0.1}), 404)
    status(w.a("PATCH", f"/tags/{w.builtin_tag}", w.a_admin, json={"threshold_override": 0.1}), 403)


def check_labels_view(w: World) -> None:
    for asset_id in w.b_only:
        status(w.a("GET", f"/labels/assets/{asset_id}", w.a_read), 404)
    view = status(w.a("GET", f"/labels/assets/{w.shared}", w.a_read), 200)
    assert "sharedlabel" in {t["key"] for t in view["tags"]}  # the asset's own label


def check_label_history(w: World) -> None:
    for asset_id in w.b_only:
        status(w.a("GET", f"/labels/assets/{asset_id}/history", w.a_read), 404)
    changes = status(w.a("GET", f"/labels/assets/{w.shared}/history", w.a_read), 200)["changes"]
    assert changes and all(c["actor"] == "another key" for c in changes)  # B's key name hidden


def check_label_change(w: World) -> None:
    before = w.client.get(f"/labels/assets/{w.b_assets[1]}", headers=w.admin).json()
    body = {"asset_ids": [w.b_assets[1], w.a_assets[0]], "tag": "alphalabel", "action": "add"}
    reply = status(w.a("POST", "/labels", w.a_write, json=body), 404)
    assert reply["missing"] == [w.b_assets[1]]
    assert w.client.get(f"/labels/assets/{w.b_assets[1]}", headers=w.admin).json() == before
    body["asset_ids"] = [w.a_assets[0]]
    assert status(w.a("POST", "/labels", w.a_write, json=body), 200)["changed"] == 1
    name = "zetaconcept [zeta-team]"
    accept = {"asset_ids": [w.a_assets[0]], "tag": name, "action": "accept"}
    status(w.a("POST", "/labels", w.a_write, json=accept, echo=name), 404)


def check_queue(w: World) -> None:
    page = status(
        w.a("GET", "/labels/queue", w.a_read, params={"tag": some_tag(w), "limit": 2}), 200
    )
    seen: set[int] = {i["asset_id"] for i in page["items"]}
    while page["next_cursor"]:
        page = status(
            w.a(
                "GET",
                "/labels/queue",
                w.a_read,
                params={"tag": some_tag(w), "limit": 2, "cursor": page["next_cursor"]},
            ),
            200,
        )
        seen |= {i["asset_id"] for i in page["items"]}
    assert seen and seen <= w.a_visible
    name = "zetaconcept [zeta-team]"
    status(w.a("GET", "/labels/queue", w.a_read, params={"tag": name}, echo=name), 404)


def _export(w: World, kind: str) -> str:
    reply = w.a("GET", f"/exports/assets.{kind}", w.a_read)
    assert reply.status_code == 200, reply.text
    return reply.text


def check_export_csv(w: World) -> None:
    lines = _export(w, "csv").strip().splitlines()[1:]
    assert {int(line.split(",")[0]) for line in lines} == w.a_visible - {0}


def check_export_json(w: World) -> None:
    data = json.loads(_export(w, "json"))
    items = data["assets"] if isinstance(data, dict) else data
    assert {a["asset_id"] for a in items} == w.a_visible - {0}
    assert all(a["source_uris"] == [] for a in items)


def check_export_xmp(w: World) -> None:
    status(w.a("POST", "/exports/xmp", w.a_write, json={"asset_ids": [w.b_assets[0]]}), 403, 503)


def check_taxonomy_read(w: World, path: str) -> None:
    params = {"term": "dog"} if path.endswith("expand") else {}
    target = path.replace("{term}", "dog")
    status(w.a("GET", target, w.a_read, params=params), 200, 404)


def check_taxonomy_put(w: World) -> None:
    csv = b"term,broader\ncat,animal\n"
    status(
        w.a(
            "PUT",
            "/taxonomy",
            {**w.a_admin, "Content-Type": "text/csv"},
            content=csv,
        ),
        403,
    )


def check_collections(w: World) -> None:
    page = status(w.a("GET", "/collections", w.a_read), 200)
    assert [c["id"] for c in page["items"]] == [w.coll_a]
    assert page["items"][0]["asset_count"] == len(w.a_visible - {0})


def check_collection(w: World) -> None:
    status(w.a("GET", f"/collections/{w.coll_b}", w.a_read), 404)
    status(w.a("GET", f"/collections/{w.coll_a}", w.a_read), 200)


def check_create_collection(w: World) -> None:
    status(w.a("POST", "/collections", w.a_admin, json={"name": "alpha-new"}), 403)


def check_delete_collection(w: World) -> None:
    status(w.a("DELETE", f"/collections/{w.coll_b}", w.a_admin), 404)
    status(w.a("DELETE", f"/collections/{w.coll_a}", w.a_admin), 403)
    assert w.client.get(f"/collections/{w.coll_b}", headers=w.admin).status_code == 200


def check_collection_add(w: World) -> None:
    status(
        w.a(
            "POST",
            f"/collections/{w.coll_b}/assets",
            w.a_write,
            json={"asset_ids": [w.a_assets[0]]},
        ),
        404,
    )
    reply = status(
        w.a(
            "POST",
            f"/collections/{w.coll_a}/assets",
            w.a_write,
            json={"asset_ids": [w.b_assets[0], w.global_asset]},
        ),
        404,
    )
    assert reply["missing"] == sorted([w.b_assets[0], w.global_asset])
    added = status(
        w.a(
            "POST",
            f"/collections/{w.coll_a}/assets",
            w.a_write,
            json={"asset_ids": [w.a_assets[0]]},
        ),
        200,
    )
    assert added == {"changed": 0, "unchanged": 1}


def check_collection_remove(w: World) -> None:
    status(
        w.a(
            "DELETE",
            f"/collections/{w.coll_b}/assets",
            w.a_write,
            json={"asset_ids": [w.b_assets[0]]},
        ),
        404,
    )
    status(
        w.a(
            "DELETE",
            f"/collections/{w.coll_a}/assets",
            w.a_write,
            json={"asset_ids": [w.b_assets[0]]},
        ),
        404,
    )
    b = w.client.get(f"/collections/{w.coll_b}", headers=w.admin).json()
    assert b["asset_count"] >= len(w.b_assets)


def check_sources(w: World) -> None:
    listed = status(w.a("GET", "/sources", w.a_admin), 200)
    items = listed.get("items", listed if isinstance(listed, list) else [])
    assert all(s["id"] != w.b_source for s in items)


def check_source(w: World) -> None:
    status(w.a("GET", f"/sources/{w.b_source}", w.a_admin), 404)


def check_source_create(w: World) -> None:
    body = {"uri": str(w.folder), "collection": str(w.coll_b)}
    status(w.a("POST", "/sources", w.a_admin, json=body), 403, 404, 422)


def check_source_scan(w: World) -> None:
    status(w.a("POST", f"/sources/{w.b_source}/scan", w.a_admin), 404)


def check_source_delete(w: World) -> None:
    status(w.a("DELETE", f"/sources/{w.b_source}", w.a_admin), 404)
    assert w.client.get(f"/sources/{w.b_source}", headers=w.admin).status_code == 200


def check_webhooks(w: World) -> None:
    items = status(w.a("GET", "/webhooks", w.a_admin), 200)["items"]
    assert all(h["id"] != w.b_webhook for h in items)


def check_webhook(w: World) -> None:
    status(w.a("GET", f"/webhooks/{w.b_webhook}", w.a_admin), 404)


def check_webhook_create(w: World) -> None:
    body = {"url": "http://127.0.0.1:9/a", "events": ["asset.done"], "collection_ids": [w.coll_b]}
    status(w.a("POST", "/webhooks", w.a_admin, json=body), 403)
    status(w.a("POST", "/webhooks", w.a_admin, json={**body, "collection_ids": None}), 403)


def check_webhook_delete(w: World) -> None:
    status(w.a("DELETE", f"/webhooks/{w.b_webhook}", w.a_admin), 404)
    assert w.client.get(f"/webhooks/{w.b_webhook}", headers=w.admin).status_code == 200


def check_webhook_deliveries(w: World) -> None:
    status(w.a("GET", f"/webhooks/{w.b_webhook}/deliveries", w.a_admin), 404)


def check_webhook_test(w: World) -> None:
    status(w.a("POST", f"/webhooks/{w.b_webhook}/test", w.a_admin), 404)


def check_webhook_replay(w: World) -> None:
    status(w.a("POST", f"/webhooks/{w.b_webhook}/deliveries/1/replay", w.a_admin), 404)


Check = Callable[[World], None]


def _public(path: str) -> Check:
    return lambda w: check_public(w, path)


def _taxonomy(path: str) -> Check:
    return lambda w: check_taxonomy_read(w, path)


# (method, path) -> its check, in the order they run (destructive ones last). Mounts have
# method "*". A route of the app missing here fails the test: add its check (and enforce!).
CHECKS: dict[tuple[str, str], Check] = {
    ("GET", "/"): _public("/"),
    ("*", "/static"): _public("/static"),
    ("*", "/docs-assets"): _public("/docs-assets"),
    ("GET", "/docs"): _public("/docs"),
    ("GET", "/docs/oauth2-redirect"): _public("/docs/oauth2-redirect"),
    ("GET", "/redoc"): _public("/redoc"),
    ("GET", "/openapi.json"): _public("/openapi.json"),
    ("GET", "/healthz"): _public("/healthz"),
    ("GET", "/readyz"): _public("/readyz"),
    ("GET", "/metrics"): check_metrics,
    ("GET", "/me"): check_me,
    ("GET", "/collections"): check_collections,
    ("GET", "/collections/{collection_id}"): check_collection,
    ("POST", "/collections"): check_create_collection,
    ("GET", "/assets"): check_assets_list,
    ("GET", "/assets/{asset_id}"): check_asset,
    ("GET", "/assets/{asset_id}/thumbnail"): check_thumbnail,
    ("GET", "/assets/{asset_id}/original"): check_original,
    ("POST", "/assets/{asset_id}/link"): check_media_link,
    ("GET", "/media/{asset_id}"): check_media,
    ("GET", "/search"): check_search_get,
    ("POST", "/search"): check_search_post,
    ("POST", "/search/image"): check_search_image,
    ("POST", "/search/facets"): check_facets,
    ("GET", "/search/names"): check_names,
    ("POST", "/tag"): check_tag_endpoint,
    ("GET", "/jobs"): check_jobs,
    ("GET", "/jobs/{job_id}"): check_jobs,
    ("GET", "/concepts"): check_concepts,
    ("GET", "/concepts/{concept_id}"): check_concept,
    ("POST", "/concepts"): check_create_concept,
    ("GET", "/tags"): check_tags,
    ("GET", "/tags/{tag_id}"): check_tag,
    ("PATCH", "/tags/{tag_id}"): check_threshold,
    ("GET", "/labels/assets/{asset_id}"): check_labels_view,
    ("GET", "/labels/assets/{asset_id}/history"): check_label_history,
    ("POST", "/labels"): check_label_change,
    ("GET", "/labels/queue"): check_queue,
    ("GET", "/exports/assets.csv"): check_export_csv,
    ("GET", "/exports/assets.json"): check_export_json,
    ("POST", "/exports/xmp"): check_export_xmp,
    ("GET", "/taxonomy"): _taxonomy("/taxonomy"),
    ("GET", "/taxonomy/expand"): _taxonomy("/taxonomy/expand"),
    ("GET", "/taxonomy/stats"): _taxonomy("/taxonomy/stats"),
    ("GET", "/taxonomy/terms/{term}"): _taxonomy("/taxonomy/terms/{term}"),
    ("PUT", "/taxonomy"): check_taxonomy_put,
    ("GET", "/sources"): check_sources,
    ("GET", "/sources/{source_id}"): check_source,
    ("POST", "/sources"): check_source_create,
    ("POST", "/sources/{source_id}/scan"): check_source_scan,
    ("GET", "/webhooks"): check_webhooks,
    ("GET", "/webhooks/{webhook_id}"): check_webhook,
    ("POST", "/webhooks"): check_webhook_create,
    ("GET", "/webhooks/{webhook_id}/deliveries"): check_webhook_deliveries,
    ("POST", "/webhooks/{webhook_id}/test"): check_webhook_test,
    ("POST", "/webhooks/{webhook_id}/deliveries/{delivery_id}/replay"): check_webhook_replay,
    ("POST", "/collections/{collection_id}/assets"): check_collection_add,
    ("DELETE", "/collections/{collection_id}/assets"): check_collection_remove,
    ("POST", "/assets"): check_upload,
    ("POST", "/assets/register"): check_register,
    ("DELETE", "/concepts/{concept_id}"): check_delete_concept,
    ("DELETE", "/sources/{source_id}"): check_source_delete,
    ("DELETE", "/webhooks/{webhook_id}"): check_webhook_delete,
    ("DELETE", "/collections/{collection_id}"): check_delete_collection,
    ("DELETE", "/assets/{asset_id}"): check_delete_asset,
}


def app_routes(app: Any) -> set[tuple[str, str]]:
    """(method, path) of every route of the app (HEAD left out: it follows GET)."""
    found: set[tuple[str, str]] = set()
    for route in _routes(app):
        methods = getattr(route, "methods", None) or {"*"}
        for method in methods - {"HEAD"}:
            found.add((method, route.path))
    return found


@pytest.mark.postgres
def test_every_route_keeps_a_key_for_a_to_collection_a(world: World) -> None:
    routes = app_routes(world.client.app)
    unknown = sorted(routes - set(CHECKS))
    assert not unknown, f"routes without an isolation check in tests/test_isolation.py: {unknown}"
    started = time.monotonic()
    ran = []
    for route, check in CHECKS.items():
        if route in routes:
            check(world)
            ran.append(route)
    assert len(ran) == len(routes)
    assert world.responses > 100
    took = time.monotonic() - started
    print(f"{len(ran)} routes, {world.responses} responses to A's keys, {took:.1f} s")
