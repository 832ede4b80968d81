"""asset_tags hash-partitioned by tag_id on PostgreSQL (SQLite keeps the plain table)

Revision ID: s001
Revises: k003
Create Date: 2026-12-02 13:45:00

The existing table's rows are kept: the old table is renamed, a partitioned ``asset_tags`` with
``PARTITIONS`` hash partitions is created, the rows are copied, then the primary key, the
composite index and the foreign keys are built once over the loaded partitions (cheaper than
maintaining them row by row), and the old table is dropped. ``downgrade`` does the reverse.
Both run in the migration's transaction: a failure leaves the archive as it was.

Why HASH on ``tag_id`` (measured at 2 M assets / 80 M score rows, docs/scale.md "PostgreSQL at
scale"): every tag term of a search names its tag, so each index range scan and each EXISTS
probe of an AND / NOT term is pruned to one partition at plan time and the plans are the plain
table's on a table 1/16 the size, with that partition's own statistics; a concept backfill
writes one partition. HASH on ``asset_id`` was measured too: every tag term then merges 16
index ranges and costs 16 probes, 1.2-22x slower than by tag. What tag_id costs: a per-asset
read and an asset's delete probe all 16 primary keys (3.2 ms and 2.7 ms instead of 2.2 and
0.8).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "s001"
down_revision: str | Sequence[str] | None = "k003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Fixed at migration time (hash partitions cannot be split in place): 16 keeps each partition
# of a 100 M-asset archive (~4 G score rows, ~430 GB projected) near 27 GB while a per-asset read
# probes only 16 primary keys (docs/scale.md). Must match indexer.db.tags.
PARTITIONS = 16

_INDEX = "ix_asset_tags_tag_id_score_asset_id"


def _constraints_and_index(table: str) -> None:
    """Primary key, composite index and foreign keys of ``table`` (named as the models say)."""
    op.execute(f"ALTER TABLE {table} ADD CONSTRAINT pk_asset_tags PRIMARY KEY (asset_id, tag_id)")
    op.execute(f"CREATE INDEX {_INDEX} ON {table} (tag_id, score, asset_id)")
    op.execute(
        f"ALTER TABLE {table} ADD CONSTRAINT fk_asset_tags_asset_id_assets "
        "FOREIGN KEY (asset_id) REFERENCES assets (id) ON DELETE CASCADE"
    )
    op.execute(
        f"ALTER TABLE {table} ADD CONSTRAINT fk_asset_tags_tag_id_tags "
        "FOREIGN KEY (tag_id) REFERENCES tags (id) ON DELETE CASCADE"
    )


def _set_aside_old() -> None:
    """Rename the current asset_tags and its constraint and index names out of the way."""
    op.execute("ALTER TABLE asset_tags RENAME TO asset_tags_old")
    for name in ("pk_asset_tags", "fk_asset_tags_asset_id_assets", "fk_asset_tags_tag_id_tags"):
        op.execute(f"ALTER TABLE asset_tags_old RENAME CONSTRAINT {name} TO {name}_old")
    op.execute(f"ALTER INDEX {_INDEX} RENAME TO {_INDEX}_old")


def upgrade() -> None:
    """Convert asset_tags to ``PARTITION BY HASH (tag_id)`` with its rows (PostgreSQL only)."""
    if op.get_bind().dialect.name != "postgresql":
        return
    _set_aside_old()
    op.execute(
        "CREATE TABLE asset_tags (asset_id BIGINT NOT NULL, tag_id INTEGER NOT NULL, "
        "score REAL NOT NULL) PARTITION BY HASH (tag_id)"
    )
    for i in range(PARTITIONS):
        op.execute(
            f"CREATE TABLE asset_tags_p{i:02d} PARTITION OF asset_tags "
            f"FOR VALUES WITH (MODULUS {PARTITIONS}, REMAINDER {i})"
        )
        # Insert-driven vacuum after 1% new rows (default 20%) keeps the visibility map fresh,
        # so tag queries stay index-only scans under continuous ingest. (A partitioned parent
        # takes no storage parameters; each partition does.)
        op.execute(
            f"ALTER TABLE asset_tags_p{i:02d} SET (autovacuum_vacuum_insert_scale_factor = 0.01)"
        )
    op.execute("INSERT INTO asset_tags SELECT asset_id, tag_id, score FROM asset_tags_old")
    op.execute("DROP TABLE asset_tags_old")
    _constraints_and_index("asset_tags")
    op.execute("ANALYZE asset_tags")


def downgrade() -> None:
    """Back to one plain asset_tags table with the same rows (PostgreSQL only)."""
    if op.get_bind().dialect.name != "postgresql":
        return
    _set_aside_old()
    op.execute(
        "CREATE TABLE asset_tags (asset_id BIGINT NOT NULL, tag_id INTEGER NOT NULL, "
        "score REAL NOT NULL)"
    )
    op.execute("INSERT INTO asset_tags SELECT asset_id, tag_id, score FROM asset_tags_old")
    op.execute("DROP TABLE asset_tags_old")  # drops its partitions too
    _constraints_and_index("asset_tags")
    op.execute("ANALYZE asset_tags")
