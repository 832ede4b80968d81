"""Originals kept on object storage (sources without ``copy_originals``): processing reads them
back, whole into memory (bounded by ``ingest.max_bytes``), and checks they are still the bytes
the asset was registered with."""

from __future__ import annotations

import hashlib

from indexer.settings import Settings
from indexer.sources.errors import SourceError
from indexer.sources.s3 import read_object_bytes


def is_object_uri(storage_path: str | None) -> bool:
    """Whether an asset's ``storage_path`` names an object on S3 rather than a file."""
    return bool(storage_path) and str(storage_path).lower().startswith("s3://")


def read_original(settings: Settings, uri: str, sha256: str) -> tuple[bytes | None, str | None]:
    """The original's bytes, or None and the reason it cannot be used (never raises for the
    object: a missing, replaced, oversized or unreachable object fails its asset only)."""
    try:
        data = read_object_bytes(settings, uri, settings.ingest.max_bytes)
    except SourceError as exc:
        return None, f"the original could not be read from object storage ({exc.message})"
    except ValueError as exc:
        return None, str(exc)
    except Exception as exc:  # a stream cut mid-read (botocore/urllib3 errors)
        return None, f"the original could not be read from object storage ({exc})"
    if hashlib.sha256(data).hexdigest() != sha256.lower():
        return None, f"{uri} changed since it was registered (re-scan its source to ingest it)"
    return data, None
