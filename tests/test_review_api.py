"""/labels through the API on PostgreSQL and SQLite: changes with scopes and the recorded actor,
the provenance view, history, the review queue, and 4xx problems that change nothing."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from indexer import db
from indexer.db.session import session_scope
from ram_pp.vocab import TagVocabulary
from tests.api_support import Keys, fresh_database, make_keys, make_settings

pytest_plugins = ["tests.api_support"]


@dataclass
class Env:
    client: TestClient
    keys: Keys
    url: str
    tags: dict[str, int]
    assets: list[int]


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """A fresh archive: a 3-tag vocabulary of the configured model, 5 assets with dog scores."""
    folder = tmp_path_factory.mktemp(f"review-api-{request.param}")
    with fresh_database(request.param, folder) as url:
        settings = make_settings(folder / "home", url)
        keys = make_keys(url)
        with TestClient(create_app(settings)) as client:
            model_id = client.app.state.services.model_id()
            vocab = TagVocabulary(
                ("dog", "cat", "car"), ("狗", "猫", "汽车"), np.array([0.7, 0.5, 0.8], np.float32)
            )
            with session_scope(url) as s:
                ids = db.ensure_vocabulary(s, model_id, vocab)
                assets = [
                    db.get_or_create_asset_by_sha(
                        s, sha256=hashlib.sha256(b"%d" % i).hexdigest()
                    ).id
                    for i in range(5)
                ]
                tags = dict(zip(vocab.english, (int(i) for i in ids), strict=True))
                db.write_tag_scores(
                    s, tags["dog"], assets, [0.9, 0.68, 0.75, 0.1, 0.71], score_floor=0.05
                )
            yield Env(client, keys, url, tags, assets)


def post(env: Env, headers: dict[str, str], **body: object):
    return env.client.post("/labels", json=body, headers=headers)


def asset_view(env: Env, asset_id: int) -> dict[str, dict]:
    reply = env.client.get(f"/labels/assets/{asset_id}", headers=env.keys.read)
    assert reply.status_code == 200, reply.text
    assert reply.json()["asset_id"] == asset_id
    return {t["key"]: t for t in reply.json()["tags"]}


def test_changes_show_in_provenance_and_history(env: Env) -> None:
    a, b = env.assets[0], env.assets[1]
    reply = post(env, env.keys.write, asset_ids=[a, b], tag="Beach Day", action="add")
    assert reply.status_code == 200 and reply.json() == {"changed": 2, "unchanged": 0}
    reply = post(env, env.keys.write, asset_ids=[a, b, a], tag="beach  day", action="add")
    assert reply.json() == {"changed": 0, "unchanged": 2}
    assert (
        post(env, env.keys.write, asset_ids=[a], tag="狗", action="reject").json()["changed"] == 1
    )
    assert post(env, env.keys.write, asset_ids=[b], tag="DOG", action="accept").status_code == 200

    view_a = asset_view(env, a)
    assert view_a["dog"]["review"] == "rejected" and not view_a["dog"]["matches"]
    assert view_a["dog"]["sources"] == [] and view_a["dog"]["tag_id"] == env.tags["dog"]
    assert view_a["dog"]["chinese"] == "狗" and view_a["dog"]["threshold"] == pytest.approx(0.7)
    assert view_a["beach day"]["name"] == "Beach Day" and view_a["beach day"]["tag_id"] is None
    assert view_a["beach day"]["sources"] == ["manual"] and view_a["beach day"]["matches"]
    view_b = asset_view(env, b)  # 0.68 is below 0.7 but accepted
    assert view_b["dog"]["matches"] and view_b["dog"]["score"] == pytest.approx(0.68)
    assert list(view_b) == ["dog", "beach day"]  # matching, best score first

    reply = env.client.get(f"/labels/assets/{a}/history", headers=env.keys.read)
    changes = reply.json()["changes"]
    assert [(c["key"], c["action"]) for c in changes] == [("dog", "reject"), ("beach day", "add")]
    assert changes[0]["before"] is None
    assert changes[0]["after"] == {"manual": False, "embedded": False, "review": "rejected"}
    assert changes[0]["actor"].startswith("test-write (") and changes[0]["at"]
    one = env.client.get(f"/labels/assets/{a}/history?limit=1", headers=env.keys.read).json()
    assert one["changes"] == changes[:1]


def test_scopes(env: Env) -> None:
    a = env.assets[2]
    assert post(env, env.keys.read, asset_ids=[a], tag="x", action="add").status_code == 403
    assert post(env, {}, asset_ids=[a], tag="x", action="add").status_code == 401
    assert env.client.get(f"/labels/assets/{a}").status_code == 401
    assert asset_view(env, a).get("x") is None


def test_bad_input_is_a_problem_and_changes_nothing(env: Env) -> None:
    a = env.assets[3]
    before = env.client.get(f"/labels/assets/{a}/history", headers=env.keys.read).json()
    missing = post(env, env.keys.write, asset_ids=[a, 10**9, 10**9 + 1], tag="kite", action="add")
    assert missing.status_code == 404, missing.text
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.json()["missing"] == [10**9, 10**9 + 1]
    unknown = post(env, env.keys.write, asset_ids=[a], tag="kite", action="accept")
    assert unknown.status_code == 404 and unknown.json()["unknown"] == ["kite"]
    for body in (
        {"asset_ids": [], "tag": "kite", "action": "add"},
        {"asset_ids": list(range(1, 1002)), "tag": "kite", "action": "add"},
        {"asset_ids": [a], "tag": "kite", "action": "embed"},
        {"asset_ids": [0], "tag": "kite", "action": "add"},
        {"asset_ids": [a], "tag": "   ", "action": "add"},
        {"asset_ids": [a], "tag": "k" * 300, "action": "add"},
    ):
        reply = post(env, env.keys.write, **body)
        assert reply.status_code == 422, (body, reply.text)
    after = env.client.get(f"/labels/assets/{a}/history", headers=env.keys.read).json()
    assert after == before and "kite" not in asset_view(env, a)
    assert env.client.get("/labels/assets/999999", headers=env.keys.read).status_code == 404
    reply = env.client.get("/labels/assets/999999/history", headers=env.keys.read)
    assert reply.status_code == 404


def test_queue(env: Env) -> None:
    q = env.client.get("/labels/queue", params={"tag": "dog", "limit": 50}, headers=env.keys.read)
    assert q.status_code == 200, q.text
    body = q.json()
    assert body["tag"] == "dog" and body["threshold"] == pytest.approx(0.7)
    a0, a1, a2, a3, a4 = env.assets
    # a0 rejected and a1 accepted by the first test when it ran first; undecided ones only
    decided = {i for i in (a0, a1) if asset_view(env, i)["dog"]["review"] is not None}
    expected = [i for i in (a4, a1, a2, a0, a3) if i not in decided]  # .01 .02 .05 .2 .6
    assert [i["asset_id"] for i in body["items"]] == expected
    assert body["items"][0]["distance"] == pytest.approx(0.01, abs=1e-6)
    paged, cursor = [], None
    while True:
        params = {"tag": "狗", "limit": 1} | ({"cursor": cursor} if cursor else {})
        page = env.client.get("/labels/queue", params=params, headers=env.keys.read).json()
        paged += [i["asset_id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert paged == expected
    bad = env.client.get(
        "/labels/queue", params={"tag": "dog", "cursor": "xyz"}, headers=env.keys.read
    )
    assert bad.status_code == 400
    unknown = env.client.get("/labels/queue", params={"tag": "kite"}, headers=env.keys.read)
    assert unknown.status_code == 404 and unknown.json()["unknown"] == ["kite"]


def test_tags_carry_taxonomy_and_search_expands_it(env: Env) -> None:
    """GET /tags names each tag's broader concepts and aliases (examples/taxonomy-example.csv);
    GET /search finds dogs by a synonym and by a broader concept, and says which term matched."""
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples" / "taxonomy-example.csv"
    reply = env.client.put(
        "/taxonomy",
        content=example.read_bytes(),
        headers={**env.keys.admin, "Content-Type": "text/csv"},
    )
    assert reply.status_code == 200, reply.text
    try:
        dog = env.client.get(f"/tags/{env.tags['dog']}", headers=env.keys.read).json()
        assert dog["parents"][:2] in (["mammal", "pet"], ["pet", "mammal"])
        assert "animal" in dog["parents"] and {"hound", "犬"} <= set(dog["aliases"])
        listed = env.client.get("/tags", params={"prefix": "do"}, headers=env.keys.read).json()
        assert listed["items"][0]["aliases"] == dog["aliases"]

        def search(**params: object) -> list[dict]:
            got = env.client.get("/search", params=params, headers=env.keys.read)
            assert got.status_code == 200, got.text
            return got.json()["hits"]

        direct = [h["asset"]["id"] for h in search(all="dog")]
        assert direct, "some assets score dog above its threshold"
        for query in ({"all": "hound"}, {"all": "animal", "narrower": "true"}):
            hits = search(**query)
            assert [h["asset"]["id"] for h in hits] == direct, query
            assert {h["reasons"][0]["expanded_from"] for h in hits} == {query["all"]}
        assert search(all="animal") == []  # narrower concepts only on request
    finally:
        env.client.put("/taxonomy", json={"concepts": []}, headers=env.keys.admin)
