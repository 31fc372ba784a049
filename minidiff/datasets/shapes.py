"""Captioned shapes: the embedded, deterministic data set every minidiff model trains on.

Each image (32x32 by default, 64x64 available) shows one or two flat shapes on a plain dark-grey
background, with a caption in words and integer attribute labels. Nothing is downloaded: a seed
fully determines the images and the captions, and the stream never ends.

Vocabulary
----------
shapes     circle, square, triangle
colours    red, green, blue, yellow, purple, orange
sizes      small (8-9 px across at 32x32), large (13.5-14.5 px)
positions  left, right, top, bottom, center             (one-object scenes)
relations  above, below, to the left of, to the right of (two-object scenes: subject REL reference)

Captions
--------
One object:   "a red circle on the left", "there is a small blue square at the top",
              "in the middle, a big green triangle", "a yellow square"
Two objects:  "a green circle above a large red square", "a blue square left of a yellow triangle"

Every caption names every shape and every colour. The size word and (for one object) the
position phrase may be left out: **an omitted attribute means "any value is fine"**.
`parse_caption` returns ``None`` for it, and `matches_prompt` treats ``None`` as a wildcard, so a
caption always agrees with the labels of the image it was drawn with. Synonyms are canonicalised
("big" -> large, "little" -> small, "in the middle" -> center, "under" -> below, "left of" ->
to the left of).

Labels
------
``labels`` is a dict of int64 arrays of length n, indices into the vocabulary tuples; -1 = absent:

    num_objects  1 or 2
    shape, colour, size           object 1 (the only object, or the subject of the relation)
    position     POSITIONS index of object 1 in one-object scenes; -1 in two-object scenes
    shape2, colour2, size2        object 2 (the reference); -1 in one-object scenes
    relation     RELATIONS index (object 1 relative to object 2); -1 in one-object scenes

Rendering
---------
Each shape is a mask evaluated on a grid 4x finer than the image (vectorised over the batch),
then box-averaged down to a coverage alpha in [0, 1] (anti-aliasing by supersampling), and
composited over the background: ``image = image * (1 - alpha) + rgb * alpha``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
SIZES = ("small", "large")
POSITIONS = ("left", "right", "top", "bottom", "center")
RELATIONS = ("above", "below", "to the left of", "to the right of")
LABEL_KEYS = ("num_objects", "shape", "colour", "size", "position",
              "shape2", "colour2", "size2", "relation")
_VOCABULARY = {"shape": SHAPES, "colour": COLOURS, "size": SIZES, "position": POSITIONS,
               "shape2": SHAPES, "colour2": COLOURS, "size2": SIZES, "relation": RELATIONS}

# sRGB in [0, 1]: saturated hues, far apart from each other and from the grey background.
RGB = np.array([[0.90, 0.12, 0.12],    # red
                [0.10, 0.72, 0.22],    # green
                [0.16, 0.36, 0.95],    # blue
                [0.97, 0.87, 0.12],    # yellow
                [0.62, 0.22, 0.85],    # purple
                [1.00, 0.55, 0.05]],   # orange
               np.float32)
BACKGROUND = 0.20  # neutral dark grey (the same level in R, G and B)


@dataclass(frozen=True)
class ShapesConfig:
    """Geometry and randomness of a scene, in pixels of a 32x32 image (scaled for other sizes)."""
    small_diameter: tuple = (8.0, 9.0)      # range of a small object's width
    large_diameter: tuple = (13.5, 14.5)    # range of a large object's width
    margin: float = 0.75                    # objects keep this far from the image border
    gap: float = 1.5                        # least empty space between two objects
    anchor: float = 0.25                    # left/top at anchor*S, right/bottom at (1-anchor)*S
    jitter_along: float = 1.0               # +- position jitter toward the named side
    jitter_across: float = 2.0              # +- jitter along the other axis
    colour_jitter: float = 0.04             # +- per channel, per object
    background_jitter: float = 0.02         # +- grey level, per image
    supersample: int = 4                    # anti-aliasing: masks on a 4x finer grid
    omit_size_probability: float = 0.3      # caption leaves out "small"/"large"
    omit_position_probability: float = 0.1  # one-object caption leaves out the position


DEFAULT = ShapesConfig()

# ------------------------------------------------------------------------------- the grammar
# The first phrase of each tuple is the canonical word; the others are synonyms used less often.
SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
POSITION_PHRASES = {
    "left": ("on the left", "at the left", "on the left side"),
    "right": ("on the right", "at the right", "on the right side"),
    "top": ("at the top", "near the top", "at the top of the image"),
    "bottom": ("at the bottom", "near the bottom", "at the bottom of the image"),
    "center": ("in the center", "in the middle", "at the center", "in the centre"),
}
RELATION_PHRASES = {
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
    "to the left of": ("to the left of", "left of"),
    "to the right of": ("to the right of", "right of"),
}
# "{object}" expands to "a [size] colour shape"; the first template of each list is the most common.
ONE_OBJECT_TEMPLATES = ("{object} {position}", "there is {object} {position}",
                        "{position}, {object}", "a picture of {object} {position}")
NO_POSITION_TEMPLATES = ("{object}", "there is {object}", "a picture of {object}")
TWO_OBJECT_TEMPLATES = ("{object} {relation} {object2}", "there is {object} {relation} {object2}",
                        "a picture of {object} {relation} {object2}")
CANONICAL_PROBABILITY = 0.7   # chance of the canonical word / first template


def _pick(rng, options):
    """The first option with probability 0.7, else one of the others uniformly."""
    if len(options) == 1 or rng.random() < CANONICAL_PROBABILITY:
        return options[0]
    return options[1 + int(rng.integers(len(options) - 1))]


def _object_phrase(shape, colour, size):
    words = ([size] if size else []) + [colour, shape]
    article = "an" if words[0][0] in "aeiou" else "a"
    return " ".join([article] + words)


def caption_for(attributes: dict, rng, config: ShapesConfig = DEFAULT) -> str:
    """A caption for one scene's attributes (words, as from `attributes_from_labels`).

    ``rng``: a NumPy Generator or an int seed. Size words, and the position of a single object,
    are omitted at random (meaning "any"); ``None`` attributes are always omitted.
    """
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    a = _validated(attributes)

    def size_word(key):
        if a[key] is None or rng.random() < config.omit_size_probability:
            return None
        return _pick(rng, SIZE_WORDS[a[key]])

    obj = _object_phrase(a["shape"], a["colour"], size_word("size"))
    if a["num_objects"] == 2:
        obj2 = _object_phrase(a["shape2"], a["colour2"], size_word("size2"))
        template = _pick(rng, TWO_OBJECT_TEMPLATES)
        return template.format(object=obj, relation=_pick(rng, RELATION_PHRASES[a["relation"]]),
                               object2=obj2)
    if a["position"] is None or rng.random() < config.omit_position_probability:
        return _pick(rng, NO_POSITION_TEMPLATES).format(object=obj)
    template = _pick(rng, ONE_OBJECT_TEMPLATES)
    return template.format(object=obj, position=_pick(rng, POSITION_PHRASES[a["position"]]))


def _alternation(name, phrases):
    """A named regex group matching any phrase of ``{canonical: synonyms}``, longest first."""
    words = sorted((p for group in phrases.values() for p in group), key=len, reverse=True)
    return f"(?P<{name}>{'|'.join(re.escape(w) for w in words)})"


def _object_regex(suffix):
    size = _alternation("size" + suffix, SIZE_WORDS)
    colour = _alternation("colour" + suffix, {c: (c,) for c in COLOURS})
    shape = _alternation("shape" + suffix, {s: (s,) for s in SHAPES})
    return f"(?:a|an|one|the) (?:{size} )?{colour} {shape}"


def _template_regex(template):
    pattern = re.escape(template).replace(r"\{object\}", _object_regex(""))
    pattern = pattern.replace(r"\{object2\}", _object_regex("2"))
    pattern = pattern.replace(r"\{position\}", _alternation("position", POSITION_PHRASES))
    pattern = pattern.replace(r"\{relation\}", _alternation("relation", RELATION_PHRASES))
    return re.compile(pattern)


_PATTERNS = [(_template_regex(t), n) for templates, n in ((ONE_OBJECT_TEMPLATES, 1),
             (NO_POSITION_TEMPLATES, 1), (TWO_OBJECT_TEMPLATES, 2)) for t in templates]
_CANONICAL = {phrase: word for table in (SIZE_WORDS, POSITION_PHRASES, RELATION_PHRASES)
              for word, phrases in table.items() for phrase in phrases}


def parse_caption(text: str) -> dict:
    """Caption -> attributes dict (keys LABEL_KEYS, canonical words, ``None`` = omitted/absent).

    The inverse of the caption grammar. Case, surrounding spaces, repeated spaces and a final
    full stop are ignored. Raises ValueError naming the text if it is not in the grammar.
    """
    if not isinstance(text, str):
        raise TypeError(f"parse_caption: expected a str, got {type(text).__name__}")
    normalised = " ".join(text.lower().split()).rstrip(".").strip()
    for pattern, num_objects in _PATTERNS:
        found = pattern.fullmatch(normalised)
        if found:
            groups = {k: v for k, v in found.groupdict().items()}
            attributes = dict.fromkeys(LABEL_KEYS)
            attributes["num_objects"] = num_objects
            for key, value in groups.items():
                attributes[key] = _CANONICAL.get(value, value) if value else None
            return attributes
    raise ValueError(
        f"parse_caption: {text!r} is not in the shapes grammar; expected e.g. "
        "'a small red circle on the left' or 'a green circle above a large blue square' "
        f"(shapes {SHAPES}, colours {COLOURS}, sizes {SIZES}, positions {POSITIONS}, "
        f"relations {RELATIONS})")


def _validated(attributes: dict) -> dict:
    """All LABEL_KEYS present (missing -> None), words checked against the vocabulary."""
    unknown = set(attributes) - set(LABEL_KEYS)
    if unknown:
        raise ValueError(f"scene attributes: unknown keys {sorted(unknown)}; allowed {LABEL_KEYS}")
    a = dict.fromkeys(LABEL_KEYS) | dict(attributes)
    if a["num_objects"] not in (1, 2):
        raise ValueError(f"scene attributes: num_objects must be 1 or 2, got {a['num_objects']!r}")
    for key, vocabulary in _VOCABULARY.items():
        if a[key] is not None and a[key] not in vocabulary:
            raise ValueError(f"scene attributes: {key}={a[key]!r} is not one of {vocabulary}")
    needed = ("shape", "colour") + (("shape2", "colour2", "relation") if a["num_objects"] == 2 else ())
    missing = [k for k in needed if a[k] is None]
    if missing:
        raise ValueError(f"scene attributes: {missing} must be given for a "
                         f"{a['num_objects']}-object scene, got {attributes}")
    return a


def attributes_from_labels(labels: dict, i: int) -> dict:
    """Row ``i`` of a labels dict as an attributes dict of words (``None`` where -1)."""
    a = {"num_objects": int(labels["num_objects"][i])}
    for key, vocabulary in _VOCABULARY.items():
        index = int(labels[key][i])
        a[key] = vocabulary[index] if index >= 0 else None
    return a


def labels_from_attributes(attributes_list) -> dict:
    """A list of attributes dicts -> labels dict of int64 arrays (-1 for ``None``)."""
    rows = [_validated(a) for a in attributes_list]
    labels = {"num_objects": np.array([a["num_objects"] for a in rows], np.int64)}
    for key, vocabulary in _VOCABULARY.items():
        labels[key] = np.array([vocabulary.index(a[key]) if a[key] is not None else -1
                                for a in rows], np.int64)
    return labels


def prompt_agreement(prompt: dict, scene: dict) -> dict:
    """{attribute: bool} for every attribute the prompt names (``None`` in the prompt = any)."""
    agreement = {"num_objects": prompt["num_objects"] == scene["num_objects"]}
    for key in _VOCABULARY:
        if prompt.get(key) is not None:
            agreement[key] = prompt[key] == scene.get(key)
    return agreement


def matches_prompt(prompt: dict, scene: dict) -> bool:
    """True when the scene has every attribute the (parsed) prompt asks for."""
    return all(prompt_agreement(prompt, scene).values())


# ------------------------------------------------------------------------------ scene sampling
def _streams(seed):
    """Three independent generators (attributes, geometry, captions) from one seed, so the
    captions of ``sample(n, seed)`` can be drawn without rendering (see `caption_corpus`)."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)]


def _sample_labels(n, rng, two_object_fraction):
    """Uniform attributes; the two objects of a scene differ in colour or in shape."""
    two = rng.random(n) < two_object_fraction
    shape, colour = rng.integers(0, 3, n), rng.integers(0, 6, n)
    size, position = rng.integers(0, 2, n), rng.integers(0, 5, n)
    shape2, size2, relation = rng.integers(0, 3, n), rng.integers(0, 2, n), rng.integers(0, 4, n)
    other_colour = (colour + rng.integers(1, 6, n)) % 6    # any colour but object 1's
    colour2 = np.where(shape2 == shape, other_colour, rng.integers(0, 6, n))
    absent = np.int64(-1)
    return {"num_objects": np.where(two, 2, 1).astype(np.int64),
            "shape": shape, "colour": colour, "size": size,
            "position": np.where(two, absent, position),
            "shape2": np.where(two, shape2, absent), "colour2": np.where(two, colour2, absent),
            "size2": np.where(two, size2, absent), "relation": np.where(two, relation, absent)}


def _sample_geometry(labels, rng, size, config):
    """Object centres, diameters (pixels) and colours, and the background level, for each scene.

    One object: centre at its anchor (left = (0.25 S, 0.5 S), ...) plus a little jitter.
    Two objects: stacked along the relation's axis with at least ``gap`` between them; the
    random slack is split between the two borders and the gap.
    """
    n, scale = len(labels["shape"]), size / 32.0
    two = labels["num_objects"] == 2
    sizes = np.stack([labels["size"], np.maximum(labels["size2"], 0)], axis=1)   # (n, 2)
    low = np.where(sizes == 0, config.small_diameter[0], config.large_diameter[0])
    high = np.where(sizes == 0, config.small_diameter[1], config.large_diameter[1])
    diameter = (low + (high - low) * rng.random((n, 2))) * scale                  # (n, 2)
    margin, half = config.margin * scale, size / 2.0

    # one object: anchor + jitter (along the named axis, and across it)
    anchors = np.array([[config.anchor, 0.5], [1 - config.anchor, 0.5], [0.5, config.anchor],
                        [0.5, 1 - config.anchor], [0.5, 0.5]]) * size              # (5, 2) as (x, y)
    jitter_x = np.array([config.jitter_along, config.jitter_along, config.jitter_across,
                         config.jitter_across, config.jitter_along])
    jitter_y = np.array([config.jitter_across, config.jitter_across, config.jitter_along,
                         config.jitter_along, config.jitter_along])
    position = np.maximum(labels["position"], 0)
    u = 2 * rng.random((n, 2)) - 1
    single = anchors[position] + u * np.stack([jitter_x[position], jitter_y[position]], 1) * scale

    # two objects: along the axis, lo edge of the first = margin + slack * u1, gap grows by slack * (u2 - u1)
    relation = np.maximum(labels["relation"], 0)
    subject_first = (relation == 0) | (relation == 2)          # above / to the left of
    d_first = np.where(subject_first, diameter[:, 0], diameter[:, 1])
    d_second = np.where(subject_first, diameter[:, 1], diameter[:, 0])
    slack = np.maximum(size - 2 * margin - config.gap * scale - d_first - d_second, 0)
    u1, u2 = np.sort(rng.random((n, 2)), axis=1).T
    first = margin + slack * u1 + d_first / 2
    second = first + d_first / 2 + config.gap * scale + slack * (u2 - u1) + d_second / 2
    along = np.stack([np.where(subject_first, first, second),
                      np.where(subject_first, second, first)], axis=1)             # (n, 2)
    shared, own = 2 * rng.random((n, 1)) - 1, 2 * rng.random((n, 2)) - 1
    across = half + (shared * config.jitter_across * 1.5 + own * config.jitter_across * 0.5) * scale
    vertical = (relation < 2)[:, None]
    pair_x, pair_y = np.where(vertical, across, along), np.where(vertical, along, across)

    cx = np.where(two[:, None], pair_x, single[:, :1])
    cy = np.where(two[:, None], pair_y, single[:, 1:])
    # keep every object inside the image: margin <= centre - d/2 and centre + d/2 <= size - margin
    cx = np.clip(cx, margin + diameter / 2, size - margin - diameter / 2)
    cy = np.clip(cy, margin + diameter / 2, size - margin - diameter / 2)

    colours = np.stack([labels["colour"], np.maximum(labels["colour2"], 0)], axis=1)
    rgb = RGB[colours] + config.colour_jitter * (2 * rng.random((n, 2, 3)) - 1)   # (n, 2, 3)
    background = BACKGROUND + config.background_jitter * (2 * rng.random(n) - 1)
    return {"cx": cx.astype(np.float32), "cy": cy.astype(np.float32),
            "diameter": diameter.astype(np.float32), "rgb": np.clip(rgb, 0, 1).astype(np.float32),
            "background": background.astype(np.float32)}


# ----------------------------------------------------------------------------------- rendering
def _coverage(shape_id, cx, cy, radius, size, supersample):
    """Fraction of each pixel inside the shape, (m, size, size) float32, for m objects of one shape.

    The mask is evaluated at the centres of a (size*ss)^2 grid, then box-averaged ss x ss -> 1.
    """
    fine = (np.arange(size * supersample, dtype=np.float32) + 0.5) / supersample   # pixel units
    x = fine[None, None, :] - cx[:, None, None]           # (m, 1, W*ss)
    y = fine[None, :, None] - cy[:, None, None]           # (m, H*ss, 1)
    r = radius[:, None, None]
    if shape_id == 0:      # circle:   x^2 + y^2 <= r^2
        inside = x * x + y * y <= r * r
    elif shape_id == 1:    # square:   |x| <= r and |y| <= r
        inside = (np.abs(x) <= r) & (np.abs(y) <= r)
    else:                  # triangle, apex (0, -r), base y = r:  |x| <= (y + r) / 2 and y <= r
        inside = (2 * np.abs(x) <= y + r) & (y <= r)
    m, ss = len(cx), supersample
    blocks = inside.reshape(m, size, ss, size, ss)
    return blocks.sum(axis=(2, 4), dtype=np.float32) / (ss * ss)


def _render(labels, geometry, size, supersample):
    """Composite the objects over the background: image = image (1 - alpha) + rgb alpha."""
    n = len(labels["shape"])
    image = np.empty((n, 3, size, size), np.float32)
    image[:] = geometry["background"][:, None, None, None]
    shapes = np.stack([labels["shape"], labels["shape2"]], axis=1)     # (n, 2), -1 = absent
    for k in range(2):
        alpha = np.zeros((n, 1, size, size), np.float32)
        for shape_id in range(len(SHAPES)):
            rows = np.flatnonzero(shapes[:, k] == shape_id)
            if rows.size:
                alpha[rows, 0] = _coverage(shape_id, geometry["cx"][rows, k], geometry["cy"][rows, k],
                                           geometry["diameter"][rows, k] / 2, size, supersample)
        image = image * (1 - alpha) + geometry["rgb"][:, k, :, None, None] * alpha
    return image * 2 - 1                                               # [0, 1] -> [-1, 1]


def _boxes(labels, geometry):
    """(n, 2, 4) float32 boxes (x0, y0, x1, y1) in pixels; NaN for an absent second object."""
    r = geometry["diameter"] / 2
    boxes = np.stack([geometry["cx"] - r, geometry["cy"] - r, geometry["cx"] + r, geometry["cy"] + r], -1)
    boxes[labels["num_objects"] == 1, 1] = np.nan
    return boxes


def _check_arguments(n, size, two_object_fraction):
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"shapes: n must be a non-negative int, got {n!r}")
    if not isinstance(size, (int, np.integer)) or size < 16:
        raise ValueError(f"shapes: size must be an int >= 16 (32 or 64 are usual), got {size!r}")
    if not 0.0 <= two_object_fraction <= 1.0:
        raise ValueError(f"shapes: two_object_fraction must be in [0, 1], got {two_object_fraction!r}")


def sample(n: int, seed=0, size: int = 32, two_object_fraction: float = 0.3,
           config: ShapesConfig = DEFAULT, chunk: int = 256) -> dict:
    """n captioned scenes, fully determined by ``seed`` (an int or a sequence of ints).

    Returns dict(images=float32 (n, 3, size, size) in [-1, 1] (NumPy, host),
                 captions=list of n str, labels=dict of int64 (n,) arrays (see module docstring),
                 boxes=float32 (n, 2, 4) pixel boxes x0, y0, x1, y1, NaN for an absent object).
    """
    _check_arguments(n, size, two_object_fraction)
    attribute_rng, geometry_rng, caption_rng = _streams(seed)
    labels = _sample_labels(n, attribute_rng, two_object_fraction)
    geometry = _sample_geometry(labels, geometry_rng, size, config)
    images = np.empty((n, 3, size, size), np.float32)
    for start in range(0, n, chunk):   # chunks keep the supersampled masks small in memory
        part = slice(start, start + chunk)
        images[part] = _render({k: v[part] for k, v in labels.items()},
                               {k: v[part] for k, v in geometry.items()}, size, config.supersample)
    captions = [caption_for(attributes_from_labels(labels, i), caption_rng, config) for i in range(n)]
    return {"images": images, "captions": captions, "labels": labels, "boxes": _boxes(labels, geometry)}


def caption_corpus(n: int, seed=0, two_object_fraction: float = 0.3,
                   config: ShapesConfig = DEFAULT) -> list:
    """The captions of ``sample(n, seed, ...)`` without rendering (e.g. to train the tokenizer)."""
    _check_arguments(n, 32, two_object_fraction)
    attribute_rng, _, caption_rng = _streams(seed)
    labels = _sample_labels(n, attribute_rng, two_object_fraction)
    return [caption_for(attributes_from_labels(labels, i), caption_rng, config) for i in range(n)]


def render(attributes: dict, size: int = 32, rng=None, config: ShapesConfig = DEFAULT):
    """One explicit scene -> float32 (3, size, size) in [-1, 1].

    ``attributes`` as returned by `parse_caption`; ``None`` size/position are drawn from ``rng``
    (a Generator or int seed; default seed 0), as is the jitter.
    """
    rng = np.random.default_rng(0 if rng is None else rng)
    a = _validated(attributes)
    fill = {"size": SIZES, "position": POSITIONS} if a["num_objects"] == 1 else {"size": SIZES, "size2": SIZES}
    for key, vocabulary in fill.items():
        if a[key] is None:
            a[key] = vocabulary[int(rng.integers(len(vocabulary)))]
    if a["num_objects"] == 1:
        a.update(shape2=None, colour2=None, size2=None, relation=None)
    else:
        a["position"] = None
    labels = labels_from_attributes([a])
    _check_arguments(1, size, 0.0)
    return _render(labels, _sample_geometry(labels, rng, size, config), size, config.supersample)[0]


def batches(batch_size: int, seed=0, size: int = 32, two_object_fraction: float = 0.3,
            config: ShapesConfig = DEFAULT):
    """An endless, deterministic stream: batch k is ``sample(batch_size, seed=(seed, k), ...)``."""
    k = 0
    while True:
        yield sample(batch_size, (seed, k), size, two_object_fraction, config)
        k += 1


@dataclass
class ShapesDataset:
    """Iterable form of `batches`: ``for batch in ShapesDataset(seed=0, batch_size=64): ...``"""
    seed: int = 0
    size: int = 32
    batch_size: int = 64
    two_object_fraction: float = 0.3
    config: ShapesConfig = DEFAULT

    def __iter__(self):
        return batches(self.batch_size, self.seed, self.size, self.two_object_fraction, self.config)


if __name__ == "__main__":
    import sys
    import textwrap
    import time
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from minidiff.utils import output_dir, pyplot, save_figure, to_uint8

    start = time.perf_counter()
    timing = sample(4096, seed=1)
    seconds = time.perf_counter() - start
    print(f"rendered {len(timing['captions'])} 32x32 scenes in {seconds:.2f} s "
          f"({len(timing['captions']) / seconds:.0f} images/s)")
    for size, name in ((32, "shapes_demo.png"), (64, "shapes_demo_64.png")):
        batch = sample(48, seed=0, size=size)
        plt = pyplot()
        fig, axes = plt.subplots(6, 8, figsize=(16, 16))
        for ax, image, caption in zip(axes.flat, to_uint8(batch["images"]), batch["captions"]):
            ax.imshow(image, interpolation="nearest")
            ax.set_title("\n".join(textwrap.wrap(caption, 24)), fontsize=8)
            ax.axis("off")
        fig.subplots_adjust(hspace=0.5)
        fig.suptitle(f"minidiff shapes, {size}x{size}: sample(48, seed=0, size={size})")
        save_figure(fig, output_dir("") / name)
    for caption in batch["captions"][:6]:
        print(f"{caption!r:50} -> {parse_caption(caption)}")
