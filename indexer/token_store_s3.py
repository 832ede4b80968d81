"""Token store on S3-compatible object storage: the same reading interface as
:class:`indexer.token_store.TokenStore`, over objects under ``s3://BUCKET/PREFIX/``.

Layout::

    manifest.json                          the commit point (replaced by conditional PUTs)
    seg/<segment>.bin                      fixed-size records of one add() batch, immutable
    seg/<segment>.ids.npy                  its asset ids (int64, one per record slot)
    seg/<segment>.g<gen>-<rand>.ids.npy    a later generation of them, -1 = deleted (tombstone)
    codebook-<rand>.npy                    codec formats: the codebook the first batch trained

Records are the local store's (:func:`indexer.token_store.record_dtype`, encoded and decoded by
:func:`~indexer.token_store.encode_records` / :func:`~indexer.token_store.decode_records`), so a
segment is byte for byte what a local shard holds for the same assets. Segments are listed in the
manifest in commit order, with the smallest and largest asset id they hold: assets are ingested in
id order, so a range of ids (a backfill part) lives in a few neighbouring segments and
``iter_chunks(id_range=...)`` reads only those, front to back.

Writers (any number of processes on any number of machines) upload their segment and id objects
under fresh unique names first (nothing anyone reads changes), then commit: read the manifest and
its ETag, apply the change to it (append the segment entry; tombstones of replaced or deleted ids
as new id-object generations of the segments that held them), and PUT it with ``If-Match: <ETag>``.
A 412 PreconditionFailed (or 409 ConditionalRequestConflict) means another writer committed first:
re-read, re-apply, retry with jittered backoff. AWS S3 has had conditional PUTs since 2024-11,
moto since mid-2025 (``put_object(IfMatch=...)``, getmoto/moto#8869), MinIO too. A writer checks
once that the server enforces them (a PUT with a wrong ETag must fail); a server that does not is
refused with a clear error, unless ``single_writer`` says exactly one process writes (then the
manifest is PUT unconditionally). After each commit the writer reads the manifest back and checks
that its commit id is listed (the manifest keeps the last 64), and applies it again if not
(idempotent: a segment already listed is not added twice). That is for servers whose
check-and-write is not atomic (moto's server checks the ETag and then writes, in threads): it
catches a racing PUT that landed before the read-back, not one that lands after it; on AWS S3 the
If-Match check is atomic and the read-back only costs a HEAD.

Readers hold a snapshot (the manifest they read, with its id arrays) and never see a torn state:
objects a manifest names never change. :meth:`S3TokenStore.refresh` is one conditional GET
(``If-None-Match``: 304 when nothing changed). Only :meth:`S3TokenStore.collect_garbage` deletes
objects (the id generations a later commit replaced, segments :meth:`S3TokenStore.compact` merged
away, the uploads of writers that died or lost a race), and only those older than its grace
period, so a snapshot stays readable for that long (a day by default).

Reads: ``get(ids)`` groups the ids by segment and cache block (``block_bytes`` rounded to whole
records: 256 KiB by default, one float16 record; small so that a random shortlist reads little
more than it needs, large enough that a request moves more than its latency's worth of bytes),
serves blocks from the local cache, and fetches the missing ones with one ranged GET per run of
neighbouring blocks (runs merged across gaps below ``gap_bytes``, split above ``request_bytes``),
``max_concurrency`` at a time. Fetched blocks go into the cache (except scans: runs of at least
``scan_bytes`` of which 90 % or more was asked for, as a backfill part reading a range of ids in
storage order does, so that a pass over the archive does not flush the cache): files under
``cache_dir``
(written to a temp name and renamed, so several processes share it safely), evicted
least-recently-used (by mtime, touched on every hit) when they pass ``cache_bytes``. Segments are
immutable, so a cached block never goes stale. ``iter_chunks`` streams segments in manifest order
with large sequential ranged GETs, a few in flight, and bypasses the cache (a full scan would
only evict the blocks worth keeping).

Failures: timeouts are bounded (``connect_timeout_s``, ``read_timeout_s``, a few retries), and a
server that cannot be reached, stops answering, refuses the credentials or lacks the bucket raises
:class:`S3StoreUnavailable` (a :class:`~indexer.errors.RamdexError` naming the setting to check),
never a hang. A missing manifest is :class:`~indexer.token_store.TokenStoreError` (nothing
ingested yet), as for the local store.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import os
import random
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from indexer import token_codecs
from indexer.errors import RamdexError
from indexer.settings import parse_token_store_url
from indexer.token_store import (
    STORE_VERSION,
    Shard,
    Snapshot,
    SnapshotReader,
    TokenStoreError,
    bytes_per_asset,
    check_batch,
    decode_records,
    encode_records,
    record_dtype,
    train_first_codec,
)

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
RECENT_COMMITS = 64  # commit ids a manifest remembers, to check a commit landed
COMMIT_ATTEMPTS = 64
_CONFLICT = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}
_T = TypeVar("_T")


class S3StoreUnavailable(RamdexError):
    """The object store cannot be used now: unreachable, not answering, credentials or bucket."""


class ConditionalWritesUnsupported(RamdexError):
    """The server ignores If-Match on PUT: several writers would overwrite each other's commits."""


class _CodecRace(Exception):
    """Another writer trained and committed the codebook first: encode again with theirs."""


@dataclass(frozen=True)
class S3Options:
    """Connection, cache and request sizes (from settings ``index.s3``; see
    :class:`indexer.settings.S3Settings`)."""

    endpoint_url: str | None = None
    region: str | None = None
    cache_dir: Path | None = None  # None: ~/.cache/ramdex/token-store-s3
    cache_bytes: int = 16 * 1024**3
    block_bytes: int = 256 * 1024
    gap_bytes: int = 1024 * 1024
    request_bytes: int = 32 * 1024**2
    scan_bytes: int = 8 * 1024**2  # a run this long, >= 90 % of it asked for, is not cached
    stream_bytes: int = 16 * 1024**2
    segment_bytes: int = 512 * 1024**2
    max_concurrency: int = 8
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    retries: int = 3
    single_writer: bool = False


def _make_client(opts: S3Options) -> Any:
    """A thread-safe boto3 S3 client with bounded timeouts (credentials: boto3's default chain)."""
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=opts.connect_timeout_s,
        read_timeout=opts.read_timeout_s,
        retries={"max_attempts": opts.retries, "mode": "standard"},
        max_pool_connections=opts.max_concurrency + 4,
        # path-style addressing: S3-compatible servers on an address (MinIO, moto) need it
        s3={"addressing_style": "path"} if opts.endpoint_url else None,
    )
    return boto3.session.Session().client(
        "s3", endpoint_url=opts.endpoint_url, region_name=opts.region, config=config
    )


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    return code or str(response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


class BlockCache:
    """Fixed-size blocks of immutable objects as files under ``root``, LRU within ``budget`` bytes.

    Safe for several processes: a block is written to a temp file and renamed into place, a
    reader that loses a block to another process's eviction sees a miss, and a file of the wrong
    size (a crash mid-write on a file system that reorders) is a miss too.
    """

    def __init__(self, root: Path, budget: int) -> None:
        self.root = root
        self.budget = budget
        self._lock = threading.Lock()
        self._total: int | None = None  # bytes cached, counted on first put

    def _path(self, obj: str, block: int) -> Path:
        return self.root / obj / f"{block:09d}.blk"

    def get(self, obj: str, block: int, size: int) -> bytes | None:
        """The block's bytes, or None (not cached, evicted, or not ``size`` bytes long)."""
        if self.budget <= 0:
            return None
        path = self._path(obj, block)
        try:
            with open(path, "rb") as fh:
                data = fh.read()
            os.utime(path)  # the LRU order is the files' mtimes
        except OSError:
            return None
        return data if len(data) == size else None

    def put(self, obj: str, block: int, data: bytes | memoryview) -> None:
        """Store a block (replacing any copy) and evict when over budget."""
        if self.budget <= 0:
            return
        _write_atomic(self._path(obj, block), data)
        with self._lock:
            if self._total is None:
                self._total = sum(size for _, size, _ in self._files())
            else:
                self._total += len(data)
            over = self._total > self.budget
        if over:
            self.evict()

    def _files(self) -> list[tuple[float, int, Path]]:
        out = []
        if not self.root.is_dir():
            return out
        for folder in os.scandir(self.root):
            if not folder.is_dir():
                continue
            for entry in os.scandir(folder.path):
                if entry.name.endswith(".blk"):
                    try:
                        st = entry.stat()
                    except OSError:
                        continue
                    out.append((st.st_mtime, st.st_size, Path(entry.path)))
        return out

    def evict(self) -> None:
        """Remove least recently used blocks until the cache holds at most 80 % of its budget
        (the margin: a scan per 20 % of the budget written, not one per block)."""
        with self._lock:
            files = sorted(self._files())
            total = sum(size for _, size, _ in files)
            target = int(self.budget * 0.8)
            for _, size, path in files:
                if total <= target:
                    break
                path.unlink(missing_ok=True)
                total -= size
            self._total = total

    def nbytes(self) -> int:
        """Bytes cached now (a scan)."""
        return sum(size for _, size, _ in self._files())


class S3TokenStore(SnapshotReader):
    """Token store over ``s3://BUCKET/PREFIX/`` (see the module docstring).

    Args:
        url: ``s3://BUCKET/PREFIX``.
        tokens, dim, fmt: as for :class:`~indexer.token_store.TokenStore`: needed to create a
            store, checked against an existing one when given.
        read_only: refuse writes; a missing store is a TokenStoreError.
        options: connection, cache and request sizes.
        client: a boto3 S3 client to use instead of one made from ``options``.
    """

    def __init__(
        self,
        url: str,
        tokens: int | None = None,
        dim: int | None = None,
        fmt: str | None = None,
        *,
        read_only: bool = False,
        options: S3Options | None = None,
        client: Any = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.bucket, self.prefix = parse_token_store_url(url)
        self.options = opts = options or S3Options()
        self.read_only = read_only
        self.client = client if client is not None else _make_client(opts)
        self._pool = ThreadPoolExecutor(opts.max_concurrency, thread_name_prefix="s3-tokens")
        where = f"{opts.endpoint_url or 'aws'}|{self.bucket}|{self.prefix}"
        root = opts.cache_dir or Path.home() / ".cache" / "ramdex" / "token-store-s3"
        self._cache_root = root / hashlib.sha1(where.encode()).hexdigest()[:16]
        self.cache = BlockCache(self._cache_root / "blocks", opts.cache_bytes)
        self._ids_memo: dict[str, np.ndarray] = {}
        self._codec: tuple[str, token_codecs.Codec] | None = None
        self._cas_checked = False
        self._write_lock = threading.Lock()
        self.requests = 0  # record GETs made (get / iter_chunks), for benchmarks
        self.conflicts = 0  # commits that had to be applied again (another writer was first)
        self.bytes_fetched = 0
        self._count_lock = threading.Lock()
        got = self._read_manifest()
        if got is None:
            if read_only:
                raise TokenStoreError(f"no token store at {self.url} (missing {MANIFEST})")
            if tokens is None:
                raise TokenStoreError(f"creating a token store at {self.url} needs `tokens`")
            self._create(tokens, dim or 512, fmt or "float16")
            got = self._read_manifest()
            if got is None:
                raise TokenStoreError(f"{self.url}: the manifest just written is not there")
        self._snap, self._etag = self._open(got[0]), got[1]
        m = self._snap.manifest
        for key, want in (("tokens", tokens), ("dim", dim), ("format", fmt)):
            if want is not None and m[key] != want:
                raise TokenStoreError(
                    f"token store {self.url} has {key}={m[key]!r}, not {want!r} as requested"
                )

    def close(self) -> None:
        """Stop the request threads (the store is unusable afterwards)."""
        self._pool.shutdown(wait=True)

    def __enter__(self) -> S3TokenStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- properties ---------------------------------------------------------------------------

    @property
    def generation(self) -> int:
        """The snapshot's manifest generation (0 for a new store, +1 per commit)."""
        return int(self._snap.manifest["generation"])

    @property
    def _dtype(self) -> np.dtype:
        return record_dtype(self.format, self.tokens, self.dim)

    @property
    def block_records(self) -> int:
        """Records per cache block (and per unit of a ranged GET in :meth:`get`)."""
        return max(1, self.options.block_bytes // self.bytes_per_asset)

    def stats(self) -> dict[str, Any]:
        """Counts and sizes, as :meth:`TokenStore.stats` (segments for shards), plus the URL."""
        return {"backend": "s3", "url": self.url, **super().stats()}

    def segments(self) -> list[dict[str, Any]]:
        """The manifest's segment entries in commit order (name, count, ids, min_id, max_id)."""
        return copy.deepcopy(self._snap.manifest["segments"])

    # -- object access ------------------------------------------------------------------------

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def _call(self, what: str, fn: Callable[[], _T]) -> _T:
        """Run one S3 operation; connection, timeout, credential and bucket failures become
        :class:`S3StoreUnavailable`, other client errors (412, 304, NoSuchKey) pass through."""
        from botocore import exceptions as bex

        endpoint = self.options.endpoint_url or "AWS S3"
        try:
            return fn()
        except (bex.ConnectionError, bex.HTTPClientError, bex.ResponseStreamingError) as exc:
            raise S3StoreUnavailable(
                f"token store {self.url}: {what} failed, the server at {endpoint} did not answer "
                f"({type(exc).__name__}: {exc})",
                hint="check that it is up and reachable (RAMDEX_INDEX__S3__ENDPOINT_URL; "
                "timeouts: RAMDEX_INDEX__S3__CONNECT_TIMEOUT_S / READ_TIMEOUT_S)",
            ) from exc
        except bex.NoCredentialsError as exc:
            raise S3StoreUnavailable(
                f"token store {self.url}: no AWS credentials found",
                hint="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, ~/.aws); "
                "ramdex settings never hold credentials",
            ) from exc
        except bex.ClientError as exc:
            code = _error_code(exc)
            if code == "NoSuchBucket":
                raise S3StoreUnavailable(
                    f"token store {self.url}: bucket {self.bucket!r} does not exist at {endpoint}",
                    hint="create it, or fix RAMDEX_INDEX__TOKEN_STORE_URL",
                ) from exc
            if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
                raise S3StoreUnavailable(
                    f"token store {self.url}: {what} refused ({code})",
                    hint="check the AWS credentials (AWS_ACCESS_KEY_ID / AWS_PROFILE) and "
                    "their permissions on the bucket",
                ) from exc
            raise

    def _get_bytes(self, name: str, what: str, **kwargs: Any) -> tuple[bytes, dict[str, Any]]:
        def run() -> tuple[bytes, dict[str, Any]]:
            resp = self.client.get_object(Bucket=self.bucket, Key=self._key(name), **kwargs)
            return resp["Body"].read(), resp

        return self._call(what, run)

    def _put_bytes(self, name: str, data: bytes, what: str, **kwargs: Any) -> dict[str, Any]:
        return self._call(
            what,
            lambda: self.client.put_object(
                Bucket=self.bucket, Key=self._key(name), Body=data, **kwargs
            ),
        )

    def _get_range(self, name: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of an object, in one ranged GET."""
        from botocore.exceptions import ClientError

        try:
            data, _ = self._get_bytes(name, "reading records", Range=f"bytes={start}-{end - 1}")
        except ClientError as exc:
            if _error_code(exc) not in ("NoSuchKey", "404"):
                raise
            raise TokenStoreError(
                f"token store {self.url}: {name} is gone (this reader's snapshot is older than "
                "the last clean-up's grace period): refresh() and read again"
            ) from exc
        if len(data) != end - start:
            raise TokenStoreError(
                f"{self.url}: {name} returned {len(data)} bytes for a range of {end - start} "
                "(object shorter than its manifest entry)"
            )
        with self._count_lock:
            self.requests += 1
            self.bytes_fetched += len(data)
        return data

    # -- manifest and snapshots ---------------------------------------------------------------

    def _read_manifest(self, if_none_match: str | None = None) -> tuple[dict[str, Any], str] | None:
        """(manifest, ETag); None when there is none; ``("", etag)`` when unchanged (304)."""
        from botocore.exceptions import ClientError

        kwargs = {"IfNoneMatch": if_none_match} if if_none_match else {}
        try:
            data, resp = self._get_bytes(MANIFEST, "reading the manifest", **kwargs)
        except ClientError as exc:
            code = _error_code(exc)
            if code in ("NoSuchKey", "404"):
                return None
            if code in ("304", "NotModified"):
                return {}, if_none_match or ""
            raise
        return json.loads(data), str(resp["ETag"])

    def _create(self, tokens: int, dim: int, fmt: str) -> None:
        from botocore.exceptions import ClientError

        if tokens < 1 or dim < 1:
            raise ValueError("tokens and dim must be >= 1")
        bytes_per_asset(fmt, tokens, dim)  # validates fmt
        manifest = {
            "version": STORE_VERSION,
            "backend": "s3",
            "format": fmt,
            "tokens": tokens,
            "dim": dim,
            "generation": 0,
            "segments": [],
            "commits": [],
        }
        try:  # If-None-Match: * -- a writer that created it first wins, we then read theirs
            self._put_bytes(
                MANIFEST, json.dumps(manifest).encode(), "creating the store", IfNoneMatch="*"
            )
        except ClientError as exc:
            if _error_code(exc) not in _CONFLICT:
                raise

    def _load_ids(self, key: str, count: int) -> np.ndarray:
        """An id object (immutable): from memory, the local cache, or one GET."""
        ids = self._ids_memo.get(key)
        if ids is None:
            path = self._cache_root / "ids" / key.replace("/", "_")
            try:
                ids = np.load(path)
            except (OSError, ValueError):
                data, _ = self._get_bytes(key, "reading asset ids")
                ids = np.load(io.BytesIO(data))
                if self.options.cache_bytes > 0:
                    self._write_local(path, data)
            self._ids_memo[key] = ids
        if ids.shape != (count,):
            raise TokenStoreError(f"{self.url}: {key} does not hold {count} ids")
        return ids

    @staticmethod
    def _write_local(path: Path, data: bytes) -> None:
        _write_atomic(path, data)

    def _open(self, manifest: dict[str, Any]) -> Snapshot:
        """The snapshot of a manifest: its id objects loaded (in parallel), no records read."""
        if manifest.get("version") != STORE_VERSION or manifest.get("backend") != "s3":
            raise TokenStoreError(f"{self.url}: not a version {STORE_VERSION} S3 token store")
        entries = manifest["segments"]
        arrays = list(self._pool.map(lambda e: self._load_ids(e["ids"], int(e["count"])), entries))
        shards = [
            Shard(e["name"], int(e["count"]), e["ids"], ids)
            for e, ids in zip(entries, arrays, strict=True)
        ]
        live = {e["ids"] for e in entries}
        for key in [k for k in self._ids_memo if k not in live]:
            del self._ids_memo[key]  # superseded generations: keep memory bounded
        snap = Snapshot(manifest, shards)
        snap.build_lookup()
        return snap

    def refresh(self) -> bool:
        """Load the latest committed manifest (one conditional GET); True when it changed."""
        got = self._read_manifest(if_none_match=self._etag)
        if got is None:
            raise TokenStoreError(f"token store {self.url}: the manifest is gone")
        manifest, etag = got
        if not manifest or manifest.get("generation") == self._snap.manifest.get("generation"):
            self._etag = etag
            return False
        self._snap, self._etag = self._open(manifest), etag
        return True

    def _codec_of(self, manifest: dict[str, Any]) -> token_codecs.Codec:
        entry = manifest.get("codec")
        if not entry:
            raise TokenStoreError(f"token store {self.url} has no trained codebook yet")
        if self._codec is None or self._codec[0] != entry["file"]:
            if entry.get("version") != token_codecs.CODEC_VERSION:
                raise TokenStoreError(f"{self.url}: unsupported codec version {entry}")
            path = self._cache_root / "codebooks" / entry["file"]
            if not path.is_file():
                data, _ = self._get_bytes(entry["file"], "reading the codebook")
                self._write_local(path, data)
            self._codec = (entry["file"], token_codecs.load_codec(manifest["format"], path))
        return self._codec[1]

    def _codec_for(self, manifest: dict[str, Any]) -> token_codecs.Codec | None:
        return self._codec_of(manifest) if token_codecs.is_codec_format(self.format) else None

    # -- reading ------------------------------------------------------------------------------

    def _records(self, snap: Snapshot, seg_idx: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """The records at (segment, slot) pairs, in the given order, through the block cache
        and coalesced ranged GETs."""
        dtype = self._dtype
        rec = dtype.itemsize
        per = self.block_records
        block_len = per * rec
        records = np.empty(len(slots), dtype=dtype)
        out = records.reshape(-1).view(np.uint8) if len(slots) else np.zeros(0, np.uint8)
        gap_blocks = self.options.gap_bytes // block_len
        run_blocks = max(1, self.options.request_bytes // block_len)
        fetches: list[tuple[Shard, int, int, list[tuple[int, np.ndarray, np.ndarray]]]] = []

        def place(rows: np.ndarray, rel: np.ndarray, buf: bytes | memoryview, base: int) -> None:
            view = np.frombuffer(buf, np.uint8)
            for row, r in zip(rows.tolist(), rel.tolist(), strict=True):
                start = base + r * rec
                out[row * rec : (row + 1) * rec] = view[start : start + rec]

        for s in np.unique(seg_idx):
            shard = snap.shards[int(s)]
            rows = np.flatnonzero(seg_idx == s)
            rows = rows[np.argsort(slots[rows], kind="stable")]
            sl = slots[rows]
            blocks = sl // per
            cuts = np.flatnonzero(np.diff(blocks)) + 1
            groups = []  # (block, rows, slots) per block, ascending
            for g_rows, g_slots in zip(np.split(rows, cuts), np.split(sl, cuts), strict=True):
                groups.append((int(g_slots[0] // per), g_rows, g_slots))
            missing = []
            for block, g_rows, g_slots in groups:
                size = (min((block + 1) * per, shard.count) - block * per) * rec
                data = self.cache.get(shard.name, block, size)
                if data is None:
                    missing.append((block, g_rows, g_slots))
                else:
                    place(g_rows, g_slots - block * per, data, 0)
            run: list[tuple[int, np.ndarray, np.ndarray]] = []
            for item in missing:
                if run and (
                    item[0] - run[-1][0] - 1 > gap_blocks or item[0] - run[0][0] >= run_blocks
                ):
                    fetches.append((shard, run[0][0], run[-1][0], run))
                    run = []
                run.append(item)
            if run:
                fetches.append((shard, run[0][0], run[-1][0], run))

        def fetch(job: tuple[Shard, int, int, list[tuple[int, np.ndarray, np.ndarray]]]) -> None:
            shard, first, last, items = job
            start = first * per * rec
            end = min((last + 1) * per, shard.count) * rec
            data = memoryview(self._get_range(f"seg/{shard.name}.bin", start, end))
            wanted = sum(len(g_slots) for _, _, g_slots in items)
            if not (end - start >= self.options.scan_bytes and wanted * rec >= 0.9 * (end - start)):
                # cached (gap blocks too: they came along) unless the run is a scan, a long
                # range of which nearly every record was asked for (a backfill part reading
                # ids in order): a full pass would evict the shortlist blocks worth keeping
                for block in range(first, last + 1):
                    lo = (block - first) * block_len
                    self.cache.put(shard.name, block, data[lo : min(lo + block_len, len(data))])
            for block, g_rows, g_slots in items:
                place(g_rows, g_slots - block * per, data, (block - first) * block_len)

        for future in [self._pool.submit(fetch, job) for job in fetches]:
            future.result()
        return records

    def get(self, ids: np.ndarray | list[int], dtype: np.dtype = np.float32) -> np.ndarray:
        """E for the given assets, in the given order: (n, T, dim).

        Raises:
            KeyError: some ids are not stored (the first few are named).
        """
        ids, snap, seg_idx, slots = self._locate_stored(ids)
        records = self._records(snap, seg_idx, slots)
        return decode_records(self.format, records, dtype, self._codec_for(snap.manifest))

    def get_int8(self, ids: np.ndarray | list[int]) -> tuple[np.ndarray, np.ndarray]:
        """An int8 store's E as stored: ``(q (n, T, dim) int8, scale (n, T) float32)``."""
        if self.format != "int8":
            raise TokenStoreError(f"get_int8 needs an int8 store, this one is {self.format}")
        ids, snap, seg_idx, slots = self._locate_stored(ids)
        records = self._records(snap, seg_idx, slots)
        return records["q"], records["scale"]

    def _stream(
        self, chunk_size: int, id_range: tuple[int, int] | None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, records) of live assets, segment by segment in commit order, in chunks of
        ``chunk_size`` (across segment boundaries: ingest commits small batches)."""
        if chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        snap = self._snap
        dtype = self._dtype
        rec = dtype.itemsize
        per_get = max(1, self.options.stream_bytes // rec)
        pieces: list[tuple[Shard, int, int, np.ndarray]] = []  # (segment, first, end, slots)
        for entry, shard in zip(snap.manifest["segments"], snap.shards, strict=True):
            if id_range is not None:
                lo, hi = id_range
                if int(entry["max_id"]) < lo or int(entry["min_id"]) >= hi:
                    continue  # the manifest's id bounds: segments outside the range are skipped
                alive = np.flatnonzero((shard.ids >= lo) & (shard.ids < hi))
            else:
                alive = np.flatnonzero(shard.ids >= 0)
            if not len(alive):
                continue
            first, stop = int(alive[0]), int(alive[-1]) + 1
            for a in range(first, stop, per_get):
                b = min(a + per_get, stop)
                pieces.append((shard, a, b, alive[(alive >= a) & (alive < b)]))
        window = min(4, self.options.max_concurrency)  # GETs in flight ahead of the consumer
        queue: deque[tuple[tuple[Shard, int, int, np.ndarray], Future[bytes]]] = deque()
        todo = iter(pieces)

        def submit() -> None:
            piece = next(todo, None)
            if piece is not None:
                shard, a, b, _ = piece
                queue.append(
                    (
                        piece,
                        self._pool.submit(
                            self._get_range, f"seg/{shard.name}.bin", a * rec, b * rec
                        ),
                    )
                )

        for _ in range(window):
            submit()
        pend_ids: list[np.ndarray] = []
        pend_rec: list[np.ndarray] = []
        pending = 0
        try:
            while queue:
                (shard, a, _, slots), future = queue.popleft()
                data = future.result()
                submit()
                if not len(slots):
                    continue
                block = np.frombuffer(data, dtype=dtype)
                pend_ids.append(shard.ids[slots])
                pend_rec.append(block[slots - a])
                pending += len(slots)
                while pending >= chunk_size:
                    ids_all, rec_all = np.concatenate(pend_ids), np.concatenate(pend_rec)
                    yield ids_all[:chunk_size], rec_all[:chunk_size]
                    pend_ids, pend_rec = [ids_all[chunk_size:]], [rec_all[chunk_size:]]
                    pending -= chunk_size
            if pending:
                yield np.concatenate(pend_ids), np.concatenate(pend_rec)
        finally:
            for _, future in queue:
                future.cancel()

    def iter_chunks(
        self,
        chunk_size: int = 1024,
        dtype: np.dtype = np.float32,
        *,
        id_range: tuple[int, int] | None = None,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Stream every stored asset: yields ``(ids (n,), E (n, T, dim))`` with n <= chunk_size,
        in storage order (segments in commit order: ingest order).

        Args:
            id_range: ``(lo, hi)``: only assets with lo <= id < hi (a backfill part); segments
                whose ids lie outside are not read at all.
        """
        codec = self._codec_for(self._snap.manifest)
        for ids, records in self._stream(chunk_size, id_range):
            yield ids, decode_records(self.format, records, dtype, codec)

    def iter_int8_chunks(
        self, chunk_size: int = 1024, *, id_range: tuple[int, int] | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """:meth:`iter_chunks` for an int8 store without dequantizing: ``(ids, q, scale)``."""
        if self.format != "int8":
            raise TokenStoreError(f"iter_int8_chunks needs an int8 store, not {self.format}")
        for ids, records in self._stream(chunk_size, id_range):
            yield ids, records["q"], records["scale"]

    # -- writing ------------------------------------------------------------------------------

    def _check_writable(self) -> None:
        if self.read_only:
            raise TokenStoreError(f"token store {self.url} was opened read-only")
        if self._cas_checked or self.options.single_writer:
            return
        self._cas_checked = self._server_checks_if_match()
        if not self._cas_checked:
            raise ConditionalWritesUnsupported(
                f"token store {self.url}: the server at {self.options.endpoint_url or 'AWS'} "
                "does not enforce If-Match on PUT (a PUT with a wrong ETag succeeded), so several "
                "writers would overwrite each other's commits",
                hint="use a server with conditional writes (AWS S3, MinIO, moto >= 5.1.10), or set "
                "RAMDEX_INDEX__S3__SINGLE_WRITER=true if exactly one process ever writes",
            )

    def _server_checks_if_match(self) -> bool:
        """Whether a PUT with a wrong If-Match is refused (412) on this server."""
        from botocore.exceptions import ClientError

        probe = f".probe-{uuid.uuid4().hex}"
        self._put_bytes(probe, b"probe", "probing conditional writes")
        try:
            self._put_bytes(probe, b"x", "probing conditional writes", IfMatch='"' + "0" * 32 + '"')
            return False
        except ClientError as exc:
            return _error_code(exc) in _CONFLICT
        finally:
            self._call(
                "probing conditional writes",
                lambda: self.client.delete_object(Bucket=self.bucket, Key=self._key(probe)),
            )

    def _upload_segment(self, ids: np.ndarray, records: np.ndarray) -> dict[str, Any]:
        """Upload one segment's records and ids under a fresh name; its manifest entry."""
        name = f"{int(time.time() * 1000):013d}-{uuid.uuid4().hex[:12]}"
        ids_key = f"seg/{name}.ids.npy"
        buf = io.BytesIO()
        np.save(buf, ids)
        uploads = [
            self._pool.submit(
                self._put_bytes,
                f"seg/{name}.bin",
                np.ascontiguousarray(records).tobytes(),
                "uploading records",
            ),
            self._pool.submit(self._put_bytes, ids_key, buf.getvalue(), "uploading asset ids"),
        ]
        for future in uploads:
            future.result()
        self._ids_memo[ids_key] = ids.copy()
        return {
            "name": name,
            "count": len(ids),
            "ids": ids_key,
            "min_id": int(ids.min()),
            "max_id": int(ids.max()),
        }

    def _tombstone(self, manifest: dict[str, Any], snap: Snapshot, ids: np.ndarray) -> int:
        """Mark ids dead in the manifest (new id-object generations, uploaded); how many."""
        found, seg_idx, slots = snap.locate(ids)
        if not found.any():
            return 0
        gen = int(manifest["generation"]) + 1
        changes = []
        for s in np.unique(seg_idx[found]):
            shard = snap.shards[int(s)]
            new = shard.ids.copy()
            new[slots[found & (seg_idx == s)]] = -1
            key = f"seg/{shard.name}.g{gen:06d}-{uuid.uuid4().hex[:8]}.ids.npy"
            changes.append((int(s), key, new))

        def upload(change: tuple[int, str, np.ndarray]) -> None:
            buf = io.BytesIO()
            np.save(buf, change[2])
            self._put_bytes(change[1], buf.getvalue(), "uploading asset ids")

        list(self._pool.map(upload, changes))
        for s, key, new in changes:
            manifest["segments"][s]["ids"] = key
            self._ids_memo[key] = new
        return int(found.sum())

    def _commit(
        self,
        apply: Callable[[dict[str, Any], Snapshot], _T],
        skip: Callable[[_T], bool] | None = None,
    ) -> _T:
        """Read the newest manifest, let ``apply`` change a copy of it, PUT it if nobody
        committed meanwhile (If-Match), else start again; returns what ``apply`` returned
        (nothing is PUT when ``skip`` says that result changed nothing)."""
        from botocore.exceptions import ClientError

        for attempt in range(COMMIT_ATTEMPTS):
            got = self._read_manifest()
            if got is None:
                raise TokenStoreError(f"token store {self.url}: the manifest is gone")
            snap = self._open(got[0])
            manifest = copy.deepcopy(got[0])
            result = apply(manifest, snap)
            if skip is not None and skip(result):
                self._snap, self._etag = snap, got[1]
                return result
            # Objects this commit stops naming (merged segments, superseded id generations)
            # are retired now: collect_garbage ages them from this moment, not from their
            # upload, so a reader's snapshot keeps its files for the whole grace period.
            retired = dict(manifest.get("retired", {}))
            now = time.time()
            for key in _live_keys(got[0]) - _live_keys(manifest):
                retired.setdefault(key, now)
            if retired:
                manifest["retired"] = retired
            commit_id = uuid.uuid4().hex
            manifest["generation"] = int(manifest["generation"]) + 1
            manifest["commits"] = [*manifest.get("commits", []), commit_id][-RECENT_COMMITS:]
            condition = {} if self.options.single_writer else {"IfMatch": got[1]}
            try:
                resp = self._put_bytes(
                    MANIFEST, json.dumps(manifest).encode(), "committing", **condition
                )
            except ClientError as exc:
                if _error_code(exc) not in _CONFLICT:
                    raise
                self.conflicts += 1
                time.sleep(min(1.0, 0.005 * 2 ** min(attempt, 8)) * random.random())
                continue
            if self._landed(commit_id, str(resp["ETag"])):
                self._snap, self._etag = self._open(manifest), str(resp["ETag"])
                return result
            self.conflicts += 1
            log.warning("%s: commit %s was overwritten; applying it again", self.url, commit_id)
        raise TokenStoreError(
            f"token store {self.url}: no commit after {COMMIT_ATTEMPTS} attempts (other writers "
            "kept committing first)"
        )

    def _landed(self, commit_id: str, etag: str) -> bool:
        """Whether the manifest now in force holds our commit (its ETag is ours, or a later
        writer's manifest lists our commit id)."""
        head = self._call(
            "checking the commit",
            lambda: self.client.head_object(Bucket=self.bucket, Key=self._key(MANIFEST)),
        )
        if str(head["ETag"]) == etag:
            return True
        got = self._read_manifest()
        return got is not None and commit_id in got[0].get("commits", [])

    def add(self, ids: np.ndarray | list[int], embeds: np.ndarray) -> None:
        """Append assets' E as new segments (at most ``segment_bytes`` each) in one commit; an
        id already stored is replaced (its old record is tombstoned).

        Args:
            ids: (n,) distinct non-negative int64 asset ids.
            embeds: (n, T, dim) float array (any float dtype; stored in the store's format).
        """
        ids, embeds = check_batch(ids, embeds, self.tokens, self.dim)
        if not len(ids):
            return
        self._check_writable()
        with self._write_lock:
            for _ in range(4):
                try:
                    self._add_once(ids, embeds)
                    return
                except _CodecRace:
                    continue
            raise TokenStoreError(f"token store {self.url}: codebook kept changing under add()")

    def _add_once(self, ids: np.ndarray, embeds: np.ndarray) -> None:
        codec_entry = None
        codec = None
        if token_codecs.is_codec_format(self.format):
            got = self._read_manifest()
            manifest = got[0] if got else self._snap.manifest
            if manifest.get("codec"):
                codec = self._codec_of(manifest)
            else:  # first batch: train, upload under a fresh name, commit with the records
                codec = train_first_codec(manifest, embeds)
                name = f"codebook-{uuid.uuid4().hex[:12]}.npy"
                buf = io.BytesIO()
                codec.save(buf)
                self._put_bytes(name, buf.getvalue(), "uploading the codebook")
                self._write_local(self._cache_root / "codebooks" / name, buf.getvalue())
                codec_entry = codec.manifest_entry(name)
        records = encode_records(self.format, embeds, codec)
        per = max(1, self.options.segment_bytes // self.bytes_per_asset)
        entries = [
            self._upload_segment(ids[i : i + per], records[i : i + per])
            for i in range(0, len(ids), per)
        ]

        def apply(manifest: dict[str, Any], snap: Snapshot) -> bool:
            if token_codecs.is_codec_format(self.format):
                current = manifest.get("codec")
                if current is None and codec_entry is not None:
                    manifest["codec"] = codec_entry
                elif current is None or (codec_entry is not None and current != codec_entry):
                    raise _CodecRace()
            listed = {e["name"] for e in manifest["segments"]}
            if entries[0]["name"] in listed:
                return False  # re-applied after a commit that did land: nothing to add twice
            self._tombstone(manifest, snap, ids)
            manifest["segments"].extend(entries)
            return True

        self._commit(apply, skip=lambda added: not added)

    def delete(self, ids: np.ndarray | list[int]) -> int:
        """Tombstone assets (new id generations of their segments); returns how many were
        stored."""
        ids = np.unique(np.asarray(ids, dtype=np.int64).reshape(-1))
        if self.read_only:
            raise TokenStoreError(f"token store {self.url} was opened read-only")
        if not len(ids):
            return 0
        self._check_writable()
        with self._write_lock:
            return self._commit(
                lambda manifest, snap: self._tombstone(manifest, snap, ids),
                skip=lambda n: n == 0,  # none of them stored: nothing to commit
            )

    def compact(self, target_bytes: int | None = None) -> dict[str, int]:
        """Merge runs of neighbouring small or tombstoned segments into segments of up to
        ``target_bytes`` (default ``segment_bytes``), dropping tombstoned records; returns
        counts and bytes.

        Ingest commits small batches (one segment each), so a large archive gathers many
        segments, and a cold reader loads one ids object per segment. Merging keeps commit
        order (a merged segment holds its sources' records in order), so id ranges stay
        sequential. Other writers may commit meanwhile: the merge is committed with If-Match like
        any change; records deleted after the merge read its sources are tombstoned in the
        merged segment, and a run that another compaction already replaced is left alone.
        """
        if self.read_only:
            raise TokenStoreError(f"token store {self.url} was opened read-only")
        self._check_writable()
        target = target_bytes or self.options.segment_bytes
        rec = self.bytes_per_asset
        with self._write_lock:
            self.refresh()
            snap = self._snap
            runs: list[list[int]] = []
            run: list[int] = []
            size = 0
            for i, shard in enumerate(snap.shards):
                alive = int((shard.ids >= 0).sum())
                small = shard.count * rec < target // 2 or alive < shard.count
                if not small or size + alive * rec > target:
                    if len(run) > 1 or (run and self._dead(snap.shards[run[0]])):
                        runs.append(run)
                    run, size = [], 0
                    if not small:
                        continue
                run.append(i)
                size += alive * rec
            if len(run) > 1 or (run and self._dead(snap.shards[run[0]])):
                runs.append(run)
            merged = dropped = 0
            for run in runs:
                merged += len(run)
                dropped += self._merge(snap, run)
            return {
                "segments_merged": merged,
                "segments_written": len(runs),
                "records_dropped": dropped,
                "bytes_freed": dropped * rec,
            }

    @staticmethod
    def _dead(shard: Shard) -> bool:
        return bool((shard.ids < 0).any())

    def _merge(self, snap: Snapshot, run: list[int]) -> int:
        """Replace the segments ``run`` (indices into ``snap``) by one; records dropped."""
        rec = self.bytes_per_asset
        sources = [snap.shards[i] for i in run]
        parts_ids, parts_rec = [], []
        for shard in sources:  # one sequential GET per source (small segments)
            alive = np.flatnonzero(shard.ids >= 0)
            if not len(alive):
                continue
            data = self._get_range(f"seg/{shard.name}.bin", 0, shard.count * rec)
            parts_rec.append(np.frombuffer(data, dtype=self._dtype)[alive])
            parts_ids.append(shard.ids[alive])
        names = [s.name for s in sources]
        dropped = sum(s.count for s in sources) - sum(len(p) for p in parts_ids)
        entry = None
        merged_ids = np.zeros(0, np.int64)
        if parts_ids:
            merged_ids = np.concatenate(parts_ids)
            entry = self._upload_segment(merged_ids, np.concatenate(parts_rec))

        def apply(manifest: dict[str, Any], current: Snapshot) -> bool:
            listed = [e["name"] for e in manifest["segments"]]
            if entry is not None and entry["name"] in listed:
                return False  # landed already (re-applied after a read-back)
            try:
                at = listed.index(names[0])
            except ValueError:
                return False  # another compaction replaced them first
            if listed[at : at + len(names)] != names:
                return False
            gone = []  # deleted or replaced since this merge read its sources
            for k in range(len(names)):
                was, now = sources[k].ids, current.shards[at + k].ids
                gone.append(was[(was >= 0) & (now < 0)])
            new_entries = [] if entry is None else [dict(entry)]
            manifest["segments"][at : at + len(names)] = new_entries
            lost = np.concatenate(gone)
            if entry is not None and len(lost):
                merged = merged_ids.copy()  # (not the memo: snapshots prune unlisted ids)
                merged[np.isin(merged, lost)] = -1
                gen = int(manifest["generation"]) + 1
                key = f"seg/{entry['name']}.g{gen:06d}-{uuid.uuid4().hex[:8]}.ids.npy"
                buf = io.BytesIO()
                np.save(buf, merged)
                self._put_bytes(key, buf.getvalue(), "uploading asset ids")
                self._ids_memo[key] = merged
                manifest["segments"][at]["ids"] = key
            return True

        landed = self._commit(apply, skip=lambda changed: not changed)
        return dropped if landed else 0

    def collect_garbage(self, min_age_s: float = 24 * 3600.0) -> dict[str, int]:
        """Delete the objects under the store's prefix that the newest manifest does not name
        and have not been named for ``min_age_s``; returns how many and their bytes.

        Unreferenced objects are superseded id generations, segments :meth:`compact` merged
        away, and the uploads of writers that lost a race or died. An object a commit stopped
        naming is aged from that commit (the manifest's ``retired`` times), one never named
        from its upload. The age guard keeps two things safe: a writer's uploads before its
        commit lands, and readers' snapshots younger than ``min_age_s`` (an older snapshot that
        reads a removed segment gets a TokenStoreError telling it to refresh).
        """
        import datetime as dt

        if self.read_only:
            raise TokenStoreError(f"token store {self.url} was opened read-only")
        self.refresh()
        manifest = self._snap.manifest
        live = _live_keys(manifest)
        retired: dict[str, float] = manifest.get("retired", {})
        base = f"{self.prefix}/" if self.prefix else ""
        now = dt.datetime.now(dt.UTC)
        doomed: list[str] = []
        freed = 0
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=base
        )
        for page in self._call("listing objects", lambda: list(pages)):
            for obj in page.get("Contents", []):
                name = obj["Key"][len(base) :]
                if "/" in name.removeprefix("seg/"):
                    continue  # another store nested under this prefix: not ours
                if name in live:
                    continue
                # Unreferenced since it was retired by a commit, or (never referenced: an
                # upload whose commit never landed) since it was written.
                since = retired.get(name, obj["LastModified"].timestamp())
                if now.timestamp() - since < min_age_s:
                    continue
                doomed.append(obj["Key"])
                freed += int(obj["Size"])
        for start in range(0, len(doomed), 1000):  # DeleteObjects takes up to 1,000 keys
            batch = [{"Key": key} for key in doomed[start : start + 1000]]
            self._call(
                "deleting unreferenced objects",
                lambda batch=batch: self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                ),
            )
        gone = {key[len(base) :] for key in doomed}
        if gone & set(retired):

            def forget(manifest: dict[str, Any], _: Snapshot) -> bool:
                kept = {k: t for k, t in manifest.get("retired", {}).items() if k not in gone}
                changed = len(kept) != len(manifest.get("retired", {}))
                manifest["retired"] = kept
                return changed

            self._commit(forget, skip=lambda changed: not changed)
        return {"objects_deleted": len(doomed), "bytes_freed": freed}


def _live_keys(manifest: dict[str, Any]) -> set[str]:
    """The object names a manifest refers to (itself, segments, id generations, codebook)."""
    live = {MANIFEST}
    for entry in manifest["segments"]:
        live.update((f"seg/{entry['name']}.bin", entry["ids"]))
    if manifest.get("codec"):
        live.add(manifest["codec"]["file"])
    return live


def _write_atomic(path: Path, data: bytes | memoryview) -> None:
    """Write a local file whole or not at all (temp file + rename): safe for several
    processes sharing a cache folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
