"""Synchronous tagging of images that are not (necessarily) in the archive: ``POST /tag``.

:class:`Tagger` decodes image bytes as a query image is decoded, runs the archive's image model
through a :class:`~indexer.microbatch.MicroBatcher` (one forward for the images of many concurrent
requests), scores named concepts with the open-set head over each image's E, and selects tags
exactly as ``ramdex tag`` does (:meth:`ram_pp.inference.TaggingEngine.select`), with stored
concepts as extra tags. It uses the archive's lazily loaded model and engine, so the server's
warm-up covers it; one per archive (:func:`tagger_for`), closed with the archive.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from indexer.microbatch import MicroBatcher

if TYPE_CHECKING:
    from indexer.archive import Archive
    from indexer.db.concepts import Concept
    from ram_pp.inference import ImageResult, TaggingEngine
    from ram_pp.openset import OpenSetScorer
    from ram_pp.preprocess import DecodeOptions

_PART = "tagger"


@dataclass(frozen=True)
class PreparedImage:
    """One decoded, pre-processed image waiting for the model."""

    name: str
    pixels: torch.Tensor  # (3, S, S) float32, the model's input
    width: int  # of the original, after EXIF orientation
    height: int


@dataclass(frozen=True)
class ConceptSpec:
    """A stored concept as ``POST /tag`` scores it: id, name, threshold and label bank rows."""

    id: int
    name: str
    threshold: float
    rows: np.ndarray  # (descriptions, dim) float32, unit-norm


@dataclass(frozen=True)
class Selected:
    """One tag chosen for an image: a built-in tag (``source`` model) or a concept."""

    name: str
    name_zh: str | None
    probability: float
    threshold: float
    source: str  # "model" | "concept"
    concept_id: int | None = None


def select_tags(
    probabilities: np.ndarray,
    thresholds: np.ndarray,
    *,
    threshold: float | None,
    top_k: int | None,
) -> list[int]:
    """Indices of the tags kept, most probable first: the rule of
    :meth:`ram_pp.inference.TaggingEngine.select` over any list of tags with their own
    thresholds (built-in tags followed by concepts).

    One ``threshold`` replaces every tag's own; ``top_k`` alone keeps the k most probable
    whatever their thresholds; both: the k most probable above ``threshold``.
    """
    if threshold is not None:
        keep = probabilities > threshold
    elif top_k is not None:
        keep = np.ones_like(probabilities, dtype=bool)
    else:
        keep = probabilities > thresholds
    index = np.flatnonzero(keep)
    index = index[np.argsort(-probabilities[index], kind="stable")]
    if top_k is not None:
        index = index[:top_k]
    return [int(i) for i in index]


class Tagger:
    """The archive's image model behind a micro-batcher, plus concept scoring and selection.

    Args:
        archive: whose model, engine and settings are used.
        max_batch: images per forward (``api.tag_batch_size``).
        max_wait_s: the longest a first image waits for company (``api.tag_batch_wait_ms``).
        max_queue: images waiting for the model before new ones are refused
            (``api.tag_queue_size``; :class:`~indexer.microbatch.BatcherFull`).
    """

    def __init__(
        self, archive: Archive, *, max_batch: int, max_wait_s: float, max_queue: int
    ) -> None:
        self.archive = archive
        self.engine: TaggingEngine = archive.tagging_engine()
        self.batcher: MicroBatcher[PreparedImage, ImageResult] = MicroBatcher(
            self._forward,
            max_batch=max_batch,
            max_wait_s=max_wait_s,
            max_queue=max_queue,
            name="ramdex-tag-model",
        )
        self._scorer: OpenSetScorer | None = None

    @property
    def image_size(self) -> int:
        """The side of the square the model sees."""
        return self.engine.preprocess.image_size

    def close(self) -> None:
        """Stop the model thread (the archive closes its parts at shutdown)."""
        self.batcher.close()

    # ---------- images ----------
    def prepare(self, data: bytes, name: str, options: DecodeOptions) -> PreparedImage:
        """Decode and pre-process one image as ``ramdex tag`` does (blocking: a worker thread).

        Raises:
            ImageDecodeError: empty, corrupt, truncated, over the pixel limit or not an image.
        """
        from ram_pp.preprocess import decode_image

        decoded = decode_image(data, options, name=name)
        pixels = self.engine.preprocess(decoded.model_rgb())
        return PreparedImage(name, pixels, decoded.width, decoded.height)

    def submit(self, image: PreparedImage) -> Future[ImageResult]:
        """Queue an image for the model; the future gets its :class:`ImageResult`.

        Raises:
            BatcherFull: too many images wait already.
        """
        return self.batcher.submit(image)

    def _forward(self, images: list[PreparedImage]) -> list[ImageResult]:
        """One forward for a batch (the batcher's thread)."""
        from ram_pp.inference import TagSelection

        pixels = torch.stack([im.pixels for im in images])
        with self.archive.timer("tag"):
            return self.engine.results_for_batch(
                pixels,
                [im.name for im in images],
                TagSelection(),
                [(im.width, im.height) for im in images],
            )

    # ---------- concepts ----------
    def concept_spec(self, concept: Concept) -> ConceptSpec:
        """A stored concept's label bank rows: its stored embeddings, or (a draft not encoded
        yet) its descriptions encoded by the text encoder, cached as concept search caches them.

        Raises:
            TextEncoderNotAvailableError: a draft concept and no text encoder here.
        """
        from indexer.db.concept_repo import concept_embeddings

        if concept.embeddings is not None and concept.embedding_dim:
            rows = concept_embeddings(concept)
        else:
            from ram_pp.concepts import encode_concepts, make_concept

            descriptions = tuple(concept.descriptions or ())
            spec = make_concept(concept.name, descriptions, use_templates=not descriptions)
            bank = self.archive.cache("banks").get_or_build(
                "|".join((spec.name, *spec.descriptions)),
                lambda: encode_concepts([spec], self.archive.text_encoder()),
            )
            rows = bank.embeddings[0][: len(spec.descriptions)].float().numpy()
        return ConceptSpec(int(concept.id), concept.name, float(concept.threshold), rows)

    def concept_probabilities(
        self, tokens: np.ndarray, concepts: Sequence[ConceptSpec]
    ) -> np.ndarray:
        """(N, K) probabilities of K concepts for N images' token embeddings E (float16, as a
        token store holds them), by the open-set head in float32, as ingest scores promoted
        concepts (:mod:`indexer.concept_scores`)."""
        from ram_pp.labels import LabelBank

        if not concepts or not len(tokens):
            return np.zeros((len(tokens), len(concepts)), np.float32)
        bank = LabelBank.from_ragged([torch.from_numpy(c.rows) for c in concepts])
        logits = self.scorer().logits(tokens, bank).numpy().astype(np.float64)
        return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)

    def scorer(self) -> OpenSetScorer:
        """The open-set scorer over the engine's model (float32: the exact head)."""
        if self._scorer is None:
            from ram_pp.openset import OpenSetScorer

            self._scorer = OpenSetScorer(self.engine.model, device=self.engine.device)
        return self._scorer

    # ---------- selection ----------
    def select(
        self,
        result: ImageResult,
        concepts: Sequence[ConceptSpec],
        concept_probs: np.ndarray,
        *,
        threshold: float | None,
        top_k: int | None,
        overrides: dict[int, float] | None = None,
    ) -> list[Selected]:
        """The tags kept for one image: built-in tags by the engine's rule, concepts as extra
        tags under the same rule (each with its own threshold unless one is given).

        Args:
            overrides: per-tag thresholds by logit position (the archive's threshold
                overrides, ``PATCH /tags/{id}``); the model's own elsewhere.
        """
        vocab = self.engine.vocabulary
        thresholds = np.asarray(vocab.thresholds, np.float32)
        if overrides:
            thresholds = thresholds.copy()
            for position, value in overrides.items():
                if 0 <= position < len(thresholds):
                    thresholds[position] = value
        probabilities = result.probabilities
        n_model = len(probabilities)
        if concepts:
            probabilities = np.concatenate([probabilities, concept_probs.astype(np.float32)])
            thresholds = np.concatenate(
                [thresholds, np.asarray([c.threshold for c in concepts], np.float32)]
            )
        kept = select_tags(probabilities, thresholds, threshold=threshold, top_k=top_k)
        out: list[Selected] = []
        for i in kept:
            applied = float(threshold if threshold is not None else thresholds[i])
            if i < n_model:
                out.append(
                    Selected(
                        vocab.english[i],
                        vocab.chinese[i] or None,
                        float(probabilities[i]),
                        applied,
                        "model",
                    )
                )
            else:
                c = concepts[i - n_model]
                out.append(
                    Selected(c.name, None, float(probabilities[i]), applied, "concept", c.id)
                )
        return out


def tagger_for(archive: Archive) -> Tagger:
    """The archive's one :class:`Tagger`, built on first use with the ``api.tag_*`` settings
    (it builds the archive's tagging engine, hence loads the model, on that first use)."""
    api = archive.settings.api
    return archive.lazy(
        _PART,
        lambda: Tagger(
            archive,
            max_batch=api.tag_batch_size,
            max_wait_s=api.tag_batch_wait_ms / 1000.0,
            max_queue=api.tag_queue_size,
        ),
    )
