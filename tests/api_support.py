"""Fixtures and helpers shared by the API tests (``pytest_plugins = ["tests.api_support"]``).

Databases are real: fresh PostgreSQL databases created over the ``test`` database (dropped
afterwards) and SQLite files, both built by running the Alembic migrations. The model is the tiny
random ``test_micro`` config, the text encoder a tiny random CLIP text tower saved to a temporary
folder, the broker the embedded (in-process) mode unless a test says otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api.app import create_app
from api.auth import create_key
from indexer.db.session import create_engine_for
from indexer.migrate import upgrade_database
from indexer.settings import Settings
from tests.db_fixtures import fresh_postgres_database
from tests.ingest_fixtures import encode, photo_like

MODEL = "test_micro"
UPLOAD_CAP = 256 * 1024  # small, so the oversize-upload tests stay small


@contextmanager
def fresh_database(backend: str, folder: Path) -> Iterator[str]:
    """A new, migrated database: PostgreSQL (dropped afterwards) or a SQLite file."""
    if backend == "postgresql":
        with fresh_postgres_database("ramdex_api_test") as url:
            upgrade_database(url)
            yield url
    else:
        url = f"sqlite:///{folder / 'ramdex.sqlite3'}"
        upgrade_database(url)
        yield url


@pytest.fixture(scope="session")
def pg_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated PostgreSQL database for the whole session."""
    with fresh_database("postgresql", tmp_path_factory.mktemp("pg")) as url:
        yield url


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated SQLite file for the whole session."""
    with fresh_database("sqlite", tmp_path_factory.mktemp("api-sqlite")) as url:
        yield url


@pytest.fixture(scope="session", params=["postgresql", "sqlite"])
def api_db_url(request: pytest.FixtureRequest) -> str:
    """Each test using this runs on both backends. (Not named ``db_url``: tests.db_fixtures
    has a function-scoped fixture of that name, and of two plugins' fixtures of one name the
    one registered last wins for every module.)"""
    return request.getfixturevalue("pg_url" if request.param == "postgresql" else "sqlite_url")


@pytest.fixture(scope="session")
def text_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random CLIP text tower with a byte-level tokenizer (no download)."""
    from ram_pp.text_encoder import build_random_clip_text_encoder

    return build_random_clip_text_encoder(tmp_path_factory.mktemp("text-encoder"))


def make_settings(
    home: Path, db_url: str, text_encoder: Path | None = None, **api: object
) -> Settings:
    """Settings for a test app: own home folder, given database, tiny random model."""
    return Settings(
        home=home,
        database={"url": db_url},
        model={
            "name": MODEL,
            "device": "cpu",
            "text_encoder": str(text_encoder) if text_encoder else "",
        },
        broker={"url": ""},
        # No warm start unless a test asks (tests/test_api_warm_start.py): in-process apps are
        # asked for /readyz at once, and most tests never run a concept query.
        api={"require_auth": True, "max_upload_bytes": UPLOAD_CAP, "warm_start": False, **api},
    )


@pytest.fixture(scope="session")
def settings_for():
    """``settings_for(home, db_url, text_encoder=None, **api)``: see :func:`make_settings`."""
    return make_settings


@dataclass
class Keys:
    """Bearer headers for one key of each scope."""

    read: dict[str, str]
    write: dict[str, str]
    admin: dict[str, str]


def make_keys(db_url: str) -> Keys:
    """Create one key per scope directly in the database."""
    engine = create_engine_for(db_url)
    try:
        with Session(engine) as session:
            tokens = {
                s: create_key(session, name=f"test-{s}", scopes=[s]).token
                for s in ("read", "write", "admin")
            }
            session.commit()
    finally:
        engine.dispose()
    return Keys(**{s: {"Authorization": f"Bearer {t}"} for s, t in tokens.items()})


@pytest.fixture(scope="session")
def api_env(
    api_db_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[TestClient, Keys, Settings]]:
    """A running app (lifespan entered) on one backend, with keys of every scope."""
    settings = make_settings(tmp_path_factory.mktemp("home"), api_db_url)
    keys = make_keys(api_db_url)
    with TestClient(create_app(settings)) as client:
        yield client, keys, settings


def wait_for_job(
    client: TestClient, headers: dict[str, str], job_id: int, timeout_s: float = 60
) -> dict:
    """Poll a job through the API until it ends; returns its last state."""
    deadline = time.monotonic() + timeout_s
    while True:
        job = client.get(f"/jobs/{job_id}", headers=headers).json()
        if job["status"] in ("done", "failed", "cancelled"):
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {job['status']}: {job}")
        time.sleep(0.05)


@pytest.fixture(scope="session")
def wait_job():
    """``wait_job(client, headers, job_id)``: poll a job until it ends (see wait_for_job)."""
    return wait_for_job


@dataclass
class Archive:
    """An app with a small ingested archive: uploaded images by asset id."""

    client: TestClient
    keys: Keys
    settings: Settings
    db_url: str
    images: dict[int, bytes] = field(default_factory=dict)


ARCHIVE_SIZE = 8


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def archive(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, text_encoder_dir: Path
) -> Iterator[Archive]:
    """A fresh database and home, an app on them, and ARCHIVE_SIZE uploaded, tagged images."""
    folder = tmp_path_factory.mktemp(f"archive-{request.param}")
    with fresh_database(request.param, folder) as url:
        settings = make_settings(folder / "home", url, text_encoder_dir)
        keys = make_keys(url)
        with TestClient(create_app(settings)) as client:
            found = Archive(client, keys, settings, url)
            jobs = []
            for i in range(ARCHIVE_SIZE):
                data = encode(photo_like(80, 60, seed=100 + i), "PNG" if i % 3 == 0 else "JPEG")
                reply = client.post(
                    "/assets", files={"file": (f"photo-{i}.img", data)}, headers=keys.write
                )
                assert reply.status_code == 202, reply.text
                found.images[reply.json()["asset_ids"][0]] = data
                jobs.append(reply.json()["job"]["id"])
            for job_id in jobs:
                assert wait_for_job(client, keys.read, job_id)["status"] == "done"
            # The FAISS sync after the last batch runs after its job reads "done".
            client.app.state.services.wait_background(timeout_s=60)
            yield found


def concept_probabilities(
    settings: Settings, name: str, descriptions: list[str]
) -> dict[int, float]:
    """Reference: a concept's probability per stored asset from the model's plain RAM++ head
    over the token store (not the fast path the service uses)."""
    import torch

    from indexer.models import configured_model_id, load_configured_model
    from indexer.stores import token_store_path
    from indexer.token_store import TokenStore
    from ram_pp.concepts import encode_concepts, make_concept
    from ram_pp.text_encoder import load_text_encoder

    loaded = load_configured_model(settings)
    encoder = load_text_encoder(settings.model.text_encoder)
    # Templates stand in only for a concept given by name alone (docs/retroactive.md).
    concept = make_concept(name, descriptions, use_templates=not descriptions)
    bank = encode_concepts([concept], encoder)
    store = TokenStore(token_store_path(settings, configured_model_id(settings)), read_only=True)
    ids = store.ids()
    with torch.inference_mode():
        logits = loaded.model.logits_from_embeddings(torch.from_numpy(store.get(ids)), bank)
    return dict(zip(ids.tolist(), torch.sigmoid(logits[:, 0]).tolist(), strict=True))


@pytest.fixture(scope="session")
def reference_probs():
    """``reference_probs(settings, name, descriptions)``: see concept_probabilities."""
    return concept_probabilities
