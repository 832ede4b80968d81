"""Read a source's object once: hash while streaming, bounded by ``ingest.max_bytes``, sniff
its type, and copy it into the media store only when the source says ``copy_originals``."""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from indexer.media import CHUNK_SIZE, SNIFF_BYTES, FileTooLargeError, MediaStore, sniff_mime
from indexer.sources.items import SourceItem


@dataclass(frozen=True)
class ReadObject:
    """What reading an object found; ``storage`` is where its original is kept (the media
    store's copy, or the object itself), None when it is not a supported image."""

    sha256: str
    size: int
    mime: str | None
    storage: str | None


def read_item(item: SourceItem, media: MediaStore, max_bytes: int) -> ReadObject:
    """Stream the object through sha256 (and into a media-store temp file when copying).

    Raises:
        FileTooLargeError: listed or read over ``max_bytes``.
        OSError, SourceError: the bytes could not be read.
    """
    if item.size > max_bytes:
        raise FileTooLargeError(f"file is {item.size} bytes, over the limit of {max_bytes} bytes")
    digest = hashlib.sha256()
    size = 0
    head = b""
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
                if len(head) < SNIFF_BYTES:
                    head += chunk[: SNIFF_BYTES - len(head)]
                size += len(chunk)
                if size > max_bytes:
                    raise FileTooLargeError(
                        f"file is over the limit of {max_bytes} bytes (it grew while read)"
                    )
                digest.update(chunk)
                if out is not None:
                    out.write(chunk)
        finally:
            stream.close()
        if out is not None:
            out.close()
        sha, mime = digest.hexdigest(), sniff_mime(head)
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
