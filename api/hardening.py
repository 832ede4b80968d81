"""ASGI pieces that keep the API sound under hostile clients: security headers on every
response, and an unexpected error that never costs the client its keep-alive connection.

Content-Security-Policy: the web UI (``/`` and ``/static``) loads only its own script, style and
images (thumbnails arrive as ``blob:`` URLs made from authenticated fetches) and may not be framed;
every other non-HTML response (JSON, images, originals) gets the strict API policy, so even a file
served inline cannot run script or be framed. Other HTML pages (the interactive ``/docs``) keep the
policy their route sets.
"""

from __future__ import annotations

import logging

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

UI_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "media-src 'self'; connect-src 'self'; font-src 'self'; manifest-src 'self'; base-uri 'none'; "
    "form-action 'self'; object-src 'none'; frame-ancestors 'none'"
)
API_CSP = "default-src 'none'; frame-ancestors 'none'; sandbox"


def _is_ui(path: str) -> bool:
    return path == "/" or path.startswith("/static/")


class SecurityHeaders:
    """Adds Content-Security-Policy (with ``frame-ancestors``), ``X-Frame-Options``,
    ``X-Content-Type-Options`` and ``Referrer-Policy`` to responses that do not set them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ui = _is_ui(scope.get("path", ""))

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                html = headers.get("content-type", "").startswith("text/html")
                if "content-security-policy" not in headers and (ui or not html):
                    headers["Content-Security-Policy"] = UI_CSP if ui else API_CSP
                headers.setdefault("X-Frame-Options", "DENY")
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("Referrer-Policy", "no-referrer")
            await send(message)

        await self.app(scope, receive, send_with_headers)


class KeepConnectionAfterErrors:
    """Swallow an exception once its 500 problem has been sent in full.

    Starlette answers an unhandled exception with the app's 500 handler and then re-raises it,
    and uvicorn closes the connection of any request whose app raised after responding: a client
    that triggers a bug loses its keep-alive connection (and every request pipelined on it). The
    exception was logged by the 500 handler already; raised on only when the response is
    incomplete, where closing the connection is the right answer.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        complete = False

        async def watch(message: Message) -> None:
            nonlocal complete
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                complete = True

        try:
            await self.app(scope, receive, watch)
        except Exception:
            if not complete:
                raise
            log.debug("error after a complete 500 response; connection kept", exc_info=True)
