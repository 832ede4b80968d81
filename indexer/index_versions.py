"""Versioned on-disk layout of a FAISS index: one commit point for the index file and its metadata.

Layout, for the logical path ``<dir>/<name>.faiss`` that callers use::

    <name>.faiss -> <name>.versions/v000123/index.faiss    symlink: the commit point
    <name>.versions/v000123/index.faiss                     the FAISS file of version 123
    <name>.versions/v000123/meta.json                       its metadata (model, dim, count, ...)
    <name>.versions/v000122/...                             the previous version, kept a while
    <name>.versions/.lock                                   fcntl lock: one commit at a time

A version folder is written completely (files fsynced, folder fsynced) before the pointer is
swapped with ``os.replace`` of a fresh symlink and the parent folder fsynced, so a reader that
resolves the pointer once gets an index file and metadata of the same version, whatever a writer
does meanwhile: version folders never change after the swap. The pointer is a symlink rather than
a file naming the version so that ``<name>.faiss`` stays an ordinary path to a FAISS file for
every existing caller (``path.exists()``, ``path.stat()``, ``faiss.read_index(path)``).

Old versions are removed by the next commit, keeping the new one and its ``KEEP_VERSIONS - 1``
predecessors. Readers that memory-mapped (or opened) a removed version keep serving it (Linux
keeps unlinked files alive while mapped); a reader that resolved the pointer but had not opened
the files yet finds them gone and resolves again (:func:`read_committed`). A crash before the
swap leaves an unreferenced version folder: readers never see it and the next commit removes it.

The layout before this one, ``<name>.faiss`` a regular file with a ``<name>.json`` sidecar next
to it (two files replaced one after the other), is still read; the first commit migrates it with
a single ``os.replace`` of the file by the pointer, then removes the old sidecar.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)

VERSIONS_SUFFIX = ".versions"
INDEX_FILE = "index.faiss"
META_FILE = "meta.json"
LEGACY_META_SUFFIX = ".json"
LOCK_FILE = ".lock"
KEEP_VERSIONS = 2  # the current version and the one before it
_VERSION_RE = re.compile(r"v(\d{6,})")
_T = TypeVar("_T")


class TornReadError(ValueError):
    """An index file and its metadata disagree (a reader caught a writer between two steps)."""


@dataclass(frozen=True, slots=True)
class IndexFiles:
    """The files of one committed state of an index.

    Attributes:
        index: the FAISS file.
        meta: its JSON metadata.
        version: the version folder's name (``v000123``); None in the old two-file layout.
        token: changes whenever a writer commits (cheap to compare, see :func:`current_token`).
    """

    index: Path
    meta: Path
    version: str | None
    token: tuple[Any, ...]


def versions_dir(path: Path | str) -> Path:
    """The folder holding the version folders of the index at ``path``."""
    path = Path(path)
    return path.with_name(path.stem + VERSIONS_SUFFIX)


def legacy_meta_path(path: Path | str) -> Path:
    """The JSON sidecar of the old two-file layout (``<name>.json`` next to ``<name>.faiss``)."""
    return Path(path).with_suffix(LEGACY_META_SUFFIX)


def _pointed_version(path: Path) -> str | None:
    """The version the pointer names; None when ``path`` is not a pointer (old layout).

    Raises:
        FileNotFoundError: nothing at ``path``.
    """
    try:
        target = os.readlink(path)
    except OSError as exc:
        if not path.exists():  # neither a link nor a file (a dangling link counts as missing)
            raise FileNotFoundError(f"no FAISS index at {path}") from exc
        return None  # a regular file: the old layout
    parts = target.split("/")  # checked on every search (reload_if_changed): no Path objects
    if (
        len(parts) == 3
        and parts[2] == INDEX_FILE
        and parts[0] == path.stem + VERSIONS_SUFFIX
        and _VERSION_RE.fullmatch(parts[1])
    ):
        return parts[1]
    return None  # a symlink of the user's own (e.g. to another disk): treat as an old-layout file


def current_token(path: Path | str) -> tuple[Any, ...]:
    """What identifies the committed state at ``path`` now: one ``readlink`` (plus a ``stat`` for
    the old layout). Compare with :attr:`IndexFiles.token` to know whether a writer committed.

    Raises:
        FileNotFoundError: no index at ``path``.
    """
    path = Path(path)
    version = _pointed_version(path)
    if version is not None:
        return ("version", version)
    st = os.stat(path)
    return ("file", st.st_ino, st.st_mtime_ns, st.st_size)


def resolve(path: Path | str) -> IndexFiles:
    """The files of the state committed at ``path`` (read the pointer once).

    Raises:
        FileNotFoundError: no index at ``path``.
    """
    path = Path(path)
    version = _pointed_version(path)
    if version is None:
        st = os.stat(path)
        token = ("file", st.st_ino, st.st_mtime_ns, st.st_size)
        return IndexFiles(path, legacy_meta_path(path), None, token)
    folder = versions_dir(path) / version
    return IndexFiles(folder / INDEX_FILE, folder / META_FILE, version, ("version", version))


def read_committed(path: Path | str, read: Callable[[IndexFiles], _T], *, attempts: int = 20) -> _T:
    """``read(files)`` on the state committed at ``path``, again on a newer one when a writer
    committed (and removed the files being opened) meanwhile.

    Retries a missing file only when the pointer moved since it was resolved (otherwise the file
    is really missing) and a :class:`TornReadError` only in the old layout (whose writer replaced
    two files one after the other); in the versioned layout a disagreement is damage.

    Raises:
        FileNotFoundError, TornReadError: as raised by ``read`` when retrying cannot help.
    """
    path = Path(path)
    for attempt in range(attempts):
        files = resolve(path)
        try:
            return read(files)
        except (FileNotFoundError, TornReadError) as exc:
            try:
                moved = current_token(path) != files.token
            except FileNotFoundError:
                raise exc from None
            legacy_torn = isinstance(exc, TornReadError) and files.version is None
            if attempt == attempts - 1 or not (moved or legacy_torn):
                raise
            time.sleep(min(0.001 * 2**attempt, 0.05))  # let the writer finish its step
    raise AssertionError("unreachable")


def read_json(path: Path) -> dict[str, Any]:
    """A metadata file's object.

    Raises:
        FileNotFoundError: no file.
        ValueError: not a JSON object.
    """
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not an index metadata file")
    return data


_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()


@contextlib.contextmanager
def _commit_lock(folder: Path) -> Iterator[None]:
    """One commit at a time per index: across processes (flock) and threads of this process."""
    with _thread_locks_guard:
        local = _thread_locks.setdefault(str(folder), threading.Lock())
    with local, open(folder / LOCK_FILE, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def commit(
    path: Path | str,
    write_index: Callable[[Path], None],
    meta: dict[str, Any],
    *,
    keep: int = KEEP_VERSIONS,
) -> IndexFiles:
    """Write a new version of the index at ``path`` and make it the committed one.

    Args:
        write_index: writes the FAISS file to the path it is given.
        meta: the metadata; ``version`` and ``previous`` (the version it replaces) are added.
        keep: versions kept after the commit, the new one included (older ones are removed).

    Returns:
        The files of the new version.
    """
    path = Path(path)
    folder = versions_dir(path)
    folder.mkdir(parents=True, exist_ok=True)
    with _commit_lock(folder):
        try:
            previous = _pointed_version(path)
        except FileNotFoundError:
            previous = None
        version = f"v{_next_number(folder):06d}"
        target = folder / version
        target.mkdir()
        pointer_tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            write_index(target / INDEX_FILE)
            _fsync(target / INDEX_FILE)
            body = dict(meta, version=version, previous=previous or "")
            (target / META_FILE).write_text(json.dumps(body, indent=1))
            _fsync(target / META_FILE)
            _fsync_dir(target)
            _fsync_dir(folder)
            _swap_pointer(path, pointer_tmp, f"{folder.name}/{version}/{INDEX_FILE}")
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            pointer_tmp.unlink(missing_ok=True)
            raise
        # Committed. What follows only tidies up; a failure there must not fail the save.
        try:
            legacy = legacy_meta_path(path)
            if legacy.exists():  # migrated from the two-file layout: the old sidecar is dead
                legacy.unlink(missing_ok=True)
                _fsync_dir(path.parent)
            _collect_garbage(path, folder, version, previous, keep)
        except OSError as exc:
            log.warning("could not remove old versions of %s: %s", path, exc)
    return IndexFiles(target / INDEX_FILE, target / META_FILE, version, ("version", version))


def _swap_pointer(path: Path, tmp: Path, target: str) -> None:
    """Point ``path`` at ``target`` in one ``os.replace`` (the commit), then make it durable."""
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _next_number(folder: Path) -> int:
    numbers = [int(m.group(1)) for p in folder.iterdir() if (m := _VERSION_RE.fullmatch(p.name))]
    return max(numbers, default=0) + 1


def _collect_garbage(
    path: Path, folder: Path, current: str, previous: str | None, keep: int
) -> None:
    """Remove versions other than the current one and its ``keep - 1`` predecessors, the folders
    of crashed commits, and temporary pointers and files of crashed saves (under the lock)."""
    kept = {current}
    name = previous
    while name and len(kept) < max(1, keep):
        kept.add(name)
        try:
            name = str(read_json(folder / name / META_FILE).get("previous") or "")
        except (OSError, ValueError):
            break
    for entry in folder.iterdir():
        if _VERSION_RE.fullmatch(entry.name) and entry.name not in kept:
            shutil.rmtree(entry, ignore_errors=True)
    # leftovers of a crashed save: our temporary pointers, and the old layout's temporary files
    stale = (f".{path.name}.", f"{path.name}.", f"{legacy_meta_path(path).name}.")
    for entry in path.parent.iterdir():
        if entry.name.endswith(".tmp") and entry.name.startswith(stale):
            entry.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem allows fsync on a directory
        _fsync(path)
