"""End-to-end: the web UI in headless Chromium (Debian's ``chromium`` driven by Playwright)
against a real server on loopback: key entry, upload with progress, search with tag
autocomplete, free-text concept search, asset detail, concept creation with backfill progress.

Screenshots go to ``test-output/`` for review.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.ingest_fixtures import encode, photo_like
from tests.webui_support import requires_chromium, serve_app

pytest_plugins = ["tests.api_support", "tests.webui_support"]

pytestmark = requires_chromium


@pytest.fixture(scope="module")
def server(settings_for, text_encoder_dir, tmp_path_factory) -> Iterator[tuple[str, str]]:
    """A uvicorn server on loopback in a thread; yields (base URL, write key).

    Its own database, not the session's shared one: the server's recovery pass at start would
    otherwise finish assets other test modules left pending, and the grid would show them too.
    """
    from tests.api_support import fresh_database, make_keys

    with fresh_database("sqlite", tmp_path_factory.mktemp("ui-db")) as url:
        settings = settings_for(tmp_path_factory.mktemp("ui-home"), url, text_encoder_dir)
        keys = make_keys(url)
        with serve_app(settings) as base:
            yield base, keys.write["Authorization"].removeprefix("Bearer ")


def _wait_for_hits(page, count: int) -> None:  # noqa: ANN001 - a Playwright page
    """Wait until the grid shows ``count`` hits; on timeout say what it showed instead."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(
            f"() => document.querySelectorAll('#results .hit').length === {count}"
        )
    except PlaywrightTimeout:
        shown = page.eval_on_selector_all("#results .hit", "els => els.length")
        status = page.text_content("#search-status")
        raise AssertionError(f"grid shows {shown} hits, not {count}; status: {status!r}") from None


def test_upload_search_open_and_create_a_concept(
    server, browser, tmp_path, test_output_dir
) -> None:
    base, key = server
    files = []
    for i in range(3):
        path = tmp_path / f"holiday-{i}.jpg"
        path.write_bytes(encode(photo_like(160, 120, seed=300 + i), "JPEG"))
        files.append(str(path))

    page = browser.new_page(viewport={"width": 1280, "height": 860})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # The UI runs under its Content-Security-Policy (api/hardening.py): no violation may occur.
    # (Predicates below are functions: Playwright evaluates expression strings with eval.)
    page.on(
        "console",
        lambda msg: errors.append(msg.text) if "Content Security Policy" in msg.text else None,
    )
    page.set_default_timeout(30_000)
    response = page.goto(base + "/")
    assert (
        response is not None
        and "frame-ancestors 'none'" in response.headers["content-security-policy"]
    )

    # Without a key the page says so; with one it shows the key's scopes.
    page.wait_for_function("() => document.querySelector('#key-status').textContent.length > 0")
    assert "API key" in page.text_content("#key-status")
    page.fill("#api-key", key)
    page.click("#save-key")
    page.wait_for_function(
        "() => document.querySelector('#key-status').textContent.includes('write')"
    )

    # Upload three files: progress reaches 100 and the jobs finish.
    page.set_input_files("#upload-input", files)
    page.click("#upload-button")
    page.wait_for_function(
        "() => document.querySelector('#upload-status').textContent.startsWith('indexed 3')"
    )
    assert page.eval_on_selector("#upload-progress", "el => el.value") == 100

    # The grid shows the new assets, thumbnails loaded through the key.
    _wait_for_hits(page, 3)
    page.wait_for_function(
        "() => [...document.querySelectorAll('#results .hit img')].every(i => i.naturalWidth > 0)"
    )

    # Tag autocomplete: typing a prefix lists tags; picking one makes a filter chip.
    page.fill("#search-input", "a")
    page.wait_for_selector("#suggestions li")
    suggestion = page.text_content("#suggestions li")
    assert suggestion and suggestion.lower().startswith("a")
    page.click("#suggestions li")
    chip = page.text_content("#tag-chips .chip .name")
    assert chip == suggestion.split(" · ")[0]
    page.click("#tag-chips .chip .remove")

    # Free text is searched as an open-set concept: scores and the reason on every card.
    page.fill("#search-input", "snowy mountain cabin")
    page.click("#search-button")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#results .hit .why')].length === 3 && "
        "[...document.querySelectorAll('#results .hit .why')]"
        ".every(e => e.textContent.startsWith('snowy mountain cabin'))"
    )
    scores = [
        float(s)
        for s in page.eval_on_selector_all(".hit .score", "els => els.map(e => e.textContent)")
    ]
    assert scores == sorted(scores, reverse=True)
    page.screenshot(path=str(test_output_dir / "webui-search.png"), full_page=True)

    # Open an asset: the detail lists every stored tag with both names.
    page.click("#results .hit")
    page.wait_for_selector("#detail[open] #detail-tags tbody tr", state="attached")
    rows = page.eval_on_selector_all(
        "#detail-tags tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))"
    )
    assert rows and all(en and zh for en, zh, _score in rows)
    assert "upload:holiday-" in page.text_content("#detail-meta")
    page.wait_for_function("() => document.querySelector('#detail-image').naturalWidth > 0")
    page.screenshot(path=str(test_output_dir / "webui-detail.png"))
    page.click("#detail .close")

    # Create a concept: the backfill runs with progress and the concept becomes a tag.
    page.fill("#concept-name", "red kite")
    page.fill("#concept-descriptions", "a red kite flying in a blue sky")
    page.click("#concept-create")
    page.wait_for_function(
        "() => document.querySelector('#concept-status').textContent.includes('is now a tag')"
    )
    assert "3 assets scored" in page.text_content("#concept-status")
    assert page.eval_on_selector("#concept-progress", "el => el.value") == 100
    page.wait_for_function(
        "() => document.querySelector('#concepts-list').textContent.includes('red kite')"
    )
    page.fill("#search-input", "red k")
    page.wait_for_selector("#suggestions li.concept")
    page.screenshot(path=str(test_output_dir / "webui-concept.png"), full_page=True)
    assert not errors, errors
