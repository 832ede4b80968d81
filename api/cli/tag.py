"""``ramdex tag``: tag image files with RAM++ and print the results."""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer()

IMAGE_SUFFIXES = {
    ".jpg",
    ".jpeg",
    ".png",
    ".webp",
    ".gif",
    ".bmp",
    ".tif",
    ".tiff",
    ".heic",
    ".heif",
    ".avif",
}


class Lang(StrEnum):
    en = "en"
    zh = "zh"
    both = "both"


class OutputFormat(StrEnum):
    text = "text"
    json = "json"
    jsonl = "jsonl"


def expand_inputs(paths: list[Path]) -> list[Path]:
    """Files as given, plus image files found under directories (sorted, recursive)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(
                sorted(
                    p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                )
            )
        else:
            found.append(path)
    return found


def _tag_label(tag: Any, lang: Lang) -> str:
    if lang is Lang.en:
        return tag.english
    if lang is Lang.zh:
        return tag.chinese
    return f"{tag.english} | {tag.chinese}"


def _record(result: Any, lang: Lang, all_scores: bool, vocab: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "path": result.source,
        "tags": [
            {
                **({"en": t.english} if lang is not Lang.zh else {}),
                **({"zh": t.chinese} if lang is not Lang.en else {}),
                "probability": round(t.probability, 6),
            }
            for t in result.tags
        ],
    }
    if all_scores:
        record["scores"] = {
            name: float(p) for name, p in zip(vocab.english, result.probabilities, strict=True)
        }
    return record


@app.command("tag")
def tag(
    inputs: Annotated[
        list[Path], typer.Argument(help="Image files or folders (searched recursively).")
    ],
    checkpoint: Annotated[
        Path | None, typer.Option(help="Checkpoint file (.pth or .safetensors).")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(help="Model name: demo, ram_plus_swin_large_14m (once downloaded), test_*."),
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(help="One probability threshold for all tags (default: per tag)."),
    ] = None,
    top_k: Annotated[int | None, typer.Option(help="Keep at most K tags per image.")] = None,
    lang: Annotated[Lang, typer.Option(help="Tag names to print.")] = Lang.en,
    output: Annotated[
        OutputFormat, typer.Option("--format", help="Output format.")
    ] = OutputFormat.text,
    all_scores: Annotated[
        bool, typer.Option("--all-scores", help="JSON: include every tag's probability.")
    ] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 8,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16.")] = "auto",
    no_exif: Annotated[
        bool, typer.Option("--no-exif", help="Do not apply EXIF orientation (upstream behaviour).")
    ] = False,
    trust_checkpoint: Annotated[
        bool, typer.Option(help="Allow full unpickling of the checkpoint (trusted files only).")
    ] = False,
) -> None:
    """Tag images. Exit code 0 when every file was tagged, 1 when any failed."""
    from tqdm import tqdm

    from api.cli.model_notice import announce
    from ram_pp.convert import CheckpointError
    from ram_pp.factory import describe_model, resolve_model
    from ram_pp.inference import FailedImage, TaggingEngine, TagSelection
    from ram_pp.preprocess import DecodeOptions

    files = expand_inputs(inputs)
    if not files:
        typer.echo("no image files found in the given paths", err=True)
        raise typer.Exit(1)
    try:
        loaded = resolve_model(name=model, checkpoint=checkpoint, trust=trust_checkpoint)
    except (CheckpointError, LookupError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    # The demo model says what it is (stderr, once); JSON records name the model.
    model_name = announce(describe_model(loaded, name=model, hash_file=False)).name
    engine = TaggingEngine(
        loaded,
        device=device,
        dtype=dtype,
        batch_size=batch_size,
        decode=DecodeOptions(apply_exif_orientation=not no_exif),
    )
    selection = TagSelection(threshold=threshold, top_k=top_k)
    records: list[dict[str, Any]] = []
    failures = 0
    with tqdm(total=len(files), unit="img", disable=None if len(files) > 1 else True) as bar:
        for result in engine.tag_files(files, selection, on_done=bar.update):
            if isinstance(result, FailedImage):
                failures += 1
                typer.echo(f"failed: {result.source}: {result.error}", err=True)
                record: dict[str, Any] = {"path": result.source, "error": result.error}
            else:
                record = _record(result, lang, all_scores, loaded.vocabulary)
            record["model"] = model_name
            if output is OutputFormat.jsonl:
                sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
            elif output is OutputFormat.text:
                if "error" not in record:
                    labels = ", ".join(
                        f"{_tag_label(t, lang)} ({t.probability:.2f})" for t in result.tags
                    )
                    bar.write(f"{result.source}: {labels or '(no tags)'}")
            else:
                records.append(record)
    if output is OutputFormat.json:
        sys.stdout.write(json.dumps(records, ensure_ascii=False, indent=1) + "\n")
    if failures:
        typer.echo(f"{failures} of {len(files)} files failed", err=True)
        raise typer.Exit(1)
