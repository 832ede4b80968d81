"""The web UI in headless Chromium tells a newcomer what they need: how to get a key when none
is entered (the command it shows really makes one), and, with the bundled demo model, a banner
saying that its tags are synthetic shapes, not photographs. A published or custom model gets no
banner, only its name.

Servers and browser from ``tests/webui_support.py`` (real uvicorn on loopback, Debian's chromium).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from ram_pp.factory import demo_checkpoint
from tests.webui_support import requires_chromium, serve_app

pytest_plugins = ["tests.api_support", "tests.webui_support"]

ROOT = Path(__file__).resolve().parents[1]

pytestmark = requires_chromium


def _ramdex(*args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    """Run the ``ramdex`` command line of this tree as a user would, against the test database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAMDEX_")}
    env.update(RAMDEX_DATABASE__URL=database_url, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-c", "from api.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )


def _text(page, selector: str) -> str:  # noqa: ANN001 - a Playwright page
    return " ".join((page.text_content(selector) or "").split())


def test_demo_banner_and_key_hint(browser, sqlite_url, settings_for, tmp_path) -> None:
    settings = settings_for(tmp_path / "home", sqlite_url)
    settings.model.name = ""  # nothing configured: the bundled demo model
    digest = hashlib.sha256(demo_checkpoint().read_bytes()).hexdigest()[:12]
    with serve_app(settings) as base:
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.set_default_timeout(30_000)
        page.goto(base + "/")

        # No key entered: the page says how to get one.
        page.wait_for_selector("#key-hint", state="visible")
        hint = _text(page, "#key-hint")
        assert "ramdex keys create --scope read" in hint
        # Before any key, the demo model is named and explained.
        page.wait_for_selector("#model-banner", state="visible")
        banner = _text(page, "#model-banner")
        assert "Demo model: 40 synthetic tags (shapes, colours, counts)" in banner
        assert "not real photographs" in banner and "ramdex models download" in banner
        assert _text(page, "#model-name") == f"model: ramdex-demo ({digest})"
        page.screenshot(path=str(tmp_path / "webui-demo-banner.png"))

        # The hinted command makes a key that the page accepts; the hint goes, the banner stays.
        command = page.text_content("#key-hint code").split()
        assert command[:2] == ["ramdex", "keys"]
        made = _ramdex(*command[1:], database_url=sqlite_url)
        assert made.returncode == 0, made.stderr
        page.fill("#api-key", made.stdout.strip())
        page.click("#save-key")
        page.wait_for_function(
            "() => document.querySelector('#key-status').textContent.includes('read')"
        )
        assert page.is_hidden("#key-hint") and page.is_visible("#model-banner")
        assert not errors, errors


def test_other_models_get_their_name_and_no_banner(browser, sqlite_url, settings_for, tmp_path):
    settings = settings_for(tmp_path / "home", sqlite_url)  # the tests' random test_micro model
    with serve_app(settings) as base:
        page = browser.new_page()
        page.set_default_timeout(30_000)
        page.goto(base + "/")
        page.wait_for_function("() => document.querySelector('#model-name').textContent.length > 0")
        assert _text(page, "#model-name") == f"model: {settings.model.name}"
        assert page.is_hidden("#model-banner")
