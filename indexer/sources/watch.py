"""Watched folders: watchdog events turned into files ready to read.

A file is ready once it has had no event for ``settle_s`` *and* its size and mtime stayed the
same over that time, so a file still being written (a camera upload, a slow copy) is read once,
complete. A deleted file is ready as soon as it stayed missing that long. A folder created,
moved or deleted asks for a full scan of the source instead (watchdog reports a moved-in tree
as one event).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler

_Signature = tuple[int, int] | None  # (size, mtime_ns), None: missing


def _signature(path: Path) -> _Signature:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (int(st.st_size), int(st.st_mtime_ns))


class Debouncer:
    """Paths touched lately, handed out once they settled (see the module docstring)."""

    def __init__(self, settle_s: float) -> None:
        self.settle_s = settle_s
        self._lock = threading.Lock()
        self._pending: dict[Path, tuple[_Signature, float]] = {}

    def touch(self, path: Path) -> None:
        """An event for ``path``: it settles ``settle_s`` from now at the earliest."""
        with self._lock:
            self._pending[path] = (_signature(path), time.monotonic())

    def ready(self) -> list[Path]:
        """Paths that settled (they leave the pending set); the others stay."""
        now = time.monotonic()
        out: list[Path] = []
        with self._lock:
            for path, (sig, since) in list(self._pending.items()):
                current = _signature(path)
                if current != sig:
                    self._pending[path] = (current, now)  # still being written
                elif now - since >= self.settle_s:
                    out.append(path)
                    del self._pending[path]
        return out

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)


class _Handler(FileSystemEventHandler):
    def __init__(self, watch: FolderWatch) -> None:
        self.watch = watch

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return  # reads, not changes
        if event.is_directory:
            if event.event_type in ("created", "deleted", "moved"):
                self.watch.full_scan.set()
            return
        for raw in (event.src_path, getattr(event, "dest_path", "")):
            if raw:
                self.watch.debouncer.touch(Path(os.fsdecode(raw)))


class FolderWatch:
    """One folder source under watch (scheduled on a shared watchdog observer)."""

    def __init__(self, source_id: int, folder: Path, settle_s: float) -> None:
        self.source_id = source_id
        self.folder = folder
        self.debouncer = Debouncer(settle_s)
        self.full_scan = threading.Event()
        self.handle: Any = None

    def take_ready(self) -> tuple[list[Path], bool]:
        """Files ready to read (or to mark gone), and whether a full scan was asked for."""
        full = self.full_scan.is_set()
        self.full_scan.clear()
        return self.debouncer.ready(), full


class Watcher:
    """The watchdog observer of this process and the folders it watches."""

    def __init__(self, settle_s: float) -> None:
        self.settle_s = settle_s
        self.watches: dict[int, FolderWatch] = {}
        self._observer: Any = None

    def _started_observer(self) -> Any:
        if self._observer is None:
            from watchdog.observers import Observer

            self._observer = Observer()
            self._observer.daemon = True
            self._observer.start()
        return self._observer

    def sync(self, wanted: dict[int, Path]) -> list[int]:
        """Watch exactly ``wanted`` (source id -> folder); returns the sources newly watched."""
        started: list[int] = []
        stale = [s for s, w in self.watches.items() if wanted.get(s) != w.folder]
        for sid in stale:
            self.unwatch(sid)
        for sid, folder in wanted.items():
            if sid in self.watches or not folder.is_dir():
                continue
            watch = FolderWatch(sid, folder, self.settle_s)
            watch.handle = self._started_observer().schedule(
                _Handler(watch), str(folder), recursive=True
            )
            self.watches[sid] = watch
            started.append(sid)
        return started

    def unwatch(self, source_id: int) -> None:
        """Stop watching one source's folder."""
        watch = self.watches.pop(source_id, None)
        if watch is not None and self._observer is not None and watch.handle is not None:
            try:
                self._observer.unschedule(watch.handle)
            except (KeyError, ValueError):  # already gone with its folder
                pass

    def close(self) -> None:
        """Stop every watch and the observer thread."""
        for sid in list(self.watches):
            self.unwatch(sid)
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
