"""Collections in the database (PostgreSQL and SQLite): membership is idempotent, counts,
delete keeps the assets, key limits."""

from __future__ import annotations

import hashlib

import pytest

from indexer import db
from indexer.db import collection_repo as repo
from indexer.db.errors import DuplicateError, NotFoundError
from indexer.db.session import session_scope

pytest_plugins = ["tests.db_fixtures"]


def _assets(url: str, count: int, tag: str = "a") -> list[int]:
    with session_scope(url) as s:
        return [
            db.get_or_create_asset_by_sha(
                s, sha256=hashlib.sha256(f"{tag}{i}".encode()).hexdigest()
            ).id
            for i in range(count)
        ]


def test_add_assets_is_idempotent_and_counts(db_url: str) -> None:
    ids = _assets(db_url, 5)
    with session_scope(db_url) as s:
        coll = repo.create_collection(s, "team-a", "A's photos")
        cid = coll.id
        assert repo.add_assets_to_collection(s, cid, ids[:3]) == 3
    with session_scope(db_url) as s:
        # Again, overlapping, with duplicates in the call: only the two new ones count.
        assert repo.add_assets_to_collection(s, cid, [ids[2], ids[3], ids[4], ids[4]]) == 2
        assert repo.add_assets_to_collection(s, cid, ids) == 0
        assert repo.collection_asset_count(s, cid) == 5
    with session_scope(db_url) as s:
        assert repo.remove_assets_from_collection(s, cid, [ids[0], ids[0]]) == 1
        infos = repo.list_collections(s)
        assert [(i.name, i.asset_count) for i in infos] == [("team-a", 4)]


def test_duplicate_names_and_resolution(db_url: str) -> None:
    with session_scope(db_url) as s:
        cid = repo.create_collection(s, "  b  ").id
        with pytest.raises(DuplicateError):
            repo.create_collection(s, "b")
        with pytest.raises(ValueError):
            repo.create_collection(s, "123")
        assert repo.resolve_collection(s, "b").id == cid
        assert repo.resolve_collection(s, str(cid)).name == "b"
        assert repo.ensure_collection(s, "b").id == cid
        with pytest.raises(NotFoundError):
            repo.resolve_collection(s, "nope")


def test_delete_collection_keeps_assets(db_url: str) -> None:
    ids = _assets(db_url, 2)
    with session_scope(db_url) as s:
        cid = repo.create_collection(s, "gone").id
        repo.add_assets_to_collection(s, cid, ids)
    with session_scope(db_url) as s:
        repo.delete_collection(s, cid)
    with session_scope(db_url) as s:
        assert repo.list_collections(s) == []
        assert all(db.get_asset(s, i) is not None for i in ids)
        assert repo.collections_of_assets(s, ids) == {}
        with pytest.raises(NotFoundError):
            repo.delete_collection(s, cid)
