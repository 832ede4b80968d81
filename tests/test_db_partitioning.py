"""Migration s001: asset_tags hash-partitioned by tag_id on PostgreSQL, plain on SQLite.

An archive with score rows is migrated up to s001 and back down on a real PostgreSQL database of
its own: the rows, every search result page and the per-asset reads must be the same in both
layouts, and deleting an asset must still cascade to its scores. SQLite stays one plain table.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from indexer import db
from indexer.db.session import dispose_engines, session_scope
from indexer.db.tags import ASSET_TAG_PARTITIONS
from indexer.migrate import current_revision, downgrade_database, head_revision, upgrade_database
from ram_pp.vocab import builtin_vocabulary
from tests.db_fixtures import fresh_postgres_database

MODEL = "part-model@0"
BEFORE = "k003"  # the revision s001 follows
ASSETS = 300
TAGS = 12  # the tags that carry scores (the first of the built-in vocabulary)


def _fill(url: str) -> list[int]:
    """Assets with seeded random scores (ties included) on TAGS tags; returns those tag ids."""
    with session_scope(url) as s:
        tag_ids = db.ensure_vocabulary(s, MODEL, builtin_vocabulary().head(TAGS)).tolist()
        for i, tag_id in enumerate(tag_ids):  # thresholds 0.3 .. 0.85 so terms match often
            db.set_threshold_override(s, tag_id, 0.3 + 0.05 * i)
    rng = np.random.default_rng(11)
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO assets (sha256, mime, status, model_name, created_at) "
                "VALUES (:sha, 'image/jpeg', 'done', :model, :at)"
            ),
            [
                {
                    "sha": f"{i:064x}",
                    "model": MODEL,
                    "at": f"2024-01-01 00:{i // 60:02d}:{i % 60:02d}",
                }
                for i in range(ASSETS)
            ],
        )
        asset_ids = [r[0] for r in conn.execute(sa.text("SELECT id FROM assets ORDER BY id"))]
        rows = [
            {"a": a, "t": t, "s": float(rng.choice([0.5, 0.75]) if rng.random() < 0.1 else
                                        round(0.2 + 0.8 * rng.random(), 3))}
            for a in asset_ids
            for t in tag_ids
            if rng.random() < 0.45
        ]  # fmt: skip
        conn.execute(
            sa.text("INSERT INTO asset_tags (asset_id, tag_id, score) VALUES (:a, :t, :s)"), rows
        )
    engine.dispose()
    return tag_ids


def _rows(url: str) -> list[tuple[int, int, float]]:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        out = conn.execute(sa.text("SELECT asset_id, tag_id, score FROM asset_tags")).all()
    engine.dispose()
    return sorted((int(a), int(t), float(s)) for a, t, s in out)


QUERIES: list[dict[str, Any]] = [
    {"all_": [0]},
    {"all_": [0], "min_score": 0.5},
    {"all_": [1, 2]},
    {"all_": [1, 2, 3], "min_score": 0.25},
    {"any_": [4, 5, 6]},
    {"any_": [4, 5], "min_score": 0.7},
    {"all_": [0], "none": [7]},
    {"all_": [2], "any_": [8, 9], "none": [10]},
    {"none": [0, 1]},
    {"all_": [3], "order": "date"},
    {"any_": [5, 11], "order": "date", "min_score": 0.4},
]


def _search_everything(url: str, tag_ids: list[int]) -> list[Any]:
    """Every page (limit 7) of every query in QUERIES, plus per-asset reads.

    Today's search also reads ``asset_labels`` (migration l001, after the revisions this test
    moves between); where it is missing, an empty one stands in while searching (no label:
    the score-only results the partitioning must preserve) and is dropped again.
    """
    from indexer.db.labels import AssetLabel

    table = AssetLabel.__table__
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    stand_in = not sa.inspect(engine).has_table(table.name)
    if stand_in:
        table.create(engine)
    try:
        return _search_pages(url, tag_ids)
    finally:
        if stand_in:
            dispose_engines()
            table.drop(engine)
        engine.dispose()


def _search_pages(url: str, tag_ids: list[int]) -> list[Any]:
    out: list[Any] = []
    with session_scope(url) as s:
        for query in QUERIES:
            args = {
                k: [tag_ids[i] for i in v] if k in ("all_", "any_", "none") else v
                for k, v in query.items()
            }
            cursor, pages = None, []
            while True:
                page = db.search_by_tags(s, model_name=MODEL, limit=7, cursor=cursor, **args)
                pages.append([(h.asset_id, h.score, h.tags) for h in page.hits])
                cursor = page.next_cursor
                if cursor is None:
                    break
            out.append(pages)
        for asset_id in (1, 2, 150, ASSETS):
            out.append(db.get_asset_tags(s, asset_id, include_below_threshold=True))
    return out


def _layout(url: str) -> tuple[str, int]:
    """(relkind of asset_tags, number of its partitions) on PostgreSQL."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        kind = conn.execute(
            sa.text("SELECT relkind FROM pg_class WHERE oid = 'asset_tags'::regclass")
        ).scalar_one()
        parts = conn.execute(
            sa.text("SELECT count(*) FROM pg_inherits WHERE inhparent = 'asset_tags'::regclass")
        ).scalar_one()
    engine.dispose()
    return str(kind), int(parts)


@pytest.fixture
def pg_before() -> Iterator[str]:
    """A PostgreSQL archive at the revision before s001, with score rows."""
    with fresh_postgres_database("ramdex_partition_test") as url:
        upgrade_database(url, BEFORE)
        yield url
        dispose_engines()


@pytest.mark.postgres
def test_upgrade_partitions_keeping_rows_and_results_then_downgrade(pg_before: str) -> None:
    url = pg_before
    tag_ids = _fill(url)
    assert _layout(url) == ("r", 0)
    rows = _rows(url)
    assert len(rows) > ASSETS  # a real archive, not an empty table
    before = _search_everything(url, tag_ids)
    assert any(pages[0] for pages in before[: len(QUERIES)])  # the queries find things
    assert sum(len(pages) > 1 for pages in before[: len(QUERIES)]) >= 3  # and page

    upgrade_database(url)
    assert current_revision(url) == head_revision()
    assert _layout(url) == ("p", ASSET_TAG_PARTITIONS)
    assert _rows(url) == rows
    dispose_engines()
    assert _search_everything(url, tag_ids) == before

    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        spread = conn.execute(
            sa.text("SELECT count(DISTINCT tableoid) FROM asset_tags")
        ).scalar_one()
        per_tag = conn.execute(
            sa.text("SELECT max(n) FROM (SELECT count(DISTINCT tableoid) AS n FROM asset_tags "
                    "GROUP BY tag_id) x")
        ).scalar_one()  # fmt: skip
        plan = "\n".join(
            r[0]
            for r in conn.execute(
                sa.text("EXPLAIN SELECT * FROM asset_tags WHERE asset_id = 5 AND tag_id = 1")
            )
        )
    engine.dispose()
    assert 1 < spread <= ASSET_TAG_PARTITIONS  # rows spread over the partitions
    assert per_tag == 1  # a tag's scores stay together
    assert plan.count("asset_tags_p") == 1, plan  # a tag term's probe reads one partition

    # the foreign keys hold on the partitioned table: deleting an asset removes its scores
    with session_scope(url) as s:
        s.execute(sa.text("DELETE FROM assets WHERE id = 1"))
    assert [r for r in _rows(url) if r[0] == 1] == []
    assert [r for r in rows if r[0] != 1] == _rows(url)
    with pytest.raises(sa.exc.IntegrityError):
        with session_scope(url) as s:
            s.execute(sa.text("INSERT INTO asset_tags VALUES (999999, :t, 0.5)"), {"t": tag_ids[0]})
    dispose_engines()
    after_delete = _search_everything(url, tag_ids)

    downgrade_database(url, BEFORE)
    assert _layout(url) == ("r", 0)
    assert _rows(url) == [r for r in rows if r[0] != 1]
    dispose_engines()
    assert _search_everything(url, tag_ids) == after_delete

    upgrade_database(url)  # and up again
    assert _layout(url) == ("p", ASSET_TAG_PARTITIONS)
    assert _rows(url) == [r for r in rows if r[0] != 1]


def test_sqlite_keeps_the_plain_table(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'plain.sqlite3'}"
    upgrade_database(url, BEFORE)
    tag_ids = _fill(url)
    rows = _rows(url)
    before = _search_everything(url, tag_ids)
    upgrade_database(url)
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        tables = {r[0] for r in conn.execute(sa.text("SELECT name FROM sqlite_master"))}
        ddl = conn.execute(
            sa.text("SELECT sql FROM sqlite_master WHERE name = 'asset_tags'")
        ).scalar_one()
    engine.dispose()
    assert not any(t.startswith("asset_tags_p") for t in tables)
    assert "PARTITION" not in ddl.upper()
    assert _rows(url) == rows
    dispose_engines()
    assert _search_everything(url, tag_ids) == before
    downgrade_database(url, BEFORE)
    assert _rows(url) == rows
    dispose_engines()
