"""Helpers of the sources tests (tests/test_sources_*.py): settings on a test database with the
tiny random ``test_micro`` model, a processor sharing one loaded model, images on S3, and a
counter of the GETs ramdex's own S3 client sends."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from indexer.db.collections import AssetCollection
from indexer.db.session import session_scope
from indexer.db.sources import SourceObject
from indexer.ingest.process import AssetProcessor
from indexer.settings import Settings
from indexer.sources.s3 import s3_client
from tests.ingest_fixtures import encode, photo_like

MODEL_ID = "test_micro@random"


def source_settings(
    home: Path, db_url: str, endpoint: str | None = None, **sources: Any
) -> Settings:
    """Embedded-mode settings for a sources test (own home, given database and S3 server)."""
    return Settings(
        home=home,
        database={"url": db_url},
        broker={"url": ""},
        model={"name": "test_micro", "device": "cpu", "batch_size": 4},
        ingest={"decode_workers": 1, "read_keywords": False},
        sources={"s3_endpoint_url": endpoint, "connect_timeout_s": 2, **sources},
    )


def make_processor(settings: Settings, loaded: Any) -> AssetProcessor:
    """A processor on ``settings`` that reuses an already loaded model."""
    return AssetProcessor(settings, loaded=loaded, model_id=MODEL_ID, decode_workers=1)


def image_bytes(seed: int) -> bytes:
    """A small distinct JPEG."""
    return encode(photo_like(64, 48, seed=seed), "JPEG")


def put_images(client: Any, bucket: str, keys: list[str], seed: int = 0) -> dict[str, bytes]:
    """Upload one distinct JPEG per key; returns the bytes by key."""
    out = {}
    for i, key in enumerate(keys):
        data = image_bytes(seed + i)
        client.put_object(Bucket=bucket, Key=key, Body=data)
        out[key] = data
    return out


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextmanager
def counting_gets(settings: Settings) -> Iterator[list[str]]:
    """The keys of every GetObject ramdex's S3 client sends inside the block."""
    client = s3_client(settings)
    keys: list[str] = []

    def count(params: dict[str, Any], **_: Any) -> None:
        keys.append(params["Key"])

    client.meta.events.register("provide-client-params.s3.GetObject", count)
    try:
        yield keys
    finally:
        client.meta.events.unregister("provide-client-params.s3.GetObject", count)


def objects_of(url: str, source_id: int) -> dict[str, SourceObject]:
    """The source's ``source_objects`` rows by key (detached copies)."""
    with session_scope(url) as session:
        rows = session.scalars(sa.select(SourceObject).where(SourceObject.source_id == source_id))
        out = {r.key: r for r in rows}
        session.expunge_all()
        return out


def collection_assets(url: str, collection_id: int) -> set[int]:
    """Asset ids in the collection."""
    with session_scope(url) as session:
        return set(
            session.scalars(
                sa.select(AssetCollection.asset_id).where(
                    AssetCollection.collection_id == collection_id
                )
            )
        )


def wait_until(check: Callable[[], Any], timeout_s: float = 15.0, every_s: float = 0.1) -> Any:
    """Poll ``check`` until it returns something truthy; fails after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout_s} s: {check}")
        time.sleep(every_s)
