"""Compact token formats (indexer/token_codecs.py) and their use in the token store."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from indexer import token_codecs
from indexer.token_codecs import CodecError, PCACodec, PQCodec, train_codec
from indexer.token_store import TokenStore, TokenStoreError, bytes_per_asset

T, C = 145, 512
# What the tests that train a PQ codebook lower the training floor to (patched in
# ``token_codecs``): 8 tokens per centroid instead of FAISS's 39, and still PCA's 4 x 512. PQ
# training (64 k-means of 256 centroids) is linear in the tokens and took most of this module's
# time on the real floor (69-80 assets); test_training_needs_enough_tokens keeps the real one.
SMALL_FLOOR = 256 * 8


@pytest.fixture(autouse=True)
def one_faiss_thread():
    """FAISS on one OpenMP thread: its k-means ran 2x slower on two threads sharing the test
    machine's cores with other processes."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture()
def small_floor(monkeypatch: pytest.MonkeyPatch) -> int:
    """Codecs train from :data:`SMALL_FLOOR` tokens up (and ``min_train_assets`` follows)."""
    monkeypatch.setattr(token_codecs, "MIN_TRAIN_TOKENS", SMALL_FLOOR)
    return SMALL_FLOOR


def low_rank_tokens(n: int, seed: int = 0, rank: int = 32, noise: float = 0.01) -> np.ndarray:
    """Tokens on a random rank-32 subspace plus small noise: what a compact format can keep."""
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(99).normal(size=(rank, C)).astype(np.float32) / np.sqrt(rank)
    z = rng.normal(size=(n, T, rank)).astype(np.float32)
    return z @ basis + noise * rng.normal(size=(n, T, C)).astype(np.float32)


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_bytes_per_asset_of_the_compact_formats() -> None:
    assert bytes_per_asset("pq128") == 145 * 128 == 18_560
    assert bytes_per_asset("pq64") == 145 * 64
    assert bytes_per_asset("pca128i8") == 145 * (4 + 128) == 19_140
    assert bytes_per_asset("pca64i8") == 145 * (4 + 64)
    with pytest.raises(ValueError):
        bytes_per_asset("pq7")


@pytest.mark.parametrize(
    ("fmt", "bound", "assets"),
    [("pca64i8", 0.02, 80), ("pq64", 0.6, 20)],  # pq64 on 80 assets: 0.53, on 20: 0.54
)
def test_round_trip_error_bounds(fmt: str, bound: float, assets: int, small_floor: int) -> None:
    train, test = low_rank_tokens(assets, seed=1), low_rank_tokens(20, seed=2)
    codec = train_codec(fmt, train)
    back = codec.decode(codec.encode(test))
    assert back.shape == test.shape
    assert rel_err(back, test) < bound
    # and the bound is not trivially loose: random codes are far off
    noise = np.random.default_rng(3).normal(size=test.shape).astype(np.float32)
    assert rel_err(noise, test) > 1.0


def test_pq_training_is_deterministic(monkeypatch: pytest.MonkeyPatch) -> None:
    # Three trainings on 4 tokens per centroid (repeatability, not quality, is asserted), from
    # more tokens than the training sample: the seeded sampling is part of what must repeat.
    sample = 256 * 4
    monkeypatch.setattr(token_codecs, "MIN_TRAIN_TOKENS", sample)
    monkeypatch.setattr(token_codecs, "TRAIN_TOKENS", sample)
    train = low_rank_tokens(10, seed=1)
    assert train.shape[0] * T > sample
    a, b = PQCodec.train("pq64", train, seed=0), PQCodec.train("pq64", train, seed=0)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    # and the seed is what decides (equal centroids are not a constant)
    assert not np.array_equal(PQCodec.train("pq64", train, seed=1).centroids, a.centroids)


def test_training_needs_enough_tokens() -> None:
    with pytest.raises(CodecError, match="at least"):
        train_codec("pca64i8", low_rank_tokens(2))


@pytest.mark.parametrize("fmt", ["pca64i8", "pq64"])
def test_codebook_persists_in_the_store_and_is_not_retrained(
    tmp_path, fmt: str, small_floor: int
) -> None:
    need = token_codecs.min_train_assets(T)
    first, later = low_rank_tokens(need, seed=4), low_rank_tokens(10, seed=5)
    store = TokenStore(tmp_path, tokens=T, dim=C, fmt=fmt)
    with pytest.raises(TokenStoreError, match="trains its codebook"):
        store.add(np.arange(3), first[:3])
    store.add(np.arange(need), first)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    entry = manifest["codec"]
    assert entry["format"] == fmt and (tmp_path / entry["file"]).is_file()
    before = (tmp_path / entry["file"]).read_bytes()
    store.add(np.arange(need, need + 10), later)  # a small later batch: encoded, no training
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["codec"]["file"] == entry["file"]
    assert (tmp_path / entry["file"]).read_bytes() == before

    reader = TokenStore(tmp_path, read_only=True)  # a fresh process view: loads the codebook
    assert reader.format == fmt and len(reader) == need + 10
    got = reader.get(np.arange(need, need + 10))
    codec = token_codecs.load_codec(fmt, tmp_path / entry["file"])
    np.testing.assert_allclose(got, codec.decode(codec.encode(later)), rtol=1e-5, atol=1e-5)
    assert rel_err(got, later) < (0.02 if fmt.startswith("pca") else 0.6)
    chunks = list(reader.iter_chunks(16))
    assert sum(len(i) for i, _ in chunks) == need + 10
    # compaction copies codes as they are
    store.delete(np.arange(5))
    store.compact()
    np.testing.assert_array_equal(TokenStore(tmp_path).get(np.arange(need, need + 10)), got)


def test_a_corrupt_codebook_is_a_clear_error(tmp_path) -> None:
    need = token_codecs.min_train_assets(T)
    store = TokenStore(tmp_path, tokens=T, dim=C, fmt="pca64i8")
    store.add(np.arange(need), low_rank_tokens(need))
    entry = json.loads((tmp_path / "manifest.json").read_text())["codec"]
    (tmp_path / entry["file"]).write_bytes(b"not a numpy file")
    with pytest.raises(CodecError, match="cannot read codebook"):
        TokenStore(tmp_path, read_only=True).get([0])


def test_ranking_agreement_on_a_small_synthetic_archive(tmp_path) -> None:
    """Assets whose concept strength is a direction in a low-rank token space: the compact
    store's ranking of a linear attention-like score agrees with float16's."""
    n = 300
    e = low_rank_tokens(n, seed=7, noise=0.02)
    rng = np.random.default_rng(8)
    queries = [rng.normal(size=C).astype(np.float32) for _ in range(3)]
    ref = TokenStore(tmp_path / "f16", tokens=T, dim=C, fmt="float16")
    ref.add(np.arange(n), e)
    small = TokenStore(tmp_path / "pca", tokens=T, dim=C, fmt="pca64i8")
    small.add(np.arange(n), e)

    def scores(x: np.ndarray, q: np.ndarray) -> np.ndarray:
        s = x @ q  # (n, T): token scores; the score of an asset is its soft maximum
        return np.log(np.exp(s - s.max(1, keepdims=True)).sum(1)) + s.max(1)

    a, b = ref.get(np.arange(n)), small.get(np.arange(n))
    for q in queries:
        top_a = set(np.argsort(-scores(a, q))[:30].tolist())
        top_b = set(np.argsort(-scores(b, q))[:30].tolist())
        assert len(top_a & top_b) / 30 >= 0.9


def test_pca_project_matches_decoded_dot_products() -> None:
    """Scoring without decompressing: q . e = (B q) . z + q . mean for the decoded token."""
    codec = PCACodec.train("pca64i8", low_rank_tokens(80))
    e = low_rank_tokens(4, seed=9)
    rec = codec.encode(e)
    q = np.random.default_rng(1).normal(size=C).astype(np.float32)
    z = rec["q"].astype(np.float32) * rec["scale"][..., None]
    direct = z @ (codec.basis @ q) + codec.mean @ q
    np.testing.assert_allclose(direct, codec.decode(rec) @ q, rtol=1e-4, atol=1e-3)
