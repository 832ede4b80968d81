"""Routes under /exports (issue 13: DAM metadata)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/exports", tags=["exports"])
