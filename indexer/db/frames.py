"""Frames of multi-frame assets (videos, animations): one row per kept frame (docs/media.md).

A frame is not an asset: collections, counts, facets and exports read ``assets`` and never see
frames. Its image embedding c is here (the FAISS index holds it under the frame's key, see
:mod:`indexer.frame_keys`), its token embeddings E are in the token store under the same key,
and its tag scores are kept compactly (the tags at or above the score floor, as int32 tag ids
and float16 scores). The asset's own ``asset_tags`` rows are the maximum over its frames, so
tag search works unchanged.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from indexer.db.base import Base


class AssetFrame(Base):
    """One kept frame of a video or an animation."""

    __tablename__ = "asset_frames"

    asset_id: Mapped[int] = mapped_column(
        sa.BigInteger, sa.ForeignKey("assets.id", ondelete="CASCADE"), primary_key=True
    )
    idx: Mapped[int] = mapped_column(sa.Integer, primary_key=True)  # 0.. in time order
    timestamp_s: Mapped[float] = mapped_column(sa.Float)
    embedding: Mapped[bytes | None] = mapped_column(sa.LargeBinary)  # float32 c
    embedding_dim: Mapped[int | None] = mapped_column(sa.SmallInteger)
    score_tags: Mapped[bytes | None] = mapped_column(sa.LargeBinary)  # int32 tag ids
    score_values: Mapped[bytes | None] = mapped_column(sa.LargeBinary)  # float16 scores

    __table_args__ = (sa.CheckConstraint("idx >= 0", name="idx"),)
