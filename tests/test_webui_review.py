"""End-to-end: the web UI's review features in headless Chromium against a real server on loopback.

An asset's detail view (provenance, reject a model tag, add a manual tag, the change history), the
results grid's multi-select with a bulk change (and an API error shown inline), and the review
queue driven by keyboard (j/k/a/r). Every step checks the stored state through the API
(``GET /labels/assets/{id}``, ``/history``), not only the page.

Screenshots go to ``test-output/`` for review.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote

import httpx
import pytest
import sqlalchemy as sa

from indexer import db
from indexer.db.session import session_scope
from indexer.db.tags import Tag
from tests.ingest_fixtures import encode, photo_like
from tests.webui_support import requires_chromium, serve_app

pytest_plugins = ["tests.api_support", "tests.webui_support"]

pytestmark = requires_chromium


@dataclass
class Env:
    """The server, a write key and the archive the test works on."""

    base: str
    key: str
    tag: str  # a model tag (English name) whose scores the fixture set
    key_name: str  # its label key
    threshold: float
    above: int  # asset scored well above the threshold
    near_above: int  # just above: first in the queue
    near_below: int  # just below: second in the queue

    def get(self, path: str) -> dict:
        """GET an API path with the key; fails on any non-200 reply."""
        reply = httpx.get(self.base + path, headers={"Authorization": f"Bearer {self.key}"})
        assert reply.status_code == 200, reply.text
        return reply.json()

    def tags_of(self, asset_id: int) -> dict[str, dict]:
        """The asset's provenance view by label key."""
        return {t["key"]: t for t in self.get(f"/labels/assets/{asset_id}")["tags"]}


@pytest.fixture(scope="module")
def env(settings_for, text_encoder_dir, tmp_path_factory) -> Iterator[Env]:
    """Three uploaded, indexed images on their own SQLite database; one model tag's scores set
    to known values around its threshold (the uploads' own random scores stay for the rest)."""
    from tests.api_support import fresh_database, make_keys

    with fresh_database("sqlite", tmp_path_factory.mktemp("ui-review-db")) as url:
        settings = settings_for(tmp_path_factory.mktemp("ui-review-home"), url, text_encoder_dir)
        key = make_keys(url).write["Authorization"].removeprefix("Bearer ")
        with serve_app(settings) as base:
            auth = {"Authorization": f"Bearer {key}"}
            jobs, assets = [], []
            for i in range(3):
                data = encode(photo_like(96, 72, seed=700 + i), "JPEG")
                reply = httpx.post(
                    base + "/assets", files={"file": (f"pier-{i}.jpg", data)}, headers=auth
                )
                assert reply.status_code == 202, reply.text
                assets.append(reply.json()["asset_ids"][0])
                jobs.append(reply.json()["job"]["id"])
            deadline = time.monotonic() + 60
            for job_id in jobs:
                while (job := httpx.get(f"{base}/jobs/{job_id}", headers=auth).json())[
                    "status"
                ] not in ("done", "failed", "cancelled"):
                    assert time.monotonic() < deadline, job
                    time.sleep(0.05)
                assert job["status"] == "done", job
            with session_scope(url) as s:
                model_id = s.scalar(sa.select(db.Asset.model_name).where(db.Asset.id == assets[0]))
                tag = s.scalars(
                    sa.select(Tag).where(Tag.model_name == model_id).order_by(Tag.position)
                ).first()
                assert tag is not None
                threshold = tag.threshold_override or tag.threshold
                scores = [min(0.99, threshold + 0.25), threshold + 0.02, threshold - 0.04]
                db.write_tag_scores(s, tag.id, assets, scores, score_floor=0.0)
                name = tag.english
            yield Env(base, key, name, name.casefold(), threshold, *assets)


def _watch(page) -> list[str]:  # noqa: ANN001 - a Playwright page
    """Collect page errors and Content-Security-Policy violations."""
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on(
        "console",
        lambda msg: errors.append(msg.text) if "Content Security Policy" in msg.text else None,
    )
    return errors


def _row(env: Env, key: str) -> str:
    return f'#label-tags tr[data-key="{key}"]'


def test_detail_bulk_and_queue(env: Env, browser, test_output_dir) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors = _watch(page)
    page.set_default_timeout(15_000)
    page.goto(env.base + "/")
    page.fill("#api-key", env.key)
    page.click("#save-key")
    page.wait_for_function("() => document.querySelectorAll('#results .hit').length === 3")

    # --- detail: the model tag above its threshold, with its sources, score and review state
    page.click(f'#results .hit[data-asset-id="{env.above}"] .open')
    row = page.locator(_row(env, env.key_name))
    row.wait_for()
    assert row.get_attribute("class") == "matches"
    assert row.locator(".sources .badge").all_text_contents() == ["model"]
    assert row.locator(".review .badge").text_content() == "unreviewed"
    score, threshold = row.locator(".score").text_content().split(" > ")
    assert float(threshold) == pytest.approx(env.threshold, abs=0.005)
    assert float(score) == pytest.approx(min(0.99, env.threshold + 0.25), abs=0.005)

    # reject it: the row says so, and the archive changed
    row.get_by_role("button", name=f"Reject {env.tag}").click()
    page.wait_for_function(
        f"() => document.querySelector('{_row(env, env.key_name)} .review').textContent"
        " === 'rejected'"
    )
    assert row.get_attribute("class") == "not-matching"
    assert row.get_by_role("button", name=f"Unreview {env.tag}").count() == 1
    stored = env.tags_of(env.above)[env.key_name]
    assert stored["review"] == "rejected" and not stored["matches"]

    # add a manual tag with Enter: a free keyword, shown as manual, stored as manual
    page.fill("#label-add", "Harbour Walk")
    page.press("#label-add", "Enter")
    page.locator(_row(env, "harbour walk")).wait_for()
    assert page.input_value("#label-add") == ""
    manual_row = page.locator(_row(env, "harbour walk"))
    assert manual_row.locator(".sources .badge").all_text_contents() == ["manual"]
    assert manual_row.get_by_role("button", name="Remove Harbour Walk").count() == 1
    stored = env.tags_of(env.above)["harbour walk"]
    assert stored["manual"] and stored["matches"] and stored["tag_id"] is None

    # the history, newest first: who, before -> after
    page.click("#label-history summary")
    items = page.locator("#history-list li")
    items.nth(1).wait_for()
    lines = items.all_text_contents()
    history = env.get(f"/labels/assets/{env.above}/history")["changes"]
    assert [(c["action"], c["key"]) for c in history] == [
        ("add", "harbour walk"),
        ("reject", env.key_name),
    ]
    assert len(lines) == 2 and all("test-write" in line for line in lines)
    assert "add harbour walk: none → manual" in lines[0]
    assert f"reject {env.key_name}: none → rejected" in lines[1]
    page.screenshot(path=str(test_output_dir / "webui-review-detail.png"))
    page.click("#detail .close")

    # --- multi-select: a checkbox, then shift-click selects the range
    boxes = page.locator("#results .hit .select")
    boxes.nth(0).click()
    boxes.nth(2).click(modifiers=["Shift"])
    assert page.text_content("#selection-count") == "3 selected"
    assert page.locator("#results .hit.selected").count() == 3

    # an API error is shown inline (a free keyword has no review decision) and changes nothing
    page.fill("#bulk-tag", "Harbour Walk")
    page.click("#bulk-form button[data-action=accept]")
    page.wait_for_function(
        "() => document.querySelector('#bulk-status').classList.contains('error')"
    )
    assert page.text_content("#bulk-status").startswith("404: ")
    assert page.get_attribute("#bulk-status", "role") == "alert"
    assert "harbour walk" not in env.tags_of(env.near_above)

    # Enter in the tag box adds the tag to all selected
    page.press("#bulk-tag", "Enter")
    page.wait_for_function("() => document.querySelector('#bulk-status').classList.contains('ok')")
    assert "2 changed, 1 already so" in page.text_content("#bulk-status")
    for asset_id in (env.above, env.near_above, env.near_below):
        assert env.tags_of(asset_id)["harbour walk"]["manual"]
    page.screenshot(path=str(test_output_dir / "webui-review-bulk.png"), full_page=True)

    # --- review queue: nearest the threshold first, the rejected asset gone; keyboard only
    # (one asset a page, so the walk crosses a page by the cursor)
    page.click("#view-review")
    page.eval_on_selector("#queue", "el => { el.dataset.pageSize = '1'; }")
    page.fill("#queue-tag", env.tag)
    page.press("#queue-tag", "Enter")
    page.locator("#queue .queue-item").first.wait_for()
    assert page.is_visible("#queue-more")
    current = "() => document.querySelector('#queue .queue-item.current').dataset.assetId"
    assert page.evaluate(current) == str(env.near_above)
    page.keyboard.press("j")  # past the page's end: the next page
    page.locator("#queue .queue-item").nth(1).wait_for()
    order = page.eval_on_selector_all(
        "#queue .queue-item", "els => els.map(e => Number(e.dataset.assetId))"
    )
    assert order == [env.near_above, env.near_below]
    assert page.evaluate(current) == str(env.near_below)
    page.keyboard.press("k")
    assert page.evaluate(current) == str(env.near_above)
    page.keyboard.press("j")
    page.keyboard.press("a")  # accept the one below its threshold: it now matches
    page.wait_for_selector(f'#queue .queue-item.accepted[data-asset-id="{env.near_below}"]')
    assert page.evaluate(current) == str(env.near_above)  # on to the undecided one
    page.keyboard.press("r")  # reject the one above: it no longer matches
    page.wait_for_selector(f'#queue .queue-item.rejected[data-asset-id="{env.near_above}"]')
    assert env.tags_of(env.near_above)[env.key_name]["review"] == "rejected"
    page.keyboard.press("u")  # undo: unreviewed again
    page.wait_for_selector(f'#queue .queue-item[data-asset-id="{env.near_above}"]:not(.rejected)')
    assert env.tags_of(env.near_above)[env.key_name]["review"] is None
    # o opens the asset; a rejection there shows on the queue's card once the dialog closes
    page.keyboard.press("o")
    page.locator(_row(env, env.key_name)).get_by_role("button", name=f"Reject {env.tag}").click()
    page.wait_for_function(
        f"() => document.querySelector('{_row(env, env.key_name)} .review').textContent"
        " === 'rejected'"
    )
    page.click("#detail .close")
    page.wait_for_selector(f'#queue .queue-item.rejected[data-asset-id="{env.near_above}"]')
    page.screenshot(path=str(test_output_dir / "webui-review-queue.png"), full_page=True)

    below = env.tags_of(env.near_below)[env.key_name]
    assert below["review"] == "accepted" and below["matches"]
    assert below["score"] < below["threshold"]
    above = env.tags_of(env.near_above)[env.key_name]
    assert above["review"] == "rejected" and not above["matches"]
    assert env.get(f"/labels/queue?tag={quote(env.tag)}")["items"] == []

    # reloading the queue says there is nothing left
    page.click("#queue-load")
    page.wait_for_function(
        "() => document.querySelector('#queue-status').textContent.startsWith('nothing to review')"
    )
    assert page.locator("#queue .queue-item").count() == 0
    assert not errors, errors
