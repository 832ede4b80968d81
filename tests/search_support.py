"""A small archive with known ground truth for search tests: ``ram_pp.synth`` images (a seed the
bundled demo model never trained on) ingested by the real ingest path with the demo model.

Expected results come from the generator's ground truth (each image's tags and the held-out
concepts it shows), never from the search code under test.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from indexer.db.assets import AssetSource
from indexer.db.session import create_engine_for
from indexer.settings import Settings
from ram_pp import synth
from ram_pp.factory import DEMO_MODEL
from ram_pp.train_data import read_tag_list
from tests.api_support import fresh_database

SEED = 5150  # the demo model trained on seed 0; tests/test_demo_model.py uses 4711
SIZE = 80


@dataclass
class SearchArchive:
    """An ingested archive and what is true about each of its assets.

    Attributes:
        settings: settings that open it (its own home, database and the demo model).
        truth: asset id -> ground-truth tags.
        concepts: asset id -> held-out concepts the image shows.
        paths: asset id -> the image file it was ingested from.
        deleted: assets a test deleted (left out of the ground truth from then on).
    """

    settings: Settings
    truth: dict[int, set[str]]
    concepts: dict[int, set[str]]
    paths: dict[int, Path]
    deleted: set[int] = field(default_factory=set)

    def having(self, tag: str) -> set[int]:
        """Assets whose image truly shows ``tag``."""
        return {i for i, t in self.truth.items() if tag in t and i not in self.deleted}

    def showing(self, concept: str) -> set[int]:
        """Assets whose image truly shows the held-out ``concept``."""
        return {i for i, c in self.concepts.items() if concept in c and i not in self.deleted}


def heldout(name: str) -> synth.HeldOutConcept:
    """The generator's held-out concept ``name`` (with the descriptions that define it)."""
    return next(c for c in synth.HELDOUT if c.name == name)


def _by_name(tag_file: Path) -> dict[str, set[str]]:
    listed = read_tag_list(tag_file)
    return {p.name: set(tags) for p, tags in zip(listed.paths, listed.tags, strict=True)}


@contextmanager
def search_archive(folder: Path, backend: str, size: int = SIZE) -> Iterator[SearchArchive]:
    """Generate ``size`` images, ingest them into a fresh ``backend`` database, and yield the
    archive with its ground truth (the PostgreSQL database is dropped afterwards)."""
    from indexer.ingest.pipeline import ingest

    data = synth.write_dataset(
        folder / "samples", synth.SynthSpec(seed=SEED, n_train=0, n_val=0, n_test=size)
    )
    tags = _by_name(data.root / "test.txt")
    concepts = _by_name(data.root / "heldout_test.txt")
    with fresh_database(backend, folder) as url:
        settings = Settings(
            home=folder / "home",
            database={"url": url},
            model={"name": DEMO_MODEL, "device": "cpu"},
            broker={"url": ""},
        )
        summary = ingest([data.root / "images" / "test"], settings=settings, progress=False)
        assert summary.done == size, summary
        engine = create_engine_for(url)
        try:
            with engine.connect() as conn:
                rows = conn.execute(sa.select(AssetSource.asset_id, AssetSource.uri)).all()
        finally:
            engine.dispose()
        paths = {int(i): Path(uri) for i, uri in rows}
        assert len(paths) == size
        yield SearchArchive(
            settings,
            {i: tags[p.name] for i, p in paths.items()},
            {i: concepts[p.name] for i, p in paths.items()},
            paths,
        )


def jaccard(a: set[str], b: set[str]) -> float:
    """Overlap of two tag sets."""
    return len(a & b) / len(a | b) if a | b else 1.0
