"""S3-compatible object storage for sources: the client, bucket checks, paginated listing and
streamed reads, with botocore's errors turned into :class:`SourceError` a person can act on.

Credentials are boto3's standard chain (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``,
``AWS_PROFILE``, ``~/.aws``, instance and container roles); the server is
``sources.s3_endpoint_url`` (else ``index.s3.endpoint_url``, else AWS S3).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, BinaryIO, TypeVar

from indexer.settings import Settings
from indexer.sources.errors import SourceError, SourceUnavailable
from indexer.sources.globs import KeyFilter

T = TypeVar("T")

_clients: dict[tuple[Any, ...], Any] = {}
_clients_lock = threading.Lock()


@dataclass(frozen=True)
class Listed:
    """One object (or file) a listing found: its key relative to the source, and what says
    whether it changed."""

    key: str
    size: int
    mtime: datetime | None
    etag: str | None = None


def endpoint_of(settings: Settings) -> str | None:
    """The S3 server sources use (None: AWS S3)."""
    return settings.sources.s3_endpoint_url or settings.index.s3.endpoint_url


def s3_client(settings: Settings) -> Any:
    """A thread-safe boto3 S3 client for sources (one per configuration and process)."""
    endpoint = endpoint_of(settings)
    region = settings.sources.s3_region or settings.index.s3.region
    opts = settings.sources
    key = (endpoint, region, opts.connect_timeout_s, opts.read_timeout_s)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            import boto3
            from botocore.config import Config

            config = Config(
                connect_timeout=opts.connect_timeout_s,
                read_timeout=opts.read_timeout_s,
                retries={"max_attempts": 3, "mode": "standard"},
                max_pool_connections=16,
                # path-style addressing: S3-compatible servers on an address (MinIO, moto)
                s3={"addressing_style": "path"} if endpoint else None,
            )
            client = boto3.session.Session().client(
                "s3", endpoint_url=endpoint, region_name=region, config=config
            )
            _clients[key] = client
        return client


def error_code(exc: BaseException) -> str:
    """The S3 error code of a botocore ``ClientError`` (or its HTTP status), else ""."""
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    return code or str(response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


def explain(exc: BaseException, settings: Settings, what: str, bucket: str) -> SourceError:
    """A botocore error as a :class:`SourceError` saying what to do."""
    from botocore import exceptions as bex

    endpoint = endpoint_of(settings) or "AWS S3"
    if isinstance(exc, bex.NoCredentialsError | bex.PartialCredentialsError):
        return SourceUnavailable(
            f"{what}: no S3 credentials found",
            hint="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) in the "
            "environment ramdex runs in",
            kind="source-credentials",
        )
    if isinstance(exc, bex.ConnectionError | bex.HTTPClientError | bex.ResponseStreamingError):
        return SourceUnavailable(
            f"{what}: cannot reach the S3 server {endpoint} ({type(exc).__name__})",
            hint="check RAMDEX_SOURCES__S3_ENDPOINT_URL and that the server is up",
        )
    code = error_code(exc)
    if code == "NoSuchKey":
        return SourceError(f"{what}: the object does not exist (deleted?)", kind="source-not-found")
    if code in ("PreconditionFailed", "412"):
        return SourceError(f"{what}: the object was replaced while read; read again next scan")
    if code in ("NoSuchBucket", "404"):
        return SourceError(
            f"{what}: bucket {bucket!r} does not exist on {endpoint}",
            hint="check the bucket name, or the server (RAMDEX_SOURCES__S3_ENDPOINT_URL)",
            kind="source-not-found",
        )
    if code in (
        "AccessDenied",
        "403",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AllAccessDisabled",
    ):
        return SourceUnavailable(
            f"{what}: {endpoint} refused access to bucket {bucket!r} ({code})",
            hint="check the credentials (AWS_ACCESS_KEY_ID, AWS_PROFILE) and the bucket policy: "
            "sources need s3:ListBucket and s3:GetObject",
            kind="source-forbidden",
        )
    return SourceUnavailable(f"{what}: S3 error {code or type(exc).__name__} from {endpoint}")


def call(settings: Settings, what: str, bucket: str, fn: Callable[[], T]) -> T:
    """Run one S3 call, its errors explained (see :func:`explain`)."""
    from botocore import exceptions as bex

    try:
        return fn()
    except (bex.BotoCoreError, bex.ClientError) as exc:
        raise explain(exc, settings, what, bucket) from exc


def check_bucket(settings: Settings, bucket: str, prefix: str) -> None:
    """The bucket exists and may be listed (one small listing under the prefix).

    Raises:
        SourceError: missing bucket; SourceUnavailable: no credentials, no answer, refused.
    """
    client = s3_client(settings)
    call(
        settings,
        f"s3://{bucket}",
        bucket,
        lambda: client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1),
    )


def list_objects(
    settings: Settings, bucket: str, list_prefix: str, keep: KeyFilter
) -> Iterator[Listed]:
    """Objects under ``list_prefix`` the filter takes, keys relative to it, 1,000 per request
    (``list_objects_v2``, paginated).

    Raises:
        SourceError / SourceUnavailable: as :func:`check_bucket`, at any page.
    """
    client = s3_client(settings)
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=list_prefix, PaginationConfig={"PageSize": 1000}
    )
    iterator = iter(pages)
    where = f"s3://{bucket}/{list_prefix}"
    while True:
        page = call(settings, f"listing {where}", bucket, lambda: next(iterator, None))
        if page is None:
            return
        for obj in page.get("Contents", ()):
            rel = obj["Key"][len(list_prefix) :]
            if keep(rel):
                etag = str(obj.get("ETag") or "").strip('"') or None
                yield Listed(rel, int(obj.get("Size") or 0), obj.get("LastModified"), etag)


def open_object(settings: Settings, bucket: str, key: str, etag: str | None) -> BinaryIO:
    """The object's bytes as a stream (read it to the end or close it). With ``etag``, only
    that version: an object replaced since it was listed fails (``PreconditionFailed``), so what
    a scan records always matches what it read.

    Raises:
        SourceError / SourceUnavailable: see :func:`explain`; ``NoSuchKey`` for a deleted one.
    """
    client = s3_client(settings)
    kwargs = {"IfMatch": f'"{etag}"'} if etag else {}
    reply = call(
        settings,
        f"reading s3://{bucket}/{key}",
        bucket,
        lambda: client.get_object(Bucket=bucket, Key=key, **kwargs),
    )
    return reply["Body"]


def split_uri(uri: str) -> tuple[str, str]:
    """``s3://BUCKET/KEY`` as (bucket, key)."""
    rest = uri.split("://", 1)[1]
    bucket, _, key = rest.partition("/")
    return bucket, key


def read_object_bytes(settings: Settings, uri: str, max_bytes: int) -> bytes:
    """A whole object in memory, at most ``max_bytes`` (processing an original kept on S3).

    Raises:
        SourceError / SourceUnavailable: not readable; ValueError: larger than ``max_bytes``.
    """
    bucket, key = split_uri(uri)
    body = open_object(settings, bucket, key, None)
    try:
        parts: list[bytes] = []
        size = 0
        while True:
            chunk = call(settings, f"reading {uri}", bucket, lambda: body.read(1 << 20))
            if not chunk:
                return b"".join(parts)
            size += len(chunk)
            if size > max_bytes:
                raise ValueError(f"{uri} is over the limit of {max_bytes} bytes")
            parts.append(chunk)
    finally:
        body.close()
