"""Per-model stores and the schema: where a model's token store and FAISS index live, opening
the token store, syncing the FAISS index from the database, and running the migrations once."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from indexer.db.session import session_scope
from indexer.settings import Settings
from indexer.token_store import TokenStore

if TYPE_CHECKING:  # boto3 is imported only when a store on object storage is opened
    from indexer.token_store_s3 import S3Options, S3TokenStore

_schema_lock = threading.Lock()
_schema_ready: set[str] = set()


def ensure_schema(url: str) -> None:
    """Run the migrations once per process and database (idempotent, concurrency-safe)."""
    if url in _schema_ready:
        return
    with _schema_lock:
        if url in _schema_ready:
            return
        from indexer.migrate import upgrade_database

        upgrade_database(url)
        _schema_ready.add(url)


def model_dir_name(model_id: str) -> str:
    """A folder name for a model id (token store and FAISS index are per model)."""
    return re.sub(r"[^A-Za-z0-9._@-]+", "_", model_id)[:120]


def token_store_path(settings: Settings, model_id: str) -> Path:
    """Where the token store of a model lives: ``<home>/tokens/<model id>``."""
    return settings.tokens_dir / model_dir_name(model_id)


def token_store_url(settings: Settings, model_id: str) -> str | None:
    """``s3://BUCKET/PREFIX/<model id>`` when ``index.token_store_url`` is set, else None (the
    local folder of :func:`token_store_path`)."""
    base = settings.index.token_store_url
    if not base:
        return None
    return f"{base.rstrip('/')}/{model_dir_name(model_id)}"


def s3_options(settings: Settings) -> S3Options:
    """The object store's connection and cache settings (``index.s3``)."""
    from indexer.token_store_s3 import S3Options

    s3 = settings.index.s3
    return S3Options(
        endpoint_url=s3.endpoint_url,
        region=s3.region,
        cache_dir=s3.cache_dir or settings.home / "cache" / "tokens",
        cache_bytes=s3.cache_bytes,
        max_concurrency=s3.max_concurrency,
        connect_timeout_s=s3.connect_timeout_s,
        read_timeout_s=s3.read_timeout_s,
        single_writer=s3.single_writer,
    )


def open_token_store(
    settings: Settings,
    model_id: str,
    tokens: int | None = None,
    dim: int | None = None,
    *,
    read_only: bool = False,
) -> TokenStore | S3TokenStore:
    """The model's token store: on local disk, or on S3-compatible object storage when
    ``index.token_store_url`` is set. Writers pass ``tokens`` and ``dim`` so that the store is
    created on first use with the configured format.

    Raises:
        TokenStoreError: ``read_only`` and nothing was stored yet, or the store does not match.
        indexer.token_store_s3.S3StoreUnavailable: the object store cannot be reached.
    """
    url = token_store_url(settings, model_id)
    fmt = settings.index.token_format if tokens is not None else None
    if url is not None:
        from indexer.token_store_s3 import S3TokenStore

        return S3TokenStore(
            url, tokens, dim, fmt, read_only=read_only, options=s3_options(settings)
        )
    return TokenStore(
        token_store_path(settings, model_id), tokens=tokens, dim=dim, fmt=fmt, read_only=read_only
    )


_index_cache: dict[str, tuple[Any, tuple[int, int]]] = {}
_index_lock = threading.Lock()


def _file_stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns


def sync_vector_index(
    settings: Settings, model_id: str, dim: int = 512, min_interval_s: float = 0.0
) -> bool:
    """Bring the model's FAISS index up to date with the database and save it.

    The writer keeps the index in memory between calls (reloaded when another process saved a
    newer file), takes the cross-process :func:`indexer.faiss_index.writer_lock`, syncs
    incrementally from the database watermark and saves atomically only when something changed.

    Args:
        min_interval_s: skip the call when the file was saved less than this long ago (a later
            "final" sync covers the changes).

    Returns:
        Whether the index file was written.
    """
    from indexer.faiss_index import index_path, open_index, writer_lock

    path = index_path(settings.index_dir, model_id)
    if min_interval_s > 0 and path.exists() and time.time() - path.stat().st_mtime < min_interval_s:
        return False
    with _index_lock, writer_lock(path):
        before = _file_stamp(path) if path.exists() else None
        cached = _index_cache.get(str(path))
        with session_scope(settings.database_url) as session:
            if cached is not None and before == cached[1]:
                index = cached[0]
                if index.is_stale(session):
                    index.sync(session)
                    index.save(path)
            else:
                index = open_index(session, model_id, index_dir=settings.index_dir, dim=dim)
        after = _file_stamp(path)
        _index_cache[str(path)] = (index, after)
        return after != before


def index_is_behind(settings: Settings, model_id: str, *, full: bool = False) -> bool:
    """Whether the model's FAISS index misses changes the database has (cheap enough to ask on
    every reconciler pass: the newest done asset of the model is the last entry of
    ``ix_assets_model_name_status_updated_at``).

    Args:
        full: also compare the embedding set's count and highest id (one count over the
            model's assets; catches deletions and late commits the newest time misses).
    """
    import sqlalchemy as sa

    from indexer.db.assets import Asset, AssetStatus
    from indexer.db.embedding_repo import embedding_watermark
    from indexer.faiss_index import index_path, read_meta

    path = index_path(settings.index_dir, model_id)
    try:
        mark = read_meta(path).watermark_obj()
    except (FileNotFoundError, ValueError):
        mark = None
    with session_scope(settings.database_url) as session:
        newest = session.execute(
            sa.select(sa.func.max(Asset.updated_at)).where(
                Asset.model_name == model_id,
                Asset.status == AssetStatus.DONE.value,
                Asset.embedding.is_not(None),
            )
        ).scalar_one_or_none()
        if mark is None:
            return newest is not None
        if newest is not None and (mark.max_updated_at is None or newest > mark.max_updated_at):
            return True
        return full and embedding_watermark(session, model_id) != mark
