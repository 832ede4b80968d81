"""``ramdex models``: list, download and convert RAM++ weights."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="List, download and convert model weights.", no_args_is_help=True)


@app.command("list")
def list_command(
    cache_dir: Annotated[Path | None, typer.Option(help="Weight cache folder.")] = None,
) -> None:
    """Show configured models and whether their weights are available here."""
    from ram_pp import pretrained
    from ram_pp.config import get_config
    from ram_pp.factory import demo_checkpoint, describe, list_models

    demo = demo_checkpoint()
    typer.echo(f"{'name':32} {'weights':12} description")
    tags = f"{describe().num_tags} synthetic tags" if demo else "synthetic tags"
    typer.echo(
        f"{'demo':32} {'bundled' if demo else 'missing':12} ramdex-demo: the bundled demo model, "
        f"{tags} (shapes, colours, counts), not for photographs"
    )
    for name in list_models():
        cfg = get_config(name)
        if name in pretrained.PRETRAINED:
            state = "cached" if pretrained.is_cached(name, cache_dir) else "not cached"
        elif name.startswith("test_"):
            state = "random"
        else:
            state = "config only"
        typer.echo(f"{name:32} {state:12} {cfg.description}")


@app.command("download")
def download_command(
    name: Annotated[str, typer.Argument(help="Published model name.")] = "ram_plus_swin_large_14m",
    cache_dir: Annotated[Path | None, typer.Option(help="Weight cache folder.")] = None,
    force: Annotated[bool, typer.Option(help="Download again even when cached.")] = False,
) -> None:
    """Fetch published weights from the Hugging Face hub (cached, resumable, checksum recorded)."""
    from ram_pp.pretrained import DownloadError, download

    try:
        path = download(name, cache_dir=cache_dir, force=force)
    except DownloadError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(str(path))


@app.command("convert")
def convert_command(
    source: Annotated[Path, typer.Argument(help="Checkpoint to read (.pth or .safetensors).")],
    target: Annotated[Path, typer.Argument(help="File to write (.safetensors or .pth).")],
    config: Annotated[
        str | None, typer.Option(help="Config name or JSON (default: inferred).")
    ] = None,
    trust_checkpoint: Annotated[
        bool, typer.Option(help="Allow full unpickling of the source (trusted files only).")
    ] = False,
) -> None:
    """Convert a checkpoint (for example the published .pth) to a ramdex safetensors file.

    The output carries its config and vocabulary, keeps the published key names for the head and
    timm's names for the Swin encoder, and loads without unpickling.
    """
    from ram_pp.convert import CheckpointError, save_checkpoint
    from ram_pp.factory import load_model

    try:
        loaded = load_model(source, config=config, trust=trust_checkpoint)
    except CheckpointError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    save_checkpoint(target, loaded.model.state_dict(), loaded.config, loaded.vocabulary.to_dict())
    typer.echo(f"wrote {target} ({loaded.config.name}, {len(loaded.vocabulary)} tags)")
