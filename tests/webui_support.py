"""Shared parts of the web-UI tests: a real uvicorn server on loopback and headless Chromium.

``serve_app(settings)`` runs the API in a thread on a free port and yields its base URL;
``browser`` is a module-scoped fixture (Debian's ``chromium`` driven by Playwright);
``requires_chromium`` marks a module's tests (skipped with the install hint when it is missing).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import uvicorn

from api.app import create_app

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

requires_chromium = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="/usr/bin/chromium is missing (apt-get install chromium; scripts/test.sh does it)",
    ),
]


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve_app(settings) -> Iterator[str]:  # noqa: ANN001 - indexer.settings.Settings
    """The API for ``settings`` served by uvicorn in a thread; yields ``http://127.0.0.1:PORT``."""
    port = free_port()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium for the module's tests."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


AXE = Path(__file__).parent / "vendor" / "axe-core" / "axe.min.js"  # axe-core 4.14.1, MPL-2.0
DESKTOP = {"width": 1440, "height": 900}
PHONES = ({"width": 360, "height": 740}, {"width": 420, "height": 860})


def watch(page) -> list[str]:  # noqa: ANN001 - a Playwright page
    """Collect the page's uncaught errors and Content-Security-Policy violations."""
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on(
        "console",
        lambda msg: errors.append(msg.text) if "Content Security Policy" in msg.text else None,
    )
    return errors


def open_ui(browser, base: str, key: str | None, viewport: dict | None = None, **context):  # noqa: ANN001, ANN201
    """A fresh browser context on the UI with ``key`` already saved (as the key form would);
    returns ``(page, errors)``. Close ``page.context`` when done."""
    ctx = browser.new_context(viewport=viewport or DESKTOP, **context)
    if key:
        ctx.add_init_script(f"localStorage.setItem('ramdex.key', {key!r})")
    page = ctx.new_page()
    page.set_default_timeout(15_000)
    errors = watch(page)
    page.goto(base + "/")
    return page, errors


def axe_violations(page, impacts=("serious", "critical")) -> list[str]:  # noqa: ANN001
    """axe-core's WCAG 2 A/AA violations of the page as it is now, at the given impacts, one
    line each (rule, impact, the first offending elements). The page's context must bypass its
    CSP (``bypass_csp=True``) for the vendored script to load."""
    page.add_script_tag(path=str(AXE))
    result = page.evaluate(
        "async () => (await axe.run(document, {runOnly: {type: 'tag', values: "
        "['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']}, resultTypes: ['violations']}))"
        ".violations.map(v => "
        "({id: v.id, impact: v.impact, nodes: v.nodes.slice(0, 3).map(n => n.target.join(' '))}))"
    )
    return [f"{v['id']} ({v['impact']}): {v['nodes']}" for v in result if v["impact"] in impacts]
