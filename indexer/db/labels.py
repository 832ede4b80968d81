"""What people and files say about an asset's tags, apart from what the model scored.

``asset_tags`` holds derived data: the model's scores, rewritten by every re-scoring (reindex, a
new model, a concept backfill). ``asset_labels`` holds what must survive all of that: a person's
manual tags and review decisions, and the keywords a file carried at ingest. A label is keyed by
its *name* (``key``: the lower-cased English tag name, or the keyword itself when no tag of the
vocabulary has that name), not by a tag id, because tag ids belong to one model's vocabulary:
"rejected: dog" on an asset still holds when a new model scores it.

Provenance of a tag on an asset, and whether it matches a tag search by default:

- ``model`` / ``concept``: a score in ``asset_tags`` above the tag's threshold (the tag's
  ``origin`` tells which), unless the label says ``review = rejected``; ``accepted`` matches at
  any score.
- ``manual``: a person added it (``manual``): always matches.
- ``embedded``: a keyword in the file at ingest (``embedded``): always matches.

``label_changes`` records every change: who (the API key, or the CLI user), when, before, after.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from indexer.db.base import Base, BigIntPK, JsonType, UtcDateTime, check_in, db_now

MAX_LABEL_LENGTH = 256


class TagSource(StrEnum):
    """Where a tag on an asset comes from (search can filter by these)."""

    MODEL = "model"  # a built-in RAM++ tag scored above its threshold
    CONCEPT = "concept"  # an open-set concept turned into a tag, scored above its threshold
    MANUAL = "manual"  # a person added it
    EMBEDDED = "embedded"  # a keyword the file carried at ingest


class Review(StrEnum):
    """A person's decision on a model or concept tag of one asset (no row: unreviewed)."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"


class LabelAction(StrEnum):
    """What one recorded change did."""

    ADD = "add"  # manual tag added
    REMOVE = "remove"  # manual tag removed
    ACCEPT = "accept"  # model/concept tag accepted
    REJECT = "reject"  # model/concept tag rejected
    UNREVIEW = "unreview"  # review decision withdrawn
    EMBED = "embed"  # keyword read from the file at ingest


def label_key(name: str) -> str:
    """The key a tag name or keyword is stored under: trimmed, case-folded (English names and
    keywords compare case-insensitively; Chinese is unchanged by folding)."""
    return " ".join(name.split()).casefold()


class AssetLabel(Base):
    """One name on one asset with its human/file provenance.

    A row exists only while it says something (a manual tag, an embedded keyword or a review
    decision; the CHECK keeps empty rows out). ``label`` is the name as people see it (the tag's
    English name when it is in the vocabulary, else the keyword as written).
    """

    __tablename__ = "asset_labels"

    asset_id: Mapped[int] = mapped_column(
        sa.BigInteger, sa.ForeignKey("assets.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(sa.String(MAX_LABEL_LENGTH), primary_key=True)
    label: Mapped[str] = mapped_column(sa.String(MAX_LABEL_LENGTH))
    manual: Mapped[bool] = mapped_column(sa.Boolean, default=False, server_default=sa.false())
    embedded: Mapped[bool] = mapped_column(sa.Boolean, default=False, server_default=sa.false())
    review: Mapped[str | None] = mapped_column(sa.String(16))
    updated_by: Mapped[str | None] = mapped_column(sa.String(200))
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, server_default=db_now())

    __table_args__ = (
        sa.CheckConstraint(f"review IS NULL OR {check_in('review', tuple(Review))}", name="review"),
        sa.CheckConstraint("manual OR embedded OR review IS NOT NULL", name="says_something"),
        # "assets labelled dog": the search term's probe and the review queue's join
        sa.Index("ix_asset_labels_key_asset_id", "key", "asset_id"),
    )


class LabelChange(Base):
    """One recorded change to an asset's labels (the audit trail, newest last)."""

    __tablename__ = "label_changes"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    asset_id: Mapped[int] = mapped_column(
        sa.BigInteger, sa.ForeignKey("assets.id", ondelete="CASCADE")
    )
    key: Mapped[str] = mapped_column(sa.String(MAX_LABEL_LENGTH))
    action: Mapped[str] = mapped_column(sa.String(16))
    before: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    after: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    actor: Mapped[str] = mapped_column(sa.String(200))
    at: Mapped[datetime] = mapped_column(UtcDateTime, server_default=db_now())

    __table_args__ = (
        sa.CheckConstraint(check_in("action", tuple(LabelAction)), name="action"),
        sa.Index("ix_label_changes_asset_id_id", "asset_id", "id"),
    )
