"""Jobs (progress from concurrent workers) and concepts (CRUD, embeddings, promotion to a tag)
on PostgreSQL and SQLite."""

from __future__ import annotations

import hashlib
import threading

import numpy as np
import pytest

from indexer import db
from indexer.db.session import session_scope
from ram_pp.vocab import TagVocabulary

pytest_plugins = ["tests.db_fixtures"]

MODEL = "concept-model@1"


def unit_rows(n: int, d: int = 8, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_job_lifecycle_and_concurrent_progress(db_url: str) -> None:
    with session_scope(db_url) as s:
        job = db.create_job(s, kind="ingest", total=10, params={"paths": ["/photos"]})
        other = db.create_job(s, kind="reindex")
    assert job.status == "pending" and (job.total, job.done, job.failed) == (10, 0, 0)

    def report(n: int) -> None:
        for _ in range(n):
            with session_scope(db_url) as s:
                db.add_job_progress(s, job.id, done=1)
        with session_scope(db_url) as s:
            db.add_job_progress(s, job.id, failed=1)

    threads = [threading.Thread(target=report, args=(15,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with session_scope(db_url) as s:
        db.update_job(s, job.id, status="running", add_total=54)
        db.update_job(s, other.id, status="failed", error="broker unreachable")
    with session_scope(db_url) as s:
        got = db.get_job(s, job.id)
        assert (got.status, got.total, got.done, got.failed) == ("running", 64, 60, 4)
        assert got.params == {"paths": ["/photos"]}
        assert got.updated_at >= got.created_at
        assert [j.id for j in db.list_jobs(s)] == [other.id, job.id]
        assert [j.id for j in db.list_jobs(s, status="failed")] == [other.id]
        assert [j.id for j in db.list_jobs(s, kind="ingest")] == [job.id]
        assert db.get_job(s, other.id).error == "broker unreachable"
        assert db.get_job(s, 10_000_000) is None


def test_job_errors(db_url: str) -> None:
    with session_scope(db_url) as s:
        with pytest.raises(ValueError):
            db.create_job(s, kind="transcode")
        with pytest.raises(ValueError):
            db.create_job(s, kind="ingest", total=-1)
        with pytest.raises(db.NotFoundError):
            db.add_job_progress(s, 10_000_000, done=1)
        with pytest.raises(db.NotFoundError):
            db.update_job(s, 10_000_000, status="done")
        job = db.create_job(s, kind="backfill")
        with pytest.raises(ValueError):
            db.add_job_progress(s, job.id, done=-1)
        with pytest.raises(ValueError):
            db.update_job(s, job.id, status="exploded")


def test_concept_crud(db_url: str) -> None:
    texts = ["a photo of a red kite.", "a kite flying in the sky."]
    emb = unit_rows(2)
    with session_scope(db_url) as s:
        ready = db.create_concept(
            s, model_name=MODEL, name="red kite", descriptions=texts, embeddings=emb,
            text_encoder="clip-b16",
        )  # fmt: skip
        draft = db.create_concept(s, model_name=MODEL, name="tall ship", descriptions=["a ship"])
    assert (ready.status, ready.embedding_count, ready.embedding_dim) == ("ready", 2, 8)
    assert draft.status == "draft"
    with session_scope(db_url) as s:
        got = db.get_concept(s, ready.id)
        assert got.descriptions == texts and got.threshold == pytest.approx(0.5)
        np.testing.assert_array_equal(db.concept_embeddings(got), emb)
        assert db.get_concept_by_name(s, MODEL, " red kite ").id == ready.id
        assert [c.id for c in db.list_concepts(s, MODEL)] == [draft.id, ready.id]
        assert [c.id for c in db.list_concepts(s, status="draft")] == [draft.id]
        with pytest.raises(ValueError, match="no description embeddings"):
            db.concept_embeddings(db.get_concept(s, draft.id))

        updated = db.update_concept(s, draft.id, embeddings=unit_rows(1, seed=1), threshold=0.6)
        assert updated.status == "ready" and updated.threshold == pytest.approx(0.6)
        changed = db.update_concept(s, ready.id, descriptions=["only one now"])
        assert changed.status == "draft" and changed.embeddings is None
        assert db.update_concept(s, ready.id, status="failed", error="encoder crashed").error
    with session_scope(db_url) as s:
        assert db.delete_concept(s, draft.id) is True
        assert db.delete_concept(s, draft.id) is False
        assert db.get_concept(s, draft.id) is None


def test_concept_validation(db_url: str) -> None:
    with session_scope(db_url) as s:
        db.create_concept(s, model_name=MODEL, name="kite", descriptions=["k"])
    with session_scope(db_url) as s:
        with pytest.raises(db.DuplicateError):
            db.create_concept(s, model_name=MODEL, name="kite", descriptions=["k"])
        with pytest.raises(ValueError, match="description"):
            db.create_concept(s, model_name=MODEL, name="empty", descriptions=[" "])
        with pytest.raises(ValueError, match="L2"):
            db.create_concept(
                s, model_name=MODEL, name="x", descriptions=["a"], embeddings=np.ones((1, 8))
            )
        with pytest.raises(ValueError, match=r"\(2, dim\)"):
            db.create_concept(
                s, model_name=MODEL, name="y", descriptions=["a", "b"], embeddings=unit_rows(3)
            )
        with pytest.raises(ValueError, match="threshold"):
            db.create_concept(s, model_name=MODEL, name="z", descriptions=["a"], threshold=1.2)
        with pytest.raises(db.NotFoundError):
            db.update_concept(s, 10_000_000, threshold=0.5)


def test_promoted_concept_becomes_a_tag_and_survives_rescoring(db_url: str) -> None:
    vocab = TagVocabulary.from_names(["kite", "sky"], threshold=0.5)
    with session_scope(db_url) as s:
        tag_ids = db.ensure_vocabulary(s, MODEL, vocab)
        asset = db.get_or_create_asset_by_sha(s, sha256=hashlib.sha256(b"k").hexdigest()).id
        concept = db.create_concept(
            s, model_name=MODEL, name="red kite", descriptions=["a"], embeddings=unit_rows(1),
            threshold=0.55,
        )  # fmt: skip
        draft = db.create_concept(s, model_name=MODEL, name="draft one", descriptions=["b"])
        with pytest.raises(ValueError, match="no embeddings"):
            db.promote_concept(s, draft.id)
        tag = db.promote_concept(s, concept.id, chinese="红风筝")
        assert db.promote_concept(s, concept.id).id == tag.id  # idempotent
        assert (tag.origin, tag.english, tag.chinese) == ("concept", "red kite", "红风筝")
        assert tag.threshold == pytest.approx(0.55) and tag.position is None
        db.write_tag_scores(s, tag.id, [asset], [0.9])
    with session_scope(db_url) as s:
        assert db.get_concept(s, concept.id).status == "promoted"
        assert db.get_concept(s, concept.id).tag_id == tag.id
        # the same model scores the asset again: its promoted-concept score is kept
        db.write_asset_results(
            s,
            [db.AssetResult(asset, np.array([0.8, 0.1], np.float32))],
            model_name=MODEL,
            tag_ids=tag_ids,
        )
    with session_scope(db_url) as s:
        names = [t.english for t in db.get_asset_tags(s, asset)]
        assert names == ["red kite", "kite"]
        hits = db.search_by_tags(s, model_name=MODEL, all_=["red kite", "kite"]).hits
        assert [h.asset_id for h in hits] == [asset]
        db.delete_concept(s, concept.id)
    with session_scope(db_url) as s:
        assert db.get_tag(s, tag.id) is not None  # the tag outlives its concept
        other = db.create_concept(
            s, model_name=MODEL, name="kite", descriptions=["c"], embeddings=unit_rows(1)
        )
        with pytest.raises(db.DuplicateError):
            db.promote_concept(s, other.id)  # a built-in tag already has this name
