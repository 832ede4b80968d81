"""Request and response bodies of the HTTP API (kept apart from the ORM models)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
)

from api.auth import Scope

# Text from clients never holds NUL: PostgreSQL text cannot store it, and no name needs it.
NO_NUL = r"^[^\x00]*$"


TagName = Annotated[str, StringConstraints(max_length=256, pattern=NO_NUL)]
Cursor = Annotated[str, StringConstraints(max_length=2000, pattern=NO_NUL)]
QueryText = Annotated[str, StringConstraints(max_length=500, pattern=NO_NUL)]
MimeType = Annotated[str, StringConstraints(max_length=100, pattern=NO_NUL)]
Source = Annotated[str, StringConstraints(min_length=1, max_length=4096, pattern=NO_NUL)]
ConceptName = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=NO_NUL)]
Description = Annotated[str, StringConstraints(min_length=1, max_length=500, pattern=NO_NUL)]
ChineseName = Annotated[str, StringConstraints(max_length=200, pattern=NO_NUL)]


def _flush_tiny(value: float) -> float:
    # PostgreSQL REAL columns raise "underflow" below about 1e-37; such a score is zero anyway.
    return 0.0 if abs(value) < 1e-30 else value


# A probability as stored in REAL columns (scores, thresholds).
Probability = Annotated[float, Field(ge=0.0, le=1.0), AfterValidator(_flush_tiny)]


def _not_a_bool(value: Any) -> Any:
    # pydantic's lax mode reads true as 1; an id or a count that arrives as a boolean is a
    # client's mistake, not asset 1.
    if isinstance(value, bool):
        raise ValueError("a number is expected, not a boolean")
    return value


# An asset id (assets.id is a BIGINT).
AssetIdValue = Annotated[int, BeforeValidator(_not_a_bool), Field(ge=1, le=2**63 - 1)]


class Health(BaseModel):
    status: Literal["ok"]


class CheckOut(BaseModel):
    ok: bool
    detail: str


class ModelOut(BaseModel):
    """The model this service runs, as people are told about it."""

    name: str = Field(description="ramdex-demo, a registered model name or a checkpoint file name")
    id: str | None = Field(
        description="stored id of the weights (assets' model), null when not on this machine"
    )
    digest: str | None = Field(description="first 12 hex digits of the weights' sha256")
    is_demo: bool = Field(description="the bundled demo model: synthetic shapes, not photographs")
    num_tags: int | None
    has_chinese: bool = Field(description="its tags have Chinese names")
    notice: str | None = Field(description="what to know about it (set for the demo model)")


class Ready(BaseModel):
    status: Literal["ok"]
    checks: dict[str, CheckOut]
    model: ModelOut | None = Field(default=None, description="the model that tags and searches")


class Me(BaseModel):
    key_id: str | None = Field(description="public id of the key (null when auth is off)")
    name: str
    scopes: list[Scope]
    collection_ids: list[int] | None = Field(
        default=None, description="the collections the key is limited to (null: all of them)"
    )


# ---------- jobs ----------
class JobOut(BaseModel):
    """A long-running job and its progress: ``done + failed`` of ``total`` items."""

    id: int
    kind: str
    status: str
    total: int
    done: int
    failed: int
    error: str | None
    created_at: datetime | None
    updated_at: datetime | None
    rate_per_s: float | None = Field(description="items per second so far")
    eta_s: float | None = Field(description="seconds left at that rate")
    params: dict[str, Any] = Field(
        description="what the job was given, plus duplicates and failures with reasons"
    )
    parts: dict[str, int] | None = Field(
        default=None,
        description="a concept backfill: its parts (shared by the model workers) by status",
    )
    collection_id: int | None = Field(
        default=None, description="the collection the job works for (null: global)"
    )


class JobPage(BaseModel):
    items: list[JobOut]
    next_cursor: str | None = None


# ---------- tags ----------
class TagOut(BaseModel):
    """A tag of the configured model's vocabulary (built-in or a promoted concept)."""

    id: int
    name: str = Field(description="English name")
    name_zh: str | None = Field(description="Chinese name")
    origin: Literal["builtin", "concept"]
    threshold: float = Field(
        description="effective threshold: the override if set, else the model's"
    )
    model_threshold: float
    threshold_override: float | None
    parents: list[str] = Field(
        default_factory=list,
        description="broader concepts in the taxonomy, nearest first (docs/taxonomy.md)",
    )
    aliases: list[str] = Field(
        default_factory=list,
        description="other names of the tag's concept in the taxonomy, any language",
    )


class TagPage(BaseModel):
    items: list[TagOut]
    next_cursor: str | None = None


class ThresholdUpdate(BaseModel):
    """Set or clear (null) a tag's threshold override."""

    model_config = ConfigDict(extra="forbid")

    threshold_override: Probability | None


# ---------- assets ----------
class AssetTagOut(BaseModel):
    """One stored tag score of an asset."""

    id: int
    name: str
    name_zh: str | None
    score: float
    threshold: float
    above_threshold: bool = Field(description="the model outputs this tag (score > threshold)")


class SourceOut(BaseModel):
    uri: str
    first_seen: datetime
    last_seen: datetime


class CompanionOut(BaseModel):
    """A file recorded with the asset without being one (docs/media.md): the camera JPEG of a
    RAW+JPEG pair."""

    uri: str
    role: str = Field(description="what the file is to the asset: jpeg (of a RAW+JPEG pair)")
    mime: str | None
    bytes: int | None
    sha256: str | None
    first_seen: datetime
    last_seen: datetime


class StoredFrameOut(BaseModel):
    """A kept frame of a video or animation (docs/media.md)."""

    idx: int = Field(description="its place in the asset (frame key slot)")
    timestamp_s: float = Field(description="where it is in the file, seconds")


class AssetSummary(BaseModel):
    """What a result grid needs about an asset."""

    id: int
    status: str
    mime: str | None
    width: int | None
    height: int | None
    created_at: datetime
    thumbnail_url: str


class AssetOut(AssetSummary):
    """One asset with everything known about it."""

    sha256: str
    bytes: int | None
    error: str | None
    model: str | None = Field(description="name of the model that scored it (ramdex-demo, ...)")
    model_id: str | None = Field(
        default=None, description="stored id of those weights (name@digest of the file)"
    )
    updated_at: datetime
    original_url: str
    collections: list[int] = Field(
        default_factory=list, description="ids of the collections it is in (those the key sees)"
    )
    sources: list[SourceOut]
    companions: list[CompanionOut] = Field(
        default_factory=list,
        description="files grouped with this asset: the camera JPEG of a RAW+JPEG pair",
    )
    kind: str | None = Field(
        default=None, description="video, animated or raw (null: a still image)"
    )
    duration_s: float | None = Field(default=None, description="a video's length, seconds")
    codec: str | None = Field(default=None, description="a video's codec (h264, vp9, ...)")
    frames: list[StoredFrameOut] = Field(
        default_factory=list, description="the frames scored, in time order (videos, animations)"
    )
    tags: list[AssetTagOut] = Field(description="every stored score, best first")


class AssetPage(BaseModel):
    items: list[AssetSummary]
    next_cursor: str | None = None


class Accepted(BaseModel):
    """An accepted ingest: the job to follow and, when known already, the asset ids."""

    job: JobOut
    asset_ids: list[int] = Field(default_factory=list)
    duplicates: list[int] = Field(
        default_factory=list, description="asset ids that already existed (same bytes)"
    )


class RegisterRequest(BaseModel):
    """Register files on the server or URLs for ingest (admin only)."""

    model_config = ConfigDict(extra="forbid")

    urls: list[Source] = Field(default_factory=list, max_length=1000)
    paths: list[Source] = Field(default_factory=list, max_length=1000)
    collection: int | None = Field(
        default=None,
        ge=1,
        le=2**31 - 1,
        description="the collection the assets go to (a collection-limited key: one of its own)",
    )


# ---------- search ----------
class SearchRequest(BaseModel):
    """A search. Every part is optional; parts combine with AND.

    ``text`` is scored as an open-set concept (RAM++ over stored image embeddings), ``similar_to``
    ranks by image similarity; tag terms filter (and rank when nothing else does).
    """

    model_config = ConfigDict(extra="forbid")

    text: QueryText | None = Field(default=None, description="free-text concept")
    descriptions: list[QueryText] = Field(
        default_factory=list,
        max_length=20,
        description="how the text concept looks (default: prompt templates with the text)",
    )
    all: list[TagName] = Field(default_factory=list, max_length=50, description="tags required")
    any: list[TagName] = Field(default_factory=list, max_length=50, description="at least one of")
    none: list[TagName] = Field(default_factory=list, max_length=50, description="tags excluded")
    min_score: Probability | None = Field(default=None, description="instead of thresholds")
    mime: list[MimeType] = Field(
        default_factory=list, max_length=20, description="image/png, image/*"
    )
    created_after: datetime | None = None
    created_before: datetime | None = None
    sources: list[Literal["model", "concept", "manual", "embedded"]] = Field(
        default_factory=list,
        max_length=4,
        description="tag provenances that count in tag terms (default all: manual, embedded "
        "and accepted tags always match, rejected never)",
    )
    narrower: bool = Field(
        default=False,
        description="tag terms also match narrower concepts of the taxonomy (animal: dogs)",
    )
    similar_to: AssetIdValue | None = Field(default=None, description="asset id")
    collection: list[Annotated[int, Field(ge=1, le=2**31 - 1)]] = Field(
        default_factory=list,
        max_length=50,
        description="only assets of these collections (ids; default: every one the key sees)",
    )
    sort: Literal["relevance", "date"] = "relevance"
    limit: Annotated[int, BeforeValidator(_not_a_bool)] = Field(default=40, ge=1, le=200)
    cursor: Cursor | None = None


class Reason(BaseModel):
    """Why an asset matched: a tag and its score, the concept score, or the similarity."""

    kind: Literal["tag", "concept", "similar"]
    name: str
    name_zh: str | None = None
    score: float
    above_threshold: bool | None = Field(
        default=None,
        description="concept reasons: whether the score passes the concept's threshold",
    )
    sources: list[str] | None = Field(
        default=None,
        description="tag reasons: what made the tag match (model, concept, manual, embedded)",
    )
    review: Literal["accepted", "rejected"] | None = Field(
        default=None, description="tag reasons: a curator's decision on the model tag"
    )
    expanded_from: str | None = Field(
        default=None,
        description="tag reasons: the query term the taxonomy expanded to this tag (a synonym "
        "or a narrower concept)",
    )


class FrameOut(BaseModel):
    timestamp_s: float = Field(description="where in the video the matching frame is, seconds")
    score: float = Field(description="the frame's score for the query")


class SearchHitOut(BaseModel):
    asset: AssetSummary
    score: float | None = Field(description="ranking score (null when only filters apply)")
    reasons: list[Reason]
    frames: list[FrameOut] = Field(
        default_factory=list,
        description="videos and animations: the moments that matched, best first (docs/media.md)",
    )


class SearchPageOut(BaseModel):
    hits: list[SearchHitOut]
    next_cursor: str | None
    model: str | None = Field(default=None, description="name of the model that scored the hits")
    pending_reindex: int = Field(
        default=0, description="assets scored by another model, not searchable until re-indexed"
    )
    concept_threshold: float | None = Field(
        default=None,
        description="calibrated threshold of the free-text concept, when one was given",
    )


# ---------- concepts ----------
class ConceptCreate(BaseModel):
    """A new concept: its name and, optionally, descriptions (else templates, or the LLM)."""

    model_config = ConfigDict(extra="forbid")

    name: ConceptName
    descriptions: list[Description] | None = Field(default=None, max_length=200)
    generate: bool = Field(default=False, description="ask the configured LLM for descriptions")
    threshold: Probability | None = None
    name_zh: ChineseName | None = None
    collection: int | None = Field(
        default=None,
        ge=1,
        le=2**31 - 1,
        description="the collection it belongs to (default: global; a key limited to one "
        "collection: that one)",
    )


class ConceptOut(BaseModel):
    id: int
    name: str
    status: str
    descriptions: list[str]
    threshold: float
    tag_id: int | None
    error: str | None
    created_at: datetime
    collection_id: int | None = Field(
        default=None, description="the collection it belongs to (null: global)"
    )


class ConceptPage(BaseModel):
    items: list[ConceptOut]


class ConceptCreated(BaseModel):
    concept: ConceptOut
    job: JobOut = Field(description="the backfill that scores every existing asset")
