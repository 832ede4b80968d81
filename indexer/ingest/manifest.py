"""Bulk ingest from a manifest (``ramdex ingest --manifest FILE``): CSV or Parquet.

Two durable steps, each resumable after any interruption (``kill -9`` included):

1. **Stage**: the file is streamed (``csv`` module / pyarrow ``iter_batches``, memory flat in
   the file size) into ``manifest_rows`` in batches (PostgreSQL ``COPY``, SQLite
   ``executemany``); each batch commits together with ``manifests.rows_registered``, the
   manifest offset, so a re-run skips exactly the rows already staged (no duplicates: the key
   is ``(manifest_id, row_no)``).
2. **Ingest**: staged rows go to :func:`indexer.ingest.pipeline.ingest` in chunks (fetch or
   read, hash, dedup by SHA-256, dispatch, process); ``manifests.rows_ingested`` moves after
   each chunk. A chunk cut short is run again: assets are deduplicated by content, so its rows
   come back ``resumed`` or ``duplicate``, never as new assets.

Columns: the source is the first column named ``url``, ``path`` or ``uri`` (case-insensitive);
``id`` (optional) is the caller's external id; every other column is kept as the row's
``metadata`` (a JSON object). Relative paths are taken relative to the manifest's folder.
A malformed row (empty source, a source over ``MAX_URI_BYTES``, a URL scheme other than
http/https) is counted, reported and skipped; a file the parser cannot read is refused whole.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from indexer.db.assets import MAX_URI_BYTES
from indexer.db.manifests import Manifest, ManifestRow
from indexer.db.session import session_scope
from indexer.errors import RamdexError
from indexer.ingest.register import is_url
from indexer.settings import Settings

SOURCE_COLUMNS = ("url", "path", "uri")
ID_COLUMN = "id"
FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
MAX_REPORTED = 20


class ManifestError(RamdexError):
    """A manifest that cannot be used (missing, unknown format, no source column, unreadable)."""


@dataclass(frozen=True)
class ManifestRecord:
    """One valid row: its number (0-based, in file order), source, external id, metadata."""

    row_no: int
    uri: str
    external_id: str | None
    meta: dict[str, Any] | None


@dataclass
class StageResult:
    """What staging did: rows staged now and before, malformed rows (first few with reasons)."""

    manifest_id: int
    rows_total: int = 0
    rows_staged_now: int = 0
    rows_skipped_resume: int = 0
    malformed: int = 0
    malformed_examples: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def rate(self) -> float:
        """Rows staged per second by this run."""
        return self.rows_staged_now / self.elapsed_s if self.elapsed_s > 0 else 0.0


def manifest_format(path: Path) -> str:
    """``csv`` or ``parquet`` from the file name; raises :class:`ManifestError` otherwise."""
    if not path.is_file():
        raise ManifestError(f"--manifest {path}: no such file")
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ManifestError(
            f"--manifest {path}: unknown format {path.suffix or '(no extension)'!r}; "
            "use a .csv or .parquet file"
        )
    return fmt


def _columns(path: Path, names: list[str]) -> tuple[str, str | None]:
    lowered = {n.strip().lower(): n for n in names}
    source = next((lowered[c] for c in SOURCE_COLUMNS if c in lowered), None)
    if source is None:
        raise ManifestError(
            f"--manifest {path}: no url, path or uri column (columns: {', '.join(names)[:200]})"
        )
    return source, lowered.get(ID_COLUMN)


def _clean(row_no: int, value: Any, base: Path) -> tuple[str | None, str | None]:
    """(source, None) for a usable cell, (None, reason) for a malformed one."""
    text = "" if value is None else str(value).strip()
    if not text:
        return None, f"row {row_no + 1}: empty url/path"
    if is_url(text):
        if not text.lower().startswith(("http://", "https://")):
            return None, f"row {row_no + 1}: only http and https URLs can be ingested"
    else:
        text = os.path.normpath(os.path.join(base, os.path.expanduser(text)))
    if len(text.encode("utf-8", "surrogatepass")) > MAX_URI_BYTES:
        return None, f"row {row_no + 1}: source longer than {MAX_URI_BYTES} bytes"
    return text, None


def _json_safe(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return str(value)


def _raw_rows(path: Path, fmt: str, batch: int) -> Iterator[tuple[str, str | None, list[dict]]]:
    """Yield (source column, id column, a batch of row dicts) streaming the file."""
    if fmt == "csv":
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            try:
                names = list(reader.fieldnames or [])
            except (csv.Error, UnicodeDecodeError) as exc:
                raise ManifestError(f"--manifest {path}: not readable as CSV ({exc})") from None
            source, ident = _columns(path, names)
            rows: list[dict] = []
            try:
                for row in reader:
                    rows.append(row)
                    if len(rows) >= batch:
                        yield source, ident, rows
                        rows = []
            except (csv.Error, UnicodeDecodeError) as exc:
                raise ManifestError(
                    f"--manifest {path}: line {reader.line_num}: not readable as CSV ({exc})"
                ) from None
            if rows:
                yield source, ident, rows
        return
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - the parquet extra is not installed
        raise ManifestError(
            "--manifest: Parquet needs pyarrow: pip install 'ramdex[parquet]'"
        ) from None
    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid and friends
        raise ManifestError(f"--manifest {path}: not readable as Parquet ({exc})") from None
    source, ident = _columns(path, list(parquet.schema_arrow.names))
    for record_batch in parquet.iter_batches(batch_size=batch):
        yield source, ident, record_batch.to_pylist()


def count_rows(path: Path, fmt: str) -> int | None:
    """Rows in the file (for the ETA): Parquet metadata, or newlines of a CSV (approximate when
    cells hold quoted newlines); memory flat."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            return int(pq.ParquetFile(path).metadata.num_rows)
        except Exception as exc:  # pyarrow raises ArrowInvalid and friends
            raise ManifestError(f"--manifest {path}: not readable as Parquet ({exc})") from None
    lines = 0
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            lines += chunk.count(b"\n")
    return max(lines - 1, 0)


def read_manifest(
    path: Path, batch: int = 10_000, skip: int = 0
) -> Iterator[tuple[int, list[ManifestRecord], list[str]]]:
    """Stream a manifest in batches: (rows read so far, valid records, malformed reasons).

    ``skip`` rows (already staged by an earlier run) are read past without being returned.
    """
    fmt = manifest_format(path)
    base = path.resolve().parent
    row_no = 0
    for source, ident, rows in _raw_rows(path, fmt, batch):
        if row_no + len(rows) <= skip:
            row_no += len(rows)
            continue
        records: list[ManifestRecord] = []
        bad: list[str] = []
        for row in rows:
            number = row_no
            row_no += 1
            if number < skip:
                continue
            if None in row:  # csv: more cells than the header names
                row.pop(None)
            uri, reason = _clean(number, row.get(source), base)
            if uri is None:
                bad.append(reason or f"row {number + 1}: malformed")
                continue
            ext = row.get(ident) if ident else None
            meta = {str(k): _json_safe(v) for k, v in row.items() if k not in (source, ident)}
            records.append(
                ManifestRecord(number, uri, None if ext in (None, "") else str(ext), meta or None)
            )
        yield row_no, records, bad


def manifest_key(path: Path) -> str:
    """Identity of a manifest file: absolute path, size and modification time."""
    st = path.stat()
    text = f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}"
    return hashlib.sha256(text.encode()).hexdigest()


def open_manifest(url: str, path: Path) -> Manifest:
    """The manifest's row (created on first sight); a copy detached from the session."""
    key = manifest_key(path)
    fmt = manifest_format(path)
    with session_scope(url) as session:
        found = session.execute(sa.select(Manifest).where(Manifest.key == key)).scalar_one_or_none()
        if found is None:
            found = Manifest(key=key, path=str(path.resolve()), format=fmt)
            session.add(found)
            session.flush()
        session.expunge(found)
    return found


def _copy_rows(session: Any, manifest_id: int, records: list[ManifestRecord]) -> None:
    """Insert staged rows: ``COPY`` on PostgreSQL, ``executemany`` on SQLite."""
    if session.get_bind().dialect.name == "postgresql":
        raw = session.connection().connection.driver_connection
        with raw.cursor() as cur:
            with cur.copy(
                "COPY manifest_rows (manifest_id, row_no, uri, external_id, metadata) FROM STDIN"
            ) as copy:
                for r in records:
                    meta = json.dumps(r.meta, ensure_ascii=False) if r.meta else None
                    copy.write_row((manifest_id, r.row_no, r.uri, r.external_id, meta))
        return
    session.execute(
        sa.insert(ManifestRow),
        [
            {
                "manifest_id": manifest_id,
                "row_no": r.row_no,
                "uri": r.uri,
                "external_id": r.external_id,
                "meta": r.meta,
            }
            for r in records
        ],
    )


def stage_manifest(
    settings: Settings,
    path: Path,
    *,
    batch: int = 10_000,
    on_progress: Any = None,
) -> StageResult:
    """Stream the manifest into ``manifest_rows``, continuing after the durable offset.

    Each batch and the new offset commit in one transaction. ``on_progress(rows)`` is called
    with the rows read per batch (including rows skipped because an earlier run staged them).
    """
    url = settings.database_url
    started = time.monotonic()
    state = open_manifest(url, path)
    result = StageResult(manifest_id=state.id, malformed=state.rows_malformed)
    result.rows_skipped_resume = state.rows_registered
    result.rows_total = state.rows_registered
    if state.complete:
        result.elapsed_s = time.monotonic() - started
        return result
    if on_progress and state.rows_registered:
        on_progress(state.rows_registered)
    for offset, records, bad in read_manifest(path, batch, skip=state.rows_registered):
        with session_scope(url) as session:
            if records:
                _copy_rows(session, state.id, records)
            session.execute(
                sa.update(Manifest)
                .where(Manifest.id == state.id)
                .values(
                    rows_registered=offset,
                    rows_malformed=Manifest.rows_malformed + len(bad),
                )
            )
        if on_progress:
            on_progress(offset - result.rows_total)
        result.rows_staged_now += len(records)
        result.malformed += len(bad)
        room = MAX_REPORTED - len(result.malformed_examples)
        result.malformed_examples.extend(bad[: max(room, 0)])
        result.rows_total = offset
    with session_scope(url) as session:
        session.execute(sa.update(Manifest).where(Manifest.id == state.id).values(complete=True))
    result.elapsed_s = time.monotonic() - started
    return result


def staged_chunks(url: str, manifest_id: int, chunk: int) -> Iterator[tuple[int, list[str]]]:
    """(last row number, sources) of staged rows not handed to ingest yet, in row order."""
    with session_scope(url) as session:
        after = session.execute(
            sa.select(Manifest.rows_ingested).where(Manifest.id == manifest_id)
        ).scalar_one()
    while True:
        with session_scope(url) as session:
            rows = session.execute(
                sa.select(ManifestRow.row_no, ManifestRow.uri)
                .where(ManifestRow.manifest_id == manifest_id, ManifestRow.row_no >= after)
                .order_by(ManifestRow.row_no)
                .limit(chunk)
            ).all()
        if not rows:
            return
        after = int(rows[-1].row_no) + 1
        yield after, [r.uri for r in rows]


def mark_ingested(url: str, manifest_id: int, upto: int) -> None:
    """Rows before ``upto`` were handed to ingest (and their job finished or queued)."""
    with session_scope(url) as session:
        session.execute(
            sa.update(Manifest).where(Manifest.id == manifest_id).values(rows_ingested=upto)
        )


def manifest_stage_text(result: StageResult) -> str:
    """One summary line of the staging step."""
    resumed = (
        f", {result.rows_skipped_resume} read by an earlier run"
        if result.rows_skipped_resume
        else ""
    )
    return (
        f"manifest: {result.rows_staged_now} rows registered in {result.elapsed_s:.1f} s "
        f"({result.rate:,.0f}/s){resumed}, {result.malformed} malformed rows skipped"
    )


@dataclass
class ManifestSummary:
    """A manifest run: the staging step and the ingest totals over every chunk's job."""

    stage: StageResult
    job_ids: list[int] = field(default_factory=list)
    submitted: int = 0
    done: int = 0
    duplicate: int = 0
    failed: int = 0
    queued: int = 0
    resumed: int = 0
    failures: list[Any] = field(default_factory=list)
    elapsed_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "manifest_id": self.stage.manifest_id,
            "rows": self.stage.rows_total,
            "rows_registered_now": self.stage.rows_staged_now,
            "rows_registered_before": self.stage.rows_skipped_resume,
            "register_rate": round(self.stage.rate, 1),
            "malformed": self.stage.malformed,
            "malformed_examples": self.stage.malformed_examples,
            "job_ids": self.job_ids,
            "submitted": self.submitted,
            "done": self.done,
            "duplicate": self.duplicate,
            "failed": self.failed,
            "queued": self.queued,
            "resumed": self.resumed,
            "elapsed_s": round(self.elapsed_s, 3),
            "failures": [{"source": f.source, "reason": f.reason} for f in self.failures],
        }


def ingest_manifest(
    path: Path,
    *,
    settings: Settings,
    wait: bool = True,
    retry_failed: bool = False,
    progress: bool | None = None,
    batch: int = 10_000,
    chunk: int = 10_000,
    stage_only: bool = False,
) -> ManifestSummary:
    """Stage the manifest (resumable), then ingest its staged rows chunk by chunk (resumable).

    Each chunk is one ingest job (:func:`indexer.ingest.pipeline.ingest`: paths obey
    ``storage.allowed_roots``, URLs go through the SSRF-safe fetcher).
    """
    from indexer.ingest.pipeline import ingest, progress_bar
    from indexer.stores import ensure_schema

    started = time.monotonic()
    url = settings.database_url
    fmt = manifest_format(path)
    ensure_schema(url)
    bar = progress_bar(count_rows(path, fmt) or 0, progress, "register manifest")
    bar.unit = "row"
    try:
        stage = stage_manifest(settings, path, batch=batch, on_progress=bar.update)
    finally:
        bar.close()
    summary = ManifestSummary(stage=stage)
    if stage_only:
        summary.elapsed_s = time.monotonic() - started
        return summary
    for upto, uris in staged_chunks(url, stage.manifest_id, chunk):
        part = ingest(
            uris, settings=settings, wait=wait, retry_failed=retry_failed, progress=progress
        )
        if part.job_id is not None:
            summary.job_ids.append(part.job_id)
        summary.submitted += part.submitted
        summary.done += part.done
        summary.duplicate += part.duplicate
        summary.failed += part.failed
        summary.queued += part.queued
        summary.resumed += part.resumed
        summary.failures.extend(part.failures[: max(MAX_REPORTED * 5 - len(summary.failures), 0)])
        mark_ingested(url, stage.manifest_id, upto)
    summary.elapsed_s = time.monotonic() - started
    return summary
