"""Collections in the database (PostgreSQL and SQLite): membership is idempotent, counts,
delete keeps the assets, key limits."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

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


def test_tag_search_keeps_to_the_collections(db_url: str) -> None:
    """The tag search SQL restricted to collections: ranked, date-ordered and filter-only
    pages hold only the collections' assets; an empty scope finds nothing."""
    from indexer.db.collection_scope import CollectionScope
    from indexer.db.search import search_by_tags
    from ram_pp.vocab import TagVocabulary

    ids = _assets(db_url, 6)
    vocab = TagVocabulary.from_names(["cat", "dog"], threshold=0.5)
    with session_scope(db_url) as s:
        db.ensure_vocabulary(s, "m@1", vocab)
        tag_ids = {t.english: t.id for t in db.list_tags(s, "m@1")}
        db.write_tag_scores(s, tag_ids["cat"], ids, [0.9 - n * 0.01 for n in range(len(ids))])
        db.set_status(s, ids, db.AssetStatus.DONE)
        a = repo.create_collection(s, "a").id
        repo.add_assets_to_collection(s, a, ids[:2])
    scope = CollectionScope(frozenset({a}))
    with session_scope(db_url) as s:
        for order in ("score", "date"):
            page = search_by_tags(s, model_name="m@1", all_=["cat"], order=order, scope=scope)
            assert sorted(h.asset_id for h in page.hits) == sorted(ids[:2])
        page = search_by_tags(s, model_name="m@1", none=["dog"], scope=scope)
        assert sorted(h.asset_id for h in page.hits) == sorted(ids[:2])
        everything = search_by_tags(s, model_name="m@1", all_=["cat"])
        assert len(everything.hits) == 6
        nothing = CollectionScope(frozenset())
        assert not search_by_tags(s, model_name="m@1", all_=["cat"], scope=nothing).hits


def test_cli_collections_and_limited_keys(
    sqlite_migrated_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ramdex collections`` and ``ramdex keys create --collection`` (SQLite only: the same
    repository functions run on PostgreSQL above)."""
    from tests.cli_support import assert_first_line_error, run_ramdex
    from tests.db_fixtures import clear_tables

    db_url = sqlite_migrated_url
    clear_tables(db_url)

    monkeypatch.setenv("RAMDEX_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RAMDEX_DATABASE__URL", db_url)
    ids = _assets(db_url, 3)
    code, out = run_ramdex("collections", "create", "team-a", "-d", "A's photos")
    assert code == 0 and "team-a" in out
    code, out = run_ramdex("collections", "add", "team-a", *map(str, ids[:2]))
    assert code == 0 and out.startswith("2 assets added"), out
    code, out = run_ramdex("collections", "add", "team-a", str(ids[0]), "999999")
    assert_first_line_error(code, out, "999999")
    code, out = run_ramdex("collections", "list", "--json")
    assert [(c["name"], c["asset_count"]) for c in json.loads(out)] == [("team-a", 2)]
    code, out = run_ramdex("keys", "create", "-s", "read", "--collection", "team-a", "--json")
    assert code == 0, out
    key = json.loads(out.splitlines()[0])
    assert key["collections"] == ["team-a"]
    code, out = run_ramdex("keys", "list", "--json")
    listed = {k["key_id"]: k["collections"] for k in json.loads(out)}
    assert listed[key["key_id"]] == ["team-a"]
    code, out = run_ramdex("keys", "list")
    assert "only team-a" in out
    code, out = run_ramdex("keys", "create", "-s", "read", "--collection", "nope")
    assert_first_line_error(code, out, "nope")
    code, out = run_ramdex("collections", "show", "team-a", "--json")
    assert json.loads(out)["keys"] == [key["key_id"]]
    code, out = run_ramdex("collections", "remove", "team-a", str(ids[0]))
    assert code == 0 and out.startswith("1 assets removed")
    code, out = run_ramdex("collections", "delete", "team-a", "--yes")
    assert code == 0
    code, out = run_ramdex("keys", "list")
    assert "only nothing" in out  # the key's collection is gone: it sees nothing, not all
    code, out = run_ramdex("collections", "show", "team-a")
    assert_first_line_error(code, out, "team-a")


def test_pending_reindex_counts_only_the_collections(db_url: str) -> None:
    """A search's pending_reindex for a collection-limited key counts its collections' assets
    scored by another model, not the archive's (that would tell it other collections' size)."""
    import sqlalchemy as sa

    from indexer.db.collection_scope import CollectionScope
    from indexer.search.service import _pending_in

    ids = _assets(db_url, 5)
    with session_scope(db_url) as s:
        s.execute(
            sa.update(db.Asset)
            .where(db.Asset.id.in_(ids))
            .values(status=db.AssetStatus.DONE.value, model_name="old@1")
        )
        a = repo.create_collection(s, "a").id
        repo.add_assets_to_collection(s, a, ids[:2])
    with session_scope(db_url) as s:
        assert _pending_in(s, "new@1", CollectionScope(frozenset({a}))) == 2
        assert _pending_in(s, "new@1", CollectionScope()) == 5
        assert _pending_in(s, "old@1", CollectionScope(frozenset({a}))) == 0
