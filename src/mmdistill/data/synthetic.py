"""Offline image-text sets made from the Fashion-MNIST idx files, deterministic from the seed.

fashion_mnist_captions: the Fashion-MNIST images with label captions, the CIFAR-10 protocol of MTT-VL (Appendix B,
  Table 7) on Fashion-MNIST: one caption "This is a {label}", or several per image, each from another prompt
  template (LABEL_TEMPLATES). A caption here IS the label in words: retrieval on it measures class matching.
scenes: synthetic canvases of one to `max_items` Fashion-MNIST items, each with its own class, grid cell, size
  and colour tint, described by captions written from varied templates, synonyms and orders. Every caption
  names every item with its position (absolute, or relative to another item) and usually its colour, so no
  caption follows from one class label: retrieval has to match the composition. Train scenes use only
  Fashion-MNIST train items; val and test scenes use the test items, split into two disjoint halves.

Both are called by mmdistill.stages.prepare; see there for the prepared layout.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmdistill.core.storage import PipelineError
from mmdistill.data.sources import FASHION_MNIST_CLASSES, load_fashion_mnist

# ---- fashion_mnist_captions ---------------------------------------------------------------------------------

SINGLE_TEMPLATE = "This is {a}"   # MTT-VL's single caption "This is a {label}" (with "an" before a vowel)
# the multi-caption pool, written for this project after the paper's description ("five captions generated
# with varied prompts"); each image gets `captions` distinct ones, chosen at random from the seed
LABEL_TEMPLATES = (
    "a photo of {a}",
    "a grayscale photo of {a}",
    "a small low-resolution picture of {a}",
    "a catalogue image of {a}",
    "{a} on a black background",
    "a centred picture of {a}",
    "a close-up shot of {a}",
    "a product photo showing {a}",
    "an image that contains {a}",
    "a blurry black and white photo of {a}",
    "a pixelated image of {a}",
    "the outline of {a}",
    "a thumbnail of {a}",
    "a monochrome snapshot of {a}",
)
SOURCE_SPLITS = ("train", "test")


def with_article(phrase: str) -> str:
    return ("an " if phrase[:1].lower() in "aeio" else "a ") + phrase


def label_captions(labels: np.ndarray, class_names: list[str], count: int, rng: np.random.Generator) -> list:
    """Per label: [SINGLE_TEMPLATE] when count is 1, else `count` distinct LABEL_TEMPLATES in a random order."""
    if not 1 <= count <= len(LABEL_TEMPLATES):
        raise PipelineError(f"param 'prepare.fashion_mnist_captions.captions' must be 1..{len(LABEL_TEMPLATES)}, "
                            f"got {count}")
    things = [with_article(name.lower()) for name in class_names]
    if count == 1:
        return [[SINGLE_TEMPLATE.format(a=things[c])] for c in labels.tolist()]
    order = np.argsort(rng.random((len(labels), len(LABEL_TEMPLATES))), axis=1)[:, :count]
    return [[LABEL_TEMPLATES[t].format(a=things[c]) for t in row] for c, row in zip(labels.tolist(), order.tolist())]


def load_fashion_mnist_captions(root: Path, count: int, seed: int):
    """Fashion-MNIST (as load_fashion_mnist) with `count` label captions per image (see label_captions)."""
    splits, class_names = load_fashion_mnist(root)
    out = {}
    for code, split in enumerate(SOURCE_SPLITS):
        images, labels, _ = splits[split]
        rng = np.random.default_rng([seed, 7001, code])   # a stream of its own: the split carving is untouched
        out[split] = (images, labels, label_captions(labels, class_names, count, rng))
    return out, class_names


# ---- scenes -------------------------------------------------------------------------------------------------

# words for each Fashion-MNIST class, used interchangeably (none is a position word such as "top")
NOUNS = (
    ("t-shirt", "tee", "tee shirt"),
    ("pair of trousers", "pair of pants", "pair of slacks"),
    ("pullover", "sweater", "jumper"),
    ("dress", "frock", "gown"),
    ("coat", "jacket", "overcoat"),
    ("sandal", "open-toed shoe", "summer sandal"),
    ("shirt", "button-up shirt", "blouse"),
    ("sneaker", "trainer", "running shoe"),
    ("bag", "handbag", "purse"),
    ("ankle boot", "boot", "short boot"),
)
# (name, RGB tint, words); a grey item times the tint on the black canvas
COLOURS = (
    ("red", (225, 35, 35), ("red", "scarlet")),
    ("orange", (245, 140, 20), ("orange",)),
    ("yellow", (240, 220, 30), ("yellow",)),
    ("green", (40, 185, 60), ("green",)),
    ("cyan", (30, 200, 215), ("cyan", "turquoise")),
    ("blue", (45, 85, 240), ("blue",)),
    ("purple", (150, 55, 215), ("purple", "violet")),
    ("pink", (245, 115, 185), ("pink",)),
    ("white", (240, 240, 240), ("white",)),
)
# (name, side as a fraction of the canvas side, words)
SIZES = (
    ("small", 0.22, ("small", "little", "tiny")),
    ("medium", 0.3, ("medium-sized", "mid-sized", "medium")),
    ("large", 0.4, ("large", "big", "huge")),
)
GRID = 3          # items sit in distinct cells of a GRID x GRID layout
COUNT_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SIZE_PROBABILITY = 0.5      # a caption mentions an item's size with this probability,
COLOUR_PROBABILITY = 0.85   # its colour with this one; its position always


@dataclass(frozen=True)
class Item:
    source: str         # Fashion-MNIST split of the item: train | test
    index: int          # row in that split
    label: int
    cell: tuple         # (row, column) in the GRID
    size: int           # index into SIZES
    colour: int         # index into COLOURS


def render(items: list[Item], pictures: dict, side: int, rng: np.random.Generator) -> np.ndarray:
    """side x side x 3 uint8: each item's picture resized to its size, tinted, placed near its cell's centre
    (jittered, kept inside the canvas), drawn over the others by the brighter pixel."""
    from PIL import Image
    canvas = np.zeros((side, side, 3), np.uint8)
    cell = side / GRID
    jitter = max(1, side // 16)
    for item in items:
        s = max(4, round(SIZES[item.size][1] * side))
        grey = np.asarray(Image.fromarray(pictures[item.source][item.index]).resize((s, s), Image.BILINEAR))
        tinted = (grey[..., None].astype(np.float32) * np.array(COLOURS[item.colour][1], np.float32) / 255.0)
        tinted = np.round(tinted).astype(np.uint8)
        row, col = item.cell
        cy = (row + 0.5) * cell + rng.integers(-jitter, jitter + 1)
        cx = (col + 0.5) * cell + rng.integers(-jitter, jitter + 1)
        top = int(min(max(round(cy - s / 2), 0), side - s))
        left = int(min(max(round(cx - s / 2), 0), side - s))
        region = canvas[top:top + s, left:left + s]
        np.maximum(region, tinted, out=region)
    return canvas


def pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def position(cell, rng) -> str:
    """Where a cell is on the canvas, in one of several wordings."""
    row, col = cell
    vertical = (("top", "upper"), ("middle", "middle"), ("bottom", "lower"))[row]
    horizontal = ("left", "centre", "right")[col]
    if (row, col) == (1, 1):
        return pick(rng, ("in the centre", "in the middle", "at the centre"))
    if row == 1:
        return pick(rng, (f"on the {horizontal}", f"at the {horizontal} side", f"in the middle {horizontal}"))
    if col == 1:
        return pick(rng, (f"at the {vertical[0]}", f"at the {vertical[0]} centre", f"in the {vertical[1]} middle"))
    return pick(rng, (f"at the {vertical[0]} {horizontal}", f"in the {vertical[0]}-{horizontal} corner",
                      f"in the {vertical[1]} {horizontal}"))


def relation(cell, anchor, rng) -> str:
    """Where `cell` is seen from `anchor` (another cell), as a preposition: 'below', 'to the left of', ..."""
    dr, dc = cell[0] - anchor[0], cell[1] - anchor[1]
    vertical = pick(rng, ("below", "under", "beneath")) if dr > 0 else pick(rng, ("above", "over")) if dr < 0 else ""
    side = "right" if dc > 0 else "left" if dc < 0 else ""
    if not side:
        return vertical
    horizontal = pick(rng, (f"to the {side} of", f"{side} of"))
    if not vertical:
        return horizontal
    return pick(rng, (f"{vertical} and {horizontal}", f"to the {'lower' if dr > 0 else 'upper'} {side} of"))


def join(phrases: list[str], rng) -> str:
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + pick(rng, (" and ", ", and ")) + phrases[-1]


def describe(items: list[Item], rng: np.random.Generator) -> str:
    """One caption of a scene: a random item order, template, synonyms and choice of adjectives."""
    order = [items[i] for i in rng.permutation(len(items))]
    nouns = [pick(rng, NOUNS[it.label]) for it in order]
    phrases = []
    for it, noun in zip(order, nouns):
        words = []
        if rng.random() < SIZE_PROBABILITY:
            words.append(pick(rng, SIZES[it.size][2]))
        if rng.random() < COLOUR_PROBABILITY:
            words.append(pick(rng, COLOURS[it.colour][2]))
        phrases.append(with_article(" ".join(words + [noun])))
    styles = ("list", "leading", "count") + (("relative", "chain") if len(order) > 1 else ())
    style = pick(rng, styles)
    if style == "list":
        prefix = pick(rng, ("", "a picture of ", "an image with ", "a black canvas showing ", "there is "))
        return prefix + join([f"{p} {position(it.cell, rng)}" for p, it in zip(phrases, order)], rng)
    if style == "leading":
        return pick(rng, ("; ", ", and ")).join(f"{position(it.cell, rng)}, {p}" for p, it in zip(phrases, order))
    if style == "count":
        many = len(order) > 1
        head = (f"{COUNT_WORDS[len(order)]} {pick(rng, ('items', 'things', 'pieces'))}" if many
                else pick(rng, ("a single item", "one item", "just one thing")))
        return f"{head}: " + join([f"{p} {position(it.cell, rng)}" for p, it in zip(phrases, order)], rng)
    parts = [f"{phrases[0]} {position(order[0].cell, rng)}"]
    for k in range(1, len(order)):
        anchor = 0 if style == "relative" else k - 1
        ref = "it" if anchor == k - 1 else f"the {nouns[anchor]}"
        parts.append(f"{phrases[k]} {relation(order[k].cell, order[anchor].cell, rng)} {ref}")
    return join(parts, rng)


def compose(pool: list[tuple[str, int]], labels: dict, count: int, max_items: int,
            rng: np.random.Generator) -> list[list[Item]]:
    """`count` scenes of 1..max_items items drawn from `pool` ((source split, index) pairs), each item used
    once before any is used again; distinct cells, random sizes and colours."""
    scenes, queue = [], []
    for _ in range(count):
        k = int(rng.integers(1, max_items + 1))
        while len(queue) < k:
            queue.extend(pool[i] for i in rng.permutation(len(pool)))
        chosen, queue = queue[:k], queue[k:]
        cells = rng.choice(GRID * GRID, size=k, replace=False)
        scenes.append([Item(src, idx, int(labels[src][idx]), divmod(int(c), GRID), int(rng.integers(len(SIZES))),
                            int(rng.integers(len(COLOURS)))) for (src, idx), c in zip(chosen, cells)])
    return scenes


def scene_label(items: list[Item]) -> int:
    """The class of the largest item (the first drawn among equals): a scene's `label`."""
    return max(items, key=lambda it: it.size).label


def captions_of(items, count: int, rng, tries: int = 50) -> list[str]:
    """`count` different captions where the templates allow (after `tries` draws a repeat is kept)."""
    out = []
    for _ in range(tries):
        text = describe(items, rng)
        if text not in out:
            out.append(text)
        if len(out) == count:
            return out
    while len(out) < count:
        out.append(describe(items, rng))
    return out


def make_scenes(root: Path, side: int, max_items: int, counts: dict, captions: int, seed: int):
    """The scenes set: ({split: (images N x side x side x 3, labels, captions)}, class names, compositions
    {split: [[Item, ...] per scene]}). `counts`: {train, val, test} numbers of scenes."""
    fashion, class_names = load_fashion_mnist(root)
    pictures = {s: fashion[s][0][..., 0] for s in SOURCE_SPLITS}
    labels = {s: fashion[s][1] for s in SOURCE_SPLITS}
    n_test = len(labels["test"])
    halves = np.random.default_rng([seed, 7002]).permutation(n_test)
    pools = {"train": [("train", i) for i in range(len(labels["train"]))],
             "val": [("test", int(i)) for i in np.sort(halves[:n_test // 2])],
             "test": [("test", int(i)) for i in np.sort(halves[n_test // 2:])]}
    out, layouts = {}, {}
    for code, split in enumerate(("train", "val", "test")):
        if not pools[split]:
            raise PipelineError(f"{root}: no Fashion-MNIST items for the {split} scenes")
        rng = np.random.default_rng([seed, 7003, code])
        scenes = compose(pools[split], labels, counts[split], max_items, rng)
        images = np.stack([render(items, pictures, side, rng) for items in scenes])
        texts = [captions_of(items, captions, rng) for items in scenes]
        out[split] = (images, np.array([scene_label(s) for s in scenes], dtype=np.int64), texts)
        layouts[split] = scenes
    return out, class_names, layouts


SCENES_INFO = ("synthetic: 1..max_items tinted Fashion-MNIST items on a black canvas, template captions "
               "(mmdistill.data.synthetic); label = the class of the largest item")
LABEL_CAPTIONS_INFO = "Fashion-MNIST with label captions (MTT-VL Appendix B, Table 7 protocol)"
assert len(NOUNS) == len(FASHION_MNIST_CLASSES)
