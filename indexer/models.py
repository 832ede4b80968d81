"""The model the service runs: one place that turns settings into a loaded RAM++ model.

Every asset records the *model id* that scored it (``assets.model_name``). The id names the
weights, not just the architecture: a checkpoint's id carries a digest of the file, so swapping
the weights under the same name still makes ``ramdex reindex`` notice. :func:`configured_model_id`
computes the id without loading the model (search uses it to count pending assets), caching file
digests by (path, size, mtime) so a multi-gigabyte checkpoint is hashed once.

The id is a storage key, not a name for people: ``model@1e9ae7bcad4f`` is the bundled demo model
(the label is the file's stem). What people are shown comes from
:func:`describe_configured_model` (``ramdex-demo``, ``ram_plus_swin_large_14m``, a checkpoint's
file name, with the digest beside it) and :func:`model_name_for_id` (the name of a stored id).
Ids stay as they were so existing archives keep matching their model.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

from ram_pp.factory import (
    DEMO_DISPLAY_NAME,
    DEMO_MODEL,
    SHORT_DIGEST,
    LoadedModel,
    ModelDescription,
    demo_checkpoint,
    describe,
    resolve_model,
)

MAX_ID_LENGTH = 128  # assets.model_name column width
_DIGEST_CHARS = SHORT_DIGEST
_digest_lock = threading.Lock()


class ModelNotAvailableError(LookupError):
    """The configured model cannot be loaded here; the message says what to do."""


def configured_checkpoint(settings) -> Path | None:  # noqa: ANN001 - indexer.settings.Settings
    """The weights file the settings point at, or None for random-weight ``test_*`` configs.

    Raises:
        ModelNotAvailableError: a named model is not on this machine.
    """
    from ram_pp import pretrained

    if settings.model.checkpoint is not None:
        return Path(settings.model.checkpoint).expanduser()
    name = settings.model.name or DEMO_MODEL
    if name == DEMO_MODEL:
        path = demo_checkpoint()
        if path is None:
            raise ModelNotAvailableError(_missing_hint(name))
        return path
    if name in pretrained.PRETRAINED:
        return pretrained.cached_path(name, settings.model.cache_dir)
    if name.startswith("test_"):
        return None
    raise ModelNotAvailableError(_missing_hint(name))


def _missing_hint(name: str) -> str:
    return (
        f"model {name!r} is not available on this machine: run `ramdex models download` "
        "(published weights) or set RAMDEX_MODEL__CHECKPOINT to a checkpoint file "
        "(RAMDEX_MODEL__NAME=test_micro gives random weights for tests)"
    )


def _digest_cache_path(settings) -> Path:  # noqa: ANN001
    return settings.home / "model_digests.json"


def file_digest(path: Path, cache_file: Path | None = None) -> str:
    """sha256 hex digest of a file, cached by (resolved path, size, mtime) in ``cache_file``."""
    path = path.resolve()
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    with _digest_lock:
        cache: dict[str, str] = {}
        if cache_file is not None and cache_file.is_file():
            try:
                cache = json.loads(cache_file.read_text())
            except (OSError, ValueError):
                cache = {}  # a damaged cache only costs a re-hash
        if key in cache:
            return cache[key]
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
        value = digest.hexdigest()
        if cache_file is not None:
            cache[key] = value
            try:
                cache_file.parent.mkdir(parents=True, exist_ok=True)
                temp = cache_file.with_suffix(f".{os.getpid()}.tmp")
                temp.write_text(json.dumps(cache, indent=1))
                os.replace(temp, cache_file)
            except OSError:
                pass  # read-only home: the digest is still right, just not cached
        return value


def configured_model_id(settings) -> str:  # noqa: ANN001 - indexer.settings.Settings
    """The id recorded on assets scored by the configured model, without loading it.

    ``<name or file stem>@<first 12 hex of the file's sha256>`` for weights files,
    ``<config>@random`` for random-weight test configs.

    Raises:
        ModelNotAvailableError: the configured model is not on this machine.
    """
    checkpoint = configured_checkpoint(settings)
    if checkpoint is None:
        return f"{settings.model.name}@random"[:MAX_ID_LENGTH]
    if not checkpoint.is_file():
        raise ModelNotAvailableError(
            f"checkpoint {checkpoint} does not exist; " + _missing_hint(str(checkpoint))
        )
    label = settings.model.name or checkpoint.stem
    digest = file_digest(checkpoint, _digest_cache_path(settings))[:_DIGEST_CHARS]
    return f"{label[: MAX_ID_LENGTH - _DIGEST_CHARS - 1]}@{digest}"


def describe_configured_model(settings) -> ModelDescription:  # noqa: ANN001 - Settings
    """Name, digest, tag count and whether it is the demo model, for the configured model,
    without loading its weights (the digest is the cached one :func:`configured_model_id` uses).

    Never raises for a model that is not on this machine: it is described without a digest
    (loading it is what reports the problem).
    """
    model = settings.model
    digest = None
    try:
        checkpoint = configured_checkpoint(settings)
    except ModelNotAvailableError:
        checkpoint = None
    if checkpoint is not None and checkpoint.is_file():
        digest = file_digest(checkpoint, _digest_cache_path(settings))
    return describe(
        name=model.name or None,
        checkpoint=model.checkpoint,
        cache_dir=model.cache_dir,
        digest=digest,
    )


def model_name_for_id(
    model_id: str | None,
    settings,  # noqa: ANN001 - indexer.settings.Settings
    configured: tuple[str, ModelDescription] | None = None,
) -> str | None:
    """The human name of the model a stored id (``assets.model_name``) names.

    The configured model's id gets its description's name; another id is named by its label
    (the part before ``@``), except that the bundled demo model's weights are ``ramdex-demo``
    whatever label they were stored under. ``configured`` is ``(id, description)`` of the
    configured model when the caller has them (saves working them out again).
    """
    if model_id is None:
        return None
    if configured is None:
        try:
            configured = (configured_model_id(settings), describe_configured_model(settings))
        except ModelNotAvailableError:
            configured = None
    if configured is not None and model_id == configured[0]:
        return configured[1].name
    label, _, digest = model_id.partition("@")
    if label == DEMO_MODEL or (digest and digest == _demo_short_digest(settings)):
        return DEMO_DISPLAY_NAME
    return label


def _demo_short_digest(settings) -> str | None:  # noqa: ANN001
    demo = demo_checkpoint()
    if demo is None:
        return None
    return file_digest(demo, _digest_cache_path(settings))[:_DIGEST_CHARS]


def load_configured_model(settings) -> LoadedModel:  # noqa: ANN001 - indexer.settings.Settings
    """Load the model the settings ask for (``model.checkpoint``, else ``model.name``).

    A ``test_*`` config name gives seeded random weights (tests, benchmarks); any other name must
    be on disk already: nothing is downloaded here.

    Raises:
        ModelNotAvailableError: the named model is not on this machine (the message says how to
            get it).
        ram_pp.convert.CheckpointError: the checkpoint file is unusable.
    """
    model = settings.model
    try:
        return resolve_model(
            name=model.name or None,
            checkpoint=model.checkpoint,
            cache_dir=model.cache_dir,
            trust=model.trust_checkpoint,
        )
    except LookupError as exc:
        if isinstance(exc, ModelNotAvailableError):
            raise
        raise ModelNotAvailableError(f"{exc}. " + _missing_hint(model.name or DEMO_MODEL)) from exc
