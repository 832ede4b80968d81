"""/taxonomy routes on PostgreSQL and SQLite: upload (CSV and JSON bodies, admin key, errors as
problems naming the line, nothing changed on error), terms, expansion, export and stats."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytest_plugins = ["tests.api_support"]

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture
def api(api_env) -> Iterator:
    """The shared app with the example taxonomy; emptied afterwards (other tests share it)."""
    client, keys, _ = api_env
    reply = client.put(
        "/taxonomy",
        content=(EXAMPLES / "taxonomy-example.csv").read_bytes(),
        headers={**keys.admin, "Content-Type": "text/csv"},
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["concepts"] == 18 and reply.json()["bare"] == ["plant"]
    yield client, keys
    empty = client.put("/taxonomy", json={"concepts": []}, headers=keys.admin)
    assert empty.status_code == 200 and empty.json()["concepts"] == 0, empty.text


def test_terms_and_expansion(api) -> None:
    client, keys = api
    reply = client.get("/taxonomy/terms/汽车", headers=keys.read)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert (body["key"], body["label"], body["matched"]) == ("car", "car", "汽车")
    assert body["parents"] == [{"key": "vehicle", "label": "vehicle"}] and body["children"] == []
    assert {a["label"] for a in body["aliases"]} == {"汽车", "automobile", "auto", "轿车"}
    vehicle = client.get("/taxonomy/terms/Vehicle", headers=keys.read).json()
    assert {c["key"] for c in vehicle["children"]} >= {"car", "truck", "bus"}
    missing = client.get("/taxonomy/terms/unicorn", headers=keys.read)
    assert missing.status_code == 404 and "unicorn" in missing.json()["detail"]

    got = client.get(
        "/taxonomy/expand", params={"term": "animal", "descendants": "true"}, headers=keys.read
    ).json()["expansions"]
    by_key = {e["key"]: e for e in got}
    assert got[0] == {"key": "animal", "matched_term": "animal", "via": "name", "depth": 0}
    assert by_key["hound"]["via"] == "descendant" and by_key["hound"]["depth"] == 2
    plain = client.get("/taxonomy/expand", params={"term": "animal"}, headers=keys.read).json()
    assert {e["key"] for e in plain["expansions"]} == {"animal", "动物"}

    assert client.get("/taxonomy/stats", headers=keys.read).json()["concepts"] == 18
    csv_text = client.get("/taxonomy", params={"format": "csv"}, headers=keys.read).text
    assert csv_text.startswith("en,zh,alt_en,alt_zh,broader\n")
    assert "dog,狗,doggy|hound,犬,mammal|pet" in csv_text


def test_upload_needs_admin_and_refuses_bad_files_whole(api) -> None:
    client, keys = api
    body = b'{"concepts": [{"prefLabel": {"en": "boat"}, "broader": ["seacraft"]}]}'
    headers = {"Content-Type": "application/json"}
    assert (
        client.put("/taxonomy", content=body, headers={**keys.write, **headers}).status_code == 403
    )
    bad = client.put("/taxonomy", content=body, headers={**keys.admin, **headers})
    assert bad.status_code == 422, bad.text
    assert bad.headers["content-type"].startswith("application/problem+json")
    assert "concept 1 (boat)" in bad.json()["detail"] and "seacraft" in bad.json()["detail"]
    csv_bad = b"en,alt_en\nship,automobile\n"  # automobile is car's synonym in the stored taxonomy
    merged = client.put(
        "/taxonomy?merge=true", content=csv_bad, headers={**keys.admin, "Content-Type": "text/csv"}
    )
    assert merged.status_code == 422 and "line 2" in merged.json()["detail"], merged.text
    assert client.get("/taxonomy/terms/boat", headers=keys.read).status_code == 404
    assert client.get("/taxonomy/stats", headers=keys.read).json()["concepts"] == 18
    ok = client.put(
        "/taxonomy?merge=true",
        content=b"en,broader\nboat,vehicle\n",  # no content type: told apart by its first byte
        headers=keys.admin,
    )
    assert ok.status_code == 200 and ok.json()["concepts"] == 19, ok.text
    boat = client.get("/taxonomy/terms/boat", headers=keys.read).json()
    assert boat["parents"] == [{"key": "vehicle", "label": "vehicle"}]
