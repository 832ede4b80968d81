"""Server-path confinement: which files may be registered by a path on the server.

``storage.allowed_roots`` lists folders. A path is allowed when its fully resolved form (every
symlink followed, ``..`` removed) lies inside one of the resolved roots, so a link inside an
allowed folder that points outside it is refused like the outside path itself.

The refusal never says whether the path exists: :data:`NOT_ALLOWED` is the same text for a
missing file, a forbidden one and a link leading out, and the check never stats the target beyond
what resolving the path needs. Residual risk: someone who can write inside an allowed root can
swap a checked link between this check and the open; registration opens the resolved path to
narrow that window.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

NOT_ALLOWED = "not found or not allowed: server paths must lie inside storage.allowed_roots"
NO_ROOTS = (
    "registering server paths is off: set storage.allowed_roots "
    "(RAMDEX_STORAGE__ALLOWED_ROOTS='[\"/srv/photos\"]') to the folders that may be read"
)


class PathNotAllowedError(ValueError):
    """A server path outside the allowed roots (or no roots configured)."""

    def __init__(self, path: str, reason: str = NOT_ALLOWED) -> None:
        super().__init__(reason)
        self.path = path
        self.reason = reason


def resolve_roots(roots: Iterable[str | Path]) -> tuple[Path, ...]:
    """The roots as resolved absolute folders (a root that is itself a link counts by target)."""
    return tuple(Path(os.path.realpath(Path(r).expanduser())) for r in roots)


def is_inside(path: str | Path, roots: Sequence[Path]) -> bool:
    """Whether ``path`` resolves inside one of ``roots`` (already resolved, see
    :func:`resolve_roots`). A relative path or one holding a NUL byte is never inside."""
    text = os.fspath(path)
    if "\x00" in text or not os.path.isabs(text):
        return False
    resolved = Path(os.path.realpath(text))
    return any(resolved == root or resolved.is_relative_to(root) for root in roots)


def check_server_path(path: str | Path, roots: Iterable[str | Path]) -> Path:
    """The resolved form of ``path`` when it lies inside ``roots``.

    Raises:
        PathNotAllowedError: no roots are configured (:data:`NO_ROOTS`), or the path resolves
            outside them (:data:`NOT_ALLOWED`, whether or not it exists).
    """
    resolved_roots = resolve_roots(roots)
    if not resolved_roots:
        raise PathNotAllowedError(os.fspath(path), NO_ROOTS)
    if not is_inside(path, resolved_roots):
        raise PathNotAllowedError(os.fspath(path))
    return Path(os.path.realpath(path))


def check_server_paths(paths: Iterable[str], roots: Iterable[str | Path]) -> list[str]:
    """All of ``paths`` when each lies inside ``roots`` (see :func:`check_server_path`).

    Raises:
        PathNotAllowedError: for the first path that does not.
    """
    resolved_roots = resolve_roots(roots)
    checked = list(paths)
    if checked and not resolved_roots:
        raise PathNotAllowedError(checked[0], NO_ROOTS)
    for p in checked:
        if not is_inside(p, resolved_roots):
            raise PathNotAllowedError(p)
    return checked
