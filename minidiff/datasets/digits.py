"""Handwritten digits that ship with minidiff: 5,000 MNIST images (500 per class), and their captions.

``data/digits/mnist_5k.npz`` holds ``images`` uint8 (5000, 28, 28) (0 = background, 255 = ink) and
``labels`` uint8 (5000,), sorted by class (data/README.md: where it comes from, its licence, and the
command that made it). Only NumPy reads it.

The split is fixed: the last ``HELDOUT_PER_CLASS`` = 50 images of every class (500 in all) are the
held-out set, and no training run touches them; the other 4,500 are ``split="train"``.

Images come out as float32 (N, C, S, S) in [-1, 1], x = pixel / 127.5 - 1 (background -1):
S >= 28 pads the 28x28 digit with background, S < 28 shrinks it by area averaging
(each output pixel the mean of the input area it covers), C = 3 repeats the grey channel
(the VAE and the U-Net take RGB).

Captions name the digit, as a numeral or a word ("a handwritten 7", "the digit seven"), and some
add what the ink measures: stroke width w = 2 * area / perimeter of the inked pixels (a stroke of
width w and length L has area w L and perimeter about 2 L) gives "thin" or "thick", and the slant
(the shear -cov(x, y) / var(y) of the ink, > 0 when the top leans right) gives "slanted" or "upright".
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

DIGITS_FILE = Path(__file__).resolve().parents[2] / "data" / "digits" / "mnist_5k.npz"
NUM_CLASSES = 10
HELDOUT_PER_CLASS = 50
SPLITS = ("train", "heldout", "all")
NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
THIN_WIDTH, THICK_WIDTH = 1.75, 2.2      # stroke width in pixels: about the thirds of the 5,000
SLANTED, UPRIGHT = 0.4, 0.1              # shear: the most slanted fifth; |shear| below this is upright
ATTRIBUTES = ("digit", "thickness", "slant")    # label columns; thickness 0 thin 1 thick, slant 0 upright 1 slanted
TEMPLATES = ("a handwritten {numeral}", "the digit {name}", "a {numeral}", "a handwritten {name}",
             "the number {numeral}")


def load_uint8(split: str = "train", path=DIGITS_FILE):
    """(images uint8 (N, 28, 28), labels uint8 (N,)) of one split: "train", "heldout" or "all"."""
    if split not in SPLITS:
        raise ValueError(f"digits: split must be one of {SPLITS}, got {split!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"digits: {path} is missing; data/README.md says how to make it again")
    with np.load(path, allow_pickle=False) as stored:
        images, labels = stored["images"], stored["labels"]
    # rank of each image within its class: the last HELDOUT_PER_CLASS of every class are held out
    rank = np.zeros(len(labels), np.int64)
    for digit in range(NUM_CLASSES):
        members = np.flatnonzero(labels == digit)
        rank[members] = np.arange(len(members)) - len(members)          # -1 is the class's last
    heldout = rank >= -HELDOUT_PER_CLASS
    keep = {"train": ~heldout, "heldout": heldout, "all": np.ones_like(heldout)}[split]
    return images[keep], labels[keep]


def area_resize(x: np.ndarray, size: int) -> np.ndarray:
    """(N, C, H, W) -> (N, C, size, size) for size <= H, W: y = A x B^T with A's row i the share of
    input row r inside output row i's span [i H / size, (i + 1) H / size)."""
    def weights(n):
        edges = np.arange(size + 1) * n / size                                # output spans in input units
        low, high = edges[:-1, None], edges[1:, None]
        cells = np.arange(n)[None, :]
        overlap = np.clip(np.minimum(high, cells + 1) - np.maximum(low, cells), 0, None)
        return (overlap / (n / size)).astype(np.float32)                      # (size, n), rows sum to 1
    rows, cols = weights(x.shape[2]), weights(x.shape[3])
    return np.einsum("ih,nchw,jw->ncij", rows, x, cols, optimize=True)


def to_images(images: np.ndarray, size: int = 32, channels: int = 1) -> np.ndarray:
    """uint8 (N, 28, 28) -> float32 (N, channels, size, size) in [-1, 1] (channels 1 or 3)."""
    if channels not in (1, 3):
        raise ValueError(f"digits: channels must be 1 (grey) or 3 (grey repeated as RGB), got {channels!r}")
    if not isinstance(size, (int, np.integer)) or size < 4:
        raise ValueError(f"digits: size must be an int >= 4, got {size!r}")
    x = images.astype(np.float32)[:, None] / 127.5 - 1.0                      # (N, 1, 28, 28)
    height, width = x.shape[2:]
    if size < max(height, width):
        x = np.clip(area_resize(x, size), -1.0, 1.0)            # a mean of values in [-1, 1], up to rounding
    else:
        top, left = (size - height) // 2, (size - width) // 2
        x = np.pad(x, ((0, 0), (0, 0), (top, size - height - top), (left, size - width - left)),
                   constant_values=-1.0)
    return np.ascontiguousarray(np.repeat(x, channels, axis=1), dtype=np.float32)


def load(split: str = "train", size: int = 32, channels: int = 1, count: int | None = None, path=DIGITS_FILE):
    """(images float32 (N, channels, size, size) in [-1, 1], labels int64 (N,)) of one split.

    ``count``: the first ``count`` images after a fixed shuffle (every class about equally often)."""
    images, labels = load_uint8(split, path)
    if count is not None:
        order = np.random.default_rng(0).permutation(len(labels))[:count]
        images, labels = images[order], labels[order]
    return to_images(images, size, channels), labels.astype(np.int64)


def measure(images: np.ndarray) -> dict:
    """Stroke width and slant of uint8 (N, H, W) digits: {"width": (N,), "shear": (N,)} in pixels."""
    ink = images.astype(np.float64) / 255.0
    inked = ink > 0.5
    area = inked.sum(axis=(1, 2))
    # perimeter: the edges between an inked and an empty pixel, across rows and across columns
    perimeter = (inked[:, 1:] != inked[:, :-1]).sum(axis=(1, 2)) + (inked[:, :, 1:] != inked[:, :, :-1]).sum(axis=(1, 2))
    rows, cols = np.mgrid[:images.shape[1], :images.shape[2]]
    mass = np.maximum(ink.sum(axis=(1, 2)), 1e-9)
    mean_row = (ink * rows).sum(axis=(1, 2)) / mass
    mean_col = (ink * cols).sum(axis=(1, 2)) / mass
    d_row, d_col = rows - mean_row[:, None, None], cols - mean_col[:, None, None]
    # shear = -cov(x, y) / var(y): rows grow downwards, so a top leaning right has cov < 0
    shear = -(ink * d_row * d_col).sum(axis=(1, 2)) / np.maximum((ink * d_row ** 2).sum(axis=(1, 2)), 1e-9)
    return {"width": 2.0 * area / np.maximum(perimeter, 1), "shear": shear}


def attribute_labels(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N, 3) int64: digit, thickness (0 thin, 1 thick, -1 neither), slant (0 upright, 1 slanted, -1 neither)."""
    measured = measure(images)
    thickness = np.where(measured["width"] < THIN_WIDTH, 0, np.where(measured["width"] > THICK_WIDTH, 1, -1))
    slant = np.where(np.abs(measured["shear"]) < UPRIGHT, 0, np.where(measured["shear"] > SLANTED, 1, -1))
    return np.stack([np.asarray(labels, np.int64), thickness, slant], axis=1)


def caption_for(digit: int, thickness: int = -1, slant: int = -1, rng=None) -> str:
    """One caption for a digit with optional thickness / slant words, e.g. "a thick slanted 7"."""
    rng = rng if rng is not None else np.random.default_rng(0)
    template = TEMPLATES[rng.integers(len(TEMPLATES))]
    words = ([("thin", "thick")[thickness]] if thickness >= 0 and rng.random() < 0.7 else []) + \
            ([("upright", "slanted")[slant]] if slant >= 0 and rng.random() < 0.5 else [])
    text = template.format(numeral=digit, name=NAMES[digit])
    if words:                                       # "a handwritten 7" -> "a thick handwritten 7"
        article, rest = text.split(" ", 1)
        text = f"{article} {' '.join(words)} {rest}"
    return text


def captions_and_said(images: np.ndarray, labels: np.ndarray, seed: int = 0):
    """(captions, said, image_labels): one caption per uint8 digit image; ``said`` (N, 3) the labels
    each caption states (-1 = not said) and ``image_labels`` (N, 3) what each image is, so that
    caption j describes image i when every said label equals image i's (datasets.captions.label_matches)."""
    rng = np.random.default_rng(seed)
    have = attribute_labels(images, labels)
    texts, said = [], np.full_like(have, -1)
    for i, (digit, thickness, slant) in enumerate(have):
        texts.append(caption_for(int(digit), int(thickness), int(slant), rng))
        said[i] = [digit, _said(texts[-1], ("thin", "thick")), _said(texts[-1], ("upright", "slanted"))]
    return texts, said, have


def _said(text: str, words) -> int:
    found = [k for k, word in enumerate(words) if word in text.split()]
    return found[0] if found else -1


if __name__ == "__main__":
    images, labels = load_uint8("heldout")
    texts, said, have = captions_and_said(images, labels)
    print(f"held-out: {len(labels)} digits, {np.bincount(labels).tolist()} per class")
    for i in range(0, len(texts), 97):
        print(f"  {labels[i]}: {texts[i]!r}  (said {said[i].tolist()}, image {have[i].tolist()})")
