"""``ramdex tag``: tag image files with RAM++ and print the results."""

from __future__ import annotations

import json
import re
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


class Dtype(StrEnum):
    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


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


def _as_url(path: Path) -> str | None:
    """The URL a path argument was typed as (``Path`` folds ``https://`` into ``https:/``)."""
    match = re.match(r"(?i)(https?):/+(.*)", str(path))
    return f"{match.group(1)}://{match.group(2)}" if match else None


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
        Path | None,
        typer.Option(
            help="Checkpoint file (.pth or .safetensors) (default: RAMDEX_MODEL__CHECKPOINT)."
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="Model name: demo, ram_plus_swin_large_14m (once downloaded), test_* "
            "(default: RAMDEX_MODEL__NAME, else demo)."
        ),
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
    batch_size: Annotated[
        int | None,
        typer.Option(
            min=1, help="Images per forward pass (default: RAMDEX_MODEL__BATCH_SIZE, else 8)."
        ),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(
            metavar="[auto|cpu|cuda|cuda:N|mps]",
            help="Where the model runs (default: RAMDEX_MODEL__DEVICE, else auto).",
        ),
    ] = None,
    dtype: Annotated[
        Dtype | None,
        typer.Option(help="Precision (default: RAMDEX_MODEL__DTYPE, else auto: float32 on CPU)."),
    ] = None,
    no_exif: Annotated[
        bool, typer.Option("--no-exif", help="Do not apply EXIF orientation (upstream behaviour).")
    ] = False,
    compile_model: Annotated[
        bool,
        typer.Option(
            "--compile",
            help="torch.compile the model: long runs and GPUs; the first batch compiles for "
            "minutes on a CPU (default: RAMDEX_MODEL__COMPILE).",
        ),
    ] = False,
    trust_checkpoint: Annotated[
        bool,
        typer.Option(
            "--trust-checkpoint",
            help="Allow full unpickling of the checkpoint (trusted files only; or "
            "RAMDEX_MODEL__TRUST_CHECKPOINT).",
        ),
    ] = False,
) -> None:
    """Tag image files and print their tags (nothing is stored; `ramdex ingest` indexes).

    The model, device and precision default to the RAMDEX_MODEL__* settings. Exit code 0 when
    every file was tagged, 1 when any failed, 2 when nothing could run.
    """
    from indexer.threads import apply_policy

    apply_policy("tag")  # before torch loads: the model is the only heavy work here
    from tqdm import tqdm

    from api.cli.model_notice import announce
    from indexer.errors import RamdexError
    from indexer.settings import get_settings
    from ram_pp.factory import describe_model, resolve_model
    from ram_pp.inference import FailedImage, TaggingEngine, TagSelection, resolve_device
    from ram_pp.preprocess import DecodeOptions

    urls = [url for url in map(_as_url, inputs) if url]
    if urls:
        raise RamdexError(
            f"INPUTS: {urls[0]} is a URL; `ramdex tag` reads local files",
            hint=f"ingest URLs with `ramdex ingest {urls[0]}` (downloaded, tagged and stored), "
            "or download the image and tag the file",
        )
    files = expand_inputs(inputs)
    if not files:
        typer.echo("no image files found in the given paths", err=True)
        raise typer.Exit(1)
    configured = get_settings().model
    if model is None and checkpoint is None:  # the configured model, as the service runs it
        model, checkpoint = configured.name or None, configured.checkpoint
    resolve_device(device or configured.device)  # before loading: a missing GPU is said at once
    try:
        loaded = resolve_model(
            name=model,
            checkpoint=checkpoint,
            cache_dir=configured.cache_dir,
            trust=trust_checkpoint or configured.trust_checkpoint,
        )
    except LookupError as exc:  # an unknown or not downloaded model (the message says which)
        raise RamdexError(str(exc)) from None
    # The demo model says what it is (stderr, once); JSON records name the model.
    described = announce(describe_model(loaded, name=model, hash_file=False))
    model_name = described.name
    if lang is not Lang.en and not described.has_chinese:
        typer.echo(
            f"--lang {lang.value}: model {model_name} has no Chinese tag names; printing English",
            err=True,
        )
        lang = Lang.en
    engine = TaggingEngine(
        loaded,
        device=device or configured.device,
        dtype=(dtype.value if dtype else None) or configured.dtype,
        batch_size=batch_size or configured.batch_size,
        decode=DecodeOptions(apply_exif_orientation=not no_exif),
        compile=compile_model or configured.compile,
        channels_last=configured.channels_last,
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
