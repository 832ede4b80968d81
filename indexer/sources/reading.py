"""Read a source's object once: hash while streaming, bounded by ``ingest.max_bytes``
(``media.max_video_bytes`` for a video), sniff its type, and copy it into the media store only
when the source says ``copy_originals``."""

from __future__ import annotations

import hashlib
import os
import posixpath
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from indexer.media import (
    CHUNK_SIZE,
    VIDEO_EXTENSIONS,
    HeadSniffer,
    Limit,
    MediaStore,
    check_stream_size,
    size_limits,
)
from indexer.sources.items import SourceItem
from indexer.sources.originals import is_object_uri


@dataclass(frozen=True)
class ReadObject:
    """What reading an object found; ``storage`` is where its original is kept (the media
    store's copy, or the object itself), None when it is not a supported image."""

    sha256: str
    size: int
    mime: str | None
    storage: str | None


def read_item(item: SourceItem, media: MediaStore, max_bytes: Limit) -> ReadObject:
    """Stream the object through sha256 (and into a media-store temp file when copying), in
    chunks: a video of gigabytes is never in memory.

    Args:
        max_bytes: one limit for every object, or :class:`indexer.media.SizeLimits` by kind
            (the listed size against the video limit for an object named like a video, else
            against ``default``; the bytes read against their kind's once the head shows
            it). A video left on object storage (no ``copy_originals``) gets the still
            images' limit: processing reads it back whole.

    Raises:
        FileTooLargeError: listed or read over the limit.
        OSError, SourceError: the bytes could not be read.
    """
    limits = size_limits(max_bytes)
    if limits is not None and not item.copy and is_object_uri(item.storage):
        # An original left on object storage is read back whole into memory when processed
        # (indexer.sources.originals): a video there gets the still images' limit, so footage
        # needs copy_originals (then it streams into the media store and is decoded from disk).
        limits = replace(
            limits,
            video=None,
            video_hint="a source without copy_originals keeps it on object storage, where it is "
            "read back into memory: set copy_originals to ingest footage",
        )
    if limits is not None:
        # The listed size, before any byte is read: only an object named like a video may be
        # larger than ingest.max_bytes (its bytes then decide), the others are not fetched.
        named_video = posixpath.splitext(item.key.lower())[1] in VIDEO_EXTENSIONS
        limits.check(item.size, None, known=not named_video)
    digest = hashlib.sha256()
    size = 0
    sniffer = HeadSniffer()
    out = None
    temp: Path | None = None
    if item.copy:
        media.tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=media.tmp_dir, prefix="src-", suffix=".part")
        out, temp = os.fdopen(fd, "wb"), Path(name)
    try:
        stream = item.opener()
        try:
            while chunk := stream.read(CHUNK_SIZE):
                sniffer.feed(chunk)
                size += len(chunk)
                check_stream_size(limits, size, sniffer)
                digest.update(chunk)
                if out is not None:
                    out.write(chunk)
        finally:
            stream.close()
        if out is not None:
            out.close()
        sha, mime = digest.hexdigest(), sniffer.finish()
        check_stream_size(limits, size, sniffer)  # an object shorter than a head
        if temp is not None:
            stored = media.adopt(temp, sha, size)  # removes the temp file when not an image
            temp = None
            return ReadObject(sha, size, stored.mime, str(stored.path) if stored.path else None)
        return ReadObject(sha, size, mime, item.storage if mime else None)
    finally:
        if out is not None and not out.closed:
            out.close()
        if temp is not None:
            temp.unlink(missing_ok=True)
