"""Where published RAM++ weights live, and an explicit, resumable download step.

Nothing here runs at import or inside model constructors: weights are fetched only when a user
asks (``ramdex models download``).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit


@dataclass(frozen=True)
class PretrainedWeights:
    """A published checkpoint on the Hugging Face hub."""

    config: str  # registered config name
    repo_id: str
    filename: str
    size_hint: str
    licence: str
    input_size: int = 384


PRETRAINED: dict[str, PretrainedWeights] = {
    "ram_plus_swin_large_14m": PretrainedWeights(
        config="ram_plus_swin_large_14m",
        repo_id="xinyu1205/recognize-anything-plus-model",
        filename="ram_plus_swin_large_14m.pth",
        size_hint="about 3 GB",
        licence="Apache-2.0",
    ),
}


class DownloadError(RuntimeError):
    """The weights could not be fetched; the message says how to place them by hand."""


def default_cache_dir() -> Path:
    """ramdex's weight cache (``$RAMDEX_HOME/models`` or ``~/.cache/ramdex/models``)."""
    root = os.environ.get("RAMDEX_HOME")
    return Path(root) / "models" if root else Path.home() / ".cache" / "ramdex" / "models"


def cached_path(name: str, cache_dir: Path | None = None) -> Path:
    """Where the checkpoint for ``name`` is (or would be) kept."""
    weights = _lookup(name)
    return (cache_dir or default_cache_dir()) / name / weights.filename


def is_cached(name: str, cache_dir: Path | None = None) -> bool:
    return cached_path(name, cache_dir).is_file()


def _lookup(name: str) -> PretrainedWeights:
    try:
        return PRETRAINED[name]
    except KeyError:
        raise DownloadError(
            f"no published weights named {name!r}; known: {', '.join(sorted(PRETRAINED))}"
        ) from None


def manual_placement_hint(name: str, cache_dir: Path | None = None) -> str:
    weights = _lookup(name)
    target = cached_path(name, cache_dir)
    return (
        f"download https://huggingface.co/{weights.repo_id}/resolve/main/{weights.filename} "
        f"({weights.size_hint}) on a machine with internet access and place it at {target}, "
        f"or pass --checkpoint PATH / set RAMDEX_MODEL__CHECKPOINT=PATH"
    )


def hub_endpoint() -> str:
    """The hub URL (``HF_ENDPOINT`` overrides it, as in huggingface_hub)."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def _check_reachable(name: str, cache_dir: Path | None, timeout: float = 3.0) -> None:
    """Fail at once when the hub cannot be reached, instead of retrying for a minute."""
    url = urlsplit(hub_endpoint())
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            pass
    except OSError as exc:
        raise DownloadError(
            f"cannot reach {url.scheme}://{url.netloc} ({exc}); you appear to be offline. "
            + manual_placement_hint(name, cache_dir)
        ) from exc


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def download(name: str, cache_dir: Path | None = None, force: bool = False) -> Path:
    """Fetch published weights into the cache (resumable) and record their sha256.

    Raises:
        DownloadError: offline, hub unreachable or file missing; the message says how to
            place the file by hand.
    """
    weights = _lookup(name)
    target = cached_path(name, cache_dir)
    if target.is_file() and not force:
        return target
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
        raise DownloadError(
            f"offline (HF_HUB_OFFLINE is set); {manual_placement_hint(name, cache_dir)}"
        )
    _check_reachable(name, cache_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        fetched = hf_hub_download(
            repo_id=weights.repo_id,
            filename=weights.filename,
            local_dir=target.parent,
            etag_timeout=5,
        )
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise DownloadError(
            f"could not download {weights.filename} from the Hugging Face hub ({reason}); "
            f"{manual_placement_hint(name, cache_dir)}"
        ) from exc
    fetched_path = Path(fetched)
    if fetched_path != target:
        fetched_path.replace(target)
    record = {
        "repo_id": weights.repo_id,
        "filename": weights.filename,
        "sha256": sha256_file(target),
    }
    target.with_suffix(".json").write_text(json.dumps(record, indent=2))
    return target
