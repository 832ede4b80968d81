"""POST /tag: synchronous tagging against `ramdex tag` and the open-set head, micro-batching
across concurrent requests, nothing stored unless asked, bad input, scopes and collections.

Real parts: SQLite and PostgreSQL databases built by the migrations, the tiny random
``test_micro`` model (seeded: `ramdex tag --model test_micro` loads the same weights), the tiny
random CLIP text tower, a loopback HTTP server for URLs. Reference numbers come from `ramdex tag`
run in this process and from the model's own head, never from the code under test.
"""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
import torch
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api.app import create_app
from api.auth import create_key
from indexer.db.session import create_engine_for
from indexer.settings import Settings
from indexer.tagger import tagger_for
from tests.api_support import Keys, fresh_database, make_keys, make_settings, wait_for_job
from tests.cli_support import run_ramdex
from tests.ingest_fixtures import encode, photo_like

pytest_plugins = ["tests.api_support"]

WAIT_MS = 150.0  # the main app's batch wait: long enough for 8 threads' requests to meet
MAX_IMAGES = 4


@dataclass
class Env:
    client: TestClient
    keys: Keys
    settings: Settings
    db_url: str
    images: dict[str, bytes]
    folder: Path


def _images() -> dict[str, bytes]:
    return {
        f"photo-{i}.{'png' if i % 2 else 'jpg'}": encode(
            photo_like(96, 64, seed=300 + i), "PNG" if i % 2 else "JPEG"
        )
        for i in range(8)
    }


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, text_encoder_dir: Path) -> Iterator[Env]:
    folder = tmp_path_factory.mktemp("tag-api")
    with fresh_database("sqlite", folder) as url:
        settings = make_settings(
            folder / "home",
            url,
            text_encoder_dir,
            tag_batch_size=8,
            tag_batch_wait_ms=WAIT_MS,
            tag_max_images=MAX_IMAGES,
        )
        images = _images()
        for name, data in images.items():
            (folder / name).write_bytes(data)
        with TestClient(create_app(settings)) as client:
            yield Env(client, make_keys(url), settings, url, images, folder)


def _files(env: Env, *names: str) -> list[tuple[str, tuple[str, bytes]]]:
    return [("file", (name, env.images[name])) for name in names]


_CLI_RUNS: dict[tuple[str, ...], dict[str, dict]] = {}


def _cli_tags(env: Env, *args: str) -> dict[str, dict]:
    """`ramdex tag --format json` on the env's image files, by file name (once per options)."""
    if args in _CLI_RUNS:
        return _CLI_RUNS[args]
    paths = [str(env.folder / name) for name in env.images]
    code, out = run_ramdex(
        "tag", "--model", "test_micro", "--device", "cpu", "--format", "json", *args, *paths
    )
    assert code == 0, out
    import json

    records = json.loads(out[out.index("[") :])
    _CLI_RUNS[args] = {Path(r["path"]).name: r for r in records}
    return _CLI_RUNS[args]


def _tagged(env: Env, names: list[str], **form: str) -> dict[str, dict]:
    reply = env.client.post("/tag", files=_files(env, *names), data=form, headers=env.keys.read)
    assert reply.status_code == 200, reply.text
    return {image["name"]: image for image in reply.json()["images"]}


def _assert_same_tags(api_image: dict, cli_record: dict) -> None:
    got = [(t["name"], t.get("name_zh"), t["probability"]) for t in api_image["tags"]]
    want = [(t["en"], t.get("zh"), t["probability"]) for t in cli_record["tags"]]
    assert [g[:2] for g in got] == [w[:2] for w in want]
    np.testing.assert_allclose([g[2] for g in got], [w[2] for w in want], atol=2e-6)
    assert all(t["source"] == "model" for t in api_image["tags"])


# ---------- the same tags as `ramdex tag` ----------
@pytest.mark.parametrize(
    ("form", "cli"),
    [
        ({"lang": "both", "top_k": "5"}, ["--lang", "both", "--top-k", "5"]),
        ({"lang": "both", "threshold": "0.27"}, ["--lang", "both", "--threshold", "0.27"]),
        (
            {"lang": "both", "threshold": "0.25", "top_k": "3"},
            ["--lang", "both", "--threshold", "0.25", "--top-k", "3"],
        ),
    ],
    ids=["top-k", "threshold", "threshold+top-k"],
)
def test_tags_equal_ramdex_tag(env: Env, form: dict[str, str], cli: list[str]) -> None:
    names = list(env.images)[:MAX_IMAGES]
    expected = _cli_tags(env, *cli)
    got = _tagged(env, names, **form)
    for name in names:
        assert got[name]["tags"], "the options keep some tags"
        _assert_same_tags(got[name], expected[name])
        assert got[name]["model"] == "test_micro"
        assert (got[name]["width"], got[name]["height"]) == (96, 64)


def test_default_selection_and_all_scores_equal_ramdex_tag(env: Env) -> None:
    name = "photo-0.jpg"
    expected = _cli_tags(env, "--all-scores")[name]
    image = _tagged(env, [name], all_scores="true", lang="en")[name]
    # Per-tag thresholds of the model: the same (maybe empty) selection as the CLI.
    assert [t["name"] for t in image["tags"]] == [t["en"] for t in expected["tags"]]
    assert all("name_zh" not in t for t in image["tags"])  # lang=en
    assert set(image["scores"]) == set(expected["scores"])
    np.testing.assert_allclose(
        [image["scores"][k] for k in expected["scores"]],
        list(expected["scores"].values()),
        atol=2e-6,
    )


def test_a_threshold_override_applies_to_tag(env: Env) -> None:
    name = "photo-1.png"
    top = _tagged(env, [name], top_k="1")[name]["tags"][0]
    engine = create_engine_for(env.db_url)
    try:
        with Session(engine) as session:
            # The vocabulary rows an ingest writes (nothing was ingested into this archive).
            from indexer.db.tag_repo import ensure_vocabulary
            from indexer.models import configured_model_id

            services = env.client.app.state.services
            ensure_vocabulary(
                session, configured_model_id(env.settings), services.loaded_model().vocabulary
            )
            session.commit()
            tag_id = session.scalar(
                sa.text("SELECT id FROM tags WHERE english = :n"), {"n": top["name"]}
            )
        assert tag_id is not None
        low = round(top["probability"] - 0.01, 4)
        reply = env.client.patch(
            f"/tags/{tag_id}", json={"threshold_override": low}, headers=env.keys.admin
        )
        assert reply.status_code == 200, reply.text
        try:
            tags = _tagged(env, [name])[name]["tags"]
            hit = [t for t in tags if t["name"] == top["name"]]
            assert hit and hit[0]["threshold"] == pytest.approx(low)
        finally:
            env.client.patch(
                f"/tags/{tag_id}", json={"threshold_override": None}, headers=env.keys.admin
            )
        assert top["name"] not in [t["name"] for t in _tagged(env, [name])[name]["tags"]]
    finally:
        engine.dispose()


# ---------- micro-batching ----------
class ForwardCounter:
    """Wraps the engine's forward: the batch sizes it was called with."""

    def __init__(self, engine) -> None:  # noqa: ANN001 - ram_pp.inference.TaggingEngine
        self.engine = engine
        self.sizes: list[int] = []
        self.seconds: list[float] = []
        self._run = engine.run

    def __call__(self, pixels: torch.Tensor):  # noqa: ANN204 - BatchOutput
        started = time.perf_counter()
        out = self._run(pixels)
        self.seconds.append(time.perf_counter() - started)
        self.sizes.append(int(pixels.shape[0]))
        return out

    def __enter__(self) -> ForwardCounter:
        self.engine.run = self
        return self

    def __exit__(self, *exc: object) -> None:
        del self.engine.run  # the class's method again


def test_concurrent_requests_share_forwards_with_the_same_results(env: Env) -> None:
    names = list(env.images)
    expected = _cli_tags(env, "--lang", "both", "--top-k", "5")
    tagger = tagger_for(env.client.app.state.services)
    barrier = threading.Barrier(len(names))

    def one(name: str) -> dict:
        barrier.wait()
        return _tagged(env, [name], top_k="5")[name]

    with ForwardCounter(tagger.engine) as forwards, ThreadPoolExecutor(len(names)) as pool:
        results = list(pool.map(one, names))
    assert sum(forwards.sizes) == len(names)
    assert len(forwards.sizes) <= len(names) // 2, forwards.sizes  # 8 requests, <= 4 forwards
    assert max(forwards.sizes) >= 3, forwards.sizes
    for name, image in zip(names, results, strict=True):
        _assert_same_tags(image, expected[name])  # batched with others: the same numbers


def test_a_lone_request_waits_at_most_the_batch_wait(env: Env) -> None:
    tagger = tagger_for(env.client.app.state.services)
    _tagged(env, ["photo-2.jpg"])  # warm
    with ForwardCounter(tagger.engine) as forwards:
        started = time.perf_counter()
        _tagged(env, ["photo-2.jpg"])
        took = time.perf_counter() - started
    assert forwards.sizes == [1]
    # The wait after the first item, the forward, plus decoding and HTTP on a busy machine.
    assert WAIT_MS / 1000 * 0.9 <= took < WAIT_MS / 1000 + forwards.seconds[0] + 0.75, took


def test_several_images_of_one_request_run_as_one_forward(env: Env) -> None:
    tagger = tagger_for(env.client.app.state.services)
    with ForwardCounter(tagger.engine) as forwards:
        got = _tagged(env, list(env.images)[:MAX_IMAGES])
    assert len(got) == MAX_IMAGES and forwards.sizes == [MAX_IMAGES]


# ---------- concepts ----------
def _concept_rows(settings: Settings, name: str, descriptions: list[str]) -> np.ndarray:
    from ram_pp.concepts import encode_concepts, make_concept
    from ram_pp.text_encoder import load_text_encoder

    concept = make_concept(name, descriptions, use_templates=not descriptions)
    bank = encode_concepts([concept], load_text_encoder(settings.model.text_encoder))
    return bank.embeddings[0][: len(concept.descriptions)].float().numpy()


def _reference_probability(settings: Settings, data: bytes, rows: np.ndarray) -> float:
    """The concept's probability by the model's own head over E from the engine itself."""
    from indexer.models import load_configured_model
    from ram_pp.inference import TaggingEngine
    from ram_pp.labels import LabelBank

    engine = TaggingEngine(load_configured_model(settings), device="cpu", decode_workers=0)
    tokens = engine.results_for_batch(engine.preprocess.load(data)[None], ["q"])[0].tokens
    bank = LabelBank.from_ragged([torch.from_numpy(rows)])
    with torch.inference_mode():
        logits = engine.model.logits_from_embeddings(torch.from_numpy(tokens[None]).float(), bank)
    return float(torch.sigmoid(logits[0, 0]))


@pytest.fixture(scope="module")
def concepts(env: Env) -> dict[str, int]:
    """A global concept with embeddings, a draft (descriptions only), and one concept in each
    of two collections; plus keys limited to collection A."""
    from indexer.db.collection_repo import create_collection, set_key_collections
    from indexer.db.concept_repo import create_concept
    from indexer.models import configured_model_id
    from ram_pp.concepts import make_concept

    model_id = configured_model_id(env.settings)
    engine = create_engine_for(env.db_url)
    ids: dict[str, int] = {}
    try:
        with Session(engine) as session:
            a = create_collection(session, "tag-a")
            b = create_collection(session, "tag-b")
            for name, descs, collection in (
                ("sunlit meadow", ["a sunny meadow with grass"], None),
                ("harbour crane", ["a crane lifting containers"], a.id),
                ("night market", ["stalls lit at night"], b.id),
            ):
                row = create_concept(
                    session,
                    model_name=model_id,
                    name=name,
                    descriptions=list(make_concept(name, descs, use_templates=False).descriptions),
                    embeddings=_concept_rows(env.settings, name, descs),
                    threshold=0.3,
                )
                row.collection_id = collection
                ids[name] = row.id
            draft = create_concept(
                session, model_name=model_id, name="old lighthouse", descriptions=["a lighthouse"]
            )
            ids["old lighthouse"] = draft.id
            for scope in ("read", "write"):
                key = create_key(session, name=f"limited-{scope}", scopes=[scope])
                key_row_id = session.scalar(
                    sa.text("SELECT id FROM api_keys WHERE key_id = :k"), {"k": key.key_id}
                )
                set_key_collections(session, key_row_id, [a.id])
                ids[f"key-{scope}"] = key.token  # type: ignore[assignment]
            ids["collection-a"], ids["collection-b"] = a.id, b.id
            session.commit()
    finally:
        engine.dispose()
    return ids


def test_concepts_scored_by_the_open_set_head(env: Env, concepts: dict) -> None:
    name = "photo-3.png"
    reply = env.client.post(
        "/tag",
        files=_files(env, name),
        data={"concepts": ["sunlit meadow", str(concepts["old lighthouse"])], "threshold": "0"},
        headers=env.keys.read,
    )
    assert reply.status_code == 200, reply.text
    tags = {t["name"]: t for t in reply.json()["images"][0]["tags"] if t["source"] == "concept"}
    assert set(tags) == {"sunlit meadow", "old lighthouse"}
    for concept, descs in (
        ("sunlit meadow", ["a sunny meadow with grass"]),
        ("old lighthouse", ["a lighthouse"]),
    ):
        want = _reference_probability(
            env.settings, env.images[name], _concept_rows(env.settings, concept, descs)
        )
        assert tags[concept]["probability"] == pytest.approx(want, abs=1e-4)
        assert tags[concept]["concept_id"] == concepts[concept]


def test_concepts_in_all_scores_and_their_own_threshold(env: Env, concepts: dict) -> None:
    name = "photo-4.jpg"
    image = _tagged(env, [name], concepts="sunlit meadow", all_scores="true")[name]
    p = image["scores"]["sunlit meadow"]
    listed = [t for t in image["tags"] if t["source"] == "concept"]
    # Threshold 0.3 (its own): listed exactly when its probability passes it.
    assert bool(listed) == (p > 0.3)
    if listed:
        assert listed[0]["threshold"] == pytest.approx(0.3)


def test_a_collection_limited_key_sees_only_global_and_its_concepts(
    env: Env, concepts: dict
) -> None:
    limited = {"Authorization": f"Bearer {concepts['key-read']}"}

    def ask(concept: str) -> int:
        reply = env.client.post(
            "/tag",
            files=_files(env, "photo-0.jpg"),
            data={"concepts": concept, "threshold": "0"},
            headers=limited,
        )
        return reply.status_code, reply.json()

    assert ask("sunlit meadow")[0] == 200  # global
    assert ask("harbour crane")[0] == 200  # of collection A
    status, body = ask("night market")  # of collection B: as if it did not exist
    assert status == 422 and body["type"].endswith("/unknown-concept")
    assert (
        ask("no such concept")[1]["detail"].replace("no such concept", "night market")
        == body["detail"]
    )
    assert ask(str(concepts["night market"]))[0] == 422  # by id neither


# ---------- storing ----------
def _counts(db_url: str) -> tuple[int, int, int]:
    engine = create_engine_for(db_url)
    try:
        with engine.connect() as conn:
            return tuple(  # type: ignore[return-value]
                conn.scalar(sa.text(f"SELECT count(*) FROM {t}"))
                for t in ("assets", "jobs", "asset_sources")
            )
    finally:
        engine.dispose()


def test_nothing_is_stored_unless_asked(env: Env, concepts: dict) -> None:
    before = _counts(env.db_url)
    _tagged(env, list(env.images)[:2], concepts="sunlit meadow", all_scores="true")
    assert _counts(env.db_url) == before
    media = env.settings.media_dir
    assert not any(p.is_file() for p in media.rglob("*")) if media.exists() else True


def test_a_read_key_cannot_store(env: Env) -> None:
    reply = env.client.post(
        "/tag", files=_files(env, "photo-0.jpg"), data={"store": "true"}, headers=env.keys.read
    )
    assert reply.status_code == 403 and "write" in reply.json()["detail"]


def test_store_true_ingests_the_image(
    tmp_path_factory: pytest.TempPathFactory, text_encoder_dir: Path
) -> None:
    """On PostgreSQL (the module's other apps run on SQLite, where storing is tested too)."""
    folder = tmp_path_factory.mktemp("tag-store-postgresql")
    data = encode(photo_like(96, 64, seed=999), "JPEG")
    with fresh_database("postgresql", folder) as url:
        settings = make_settings(folder / "home", url, text_encoder_dir)
        keys = make_keys(url)
        with TestClient(create_app(settings)) as client:
            before = _counts(url)
            reply = client.post(
                "/tag",
                files=[("file", ("stored.jpg", data))],
                data={"store": "true", "top_k": "3"},
                headers=keys.write,
            )
            assert reply.status_code == 200, reply.text
            image = reply.json()["images"][0]
            stored = image["stored"]
            assert stored["state"] == "queued" and stored["asset_id"]
            assert wait_for_job(client, keys.read, stored["job_id"])["status"] == "done"
            assert _counts(url)[0] == before[0] + 1
            asset = client.get(f"/assets/{stored['asset_id']}", headers=keys.read).json()
            assert asset["status"] == "done"
            scores = {t["name"]: t["score"] for t in asset["tags"]}
            for tag in image["tags"]:  # ingest's model run gives the same probabilities
                assert scores[tag["name"]] == pytest.approx(tag["probability"], abs=1e-4)
            again = client.post(
                "/tag",
                files=[("file", ("x.jpg", data))],
                data={"store": "true"},
                headers=keys.write,
            ).json()["images"][0]["stored"]
            assert again["state"] == "duplicate" and again["asset_id"] == stored["asset_id"]
            client.app.state.services.wait_background(timeout_s=30)


def test_a_limited_key_stores_into_its_collection(env: Env, concepts: dict) -> None:
    limited = {"Authorization": f"Bearer {concepts['key-write']}"}
    data = encode(photo_like(70, 50, seed=4242), "PNG")
    first = env.client.post(  # an unrestricted key stored it first: in no collection
        "/tag",
        files=[("file", ("theirs.png", data))],
        data={"store": "true"},
        headers=env.keys.write,
    )
    theirs = first.json()["images"][0]["stored"]
    assert theirs["state"] == "queued"
    assert wait_for_job(env.client, env.keys.read, theirs["job_id"])["status"] == "done"
    reply = env.client.post(
        "/tag", files=[("file", ("mine.png", data))], data={"store": "true"}, headers=limited
    )
    assert reply.status_code == 200, reply.text
    stored = reply.json()["images"][0]["stored"]
    # As POST /assets answers it: never "duplicate" of an image the key could not see.
    assert stored["state"] == "queued"
    asset_id = stored["asset_id"]
    engine = create_engine_for(env.db_url)
    try:
        with engine.connect() as conn:
            held = conn.scalars(
                sa.text("SELECT collection_id FROM asset_collections WHERE asset_id = :a"),
                {"a": asset_id},
            ).all()
    finally:
        engine.dispose()
    assert held == [concepts["collection-a"]]
    other = env.client.post(
        "/tag",
        files=[("file", ("b.png", data))],
        data={"store": "true", "collection": "tag-b"},
        headers=limited,
    )
    assert other.status_code == 422 and "tag-b" in other.json()["detail"]
    env.client.app.state.services.wait_background(timeout_s=30)


# ---------- bad input ----------
def test_bad_input_answers_4xx_and_the_server_keeps_serving(env: Env) -> None:
    post = env.client.post
    read = env.keys.read
    cases = [
        (post("/tag", json={}, headers=read), 422, "no-image", "no image given"),
        (
            post("/tag", files=[("file", ("bad.jpg", b"\xff\xd8garbage"))], headers=read),
            422,
            "bad-image",
            "bad.jpg",
        ),
        (
            post("/tag", files=_files(env, *list(env.images)[:5]), headers=read),
            422,
            "too-many-images",
            "limit of 4",
        ),
        (  # past what the form parser reads at all: the same answer
            post("/tag", files=_files(env, *list(env.images)[:7]), headers=read),
            422,
            "too-many-images",
            "limit of 4",
        ),
        (
            post("/tag", json={"urls": ["http://127.0.0.1:9/x.jpg"]}, headers=read),
            422,
            "bad-image",
            "not a public address",
        ),
        (
            post("/tag", json={"urls": ["file:///etc/passwd"]}, headers=read),
            422,
            "validation",
            "http",
        ),
        (
            post("/tag", content=b"x", headers={**read, "Content-Type": "text/plain"}),
            415,
            None,
            "multipart",
        ),
        (post("/tag", json={"top_k": 0, "urls": []}, headers=read), 422, "validation", "top_k"),
        (
            post(
                "/tag",
                json={"concepts": ["nope"], "urls": ["https://example.invalid/a.jpg"]},
                headers=read,
            ),
            422,
            "unknown-concept",
            "nope",
        ),
        (post("/tag", files=_files(env, "photo-0.jpg")), 401, None, "API key"),
    ]
    for reply, status, kind, words in cases:
        assert reply.status_code == status, reply.text
        body = reply.json()
        assert reply.headers["content-type"].startswith("application/problem+json")
        if kind:
            assert body["type"].endswith(f"/{kind}"), body
        assert words in body["detail"], body
    # A bad image next to a good one: the good one is tagged, the bad one says why.
    mixed = post(
        "/tag",
        files=[("file", ("bad.png", b"not an image")), *_files(env, "photo-0.jpg")],
        headers=read,
    )
    assert mixed.status_code == 200
    bad, good = mixed.json()["images"]
    assert "not a usable image" in bad["error"] and "tags" not in bad or bad["tags"] == []
    assert good["name"] == "photo-0.jpg" and "error" not in good
    assert _tagged(env, ["photo-1.png"], top_k="1")["photo-1.png"]["tags"]


def test_a_body_over_the_limit_is_refused(
    tmp_path_factory: pytest.TempPathFactory, sqlite_url: str
) -> None:
    settings = make_settings(tmp_path_factory.mktemp("tag-small"), sqlite_url, tag_max_bytes=4096)
    keys = make_keys(sqlite_url)
    with TestClient(create_app(settings)) as client:
        big = encode(photo_like(200, 200, seed=1), "PNG")
        assert len(big) > 4096
        reply = client.post("/tag", files=[("file", ("big.png", big))], headers=keys.read)
        assert reply.status_code == 413


# ---------- URLs and a full queue (a second app: private URLs allowed, one-image queue) ----------
@pytest.fixture(scope="module")
def image_server(env: Env) -> Iterator[str]:
    """A loopback HTTP server serving the env's images (a public image host stands here)."""
    images = env.images

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            data = images.get(self.path.lstrip("/"))
            if data is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header(
                "Content-Type", "image/png" if self.path.endswith("png") else "image/jpeg"
            )
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def small_queue(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Keys]]:
    """An app on its own database with a one-image model queue and private URLs allowed."""
    folder = tmp_path_factory.mktemp("tag-queue")
    with fresh_database("sqlite", folder) as url:
        settings = make_settings(
            folder / "home", url, tag_batch_size=1, tag_batch_wait_ms=0, tag_queue_size=1
        )
        settings.ingest.allow_private_urls = True  # the loopback image server
        with TestClient(create_app(settings)) as client:
            yield client, make_keys(url)


def test_urls_are_fetched_and_tagged_like_files(env: Env, image_server: str, small_queue) -> None:
    client, keys = small_queue
    name = "photo-5.png"
    by_url = client.post(
        "/tag",
        json={"urls": [f"{image_server}/{name}", f"{image_server}/missing.jpg"], "top_k": 4},
        headers=keys.read,
    )
    assert by_url.status_code == 200, by_url.text
    got, missing = by_url.json()["images"]
    assert got["name"] == f"{image_server}/{name}" and "HTTP 404" in missing["error"]
    by_file = _tagged(env, [name], top_k="4")[name]
    assert [t["name"] for t in got["tags"]] == [t["name"] for t in by_file["tags"]]


def test_a_full_model_queue_answers_503_with_retry_after(env: Env, small_queue) -> None:
    client, keys = small_queue
    tagger = tagger_for(client.app.state.services)
    gate, entered = threading.Event(), threading.Event()
    real = tagger.engine.run

    def held(pixels: torch.Tensor):  # noqa: ANN202
        entered.set()
        gate.wait(10)
        return real(pixels)

    tagger.engine.run = held
    try:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(_post, client, keys, env.images["photo-0.jpg"])
            assert entered.wait(10)  # in the model
            second = pool.submit(_post, client, keys, env.images["photo-1.png"])
            deadline = time.monotonic() + 10
            while tagger.batcher.waiting() < 1 and time.monotonic() < deadline:
                time.sleep(0.01)  # the second request's image waits in the one-image queue
            third = _post(client, keys, env.images["photo-2.jpg"])
            assert third.status_code == 503, third.text
            assert int(third.headers["Retry-After"]) >= 1
            assert third.json()["type"].endswith("/busy")
            gate.set()
            assert first.result(10).status_code == 200 and second.result(10).status_code == 200
    finally:
        del tagger.engine.run
        gate.set()
    assert _post(client, keys, env.images["photo-2.jpg"]).status_code == 200


def _post(client: TestClient, keys: Keys, data: bytes):  # noqa: ANN202 - a response
    return client.post("/tag", files=[("file", ("q.jpg", data))], headers=keys.read)
