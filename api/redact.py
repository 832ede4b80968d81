"""Server paths hidden from read-only keys.

An asset registered from a server path records that path as its source, and jobs record the paths
they were given and the files that failed. A read key may search and view assets, but where the
files live on the server (user names in home folders, mount layout) is the administrator's
business: unless ``api.read_keys_see_paths`` is set, read-only keys see ``server:<file name>``
instead of the path, and paths inside error texts are cut to their file name the same way. Write
and admin keys (and a server without keys) see everything.
"""

from __future__ import annotations

import re
from typing import Any

from api.auth import Principal, Scope
from indexer.settings import Settings

# A POSIX absolute path inside text: a slash not preceded by a word character, ':' or '.', so
# "application/json" and "https://host/x" are left alone.
_EMBEDDED_PATH = re.compile(r"""(?<![\w:./])/(?:[^\s'"/]+/)*([^\s'"/]+)""")


def sees_server_paths(principal: Principal, settings: Settings) -> bool:
    """Whether ``principal`` may see server paths (write scope, or the setting allows reads)."""
    return settings.api.read_keys_see_paths or principal.allows(Scope.write)


def is_server_path(text: str) -> bool:
    """Whether a recorded source is a server path (not a URL or an ``upload:`` name)."""
    return text.startswith("/") or bool(re.match(r"^[A-Za-z]:[\\/]", text))


def hide_path(text: str) -> str:
    """``/srv/photos/2024/a.jpg`` -> ``server:a.jpg``; anything else unchanged."""
    if not is_server_path(text):
        return text
    name = re.split(r"[\\/]", text.rstrip("/\\"))[-1]
    return f"server:{name}"


def hide_paths_in_text(text: str) -> str:
    """Every absolute path inside a message cut to ``server:<file name>``."""
    return _EMBEDDED_PATH.sub(lambda m: f"server:{m.group(1)}", text)


def hide_paths_in(value: Any) -> Any:
    """A copy of a JSON-like value (job params) with every server path hidden."""
    if isinstance(value, str):
        return hide_path(value) if is_server_path(value) else hide_paths_in_text(value)
    if isinstance(value, list):
        return [hide_paths_in(v) for v in value]
    if isinstance(value, dict):
        return {k: hide_paths_in(v) for k, v in value.items()}
    return value
