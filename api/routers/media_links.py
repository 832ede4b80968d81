"""Signed, short-lived links to an original, for a ``<video src>`` to stream (Range, 206).

The web UI sends its key in a header, which a ``<video>`` element cannot: fetching a video
whole as a blob first holds gigabytes in the browser and waits for all of them before the
first frame. Instead the UI asks ``POST /assets/{id}/link`` (read key) for a URL
``/media/{id}?key=<key id>&exp=<unix time>&sig=<hex>`` that the browser then streams with Range
requests, seeking to the matched moment (``#t=12.5``).

The signature is HMAC-SHA256 over ``"<asset id>.<exp>"`` keyed with the stored hash of the key's
secret: only the server (which holds the hash) or the key's holder (who could fetch the
original anyway) can make one; a link names one asset, runs out at ``exp`` (at most
:data:`LINK_TTL_S` ahead) and dies with its key (revoked or deleted). The link is checked as
the key would be: read scope, and the asset inside the key's collections.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.auth import Scope, grants
from api.deps import AssetId, ReadKey, ScopeDep, ServicesDep, SessionDep
from api.problems import ProblemError
from api.routers.assets import original_response, visible_asset
from indexer.db.api_keys import ApiKey
from indexer.db.collection_scope import CollectionScope
from indexer.db.collections import ApiKeyCollection

LINK_TTL_S = 3600  # a link outlives one viewing (the browser asks ranges while it plays)


class MediaLink(BaseModel):
    """A URL that serves one asset's original without a key header, until ``expires_at``."""

    url: str = Field(description="path and query of the signed link (Range requests answered)")
    expires_at: int = Field(description="when the link stops working (unix seconds)")


def sign(secret_hash: str, asset_id: int, exp: int) -> str:
    """The link signature of an asset until ``exp`` for the key whose stored hash is given."""
    message = f"{int(asset_id)}.{int(exp)}".encode()
    return hmac.new(secret_hash.encode(), message, hashlib.sha256).hexdigest()


def _denied() -> ProblemError:
    # One answer for a wrong, expired or revoked link and an asset out of the key's reach:
    # a link tells nothing about what it does not open.
    return ProblemError(404, "the link is wrong, expired or revoked", kind="not-found")


_SIGNATURE = re.compile(r"([?&]sig=)[0-9a-fA-F]+")


class HideLinkSignatures(logging.Filter):
    """Keeps signed links out of the access log: ``sig=`` is written as ``sig=...``, so a
    log reader cannot replay a link while it is valid."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(
            isinstance(a, str) and "sig=" in a for a in record.args
        ):
            record.args = tuple(
                _SIGNATURE.sub(r"\1...", a) if isinstance(a, str) else a for a in record.args
            )
        return True


def _hide_signatures_in_access_log() -> None:
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, HideLinkSignatures) for f in access.filters):
        access.addFilter(HideLinkSignatures())


def build_router() -> APIRouter:
    """``POST /assets/{id}/link`` and ``GET /media/{id}``."""
    _hide_signatures_in_access_log()
    router = APIRouter(tags=["assets"])

    @router.post(
        "/assets/{asset_id}/link",
        response_model=MediaLink,
        summary="A short-lived signed URL of the original (for <video src>)",
        responses={404: {"description": "no such asset for this key, or no stored original"}},
    )
    def link(
        asset_id: AssetId,
        principal: ReadKey,
        scope: ScopeDep,
        services: ServicesDep,
        session: SessionDep,
    ) -> MediaLink:
        visible_asset(session, scope, asset_id)  # 404 for an asset the key does not see
        exp = int(time.time()) + LINK_TTL_S
        if principal.key_id is None:  # auth off: anyone may read, the link needs no signature
            return MediaLink(url=f"/media/{asset_id}?exp={exp}", expires_at=exp)
        secret_hash = _secret_hash(session, principal.key_id)
        if secret_hash is None:
            raise _denied()
        sig = sign(secret_hash, asset_id, exp)
        return MediaLink(
            url=f"/media/{asset_id}?key={principal.key_id}&exp={exp}&sig={sig}", expires_at=exp
        )

    @router.get(
        "/media/{asset_id}",
        summary="The original through a signed link (no key header; Range answered)",
        response_class=Response,
        responses={
            401: {"description": "no signed link (key, exp, sig)"},
            404: {"description": "a wrong, expired or revoked link"},
        },
    )
    def media(
        asset_id: AssetId,
        services: ServicesDep,
        session: SessionDep,
        exp: Annotated[int | None, Query(ge=0, le=2**40)] = None,
        key: Annotated[str, Query(max_length=32)] = "",
        sig: Annotated[str, Query(max_length=128)] = "",
    ) -> Response:
        require_auth = services.settings.api.require_auth
        if exp is None or (require_auth and not (key and sig)):
            # No link at all: what every data route says without credentials.
            raise ProblemError(
                401,
                "an API key's signed link is needed: POST /assets/{id}/link with the key",
                kind="unauthorized",
                headers={"WWW-Authenticate": 'Bearer realm="ramdex"'},
            )
        now = int(time.time())
        if exp < now or exp > now + LINK_TTL_S + 60:
            raise _denied()
        if require_auth:
            scope = _scope_of_link(session, key, asset_id, exp, sig)
        else:
            scope = CollectionScope(None)
        try:
            row = visible_asset(session, scope, asset_id)
        except ProblemError:
            raise _denied() from None
        return original_response(session, scope, row, services.settings.media_dir)

    return router


def _secret_hash(session: Session, key_id: str) -> str | None:
    row = session.scalar(select(ApiKey).where(ApiKey.key_id == key_id))
    if row is None or row.revoked_at is not None:
        return None
    return str(row.secret_hash)


def _scope_of_link(
    session: Session, key_id: str, asset_id: int, exp: int, sig: str
) -> CollectionScope:
    """What the link's key sees, once the signature holds (else 404)."""
    row = session.scalar(select(ApiKey).where(ApiKey.key_id == key_id)) if key_id else None
    if row is None or row.revoked_at is not None:
        raise _denied()
    if not hmac.compare_digest(sign(row.secret_hash, asset_id, exp), sig):
        raise _denied()
    if not grants([s for s in row.scopes.split(",") if s], Scope.read):
        raise _denied()
    if row.all_collections:
        return CollectionScope(None)
    ids = session.scalars(
        select(ApiKeyCollection.collection_id).where(ApiKeyCollection.api_key_id == row.id)
    )
    return CollectionScope(frozenset(ids))
