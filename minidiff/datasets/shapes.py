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

Captions and labels
-------------------
"a red circle on the left", "a green circle above a large red square": the grammar, its parser
and the label layout live in `captions.py` (re-exported here). An omitted size or position in a
caption means "any". ``labels`` is a dict of int64 arrays (indices into the vocabulary tuples,
-1 = absent) with the keys LABEL_KEYS: num_objects, shape, colour, size, position (one-object
scenes), shape2, colour2, size2, relation (two-object scenes: object 1 REL object 2).

Rendering
---------
Each shape is a mask evaluated on a grid 4x finer than the image (vectorised over the batch),
then box-averaged down to a coverage alpha in [0, 1] (anti-aliasing by supersampling), and
composited over the background: ``image = image * (1 - alpha) + rgb * alpha``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .captions import (COLOURS, EXTRA_COLOURS, LABEL_KEYS, OMIT_POSITION_PROBABILITY,  # noqa: F401 (re-exported)
                       OMIT_SIZE_PROBABILITY, POSITIONS, RELATIONS, SHAPES, SIZES,
                       attributes_from_labels, canonical_attributes, canonical_labels, caption_for,
                       labels_from_attributes, matches_prompt,
                       parse_caption, prompt_agreement, validate_attributes)

# sRGB in [0, 1]: saturated hues, far apart from each other and from the grey background.
RGB = np.array([[0.90, 0.12, 0.12],    # red
                [0.10, 0.72, 0.22],    # green
                [0.16, 0.36, 0.95],    # blue
                [0.97, 0.87, 0.12],    # yellow
                [0.62, 0.22, 0.85],    # purple
                [1.00, 0.55, 0.05]],   # orange
               np.float32)
BACKGROUND = 0.20  # neutral dark grey (the same level in R, G and B)
# colours outside the base vocabulary (captions.EXTRA_COLOURS), rendered only when asked for:
# sample(..., extra_colours=("pink",)) teaches a fine-tune a colour the shipped models never saw
EXTRA_RGB = {"pink": (0.96, 0.45, 0.70)}


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
    omit_size_probability: float = OMIT_SIZE_PROBABILITY          # caption leaves out "small"/"large"
    omit_position_probability: float = OMIT_POSITION_PROBABILITY  # one object: no position phrase


DEFAULT = ShapesConfig()


# ------------------------------------------------------------------------------ scene sampling
def _streams(seed):
    """Three independent generators (attributes, geometry, captions) from one seed, so the
    captions of ``sample(n, seed)`` can be drawn without rendering (see `caption_corpus`)."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)]


def _sample_labels(n, rng, two_object_fraction):
    """Uniform attributes; the two objects of a scene differ in colour or in shape."""
    two = rng.random(n) < two_object_fraction
    shape, colour = rng.integers(0, len(SHAPES), n), rng.integers(0, len(COLOURS), n)
    size, position = rng.integers(0, len(SIZES), n), rng.integers(0, len(POSITIONS), n)
    shape2, size2 = rng.integers(0, len(SHAPES), n), rng.integers(0, len(SIZES), n)
    relation = rng.integers(0, len(RELATIONS), n)
    other_colour = (colour + rng.integers(1, len(COLOURS), n)) % len(COLOURS)   # any but object 1's
    colour2 = np.where(shape2 == shape, other_colour, rng.integers(0, len(COLOURS), n))
    absent = np.int64(-1)
    return {"num_objects": np.where(two, 2, 1).astype(np.int64),
            "shape": shape, "colour": colour, "size": size,
            "position": np.where(two, absent, position),
            "shape2": np.where(two, shape2, absent), "colour2": np.where(two, colour2, absent),
            "size2": np.where(two, size2, absent), "relation": np.where(two, relation, absent)}


def _sample_geometry(labels, rng, size, config, palette=RGB):
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
    rgb = palette[colours] + config.colour_jitter * (2 * rng.random((n, 2, 3)) - 1)   # (n, 2, 3)
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
    # box filter: add up the ss*ss strided sub-grids, counting in uint16 (~10x faster than
    # inside.reshape(m, size, ss, size, ss).sum(axis=(2, 4)), which reduces over strided axes)
    blocks = inside.view(np.uint8).reshape(m, size, ss, size, ss)
    covered = sum((blocks[:, :, i, :, j] for i in range(ss) for j in range(ss)), np.uint16(0))
    return covered.astype(np.float32) / (ss * ss)


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


def _captions(labels, rng, config, extra_colours=()):
    """One caption per scene; colour labels from len(COLOURS) on name the ``extra_colours``."""
    names = COLOURS + tuple(extra_colours)
    base = {k: np.where(v >= len(COLOURS), 0, v) if k in ("colour", "colour2") else v for k, v in labels.items()}
    out = []
    for i in range(len(labels["shape"])):
        attributes = attributes_from_labels(base, i)
        for key in ("colour", "colour2"):
            if labels[key][i] >= 0:
                attributes[key] = names[int(labels[key][i])]
        out.append(caption_for(attributes, rng, config.omit_size_probability, config.omit_position_probability,
                               extra_colours=extra_colours))
    return out


def _recolour(labels, seed, extra_colours, extra_fraction):
    """Give object 1 (the only object, or the relation's subject) of a share ``extra_fraction`` of the
    scenes one of the ``extra_colours`` (labels len(COLOURS) + k), drawn from a stream of its own so
    every other attribute is the one the base data would have. Object 2 keeps a base colour, so two
    objects of one shape still differ in colour."""
    unknown = [c for c in extra_colours if c not in EXTRA_COLOURS]
    if unknown:
        raise ValueError(f"shapes: extra colour {unknown[0]!r} is not one of {EXTRA_COLOURS}")
    if not 0.0 <= extra_fraction <= 1.0:
        raise ValueError(f"shapes: extra_fraction must be in [0, 1], got {extra_fraction!r}")
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(4)[3])
    n = len(labels["colour"])
    chosen = rng.random(n) < extra_fraction
    extra = len(COLOURS) + rng.integers(0, len(extra_colours), n)
    return dict(labels, colour=np.where(chosen, extra, labels["colour"]).astype(np.int64))


def sample(n: int, seed=0, size: int = 32, two_object_fraction: float = 0.3,
           config: ShapesConfig = DEFAULT, chunk: int = 256, extra_colours=(), extra_fraction: float = 0.5) -> dict:
    """n captioned scenes, fully determined by ``seed`` (an int or a sequence of ints).

    ``extra_colours`` (e.g. ("pink",), from EXTRA_COLOURS; default none: the base vocabulary): object 1
    of a share ``extra_fraction`` of the scenes takes one of them, colour label len(COLOURS) + k.

    Returns dict(images=float32 (n, 3, size, size) in [-1, 1] (NumPy, host),
                 captions=list of n str, labels=dict of int64 (n,) arrays (see module docstring),
                 boxes=float32 (n, 2, 4) pixel boxes x0, y0, x1, y1, NaN for an absent object).
    """
    _check_arguments(n, size, two_object_fraction)
    attribute_rng, geometry_rng, caption_rng = _streams(seed)
    labels = _sample_labels(n, attribute_rng, two_object_fraction)
    palette = RGB
    if extra_colours:
        labels = _recolour(labels, seed, tuple(extra_colours), extra_fraction)
        palette = np.concatenate([RGB, np.array([EXTRA_RGB[c] for c in extra_colours], np.float32)])
    geometry = _sample_geometry(labels, geometry_rng, size, config, palette)
    images = np.empty((n, 3, size, size), np.float32)
    for start in range(0, n, chunk):   # chunks keep the supersampled masks small in memory
        part = slice(start, start + chunk)
        images[part] = _render({k: v[part] for k, v in labels.items()},
                               {k: v[part] for k, v in geometry.items()}, size, config.supersample)
    captions = _captions(labels, caption_rng, config, tuple(extra_colours))
    return {"images": images, "captions": captions, "labels": labels, "boxes": _boxes(labels, geometry)}


def caption_corpus(n: int, seed=0, two_object_fraction: float = 0.3,
                   config: ShapesConfig = DEFAULT) -> list:
    """The captions of ``sample(n, seed, ...)`` without rendering (e.g. to train the tokenizer)."""
    _check_arguments(n, 32, two_object_fraction)
    attribute_rng, _, caption_rng = _streams(seed)
    labels = _sample_labels(n, attribute_rng, two_object_fraction)
    return _captions(labels, caption_rng, config)


def render(attributes: dict, size: int = 32, rng=None, config: ShapesConfig = DEFAULT):
    """One explicit scene -> float32 (3, size, size) in [-1, 1].

    ``attributes`` as returned by `parse_caption`; ``None`` size/position are drawn from ``rng``
    (a Generator or int seed; default seed 0), as is the jitter.
    """
    _check_arguments(1, size, 0.0)
    rng = np.random.default_rng(0 if rng is None else rng)
    a = validate_attributes(attributes)
    fill = {"size": SIZES, "position": POSITIONS} if a["num_objects"] == 1 else \
        {"size": SIZES, "size2": SIZES}
    for key, vocabulary in fill.items():
        if a[key] is None:
            a[key] = vocabulary[int(rng.integers(len(vocabulary)))]
    if a["num_objects"] == 1:
        a.update(shape2=None, colour2=None, size2=None, relation=None)
    else:
        a["position"] = None
    labels = labels_from_attributes([a])
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


if __name__ == "__main__":   # python -m minidiff.datasets.shapes
    import textwrap
    import time

    from ..utils import output_dir, pyplot, save_figure, to_uint8

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
