"""The procedural data set: determinism, labels that match the pixels, held-out concepts, files."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ram_pp import synth
from ram_pp.synth import HELDOUT, TAGS, Item, Scene, SynthSpec, render, sample_scene, write_dataset


def test_vocabulary_has_forty_tags_in_every_group() -> None:
    assert len(TAGS) >= 40
    assert len(set(TAGS)) == len(TAGS)
    for group in ("shape", "object", "colour", "pattern", "size", "count", "background"):
        assert synth.TAG_GROUPS[group], group
    for tag in TAGS:
        descs = synth.tag_descriptions(tag)
        assert len(descs) == synth.DESCRIPTIONS_PER_TAG
        assert all(tag in d or d == synth.GLOSS[tag] for d in descs)


def test_scenes_are_deterministic_per_seed_split_and_index() -> None:
    a = sample_scene(3, "train", 17)
    assert a == sample_scene(3, "train", 17)
    assert a.caption == sample_scene(3, "train", 17).caption
    assert np.array_equal(np.asarray(render(a)), np.asarray(render(sample_scene(3, "train", 17))))
    others = [
        sample_scene(4, "train", 17),
        sample_scene(3, "val", 17),
        sample_scene(3, "train", 18),
    ]
    assert all(o != a for o in others)


def test_unknown_split_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown split"):
        sample_scene(0, "dev", 0)


def test_rendered_pixels_show_the_labelled_colour_and_background() -> None:
    item = Item("shape", "circle", "red", "large", "solid", (0.5, 0.5), 0.3)
    scene = Scene("white background", (item,))
    pixels = np.asarray(render(scene, 96)).astype(int)
    assert pixels.shape == (96, 96, 3)
    assert np.abs(pixels[48, 48] - synth.RGB["red"]).max() < 2  # the circle's centre
    assert np.abs(pixels[2, 2] - synth.BACKGROUND_FLAT["white background"]).max() < 2
    assert scene.tags() == ["circle", "red", "solid", "large", "one object", "white background"]


def test_outlined_shape_is_hollow_and_striped_shape_has_two_colours() -> None:
    hollow = Scene(
        "gray background",
        (Item("shape", "square", "green", "large", "outlined", (0.5, 0.5), 0.3),),
    )
    pixels = np.asarray(render(hollow, 128)).astype(int)
    assert np.abs(pixels[64, 64] - synth.BACKGROUND_FLAT["gray background"]).max() < 2
    assert (np.abs(pixels - synth.RGB["green"]).max(axis=-1) < 2).sum() > 100
    striped = Scene(
        "gray background", (Item("shape", "square", "blue", "large", "striped", (0.5, 0.5), 0.3),)
    )
    centre = np.asarray(render(striped, 128))[48:80, 48:80].reshape(-1, 3)
    colours = {tuple(c) for c in centre}
    assert tuple(synth.RGB["blue"]) in colours and synth._secondary("blue") in colours


def test_tags_and_captions_follow_the_scene() -> None:
    for i in range(200):
        scene = sample_scene(0, "train", i)
        tags = set(scene.tags())
        assert 1 <= len(scene.items) <= synth.MAX_ITEMS
        assert synth.COUNT_TAGS[len(scene.items) - 1] in tags
        assert scene.background in tags and scene.background in scene.caption
        if any(item.size == "large" for item in scene.items):
            assert len(scene.items) == 1  # a large item is alone, in the centre
        for item in scene.items:
            assert {item.name, item.colour, item.size} <= tags
            assert item.colour in scene.caption
            assert item.name in scene.caption or synth._plural(item.name) in scene.caption
            if item.pattern in synth.TEXTURES:
                assert item.size == "large"


def test_training_splits_never_show_held_out_concepts_of_the_never_trained_kinds() -> None:
    unseen = [c for c in HELDOUT if c.category in ("composition", "novel visual")]
    for split in ("train", "val"):
        for i in range(1500):
            scene = sample_scene(0, split, i)
            assert not any(c.predicate(scene) for c in unseen), (split, i)
            assert not any(c.name in scene.caption for c in HELDOUT if " " in c.name)


def test_test_split_has_positives_for_every_held_out_concept() -> None:
    counts = dict.fromkeys((c.name for c in HELDOUT), 0)
    for i in range(600):
        scene = sample_scene(0, "test", i)
        for c in HELDOUT:
            counts[c.name] += c.predicate(scene)
    assert min(counts.values()) >= 10, counts


def test_held_out_concepts_are_new_words_with_several_descriptions() -> None:
    assert len(HELDOUT) >= 10
    categories = {c.category for c in HELDOUT}
    assert {"colour word", "shape word", "composition", "novel visual"} <= categories
    for c in HELDOUT:
        assert c.name not in TAGS
        assert len(c.descriptions) >= 4
    assert synth.heldout_json()[0] == {HELDOUT[0].name: list(HELDOUT[0].descriptions)}


def test_rendering_is_fast() -> None:
    scenes = [sample_scene(0, "train", i) for i in range(200)]
    start = time.perf_counter()
    for scene in scenes:
        render(scene, 128)
    rate = len(scenes) / (time.perf_counter() - start)
    assert rate > 100, f"{rate:.0f} images/s"  # about 2,500/s on one free core


def test_write_dataset_files(tmp_path: Path) -> None:
    spec = SynthSpec(seed=5, n_train=12, n_val=4, n_test=6, image_size=64)
    data = write_dataset(tmp_path / "d", spec)
    for split in synth.SPLITS:
        lines = data.tag_file(split).read_text().splitlines()
        assert len(lines) == spec.count(split)
        for line, (rel, scene) in zip(lines, synth.iter_split(spec, split), strict=True):
            path, tags = line.split(" ", 1)
            assert path == rel and tags.split(",") == scene.tags()
            with Image.open(data.root / path) as img:
                assert img.size == (64, 64) and img.mode == "RGB"
        captions = data.caption_file(split).read_text().splitlines()
        assert [c.split(" ", 1)[0] for c in captions] == [ln.split(" ")[0] for ln in lines]
    assert data.tags_file.read_text().split("\n")[:-1] == list(TAGS)
    concepts = json.loads(data.heldout_file.read_text())
    assert all(isinstance(e, dict) and len(e) == 1 for e in concepts)
    assert [next(iter(e)) for e in concepts] == [c.name for c in HELDOUT]
    truth = data.heldout_truth_file.read_text().splitlines()
    assert len(truth) == spec.n_test
    descriptions = json.loads(data.descriptions_file.read_text())
    assert [next(iter(e)) for e in descriptions] == list(TAGS)
    assert data.manifest["seed"] == 5 and data.manifest["counts"]["test"] == 6
    again = write_dataset(tmp_path / "e", spec)
    assert (again.root / "images/test/000003.png").read_bytes() == (
        data.root / "images/test/000003.png"
    ).read_bytes()
