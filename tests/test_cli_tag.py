"""``ramdex tag`` and ``ramdex models``: output formats, failures and exit codes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from api.cli import app
from tests.conftest import GOLDEN_IMAGES

runner = CliRunner()


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def _inputs(tmp_path: Path, golden_dir: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for name in GOLDEN_IMAGES:
        shutil.copy(golden_dir / name, folder / name)
    return folder


def test_json_all_scores_matches_golden(tmp_path, golden_dir):
    folder = _inputs(tmp_path, golden_dir)
    result = runner.invoke(
        app,
        [
            "tag",
            str(folder),
            "--checkpoint",
            str(golden_dir / "checkpoint.pth"),
            "--format",
            "json",
            "--all-scores",
            "--batch-size",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output
    records = {Path(r["path"]).name: r for r in json.loads(result.stdout)}
    assert set(records) == set(GOLDEN_IMAGES)
    tag_file = Path(__file__).parents[1] / "ram_pp" / "data" / "ram_tag_list.txt"
    tags = [line.strip() for line in tag_file.read_text().splitlines()]
    expected = _sigmoid(np.load(golden_dir / "logits_batch.npy"))
    for i, name in enumerate(GOLDEN_IMAGES):
        scores = records[name]["scores"]
        assert list(scores) == tags[:20]
        np.testing.assert_allclose(list(scores.values()), expected[i], atol=1e-4)


def test_unreadable_files_are_reported_and_the_rest_still_run(tmp_path, golden_dir):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    good = golden_dir / GOLDEN_IMAGES[0]
    result = runner.invoke(
        app,
        [
            "tag",
            str(bad),
            str(good),
            "--checkpoint",
            str(golden_dir / "checkpoint.pth"),
            "--format",
            "jsonl",
            "--lang",
            "both",
            "--top-k",
            "2",
        ],
    )
    assert result.exit_code == 1
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    by_name = {Path(r["path"]).name: r for r in lines}
    assert "broken.jpg" in by_name["broken.jpg"]["path"] and by_name["broken.jpg"]["error"]
    good_tags = by_name[GOLDEN_IMAGES[0]]["tags"]
    assert len(good_tags) == 2 and {"en", "zh", "probability"} <= set(good_tags[0])
    assert "broken.jpg" in result.stderr


def test_text_output_and_real_entry_point(tmp_path, golden_dir):
    """The installed console script, as a user runs it."""
    exe = Path(sys.executable).parent / "ramdex"
    proc = subprocess.run(
        [
            str(exe),
            "tag",
            str(golden_dir / GOLDEN_IMAGES[0]),
            "--checkpoint",
            str(golden_dir / "checkpoint.pth"),
            "--lang",
            "zh",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "算盘" in proc.stdout  # upstream selected "abacus" for this image


def test_unknown_model_and_missing_inputs_fail_with_guidance(tmp_path, golden_dir):
    result = runner.invoke(app, ["tag", str(golden_dir / GOLDEN_IMAGES[0]), "--model", "nope"])
    assert result.exit_code == 2 and "unknown model" in result.stderr
    result = runner.invoke(
        app, ["tag", str(golden_dir / GOLDEN_IMAGES[0]), "--model", "ram_plus_swin_large_14m"]
    )
    assert result.exit_code == 2 and "ramdex models download" in result.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["tag", str(empty)])
    assert result.exit_code == 1 and "no image files" in result.stderr


def test_models_convert_to_safetensors(tmp_path, golden_dir):
    target = tmp_path / "tiny.safetensors"
    result = runner.invoke(
        app, ["models", "convert", str(golden_dir / "checkpoint.pth"), str(target)]
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        app,
        [
            "tag",
            str(golden_dir / GOLDEN_IMAGES[0]),
            "--checkpoint",
            str(target),
            "--format",
            "json",
            "--all-scores",
        ],
    )
    assert result.exit_code == 0, result.output
    scores = list(json.loads(result.stdout)[0]["scores"].values())
    expected = _sigmoid(np.load(golden_dir / f"logits_{GOLDEN_IMAGES[0]}.npy").reshape(-1))
    np.testing.assert_allclose(scores, expected, atol=1e-4)


def test_models_list_shows_configs_and_cache_state(tmp_path):
    result = runner.invoke(app, ["models", "list", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 0
    assert "ram_plus_swin_large_14m" in result.stdout and "not cached" in result.stdout
    cached = tmp_path / "ram_plus_swin_large_14m" / "ram_plus_swin_large_14m.pth"
    cached.parent.mkdir()
    cached.write_bytes(b"x")
    result = runner.invoke(app, ["models", "list", "--cache-dir", str(tmp_path)])
    line = next(x for x in result.stdout.splitlines() if x.startswith("ram_plus_swin_large_14m"))
    assert " cached" in line and "not cached" not in line


def test_lang_zh_without_chinese_names_says_so_and_prints_english_once(golden_dir):
    # The bundled demo model's vocabulary has no Chinese names (its "Chinese" repeats English).
    image = str(golden_dir / GOLDEN_IMAGES[0])
    result = runner.invoke(app, ["tag", image, "--model", "demo", "--lang", "both"])
    assert result.exit_code == 0, result.output
    assert "--lang both: model ramdex-demo has no Chinese tag names" in result.stderr
    assert " | " not in result.stdout  # not "circle | circle"
    json_out = runner.invoke(
        app, ["tag", image, "--model", "demo", "--lang", "zh", "--format", "json"]
    )
    tags = json.loads(json_out.stdout)[0]["tags"]
    assert tags and all("en" in t and "zh" not in t for t in tags)


def test_compile_option_and_settings_reach_the_engine(tmp_path, golden_dir, monkeypatch):
    """``--compile`` (or RAMDEX_MODEL__COMPILE) and RAMDEX_MODEL__CHANNELS_LAST build the engine
    with them (the compiled path itself is tested in tests/test_inference.py)."""
    import ram_pp.inference as inference
    from indexer.settings import get_settings

    seen: list[dict] = []
    real = inference.TaggingEngine

    class Recording(real):
        def __init__(self, *args, **kwargs):
            seen.append({k: kwargs.get(k) for k in ("compile", "channels_last")})
            kwargs["compile"] = False  # compiling takes minutes; the option is what is tested
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(inference, "TaggingEngine", Recording)
    image = str(golden_dir / GOLDEN_IMAGES[0])
    checkpoint = ["--checkpoint", str(golden_dir / "checkpoint.pth")]
    assert runner.invoke(app, ["tag", image, *checkpoint, "--compile"]).exit_code == 0
    monkeypatch.setenv("RAMDEX_MODEL__CHANNELS_LAST", "1")
    get_settings.cache_clear()  # settings are read once per process
    assert runner.invoke(app, ["tag", image, *checkpoint]).exit_code == 0
    assert seen == [
        {"compile": True, "channels_last": False},
        {"compile": False, "channels_last": True},
    ]
    monkeypatch.delenv("RAMDEX_MODEL__CHANNELS_LAST")
    get_settings.cache_clear()
