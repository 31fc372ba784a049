"""A folder of your own images (PNG / JPEG) as float32 (N, C, S, S) in [-1, 1], with captions.

Each image is converted to RGB (transparent pixels composited over white; grey repeated; 16-bit
grey scaled to 8 bits), or to grey for ``channels=1``, center-cropped to a square on its shorter
side, and resized to ``size`` x ``size`` with a Lanczos filter. Files are read in sorted name
order, so the array is the same every time.

Captions, for the jobs that need them, come from the first of:

* ``captions.txt`` beside the images: one line per image, ``filename<TAB>caption`` or
  ``filename,caption`` (blank lines and lines starting with ``#`` are skipped);
* ``captions.csv``: two columns, file name and caption (a header row ``file,caption`` is skipped);
* the file names: ``red_circle_3.png`` -> "red circle" (``_`` and ``-`` become spaces, trailing
  numbers go).

A caption file must name every image exactly once and no file that is not there.
"""
from __future__ import annotations

import csv
import re
import warnings
from pathlib import Path

import numpy as np

from ..utils import from_uint8

EXTENSIONS = (".png", ".jpg", ".jpeg")
CAPTION_FILES = ("captions.txt", "captions.csv")
MAX_PIXELS = 50_000_000           # a photo is fine; a header claiming more is refused before decoding


def list_images(path) -> list[Path]:
    """The .png/.jpg/.jpeg files directly in ``path``, in name order; one-line errors for no folder or no images."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"load_folder: {folder} is not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS)
    if not files:
        raise ValueError(f"load_folder: no images ({', '.join(EXTENSIONS)}) in {folder}")
    return files


def _to_mode(image, channels: int):
    """A decoded PIL image as "RGB" (channels 3) or "L" (channels 1)."""
    from PIL import Image
    if image.mode.startswith("I"):                    # 16- or 32-bit grey: scale its range to 0..255
        values = np.asarray(image, np.float64)
        top = 65535.0 if values.max() > 255 else 255.0
        image = Image.fromarray(np.clip(values / top * 255.0, 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, image.convert("RGBA"))
    return image.convert("RGB" if channels == 3 else "L")


def _load_one(path: Path, size: int, channels: int = 3) -> np.ndarray:
    """One file -> uint8 (size, size, channels): read, checked, converted, center-cropped, resized."""
    from PIL import Image
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:               # the header only, so far
                width, height = image.size
                if width < 1 or height < 1 or width * height > MAX_PIXELS:
                    raise ValueError(f"{width}x{height} pixels (at most {MAX_PIXELS:,})")
                image.load()
                image = _to_mode(image, channels)
    except Exception as exc:                              # a foreign, truncated or oversized file
        raise ValueError(f"load_folder: cannot read image {path}: {exc}") from None
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.LANCZOS)
    return np.asarray(image, np.uint8).reshape(size, size, channels)


def load_folder(path, size: int = 32, limit: int | None = None, channels: int = 3) -> np.ndarray:
    """All .png/.jpg/.jpeg files directly in ``path`` -> float32 (N, channels, size, size) in [-1, 1].

    ``limit``: read at most this many (the first in name order). Errors name the folder or file.
    """
    if not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"load_folder: size must be a positive int, got {size!r}")
    if channels not in (1, 3):
        raise ValueError(f"load_folder: channels must be 1 (grey) or 3 (RGB), got {channels!r}")
    files = list_images(path)[:limit]
    pixels = np.stack([_load_one(f, size, channels) for f in files])       # (N, S, S, C) uint8
    return np.ascontiguousarray(from_uint8(pixels))                         # x = pixel / 127.5 - 1


def caption_from_filename(name: str) -> str:
    """"red_circle_3.png" -> "red circle"; "0001.png" -> "" (no words)."""
    words = re.split(r"[\s_\-.]+", Path(name).stem.lower())
    while words and (not words[-1] or words[-1].isdigit()):
        words.pop()
    return " ".join(w for w in words if w)


def _caption_rows(path: Path):
    """(line number, file name, caption) rows of captions.txt or captions.csv."""
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            for number, row in enumerate(csv.reader(handle), 1):
                if number == 1 and [c.strip().lower() for c in row[:2]] in (["file", "caption"], ["filename", "caption"],
                                                                             ["image", "caption"], ["file", "text"]):
                    continue
                if row and any(c.strip() for c in row):
                    yield number, row[0].strip(), ",".join(row[1:]).strip()
        return
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, caption = line.partition("\t") if "\t" in line else line.partition(",")
        yield number, name.strip(), caption.strip()


def read_captions(path, files: list[Path]) -> tuple[list[str] | None, str]:
    """(one caption per file, or None when there are none; where they came from).

    A caption file that names a missing image, names one twice, leaves an image out or gives an
    empty caption is a ValueError naming the file and line."""
    folder = Path(path)
    for caption_file in (folder / name for name in CAPTION_FILES):
        if not caption_file.is_file():
            continue
        try:
            rows = list(_caption_rows(caption_file))
        except (UnicodeDecodeError, csv.Error) as exc:
            raise ValueError(f"load_folder: cannot read {caption_file}: {exc}") from None
        present = {f.name for f in files}
        given = {}
        for number, name, caption in rows:
            where = f"{caption_file}, line {number}"
            if name not in present:
                raise ValueError(f"load_folder: {where} names {name!r}, which is not an image in {folder}")
            if name in given:
                raise ValueError(f"load_folder: {where} gives {name!r} a second caption (one per image)")
            if not caption:
                raise ValueError(f"load_folder: {where}: no caption for {name!r} (write 'file<TAB>caption')")
            given[name] = caption
        missing = [f.name for f in files if f.name not in given]
        if missing:
            raise ValueError(f"load_folder: {caption_file} has no caption for {len(missing)} image(s), "
                             f"first {missing[0]!r}")
        return [given[f.name] for f in files], caption_file.name
    from_names = [caption_from_filename(f.name) for f in files]
    if all(from_names):
        return from_names, "file names"
    return None, "none"


def load_captioned_folder(path, size: int = 32, limit: int | None = None, channels: int = 3,
                          need_captions: bool = False):
    """(images float32 (N, channels, size, size), captions list or None) from a folder.

    ``need_captions``: a folder without captions (no caption file, and a file name with no words)
    is a ValueError saying how to add them."""
    files = list_images(path)
    texts, _ = read_captions(path, files)                  # the caption file covers the whole folder
    files, texts = files[:limit], (texts[:limit] if texts is not None else None)
    if texts is None and need_captions:
        unnamed = next(f.name for f in files if not caption_from_filename(f.name))
        raise ValueError(f"load_folder: {Path(path)} has no captions (no {' or '.join(CAPTION_FILES)}, and "
                         f"the file name {unnamed!r} has no words): add captions.txt with lines 'file<TAB>caption'")
    return load_folder(path, size, limit, channels), texts
