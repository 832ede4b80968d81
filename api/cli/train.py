"""``ramdex train`` (train or fine-tune RAM++) and ``ramdex datasets synth`` (procedural data).

``app`` holds the ``train`` command and the ``datasets`` group; ``datasets_app`` is the group
alone, for registering it under its own name.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True)
datasets_app = typer.Typer(help="Generate training and evaluation data sets.", no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")


@app.command("train")
def train_command(
    config: Annotated[
        Path | None, typer.Option(help="Training config JSON (fields of ram_pp.train.TrainConfig).")
    ] = None,
    preset: Annotated[
        str | None, typer.Option(help="Built-in training config: demo (the bundled model), smoke.")
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            help="Folder with train.txt (path tag1,tag2,...) and optional val/test lists."
        ),
    ] = None,
    tags: Annotated[
        Path | None, typer.Option(help="Vocabulary file, one tag per line (default: the data's).")
    ] = None,
    init_checkpoint: Annotated[
        Path | None, typer.Option(help="Start from these weights (published or ramdex file).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Run folder (checkpoints, model, metrics).")
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(min=1, help="Epochs (overrides the config).")
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue the run in the run folder from its last checkpoint.")
    ] = False,
    trust_checkpoint: Annotated[
        bool, typer.Option(help="Allow full unpickling of --init-checkpoint (trusted files only).")
    ] = False,
    threads: Annotated[int | None, typer.Option(min=1, help="torch CPU threads.")] = None,
) -> None:
    """Train a RAM++ model on a tag list (or the synthetic set), or fine-tune one.

    Writes RUN/model.safetensors (config and vocabulary inside), RUN/checkpoint.pt (for
    --resume) and RUN/metrics.json (test mAP, open-set mAP when concepts are given).
    """
    from ram_pp.train import TrainConfig, TrainError, train
    from ram_pp.train import preset as get_preset

    if (config is None) == (preset is None) and data is None:
        typer.echo("error: give --config FILE, --preset NAME or --data FOLDER", err=True)
        raise typer.Exit(2)
    if config is not None and preset is not None:
        typer.echo("error: --config and --preset exclude each other", err=True)
        raise typer.Exit(2)
    changes: dict[str, object] = {}
    for key, value in (
        ("data", data),
        ("tags", tags),
        ("init_checkpoint", init_checkpoint),
        ("out_dir", out),
        ("epochs", epochs),
        ("threads", threads),
    ):
        if value is not None:
            changes[key] = str(value) if isinstance(value, Path) else value
    if trust_checkpoint:
        changes["trust_checkpoint"] = True
    try:
        if preset is not None:
            cfg = get_preset(preset, **changes)
        elif config is not None:
            cfg = replace(TrainConfig.from_file(config), **changes)
            cfg.validate()
        else:
            cfg = TrainConfig.from_dict({"synth": None, **changes})
        result = train(cfg, resume=resume, log=typer.echo)
    except TrainError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except Exception as exc:  # checkpoint and image errors carry their own clear message
        from ram_pp.convert import CheckpointError
        from ram_pp.preprocess import ImageDecodeError

        if isinstance(exc, CheckpointError | ImageDecodeError):
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        raise
    typer.echo(f"model: {result.model_file}")
    typer.echo(f"metrics: {result.out_dir / 'metrics.json'}")


@datasets_app.command("synth")
def synth_command(
    out: Annotated[Path, typer.Argument(help="Output folder.")],
    seed: Annotated[int, typer.Option(help="Seed; the same seed gives the same files.")] = 0,
    n: Annotated[int, typer.Option(min=0, help="Training images.")] = 1000,
    n_val: Annotated[int, typer.Option(min=0, help="Validation images.")] = 200,
    n_test: Annotated[
        int, typer.Option(min=0, help="Test images (with held-out concept truth).")
    ] = 500,
    size: Annotated[int, typer.Option(min=32, help="Image side in pixels.")] = 128,
) -> None:
    """Write the procedural data set: images, tag files, captions, held-out concepts."""
    from ram_pp.synth import SynthSpec, write_dataset

    spec = SynthSpec(seed=seed, n_train=n, n_val=n_val, n_test=n_test, image_size=size)
    written = write_dataset(out, spec, progress=True)
    typer.echo(f"wrote {n + n_val + n_test} images to {written.root}")
