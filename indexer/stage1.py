"""Stage 1 of retroactive concept search: the shortlist of assets worth exact scores.

A concept (one row group of a label bank) becomes one or more query vectors in the space of the
stored unit-norm image embeddings c; a candidate source (the FAISS index) returns the nearest
assets. :func:`shortlist` returns at most ``k`` distinct asset ids that the token store holds,
best first. Today the query is the plain mean of the concept's descriptions
(:func:`ram_pp.openset.concept_vectors`).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from indexer.token_store import TokenStore
from ram_pp.labels import LabelBank
from ram_pp.openset import concept_vectors


class CandidateSource(Protocol):
    """Anything that finds the assets whose stored image embedding c is nearest to a query."""

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Inner-product search: (scores, ids) for a (q, d) float32 query; ids < 0 = no hit."""
        ...


def shortlist(
    concept: LabelBank, candidates: CandidateSource, store: TokenStore, k: int
) -> np.ndarray:
    """Up to ``k`` distinct stored asset ids for one concept (a one-tag label bank), best first."""
    if concept.num_tags != 1:
        raise ValueError(f"shortlist takes one concept at a time, got {concept.num_tags}")
    vector = concept_vectors(concept).numpy()[0]
    _, ids = candidates.search(vector.reshape(1, -1).astype(np.float32), k)
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    ids = ids[ids >= 0]
    # Drop duplicates (keep first) and assets whose E is not (or no longer) stored.
    _, first = np.unique(ids, return_index=True)
    ids = ids[np.sort(first)]
    return ids[store.has(ids)]
