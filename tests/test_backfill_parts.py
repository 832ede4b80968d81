"""Distributed concept backfill (issue 16 section 2): a backfill job runs as parts, ranges of
asset ids that any number of model workers take; each part streams its assets, commits scores,
cursor and progress together, resumes after its cursor and never counts an asset twice.

The archive here is real (the demo model ingests synthetic images into SQLite or PostgreSQL and
the token store); the Celery workers sharing a backfill, one SIGKILLed, are in
tests/test_fault_workers.py.
"""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from indexer.db.backfill_parts import BackfillPart, ClaimedPart, PartRange, add_parts, finish_part
from indexer.db.concept_repo import create_concept
from indexer.db.job_repo import create_job
from indexer.db.jobs import Job
from indexer.db.leases import db_in
from indexer.db.session import session_scope
from indexer.db.tags import AssetTag, Tag
from indexer.settings import Settings
from tests.api_support import fresh_database

N_IMAGES = 11
PART, CHUNK = 3, 2  # 4 parts (3, 3, 3, 2 assets), 2 chunks each: every boundary is crossed


@pytest.fixture(params=["sqlite", "postgresql"])
def archive(request, tmp_path):
    """An embedded archive (demo model) of N_IMAGES synthetic images, split into small parts."""
    from indexer.archive import Archive
    from indexer.ingest.pipeline import ingest
    from ram_pp.synth import SynthSpec, write_dataset

    with fresh_database(request.param, tmp_path) as url:
        settings = Settings(
            home=tmp_path / "home",
            database={"url": url},
            model={"device": "cpu"},
            broker={"url": ""},
            index={"backfill_part_assets": PART, "backfill_chunk_assets": CHUNK},
        )
        samples = tmp_path / "samples"
        write_dataset(samples, SynthSpec(seed=3, n_train=0, n_val=0, n_test=N_IMAGES))
        summary = ingest([samples / "images" / "test"], settings=settings, progress=False)
        assert summary.done == N_IMAGES
        yield Archive(settings)


def _new_backfill(settings: Settings, name: str, descriptions: list[str]) -> tuple[int, int]:
    from indexer.models import configured_model_id

    with session_scope(settings.database_url) as s:
        concept = create_concept(
            s, model_name=configured_model_id(settings), name=name, descriptions=descriptions
        )
        job = create_job(s, kind="backfill", params={"concept_id": concept.id})
        s.flush()
        return int(concept.id), int(job.id)


def _parts(settings: Settings, job_id: int) -> list[BackfillPart]:
    with session_scope(settings.database_url) as s:
        rows = s.scalars(
            sa.select(BackfillPart).where(BackfillPart.job_id == job_id).order_by(BackfillPart.part)
        ).all()
        s.expunge_all()
        return list(rows)


def _one_pass(archive, name: str, descriptions: list[str]) -> dict[int, float]:
    """Reference: the plain RAM++ head over every stored E at once (not the fast path)."""
    import torch

    from ram_pp.concepts import encode_concepts, make_concept

    concept = make_concept(name, descriptions, use_templates=not descriptions)
    bank = encode_concepts([concept], archive.text_encoder())
    store = archive.token_store()
    ids = store.ids()
    with torch.inference_mode():
        logits = archive.loaded_model().model.logits_from_embeddings(
            torch.from_numpy(store.get(ids)), bank
        )
    return dict(zip(ids.tolist(), torch.sigmoid(logits[:, 0]).tolist(), strict=True))


def _scores(settings: Settings, name: str) -> dict[int, float]:
    with session_scope(settings.database_url) as s:
        rows = s.execute(
            sa.select(AssetTag.asset_id, AssetTag.score)
            .join(Tag, Tag.id == AssetTag.tag_id)
            .where(Tag.english == name)
        ).all()
    return {int(a): float(p) for a, p in rows}


def test_a_backfill_runs_as_parts_with_the_scores_of_one_pass(archive) -> None:
    """The job is split into ranges of PART asset ids; every part ends done, the job's progress
    is the parts' sum, and the stored scores are the plain RAM++ head's over all of E."""
    settings = archive.settings
    name, descriptions = "lighthouse", ["a tall white lighthouse on a rocky coast"]
    concept_id, job_id = _new_backfill(settings, name, descriptions)
    archive.backfill_concept(concept_id, job_id)

    ids = archive.token_store().ids()
    parts = _parts(settings, job_id)
    assert [(p.id_lo, p.id_hi, p.total) for p in parts] == [
        (int(ids[a]), int(ids[min(a + PART, len(ids)) - 1]), min(PART, len(ids) - a))
        for a in range(0, len(ids), PART)
    ]
    assert all(p.status == "done" and p.cursor == p.id_hi and p.attempts == 0 for p in parts)
    with session_scope(settings.database_url) as s:
        job = s.get(Job, job_id)
        assert (job.status, job.done, job.failed, job.total) == ("done", N_IMAGES, 0, N_IMAGES)
        assert job.lease_owner is None
    assert sum(p.done for p in parts) == N_IMAGES
    from api.cli.ingest import _format_job
    from indexer.jobs import get_job_view

    shown = get_job_view(settings.database_url, job_id)
    n = len(parts)
    assert shown.parts == {"pending": 0, "running": 0, "done": n, "failed": 0, "total": n}
    assert shown.to_dict()["parts"] == shown.parts
    assert f"{N_IMAGES}/{N_IMAGES} " in _format_job(shown)
    assert f"parts {len(parts)}/{len(parts)} done" in _format_job(shown)
    reference = _one_pass(archive, name, descriptions)
    floor = settings.index.score_floor
    assert _scores(settings, name) == pytest.approx(
        {a: p for a, p in reference.items() if p >= floor}, abs=1e-5
    )


def test_a_part_whose_process_died_continues_after_its_cursor(archive) -> None:
    """A part left ``running`` by a dead process, one chunk committed, is taken over once its
    lease ran out: the new run starts after the cursor, so the job's count ends exact (each
    asset once) and the part's cursor reaches its end; a live lease is never taken."""
    from indexer.concept_backfill import run_backfill_part

    settings = archive.settings
    name, descriptions = "harbour", ["boats moored in a harbour"]
    concept_id, job_id = _new_backfill(settings, name, descriptions)
    archive.backfill_concept(concept_id, job_id)
    before = _scores(settings, name)
    first = _parts(settings, job_id)[1]
    ids = archive.token_store().ids()
    in_part = ids[(ids >= first.id_lo) & (ids <= first.id_hi)]
    # Rewind part 1 and its job to the state a process killed after its first chunk leaves.
    with session_scope(settings.database_url) as s:
        s.execute(
            sa.update(BackfillPart)
            .where(BackfillPart.job_id == job_id, BackfillPart.part == 1)
            .values(
                status="running",
                cursor=int(in_part[CHUNK - 1]),
                done=CHUNK,
                lease_owner="gone-host|-|1|1",
                lease_until=db_in(3600),
            )
        )
        s.execute(
            sa.update(Job)
            .where(Job.id == job_id)
            .values(status="running", done=N_IMAGES - len(in_part) + CHUNK)
        )
    context = archive._backfill_context()
    assert not run_backfill_part(context, job_id, 1)  # its lease still looks live: refused
    with session_scope(settings.database_url) as s:
        s.execute(
            sa.update(BackfillPart)
            .where(BackfillPart.job_id == job_id, BackfillPart.part == 1)
            .values(lease_until=db_in(-1))
        )
    assert run_backfill_part(context, job_id, 1)
    part = _parts(settings, job_id)[1]
    assert (part.status, part.cursor, part.done, part.failed) == ("done", first.id_hi, 3, 0)
    with session_scope(settings.database_url) as s:
        job = s.get(Job, job_id)
        assert (job.status, job.done, job.total) == ("done", N_IMAGES, N_IMAGES)
    assert _scores(settings, name) == pytest.approx(before, abs=1e-6)


def test_assets_deleted_after_the_split_count_as_failed(archive) -> None:
    """Assets deleted between the split and their part's run are never read: the part counts
    them failed, so the job's done + failed still reaches its total."""
    settings = archive.settings
    name = "tidal pool"
    concept_id, job_id = _new_backfill(settings, name, ["a rock pool at low tide"])
    ids = archive.token_store().ids()
    from indexer.concept_backfill import _prepare

    context = archive._backfill_context()
    from indexer.jobs import claim_job_run

    assert claim_job_run(settings.database_url, job_id, "me|-|1|1", 60)
    parts = _prepare(context, concept_id, job_id, generate=False, fixed=False)
    gone = int(ids[4])
    archive.delete_asset(gone)
    from indexer.concept_backfill import run_backfill_part

    for part in parts:
        run_backfill_part(context, job_id, part)
    with session_scope(settings.database_url) as s:
        job = s.get(Job, job_id)
        assert (job.status, job.done, job.failed, job.total) == ("done", N_IMAGES - 1, 1, N_IMAGES)
    assert gone not in _scores(settings, name)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_of_parts_finishing_at_once_exactly_one_completes_the_job(db_url) -> None:
    """Two parts finishing in concurrent transactions: the job row is locked first, so the
    second sees the first one's part done and completes the job; never both, never neither."""
    for _ in range(10):
        with session_scope(db_url) as s:
            job = create_job(s, kind="backfill", params={})
            s.flush()
            job_id = int(job.id)
            s.execute(sa.update(Job).where(Job.id == job_id).values(status="running"))
            add_parts(s, job_id, [PartRange(1, 5, 5), PartRange(6, 9, 4)])
            s.execute(
                sa.update(BackfillPart)
                .where(BackfillPart.job_id == job_id)
                .values(
                    status="running",
                    done=BackfillPart.total,  # every chunk committed: only the finish is left
                    lease_owner="w|-|1|1",
                    lease_until=db_in(60),
                )
            )
        gate = threading.Barrier(2)
        completed: list[bool] = []
        threads = [
            threading.Thread(target=_finish, args=(db_url, job_id, k, gate, completed))
            for k in (0, 1)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(completed) == [False, True]
        with session_scope(db_url) as s:
            assert s.get(Job, job_id).status == "done"


def _finish(
    url: str, job_id: int, part: int, gate: threading.Barrier, completed: list[bool]
) -> None:
    """Finish one part in its own transaction, both threads at the same moment."""
    with session_scope(url) as s:
        gate.wait()
        completed.append(finish_part(s, ClaimedPart(job_id, part, 0, 0, None), "w|-|1|1"))


pytest_plugins = ["tests.db_fixtures"]
