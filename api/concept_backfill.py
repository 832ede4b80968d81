"""Concept backfill: turn a new concept into a real tag with a score for every archived asset.

Steps (one job of kind ``backfill``, progress = assets scored of the assets stored):

1. descriptions: the user's, the prompt templates, and optionally the LLM's (cached);
2. encode them with the text encoder into the concept's label bank; store the embeddings;
3. calibrate the concept's threshold on a background sample of the archive (unless the user gave
   one), so the promoted tag outputs assets that stand out, as the retroactive search does;
4. promote the concept to a tag (origin ``concept``);
5. stream every asset's E from the token store through the open-set head and store the scores
   (>= the score floor) in chunks, each in its own transaction, counting progress.

The whole run is a plain blocking function; the API runs it in its background thread.
"""

from __future__ import annotations

import logging

import numpy as np

from api.services import Services
from indexer.db.concept_repo import get_concept, promote_concept, update_concept
from indexer.db.concepts import ConceptStatus
from indexer.db.job_repo import add_job_progress, update_job
from indexer.db.jobs import JobStatus
from indexer.db.session import session_scope
from indexer.db.tag_repo import write_tag_scores
from ram_pp.concepts import LlmDescriber, encode_concepts, make_concept

log = logging.getLogger(__name__)

CHUNK = 1024  # assets scored and written per transaction


def backfill_concept(
    services: Services,
    concept_id: int,
    job_id: int,
    *,
    generate: bool = False,
    fixed_threshold: bool = False,
) -> None:
    """Describe, encode, calibrate, promote and score one concept over the whole archive.

    Args:
        services: the app's services (model, text encoder, token store, database).
        concept_id: the concept (created as ``draft``).
        job_id: the ``backfill`` job to report into.
        generate: ask the configured LLM for more descriptions.
        fixed_threshold: keep the concept's threshold (the user gave one) instead of calibrating.

    Errors mark the job and the concept failed with the reason, then re-raise.
    """
    settings = services.settings
    url = settings.database_url
    try:
        with session_scope(url) as session:
            concept = get_concept(session, concept_id)
            if concept is None:
                raise LookupError(f"concept {concept_id} was deleted before its backfill ran")
            name, descriptions = concept.name, list(concept.descriptions)
            update_job(session, job_id, status=JobStatus.RUNNING)
        llm = None
        if generate:
            llm = LlmDescriber(
                settings.llm.url,
                settings.llm.model,
                settings.llm.api_key,
                settings.llm.timeout_s,
                cache_dir=settings.home / "llm-cache",
            )
        # Prompt templates stand in for descriptions only when there are none (as RAM++ scores
        # open-set concepts by their descriptions alone): "a photo of a navy." says little that
        # "navy, a dark deep blue colour" does not, and dilutes it.
        templates = not descriptions and llm is None
        full = make_concept(name, descriptions, use_templates=templates, llm=llm)
        encoder = services.text_encoder()
        with services.metrics.time_model("encode_text"):
            bank = encode_concepts([full], encoder)
        embeddings = bank.embeddings[0][: len(full.descriptions)].float().numpy()
        store = services.token_store()
        threshold = None
        if not fixed_threshold and store is not None and len(store):
            threshold = services.searcher().calibrate(bank)[0].threshold
        with session_scope(url) as session:
            update_concept(
                session,
                concept_id,
                descriptions=list(full.descriptions),
                embeddings=embeddings,
                text_encoder=getattr(encoder, "name", None),
                threshold=threshold,
            )
            tag_id = promote_concept(session, concept_id).id
            total = len(store) if store is not None else 0
            update_job(session, job_id, total=total)
        if store is not None and total:
            _score_archive(services, bank, tag_id, job_id)
        with session_scope(url) as session:
            update_job(session, job_id, status=JobStatus.DONE)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        log.warning("backfill of concept %s failed: %s", concept_id, reason)
        with session_scope(url) as session:
            update_job(session, job_id, status=JobStatus.FAILED, error=reason)
            if get_concept(session, concept_id) is not None:
                update_concept(session, concept_id, status=ConceptStatus.FAILED, error=reason)
        raise


def _score_archive(services: Services, bank, tag_id: int, job_id: int) -> None:  # noqa: ANN001
    """Exact open-set scores of every stored asset, written chunk by chunk."""
    from ram_pp.openset import OpenSetScorer

    store = services.token_store()
    assert store is not None
    scorer = OpenSetScorer(services.loaded_model().model)
    url = services.settings.database_url
    floor = services.settings.index.score_floor
    for ids, embeds in store.iter_chunks(CHUNK):
        with services.metrics.time_model("backfill_chunk"):
            logits = scorer.logits(embeds, bank)[:, 0].numpy().astype(np.float64)
        probs = 1.0 / (1.0 + np.exp(-logits))
        with session_scope(url) as session:
            existing = _existing(session, ids)
            keep = np.isin(ids, existing)  # assets deleted meanwhile have no row to score
            write_tag_scores(
                session, tag_id, ids[keep], probs[keep].astype(np.float32), score_floor=floor
            )
            add_job_progress(session, job_id, done=int(keep.sum()), failed=int((~keep).sum()))


def score_new_assets(services: Services, asset_ids: list[int]) -> int:
    """Score freshly ingested assets for every concept already promoted to a tag, so a concept
    keeps covering the archive after its backfill (the processor calls this after each batch).

    Returns:
        Score rows stored.
    """
    from indexer.concept_scores import score_promoted_concepts

    if not asset_ids:
        return 0
    with services.metrics.time_model("score_new_assets"):
        return score_promoted_concepts(
            services.settings.database_url,
            services.model_id(),
            services.loaded_model().model,
            services.token_store(),
            asset_ids,
            services.settings.index.score_floor,
        )


def _existing(session, ids: np.ndarray) -> np.ndarray:  # noqa: ANN001
    import sqlalchemy as sa

    from indexer.db.assets import Asset

    rows = session.execute(sa.select(Asset.id).where(Asset.id.in_(ids.tolist()))).scalars()
    return np.fromiter((int(i) for i in rows), np.int64)
