"""Relevance rankings: assets ordered by a free-text concept's probability or by image
similarity, best first, at most :data:`RECALL` of them.

- Concept: RAM++'s open-set head scores the concept over the stored token embeddings E (FAISS
  shortlist, then exact scores; every asset when the archive is smaller than the shortlist).
- Similar: FAISS over the stored image embeddings c, by cosine similarity.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from indexer.db.assets import Asset
from indexer.db.frame_repo import frame_counts
from indexer.db.vectors import decode_vector
from indexer.frame_keys import asset_of, is_frame_key
from indexer.search.errors import (
    AssetNotFoundError,
    BadImageError,
    InvalidQueryError,
    NotIndexedError,
)
from indexer.search.request import QueryImage
from indexer.search.timing import CALIBRATE, ENCODE, SIMILAR, STAGE1, STAGE2, Phases

if TYPE_CHECKING:
    from indexer.archive import Archive
    from indexer.retroactive import Mode
    from indexer.stage1 import CandidateSource
    from ram_pp.preprocess import DecodeOptions

RECALL = 1000  # relevance-ranked assets recalled for concept and similar search
CONCEPT_THRESHOLD = 0.5  # upstream RAM++ threshold for open-set concepts (an empty archive's)


@dataclass(frozen=True)
class Ranked:
    """Assets ranked by one relevance signal, best first.

    Attributes:
        ids, scores: the assets and their probabilities or similarities, aligned.
        kind: ``concept`` or ``similar``.
        name: the concept's name or what the assets are similar to.
        threshold: the concept's calibrated threshold (concepts only).
    """

    ids: np.ndarray
    scores: np.ndarray
    kind: str
    name: str
    threshold: float | None = None

    def keep(self, mask: np.ndarray) -> Ranked:
        """The same ranking restricted to ``mask`` (order kept)."""
        return Ranked(self.ids[mask], self.scores[mask], self.kind, self.name, self.threshold)


def concept_ranking(
    archive: Archive,
    text: str,
    descriptions: Sequence[str] = (),
    phases: Phases | None = None,
    candidates: CandidateSource | None = None,
) -> Ranked:
    """Assets ranked by the free-text concept's RAM++ probability (two-stage search).

    The concept is ``text`` described by ``descriptions``, or by the prompt templates when
    there are none (as a concept's backfill builds it). ``phases`` gets the time of the text
    encoding, the calibration and both stages. ``candidates``: a stage-1 source restricted to a
    filter (:class:`indexer.search.filtered.FilteredCandidates`; two-stage then always).

    Raises:
        InvalidQueryError: the text makes no concept (blank once cleaned).
        TextEncoderNotAvailableError, ModelNotAvailableError: the model cannot run here.
    """
    from ram_pp.concepts import encode_concepts, make_concept

    store = archive.token_store()
    if store is None or len(store) == 0:
        empty = np.zeros(0, np.int64), np.zeros(0, np.float32)
        return Ranked(*empty, "concept", text, CONCEPT_THRESHOLD)
    try:
        concept = make_concept(text, descriptions, use_templates=not descriptions)
    except ValueError as exc:
        raise InvalidQueryError(str(exc)) from exc
    phases = phases if phases is not None else Phases()
    with archive.timer("encode_text"), phases.phase(ENCODE):
        bank = archive.cache("banks").get_or_build(
            "|".join((concept.name, *concept.descriptions)),
            lambda: encode_concepts([concept], archive.text_encoder()),
        )
    searcher = archive.searcher()
    mode: Mode = "exhaustive" if len(store) <= searcher.shortlist else "two_stage"
    if candidates is not None:
        from indexer.search.filtered import filtered_searcher

        searcher, mode = filtered_searcher(searcher, candidates), "two_stage"
    with archive.timer(f"concept_{mode}"):
        result = searcher.search(bank, names=[concept.name], top_k=RECALL, mode=mode)[0]
    timings = result.timings  # the searcher's own split of its work
    for name, key in ((CALIBRATE, "calibration"), (STAGE1, "stage1"), (STAGE2, "stage2")):
        if key in timings:
            phases.add(name, timings[key])
    return Ranked(result.ids, result.scores, "concept", concept.name, result.threshold)


def similar_ranking(
    archive: Archive,
    vector: np.ndarray,
    name: str,
    exclude: int | None = None,
    phases: Phases | None = None,
    session: Session | None = None,
) -> Ranked:
    """Assets ranked by cosine similarity of their image embedding to ``vector`` (``exclude``,
    the query asset itself, left out); ``phases`` gets the FAISS time.

    On an IVF-PQ index (archives past ``index.exact_max_size``) the codes' scores are coarse:
    the 100 nearest of a query often sit in one tight cluster whose members 32-64-byte codes
    cannot order (recall@100 0.30 at 1M, docs/indexes.md). With ``session`` the recalled
    candidates are then re-scored exactly from the c the database holds, so the order of what
    the index recalled is exact.
    """
    from indexer.faiss_index import IVFPQ
    from indexer.search.filtered import database_reader, exact_scores

    index = archive.vector_index()
    phases = phases if phases is not None else Phases()
    with archive.timer("similar_search"), phases.phase(SIMILAR):
        query = np.asarray(vector, np.float32).reshape(-1)
        # The query video's own frames are as near as it gets: asked for on top of the recall
        # and left out, so they do not crowd other assets out.
        own_frames = (
            frame_counts(session, [exclude]).get(exclude, 0)
            if exclude is not None and session is not None
            else 0
        )
        all_scores, all_ids = index.search(query.reshape(1, -1), RECALL + 1 + own_frames)
        ids, scores = all_ids[0], all_scores[0].astype(np.float32)
        keep = (ids != (exclude if exclude is not None else -1)) & (ids >= 0)
        if exclude is not None:
            keep &= ~(is_frame_key(ids) & (asset_of(ids) == exclude))
        ids, scores = ids[keep], scores[keep]
        if index.kind == IVFPQ and session is not None and ids.size:
            read = database_reader(session, index.model_name or archive.model_id())
            scores, ids = exact_scores(query, ids.astype(np.int64), read, RECALL)
            phases.notes["rescored"] = "exact"
    return Ranked(ids[:RECALL].astype(np.int64), scores[:RECALL], "similar", name)


def asset_vector(session: Session, asset_id: int) -> np.ndarray:
    """The stored image embedding c of an asset.

    Raises:
        AssetNotFoundError: the asset does not exist.
        NotIndexedError: it has no embedding yet.
    """
    row = session.execute(
        sa.select(Asset.embedding, Asset.embedding_dim, Asset.status).where(Asset.id == asset_id)
    ).one_or_none()
    if row is None:
        raise AssetNotFoundError(f"asset {asset_id} does not exist")
    if row.embedding is None or not row.embedding_dim:
        raise NotIndexedError(f"asset {asset_id} has no image embedding yet (status {row.status})")
    return decode_vector(row.embedding, row.embedding_dim)


def query_image(archive: Archive, data: bytes, options: DecodeOptions | None = None) -> QueryImage:
    """The unit-norm image embedding c of a query image, by the archive's image model.

    Args:
        archive: whose model encodes the image.
        data: the image file's bytes.
        options: how to decode it (default: as ingest decodes, EXIF orientation and pixel limit
            from the settings).

    Raises:
        BadImageError: empty, undecodable or too large.
        ModelNotAvailableError: the model is not on this machine.
    """
    from ram_pp.preprocess import DecodeOptions, ImageDecodeError

    if not data:
        raise BadImageError("the query image is empty")
    settings = archive.settings
    if options is None:
        options = DecodeOptions(
            apply_exif_orientation=settings.model.apply_exif_orientation,
            max_pixels=settings.ingest.max_pixels,
        )
    engine = archive.tagging_engine()
    try:
        pixels = engine.preprocess.load(data, options)
    except ImageDecodeError as exc:
        raise BadImageError(f"the query image cannot be used: {exc}") from exc
    with archive.timer("encode_image"):
        tokens = engine.run(pixels.unsqueeze(0)).tokens[0, 0].cpu().numpy()
    vector = (tokens / max(float(np.linalg.norm(tokens)), 1e-12)).astype(np.float32)
    return QueryImage(vector, hashlib.sha256(data).hexdigest())
