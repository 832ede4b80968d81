"""Search through the API on a small ingested archive (PostgreSQL and SQLite): tag filters,
free-text concepts, similar images, sorting, pagination, and reasons for each hit.

Expected results are computed independently of the search code: from each asset's stored tag
scores (``GET /assets/{id}``), from the stored image embeddings, and from the model's own
(plain-path) RAM++ head over the token store.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import sqlalchemy as sa

from indexer.db.assets import Asset
from indexer.db.session import create_engine_for
from indexer.db.vectors import decode_vector
from indexer.models import configured_model_id
from tests.api_support import MODEL

pytest_plugins = ["tests.api_support"]


def details(archive) -> dict[int, dict]:
    c, k = archive.client, archive.keys
    return {i: c.get(f"/assets/{i}", headers=k.read).json() for i in archive.images}


def stored_scores(detail: dict) -> dict[str, tuple[float, float]]:
    """English tag name -> (score, threshold) from an asset's detail."""
    return {t["name"]: (t["score"], t["threshold"]) for t in detail["tags"]}


def search(archive, **body) -> dict:
    reply = archive.client.post("/search", json=body, headers=archive.keys.read)
    assert reply.status_code == 200, reply.text
    return reply.json()


def hit_ids(page: dict) -> list[int]:
    return [h["asset"]["id"] for h in page["hits"]]


def test_asset_detail_has_tags_in_both_languages_and_facts(archive) -> None:
    for asset_id, detail in details(archive).items():
        assert detail["status"] == "done" and detail["error"] is None
        assert (detail["width"], detail["height"]) == (80, 60)
        assert detail["mime"] in ("image/png", "image/jpeg")
        assert detail["bytes"] == len(archive.images[asset_id])
        assert detail["sources"][0]["uri"].startswith("upload:photo-")
        assert detail["model_id"] == configured_model_id(archive.settings)
        assert detail["model"] == MODEL  # the human name: the registered config name
        tags = detail["tags"]
        assert tags and all(t["name"] and t["name_zh"] for t in tags)
        scores = [t["score"] for t in tags]
        assert scores == sorted(scores, reverse=True)
        assert all(t["above_threshold"] == (t["score"] > t["threshold"]) for t in tags)


def _cut(info: dict[int, dict], name: str) -> float:
    """A min_score that splits the archive: the median stored score of a tag."""
    return float(np.median([stored_scores(d).get(name, (0.0, 1.0))[0] for d in info.values()]))


def test_tag_search_matches_the_stored_scores(archive) -> None:
    info = details(archive)
    tags = archive.client.get("/tags?limit=100", headers=archive.keys.read).json()["items"]
    names = [t["name"] for t in tags if t["origin"] == "builtin"]
    seen_sizes = set()
    for first, second in [(names[0], names[1]), (names[2], names[3]), (names[1], names[4])]:
        cut = _cut(info, first)

        def score(d: dict, n: str) -> float:
            return stored_scores(d).get(n, (0.0, 1.0))[0]

        want_all = {
            i for i, d in info.items() if score(d, first) >= cut and score(d, second) >= cut
        }
        page = search(archive, all=[first, second], min_score=cut, limit=200)
        assert set(hit_ids(page)) == want_all
        want = {i for i, d in info.items() if score(d, first) >= cut and score(d, second) < cut}
        page = search(archive, any=[first], none=[second], min_score=cut, limit=200)
        assert set(hit_ids(page)) == want
        seen_sizes |= {len(want_all), len(want)}
        for hit in page["hits"]:  # ranked by the tag's score, which is the reason given
            reason = hit["reasons"][0]
            assert reason["kind"] == "tag" and reason["name"] == first
            assert reason["score"] == pytest.approx(score(info[hit["asset"]["id"]], first))
        assert [h["score"] for h in page["hits"]] == sorted(
            (h["score"] for h in page["hits"]), reverse=True
        )
    # The cases above are not all trivial: some select part of the archive.
    assert seen_sizes & set(range(1, len(info)))


def test_tag_search_by_chinese_name(archive) -> None:
    info = details(archive)
    tag = archive.client.get("/tags?limit=1", headers=archive.keys.read).json()["items"][0]
    cut = _cut(info, tag["name"])
    want = {i for i, d in info.items() if stored_scores(d).get(tag["name"], (0, 1))[0] >= cut}
    assert 0 < len(want) < len(info) + 1
    by_en = search(archive, all=[tag["name"]], min_score=cut, limit=200)
    by_zh = search(archive, all=[tag["name_zh"]], min_score=cut, limit=200)
    assert set(hit_ids(by_en)) == set(hit_ids(by_zh)) == want
    assert by_zh["hits"][0]["reasons"][0]["name_zh"] == tag["name_zh"]
    # GET with query parameters is the same search.
    reply = archive.client.get(
        "/search",
        params={"all": tag["name_zh"], "min_score": cut, "limit": 200},
        headers=archive.keys.read,
    )
    assert set(hit_ids(reply.json())) == want


def test_unknown_tags_and_bad_combinations_are_422(archive) -> None:
    c, k = archive.client, archive.keys
    reply = c.post("/search", json={"all": ["no such tag'; DROP TABLE assets;--"]}, headers=k.read)
    assert reply.status_code == 422 and reply.json()["unknown"] == [
        "no such tag'; DROP TABLE assets;--"
    ]
    reply = c.post("/search", json={"text": "dog", "similar_to": 1}, headers=k.read)
    assert reply.status_code == 422
    reply = c.post(
        "/search",
        json={"created_after": "2030-01-01T00:00:00Z", "created_before": "2020-01-01T00:00:00Z"},
        headers=k.read,
    )
    assert reply.status_code == 422
    assert c.post("/search", json={"bogus": 1}, headers=k.read).status_code == 422


def test_filters_on_type_and_date(archive) -> None:
    info = details(archive)
    pngs = {i for i, d in info.items() if d["mime"] == "image/png"}
    assert set(hit_ids(search(archive, mime=["image/png"], limit=200))) == pngs
    assert set(hit_ids(search(archive, mime=["image/*"], limit=200))) == set(info)
    assert hit_ids(search(archive, created_before="2000-01-01T00:00:00Z")) == []
    everything = search(archive, limit=200)
    assert set(hit_ids(everything)) == set(info)  # no terms: every done asset, newest first
    assert hit_ids(everything) == sorted(info, reverse=True)


def test_free_text_is_scored_as_an_open_set_concept(archive, reference_probs) -> None:
    text = "Brutalist stairwell"
    page = search(archive, text=text, limit=200)
    reference = reference_probs(archive.settings, text, [])
    assert set(hit_ids(page)) == set(reference) == set(archive.images)
    scores = [h["score"] for h in page["hits"]]
    assert scores == sorted(scores, reverse=True)
    for hit in page["hits"]:
        assert hit["score"] == pytest.approx(reference[hit["asset"]["id"]], abs=1e-4)
        reason = hit["reasons"][0]
        assert reason["kind"] == "concept" and reason["name"] == text
        assert reason["above_threshold"] == (hit["score"] > page["concept_threshold"])
    assert 0 < page["concept_threshold"] <= 0.5


def test_concept_search_combines_with_tag_filters(archive) -> None:
    info = details(archive)
    pngs = {i for i, d in info.items() if d["mime"] == "image/png"}
    page = search(archive, text="harbour at dusk", mime=["image/png"], limit=200)
    assert set(hit_ids(page)) == pngs
    assert page["concept_threshold"] is not None


def _embeddings(archive) -> dict[int, np.ndarray]:
    engine = create_engine_for(archive.db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(Asset.id, Asset.embedding, Asset.embedding_dim)).all()
    finally:
        engine.dispose()
    return {int(i): decode_vector(e, d) for i, e, d in rows}


def test_similar_to_an_asset_ranks_by_cosine(archive) -> None:
    vectors = _embeddings(archive)
    target = min(archive.images)
    page = search(archive, similar_to=target, limit=200)
    ids = hit_ids(page)
    assert target not in ids and set(ids) == set(archive.images) - {target}
    for hit in page["hits"]:
        expected = float(vectors[target] @ vectors[hit["asset"]["id"]])
        assert hit["score"] == pytest.approx(expected, abs=1e-5)
        assert hit["reasons"][0]["kind"] == "similar"
    assert [h["score"] for h in page["hits"]] == sorted(
        (h["score"] for h in page["hits"]), reverse=True
    )
    reply = archive.client.post("/search", json={"similar_to": 10**9}, headers=archive.keys.read)
    assert reply.status_code == 404


def test_similar_to_an_uploaded_image_finds_the_same_picture(archive) -> None:
    target = max(archive.images)
    reply = archive.client.post(
        "/search/image",
        files={"file": ("query.img", io.BytesIO(archive.images[target]))},
        data={"limit": "3"},
        headers=archive.keys.read,
    )
    assert reply.status_code == 200, reply.text
    top = reply.json()["hits"][0]
    assert top["asset"]["id"] == target and top["score"] == pytest.approx(1.0, abs=1e-4)
    bad = archive.client.post(
        "/search/image", files={"file": ("x.jpg", b"not an image")}, headers=archive.keys.read
    )
    assert bad.status_code == 422 and bad.json()["type"].endswith("bad-image")


@pytest.mark.parametrize("body", [{"text": "red kite"}, {}, {"sort": "date", "text": "red kite"}])
def test_cursor_pages_add_up_to_one_big_page(archive, body) -> None:
    whole = hit_ids(search(archive, **body, limit=200))
    pages, cursor = [], None
    while True:
        page = search(archive, **body, limit=3, cursor=cursor)
        pages += hit_ids(page)
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == whole and len(whole) == len(archive.images)


def test_cursors_are_tied_to_their_query(archive) -> None:
    page = search(archive, text="red kite", limit=2)
    reply = archive.client.post(
        "/search",
        json={"text": "blue kite", "limit": 2, "cursor": page["next_cursor"]},
        headers=archive.keys.read,
    )
    assert reply.status_code == 400 and "another query" in reply.json()["detail"]
    reply = archive.client.post(
        "/search", json={"cursor": "%%%not-a-cursor"}, headers=archive.keys.read
    )
    assert reply.status_code == 400


def test_sort_by_date_orders_the_recalled_assets_newest_first(archive) -> None:
    info = details(archive)
    page = search(archive, text="red kite", sort="date", limit=200)
    created = [(info[i]["created_at"], i) for i in hit_ids(page)]
    assert created == sorted(created, reverse=True)
    # Tag-only: every matching asset, newest first, in pages of 2.
    tag = next(t["name"] for d in info.values() for t in d["tags"])
    by_score = hit_ids(search(archive, all=[tag], min_score=0.0, limit=200))
    assert len(by_score) >= 3
    seen, cursor = [], None
    while True:
        body = {"all": [tag], "min_score": 0.0, "sort": "date", "limit": 2}
        body.update({"cursor": cursor} if cursor else {})
        page = search(archive, **body)
        seen += hit_ids(page)
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert sorted(seen) == sorted(by_score)
    created = [(info[i]["created_at"], i) for i in seen]
    assert created == sorted(created, reverse=True)


def test_search_reports_model_latency_metrics(archive) -> None:
    search(archive, text="lighthouse", limit=1)
    text = archive.client.get("/metrics", headers=archive.keys.read).text
    assert 'ramdex_model_latency_seconds_count{operation="encode_text"}' in text
    assert 'ramdex_model_latency_seconds_count{operation="concept_' in text
