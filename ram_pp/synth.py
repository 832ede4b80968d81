"""A procedural image data set with known tags, captions and held-out open-set concepts.

Each image is a scene composed from parts whose tags are known by construction: a background and
one to four items, each item a geometric shape (with a fill pattern) or a simple object, with a
colour and a size. Ground truth tags, a caption and the truth of every held-out concept are
computed from the scene, never from pixels.

Held-out concepts are never trained: colour, shape, pattern and object *words* that are not in the
vocabulary (synonyms such as "crimson" or "rhombus"), compositions of trained parts that never occur
in the training split (no training image holds exactly two red stars), and two visuals that training
never draws (pentagons and pink items). Each concept carries several descriptions, in the upstream
open-set format ``[{"concept": ["description", ...]}]``.

Generation is deterministic: image ``i`` of split ``s`` comes from a generator seeded with
``(seed, s, i)``, so any subset can be rebuilt alone.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

SPLITS = ("train", "val", "test")
FORMAT_VERSION = 1

SHAPES = (
    "circle",
    "square",
    "triangle",
    "star",
    "heart",
    "cross",
    "diamond",
    "hexagon",
    "arrow",
    "crescent",
)
OBJECTS = ("house", "tree", "sun", "car", "flower", "fish")
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "brown", "black")
PATTERNS = ("solid", "striped", "dotted", "checkered", "outlined")
TEXTURES = ("striped", "dotted", "checkered")
SIZES = ("small", "large")
COUNT_TAGS = ("one object", "two objects", "three objects")
BACKGROUNDS = (
    "white background",
    "beige background",
    "gray background",
    "gradient background",
    "grid background",
    "landscape background",
)
# Visuals the training split never contains (open-set "novel visual" concepts).
NOVEL_SHAPES = ("pentagon",)
NOVEL_COLOURS = ("pink",)

TAG_GROUPS: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "object": OBJECTS,
    "colour": COLOURS,
    "pattern": PATTERNS,
    "size": SIZES,
    "count": COUNT_TAGS,
    "background": BACKGROUNDS,
}
TAGS: tuple[str, ...] = tuple(t for group in TAG_GROUPS.values() for t in group)

RGB: dict[str, tuple[int, int, int]] = {
    "red": (215, 30, 35),
    "orange": (250, 140, 20),
    "yellow": (245, 215, 30),
    "green": (35, 150, 55),
    "blue": (35, 75, 215),
    "purple": (135, 45, 175),
    "brown": (130, 75, 30),
    "black": (20, 20, 20),
    "pink": (250, 140, 195),
}
BACKGROUND_FLAT = {
    "white background": (250, 250, 250),
    "beige background": (238, 222, 186),
    "gray background": (196, 196, 196),
}
PASTELS = ((255, 236, 210), (215, 235, 255), (225, 255, 225), (245, 225, 255), (255, 255, 215))
# Item colours that would vanish into a background.
# Item colours too close to a background (in brightness or hue) to show a clear silhouette.
CLASHES = {
    "gray background": {"yellow"},
    "beige background": {"yellow"},
}
SIZE_RADIUS = {"small": (0.13, 0.15), "large": (0.24, 0.28)}
MAX_ITEMS = 3
COUNT_WORDS = ("zero", "one", "two", "three")

# One visual gloss per trained tag: a description that spells out what the tag looks like, in
# the spirit of RAM++'s LLM-written tag descriptions.
GLOSS = {
    "circle": "a circle, a perfectly round flat shape like a coin or a disc",
    "square": "a square, a shape with four equal straight sides and four right angles",
    "triangle": "a triangle, a pointed shape with three straight sides and three corners",
    "star": "a star, a shape with five sharp points radiating from its centre",
    "heart": "a heart, the rounded love symbol with two lobes on top and a point below",
    "cross": "a cross, a plus-shaped figure of two equal bars crossing at the centre",
    "diamond": "a diamond, a tall rhombus standing on one corner like a playing-card suit",
    "hexagon": "a hexagon, a shape with six equal sides like a honeycomb cell",
    "arrow": "an arrow, a shaft with a pointed triangular head showing a direction",
    "crescent": "a crescent, the curved thin shape of the new moon",
    "house": "a house, a simple building with walls, a pointed roof and a door",
    "tree": "a tree, a brown trunk under a round crown of leaves",
    "sun": "a sun, a round disc with rays shining out in every direction",
    "car": "a car, a vehicle with a body, a cabin with windows and two wheels",
    "flower": "a flower, round petals around a centre on a thin stem",
    "fish": "a fish, an oval body with a triangular tail fin and an eye",
    "red": "red, the warm colour of blood, ripe tomatoes and fire engines",
    "orange": "orange, the colour between red and yellow, like the fruit",
    "yellow": "yellow, the bright colour of lemons, bananas and sunshine",
    "green": "green, the colour of grass and leaves",
    "blue": "blue, the colour of a clear sky and the deep sea",
    "purple": "purple, a colour between red and blue, like grapes and violets",
    "brown": "brown, the colour of wood, chocolate and soil",
    "black": "black, the darkest colour, like coal and the night",
    "solid": "a solid shape filled with one plain flat colour",
    "striped": "a striped shape covered in parallel bands of alternating colours",
    "dotted": "a dotted shape covered in small round spots, a polka-dot pattern",
    "checkered": "a checkered shape with a chessboard pattern of alternating squares",
    "outlined": "an outlined shape, only its thin border is drawn and the inside is empty",
    "small": "a small item that takes up a tiny part of the picture",
    "large": "a large item that fills a big part of the picture",
    "one object": "a single object, exactly one thing in the picture",
    "two objects": "two objects, a pair of things in the picture",
    "three objects": "three objects, a group of three things in the picture",
    "white background": "a plain white background behind everything",
    "beige background": "a plain beige background, the pale sandy colour of paper",
    "gray background": "a plain light grey background behind everything",
    "gradient background": "a background that fades smoothly from one pale colour to another",
    "grid background": "a background of thin lines forming a grid, like graph paper",
    "landscape background": "a landscape background with a blue sky above sandy ground",
}
TEMPLATES = {
    "shape": ("a {t}", "a {t} shape", "a picture of a {t}", "a drawing of a {t}", "{t}"),
    "object": ("a {t}", "a picture of a {t}", "a drawing of a {t}", "a simple {t} icon", "{t}"),
    "colour": (
        "something {t}",
        "a {t} shape",
        "a {t} object",
        "an item coloured {t}",
        "the colour {t}",
    ),
    "pattern": (
        "a {t} shape",
        "a {t} pattern",
        "a {t} object",
        "something {t}",
        "{t}",
    ),
    "size": ("a {t} shape", "a {t} object", "something {t}", "a {t} item", "{t}"),
    "count": ("{t}", "a picture with {t}", "{t} in the picture", "an image of {t}", "{t} shown"),
    "background": (
        "a {t}",
        "a picture with a {t}",
        "shapes on a {t}",
        "an image with a {t}",
        "{t}",
    ),
}
GENERIC_TEMPLATES = (
    "a photo of a {t}.",
    "{t}",
    "a picture of {t}",
    "an image containing {t}",
    "a close-up photo of the {t}",
    "{t} in the scene",
)
DESCRIPTIONS_PER_TAG = 6  # five templates + one gloss per synthetic tag


def tag_group(tag: str) -> str:
    """The group ('shape', 'colour', ...) of a synthetic tag."""
    for group, members in TAG_GROUPS.items():
        if tag in members:
            return group
    raise KeyError(f"{tag!r} is not a synthetic tag")


def tag_descriptions(tag: str) -> list[str]:
    """The label-bank descriptions of a tag: five templates plus a visual gloss.

    Tags outside the synthetic vocabulary get generic photo templates (six of them).
    """
    if tag not in TAGS:
        return [t.format(t=tag) for t in GENERIC_TEMPLATES]
    return [t.format(t=tag) for t in TEMPLATES[tag_group(tag)]] + [GLOSS[tag]]


# --------------------------------------------------------------------------------------------
# Scenes


@dataclass(frozen=True)
class Item:
    """One thing in a scene.

    Attributes:
        kind: "shape" or "object".
        name: shape or object name.
        colour: colour name (a key of ``RGB``).
        size: "small" or "large".
        pattern: fill pattern for shapes; None for objects (always drawn plainly).
        center: (x, y) in [0, 1] image coordinates.
        radius: half the item's extent, as a fraction of the image side.
        angle: rotation in degrees (shapes only).
    """

    kind: str
    name: str
    colour: str
    size: str
    pattern: str | None
    center: tuple[float, float]
    radius: float
    angle: float = 0.0


@dataclass(frozen=True)
class Scene:
    """A background plus items; everything needed to render and label one image."""

    background: str
    items: tuple[Item, ...]
    caption: str = ""
    style: dict[str, Any] = field(default_factory=dict, compare=False)

    def tags(self) -> list[str]:
        """Ground-truth vocabulary tags, in vocabulary order."""
        present: set[str] = {self.background, COUNT_TAGS[len(self.items) - 1]}
        for item in self.items:
            present.update((item.name, item.colour, item.size))
            if item.pattern is not None:
                present.add(item.pattern)
        return [t for t in TAGS if t in present]

    def groups(self) -> Counter[tuple[str, str, str, str | None]]:
        """Counts of identical-looking items keyed by (name, colour, size, pattern)."""
        return Counter((i.name, i.colour, i.size, i.pattern) for i in self.items)


def _plural(name: str) -> str:
    if name in ("fish",):
        return name
    if name.endswith(("sh", "ss", "x")):
        return name + "es"
    return name + "s"


def _group_phrase(key: tuple[str, str, str, str | None], count: int, rng: random.Random) -> str:
    name, colour, size, pattern = key
    words = [COUNT_WORDS[count] if count > 1 or rng.random() < 0.5 else "a"]
    if rng.random() < 0.8:
        words.append(size)
    if pattern not in (None, "solid") or (pattern == "solid" and rng.random() < 0.3):
        words.append(pattern)
    words.append(colour)
    words.append(_plural(name) if count > 1 else name)
    if words[0] == "a" and words[1][0] in "aeiou":
        words[0] = "an"
    return " ".join(words)


def make_caption(scene: Scene, rng: random.Random) -> str:
    """A sentence naming each item group (count, size, pattern, colour, name) and the background."""
    phrases = [_group_phrase(k, n, rng) for k, n in scene.groups().items()]
    rng.shuffle(phrases)
    if len(phrases) > 1:
        body = ", ".join(phrases[:-1]) + " and " + phrases[-1]
    else:
        body = phrases[0]
    template = rng.choice(("{body} on a {bg}", "{body}, {bg}", "a {bg} with {body}"))
    return template.format(body=body, bg=scene.background)


# --------------------------------------------------------------------------------------------
# Held-out concepts


@dataclass(frozen=True)
class HeldOutConcept:
    """An open-set concept never trained, with descriptions and a ground-truth predicate.

    Attributes:
        name: the concept's name (never a vocabulary tag).
        category: "colour word", "shape word", "pattern word", "object word", "composition"
            or "novel visual".
        descriptions: several sentences spelling out what it looks like.
        predicate: scene -> whether the concept is present.
    """

    name: str
    category: str
    descriptions: tuple[str, ...]
    predicate: Callable[[Scene], bool] = field(repr=False, compare=False)

    @property
    def prompt(self) -> str:
        """The bare-name prompt (upstream style "a photo of a {name}.")."""
        article = "" if self.name.split()[0] in COUNT_WORDS + ("a", "an") else "a "
        return f"a photo of {article}{self.name}."


def _has(**want: str) -> Callable[[Scene], bool]:
    def check(scene: Scene) -> bool:
        return any(all(getattr(i, k) == v for k, v in want.items()) for i in scene.items)

    return check


def _count_is(n: int, **want: str) -> Callable[[Scene], bool]:
    def check(scene: Scene) -> bool:
        return sum(all(getattr(i, k) == v for k, v in want.items()) for i in scene.items) == n

    return check


def _has_on(background: str, **want: str) -> Callable[[Scene], bool]:
    inner = _has(**want)
    return lambda scene: scene.background == background and inner(scene)


HELDOUT: tuple[HeldOutConcept, ...] = (
    HeldOutConcept(
        "crimson",
        "colour word",
        (
            "crimson, a deep rich red colour",
            "something crimson, red like blood",
            "a crimson shape, the red of a ripe cherry",
            "an item painted in strong crimson red",
            "a deep red object",
        ),
        _has(colour="red"),
    ),
    HeldOutConcept(
        "scarlet",
        "colour word",
        (
            "scarlet, a vivid bright red colour",
            "something scarlet, red like a fire engine",
            "a scarlet shape, bright red",
            "an item in brilliant scarlet red",
            "a vivid red object",
        ),
        _has(colour="red"),
    ),
    HeldOutConcept(
        "navy",
        "colour word",
        (
            "navy, a dark deep blue colour",
            "something navy blue, like a sailor's uniform",
            "a navy shape, dark blue",
            "an item coloured navy blue",
            "a deep blue object",
        ),
        _has(colour="blue"),
    ),
    HeldOutConcept(
        "emerald",
        "colour word",
        (
            "emerald, a rich green colour like the gemstone",
            "something emerald green, the green of leaves",
            "an emerald shape, bright green",
            "an item coloured emerald green",
            "a green object",
        ),
        _has(colour="green"),
    ),
    HeldOutConcept(
        "golden",
        "colour word",
        (
            "golden, a warm shiny yellow colour like gold",
            "something golden yellow, like sunshine",
            "a golden shape, yellow as gold",
            "an item coloured golden yellow",
            "a yellow gold object",
        ),
        _has(colour="yellow"),
    ),
    HeldOutConcept(
        "violet",
        "colour word",
        (
            "violet, a bluish purple colour like the flower",
            "something violet, purple like grapes",
            "a violet shape, purple",
            "an item coloured violet purple",
            "a purple object",
        ),
        _has(colour="purple"),
    ),
    HeldOutConcept(
        "disc",
        "shape word",
        (
            "a disc, a flat round shape",
            "a round disc like a coin",
            "a disc-shaped circular object",
            "a perfectly round circle",
            "a flat circular plate",
        ),
        _has(name="circle"),
    ),
    HeldOutConcept(
        "rhombus",
        "shape word",
        (
            "a rhombus, a four-sided shape standing on its corner",
            "a rhombus like a diamond on a playing card",
            "a lozenge, a tilted square diamond shape",
            "a rhombus with four equal slanted sides",
            "a diamond-shaped rhombus",
        ),
        _has(name="diamond"),
    ),
    HeldOutConcept(
        "plus sign",
        "shape word",
        (
            "a plus sign, two bars crossing at right angles",
            "the plus symbol used in addition",
            "a plus-shaped cross",
            "a plus sign like a red cross emblem",
            "a cross made of a horizontal and a vertical bar",
        ),
        _has(name="cross"),
    ),
    HeldOutConcept(
        "pentagram",
        "shape word",
        (
            "a pentagram, a five-pointed star",
            "a star shape with five sharp points",
            "a pentagram like a star on a flag",
            "a five-pointed star figure",
            "a pointed star",
        ),
        _has(name="star"),
    ),
    HeldOutConcept(
        "polka dots",
        "pattern word",
        (
            "polka dots, a pattern of round spots",
            "a shape covered in polka dots",
            "a spotted pattern of small circles",
            "a polka-dot dotted fabric pattern",
            "a dotted shape with many spots",
        ),
        _has(pattern="dotted"),
    ),
    HeldOutConcept(
        "pinstripes",
        "pattern word",
        (
            "pinstripes, a pattern of parallel lines",
            "a shape covered in stripes",
            "a pattern of alternating bands",
            "a striped pattern like a zebra",
            "a striped shape with parallel stripes",
        ),
        _has(pattern="striped"),
    ),
    HeldOutConcept(
        "chessboard pattern",
        "pattern word",
        (
            "a chessboard pattern of alternating squares",
            "a shape with a checkerboard pattern",
            "a checked pattern like a chess board",
            "a checkered pattern of little squares",
            "a chequered tiled pattern",
        ),
        _has(pattern="checkered"),
    ),
    HeldOutConcept(
        "automobile",
        "object word",
        (
            "an automobile, a motor vehicle with wheels",
            "a car on the road",
            "an automobile with a cabin and two wheels",
            "a small motor car",
            "a vehicle",
        ),
        _has(name="car"),
    ),
    HeldOutConcept(
        "cottage",
        "object word",
        (
            "a cottage, a small house with a pointed roof",
            "a little home with a door",
            "a cottage building",
            "a small house",
            "a hut with walls and a roof",
        ),
        _has(name="house"),
    ),
    HeldOutConcept(
        "blossom",
        "object word",
        (
            "a blossom, a flower with petals",
            "a blooming flower on a stem",
            "a blossom with round petals",
            "a flower in bloom",
            "a single flower",
        ),
        _has(name="flower"),
    ),
    HeldOutConcept(
        "two red stars",
        "composition",
        (
            "two red stars",
            "a pair of red stars",
            "two stars coloured red",
            "two red star shapes",
            "exactly two red stars in the picture",
        ),
        _count_is(2, name="star", colour="red"),
    ),
    HeldOutConcept(
        "three green triangles",
        "composition",
        (
            "three green triangles",
            "a group of three green triangles",
            "three triangles coloured green",
            "three green triangle shapes",
            "exactly three green triangles in the picture",
        ),
        _count_is(3, name="triangle", colour="green"),
    ),
    HeldOutConcept(
        "large blue circle",
        "composition",
        (
            "a large blue circle",
            "a big blue circle",
            "a large circle coloured blue",
            "a big round blue disc filling the picture",
            "one large blue circle shape",
        ),
        _has(name="circle", colour="blue", size="large"),
    ),
    HeldOutConcept(
        "yellow heart on grid paper",
        "composition",
        (
            "a yellow heart on a grid background",
            "a yellow heart drawn on graph paper",
            "a yellow heart shape on a background of grid lines",
            "a heart coloured yellow on squared paper",
            "a bright yellow heart on a grid",
        ),
        _has_on("grid background", name="heart", colour="yellow"),
    ),
    HeldOutConcept(
        "striped purple square",
        "composition",
        (
            "a striped purple square",
            "a purple square with stripes",
            "a square with purple stripes",
            "a purple striped square shape",
            "a striped square coloured purple",
        ),
        _has(name="square", colour="purple", pattern="striped"),
    ),
    HeldOutConcept(
        "pentagon",
        "novel visual",
        (
            "a pentagon, a shape with five equal straight sides",
            "a five-sided polygon like a house without a chimney",
            "a pentagon, like the shape of the Pentagon building",
            "a regular pentagon with five corners",
            "a pentagon, between a square and a hexagon",
        ),
        _has(name="pentagon"),
    ),
    HeldOutConcept(
        "pink",
        "novel visual",
        (
            "pink, a pale light red colour",
            "something pink, like candy floss or a flamingo",
            "a pink shape, light red mixed with white",
            "an item coloured pale pink",
            "a light pink object",
        ),
        _has(colour="pink"),
    ),
)
COMPOSITIONS = tuple(c for c in HELDOUT if c.category == "composition")


def heldout_concepts() -> list[HeldOutConcept]:
    """The held-out open-set concepts (never vocabulary tags, never in training captions)."""
    return list(HELDOUT)


def heldout_json() -> list[dict[str, list[str]]]:
    """Held-out concepts in the upstream open-set format ``[{"concept": ["desc", ...]}]``."""
    return [{c.name: list(c.descriptions)} for c in HELDOUT]


# --------------------------------------------------------------------------------------------
# Sampling


# Item centres: one large item in the middle, or small items in the quadrant centres. A fixed
# layout (with a little jitter) lines items up with the Swin windows; a small Swin trained for
# minutes learns shapes at fixed slots far faster than anywhere in the frame.
CENTRE = (0.5, 0.5)
SLOTS = ((0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75))
JITTER = 0.03
LARGE_SHARE = 0.45  # scenes with one large item


def _jitter(rng: random.Random, point: tuple[float, float]) -> tuple[float, float]:
    return (point[0] + rng.uniform(-JITTER, JITTER), point[1] + rng.uniform(-JITTER, JITTER))


def _make_item(
    rng: random.Random,
    kind: str,
    name: str,
    colour: str,
    size: str,
    pattern: str | None,
    centre: tuple[float, float],
) -> Item:
    angle = rng.uniform(-10, 10) if kind == "shape" and name not in ("square", "diamond") else 0.0
    return Item(
        kind,
        name,
        colour,
        size,
        pattern,
        _jitter(rng, centre),
        rng.uniform(*SIZE_RADIUS[size]),
        angle,
    )


def _pick(rng: random.Random, shapes: tuple[str, ...]) -> tuple[str, str]:
    kind = "shape" if rng.random() < 0.75 else "object"
    return kind, rng.choice(shapes if kind == "shape" else OBJECTS)


def _sample_scene(rng: random.Random, split: str) -> Scene:
    background = rng.choice(BACKGROUNDS)
    train = split != "test"
    shapes = SHAPES if train else SHAPES + NOVEL_SHAPES * 2
    colours = [c for c in COLOURS if c not in CLASHES.get(background, ())]
    if not train:
        colours += list(NOVEL_COLOURS)
    if rng.random() < LARGE_SHARE:
        kind, name = _pick(rng, shapes)
        pattern = rng.choice(PATTERNS) if kind == "shape" else None
        item = _make_item(rng, kind, name, rng.choice(colours), "large", pattern, CENTRE)
        return Scene(background, (item,))
    # One or two groups of identical small items (textures do not show at this size).
    slots = rng.sample(SLOTS, MAX_ITEMS)
    items: list[Item] = []
    for _ in range(rng.choice((1, 1, 2))):
        room = MAX_ITEMS - len(items)
        if room <= 0:
            break
        count = min(room, rng.choice((1, 2, 2, 3)))
        kind, name = _pick(rng, shapes)
        colour = rng.choice(colours)
        pattern = rng.choice(("solid", "outlined")) if kind == "shape" else None
        for _ in range(count):
            items.append(_make_item(rng, kind, name, colour, "small", pattern, slots[len(items)]))
    return Scene(background, tuple(items))


def sample_scene(seed: int, split: str, index: int) -> Scene:
    """The scene of image ``index`` in ``split`` (deterministic).

    Training and validation scenes never contain a held-out composition, a pentagon or a pink
    item, and their captions never contain a held-out concept's name (rejected and resampled);
    the test split contains them, with one scene in four forced to hold one of the compositions
    so each has enough positives.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    rng = random.Random(f"ramdex-synth/{seed}/{split}/{index}")
    if split == "test":
        if rng.random() < 0.25:
            scene = _forced_composition(rng, rng.choice(COMPOSITIONS))
        else:
            scene = _sample_scene(rng, split)
        caption = make_caption(scene, rng)
    else:
        while True:
            scene = _sample_scene(rng, split)
            if any(c.predicate(scene) for c in COMPOSITIONS):
                continue
            caption = make_caption(scene, rng)
            if not any(c.name in caption for c in HELDOUT):
                break
    return Scene(scene.background, scene.items, caption, {"seed": rng.getrandbits(32)})


def _forced_composition(rng: random.Random, concept: HeldOutConcept) -> Scene:
    """A test scene built to satisfy one composition (small groups get up to one more item)."""
    spec = {
        "two red stars": ("star", "red", "small", 2, None),
        "three green triangles": ("triangle", "green", "small", 3, None),
        "large blue circle": ("circle", "blue", "large", 1, None),
        "yellow heart on grid paper": ("heart", "yellow", None, 1, "grid background"),
        "striped purple square": ("square", "purple", "large", 1, "striped"),
    }[concept.name]
    name, colour, size, count, extra = spec
    size = size or rng.choice(SIZES)
    background = extra if extra and extra.endswith("background") else rng.choice(BACKGROUNDS)
    while colour in CLASHES.get(background, ()):
        background = rng.choice(BACKGROUNDS)
    if size == "large":
        pattern = "striped" if extra == "striped" else rng.choice(PATTERNS)
        items = [_make_item(rng, "shape", name, colour, "large", pattern, CENTRE)]
    else:
        slots = rng.sample(SLOTS, MAX_ITEMS)
        pattern = rng.choice(("solid", "outlined"))
        items = [
            _make_item(rng, "shape", name, colour, "small", pattern, slots[i]) for i in range(count)
        ]
        if count < MAX_ITEMS and rng.random() < 0.5:
            others = [c for c in COLOURS if c not in CLASHES.get(background, ()) and c != colour]
            kind, other = _pick(rng, SHAPES)
            extra_pattern = rng.choice(("solid", "outlined")) if kind == "shape" else None
            items.append(
                _make_item(
                    rng, kind, other, rng.choice(others), "small", extra_pattern, slots[count]
                )
            )
    scene = Scene(background, tuple(items))
    assert concept.predicate(scene), concept.name
    return scene


# --------------------------------------------------------------------------------------------
# Rendering


def _unit_polygon(name: str) -> list[tuple[float, float]]:
    if name == "square":
        return [(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)]
    if name == "triangle":
        return [(0.0, -1.0), (0.92, 0.7), (-0.92, 0.7)]
    if name == "diamond":
        return [(0.0, -1.0), (0.62, 0.0), (0.0, 1.0), (-0.62, 0.0)]
    if name in ("hexagon", "pentagon"):
        n = 6 if name == "hexagon" else 5
        return [(math.sin(2 * math.pi * k / n), -math.cos(2 * math.pi * k / n)) for k in range(n)]
    if name == "star":
        pts = []
        for k in range(10):
            r = 1.0 if k % 2 == 0 else 0.42
            a = math.pi * k / 5
            pts.append((r * math.sin(a), -r * math.cos(a)))
        return pts
    if name == "cross":
        a, b = 0.3, 0.9
        return [
            (-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a),
            (a, b), (-a, b), (-a, a), (-b, a), (-b, -a), (-a, -a),
        ]  # fmt: skip
    if name == "arrow":
        return [
            (-0.9, -0.25),
            (0.2, -0.25),
            (0.2, -0.65),
            (0.95, 0.0),
            (0.2, 0.65),
            (0.2, 0.25),
            (-0.9, 0.25),
        ]
    if name == "heart":
        pts = []
        for k in range(40):
            t = 2 * math.pi * k / 40
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            pts.append((x / 17, -y / 17 + 0.1))
        return pts
    raise KeyError(name)


def _transform(pts: list[tuple[float, float]], cx: float, cy: float, r: float, angle: float):
    ca, sa = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    return [(cx + r * (x * ca - y * sa), cy + r * (x * sa + y * ca)) for x, y in pts]


def _shape_mask(item: Item, side: int, outline: int | None) -> Image.Image:
    """An L-mode mask (side x side) of a shape centred in it."""
    mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask)
    c, r = side / 2, side / 2 - 1
    box = (c - r, c - r, c + r, c + r)
    if item.name == "circle":
        draw.ellipse(
            box, fill=None if outline else 255, outline=255 if outline else None, width=outline or 0
        )
    elif item.name == "crescent":
        draw.ellipse(box, fill=255)
        off = 0.45 * r
        draw.ellipse((c - r + off, c - r - 0.1 * r, c + r + off, c + r - 0.1 * r), fill=0)
        if outline:
            inner = mask.copy()
            eroded = Image.new("L", (side, side), 0)
            d2 = ImageDraw.Draw(eroded)
            s = outline
            d2.ellipse((c - r + s, c - r + s, c + r - s, c + r - s), fill=255)
            d2.ellipse(
                (c - r + off - s, c - r - 0.1 * r - s, c + r + off + s, c + r - 0.1 * r + s), fill=0
            )
            mask = Image.fromarray(
                (np.asarray(inner) > 0).astype(np.uint8) * 255
                - (np.asarray(eroded) > 0).astype(np.uint8) * 255
            )
    else:
        pts = _transform(_unit_polygon(item.name), c, c, r, item.angle)
        if outline:
            draw.line(pts + [pts[0]], fill=255, width=outline, joint="curve")
        else:
            draw.polygon(pts, fill=255)
    return mask


def _secondary(colour: str) -> tuple[int, int, int]:
    """A pale tint of the item's colour for its texture: the silhouette stays one dark shape."""
    r, g, b = RGB[colour]
    return (int(0.45 * r + 140), int(0.45 * g + 140), int(0.45 * b + 140))


def _pattern_fill(item: Item, side: int, rng: random.Random) -> Image.Image:
    rgb = np.array(RGB[item.colour], dtype=np.uint8)
    other = np.array(_secondary(item.colour), dtype=np.uint8)
    yy, xx = np.mgrid[0:side, 0:side]
    if item.pattern == "striped":
        period = max(4, side // 6)
        u = xx + yy if rng.random() < 0.5 else yy
        on = (u % period) < period / 2
    elif item.pattern == "checkered":
        cell = max(3, side // 6)
        on = ((xx // cell) + (yy // cell)) % 2 == 0
    elif item.pattern == "dotted":
        cell = max(5, side // 5)
        cx = (xx % cell) - cell / 2
        cy = (yy % cell) - cell / 2
        on = (cx * cx + cy * cy) > (cell * 0.28) ** 2
    else:
        on = np.ones((side, side), dtype=bool)
    arr = np.where(on[..., None], rgb, other)
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def _draw_shape(canvas: Image.Image, item: Item, rng: random.Random) -> None:
    size = canvas.size[0]
    side = max(6, int(round(2 * item.radius * size)))
    x0 = int(round(item.center[0] * size - side / 2))
    y0 = int(round(item.center[1] * size - side / 2))
    outline = max(3, side // 8) if item.pattern == "outlined" else None
    mask = _shape_mask(item, side, outline)
    if item.pattern in (None, "solid", "outlined"):
        fill = Image.new("RGB", (side, side), RGB[item.colour])
    else:
        fill = _pattern_fill(item, side, rng)
    canvas.paste(fill, (x0, y0), mask)


def _draw_object(draw: ImageDraw.ImageDraw, item: Item, size: int) -> None:
    cx, cy = item.center[0] * size, item.center[1] * size
    r = item.radius * size
    col = RGB[item.colour]
    dark = (40, 30, 25) if item.colour != "black" else (110, 110, 110)
    grey = (95, 95, 95)  # trunks and stems: not one of the colour tags
    if item.name == "house":
        draw.rectangle((cx - 0.7 * r, cy - 0.1 * r, cx + 0.7 * r, cy + 0.9 * r), fill=col)
        draw.polygon(
            [(cx - 0.9 * r, cy - 0.1 * r), (cx, cy - 0.9 * r), (cx + 0.9 * r, cy - 0.1 * r)],
            fill=col,
            outline=dark,
        )
        draw.rectangle((cx - 0.18 * r, cy + 0.35 * r, cx + 0.18 * r, cy + 0.9 * r), fill=dark)
    elif item.name == "tree":
        draw.rectangle((cx - 0.15 * r, cy + 0.1 * r, cx + 0.15 * r, cy + r), fill=grey)
        draw.ellipse((cx - 0.7 * r, cy - r, cx + 0.7 * r, cy + 0.35 * r), fill=col)
    elif item.name == "sun":
        for k in range(8):
            a = math.pi * k / 4
            draw.line(
                (
                    cx + 0.55 * r * math.cos(a),
                    cy + 0.55 * r * math.sin(a),
                    cx + r * math.cos(a),
                    cy + r * math.sin(a),
                ),
                fill=col,
                width=max(1, int(r / 7)),
            )
        draw.ellipse((cx - 0.5 * r, cy - 0.5 * r, cx + 0.5 * r, cy + 0.5 * r), fill=col)
    elif item.name == "car":
        draw.rectangle((cx - r, cy - 0.15 * r, cx + r, cy + 0.4 * r), fill=col)
        draw.polygon(
            [
                (cx - 0.55 * r, cy - 0.15 * r),
                (cx - 0.35 * r, cy - 0.6 * r),
                (cx + 0.35 * r, cy - 0.6 * r),
                (cx + 0.55 * r, cy - 0.15 * r),
            ],
            fill=col,
        )
        for wx in (-0.55, 0.55):
            draw.ellipse(
                (cx + (wx - 0.25) * r, cy + 0.2 * r, cx + (wx + 0.25) * r, cy + 0.7 * r), fill=dark
            )
    elif item.name == "flower":
        draw.line((cx, cy, cx, cy + r), fill=grey, width=max(1, int(r / 8)))
        pr = 0.3 * r
        for k in range(6):
            a = math.pi * k / 3
            px, py = cx + 0.4 * r * math.cos(a), cy - 0.25 * r + 0.4 * r * math.sin(a)
            draw.ellipse((px - pr, py - pr, px + pr, py + pr), fill=col)
        draw.ellipse((cx - 0.2 * r, cy - 0.45 * r, cx + 0.2 * r, cy - 0.05 * r), fill=dark)
    elif item.name == "fish":
        draw.polygon([(cx + 0.3 * r, cy), (cx + r, cy - 0.5 * r), (cx + r, cy + 0.5 * r)], fill=col)
        draw.ellipse((cx - r, cy - 0.5 * r, cx + 0.5 * r, cy + 0.5 * r), fill=col)
        draw.ellipse((cx - 0.65 * r, cy - 0.2 * r, cx - 0.45 * r, cy), fill=dark)
    else:  # pragma: no cover - OBJECTS is closed
        raise KeyError(item.name)


def _background(name: str, size: int, rng: random.Random) -> Image.Image:
    if name in BACKGROUND_FLAT:
        return Image.new("RGB", (size, size), BACKGROUND_FLAT[name])
    if name == "gradient background":
        a, b = rng.sample(PASTELS, 2)
        t = np.linspace(0.0, 1.0, size)[:, None, None]
        ramp = (1 - t) * np.array(a) + t * np.array(b)
        arr = np.broadcast_to(ramp, (size, size, 3))
        if rng.random() < 0.5:
            arr = arr.transpose(1, 0, 2)
        return Image.fromarray(np.ascontiguousarray(arr).astype(np.uint8), "RGB")
    if name == "grid background":
        img = Image.new("RGB", (size, size), (248, 248, 240))
        draw = ImageDraw.Draw(img)
        step = rng.choice((8, 10, 12)) * size // 128 or 4
        line = (200, 212, 232)  # faint, so item edges stay the strongest edges
        for k in range(0, size, step):
            draw.line((k, 0, k, size), fill=line)
            draw.line((0, k, size, k), fill=line)
        return img
    if name == "landscape background":
        img = Image.new("RGB", (size, size), (185, 222, 245))
        horizon = int(size * rng.uniform(0.55, 0.7))
        ImageDraw.Draw(img).rectangle((0, horizon, size, size), fill=(232, 214, 165))
        return img
    raise KeyError(name)  # pragma: no cover


def render(scene: Scene, size: int = 128) -> Image.Image:
    """Draw a scene as an RGB image of ``size`` x ``size`` pixels."""
    if size < 32:
        raise ValueError(f"image size must be at least 32 pixels, got {size}")
    rng = random.Random(scene.style.get("seed", 0))
    img = _background(scene.background, size, rng)
    draw = ImageDraw.Draw(img)
    for item in scene.items:
        if item.kind == "shape":
            _draw_shape(img, item, rng)
        else:
            _draw_object(draw, item, size)
    return img


# --------------------------------------------------------------------------------------------
# Writing a data set


@dataclass(frozen=True)
class SynthSpec:
    """What to generate.

    Attributes:
        seed: base seed; the same spec always gives the same files.
        n_train / n_val / n_test: images per split.
        image_size: side of the square images in pixels.
    """

    seed: int = 0
    n_train: int = 1000
    n_val: int = 200
    n_test: int = 500
    image_size: int = 128

    def count(self, split: str) -> int:
        return {"train": self.n_train, "val": self.n_val, "test": self.n_test}[split]


@dataclass(frozen=True)
class SynthDataset:
    """Paths of a written synthetic data set (all relative paths in list files are to ``root``).

    Files:
        ``images/{split}/{index:06d}.png``; ``{split}.txt`` tag file (``path tag1,tag2,...``);
        ``{split}_captions.txt`` (``path caption``); ``tags.txt`` (the vocabulary, one per line);
        ``tag_descriptions.json`` (``[{"tag": [descriptions]}]``); ``heldout_concepts.json``
        (``[{"concept": [descriptions]}]``); ``heldout_test.txt`` (``path concept1,concept2``,
        every test image, the truth of each held-out concept); ``manifest.json``.
    """

    root: Path

    def tag_file(self, split: str) -> Path:
        return self.root / f"{split}.txt"

    def caption_file(self, split: str) -> Path:
        return self.root / f"{split}_captions.txt"

    @property
    def tags_file(self) -> Path:
        return self.root / "tags.txt"

    @property
    def descriptions_file(self) -> Path:
        return self.root / "tag_descriptions.json"

    @property
    def heldout_file(self) -> Path:
        return self.root / "heldout_concepts.json"

    @property
    def heldout_truth_file(self) -> Path:
        return self.root / "heldout_test.txt"

    @property
    def manifest(self) -> dict[str, Any]:
        return json.loads((self.root / "manifest.json").read_text())


def iter_split(spec: SynthSpec, split: str) -> Iterator[tuple[str, Scene]]:
    """(relative path, scene) for every image of a split, in order."""
    for i in range(spec.count(split)):
        yield f"images/{split}/{i:06d}.png", sample_scene(spec.seed, split, i)


def write_dataset(
    out_dir: str | Path, spec: SynthSpec = SynthSpec(), progress: bool = False
) -> SynthDataset:
    """Generate and write the data set described by ``spec`` to ``out_dir``.

    Args:
        out_dir: output folder (created; existing files of the same names are overwritten).
        spec: seed, split sizes and image size.
        progress: show a tqdm bar.

    Returns:
        The written data set's paths.
    """
    for split in SPLITS:
        if spec.count(split) < 0:
            raise ValueError(f"n_{split} must be >= 0")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    total = spec.n_train + spec.n_val + spec.n_test
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="synth", unit="img")
    heldout_lines = []
    for split in SPLITS:
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        tag_lines, caption_lines = [], []
        for rel, scene in iter_split(spec, split):
            render(scene, spec.image_size).save(root / rel, compress_level=1)
            tag_lines.append(f"{rel} {','.join(scene.tags())}")
            caption_lines.append(f"{rel} {scene.caption}")
            if split == "test":
                present = [c.name for c in HELDOUT if c.predicate(scene)]
                heldout_lines.append(f"{rel} {','.join(present)}".rstrip())
            if bar is not None:
                bar.update(1)
        _write_lines(root / f"{split}.txt", tag_lines)
        _write_lines(root / f"{split}_captions.txt", caption_lines)
    if bar is not None:
        bar.close()
    _write_lines(root / "heldout_test.txt", heldout_lines)
    _write_lines(root / "tags.txt", list(TAGS))
    (root / "tag_descriptions.json").write_text(
        json.dumps([{t: tag_descriptions(t)} for t in TAGS], indent=1, ensure_ascii=False)
    )
    (root / "heldout_concepts.json").write_text(
        json.dumps(heldout_json(), indent=1, ensure_ascii=False)
    )
    manifest = {
        "format": f"ramdex-synth/{FORMAT_VERSION}",
        "seed": spec.seed,
        "image_size": spec.image_size,
        "counts": {s: spec.count(s) for s in SPLITS},
        "num_tags": len(TAGS),
        "heldout": {c.name: c.category for c in HELDOUT},
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return SynthDataset(root)


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
