"""API keys: creation, hashing at rest, verification and scopes.

A key reads ``rdx_<id>_<secret>``: ``id`` (12 hex characters) finds the row, ``secret`` is 32
random bytes (URL-safe base64). Only ``sha256(secret)`` is stored: with 256 bits of entropy a slow
password hash buys nothing, and a fast one keeps every request cheap. Comparison is constant-time.

Scopes nest: ``admin`` grants ``write``, which grants ``read``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.orm import Session

from indexer.db.api_keys import ApiKey
from indexer.db.collections import ApiKeyCollection

KEY_PREFIX = "rdx"
_LAST_USED_GRANULARITY = timedelta(minutes=1)


class Scope(StrEnum):
    """What a key may do."""

    read = "read"
    write = "write"
    admin = "admin"


_RANK = {Scope.read: 0, Scope.write: 1, Scope.admin: 2}


def ordered(scopes: Iterable[Scope]) -> list[Scope]:
    """Scopes from weakest to strongest."""
    return sorted(set(scopes), key=_RANK.__getitem__)


def grants(held: Iterable[str], required: Scope) -> bool:
    """Whether scopes ``held`` allow an operation that needs ``required``."""
    ranks = [_RANK[Scope(s)] for s in held if s in Scope.__members__]
    return bool(ranks) and max(ranks) >= _RANK[required]


@dataclass(frozen=True)
class NewKey:
    """A freshly created key. ``token`` is shown once and never stored."""

    key_id: str
    token: str
    name: str
    scopes: tuple[Scope, ...]
    collection_ids: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's id, its name and its scopes (``key_id`` None when auth is off).

    ``collection_ids`` None: the key sees every collection and the assets in none; a set
    (possibly empty): only assets, concepts, sources and webhooks of those collections.
    """

    key_id: str | None
    name: str
    scopes: frozenset[Scope]
    collection_ids: frozenset[int] | None = None

    def allows(self, required: Scope) -> bool:
        return grants(self.scopes, required)

    @property
    def restricted(self) -> bool:
        """Whether the key is limited to some collections."""
        return self.collection_ids is not None

    def sees_collection(self, collection_id: int | None) -> bool:
        """Whether the key may see a collection (None: something global, outside any)."""
        if self.collection_ids is None:
            return True
        return collection_id is not None and collection_id in self.collection_ids


ANONYMOUS_ADMIN = Principal(key_id=None, name="auth disabled", scopes=frozenset(Scope))


def hash_secret(secret: str) -> str:
    """Hex sha256 of the secret part of a key."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def parse_token(token: str) -> tuple[str, str] | None:
    """Split ``rdx_<id>_<secret>`` into (id, secret); None when it is not shaped like a key."""
    parts = token.strip().split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX:
        return None
    key_id, secret = parts[1], parts[2]
    if len(key_id) != 12 or not all(c in "0123456789abcdef" for c in key_id) or not secret:
        return None
    return key_id, secret


def create_key(
    session: Session,
    *,
    name: str,
    scopes: Iterable[str | Scope],
    collection_ids: Iterable[int] | None = None,
) -> NewKey:
    """Create and store a key; the caller commits. Returns the token to hand to the user.

    Args:
        collection_ids: limit the key to these collections (it sees their assets, concepts,
            jobs, sources and webhooks only); None: every collection.

    Raises:
        ValueError: no scope, or an unknown scope; an empty collection list.
    """
    parsed = tuple(ordered(Scope(s) for s in scopes))
    if not parsed:
        raise ValueError("a key needs at least one scope: read, write or admin")
    limits = None if collection_ids is None else tuple(sorted({int(c) for c in collection_ids}))
    if limits is not None and not limits:
        raise ValueError("a key limited to collections needs at least one collection")
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    row = ApiKey(
        key_id=key_id,
        secret_hash=hash_secret(secret),
        name=name,
        scopes=",".join(parsed),
        all_collections=limits is None,
    )
    session.add(row)
    session.flush()
    for collection_id in limits or ():
        session.add(ApiKeyCollection(api_key_id=row.id, collection_id=collection_id))
    session.flush()
    return NewKey(key_id, f"{KEY_PREFIX}_{key_id}_{secret}", name, parsed, limits)


def verify_token(session: Session, token: str, *, now: datetime | None = None) -> Principal | None:
    """The principal for a presented token, or None when it is unknown, wrong or revoked.

    Records when the key was last used (at most once a minute, to keep reads cheap).
    """
    parsed = parse_token(token)
    if parsed is None:
        return None
    key_id, secret = parsed
    row = session.scalar(select(ApiKey).where(ApiKey.key_id == key_id))
    if row is None or row.revoked_at is not None:
        return None
    if not hmac.compare_digest(row.secret_hash, hash_secret(secret)):
        return None
    now = now or datetime.now(UTC)
    if row.last_used_at is None or now - row.last_used_at >= _LAST_USED_GRANULARITY:
        row.last_used_at = now
        session.commit()
    scopes = frozenset(Scope(s) for s in row.scopes.split(",") if s in Scope.__members__)
    collection_ids = None
    if not row.all_collections:
        collection_ids = frozenset(
            session.scalars(
                select(ApiKeyCollection.collection_id).where(ApiKeyCollection.api_key_id == row.id)
            )
        )
    return Principal(key_id=row.key_id, name=row.name, scopes=scopes, collection_ids=collection_ids)


def list_keys(session: Session) -> list[ApiKey]:
    """All keys, newest first (hashes only; secrets are never stored)."""
    query = select(ApiKey).order_by(ApiKey.created_at.desc(), ApiKey.id.desc())
    return list(session.scalars(query))


def revoke_key(session: Session, key_id: str) -> bool:
    """Revoke a key by id; the caller commits. Returns False when no such active key exists."""
    row = session.scalar(select(ApiKey).where(ApiKey.key_id == key_id))
    if row is None or row.revoked_at is not None:
        return False
    row.revoked_at = datetime.now(UTC)
    return True
