"""ramdex relational storage: models, sessions and data-access functions.

Import from here::

    from indexer import db

    with db.session_scope() as session:
        ref = db.get_or_create_asset_by_sha(session, sha256=digest, size_bytes=n)
        db.add_source(session, asset_id=ref.id, uri=path)

The schema is built by the Alembic migrations (``indexer.migrate.upgrade_database``), never by
``create_all``.
"""

# Every model module is imported here so Base.metadata is complete (migrations compare it).
from indexer.db.api_keys import ApiKey
from indexer.db.asset_repo import (
    AssetRef,
    AssetResult,
    DeletedAsset,
    WriteSummary,
    add_source,
    assets_scored_by_other_model,
    count_assets_scored_by_other_model,
    count_by_status,
    delete_asset,
    get_asset,
    get_asset_by_sha,
    get_or_create_asset_by_sha,
    list_sources,
    mark_failed,
    set_status,
    write_asset_results,
)
from indexer.db.assets import MAX_URI_BYTES, Asset, AssetSource, AssetStatus
from indexer.db.backfill_parts import BackfillPart  # noqa: F401 - a table of the schema
from indexer.db.base import Base
from indexer.db.collections import (  # noqa: F401 - tables of the schema
    ApiKeyCollection,
    AssetCollection,
    Collection,
)
from indexer.db.companions import AssetCompanion  # noqa: F401 - a table of the schema
from indexer.db.concept_repo import (
    concept_embeddings,
    create_concept,
    delete_concept,
    get_concept,
    get_concept_by_name,
    list_concepts,
    promote_concept,
    update_concept,
)
from indexer.db.concepts import Concept, ConceptStatus
from indexer.db.embedding_repo import (
    Watermark,
    embedding_ids,
    embedding_watermark,
    get_embeddings,
    ids_updated_since,
    iter_embeddings,
)
from indexer.db.errors import DuplicateError, NotFoundError, UnknownTagError
from indexer.db.events import (  # noqa: F401 - tables of the schema
    Event,
    Webhook,
    WebhookDelivery,
    WebhookPendingEvent,
)
from indexer.db.frames import AssetFrame  # noqa: F401 - a table of the schema
from indexer.db.job_repo import add_job_progress, create_job, get_job, list_jobs, update_job
from indexer.db.jobs import Job, JobKind, JobStatus
from indexer.db.labels import AssetLabel, LabelChange  # noqa: F401 - tables of the schema
from indexer.db.leases import ServiceLease  # noqa: F401 - its table is part of the schema
from indexer.db.manifests import Manifest, ManifestRow  # noqa: F401 - tables of the schema
from indexer.db.search import MatchedTag, SearchHit, SearchPage, search_by_tags
from indexer.db.session import (
    create_engine_for,
    dispose_engines,
    get_engine,
    get_sessionmaker,
    session_scope,
)
from indexer.db.sources import Source, SourceObject  # noqa: F401 - tables of the schema
from indexer.db.tag_repo import (
    ScoredTag,
    ensure_vocabulary,
    get_asset_tags,
    get_tag,
    list_tags,
    resolve_tags,
    set_threshold_override,
    write_tag_scores,
)
from indexer.db.tags import AssetTag, Tag, TagOrigin
from indexer.db.taxonomy import TaxonomyBroader, TaxonomyTerm  # noqa: F401 - tables of the schema
from indexer.db.vectors import decode_vector, decode_vectors, encode_vectors
from indexer.db.video_parts import VideoPart  # noqa: F401 - a table of the schema

__all__ = [
    "ApiKey",
    "MAX_URI_BYTES",
    "Asset",
    "AssetRef",
    "AssetResult",
    "AssetSource",
    "AssetStatus",
    "AssetTag",
    "Base",
    "Concept",
    "ConceptStatus",
    "DeletedAsset",
    "DuplicateError",
    "Job",
    "JobKind",
    "JobStatus",
    "MatchedTag",
    "NotFoundError",
    "ScoredTag",
    "SearchHit",
    "SearchPage",
    "Tag",
    "TagOrigin",
    "UnknownTagError",
    "Watermark",
    "WriteSummary",
    "add_job_progress",
    "add_source",
    "assets_scored_by_other_model",
    "concept_embeddings",
    "count_assets_scored_by_other_model",
    "count_by_status",
    "create_concept",
    "create_engine_for",
    "create_job",
    "decode_vector",
    "decode_vectors",
    "delete_asset",
    "delete_concept",
    "dispose_engines",
    "embedding_ids",
    "embedding_watermark",
    "encode_vectors",
    "ensure_vocabulary",
    "get_asset",
    "get_asset_by_sha",
    "get_asset_tags",
    "get_concept",
    "get_concept_by_name",
    "get_embeddings",
    "get_engine",
    "get_job",
    "get_or_create_asset_by_sha",
    "get_sessionmaker",
    "get_tag",
    "ids_updated_since",
    "iter_embeddings",
    "list_concepts",
    "list_jobs",
    "list_sources",
    "list_tags",
    "mark_failed",
    "promote_concept",
    "resolve_tags",
    "search_by_tags",
    "session_scope",
    "set_status",
    "set_threshold_override",
    "update_concept",
    "update_job",
    "write_asset_results",
    "write_tag_scores",
]
