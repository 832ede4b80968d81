"""``ramdex tokens``: look after the token store (the per-asset token embeddings E).

``stats`` shows what the store holds and how much of it is dead weight (tombstones: records of
deleted or replaced assets), ``compact`` rewrites it without them (and, on object storage, merges
the small segments ingest leaves behind), ``gc`` deletes the objects on object storage that no
manifest names any more. The store is the local folder (``RAMDEX_HOME/tokens/<model>``) or the
one on S3-compatible object storage when ``RAMDEX_INDEX__TOKEN_STORE_URL`` is set
(docs/retroactive.md "Object storage" and "Maintenance").

Every failure a person can fix (no store yet, the object store away, a bad option) is raised as
:class:`~indexer.errors.RamdexError` and printed by the root group's error handler.
"""

from __future__ import annotations

import json
import re
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from indexer.errors import RamdexError

if TYPE_CHECKING:  # the stores (numpy, boto3) load inside the commands only
    from indexer.settings import Settings
    from indexer.token_store import TokenStore
    from indexer.token_store_s3 import S3TokenStore

app = typer.Typer(
    help="Token store maintenance: statistics, compaction, garbage collection.",
    no_args_is_help=True,
)

ModelOption = Annotated[
    str | None,
    typer.Option("--model", help="Model id of the token store (default: the configured model)."),
]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)


def parse_duration(text: str) -> float:
    """Seconds in ``text``: a number with an optional unit s, m, h, d or w (``90m``, ``1d``,
    ``3600``: seconds).

    Raises:
        RamdexError: not such a duration (named as ``--min-age``).
    """
    match = _DURATION.match(text)
    if not match:
        raise RamdexError(
            f"--min-age {text!r} is not a duration",
            hint="give a number with a unit s, m, h, d or w, for example 1d, 12h or 90m",
        )
    return float(match.group(1)) * _UNITS[(match.group(2) or "s").lower()]


def _model(settings: Settings, model: str | None) -> str:
    if model:
        return model
    from indexer.models import ModelNotAvailableError, configured_model_id

    try:
        return configured_model_id(settings)
    except ModelNotAvailableError as exc:  # the model is only needed for its id here
        raise RamdexError(str(exc), hint="or name the store's model with --model") from None


def _location(settings: Settings, model_id: str) -> tuple[str, str]:
    """(backend, location) of a model's store: ``("s3", "s3://...")`` or ``("local", PATH)``."""
    from indexer.stores import token_store_path, token_store_url

    url = token_store_url(settings, model_id)
    if url is not None:
        endpoint = settings.index.s3.endpoint_url
        return "s3", f"{url} at {endpoint}" if endpoint else url
    return "local", str(token_store_path(settings, model_id))


def _open(settings: Settings, model_id: str, *, writable: bool) -> TokenStore | S3TokenStore:
    """The model's existing token store (never creates one).

    Raises:
        RamdexError: nothing stored for the model yet; S3StoreUnavailable (a RamdexError) when
            the object store cannot be reached.
    """
    from indexer.stores import open_token_store
    from indexer.token_store import TokenStoreError

    try:
        store = open_token_store(settings, model_id, read_only=True)
    except TokenStoreError as exc:
        _backend, where = _location(settings, model_id)
        raise RamdexError(
            f"no token store for model {model_id!r} at {where} ({exc})",
            hint="ingest images first, or name another model with --model "
            "(and check RAMDEX_HOME / RAMDEX_INDEX__TOKEN_STORE_URL)",
        ) from None
    if not writable:
        return store
    _close(store)
    # It exists now, so opening it for writing cannot create an empty one.
    return open_token_store(settings, model_id)


def _close(store: Any) -> None:
    close = getattr(store, "close", None)  # the S3 store has request threads to stop
    if close is not None:
        close()


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _stats(store: TokenStore | S3TokenStore, backend: str, where: str, model_id: str) -> dict:
    stats = dict(store.stats())
    stats.update(backend=backend, location=where, model=model_id)
    return stats


def _show(stats: dict[str, Any]) -> list[str]:
    parts = "segments" if stats["backend"] == "s3" else "shards"
    slots = stats["assets"] + stats["tombstones"]
    dead = f" ({stats['tombstones'] / slots:.1%} of the records)" if slots else ""
    return [
        f"model       {stats['model']}",
        f"backend     {stats['backend']}: {stats['location']}",
        f"format      {stats['format']} ({stats['tokens']} x {stats['dim']})",
        f"assets      {stats['assets']}",
        f"tombstones  {stats['tombstones']}{dead}",
        f"{parts:<11} {stats['shards']}",
        f"per asset   {_size(stats['bytes_per_asset'])}",
        f"data        {_size(stats['data_bytes'])} ({stats['data_bytes']} bytes)",
    ]


@app.command("stats")
def stats_command(
    model: ModelOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """Show the token store's format, assets, tombstones, shards or segments and sizes."""
    from indexer.settings import get_settings

    settings = get_settings()
    model_id = _model(settings, model)
    backend, where = _location(settings, model_id)
    store = _open(settings, model_id, writable=False)
    try:
        stats = _stats(store, backend, where, model_id)
    finally:
        _close(store)
    if as_json:
        typer.echo(json.dumps(stats, indent=1))
        return
    for line in _show(stats):
        typer.echo(line)


@app.command("compact")
def compact_command(model: ModelOption = None) -> None:
    """Rewrite the token store without its tombstones (deleted or replaced assets).

    On object storage it also merges runs of small segments (one per ingest batch) into large
    ones; the objects merged away stay until `ramdex tokens gc` removes them. Readers and
    writers may go on meanwhile: the change is one commit of the manifest.
    """
    from indexer.settings import get_settings

    settings = get_settings()
    model_id = _model(settings, model)
    backend, where = _location(settings, model_id)
    store = _open(settings, model_id, writable=True)
    try:
        before = _stats(store, backend, where, model_id)
        parts = "segments" if backend == "s3" else "shards"
        typer.echo(
            f"compacting {where}: {before['assets']} assets, {before['tombstones']} tombstones "
            f"in {before['shards']} {parts}, {_size(before['data_bytes'])}; this reads and "
            "rewrites the affected data and may take a while on a large store...",
        )
        start = time.perf_counter()
        result = store.compact()
        seconds = time.perf_counter() - start
        store.refresh()
        after = _stats(store, backend, where, model_id)
    finally:
        _close(store)
    done = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in result.items())
    typer.echo(f"done in {seconds:.1f} s: {done}")
    typer.echo(
        f"before: {before['shards']} {parts}, {before['tombstones']} tombstones, "
        f"{_size(before['data_bytes'])}"
    )
    typer.echo(
        f"after:  {after['shards']} {parts}, {after['tombstones']} tombstones, "
        f"{_size(after['data_bytes'])}"
    )
    if backend == "s3" and result.get("segments_merged"):
        typer.echo("the merged-away objects stay readable for old snapshots: `ramdex tokens gc`")


@app.command("gc")
def gc_command(
    model: ModelOption = None,
    min_age: Annotated[
        str,
        typer.Option(
            "--min-age",
            metavar="DURATION",
            help="Delete only unreferenced objects older than this (s, m, h, d, w): readers "
            "holding an older manifest keep reading that long, and uploads of writers not yet "
            "committed are spared.",
        ),
    ] = "1d",
) -> None:
    """Delete the objects of a token store on object storage that no manifest names any more.

    Those are id generations that later commits replaced, segments that `ramdex tokens compact`
    merged away and the uploads of writers that died or lost a race. A local store needs no
    gc: it removes such files at each commit.
    """
    from indexer.settings import get_settings

    seconds = parse_duration(min_age)
    settings = get_settings()
    model_id = _model(settings, model)
    backend, where = _location(settings, model_id)
    if backend == "local":
        store = _open(settings, model_id, writable=False)  # still says when there is none
        _close(store)
        typer.echo(
            f"{where} is a local token store: it removes unreferenced files itself at each "
            "commit, nothing to collect (`ramdex tokens compact` drops tombstones)"
        )
        return
    store = _open(settings, model_id, writable=True)
    try:
        typer.echo(f"collecting garbage in {where} (objects older than {min_age})...")
        start = time.perf_counter()
        result = store.collect_garbage(min_age_s=seconds)  # type: ignore[union-attr]
        took = time.perf_counter() - start
    finally:
        _close(store)
    typer.echo(
        f"done in {took:.1f} s: {result['objects_deleted']} objects deleted, "
        f"{_size(result['bytes_freed'])} freed"
    )
