"""``/docs`` and ``/redoc`` work offline: their pages reference only this server's URLs, every one
of them answers 200, and Swagger UI renders the API in a browser that may reach nothing else."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient

from api.app import create_app

pytest_plugins = ["tests.api_support"]


@pytest.fixture(scope="module")
def client(sqlite_url, settings_for, tmp_path_factory):
    settings = settings_for(tmp_path_factory.mktemp("docs-home"), sqlite_url)
    with TestClient(create_app(settings)) as client:
        yield client


def _references(html: str) -> list[str]:
    """Every URL a page loads: src/href attributes and the URLs its inline script passes to
    Swagger UI or ReDoc (``url: '/openapi.json'``, ``spec-url="..."``)."""
    found = re.findall(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']""", html)
    found += re.findall(r"""\b(?:url|oauth2RedirectUrl)\s*:\s*['"]([^'"]+)['"]""", html)
    return found


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_reference_only_local_urls_that_answer(client, page) -> None:
    reply = client.get(page)
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/html")
    urls = _references(reply.text)
    assert any(u.endswith(".js") for u in urls) and "/openapi.json" in urls
    for url in urls:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc, f"{page} loads {url} from another host"
        assert url.startswith("/"), url
        if "oauth2-redirect" in url:
            continue  # only opened by an OAuth flow, which ramdex does not use; answers anyway
        fetched = client.get(url)
        assert fetched.status_code == 200, (url, fetched.status_code)
        assert len(fetched.content) > 1000, url  # the real bundle, not an empty file
    assert client.get("/docs/oauth2-redirect").status_code == 200


def test_docs_render_in_a_browser_with_no_other_host(client) -> None:
    """Swagger UI in headless Chromium against a real server, every request to another host
    refused: the ramdex API's title and its search operation appear."""
    from tests.webui_support import CHROMIUM, CHROMIUM_ARGS, free_port

    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is missing (apt-get install chromium)")
    import threading
    import time

    import uvicorn
    from playwright.sync_api import sync_playwright

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(client.app, host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    outside: list[str] = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()

                def only_local(route) -> None:  # noqa: ANN001 - a Playwright route
                    if route.request.url.startswith(base):
                        route.continue_()
                    else:
                        outside.append(route.request.url)
                        route.abort()

                page.route("**/*", only_local)
                page.set_default_timeout(30_000)
                page.goto(base + "/docs")
                page.wait_for_selector(".swagger-ui .info .title")
                assert "ramdex" in page.text_content(".swagger-ui .info .title")
                page.wait_for_selector(".opblock-tag-section")
                assert "/search" in page.text_content(".swagger-ui")
            finally:
                browser.close()
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    assert not outside, outside
