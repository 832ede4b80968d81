"""Errors as RFC 9457 problem details (``application/problem+json``).

Every error the API returns goes through here: our own :class:`ProblemError`, Starlette's
``HTTPException`` (unknown paths, wrong methods, oversize bodies), request validation errors and
anything unexpected (a generic 500 that never leaks internals).
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PROBLEM_MEDIA_TYPE = "application/problem+json"
TYPE_BASE = "https://ramdex.dev/problems/"

log = logging.getLogger(__name__)


class FieldError(BaseModel):
    """One invalid input: where it is and what is wrong with it."""

    loc: list[str | int]
    msg: str
    type: str


class Problem(BaseModel):
    """RFC 9457 problem details; ``errors`` lists invalid inputs for validation problems."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(default="about:blank", description="URI identifying the problem type")
    title: str = Field(description="short summary of the problem type")
    status: int = Field(ge=400, le=599, description="HTTP status code")
    detail: str | None = Field(default=None, description="explanation of this occurrence")
    instance: str | None = Field(default=None, description="the request path")
    errors: list[FieldError] | None = None


class ProblemError(Exception):
    """Raise from any route to answer with a problem document.

    Args:
        status: HTTP status code.
        detail: human-readable explanation of this occurrence.
        kind: short slug for the problem type (``not-found``, ``invalid-cursor``...); the type URI
            is built from it. Defaults to the status phrase.
        headers: extra response headers (``WWW-Authenticate``, ``Retry-After``...).
        extra: extension members added to the document.
    """

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        kind: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.kind = kind
        self.headers = headers
        self.extra = extra


def not_found(what: str, ident: object) -> ProblemError:
    """A 404 problem for a missing resource."""
    return ProblemError(404, f"{what} {ident} does not exist", kind="not-found")


def problem_response(
    request: Request,
    status: int,
    detail: str | None,
    *,
    kind: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """Build the ``application/problem+json`` response for one error."""
    phrase = _phrase(status)
    body: dict[str, Any] = {
        "type": TYPE_BASE + kind if kind else "about:blank",
        "title": phrase,
        "status": status,
        "instance": request.url.path,
    }
    if detail:
        body["detail"] = detail
    body.update(extra)
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


async def _problem_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ProblemError)
    return problem_response(
        request, exc.status, exc.detail, kind=exc.kind, headers=exc.headers, **exc.extra
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail: str | None = exc.detail if isinstance(exc.detail, str) else None
    if detail == _phrase(exc.status_code):
        detail = None  # Starlette's default detail repeats the title
    headers = dict(exc.headers) if exc.headers else None
    return problem_response(request, exc.status_code, detail, headers=headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # Only location, message and type: the offending input may be huge or binary.
    errors = [
        {
            "loc": [p if isinstance(p, int) else str(p) for p in e.get("loc", ())],
            "msg": str(e.get("msg", "")),
            "type": str(e.get("type", "")),
        }
        for e in exc.errors()
    ]
    summary = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors[:5])
    return problem_response(
        request, 422, summary or "invalid request", kind="validation", errors=errors
    )


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(request, 500, "internal error; the server log has the details")


def install_problem_handlers(app: FastAPI) -> None:
    """Route every kind of error through the problem-details handlers."""
    app.add_exception_handler(ProblemError, _problem_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected_error)


class PlainErrorsAsProblems:
    """ASGI middleware turning any error response that is not JSON into a problem document.

    Some errors are answered before the app's handlers can run, for example the 413 of the
    request-body limiter when ``Content-Length`` is over the cap; this keeps them RFC 9457 too.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rewriting = False

        async def send_problem(message: Message) -> None:
            nonlocal rewriting
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = Headers(raw=message.get("headers", []))
                if status >= 400 and "json" not in headers.get("content-type", ""):
                    rewriting = True
                    body = json.dumps(
                        {
                            "type": "about:blank",
                            "title": _phrase(status),
                            "status": status,
                            "instance": scope.get("path", ""),
                        }
                    ).encode()
                    kept = [
                        (k, v)
                        for k, v in message.get("headers", [])
                        if k.lower() not in (b"content-type", b"content-length")
                    ]
                    await send(
                        {
                            **message,
                            "headers": kept
                            + [
                                (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
                                (b"content-length", str(len(body)).encode()),
                            ],
                        }
                    )
                    await send({"type": "http.response.body", "body": body})
                    return
            elif rewriting:
                return  # the original body is replaced
            await send(message)

        await self.app(scope, receive, send_problem)
