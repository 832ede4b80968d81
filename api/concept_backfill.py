"""Concept work the API process runs: a concept's backfill in the embedded mode (with a broker,
a model worker runs it: ``indexer.tasks.backfill_concept_task``; the steps are in
:mod:`indexer.concept_backfill`), and scoring new uploads for promoted concepts after each
embedded batch."""

from __future__ import annotations

from api.services import Services


def backfill_concept(
    services: Services,
    concept_id: int,
    job_id: int,
    *,
    generate: bool = False,
    fixed_threshold: bool = False,
) -> None:
    """Run :func:`indexer.concept_backfill.backfill_concept` in this process, with the app's
    model, text encoder, token store, calibration and metrics (the embedded mode)."""
    from indexer.concept_backfill import BackfillContext
    from indexer.concept_backfill import backfill_concept as run

    context = BackfillContext(
        settings=services.settings,
        model=services.loaded_model().model,
        text_encoder=services.text_encoder,
        token_store=services.token_store,
        calibrate=lambda bank: services.searcher().calibrate(bank)[0].threshold,
        timer=services.metrics.time_model,
    )
    run(context, concept_id, job_id, generate=generate, fixed_threshold=fixed_threshold)


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
