"""What the web UI's grid asks beyond ``/search``: ``POST /search/facets`` (a search's total and
most frequent tags) and ``GET /search/names`` (file names for cards), on PostgreSQL and SQLite.

Expected counts come from another view of the archive (``GET /labels/assets/{id}``, whose
``matches`` is what a default tag search matches), not from the code under test.
"""

from __future__ import annotations

from collections import Counter

import pytest

from api.routers.facets import file_name

pytest_plugins = ["tests.api_support"]


def _matching(archive, asset_id: int) -> dict[str, str]:  # noqa: ANN001 - tests.api_support.Archive
    reply = archive.client.get(f"/labels/assets/{asset_id}", headers=archive.keys.read)
    assert reply.status_code == 200, reply.text
    return {t["key"]: t["name"] for t in reply.json()["tags"] if t["matches"]}


def test_facets_count_the_results_and_their_tags(archive) -> None:  # noqa: ANN001
    client, read = archive.client, archive.keys.read
    reply = client.post("/search/facets?top=100", json={}, headers=read)
    assert reply.status_code == 200, reply.text
    summary = reply.json()
    assert summary["total"] == len(archive.images) and summary["exact"] is True
    counts: Counter[str] = Counter()
    names: dict[str, str] = {}
    for asset_id in archive.images:
        for key, name in _matching(archive, asset_id).items():
            counts[key] += 1
            names[key] = name
    expected = sorted(counts.items(), key=lambda kv: (-kv[1], names[kv[0]].casefold()))
    assert [(f["name"], f["count"]) for f in summary["facets"]] == [
        (names[k], n) for k, n in expected
    ]
    assert summary["model"] == archive.settings.model.name

    # A refinement by the top tag finds as many as its count said; top limits the list.
    if expected:
        top = summary["facets"][0]
        refined = client.post("/search/facets?top=3", json={"all": [top["name"]]}, headers=read)
        assert refined.json()["total"] == top["count"]
        assert len(refined.json()["facets"]) <= 3
        hits = client.post("/search", json={"all": [top["name"]], "limit": 200}, headers=read)
        assert len(hits.json()["hits"]) == top["count"]

    # Past `scan` the total is a lower bound.
    capped = client.post("/search/facets?scan=3", json={"limit": 1}, headers=read).json()
    assert capped["total"] == 3 and capped["exact"] is False


def test_facets_answer_bad_searches_as_search_does(archive) -> None:  # noqa: ANN001
    client, read = archive.client, archive.keys.read
    for body in ({"all": ["no such tag at all"]}, {"text": "x", "similar_to": 1}):
        search = client.post("/search", json=body, headers=read)
        facets = client.post("/search/facets", json=body, headers=read)
        assert facets.status_code == search.status_code >= 400
        assert facets.headers["content-type"].startswith("application/problem+json")
    assert client.post("/search/facets", json={}).status_code == 401
    assert client.post("/search/facets?scan=0", json={}, headers=read).status_code == 422


def test_names_of_result_assets(archive) -> None:  # noqa: ANN001
    client, read = archive.client, archive.keys.read
    ids = sorted(archive.images)
    reply = client.get("/search/names", params={"ids": [ids[1], 999_999, ids[0]]}, headers=read)
    assert reply.status_code == 200, reply.text
    expected = {}
    for asset_id in (ids[1], ids[0]):
        uri = client.get(f"/assets/{asset_id}", headers=read).json()["sources"][0]["uri"]
        expected[asset_id] = uri.removeprefix("upload:")
    assert reply.json()["items"] == [{"id": i, "name": expected[i]} for i in (ids[1], ids[0])]
    assert client.get("/search/names", params={"ids": [0]}, headers=read).status_code == 422
    too_many = {"ids": list(range(1, 202))}
    assert client.get("/search/names", params=too_many, headers=read).status_code == 422


@pytest.mark.parametrize(
    ("uri", "name"),
    [
        ("upload:a.jpg", "a.jpg"),
        ("/srv/photos/2024/a.jpg", "a.jpg"),  # never the folders (read keys, api/redact.py)
        ("C:\\shoots\\b.png", "b.png"),
        ("https://cdn.example/p/c.webp?sig=1", "c.webp"),
        ("", None),
        (None, None),
    ],
)
def test_file_name(uri: str | None, name: str | None) -> None:
    assert file_name(uri) == name
