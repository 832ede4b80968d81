"""``ramdex demo``: the main job, offline, end to end on generated sample images.

With the bundled demo model: generate about 200 sample images (seeded, so always the same),
ingest them (decode, thumbnail, tag, store scores, embeddings and tokens, index), then run a tag
search, a similar-image search and a search for a concept the model never saw, and print each
result with its ground truth. Without the demo model, tag the golden test images with the golden
tiny model (random weights: the tags mean nothing; it shows the tagging path only).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer()

GOLDEN_DIR = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "golden_tiny"
SAMPLE_SEED = 2026
DEMO_TAG = "red"
# Concepts the demo model never trained on (ram_pp.synth.HELDOUT): a colour word it never saw (it
# knows "blue") and a composition of trained parts that was never a tag.
DEMO_CONCEPTS = ("navy", "striped purple square")


def _truth(tag_file: Path) -> dict[str, set[str]]:
    """Ground-truth tags per image file name, from a synthetic split's tag file."""
    from ram_pp.train_data import read_tag_list

    listed = read_tag_list(tag_file)
    return {path.name: set(tags) for path, tags in zip(listed.paths, listed.tags, strict=True)}


def _print_hits(
    title: str,
    hits: list[tuple[str, float, bool]],
    wanted: str,
    in_archive: int,
    truth: dict[str, set[str]] | None = None,
) -> None:
    """The hits, ``+`` where the picture truly has ``wanted``; a wrong hit says what the
    picture holds (``truth``), so a mistake reads as one (pink taken for red), not as noise."""
    right = sum(ok for _, _, ok in hits)
    typer.echo(
        f"\n{title}: top {len(hits)}, {right} of them truly '{wanted}' "
        f"({in_archive} in the archive; + right, - wrong)"
    )
    for name, score, ok in hits:
        shown = ", ".join(sorted(truth.get(name, ()))) if truth and not ok else ""
        holds = f"  (it holds {shown})" if shown else ""
        typer.echo(f"  {'+' if ok else '-'} {name}  {score:.3f}{holds}")


def _golden_fallback() -> None:
    from ram_pp.factory import load_model
    from ram_pp.inference import TaggingEngine, TagSelection

    typer.echo(
        "No bundled demo model in this build: tagging the golden test images with the golden tiny "
        "model (upstream's architecture at toy size, RANDOM weights; its tags are meaningless)."
    )
    engine = TaggingEngine(load_model(GOLDEN_DIR / "checkpoint.pth"), device="cpu")
    images = sorted(p for p in GOLDEN_DIR.iterdir() if p.suffix in {".jpg", ".png"})
    for result in engine.tag_files(images, TagSelection(top_k=5)):
        tags = ", ".join(f"{t.english} ({t.probability:.2f})" for t in getattr(result, "tags", []))
        typer.echo(f"{Path(result.source).name}: {tags}")


@app.command("demo")
def demo(
    home: Annotated[
        Path, typer.Option(help="Folder for the demo's database, index and images.")
    ] = Path(".ramdex-demo"),
    images: Annotated[int, typer.Option(min=10, help="Sample images to generate.")] = 200,
    top: Annotated[int, typer.Option(min=1, help="Results to print per search.")] = 8,
) -> None:
    """Index generated sample images with the demo model and search them (offline)."""
    from indexer.threads import apply_policy

    apply_policy("ingest")  # before torch loads: the demo ingests (decoding beside the model)
    from ram_pp.factory import demo_checkpoint

    if demo_checkpoint() is None:
        _golden_fallback()
        return
    _run_demo(home.resolve(), images, top)


def demo_settings(home: Path) -> Any:
    """The demo's settings: embedded database and tasks under ``home``, the default model (the
    bundled demo model, stored under the same id ``ramdex serve`` uses with nothing configured,
    so ``RAMDEX_HOME=home ramdex serve`` finds the demo's tags)."""
    from indexer.settings import BrokerSettings, DatabaseSettings, ModelSettings, Settings

    return Settings(
        home=home,
        database=DatabaseSettings(url=""),  # embedded: a SQLite file under home
        broker=BrokerSettings(url=""),  # embedded: tasks run in this process
        model=ModelSettings(device="cpu"),
    )


def _run_demo(home: Path, n_images: int, top: int) -> None:
    from api.cli.model_notice import announce_configured
    from indexer.ingest.pipeline import ingest
    from ram_pp.synth import SynthSpec, heldout_concepts, write_dataset

    settings = demo_settings(home)
    announce_configured(settings)
    samples = home / "samples"
    if not (samples / "manifest.json").is_file():
        typer.echo(f"generating {n_images} sample images in {samples} ...")
        write_dataset(samples, SynthSpec(seed=SAMPLE_SEED, n_train=0, n_val=0, n_test=n_images))
    truth = _truth(samples / "test.txt")

    typer.echo("ingesting (decode, thumbnail, RAM++ tags, embeddings, index) ...")
    summary = ingest([samples / "images" / "test"], settings=settings, progress=True)
    typer.echo(
        f"done {summary.done}, duplicate {summary.duplicate}, failed {summary.failed} "
        f"in {summary.elapsed_s:.1f} s"
    )
    names = _asset_names(settings)

    from indexer.archive import Archive
    from indexer.search import SearchService

    with Archive(settings) as archive:
        service = SearchService(archive)
        _tag_search(service, truth, top, samples)
        _similar_search(service, names, truth, top)
        for concept in heldout_concepts():
            if concept.name in DEMO_CONCEPTS:
                _concept_search(service, samples, concept, top)
    typer.echo(_next_steps(home))


def _ramdex_command() -> str:
    """How the user can type this program: ``ramdex`` when that is on ``PATH``, else its path
    (``scripts/demo.sh`` installs it into ``.venv/bin``, which is not on ``PATH``)."""
    script = Path(sys.executable).parent / "ramdex"
    found = shutil.which("ramdex")
    if found and Path(found).resolve() == script.resolve():
        return "ramdex"
    relative = os.path.relpath(script)
    return relative if not relative.startswith("..") else str(script)


def _next_steps(home: Path) -> str:
    """The commands that open the demo's archive in a browser (a key first: auth is on)."""
    ramdex = _ramdex_command()
    return (
        f"\nEverything is in {home}. To browse it in a web browser:\n"
        f"  export RAMDEX_HOME={home}\n"
        f"  {ramdex} keys create --scope write --name me   # prints a key once: copy it\n"
        f"  {ramdex} serve                                 # then open http://127.0.0.1:8000/"
        " and paste the key"
    )


def _asset_names(settings: Any) -> dict[int, str]:
    """Asset id -> sample file name (the first source recorded for it)."""
    from sqlalchemy import select

    from indexer.db import AssetSource, session_scope

    with session_scope(settings.database_url) as session:
        rows = session.execute(select(AssetSource.asset_id, AssetSource.uri)).all()
    return {asset_id: Path(uri).name for asset_id, uri in sorted(rows, reverse=True)}


def _name(hit: Any) -> str:
    """The sample file name of a search hit (its source path)."""
    return Path(hit.source).name


def _tag_search(service: Any, truth: dict[str, set[str]], top: int, samples: Path) -> None:
    from indexer.search import SearchRequest

    page = service.search(SearchRequest(all=[DEMO_TAG], limit=top))
    hits = [(_name(h), h.score, DEMO_TAG in truth[_name(h)]) for h in page.hits]
    in_archive = sum(DEMO_TAG in tags for tags in truth.values())
    # A wrong hit says what the picture holds that the model never learned (a pink object is
    # "red" to a model that never saw pink), else its true tags.
    heldout = _truth(samples / "heldout_test.txt")
    shown = {
        name: {f"{', '.join(sorted(heldout[name]))}: never learned by this model"}
        if heldout.get(name)
        else tags
        for name, tags in truth.items()
    }
    _print_hits(f"Tag search '{DEMO_TAG}'", hits, DEMO_TAG, in_archive, shown)


def _similar_search(
    service: Any, names: dict[int, str], truth: dict[str, set[str]], top: int
) -> None:
    from indexer.search import SearchRequest

    query_id = min(names)
    query_name = names[query_id]
    page = service.search(SearchRequest(similar_to=query_id, limit=top))
    shared = truth[query_name]
    typer.echo(f"\nSimilar to {query_name} (tags: {', '.join(sorted(shared))})")
    for hit in page.hits:
        other = truth[_name(hit)]
        overlap = len(shared & other) / max(1, len(shared | other))
        typer.echo(f"  {_name(hit)}  cosine {hit.score:.3f}  tag overlap {overlap:.0%}")


def _concept_search(service: Any, samples: Path, concept: Any, top: int) -> None:
    from indexer.search import SearchRequest

    truth = _truth(samples / "heldout_test.txt")
    request = SearchRequest(text=concept.name, descriptions=concept.descriptions, limit=top)
    page = service.search(request)
    hits = [(_name(h), float(h.score), concept.name in truth[_name(h)]) for h in page.hits]
    typer.echo(f"\nA concept the model never saw: '{concept.name}' ({concept.descriptions[0]})")
    in_archive = sum(concept.name in present for present in truth.values())
    _print_hits(f"Open-set search '{concept.name}'", hits, concept.name, in_archive)
