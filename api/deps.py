"""Typed FastAPI dependencies: settings, services, database session and the caller's key.

Routes declare what they need with the aliases (``SessionDep``, ``SettingsDep``, ``ServicesDep``)
and a scope guard (``ReadKey``, ``WriteKey``, ``AdminKey``); tests swap any of them through
``app.dependency_overrides`` instead of patching module globals.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Path, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from api.auth import ANONYMOUS_ADMIN, Principal, Scope, verify_token
from api.problems import ProblemError
from api.services import Services
from indexer.db.collection_scope import CollectionScope
from indexer.settings import Settings


def get_services(request: Request) -> Services:
    """The services the app's lifespan opened."""
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_app_settings(services: ServicesDep) -> Settings:
    """The settings the app was created with."""
    return services.settings


SettingsDep = Annotated[Settings, Depends(get_app_settings)]


def get_session(services: ServicesDep) -> Iterator[Session]:
    """One database session per request; anything left uncommitted is rolled back."""
    with services.sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]

# Both schemes are documented in OpenAPI; either header carries the same key.
_bearer = HTTPBearer(auto_error=False, description="API key as a bearer token")
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="API key")


def _unauthorized(detail: str) -> ProblemError:
    return ProblemError(
        401, detail, kind="unauthorized", headers={"WWW-Authenticate": 'Bearer realm="ramdex"'}
    )


def get_principal(
    request: Request,
    services: ServicesDep,
    session: SessionDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    header_key: Annotated[str | None, Security(_api_key_header)],
) -> Principal:
    """Who is calling. With ``api.require_auth`` off, everyone is an anonymous admin.

    Raises:
        ProblemError: 401 when no key is given or the key is unknown, wrong or revoked; 429
            when this client address failed too often lately (checked before the key is).
    """
    if not services.settings.api.require_auth:
        return ANONYMOUS_ADMIN
    throttle = getattr(request.app.state, "auth_throttle", None)
    client = request.client.host if request.client else None
    if throttle is not None:
        throttle.check(client)
    token = bearer.credentials if bearer is not None else header_key
    if not token:
        raise _unauthorized("an API key is required (Authorization: Bearer <key> or X-API-Key)")
    principal = verify_token(session, token)
    if principal is None:
        if throttle is not None:
            throttle.failed(client)
        raise _unauthorized("the API key is unknown, wrong or revoked")
    return principal


def require(scope: Scope):  # noqa: ANN201 - a dependency callable
    """A dependency that lets the request through only when the key holds ``scope``."""

    def check(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        if not principal.allows(scope):
            raise ProblemError(
                403,
                f"this key lacks the {scope.value!r} scope (it has: "
                f"{', '.join(sorted(principal.scopes)) or 'none'})",
                kind="forbidden",
            )
        return principal

    return check


def get_scope(principal: Annotated[Principal, Depends(get_principal)]) -> CollectionScope:
    """What the calling key sees (docs/collections.md): every collection, or only its own.

    Every route that reads or changes assets, concepts, tags or jobs takes this and passes it
    down; ``tests/test_isolation.py`` walks every route with a key limited to one collection.
    """
    return CollectionScope(principal.collection_ids)


ScopeDep = Annotated[CollectionScope, Depends(get_scope)]

ReadKey = Annotated[Principal, Depends(require(Scope.read))]
WriteKey = Annotated[Principal, Depends(require(Scope.write))]
AdminKey = Annotated[Principal, Depends(require(Scope.admin))]


# Path ids are bounded by their column types so that no id reaches the database as an overflow.
MAX_INT32 = 2**31 - 1
MAX_INT64 = 2**63 - 1
AssetId = Annotated[int, Path(ge=1, le=MAX_INT64, description="asset id")]
JobId = Annotated[int, Path(ge=1, le=MAX_INT64, description="job id")]
TagId = Annotated[int, Path(ge=1, le=MAX_INT32, description="tag id")]
ConceptId = Annotated[int, Path(ge=1, le=MAX_INT32, description="concept id")]
CollectionId = Annotated[int, Path(ge=1, le=MAX_INT32, description="collection id")]
