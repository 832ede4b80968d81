"""Score newly ingested assets for every concept already promoted to a tag.

A promoted concept is a permanent tag: its backfill scored the archive as it was, and every asset
ingested later must be scored too, whichever process ingested it (the API's embedded processor or
a Celery worker). Both call :func:`score_promoted_concepts` after each committed batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from indexer.db.concept_repo import concept_embeddings, list_concepts
from indexer.db.concepts import ConceptStatus
from indexer.db.session import session_scope
from indexer.db.tag_repo import write_tag_scores
from indexer.token_store import TokenStore
from ram_pp.labels import LabelBank
from ram_pp.model import RamPlus
from ram_pp.openset import OpenSetScorer


def score_promoted_concepts(
    database_url: str,
    model_id: str,
    model: RamPlus,
    store: TokenStore | None,
    asset_ids: Sequence[int],
    score_floor: float,
) -> int:
    """Store each promoted concept's probability for ``asset_ids`` (those >= ``score_floor``).

    Args:
        database_url: the archive's database.
        model_id: the model whose concepts apply (the one that scored the assets).
        model: that model; only its open-set head runs, over the stored image embeddings E.
        store: the model's token store holding the assets' E (None: nothing ingested yet).
        asset_ids: freshly committed assets; those without stored E are skipped.
        score_floor: probabilities below it are not stored (as for built-in tags).

    Returns:
        Score rows stored.
    """
    if not asset_ids or store is None:
        return 0
    with session_scope(database_url) as session:
        promoted = [
            (c.tag_id, concept_embeddings(c))
            for c in list_concepts(session, model_id, status=ConceptStatus.PROMOTED)
            if c.tag_id is not None and c.embeddings is not None
        ]
    if not promoted:
        return 0
    ids = np.asarray(asset_ids, np.int64)
    ids = ids[store.has(ids)]
    if not len(ids):
        return 0
    bank = LabelBank.from_ragged([torch.from_numpy(rows) for _, rows in promoted])
    logits = OpenSetScorer(model).logits(store.get(ids), bank).numpy().astype(np.float64)
    probs = (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
    stored = 0
    with session_scope(database_url) as session:
        for k, (tag_id, _) in enumerate(promoted):
            stored += write_tag_scores(session, tag_id, ids, probs[:, k], score_floor=score_floor)
    return stored
