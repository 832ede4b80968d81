"""ramdex settings: one pydantic-settings tree, read from ``RAMDEX_*`` environment variables.

Nested groups use ``__`` as the delimiter, for example ``RAMDEX_DATABASE__URL`` or
``RAMDEX_MODEL__DEVICE``. A ``.env`` file in the working directory is read too. The model package
(``ram_pp``) never reads settings: callers pass it what it needs.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_home() -> Path:
    """Where ramdex keeps its data when nothing else is configured."""
    return Path.home() / ".local" / "share" / "ramdex"


def database_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be ramdex's database, or None when it can (or is empty: the default).

    ramdex runs on PostgreSQL (``postgresql+psycopg://``) and SQLite files (``sqlite:///PATH``);
    this is checked when settings load, so a ``mysql://`` URL is refused before anything runs.
    """
    if not url:
        return None
    scheme, sep, rest = url.partition("://")
    backend = scheme.split("+", 1)[0].lower()
    if not sep or not backend:
        return "not a database URL (scheme://...)"
    if backend not in ("postgresql", "sqlite"):
        return (
            f"unsupported database {backend!r}: ramdex runs on PostgreSQL "
            "(postgresql+psycopg://USER:PASSWORD@HOST/DATABASE) or SQLite (sqlite:///PATH)"
        )
    if backend == "sqlite" and rest in ("", "/", "/:memory:"):
        return "in-memory SQLite is not supported (each connection would see its own database)"
    return None


class DatabaseSettings(BaseModel):
    """Relational store. SQLite file by default; PostgreSQL (psycopg 3) in production."""

    url: str = Field(default="", description="SQLAlchemy URL; empty means a SQLite file in home")
    echo: bool = False
    pool_size: int = 5

    @field_validator("url")
    @classmethod
    def _supported_url(cls, value: str) -> str:
        problem = database_url_problem(value)
        if problem:
            raise ValueError(problem)
        return value


class BrokerSettings(BaseModel):
    """Celery broker. Empty URL means the embedded mode: tasks run in-process, no broker."""

    url: str = Field(default="", description="redis://... or amqp://...; empty = in-process")
    result_backend: str = ""
    model_queue: str = "ramdex.model"
    default_queue: str = "ramdex.default"
    batch_size: int = Field(default=16, ge=1, description="assets per model batch")
    batch_timeout_ms: int = Field(
        default=200, ge=0, description="wait at most this to fill a batch"
    )
    visibility_timeout_s: int = Field(
        default=300,
        ge=1,
        le=43_200,
        description="Redis: seconds before a dead worker's unacknowledged message is delivered "
        "again (keep it above the longest task; a copy delivered while the task still runs is "
        "skipped, the processing lease says who holds the work). A dead worker's assets come back "
        "sooner, through their lease (ingest.lease_s)",
    )


class ModelSettings(BaseModel):
    """Which RAM++ model the service runs, and where."""

    name: str = Field(default="", description="registered config name; empty = the default model")
    checkpoint: Path | None = Field(default=None, description="checkpoint file (.pth/.safetensors)")
    device: str = Field(default="auto", description="auto, cpu, cuda, cuda:N or mps")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    batch_size: int = Field(default=8, ge=1)
    compile: bool = Field(
        default=False, description="torch.compile the model (GPU workers; minutes on a CPU)"
    )
    channels_last: bool = Field(default=False, description="channels-last pixels (GPUs)")
    apply_exif_orientation: bool = True
    fast_decode: bool = Field(default=False, description="JPEG draft (reduced DCT) decoding")
    trust_checkpoint: bool = Field(
        default=False, description="allow full unpickling of checkpoints (only for trusted files)"
    )
    text_encoder: str = Field(default="", description="local path or hub id of the text encoder")
    text_dtype: Literal["float32", "bfloat16"] = Field(
        default="float32",
        description="CLIP text tower's dense layers: float32 (exact) or bfloat16 (CPUs with "
        "native bf16 or GPUs: 1.5-1.6x faster concept encoding, cosine >= 0.999 to float32)",
    )
    cache_dir: Path | None = Field(default=None, description="where downloaded weights are kept")


_S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def parse_token_store_url(url: str) -> tuple[str, str]:
    """``s3://BUCKET[/PREFIX]`` as (bucket, prefix without surrounding slashes).

    Raises:
        ValueError: not an ``s3://`` URL, or the bucket name is not a valid S3 bucket name.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() != "s3":
        raise ValueError(
            "not an object-storage URL: use s3://BUCKET/PREFIX (any S3-compatible server; "
            "its address goes in index.s3.endpoint_url), or leave it unset for the local folder"
        )
    bucket, _, prefix = rest.partition("/")
    if not _S3_BUCKET.match(bucket) or ".." in bucket:
        raise ValueError(
            f"{bucket!r} is not a valid S3 bucket name (3-63 lowercase letters, digits, dots, "
            "hyphens)"
        )
    if prefix.startswith("/") or "//" in prefix:
        raise ValueError("the prefix of an s3:// URL must not contain empty path parts (//)")
    return bucket, prefix.rstrip("/")


class S3Settings(BaseModel):
    """Connection of an S3-compatible token store (``index.token_store_url = s3://...``).

    Credentials are never settings: boto3 reads them from its standard chain (``AWS_ACCESS_KEY_ID``
    / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_PROFILE``, ``~/.aws``, instance or container roles).
    """

    endpoint_url: str | None = Field(
        default=None, description="server address (MinIO, Ceph, ...); unset = AWS S3 itself"
    )
    region: str | None = Field(default=None, description="unset = the AWS config's region")
    cache_dir: Path | None = Field(
        default=None, description="local cache of fetched records; unset = <home>/cache/tokens"
    )
    cache_bytes: int = Field(
        default=16 * 1024**3, ge=0, description="byte budget of that cache (LRU); 0 = no cache"
    )
    max_concurrency: int = Field(default=8, ge=1, le=64, description="parallel range requests")
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=30.0, gt=0)
    single_writer: bool = Field(
        default=False,
        description="commit without If-Match conditional writes, for servers that lack them; "
        "safe only when exactly one process writes the store",
    )


class IndexSettings(BaseModel):
    """FAISS index and token store."""

    exact_max_size: int = Field(default=200_000, description="flat index up to this many vectors")
    ivf_nlist: int = 4096
    pq_m: int = 64
    shortlist: int = Field(default=2000, ge=1, description="stage-1 candidates for concepts")
    token_format: Literal["float16", "int8", "pca128i8", "pca64i8", "pq128", "pq64"] = "float16"
    token_store_url: str | None = Field(
        default=None,
        description="s3://BUCKET/PREFIX: token stores on S3-compatible object storage (one "
        "folder per model under PREFIX); unset = <home>/tokens on local disk",
    )
    s3: S3Settings = Field(default_factory=S3Settings)
    score_floor: float = Field(default=0.2, ge=0.0, le=1.0, description="store scores >= floor")
    backfill_part_assets: int | None = Field(
        default=None,
        ge=1,
        description="concept backfill: assets per part (one task each, shared by every model "
        "worker); default one token-store shard's worth (about 14,000 float16 assets)",
    )
    backfill_chunk_assets: int = Field(
        default=1024, ge=1, description="concept backfill: assets scored per transaction"
    )
    score_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto",
        description="concept search scoring: auto = bfloat16 on CUDA and on CPUs with native "
        "bf16 (AVX512-BF16/AMX), float32 elsewhere; stored tag scores are always float32",
    )

    @field_validator("token_store_url")
    @classmethod
    def _object_store_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        parse_token_store_url(value)
        return value


class IngestSettings(BaseModel):
    """Ingest limits and network safety for URLs."""

    max_bytes: int = Field(default=200 * 1024 * 1024, description="largest accepted file")
    max_pixels: int = Field(default=178_956_970, description="Pillow decompression-bomb limit")
    url_timeout_s: float = 20.0
    url_max_redirects: int = 3
    allow_private_urls: bool = False
    thumbnail_size: int = 320
    read_keywords: bool = Field(
        default=True,
        description="read the IPTC/XMP keywords a file carries into embedded tags (needs "
        "ExifTool; without it ingest warns once and goes on)",
    )
    decode_workers: int = Field(default=0, ge=0, description="0 = one per core")
    lease_s: float = Field(
        default=60.0,
        ge=2.0,
        le=3600.0,
        description="processing lease: a process holding unfinished assets renews it every "
        "third of this; assets whose lease ran out (their process died) are run again",
    )
    reconcile_interval_s: float = Field(
        default=15.0,
        ge=0.5,
        le=3600.0,
        description="broker mode: how often one worker of the cluster re-dispatches lost work "
        "(expired leases, pending assets whose message is gone) and re-syncs a stale index",
    )
    stall_timeout_s: float = Field(
        default=600.0,
        ge=0.0,
        description="a client waiting on a job (ramdex ingest, reindex) gives up with a message "
        "after this long without progress; 0 = wait for ever",
    )
    redispatch_after_s: float | None = Field(
        default=None,
        ge=1.0,
        le=86400.0,
        description="broker mode: a queued asset whose message was lost (a broker restarted "
        "without persistence) is sent again once the model queue delivered a message sent this "
        "long after its own, busy queue or not, or once the queue is empty and it was sent this "
        "long ago; unset = ingest.lease_s",
    )


class ApiSettings(BaseModel):
    """HTTP service."""

    host: str = "127.0.0.1"
    port: int = 8000
    cors_origins: list[str] = Field(default_factory=list)
    max_upload_bytes: int = 200 * 1024 * 1024
    max_json_bytes: int = 1024 * 1024
    require_auth: bool = True
    warm_start: bool = Field(
        default=True,
        description="`ramdex serve` loads the model, text encoder and searcher in the background "
        "at start (/readyz says warming until done), so the first concept query is not slow",
    )
    metrics_cache_s: float = Field(
        default=15.0,
        ge=0.0,
        description="archive gauges on /metrics (assets by status, jobs, queue depth) are "
        "recomputed at most this often: counting millions of assets takes a second",
    )
    # ---- hardening against hostile clients (docs/deploy.md, "Limits") ----
    max_header_bytes: int = Field(
        default=16 * 1024,
        ge=1024,
        description="largest request line + headers; bigger requests are refused and closed",
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="a connection must deliver a complete request head this soon after it opens "
        "(or after the previous response), else it is closed (slow-loris guard)",
    )
    body_timeout_s: float = Field(
        default=30.0, gt=0, description="longest wait for the next chunk of a request body"
    )
    keep_alive_s: int = Field(
        default=5, ge=1, description="idle keep-alive connections are closed after this"
    )
    max_concurrency: int = Field(
        default=512,
        ge=1,
        description="open connections + running requests per server process; more get 503",
    )
    auth_failure_limit: str = Field(
        default="20/minute",
        description="failed authentications allowed per client address (`limits` notation, "
        "for example 20/minute;100/hour); more get 429 with Retry-After",
    )
    rate_limit_storage: str = Field(
        default="memory://",
        description="where the failure counts live: memory:// (per process) or redis://... "
        "(shared by all API processes)",
    )
    costly_searches_per_key: int = Field(
        default=4,
        ge=1,
        description="concurrent free-text concept and query-image searches per key; more get 429",
    )
    query_max_pixels: int = Field(
        default=24_000_000,
        ge=1,
        description="query images (similar search by upload) over this many pixels are refused "
        "unless they are JPEGs that decode at a reduced scale below it",
    )
    # ---- POST /tag (synchronous tagging; docs/tagging-api.md) ----
    tag_batch_size: int = Field(
        default=8, ge=1, le=256, description="POST /tag: most images per model forward"
    )
    tag_batch_wait_ms: float = Field(
        default=10.0,
        ge=0.0,
        le=1000.0,
        description="POST /tag: longest an image waits for others to share its forward",
    )
    tag_queue_size: int = Field(
        default=64, ge=1, description="POST /tag: images waiting for the model; more get 503"
    )
    tag_max_images: int = Field(
        default=16, ge=1, le=256, description="POST /tag: images per request"
    )
    tag_max_bytes: int = Field(
        default=32 * 1024 * 1024,
        ge=1024,
        description="POST /tag: largest request body, and largest image fetched from a URL",
    )
    metrics_access: Literal["key", "open", "bind"] = Field(
        default="key",
        description="/metrics needs a read key (key), answers anyone (open), or is served only "
        "on api.metrics_bind (bind)",
    )
    metrics_bind: str = Field(
        default="127.0.0.1:9100",
        description="host:port of the separate metrics listener when metrics_access is bind",
    )
    read_keys_see_paths: bool = Field(
        default=False,
        description="read-only keys see server paths in asset sources and jobs (else only file "
        "names)",
    )


class StorageSettings(BaseModel):
    """Which server folders may be registered by path."""

    allowed_roots: list[Path] = Field(
        default_factory=list,
        description="folders whose files may be registered by server path; empty: the API "
        "refuses server paths and the CLI reads what its user names (docs/deploy.md)",
    )

    @field_validator("allowed_roots")
    @classmethod
    def _absolute_roots(cls, value: list[Path]) -> list[Path]:
        roots = [p.expanduser() for p in value]
        relative = [str(p) for p in roots if not p.is_absolute()]
        if relative:
            raise ValueError(f"allowed roots must be absolute paths: {', '.join(relative)}")
        return roots


class SourcesSettings(BaseModel):
    """Sources (``ramdex sources``): S3-compatible prefixes and watched folders, scanned by the
    process holding the scheduler (``ramdex worker``, an embedded ``ramdex serve`` or
    ``ramdex sources watch``). S3 credentials come from boto3's standard chain, never settings."""

    s3_endpoint_url: str | None = Field(
        default=None,
        description="S3-compatible server of s3:// sources (MinIO, Ceph, ...); unset = "
        "index.s3.endpoint_url, and when that is unset too, AWS S3 itself",
    )
    s3_region: str | None = Field(default=None, description="unset = index.s3.region")
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=30.0, gt=0)
    default_interval_s: int = Field(
        default=300, ge=1, description="full re-scan interval of a source added without one"
    )
    tick_s: float = Field(
        default=5.0, gt=0, le=3600, description="how often the scheduler looks for due sources"
    )
    settle_s: float = Field(
        default=2.0,
        ge=0.0,
        le=600.0,
        description="watched folders: a file is ingested once its size and mtime stayed the "
        "same this long (files still being written are not read half-written)",
    )
    scheduler: bool = Field(
        default=True,
        description="workers and the embedded server scan due sources and watch folders (one "
        "process at a time, by a database lease); off = only `ramdex sources scan|watch`",
    )


class WebhookSettings(BaseModel):
    """The webhook dispatcher (docs/webhooks.md): in every Celery worker and an embedded serve."""

    enabled: bool = Field(default=True, description="run the dispatcher in workers and serve")
    interval_s: float = Field(
        default=1.0, ge=0.05, le=600.0, description="how often the dispatcher looks for work"
    )
    timeout_s: float = Field(
        default=10.0, ge=0.1, le=120.0, description="connect and read limit of one POST"
    )
    concurrency: int = Field(default=8, ge=1, le=256, description="POSTs in flight at once")
    max_attempts: int = Field(
        default=8, ge=1, le=100, description="attempts before a delivery is dead"
    )
    retry_base_s: float = Field(
        default=30.0, ge=0.01, description="wait after the first failure; doubles each time"
    )
    retry_max_s: float = Field(default=3600.0, ge=0.01, description="longest wait between tries")
    event_retention_s: float = Field(
        default=3600.0, ge=0.0, description="events are kept this long after being queued"
    )
    delivery_retention_days: float = Field(
        default=14.0, ge=0.0, description="delivered and dead deliveries are kept this long"
    )


class MediaSettings(BaseModel):
    """Video, camera RAW and animated images (docs/media.md)."""

    min_interval_s: float = Field(
        default=1.0, ge=0.0, description="keyframes of a video are at least this far apart"
    )
    max_interval_s: float = Field(
        default=10.0, gt=0.0, description="a keyframe at least this often, scene change or not"
    )
    scene_threshold: float = Field(
        default=0.2,
        gt=0.0,
        le=1.0,
        description="a frame whose histogram differs this much (0-1) from the last keyframe is a "
        "scene change",
    )
    max_frames: int = Field(
        default=64, ge=1, le=4096, description="most frames kept per video (or per task range)"
    )
    max_decode_s: float = Field(
        default=120.0, gt=0.0, description="decoding time budget per video (or per task range)"
    )
    max_duration_s: float = Field(
        default=4 * 3600.0, gt=0.0, description="longer videos are indexed over this much only"
    )
    animated_frames: int = Field(
        default=4, ge=1, le=64, description="frames scored from a GIF / WebP / APNG animation"
    )
    analysis_size: int = Field(
        default=64, ge=16, le=512, description="side of the thumbnail scene change is judged on"
    )
    raw_preview_min_px: int = Field(
        default=0,
        ge=0,
        description="smallest embedded preview side used for a RAW (0 = the model's input size)",
    )
    raw_jpeg_pairs: bool = Field(
        default=True,
        description="a RAW file and a JPEG of the same base name in one folder are one asset",
    )
    split_s: float = Field(
        default=600.0,
        gt=0.0,
        description="videos longer than this are split into time ranges several workers share",
    )
    max_video_bytes: int = Field(
        default=20 * 1024**3,
        ge=1,
        description="largest accepted video file (footage: ingest.max_bytes bounds the others)",
    )


class LlmSettings(BaseModel):
    """Optional OpenAI-compatible chat-completions endpoint for concept descriptions."""

    url: str = ""
    model: str = ""
    api_key: str = ""
    timeout_s: float = 60.0


class Settings(BaseSettings):
    """All ramdex settings. Build with :func:`get_settings`."""

    model_config = SettingsConfigDict(
        env_prefix="RAMDEX_", env_nested_delimiter="__", env_file=".env", extra="ignore"
    )

    home: Path = Field(default_factory=default_home, description="data directory")
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    index: IndexSettings = Field(default_factory=IndexSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    llm: LlmSettings = Field(default_factory=LlmSettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    sources: SourcesSettings = Field(default_factory=SourcesSettings)
    media: MediaSettings = Field(default_factory=MediaSettings)

    @field_validator("home")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser()

    @property
    def database_url(self) -> str:
        """The configured database URL, or a SQLite file under ``home``."""
        return self.database.url or f"sqlite:///{self.home / 'ramdex.sqlite3'}"

    @property
    def index_dir(self) -> Path:
        return self.home / "index"

    @property
    def tokens_dir(self) -> Path:
        return self.home / "tokens"

    @property
    def media_dir(self) -> Path:
        return self.home / "media"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
