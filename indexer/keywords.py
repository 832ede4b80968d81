"""Keywords in and out of files, through ExifTool (docs/metadata.md).

ExifTool (Phil Harvey's, the reference reader and writer of IPTC and XMP, ``exiftool`` on the
PATH; Debian/Ubuntu package ``libimage-exiftool-perl``, Homebrew ``exiftool``) runs as a
subprocess: one process per batch of files, its arguments in an argument file (``-@``, so no
command-line length limit and no shell), JSON out, every run under a timeout. A Python wrapper
(PyExifTool) was not used: its stay-open reads block without a timeout, and a file that hangs
ExifTool must not hang an ingest worker.

- In: :func:`read_keywords` reads IPTC ``Keywords``, XMP ``dc:subject`` and Lightroom's
  ``lr:hierarchicalSubject`` (``animal|dog``: the leaf ``dog`` is a keyword, the path is kept).
  :func:`ingest_keywords` is the ingest flavour (never raises, one warning per process when
  ExifTool is missing) and :func:`embedded_keywords_step` reads and records one asset.
- Out: :func:`write_xmp_sidecars` writes (or updates) XMP sidecars, :func:`embed_into_copy`
  writes a copy of an image with the keywords embedded; originals are never written.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from indexer.db.labels import label_key
from indexer.errors import RamdexError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

EXIFTOOL_ENV = "RAMDEX_EXIFTOOL"  # an explicit exiftool executable (else: ``exiftool`` on PATH)
INSTALL_HINT = (
    "install ExifTool: apt-get install libimage-exiftool-perl (Debian/Ubuntu), "
    "brew install exiftool (macOS), or see https://exiftool.org; "
    f"or point {EXIFTOOL_ENV} at the exiftool executable"
)
HIERARCHY_SEPARATOR = "|"  # Lightroom's separator in lr:hierarchicalSubject
READ_BATCH = 64  # files per ExifTool process when reading
WRITE_BATCH = 64  # sidecars per ExifTool process when writing
READ_TIMEOUT_S = 30.0  # one batch of reads; a hang is retried file by file
FILE_TIMEOUT_S = 10.0  # one file read alone (after its batch timed out)
WRITE_TIMEOUT_S = 120.0  # one batch of writes
MAX_KEYWORDS = 500  # per file: a hostile file cannot flood the labels table
MAX_KEYWORD_LENGTH = 256  # asset_labels.key / label length

_TAGS = ("IPTC:Keywords", "XMP-dc:Subject", "XMP-lr:HierarchicalSubject")
_warned_missing = False
_warn_lock = threading.Lock()


class ExifToolMissingError(RamdexError):
    """No ExifTool executable could be found."""


class ExifToolError(RamdexError):
    """ExifTool ran but failed (or timed out)."""


class SidecarName(StrEnum):
    """How a sidecar is named: ``photo.jpg.xmp`` (``ext``: digiKam, darktable; never collides
    for photo.jpg + photo.png) or ``photo.xmp`` (``replace``: Lightroom, Bridge)."""

    EXT = "ext"
    REPLACE = "replace"


def sidecar_path(original: str | Path, naming: SidecarName | str = SidecarName.EXT) -> Path:
    """The sidecar of ``original`` under the naming scheme."""
    path = Path(original)
    if SidecarName(naming) is SidecarName.REPLACE:
        return path.with_suffix(".xmp")
    return path.with_name(path.name + ".xmp")


@dataclass(frozen=True)
class Keywords:
    """The keywords one file carries.

    ``names``: every keyword once (first spelling kept, compared by :func:`label_key`): IPTC
    Keywords, dc:subject and the leaves of the hierarchical subjects. ``hierarchical``: the
    hierarchical subjects as written, each a path from broadest to narrowest.
    """

    names: tuple[str, ...] = ()
    hierarchical: tuple[tuple[str, ...], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.names)


@dataclass
class _Batch:
    """Results of one read run: keywords by path, and paths whose read failed."""

    found: dict[str, Keywords] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)


def exiftool_path() -> str:
    """The ExifTool executable to run.

    Raises:
        ExifToolMissingError: not on the PATH (nor at ``RAMDEX_EXIFTOOL``).
    """
    explicit = os.environ.get(EXIFTOOL_ENV)
    if explicit:
        if os.path.isfile(explicit) and os.access(explicit, os.X_OK):
            return explicit
        raise ExifToolMissingError(
            f"{EXIFTOOL_ENV}={explicit!r} is not an executable file", hint=INSTALL_HINT
        )
    found = shutil.which("exiftool")
    if found is None:
        raise ExifToolMissingError("ExifTool (exiftool) is not on the PATH", hint=INSTALL_HINT)
    return found


def _clean(value: Any) -> str | None:
    """One keyword as text: numbers as written, control characters out, whitespace collapsed,
    bounded in length; None when nothing is left."""
    if value is None or isinstance(value, bool | dict | list):
        return None
    text = " ".join("".join(c if c.isprintable() else " " for c in str(value)).split())
    return text[:MAX_KEYWORD_LENGTH] or None


def _values(record: dict[str, Any], tag: str) -> list[Any]:
    value = record.get(tag)
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _keywords_of(record: dict[str, Any]) -> Keywords:
    """Keywords from one ExifTool JSON record (``-G1`` group names)."""
    names: dict[str, str] = {}
    paths: dict[tuple[str, ...], None] = {}

    def add(name: str | None) -> None:
        if name and len(names) < MAX_KEYWORDS:
            names.setdefault(label_key(name), name)

    for raw in _values(record, "XMP-lr:HierarchicalSubject"):
        text = _clean(raw)
        if text is None:
            continue
        parts = tuple(p for p in (_clean(s) for s in text.split(HIERARCHY_SEPARATOR)) if p)
        if parts and len(paths) < MAX_KEYWORDS:
            paths[parts] = None
    for tag in ("IPTC:Keywords", "XMP-dc:Subject"):
        for raw in _values(record, tag):
            add(_clean(raw))
    for parts in paths:
        add(parts[-1])  # "animal|dog": the asset shows a dog
    return Keywords(tuple(names.values()), tuple(paths))


def _argfile(lines: Iterable[str]) -> str:
    """An ExifTool argument file (UTF-8, one argument per line) in a temporary file."""
    fd, name = tempfile.mkstemp(prefix="ramdex-exiftool-", suffix=".args")
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        for line in lines:
            out.write(line + "\n")
    return name


def _run(exe: str, lines: Sequence[str], timeout_s: float) -> subprocess.CompletedProcess[bytes]:
    """Run ExifTool on an argument file.

    Raises:
        subprocess.TimeoutExpired: it ran past ``timeout_s`` (the process is killed).
    """
    name = _argfile(lines)
    try:
        # ``-charset filename=utf8``: the argument file's names are UTF-8 on every platform.
        return subprocess.run(
            [exe, "-charset", "filename=utf8", "-@", name],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout_s,
            check=False,
        )
    finally:
        os.unlink(name)


def _usable(path: str) -> bool:
    # A name with a line break cannot be written to an argument file (one argument per line).
    return "\n" not in path and "\r" not in path


def _read_batch(exe: str, paths: Sequence[str], timeout_s: float) -> _Batch:
    """One ExifTool process over ``paths`` (absolute, so none reads as an option)."""
    lines = [
        "-json",
        "-G1",
        "-fast",  # keywords are never in a JPEG trailer: do not scan for one
        "-charset",
        "iptc=UTF8",  # IPTC without a coded character set: read as UTF-8 (Chinese keywords)
        "-api",
        "LargeFileSupport=1",
        *(f"-{t}" for t in _TAGS),
        *paths,
    ]
    done = _run(exe, lines, timeout_s)
    batch = _Batch()
    try:
        records = json.loads(done.stdout or b"[]")
    except ValueError:
        records = []
    by_path = {
        str(r.get("SourceFile")): _keywords_of(r)
        for r in records if isinstance(r, dict)
    }  # fmt: skip
    for path in paths:
        if path in by_path:
            batch.found[path] = by_path[path]
        else:
            batch.failed.append(path)  # unreadable, not a file ExifTool knows, or gone
    return batch


def read_keywords(
    paths: Iterable[str | Path],
    *,
    batch_size: int = READ_BATCH,
    timeout_s: float = READ_TIMEOUT_S,
    file_timeout_s: float = FILE_TIMEOUT_S,
) -> dict[str, Keywords]:
    """The keywords each file carries (IPTC Keywords, XMP dc:subject, lr:hierarchicalSubject).

    One ExifTool process per ``batch_size`` files. A batch that runs past ``timeout_s`` (a file
    that hangs ExifTool) is read again file by file under ``file_timeout_s``, so one hostile
    file costs only its own keywords. Files ExifTool cannot read are left out of the result.

    Args:
        paths: the files (made absolute; names with line breaks are left out).

    Returns:
        ``{path as given (str): Keywords}`` for every file read (possibly with no keywords).

    Raises:
        ExifToolMissingError: no ExifTool executable.
    """
    exe = exiftool_path()
    wanted = {os.path.abspath(p): str(p) for p in paths if _usable(str(p))}
    absolute = list(wanted)
    result: dict[str, Keywords] = {}
    for start in range(0, len(absolute), batch_size):
        part = absolute[start : start + batch_size]
        try:
            batch = _read_batch(exe, part, timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("exiftool timed out on %d files; reading them one by one", len(part))
            batch = _Batch()
            for one in part:
                try:
                    batch.found.update(_read_batch(exe, [one], file_timeout_s).found)
                except subprocess.TimeoutExpired:
                    log.warning("exiftool timed out reading %s; its keywords are skipped", one)
        for path, keywords in batch.found.items():
            result[wanted[path]] = keywords
    return result


# Byte strings every file that carries IPTC or XMP keywords contains near its start: the XMP
# namespace (JPEG APP1, PNG iTXt, TIFF/WebP/HEIC XMP packets) and Photoshop's IRB header that
# holds IPTC-IIM in JPEG APP13. Files without them cannot hold keywords, so ingest skips the
# ExifTool process for them (most camera and generated images).
_KEYWORD_MARKERS = (
    b"http://ns.adobe.com/xap/1.0/",
    b"XML:com.adobe.xmp",
    b"Photoshop 3.0",
    b"8BIM",
)
_MARKER_SCAN_BYTES = 1 << 20  # metadata sits in the first segments; XMP packets are < 64 KB


def might_carry_keywords(path: str | Path) -> bool:
    """Whether the file's first megabyte holds an XMP packet or IPTC block (cheap; False only
    when the file certainly has no keywords ExifTool would find)."""
    try:
        with open(path, "rb") as f:
            head = f.read(_MARKER_SCAN_BYTES)
    except OSError:
        return False
    return any(marker in head for marker in _KEYWORD_MARKERS)


def ingest_keywords(paths: Iterable[str | Path]) -> dict[str, Keywords]:
    """:func:`read_keywords` for ingest: never raises, so no asset fails over its keywords.

    Without ExifTool it logs one warning per process and returns ``{}``; any other failure
    (ExifTool crashing, an OS error) is logged and reads as no keywords.
    """
    global _warned_missing
    candidates = [p for p in paths if might_carry_keywords(p)]
    if not candidates:
        return {}
    try:
        return read_keywords(candidates)
    except ExifToolMissingError as exc:
        with _warn_lock:
            if not _warned_missing:
                _warned_missing = True
                log.warning("embedded keywords are not read at ingest: %s (%s)", exc, exc.hint)
        return {}
    except Exception as exc:  # hostile files or a broken ExifTool must not fail the asset
        log.warning("reading embedded keywords failed (%s: %s); skipped", type(exc).__name__, exc)
        return {}


def embedded_keywords_step(
    session: Session, asset_id: int, path: str | Path | None, model_name: str
) -> int:
    """Read one asset's file keywords and record them as embedded labels (ingest's step).

    Never raises for the file or a missing ExifTool (see :func:`ingest_keywords`); database
    errors propagate (they belong to the caller's transaction).

    Returns:
        Labels that changed (0 when the file has none, cannot be read, or nothing is new).
    """
    if path is None:
        return 0
    keywords = ingest_keywords([path]).get(str(path))
    if not keywords:
        return 0
    from indexer.db.keyword_repo import record_embedded_keywords

    return record_embedded_keywords(session, asset_id, keywords, model_name)


# -- writing ---------------------------------------------------------------------------------


def _subject_args(subjects: Sequence[str], hierarchical: Sequence[Sequence[str]]) -> list[str]:
    """Assignments that replace dc:subject and lr:hierarchicalSubject with the given lists.

    An empty assignment first clears the list, then each ``=`` adds one item (ExifTool list
    tags); ``-sep`` is not used, so a keyword with a comma stays one keyword.
    """
    args = ["-XMP-dc:Subject="]
    args += [f"-XMP-dc:Subject={s}" for s in _unique(subjects)]
    args.append("-XMP-lr:HierarchicalSubject=")
    paths = [HIERARCHY_SEPARATOR.join(p) for p in hierarchical if p]
    args += [f"-XMP-lr:HierarchicalSubject={p}" for p in _unique(paths)]
    return args


def _unique(items: Iterable[str]) -> list[str]:
    seen: dict[str, str] = {}
    for item in items:
        text = _clean(item)
        if text:
            seen.setdefault(label_key(text), text)
    return list(seen.values())


@dataclass(frozen=True)
class SidecarJob:
    """One sidecar to write: where, and which subjects (hierarchical paths may be empty)."""

    sidecar: Path
    subjects: tuple[str, ...]
    hierarchical: tuple[tuple[str, ...], ...] = ()


_MARK = "{ramdex-done "
_WROTE = re.compile(r"^\s*1 image files (created|updated|unchanged)", re.MULTILINE)


def _reports(stdout: str, n: int) -> list[str]:
    """Each command's part of ExifTool's output, found by the echo marks (missing: "")."""
    reports = [""] * n
    rest = stdout
    for i in range(n):
        mark = f"{_MARK}{i}}}"
        head, found, tail = rest.partition(mark)
        if not found:
            break
        reports[i], rest = head, tail
    return reports


def write_xmp_sidecars(
    jobs: Sequence[SidecarJob], *, batch_size: int = WRITE_BATCH, timeout_s: float = WRITE_TIMEOUT_S
) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Write (or update) XMP sidecars, ``batch_size`` per ExifTool process (``-execute``).

    A new sidecar holds the subjects only; an existing one keeps its other metadata (ratings,
    captions a DAM wrote) and gets its dc:subject and lr:hierarchicalSubject replaced.
    Folders are created as needed. Sidecars are the only files written.

    Returns:
        (sidecars written, [(sidecar, reason)] that failed).

    Raises:
        ExifToolMissingError: no ExifTool executable.
    """
    exe = exiftool_path()
    written: list[Path] = []
    failed: list[tuple[Path, str]] = []
    for start in range(0, len(jobs), batch_size):
        lines: list[str] = []
        usable: list[SidecarJob] = []
        for job in jobs[start : start + batch_size]:
            target = os.path.abspath(job.sidecar)
            if not target.lower().endswith(".xmp") or not _usable(target):
                failed.append((job.sidecar, "a sidecar name must end in .xmp, on one line"))
                continue
            try:  # ExifTool creates a missing .xmp file, but not its folder
                Path(target).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                failed.append((job.sidecar, f"cannot create its folder: {exc.strerror or exc}"))
                continue
            # Writing a missing .xmp file creates it; an existing one is edited in place
            # (no "_original" backup beside it). The echo marks where each command's report ends.
            lines += ["-overwrite_original", *_subject_args(job.subjects, job.hierarchical)]
            lines += [target, "-echo3", f"{_MARK}{len(usable)}}}", "-execute"]
            usable.append(job)
        if not usable:
            continue
        try:
            done = _run(exe, lines, timeout_s)
        except subprocess.TimeoutExpired:
            failed += [(j.sidecar, f"exiftool timed out after {timeout_s:g} s") for j in usable]
            continue
        reports = _reports(done.stdout.decode("utf-8", "replace"), len(usable))
        errors = [
            line for line in done.stderr.decode("utf-8", "replace").splitlines()
            if line.startswith("Error")
        ]  # fmt: skip
        for job, report in zip(usable, reports, strict=True):
            if _WROTE.search(report):
                written.append(Path(job.sidecar))
            else:
                mine = [e for e in errors if e.endswith(os.path.abspath(job.sidecar))]
                failed.append((job.sidecar, (mine or errors or ["not written"])[-1]))
    return written, failed


def write_xmp_sidecar(
    sidecar: str | Path, subjects: Sequence[str], hierarchical: Sequence[Sequence[str]] = ()
) -> Path:
    """Write one XMP sidecar (see :func:`write_xmp_sidecars`).

    Raises:
        ExifToolMissingError: no ExifTool executable.
        ExifToolError: ExifTool could not write it.
    """
    job = SidecarJob(Path(sidecar), tuple(subjects), tuple(tuple(p) for p in hierarchical))
    written, failed = write_xmp_sidecars([job])
    if failed:
        raise ExifToolError(f"cannot write sidecar {sidecar}: {failed[0][1]}")
    return written[0]


def embed_into_copy(
    src: str | Path,
    dst: str | Path,
    subjects: Sequence[str],
    hierarchical: Sequence[Sequence[str]] = (),
    *,
    timeout_s: float = WRITE_TIMEOUT_S,
) -> Path:
    """Write a copy of ``src`` at ``dst`` with the keywords embedded (XMP dc:subject and
    lr:hierarchicalSubject, and IPTC Keywords where the format has IPTC); ``src`` is only read.

    Raises:
        ExifToolMissingError: no ExifTool executable.
        ExifToolError: ``dst`` exists or is ``src``, or ExifTool could not write the copy.
    """
    exe = exiftool_path()
    source, target = Path(os.path.abspath(src)), Path(os.path.abspath(dst))
    if target == source or target.exists():
        raise ExifToolError(
            f"cannot embed keywords into {dst}: it exists (originals are never rewritten)",
            hint="choose an output folder that holds no copies yet",
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    keywords = _unique(subjects)
    lines = ["-o", str(target), *_subject_args(subjects, hierarchical), "-IPTC:Keywords="]
    lines += [f"-IPTC:Keywords={k}" for k in keywords]
    # IPTC is written as UTF-8 and says so (CodedCharacterSet), so Chinese survives.
    lines += ["-charset", "iptc=UTF8", "-IPTC:CodedCharacterSet=UTF8", str(source)]
    try:
        done = _run(exe, lines, timeout_s)
    except subprocess.TimeoutExpired:
        target.unlink(missing_ok=True)
        raise ExifToolError(f"exiftool timed out writing {dst}") from None
    if not target.is_file():
        errors = done.stderr.decode("utf-8", "replace").strip() or "no output"
        raise ExifToolError(f"cannot embed keywords into {dst}: {errors.splitlines()[-1]}")
    return target
