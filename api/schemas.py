"""Request and response bodies of the HTTP API (kept apart from the ORM models)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from api.auth import Scope


class Health(BaseModel):
    status: Literal["ok"]


class CheckOut(BaseModel):
    ok: bool
    detail: str


class Ready(BaseModel):
    status: Literal["ok"]
    checks: dict[str, CheckOut]


class Me(BaseModel):
    key_id: str | None = Field(description="public id of the key (null when auth is off)")
    name: str
    scopes: list[Scope]


# ---------- jobs ----------
class JobOut(BaseModel):
    """A long-running job and its progress: ``done + failed`` of ``total`` items."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    kind: str
    status: str
    total: int
    done: int
    failed: int
    error: str | None
    created_at: datetime
    updated_at: datetime


class JobPage(BaseModel):
    items: list[JobOut]
    next_cursor: str | None = None
