"""The HTTP/1.1 protocol ``ramdex serve`` runs: uvicorn's h11 protocol with deadlines.

uvicorn bounds the size of a request head only with its h11 protocol (the httptools one reads
headers of any size), times out idle keep-alive connections, and has no deadline for a client that
opens a connection and then sends its request slowly, a byte now and then ("slow loris"): such a
connection is kept forever, and enough of them use up ``limit_concurrency``. This protocol adds:

- a *head deadline*: the complete request line and headers must arrive within
  ``api.header_timeout_s`` of the connection opening (or of the previous response on a kept-alive
  connection), else the connection is answered ``408`` and closed;
- a *body deadline*: while a request body is being received, each next chunk must arrive within
  ``api.body_timeout_s``, else ``408`` (when no response was started yet) and close;
- ``431`` instead of a bare ``400`` for a request head over the size limit
  (``h11_max_incomplete_event_size``).

It relies on attributes of uvicorn's ``H11Protocol`` (``conn``, ``cycle``, ``transport``, ``loop``);
``tests/test_api_hardening.py`` runs a real ``ramdex serve`` so an incompatible uvicorn fails there.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import DEFAULT_MAX_INCOMPLETE_EVENT_SIZE, H11Protocol
from uvicorn.server import ServerState

from indexer.settings import get_settings


def _problem_bytes(status: int, reason: str, detail: str) -> bytes:
    """A complete ``Connection: close`` problem response, written straight to the socket."""
    body = json.dumps(
        {"type": "about:blank", "title": reason, "status": status, "detail": detail}
    ).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "content-type: application/problem+json\r\n"
        "connection: close\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


_TIMEOUT_RESPONSE = _problem_bytes(
    408, "Request Timeout", "the request did not arrive in time; the connection is closed"
)
_HEAD_TOO_LARGE = _problem_bytes(
    431, "Request Header Fields Too Large", "the request line and headers are over the limit"
)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with head and body deadlines (see the module docstring).

    uvicorn builds one per connection from its config alone, so the deadlines are read from
    the settings (``api.header_timeout_s``, ``api.body_timeout_s``); a subclass may set
    ``header_timeout_s`` and ``body_timeout_s`` instead.
    """

    header_timeout_s: float | None = None
    body_timeout_s: float | None = None

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        api = get_settings().api
        self._head_s = self.header_timeout_s or api.header_timeout_s
        self._body_s = self.body_timeout_s or api.body_timeout_s
        self._max_head = config.h11_max_incomplete_event_size or DEFAULT_MAX_INCOMPLETE_EVENT_SIZE
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None

    # ---------- timers ----------
    def _arm_head(self) -> None:
        self._cancel_head()
        self._head_timer = self.loop.call_later(self._head_s, self._too_slow)

    def _cancel_head(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _arm_body(self) -> None:
        self._cancel_body()
        self._body_timer = self.loop.call_later(self._body_s, self._body_deadline)

    def _cancel_body(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_deadline(self) -> None:
        self._body_timer = None
        if self.flow is not None and self.flow.read_paused:
            self._arm_body()  # the app has not read what came: the client is not the slow one
            return
        self._too_slow()

    def _too_slow(self) -> None:
        """A deadline passed: answer 408 when nothing was answered yet, then close."""
        self._cancel_head()
        self._cancel_body()
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app sees http.disconnect if it reads on
            cycle.message_event.set()
        if cycle is None or cycle.response_complete or not cycle.response_started:
            self.transport.write(_TIMEOUT_RESPONSE)
        self.transport.close()

    def _update_deadlines(self) -> None:
        """Arm or cancel the deadlines for where the client is in its request."""
        state = self.conn.their_state
        if state is h11.IDLE:
            if self._head_timer is None:
                self._arm_head()
            self._cancel_body()
        elif state is h11.SEND_BODY:
            self._cancel_head()
            self._arm_body()  # re-armed on every chunk: the gap between chunks is bounded
        else:
            self._cancel_head()
            self._cancel_body()

    # ---------- protocol events ----------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self.transport.is_closing():
            self._update_deadlines()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            # The next request's head must arrive in time too (the keep-alive timer closes an
            # idle connection sooner; a trickle of bytes cancels that one, not this one).
            self._cancel_body()
            self._arm_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head()
        self._cancel_body()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        # h11 keeps what it could not parse: more than the limit means the head was too large.
        if len(self.conn.trailing_data[0]) > self._max_head:
            self.transport.write(_HEAD_TOO_LARGE)
            self.transport.close()
            return
        super().send_400_response(msg)
