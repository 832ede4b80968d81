"""A vocabulary of terms beside the model's tags: synonyms, preferred labels and hierarchy.

Loaded from a vocabulary file (CSV or SKOS-like JSON; docs/taxonomy.md) by ``ramdex taxonomy
import``. Like labels (indexer/db/labels.py) it is keyed by names, not tag ids, so it holds for
every model: a *concept* is named by its key (``label_key`` of its preferred English label; for a
built-in tag that is the tag's lower-cased English name).

- ``taxonomy_terms``: every name a concept is known by (``key`` -> ``concept``), English or
  Chinese, with ``preferred`` marking its preferred label per language.
- ``taxonomy_broader``: hierarchy edges, ``concept`` has the broader concept ``broader``
  (dog -> animal); a concept may have several parents.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from indexer.db.base import Base
from indexer.db.labels import MAX_LABEL_LENGTH


class TaxonomyTerm(Base):
    """One name (``key``: its ``label_key``) of a concept, as written (``label``)."""

    __tablename__ = "taxonomy_terms"

    key: Mapped[str] = mapped_column(sa.String(MAX_LABEL_LENGTH), primary_key=True)
    concept: Mapped[str] = mapped_column(sa.String(MAX_LABEL_LENGTH), index=True)
    label: Mapped[str] = mapped_column(sa.String(MAX_LABEL_LENGTH))
    lang: Mapped[str] = mapped_column(sa.String(8))
    preferred: Mapped[bool] = mapped_column(sa.Boolean, default=False, server_default=sa.false())


class TaxonomyBroader(Base):
    """A hierarchy edge: ``concept`` is narrower than ``broader``."""

    __tablename__ = "taxonomy_broader"

    concept: Mapped[str] = mapped_column(sa.String(MAX_LABEL_LENGTH), primary_key=True)
    broader: Mapped[str] = mapped_column(sa.String(MAX_LABEL_LENGTH), primary_key=True)

    __table_args__ = (sa.Index("ix_taxonomy_broader_broader", "broader"),)
