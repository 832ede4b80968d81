"""Filtered concept and similar search reach the frames of videos (issue 17).

A tag, type or date filter plans concept and similar search over the passing set
(:mod:`indexer.search.filtered`); that set must hold the passing assets' frames under their
frame keys, so that a video whose matching scene is not its poster frame is found at that
scene, with its timestamp, exactly as the unfiltered search finds it. The video and the demo
model are real (``tests/test_media_ingest.py``'s folder, ingested through the real pipeline);
the planner's size thresholds are lowered in one test so that the selector and widening plans
run on this small archive too (they are constants of the planner, not a stand-in for a part).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from indexer.archive import Archive
from indexer.db.session import session_scope
from indexer.search import SearchRequest, SearchService
from indexer.search.timing import Phases
from tests.test_media_ingest import _by_name, media_archive

# clip.mp4 (tests/test_media_ingest.py): a red circle 0-2 s (the poster), a blue square 2-4 s,
# a yellow star 4-6 s; still.png is the square scene as a still picture.
SQUARE_AT, STAR_AT = 2.0, 4.0


@pytest.fixture(params=["sqlite", "postgresql"])
def indexed(request: pytest.FixtureRequest, tmp_path: Path):
    """The media folder ingested with the demo model: (settings, asset ids by file name)."""
    with media_archive(request.param, tmp_path) as (settings, summary):
        assert summary.done == 4, summary.failures
        with session_scope(settings.database_url) as s:
            ids = {n: _by_name(s, n).id for n in ("clip.mp4", "anim.gif", "still.png")}
        yield settings, ids


def _at(hit) -> float:
    return round(hit.frames[0].timestamp_s, 1)


def test_filtered_concept_search_finds_the_matching_scene(indexed) -> None:
    """Concept "star" with a tag filter (square: the video and the still pass) and with a type
    filter: the video is found at 4 s, scored as the unfiltered search scores it."""
    settings, ids = indexed
    video = ids["clip.mp4"]
    with Archive(settings) as opened:
        service = SearchService(opened)
        free = {h.asset_id: h for h in service.search(SearchRequest(text="star")).hits}
        assert _at(free[video]) == STAR_AT  # the unfiltered path, for reference
        for filters in ({"all": ["square"]}, {"mime": ["video/*"]}):
            page = service.search(SearchRequest(text="star", **filters))
            hits = {h.asset_id: h for h in page.hits}
            assert video in hits, filters
            assert hits[video].frames, f"{filters}: the filtered search saw the poster only"
            assert _at(hits[video]) == STAR_AT, filters
            # The star frame's score, not the poster's (a red circle).
            assert hits[video].score == pytest.approx(free[video].score, abs=1e-5)
            assert ids["anim.gif"] not in hits or "mime" not in filters


@pytest.mark.parametrize("plan", ["exact", "selector", "widen"])
def test_filtered_similar_search_finds_the_matching_scene(
    indexed, plan: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Similar to the still square, only videos: the video is found at 2 s under every plan;
    similar to the video itself, its own frames are no hits."""
    import indexer.search.filtered as filtered

    if plan != "exact":  # count the filter in SQL, list its frames by the join (large path)
        monkeypatch.setattr(filtered, "EXACT_MAX", 0)
    if plan == "selector":
        monkeypatch.setattr(filtered, "SELECTOR_MAX_FRACTION", 1.0)
    settings, ids = indexed
    video, still = ids["clip.mp4"], ids["still.png"]
    with Archive(settings) as opened:
        service = SearchService(opened)
        free = {h.asset_id: h for h in service.search(SearchRequest(similar_to=still)).hits}
        phases = Phases()
        page = service.search(SearchRequest(similar_to=still, mime=["video/*"]), phases=phases)
        assert phases.notes["plan"] == plan
        assert [h.asset_id for h in page.hits] == [video]  # the only video, once
        assert page.hits[0].frames, "the filtered search saw the poster only"
        assert _at(page.hits[0]) == SQUARE_AT
        assert page.hits[0].score == pytest.approx(free[video].score, abs=1e-5)
        # Filter passing the animation and the video: the query video's own frames are left
        # out, the animation's frames reached.
        page = service.search(SearchRequest(similar_to=video, all=["square"], mime=["image/*"]))
        assert video not in [h.asset_id for h in page.hits]
        page = service.search(SearchRequest(similar_to=video, all=["star"]))
        hits = {h.asset_id: h for h in page.hits}
        assert video not in hits and ids["anim.gif"] in hits and hits[ids["anim.gif"]].frames
