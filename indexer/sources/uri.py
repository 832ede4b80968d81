"""What a source URI names: ``s3://BUCKET[/PREFIX]`` or an absolute folder path."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from indexer.allowed_roots import PathNotAllowedError, check_server_path
from indexer.db.sources import SourceKind
from indexer.settings import parse_token_store_url
from indexer.sources.errors import SourceError


@dataclass(frozen=True)
class SourceRef:
    """A parsed source: its kind, its canonical URI, and the bucket and prefix (S3) or folder.

    ``prefix`` has no surrounding slashes ("" = the whole bucket); keys are listed under
    ``prefix + "/"``.
    """

    kind: SourceKind
    uri: str
    bucket: str = ""
    prefix: str = ""
    folder: Path | None = None

    def key_uri(self, key: str) -> str:
        """The URI of one object of the source (what its asset's source row records)."""
        if self.kind is SourceKind.S3:
            return f"s3://{self.bucket}/{self.list_prefix}{key}"
        assert self.folder is not None
        return str(self.folder / key)

    @property
    def list_prefix(self) -> str:
        """The S3 listing prefix: ``prefix/`` (never a sibling ``prefix2/``), or "" for all."""
        return f"{self.prefix}/" if self.prefix else ""


def parse_source_uri(text: str) -> SourceRef:
    """Parse a source URI (no network, no file system access beyond resolving a path).

    Raises:
        SourceError: an ``s3://`` URI without a valid bucket, another scheme, or a relative path.
    """
    raw = (text or "").strip()
    if not raw:
        raise SourceError("the source is empty", hint="give s3://BUCKET/PREFIX or a folder path")
    if "://" in raw:
        scheme = raw.split("://", 1)[0].lower()
        if scheme != "s3":
            raise SourceError(
                f"unsupported source {raw!r}: sources are s3://BUCKET/PREFIX or a folder",
                hint="for http(s) URLs use `ramdex ingest URL`",
            )
        if not raw.split("://", 1)[1].split("/", 1)[0]:
            raise SourceError(
                f"{raw!r} names no bucket", hint="write s3://BUCKET or s3://BUCKET/PREFIX"
            )
        try:
            bucket, prefix = parse_token_store_url(raw)
        except ValueError as exc:
            raise SourceError(str(exc), hint="write s3://BUCKET or s3://BUCKET/PREFIX") from exc
        uri = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        return SourceRef(SourceKind.S3, uri, bucket=bucket, prefix=prefix)
    if "\x00" in raw:
        raise SourceError("a folder path cannot contain NUL bytes")
    path = Path(raw).expanduser()
    if not path.is_absolute():
        path = Path(os.path.abspath(path))
    return SourceRef(SourceKind.FOLDER, str(path), folder=path)


def check_folder(ref: SourceRef, allowed_roots: list[Path], *, require_roots: bool) -> SourceRef:
    """A folder source that exists and may be read: inside ``storage.allowed_roots`` when they
    are set (or always, with ``require_roots``: the API never reads unconfined server paths).

    Returns:
        The source with its folder resolved (links followed), as it will be walked.

    Raises:
        SourceError: missing, not a folder, or outside the allowed roots (one message for
            missing and forbidden when roots confine it, as for ingest).
    """
    assert ref.folder is not None
    folder = ref.folder
    if allowed_roots or require_roots:
        try:
            folder = check_server_path(folder, allowed_roots)
        except PathNotAllowedError as exc:
            raise SourceError(
                f"{ref.uri}: {exc.reason}",
                hint="add the folder to storage.allowed_roots (RAMDEX_STORAGE__ALLOWED_ROOTS)",
                kind="source-forbidden" if allowed_roots else "invalid-source",
            ) from exc
        if not folder.is_dir():
            raise SourceError(
                f"{ref.uri}: not a folder inside storage.allowed_roots",
                hint="check the path; sources name folders, not files",
            )
    else:
        if not folder.exists():
            raise SourceError(f"folder {ref.uri} does not exist", hint="check the path")
        if not folder.is_dir():
            raise SourceError(
                f"{ref.uri} is not a folder",
                hint="sources are folders; ingest a file with `ramdex ingest FILE`",
            )
        folder = Path(os.path.realpath(folder))
    return SourceRef(SourceKind.FOLDER, str(folder), folder=folder)
