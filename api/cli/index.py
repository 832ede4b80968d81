"""``ramdex index``: check and rebuild the FAISS similarity index against the database."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from api.cli.errors import database_url_option

app = typer.Typer(help="FAISS similarity index maintenance.", no_args_is_help=True)

ModelOption = Annotated[
    str | None,
    typer.Option("--model", help="Model id the index serves (default: the configured model)."),
]
UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        callback=database_url_option,
        help="Database URL (default: RAMDEX_DATABASE__URL or the SQLite file).",
    ),
]
DirOption = Annotated[
    Path | None, typer.Option("--index-dir", help="Index folder (default: RAMDEX_HOME/index).")
]


def _model(model: str | None) -> str:
    if model:
        return model
    from indexer.models import ModelNotAvailableError, configured_model_id
    from indexer.settings import get_settings

    try:
        return configured_model_id(get_settings())
    except ModelNotAvailableError as exc:
        typer.echo(f"error: {exc}; or name the model with --model", err=True)
        raise typer.Exit(2) from None


def _dir(index_dir: Path | None) -> Path:
    from indexer.settings import get_settings

    return index_dir or get_settings().index_dir


@app.command("check")
def check_command(
    model: ModelOption = None, index_dir: DirOption = None, url: UrlOption = None
) -> None:
    """Compare the saved index with the database; exit 1 on drift or a missing index."""
    from indexer.db.session import session_scope
    from indexer.faiss_index import VectorIndex, index_path

    name = _model(model)
    path = index_path(_dir(index_dir), name)
    with session_scope(url) as session:
        session.connection()  # an unreachable database is said before a missing index
        if not path.is_file():
            typer.echo(f"no index at {path}; run `ramdex index rebuild`", err=True)
            raise typer.Exit(1)
        index = VectorIndex.load(path, mmap=True)
        report = index.check(session, name)
    typer.echo(f"{path}: {index.kind}, {index.count} vectors")
    typer.echo(report.summary())
    if report.missing_from_index.size:
        typer.echo(f"  missing e.g. {report.missing_from_index[:10].tolist()}")
    if report.extra_in_index.size:
        typer.echo(f"  extra e.g. {report.extra_in_index[:10].tolist()}")
    if not report.in_sync:
        raise typer.Exit(1)


@app.command("rebuild")
def rebuild_command(
    model: ModelOption = None,
    index_dir: DirOption = None,
    url: UrlOption = None,
    dim: Annotated[int, typer.Option(help="Dimension when no embedding is stored yet.")] = 512,
) -> None:
    """Build the index from the database's embeddings and save it atomically."""
    from indexer.db.session import session_scope
    from indexer.faiss_index import VectorIndex, index_path, writer_lock

    name = _model(model)
    path = index_path(_dir(index_dir), name)
    start = time.perf_counter()
    with writer_lock(path), session_scope(url) as session:
        index = VectorIndex.rebuild_from_database(session, name, dim=dim)
        index.save(path)
    seconds = time.perf_counter() - start
    typer.echo(f"{path}: {index.kind}, {index.count} vectors, dim {index.dim} ({seconds:.1f} s)")


@app.command("sync")
def sync_command(
    model: ModelOption = None, index_dir: DirOption = None, url: UrlOption = None
) -> None:
    """Repair the saved index incrementally (add missing, drop deleted), or build it if absent."""
    from indexer.db.session import session_scope
    from indexer.faiss_index import index_path, open_index, writer_lock

    name = _model(model)
    directory = _dir(index_dir)
    with writer_lock(index_path(directory, name)), session_scope(url) as session:
        index = open_index(session, name, index_dir=directory)
        report = index.check(session)
    typer.echo(report.summary())
