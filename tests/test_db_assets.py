"""Assets on PostgreSQL and SQLite: dedup (also under a race), sources, batch results in one
transaction, failure, status, deletion, reindex bookkeeping."""

from __future__ import annotations

import hashlib
import threading
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from indexer import db
from indexer.db.session import session_scope
from ram_pp.vocab import TagVocabulary

pytest_plugins = ["tests.db_fixtures"]

MODEL = "test-model@1"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def make_vocab(n: int = 12) -> TagVocabulary:
    names = [f"tag{i:02d}" for i in range(n)]
    vocab = TagVocabulary.from_names(names, threshold=0.6)
    return TagVocabulary(vocab.english, tuple(f"标签{i}" for i in range(n)), vocab.thresholds)


def new_assets(url: str, count: int) -> list[int]:
    with session_scope(url) as s:
        return [db.get_or_create_asset_by_sha(s, sha256=sha(f"a{i}")).id for i in range(count)]


def stored_scores(url: str) -> dict[tuple[int, int], float]:
    with session_scope(url) as s:
        rows = s.execute(sa.select(db.AssetTag.asset_id, db.AssetTag.tag_id, db.AssetTag.score))
        return {(a, t): sc for a, t, sc in rows}


def test_get_or_create_dedups_by_content_hash(db_url: str) -> None:
    digest = sha("same bytes")
    with session_scope(db_url) as s:
        first = db.get_or_create_asset_by_sha(s, sha256=digest, size_bytes=10, mime="image/png")
        again = db.get_or_create_asset_by_sha(s, sha256=digest.upper(), size_bytes=99)
    assert first.created and not again.created
    assert first.id == again.id
    with session_scope(db_url) as s:
        asset = db.get_asset(s, first.id)
        assert asset is not None
        assert (asset.sha256, asset.size_bytes, asset.mime) == (digest, 10, "image/png")
        assert asset.status == "pending"
        assert asset.created_at.tzinfo is not None
        assert db.get_asset_by_sha(s, digest).id == first.id


@pytest.mark.parametrize("bad", ["", "abc", "z" * 64, sha("x")[:-1]])
def test_get_or_create_rejects_bad_digests(db_url: str, bad: str) -> None:
    with session_scope(db_url) as s, pytest.raises(ValueError, match="SHA-256"):
        db.get_or_create_asset_by_sha(s, sha256=bad)


def test_same_file_submitted_concurrently_gives_one_asset(db_url: str) -> None:
    """Eight sessions insert the same hash at once; each holds its transaction open a moment so
    the inserts really overlap (the others wait on the unique index / SQLite write lock)."""
    digest = sha("raced")
    barrier = threading.Barrier(8)
    refs: list[db.AssetRef] = []
    errors: list[BaseException] = []

    def submit() -> None:
        try:
            barrier.wait()
            with session_scope(db_url) as s:
                ref = db.get_or_create_asset_by_sha(s, sha256=digest)
                db.add_source(s, asset_id=ref.id, uri=f"/in/{threading.get_ident()}.jpg")
                time.sleep(0.1)
            refs.append(ref)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len({r.id for r in refs}) == 1
    assert sum(r.created for r in refs) == 1
    with session_scope(db_url) as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(db.Asset)) == 1
        assert len(db.list_sources(s, refs[0].id)) == 8


def test_add_source_records_every_uri_once(db_url: str) -> None:
    (asset_id,) = new_assets(db_url, 1)
    t0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    with session_scope(db_url) as s:
        db.add_source(s, asset_id=asset_id, uri="/photos/a.jpg", seen_at=t0)
        db.add_source(s, asset_id=asset_id, uri="https://example.org/a.jpg", seen_at=t0)
    with session_scope(db_url) as s:
        db.add_source(s, asset_id=asset_id, uri="/photos/a.jpg", seen_at=t0 + timedelta(hours=1))
        sources = {x.uri: x for x in db.list_sources(s, asset_id)}
    assert sorted(sources) == ["/photos/a.jpg", "https://example.org/a.jpg"]
    again = sources["/photos/a.jpg"]
    assert (again.first_seen, again.last_seen) == (t0, t0 + timedelta(hours=1))
    other = sources["https://example.org/a.jpg"]
    assert (other.first_seen, other.last_seen) == (t0, t0)


def test_add_source_rejects_empty_and_overlong_uris(db_url: str) -> None:
    (asset_id,) = new_assets(db_url, 1)
    with session_scope(db_url) as s:
        with pytest.raises(ValueError, match="empty"):
            db.add_source(s, asset_id=asset_id, uri="")
        with pytest.raises(ValueError, match="longer than"):
            db.add_source(s, asset_id=asset_id, uri="/" + "é" * db.MAX_URI_BYTES)


def test_write_asset_results_stores_batch_and_scores_above_floor(db_url: str) -> None:
    vocab = make_vocab()
    ids = new_assets(db_url, 3)
    rng = np.random.default_rng(0)
    scores = rng.random((3, len(vocab))).astype(np.float32)
    scores[0, 0] = 0.2  # exactly the floor: stored
    embeddings = rng.standard_normal((3, 16)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    with session_scope(db_url) as s:
        tag_ids = db.ensure_vocabulary(s, MODEL, vocab)
        summary = db.write_asset_results(
            s,
            [
                db.AssetResult(
                    asset_id=a,
                    scores=scores[i],
                    embedding=embeddings[i],
                    width=640 + i,
                    height=480,
                    mime="image/jpeg",
                    thumbnail=b"webp" * i,
                    thumbnail_path=f"thumbs/{a}.webp",
                    token_shard=0,
                    token_offset=i * 100,
                )
                for i, a in enumerate(ids)
            ],
            model_name=MODEL,
            tag_ids=tag_ids,
            score_floor=0.2,
        )
    expected = {
        (ids[i], int(tag_ids[j])): float(scores[i, j])
        for i in range(3)
        for j in range(len(vocab))
        if scores[i, j] >= 0.2
    }
    assert summary.written == ids and summary.missing == []
    assert summary.score_rows == len(expected)
    got = stored_scores(db_url)
    assert got.keys() == expected.keys()
    assert np.allclose([got[k] for k in expected], list(expected.values()), atol=1e-7)
    with session_scope(db_url) as s:
        for i, a in enumerate(ids):
            asset = db.get_asset(s, a)
            assert asset.status == "done" and asset.model_name == MODEL and asset.error is None
            assert (asset.width, asset.height, asset.mime) == (640 + i, 480, "image/jpeg")
            assert asset.thumbnail_path == f"thumbs/{a}.webp"
            assert (asset.thumbnail or b"") == b"webp" * i
            assert (asset.token_shard, asset.token_offset, asset.has_tokens) == (0, i * 100, True)
            assert asset.embedding_dim == 16
            np.testing.assert_array_equal(
                db.decode_vector(asset.embedding, asset.embedding_dim), embeddings[i]
            )


def test_rescoring_replaces_old_scores(db_url: str) -> None:
    vocab = make_vocab(6)
    (a,) = new_assets(db_url, 1)
    with session_scope(db_url) as s:
        old_ids = db.ensure_vocabulary(s, "old-model", vocab)
        db.write_asset_results(
            s,
            [db.AssetResult(a, np.full(6, 0.9, np.float32))],
            model_name="old-model",
            tag_ids=old_ids,
            score_floor=0.2,
        )
    with session_scope(db_url) as s:
        new_ids = db.ensure_vocabulary(s, "new-model", vocab)
        scores = np.array([0.1, 0.3, 0.5, 0.7, 0.05, 0.25], np.float32)
        db.write_asset_results(
            s,
            [db.AssetResult(a, scores)],
            model_name="new-model",
            tag_ids=new_ids,
            score_floor=0.2,
        )
    got = stored_scores(db_url)
    assert set(got) == {(a, int(new_ids[j])) for j in (1, 2, 3, 5)}
    with session_scope(db_url) as s:
        assert db.get_asset(s, a).model_name == "new-model"


def test_batch_is_one_transaction(db_url: str) -> None:
    """A failure while writing (unknown tag id -> foreign key violation) leaves no asset done."""
    vocab = make_vocab(4)
    ids = new_assets(db_url, 3)
    with session_scope(db_url) as s:
        tag_ids = db.ensure_vocabulary(s, MODEL, vocab)
    bad_tag_ids = tag_ids.copy()
    bad_tag_ids[-1] = 10_000_000
    results = [db.AssetResult(a, np.full(4, 0.9, np.float32)) for a in ids]
    with pytest.raises(IntegrityError), session_scope(db_url) as s:
        db.write_asset_results(s, results, model_name=MODEL, tag_ids=bad_tag_ids)
    with session_scope(db_url) as s:
        assert db.count_by_status(s)["pending"] == 3
    assert stored_scores(db_url) == {}


@pytest.mark.parametrize(
    ("scores", "message"),
    [
        (np.full(3, 0.5, np.float32), "scores for a vocabulary"),
        (np.array([0.5, np.nan, 0.5, 0.5], np.float32), "probabilities"),
        (np.array([0.5, 1.5, 0.5, 0.5], np.float32), "probabilities"),
        (np.array([0.5, -0.1, 0.5, 0.5], np.float32), "probabilities"),
    ],
)
def test_write_asset_results_rejects_malformed_scores(
    db_url: str, scores: np.ndarray, message: str
) -> None:
    (a,) = new_assets(db_url, 1)
    with session_scope(db_url) as s:
        tag_ids = db.ensure_vocabulary(s, MODEL, make_vocab(4))
    with session_scope(db_url) as s, pytest.raises(ValueError, match=message):
        db.write_asset_results(s, [db.AssetResult(a, scores)], model_name=MODEL, tag_ids=tag_ids)


def test_write_asset_results_skips_deleted_assets(db_url: str) -> None:
    ids = new_assets(db_url, 2)
    with session_scope(db_url) as s:
        tag_ids = db.ensure_vocabulary(s, MODEL, make_vocab(4))
        db.delete_asset(s, ids[0])
    with session_scope(db_url) as s:
        summary = db.write_asset_results(
            s,
            [db.AssetResult(a, np.full(4, 0.9, np.float32)) for a in ids],
            model_name=MODEL,
            tag_ids=tag_ids,
            score_floor=0.2,
        )
    assert summary.written == [ids[1]] and summary.missing == [ids[0]]
    assert summary.score_rows == 4


def test_mark_failed_and_set_status(db_url: str) -> None:
    ids = new_assets(db_url, 3)
    with session_scope(db_url) as s:
        assert db.set_status(s, ids, "processing", only_from=["pending"]) == 3
        assert db.set_status(s, ids, "processing", only_from=["pending"]) == 0
        assert db.mark_failed(s, ids[0], "decode error: truncated JPEG") == 1
        assert db.mark_failed(s, [ids[1]], "x" * 10_000) == 1
        with pytest.raises(ValueError, match="reason"):
            db.mark_failed(s, ids[2], "  ")
        with pytest.raises(ValueError):
            db.set_status(s, ids, "finished")
    with session_scope(db_url) as s:
        failed = db.get_asset(s, ids[0])
        assert failed.status == "failed" and failed.error == "decode error: truncated JPEG"
        assert len(db.get_asset(s, ids[1]).error) == 4000
        assert db.count_by_status(s) == {"pending": 0, "processing": 1, "done": 0, "failed": 2}
        db.set_status(s, [ids[0]], "pending")
    with session_scope(db_url) as s:
        retried = db.get_asset(s, ids[0])
        assert retried.status == "pending" and retried.error is None


def test_delete_asset_cascades_and_reports_external_data(db_url: str) -> None:
    (a, b) = new_assets(db_url, 2)
    with session_scope(db_url) as s:
        tag_ids = db.ensure_vocabulary(s, MODEL, make_vocab(4))
        db.add_source(s, asset_id=a, uri="/x/a.jpg")
        db.write_asset_results(
            s,
            [
                db.AssetResult(
                    x, np.full(4, 0.9, np.float32), thumbnail_path=f"t/{x}", token_shard=3
                )
                for x in (a, b)
            ],
            model_name=MODEL,
            tag_ids=tag_ids,
        )
    with session_scope(db_url) as s:
        gone = db.delete_asset(s, a)
        assert db.delete_asset(s, 999_999) is None
    assert gone is not None and gone.id == a
    assert (gone.thumbnail_path, gone.token_shard, gone.model_name) == (f"t/{a}", 3, MODEL)
    with session_scope(db_url) as s:
        assert db.get_asset(s, a) is None
        assert db.list_sources(s, a) == []
    assert {k[0] for k in stored_scores(db_url)} == {b}


def test_assets_scored_by_other_model_pages_and_counts(db_url: str) -> None:
    ids = new_assets(db_url, 7)
    with session_scope(db_url) as s:
        old = db.ensure_vocabulary(s, "old", make_vocab(3))
        new = db.ensure_vocabulary(s, "new", make_vocab(3))
        ones = np.full(3, 0.9, np.float32)
        db.write_asset_results(
            s, [db.AssetResult(a, ones) for a in ids[:5]], model_name="old", tag_ids=old
        )
        db.write_asset_results(s, [db.AssetResult(ids[5], ones)], model_name="new", tag_ids=new)
    with session_scope(db_url) as s:
        assert db.count_assets_scored_by_other_model(s, "new") == 5
        first = db.assets_scored_by_other_model(s, "new", limit=3)
        rest = db.assets_scored_by_other_model(s, "new", after_id=first[-1], limit=3)
        assert first + rest == ids[:5]
        assert db.assets_scored_by_other_model(s, "new", after_id=rest[-1]) == []
        assert db.count_assets_scored_by_other_model(s, "old") == 1
