"""End-to-end: an editor's day in the web UI, in headless Chromium against a real server.

One server (its own SQLite archive of eight uploaded images, two tags' scores set to known values)
and one browser for the module; each test opens a fresh page with the key saved. Flows: tag chips
(autocomplete in English and Chinese, Enter picks the highlighted suggestion, all/any/not),
facets, type/date filters, sort, paging as the end of the grid comes into view, free-text concept
search with its calibrated threshold, similar search (card, pasted and dropped image), the asset
view (arrows, Esc, download, delete with confirmation, tags grouped by source), curation on a
selection, uploads of files and folders with each file's outcome, the jobs panel, concepts; then
layouts at 360-2560 px, keyboard-only use and an axe-core accessibility check. Every step checks
what the archive holds through the API, not only the page.

Screenshots go to ``test-output/webui/`` (desktop 1440 and phone 360/420 widths).
"""

from __future__ import annotations

import base64
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from indexer import db
from indexer.db.session import session_scope
from indexer.db.tags import Tag
from tests.ingest_fixtures import encode, photo_like
from tests.webui_support import (
    DESKTOP,
    PHONES,
    axe_violations,
    open_ui,
    requires_chromium,
    serve_app,
)

pytest_plugins = ["tests.api_support", "tests.webui_support"]

pytestmark = requires_chromium

N = 8
PNG = {0, 3, 6}  # indexes of the PNG uploads (the rest JPEG)
OLD = {6, 7}  # indexes of the assets dated 2020-06-01 (the rest today)
OUT = Path(__file__).resolve().parents[1] / "test-output" / "webui"  # as conftest's test_output_dir


@dataclass
class TagInfo:
    name: str
    name_zh: str
    on: set[int]  # asset ids the tag matches (score set above its threshold)


@dataclass
class Env:
    """The server, a write key, the assets (upload order) and their bytes and names."""

    base: str
    key: str
    model: str  # the model's human name
    ids: list[int]
    data: dict[int, bytes]
    names: dict[int, str]
    a: TagInfo
    b: TagInfo
    c: TagInfo  # a model tag left as scored (curation works on it)
    out: Path
    extra: list[int] = field(default_factory=list)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.base + path, headers=self.auth, timeout=30)

    def json(self, path: str) -> dict:
        reply = self.get(path)
        assert reply.status_code == 200, reply.text
        return reply.json()

    def search(self, **body) -> dict:
        reply = httpx.post(self.base + "/search", json=body, headers=self.auth, timeout=60)
        assert reply.status_code == 200, reply.text
        return reply.json()

    def matching(self, asset_id: int) -> dict[str, dict]:
        """The asset's tags that match a default search, by label key (the provenance view)."""
        tags = self.json(f"/labels/assets/{asset_id}")["tags"]
        return {t["key"]: t for t in tags if t["matches"]}

    def upload(self, name: str, data: bytes) -> int:
        """Upload through the API, wait for indexing; the asset id."""
        reply = httpx.post(
            self.base + "/assets", files={"file": (name, data)}, headers=self.auth, timeout=60
        )
        assert reply.status_code == 202, reply.text
        wait_job(self, reply.json()["job"]["id"])
        return reply.json()["asset_ids"][0]


def wait_job(env: Env, job_id: int) -> dict:
    deadline = time.monotonic() + 60
    while (job := env.json(f"/jobs/{job_id}"))["status"] not in ("done", "failed", "cancelled"):
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    return job


@pytest.fixture(scope="module")
def env(settings_for, text_encoder_dir, tmp_path_factory) -> Iterator[Env]:
    from tests.api_support import fresh_database, make_keys

    with fresh_database("sqlite", tmp_path_factory.mktemp("ui-flows-db")) as url:
        settings = settings_for(tmp_path_factory.mktemp("ui-flows-home"), url, text_encoder_dir)
        key = make_keys(url).write["Authorization"].removeprefix("Bearer ")
        out = OUT
        out.mkdir(parents=True, exist_ok=True)
        with serve_app(settings) as base:
            env = Env(base, key, settings.model.name, [], {}, {}, None, None, None, out)  # type: ignore[arg-type]
            jobs = []
            for i in range(N):  # all sent, then waited for: the model batches them
                fmt, ext = ("PNG", "png") if i in PNG else ("JPEG", "jpg")
                data = encode(photo_like(120, 90, seed=900 + i), fmt)
                reply = httpx.post(
                    base + "/assets",
                    files={"file": (f"harbour-{i}.{ext}", data)},
                    headers=env.auth,
                    timeout=60,
                )
                assert reply.status_code == 202, reply.text
                asset_id = reply.json()["asset_ids"][0]
                jobs.append(reply.json()["job"]["id"])
                env.ids.append(asset_id)
                env.data[asset_id] = data
                env.names[asset_id] = f"harbour-{i}.{ext}"
            for job_id in jobs:
                assert wait_job(env, job_id)["status"] == "done"
            ids = env.ids
            with session_scope(url) as s:
                model_id = s.scalar(sa.select(db.Asset.model_name).where(db.Asset.id == ids[0]))
                tags = list(
                    s.scalars(
                        sa.select(Tag)
                        .where(Tag.model_name == model_id, Tag.chinese.is_not(None))
                        .order_by(Tag.position)
                    )
                )
                # Three tags whose names start differently (autocomplete must tell them apart).
                picked: list[Tag] = []
                for tag in tags:
                    if all(tag.english[:2].lower() != p.english[:2].lower() for p in picked):
                        picked.append(tag)
                    if len(picked) == 3:
                        break
                infos = []
                for tag, on in zip(picked[:2], ([0, 1, 2, 3], [0, 1, 5]), strict=True):
                    threshold = tag.threshold_override or tag.threshold
                    scores = [
                        min(0.99, threshold + 0.2) if i in on else max(0.0, threshold - 0.2)
                        for i in range(N)
                    ]
                    db.write_tag_scores(s, tag.id, ids, scores, score_floor=0.0)
                    infos.append(TagInfo(tag.english, tag.chinese, {ids[i] for i in on}))
                env.a, env.b = infos
                env.c = TagInfo(picked[2].english, picked[2].chinese, set())
                old = [ids[i] for i in OLD]
                s.execute(
                    sa.update(db.Asset)
                    .where(db.Asset.id.in_(old))
                    .values(created_at=sa.literal("2020-06-01 12:00:00"))
                )
            yield env


def _ids(page) -> list[int]:  # noqa: ANN001 - a Playwright page
    return page.eval_on_selector_all(
        "#results .hit", "els => els.map(e => Number(e.dataset.assetId))"
    )


def _wait_grid(page, expected) -> None:  # noqa: ANN001
    """Wait until the grid shows exactly the asset ids ``expected`` (a set, or a list in order)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    want = sorted(expected) if isinstance(expected, set) else list(expected)
    sort = ".sort((a, b) => a - b)" if isinstance(expected, set) else ""
    try:
        page.wait_for_function(
            "want => { const got = [...document.querySelectorAll('#results .hit')]"
            f".map(e => Number(e.dataset.assetId)){sort}; "
            "return document.querySelector('#search-status').textContent !== 'searching…' && "
            "JSON.stringify(got) === JSON.stringify(want); }",
            arg=want,
        )
    except PlaywrightTimeout:
        status = page.text_content("#search-status")
        raise AssertionError(f"grid shows {_ids(page)}, not {want}; status: {status!r}") from None


def _wait_ranked(page, hits: list[dict]) -> None:  # noqa: ANN001
    """Wait until the grid shows the API's ``hits``; then check each card's score and that the
    scores fall (equal scores may come in any order: the tiny model ties)."""
    _wait_grid(page, {h["asset"]["id"] for h in hits})
    shown = page.eval_on_selector_all(
        "#results .hit",
        "els => els.map(e => [Number(e.dataset.assetId), e.querySelector('.score').textContent])",
    )
    want = {h["asset"]["id"]: f"{h['score']:.3f}" for h in hits}
    assert {i: s for i, s in shown} == want
    scores = [float(s) for _, s in shown]
    assert scores == sorted(scores, reverse=True)


def _status(page) -> str:  # noqa: ANN001
    return page.text_content("#search-status") or ""


def _chips(page) -> list[tuple[str, str]]:  # noqa: ANN001
    """The chips as (name, state shown)."""
    return [
        tuple(c)
        for c in page.eval_on_selector_all(
            "#tag-chips .chip",
            "els => els.map(e => [e.querySelector('.name').textContent, "
            "e.querySelector('.mode').textContent])",
        )
    ]


def _pick(page, typed: str, name: str) -> None:  # noqa: ANN001
    """Type ``typed`` in the search box, move down the suggestions to ``name`` and press Enter."""
    page.fill("#search-input", typed)
    page.wait_for_selector("#suggestions li")
    page.wait_for_function(
        "name => [...document.querySelectorAll('#suggestions li')]"
        ".some(li => li.textContent.split(' · ')[0] === name)",
        arg=name,
    )
    options = [
        t.split(" · ")[0]
        for t in page.eval_on_selector_all("#suggestions li", "els => els.map(e => e.textContent)")
    ]
    active = page.eval_on_selector_all(
        "#suggestions li", "els => els.findIndex(e => e.classList.contains('active'))"
    )
    for _ in range((options.index(name) - active) % len(options)):
        page.keyboard.press("ArrowDown")
    assert page.text_content("#suggestions li.active").split(" · ")[0] == name
    page.keyboard.press("Enter")


def test_tag_chips_facets_filters_and_sort(env: Env, browser) -> None:
    page, errors = open_ui(browser, env.base, env.key)
    everything = set(env.ids)
    _wait_grid(page, everything)
    page.wait_for_function(
        "() => document.querySelector('#search-status').textContent.includes('results')"
    )
    assert _status(page).startswith(f"{N} results · {N} shown · ")
    # Cards name their files.
    page.wait_for_function(
        "() => [...document.querySelectorAll('#results .hit .name')]"
        ".every(n => !n.textContent.startsWith('asset '))"
    )
    shown = page.eval_on_selector_all(
        "#results .hit",
        "els => els.map(e => [Number(e.dataset.assetId), e.querySelector('.name').textContent])",
    )
    assert {i: n for i, n in shown} == env.names

    # Autocomplete: arrows to the tag, Enter picks it (no free-text search for the prefix).
    _pick(page, env.a.name[:2], env.a.name)
    assert page.input_value("#search-input") == ""
    assert _chips(page) == [(env.a.name, "all")]
    _wait_grid(page, env.a.on)
    page.wait_for_function(
        "() => document.querySelector('#search-status').textContent.includes('results')"
    )
    assert _status(page).startswith(f"{len(env.a.on)} results")
    assert "concept" not in _status(page)

    # Facets: the most frequent matching tags among the results, as the provenance view counts.
    counts: Counter[str] = Counter()
    names: dict[str, str] = {}
    for asset_id in env.a.on:
        for key, tag in env.matching(asset_id).items():
            counts[key] += 1
            names[key] = tag["name"]
    del counts[env.a.name.casefold()]
    expected = sorted(counts.items(), key=lambda kv: (-kv[1], names[kv[0]].casefold()))
    page.wait_for_selector("#facets .facet")
    facets = page.eval_on_selector_all(
        "#facets .facet",
        "els => els.map(e => [e.dataset.name, Number(e.querySelector('.count').textContent)])",
    )
    assert facets == [[names[k], n] for k, n in expected][: len(facets)]
    assert len(facets) == min(12, len(expected))
    page.screenshot(path=str(env.out / "search-facets-1440.png"), full_page=True)
    # a facet refines: its tag becomes a chip
    first = facets[0][0]
    page.click(f'#facets .facet[data-name="{first}"]')
    with_first = {a for a in env.a.on if first.casefold() in env.matching(a)}
    _wait_grid(page, with_first)
    assert _chips(page) == [(env.a.name, "all"), (first, "all")]
    page.click(f'#tag-chips .chip[data-name="{first}"] .remove')
    _wait_grid(page, env.a.on)

    # Chinese: the exact name is highlighted as typed; Enter picks it.
    page.fill("#search-input", env.b.name_zh)
    page.wait_for_selector("#suggestions li.active")
    assert page.text_content("#suggestions li.active").split(" · ")[0] == env.b.name
    page.keyboard.press("Enter")
    _wait_grid(page, env.a.on & env.b.on)

    # A chip's state is visible and cycles all -> any -> not.
    mode = f'#tag-chips .chip[data-name="{env.a.name}"] .mode'
    page.click(mode)
    assert _chips(page)[0] == (env.a.name, "any")
    assert page.get_attribute(mode, "aria-label").startswith("any (one of these)")
    _wait_grid(page, env.a.on & env.b.on)
    page.click(mode)
    assert _chips(page)[0] == (env.a.name, "not")
    assert page.get_attribute(mode, "aria-label").startswith("not (excluded)")
    _wait_grid(page, env.b.on - env.a.on)
    page.screenshot(path=str(env.out / "search-chips-1440.png"), full_page=True)

    # Backspace in the empty box takes the chips off, one at a time.
    page.click("#search-input")
    page.keyboard.press("Backspace")
    page.keyboard.press("Backspace")
    assert _chips(page) == []
    _wait_grid(page, everything)

    # Type and date filters, sort by date.
    page.select_option("#type-filter", "image/png")
    _wait_grid(page, {env.ids[i] for i in PNG})
    page.select_option("#type-filter", "")
    page.fill("#date-to", "2020-12-31")
    page.dispatch_event("#date-to", "change")
    _wait_grid(page, {env.ids[i] for i in OLD})
    page.fill("#date-to", "")
    # Sort: a concept ranks by its score; by date, newest first.
    page.fill("#search-input", "quayside at night")
    page.press("#search-input", "Enter")
    _wait_ranked(page, env.search(text="quayside at night")["hits"])
    with page.expect_response(lambda r: r.url.endswith("/search")) as reply:
        page.select_option("#sort", "date")
    assert reply.value.request.post_data_json["sort"] == "date"
    page.wait_for_function(
        "() => document.querySelector('#search-status').textContent.includes('results')"
    )
    by_date = _ids(page)
    created = [env.json(f"/assets/{i}")["created_at"] for i in by_date]
    assert sorted(by_date) == sorted(env.ids) and created == sorted(created, reverse=True)
    assert set(by_date[-2:]) == {env.ids[i] for i in OLD}

    # A bad filter is said inline, and the stale grid goes.
    page.fill("#search-input", "")
    page.fill("#date-from", "2021-01-01")
    page.fill("#date-to", "2020-12-31")
    page.dispatch_event("#date-to", "change")
    page.wait_for_selector("#search-status[role=alert]")
    assert _status(page).startswith("422: ")
    assert _ids(page) == []

    # A refused key: the error, the key help, and nothing left of what the old key saw.
    page.fill("#date-from", "")
    page.fill("#date-to", "")
    page.dispatch_event("#date-to", "change")
    _wait_grid(page, set(by_date))
    page.fill("#api-key", "rdx_not-a-key")
    page.click("#save-key")
    page.wait_for_function(
        "() => document.querySelector('#key-status').textContent.startsWith('key refused')"
    )
    assert _ids(page) == [] and page.is_visible("#key-hint")
    assert not errors, errors
    page.context.close()


def test_concept_search_shows_its_threshold_and_pages_in(env: Env, browser) -> None:
    page, errors = open_ui(browser, env.base, env.key)
    _wait_grid(page, set(env.ids))
    page.eval_on_selector("#results", "el => { el.dataset.pageSize = '3'; }")
    text = "foggy harbour at dawn"
    page.fill("#search-input", text)
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url) if r.url.endswith("/search") else None)
    page.press("#search-input", "Enter")
    api = env.search(text=text, limit=200)
    # Pages load as the end of the grid comes into view, in the API's order.
    _wait_ranked(page, api["hits"])
    assert len(requests) == 3  # 3 + 3 + 2
    page.wait_for_function(
        "() => document.querySelector('#search-status').textContent.includes('threshold')"
    )
    status = _status(page)
    threshold = api["concept_threshold"]
    above = {h["asset"]["id"] for h in api["hits"] if h["reasons"][0]["above_threshold"]}
    assert f"concept threshold {threshold:.2f} (calibrated): {len(above)} shown above it" in status
    marked = page.eval_on_selector_all(
        "#results .hit.above", "els => els.map(e => Number(e.dataset.assetId))"
    )
    assert set(marked) == above
    assert page.locator("#results .hit.above .above-badge").count() == len(above)
    page.screenshot(path=str(env.out / "concept-search-1440.png"), full_page=True)
    assert not errors, errors
    page.context.close()


def _image_event(page, selector: str, kind: str, data: bytes, name: str) -> None:  # noqa: ANN001
    """Paste (on ``selector``) or drop (on it) an image file made from ``data``."""
    page.evaluate(
        """([selector, kind, b64, name]) => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            const type = name.endsWith('.png') ? 'image/png' : 'image/jpeg';
            dt.items.add(new File([bytes], name, {type}));
            const target = document.querySelector(selector);
            const event = kind === 'paste'
              ? new ClipboardEvent('paste', {clipboardData: dt, bubbles: true})
              : new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true});
            target.dispatchEvent(event);
        }""",
        [selector, kind, base64.b64encode(data).decode(), name],
    )


def test_similar_from_card_paste_and_drop(env: Env, browser) -> None:
    page, errors = open_ui(browser, env.base, env.key)
    _wait_grid(page, set(env.ids))
    target = env.ids[1]
    page.click(f'#results .hit[data-asset-id="{target}"] .similar')
    api = env.search(similar_to=target, limit=40)
    _wait_ranked(page, api["hits"])
    assert target not in _ids(page) and len(_ids(page)) == N - 1
    assert page.text_content("#query-chip span") == f"Similar to {env.names[target]}"
    assert page.text_content("#results .hit .why").startswith(api["hits"][0]["reasons"][0]["name"])

    # A pasted image: the asset with those very bytes comes first.
    pasted = env.ids[3]
    _image_event(page, "body", "paste", env.data[pasted], "clipboard.png")
    page.wait_for_function(
        "id => document.querySelector('#results .hit')?.dataset.assetId === String(id) && "
        "document.querySelectorAll('#results .hit').length === 8",
        arg=pasted,
    )
    assert page.text_content("#query-chip span") == "Similar to clipboard.png"
    # A dropped one, on the search box.
    dropped = env.ids[5]
    _image_event(page, "#search-box", "drop", env.data[dropped], "dropped.jpg")
    page.wait_for_function(
        "id => document.querySelector('#results .hit')?.dataset.assetId === String(id)", arg=dropped
    )
    assert page.text_content("#query-chip span") == "Similar to dropped.jpg"
    scores = [
        float(s)
        for s in page.eval_on_selector_all(".hit .score", "els => els.map(e => e.textContent)")
    ]
    assert scores == sorted(scores, reverse=True) and scores[0] == pytest.approx(1.0, abs=5e-3)
    page.screenshot(path=str(env.out / "similar-dropped-1440.png"), full_page=True)
    page.click("#query-chip .remove")
    _wait_grid(page, set(env.ids))
    assert page.is_hidden("#query-chip")
    assert not errors, errors
    page.context.close()


def _title(page) -> str:  # noqa: ANN001
    return page.text_content("#detail-title") or ""


def test_asset_view_keys_download_delete(env: Env, browser, tmp_path) -> None:
    doomed = env.upload("to-delete.jpg", encode(photo_like(64, 48, seed=999), "JPEG"))
    page, errors = open_ui(browser, env.base, env.key)
    _wait_grid(page, set(env.ids) | {doomed})
    order = _ids(page)
    at = next(i for i, a in enumerate(order[:-1]) if a in env.a.on)  # a model tag matches
    first = order[at]
    page.click(f'#results .hit[data-asset-id="{first}"] .open')
    page.wait_for_selector("#detail[open]")
    page.wait_for_function(
        "n => document.querySelector('#detail-title').textContent === n", arg=env.names[first]
    )
    meta = dict(
        page.eval_on_selector_all(
            "#detail-meta dt",
            "els => els.map(e => [e.textContent, e.nextElementSibling.textContent])",
        )
    )
    assert meta["file"] == env.names[first]
    assert meta["model"].startswith(env.model) and "@" not in meta["model"]
    assert meta["size"].startswith("120×90 px, ") and meta["size"].endswith("KB")
    assert meta["sources"] == f"upload:{env.names[first]}"
    # The large preview is the original itself.
    page.wait_for_function("() => document.querySelector('#detail-image').naturalWidth === 120")

    # Tags grouped by source: a manual tag opens its group, first.
    page.fill("#label-add", "pier lamp")
    page.press("#label-add", "Enter")
    page.locator('#label-tags tr[data-key="pier lamp"]').wait_for()
    groups = page.eval_on_selector_all(
        "#label-tags tr.group th", "els => els.map(e => e.textContent)"
    )
    model_rows = {k for k, t in env.matching(first).items() if t["sources"] == ["model"]}
    assert groups[0] == "Manual (1)" and f"Model ({len(model_rows)})" in groups
    grouped = page.evaluate(
        """() => { let group = null; const out = {};
            for (const tr of document.querySelectorAll('#label-tags tbody tr')) {
              if (tr.classList.contains('group')) group = tr.textContent.split(' (')[0];
              else (out[group] = out[group] || []).push(tr.dataset.key); }
            return out; }"""
    )
    assert grouped["Manual"] == ["pier lamp"] and set(grouped["Model"]) == model_rows
    assert env.matching(first)["pier lamp"]["manual"]
    page.screenshot(path=str(env.out / "asset-view-1440.png"))

    # Arrows walk the results, Esc closes and the card has focus again.
    page.click("#detail-title")  # focus out of the tag input
    page.keyboard.press("ArrowRight")
    page.wait_for_function(
        "n => document.querySelector('#detail-title').textContent === n",
        arg=env.names.get(order[at + 1]),
    )
    assert page.text_content("#detail-position") == f"{at + 2} of {len(order)} shown"
    page.keyboard.press("ArrowLeft")
    page.wait_for_function(
        "n => document.querySelector('#detail-title').textContent === n", arg=env.names[first]
    )
    page.keyboard.press("Escape")
    page.wait_for_selector("#detail", state="hidden")
    assert page.evaluate("() => document.activeElement.closest('.hit').dataset.assetId") == str(
        first
    )

    # Download: the original's bytes under its file name.
    page.click(f'#results .hit[data-asset-id="{first}"] .open')
    page.wait_for_selector("#detail[open]")
    with page.expect_download() as download:
        page.click("#detail-download")
    assert download.value.suggested_filename == env.names[first]
    saved = tmp_path / "download"
    download.value.save_as(saved)
    assert saved.read_bytes() == env.data[first]

    # Delete asks first; Cancel keeps the asset, Delete removes it.
    page.keyboard.press("Escape")
    page.click(f'#results .hit[data-asset-id="{doomed}"] .open')
    page.wait_for_function(
        "() => document.querySelector('#detail-title').textContent === 'to-delete.jpg'"
    )
    page.click("#detail-delete")
    page.wait_for_selector("#confirm[open]")
    assert "to-delete.jpg" in page.text_content("#confirm-text")
    page.screenshot(path=str(env.out / "delete-confirm-1440.png"))
    page.click("#confirm-cancel")
    assert env.get(f"/assets/{doomed}").status_code == 200
    page.click("#detail-delete")
    page.click("#confirm-ok")
    page.wait_for_function(
        "id => !document.querySelector(`#results .hit[data-asset-id='${id}']`)", arg=doomed
    )
    assert env.get(f"/assets/{doomed}").status_code == 404
    # the view goes on to the next result and says what went
    page.wait_for_function(
        "() => document.querySelector('#detail-status').textContent === 'to-delete.jpg deleted'"
    )
    assert _title(page) == env.names[order[1]]
    assert not errors, errors
    page.context.close()


def test_curation_on_a_selection(env: Env, browser) -> None:
    page, errors = open_ui(browser, env.base, env.key)
    _wait_grid(page, set(env.ids))
    order = _ids(page)
    page.click(f'#results .hit[data-asset-id="{order[0]}"] .open', modifiers=["Control"])
    page.click(f'#results .hit[data-asset-id="{order[2]}"] .open', modifiers=["Control"])
    assert page.text_content("#selection-count") == "2 selected"
    page.click(f'#results .hit[data-asset-id="{order[4]}"] .open', modifiers=["Shift"])
    assert page.text_content("#selection-count") == "4 selected"
    assert page.is_hidden("#detail")
    chosen = [order[0], order[2], order[3], order[4]]
    page.fill("#bulk-tag", env.c.name)
    page.click("#bulk-form button[data-action=reject]")
    page.wait_for_function("() => document.querySelector('#bulk-status').classList.contains('ok')")
    for asset_id in chosen:
        view = {t["key"]: t for t in env.json(f"/labels/assets/{asset_id}")["tags"]}
        assert view[env.c.name.casefold()]["review"] == "rejected"
    # Select all results (not only those shown: one page of 3 here) and tag them all.
    page.eval_on_selector("#results", "el => { el.dataset.pageSize = '3'; }")
    page.click("#select-none")
    page.click("#search-button")
    page.wait_for_function("() => document.querySelectorAll('#results .hit').length >= 3")
    page.click("#select-results")
    page.wait_for_function(
        f"() => document.querySelector('#selection-count').textContent === '{N} selected'"
    )
    page.fill("#bulk-tag", "harbour series")
    page.press("#bulk-tag", "Enter")
    page.wait_for_function(
        "() => document.querySelector('#bulk-status').textContent.includes('changed')"
    )
    assert f"{N} changed" in page.text_content("#bulk-status")
    assert all(env.matching(a)["harbour series"]["manual"] for a in env.ids)
    page.screenshot(path=str(env.out / "curation-selection-1440.png"), full_page=True)
    assert not errors, errors
    page.context.close()


def _outcomes(page) -> dict[str, str]:  # noqa: ANN001
    return dict(
        page.eval_on_selector_all(
            "#upload-list li",
            "els => els.map(e => [e.querySelector('.file').textContent,"
            " e.querySelector('.outcome').textContent])",
        )
    )


def test_upload_files_and_folders_each_with_its_outcome(env: Env, browser, tmp_path) -> None:
    files = {
        "new-a.jpg": encode(photo_like(80, 60, seed=1201), "JPEG"),
        "notes.txt": b"not an image at all\n",
        "broken.jpg": b"garbage with an image name",
        "again.jpg": env.data[env.ids[2]],  # the same bytes as an archived asset
        "new-b.png": encode(photo_like(80, 60, seed=1202), "PNG"),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    page, errors = open_ui(browser, env.base, env.key)
    _wait_grid(page, set(env.ids))
    page.set_input_files("#upload-input", [str(tmp_path / n) for n in files])
    assert page.text_content("#upload-status") == "5 files ready"
    page.click("#upload-button")
    page.wait_for_function(
        "() => document.querySelector('#upload-status').textContent.startsWith('indexed')"
    )
    assert (
        page.text_content("#upload-status")
        == "indexed 2 · 1 duplicate · 1 failed · 1 skipped (5 files)"
    )
    assert page.eval_on_selector("#upload-progress", "el => el.value") == 100
    outcome = _outcomes(page)
    failures = [
        f
        for j in env.json("/jobs?limit=20")["items"]
        for f in j["params"].get("failures", [])
        if f["source"] == "upload:broken.jpg"
    ]
    assert [outcome["broken.jpg"]] == [f"failed: {f['reason']}" for f in failures]
    assert outcome["notes.txt"] == "skipped: not an image (text/plain)"
    assert outcome["again.jpg"] == f"duplicate of asset {env.ids[2]}"
    done = {n: int(outcome[n].removeprefix("done: asset ")) for n in ("new-a.jpg", "new-b.png")}
    for name, asset_id in done.items():  # the file after the bad one went too
        asset = env.json(f"/assets/{asset_id}")
        assert asset["status"] == "done" and asset["sources"][0]["uri"] == f"upload:{name}"
    # The new assets show in the grid; the jobs panel shows their jobs finished.
    page.wait_for_function(f"() => document.querySelectorAll('#results .hit').length === {N + 2}")
    jobs = {j["id"]: j for j in env.json("/jobs?limit=20")["items"]}
    page.wait_for_function(
        "() => document.querySelector('#jobs-status').textContent === '0 running'"
    )
    lines = page.eval_on_selector_all(
        "#jobs-list li",
        "els => els.map(e => [Number(e.dataset.jobId), e.querySelector('.line').textContent])",
    )
    assert lines and all(jobs[i]["status"] in line for i, line in lines)
    page.screenshot(path=str(env.out / "upload-outcomes-1440.png"), full_page=True)

    # A folder, with a subfolder and a hidden file.
    shoot = tmp_path / "shoot"
    (shoot / "sub").mkdir(parents=True)
    (shoot / "pier.jpg").write_bytes(encode(photo_like(70, 50, seed=1301), "JPEG"))
    (shoot / "sub" / "crane.png").write_bytes(encode(photo_like(70, 50, seed=1302), "PNG"))
    (shoot / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    page.set_input_files("#folder-input", str(shoot))
    page.click("#upload-button")
    page.wait_for_function(
        "() => document.querySelector('#upload-status').textContent.startsWith('indexed')"
    )
    outcome = _outcomes(page)
    assert set(outcome) == {"shoot/pier.jpg", "shoot/sub/crane.png"}
    assert all(v.startswith("done: asset ") for v in outcome.values())

    # A file dropped on the drop zone uploads at once.
    _image_event(
        page, "#dropzone", "drop", encode(photo_like(70, 50, seed=1401), "JPEG"), "dropped-in.jpg"
    )
    page.wait_for_function(
        "() => document.querySelector('#upload-status').textContent.startsWith('indexed 1')"
    )
    assert _outcomes(page)["dropped-in.jpg"].startswith("done: asset ")
    assert not errors, errors
    page.context.close()


def test_concepts_create_list_delete(env: Env, browser) -> None:
    page, errors = open_ui(browser, env.base, env.key)
    page.wait_for_selector("#results .hit")
    total = sum(a["status"] == "done" for a in env.json("/assets?limit=200")["items"])
    page.fill("#concept-name", "harbour crane")
    page.fill("#concept-descriptions", "a tall crane on a quay\ncontainers stacked by the water")
    page.click("#concept-create")
    page.wait_for_function(
        "() => document.querySelector('#concept-status').textContent.includes('is now a tag')"
    )
    assert f"({total} assets scored)" in page.text_content("#concept-status")
    concept = next(c for c in env.json("/concepts")["items"] if c["name"] == "harbour crane")
    item = f'#concepts-list li[data-concept-id="{concept["id"]}"]'
    page.wait_for_function(
        f"() => document.querySelector('{item}')?.textContent.includes('promoted')"
    )
    given = {"a tall crane on a quay", "containers stacked by the water"}
    assert given <= set(concept["descriptions"])
    assert f"{len(concept['descriptions'])} descriptions" in page.text_content(item)
    page.wait_for_function(
        "t => [...document.querySelectorAll('#jobs-list .line')].some(l => l.textContent.includes("
        f"'backfill of concept {concept['id']} · done · ' + t))",
        arg=f"{total}/{total}",
    )
    page.screenshot(path=str(env.out / "concepts-1440.png"), full_page=True)
    page.click(f'{item} button[aria-label="delete concept harbour crane"]')
    page.click("#confirm-ok")
    page.wait_for_selector(item, state="detached")
    assert all(c["name"] != "harbour crane" for c in env.json("/concepts")["items"])
    assert env.json("/tags?prefix=harbour%20crane")["items"] == []
    assert not errors, errors
    page.context.close()


def test_layouts_keyboard_and_accessibility(env: Env, browser) -> None:
    # One page resized through the widths (a page load each would cost seconds).
    page, errors = open_ui(browser, env.base, env.key, PHONES[0], bypass_csp=True)
    page.wait_for_selector("#results .hit img[src]")
    for viewport in (*PHONES, DESKTOP, {"width": 2560, "height": 1440}):
        width = viewport["width"]
        page.set_viewport_size(viewport)
        overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{width} px: the page is {overflow} px wider than the window"
        page.screenshot(path=str(env.out / f"search-{width}.png"), full_page=width < 1000)
        if width == 360:
            assert axe_violations(page) == [], width
        if width in (360, 1440):
            page.click("#results .hit .open")
            page.wait_for_selector("#detail[open] #label-tags tbody tr")
            page.wait_for_function("() => document.querySelector('#detail-image').naturalWidth > 0")
            page.click("#detail details:last-of-type summary")  # every score, Chinese names too
            overflow = page.evaluate(
                "() => { const d = document.querySelector('#detail');"
                " return d.scrollWidth - d.clientWidth; }"
            )
            assert overflow <= 0, f"{width} px: the asset view overflows by {overflow} px"
            page.screenshot(path=str(env.out / f"asset-view-{width}.png"))
            if width == 1440:  # axe once on the grid (phone) and once on the asset view
                assert axe_violations(page) == [], f"asset view at {width}"
            page.keyboard.press("Escape")
            page.wait_for_selector("#detail", state="hidden")
    assert not errors, errors
    page.context.close()

    # Keyboard only: Tab reaches the key, the search box and a card in that order; Enter on a
    # card opens it, arrows move, Esc closes.
    page, errors = open_ui(browser, env.base, env.key)
    page.wait_for_selector("#results .hit")
    seen: list[str] = []
    for _ in range(60):
        page.keyboard.press("Tab")
        here = page.evaluate(
            "() => { const a = document.activeElement; const card = a.closest('.hit');"
            " return card ? 'card' : a.id || a.className; }"
        )
        seen.append(here)
        if here == "card":
            break
    assert seen[0] == "skip"
    assert seen.index("api-key") < seen.index("search-input") < seen.index("card")
    page.keyboard.press("Enter")
    page.wait_for_selector("#detail[open]")
    page.keyboard.press("Escape")
    page.wait_for_selector("#detail", state="hidden")
    assert page.evaluate("() => !!document.activeElement.closest('.hit')")
    assert not errors, errors
    page.context.close()


def test_a_video_streams_in_the_asset_view(env: Env, browser, tmp_path) -> None:
    """A video's asset view plays its original through a signed link (a <video> element cannot
    send the key header): Chromium loads its metadata with Range requests under the page's CSP,
    and the API's search hit carries the moment the view starts from."""
    from tests.media_fixtures import encode_video, solid

    clip = encode_video(
        tmp_path / "clip.webm", [(solid(c), 1.0) for c in ("red", "blue")], codec="libvpx-vp9"
    )
    video_id = env.upload("clip.webm", clip.read_bytes())
    try:
        page, errors = open_ui(browser, env.base, env.key)
        page.wait_for_selector(f'#results .hit[data-asset-id="{video_id}"]')
        page.click(f'#results .hit[data-asset-id="{video_id}"] .open')
        page.wait_for_selector("#detail-video:not([hidden])")
        src = page.get_attribute("#detail-video", "src") or ""
        assert src.startswith(f"{env.base}/media/{video_id}?") or src.startswith(
            f"/media/{video_id}?"
        ), src
        # HAVE_METADATA: the browser read the WebM's header through the signed link.
        page.wait_for_function(
            "() => document.querySelector('#detail-video').readyState >= 1", timeout=20_000
        )
        duration = page.evaluate("() => document.querySelector('#detail-video').duration")
        assert 1.5 <= duration <= 2.5, duration
        assert page.is_hidden("#detail-image")
        assert not errors, errors
        page.context.close()
    finally:
        httpx.delete(f"{env.base}/assets/{video_id}", headers=env.auth, timeout=30)
