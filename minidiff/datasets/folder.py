"""A folder of your own images (PNG / JPEG) as float32 (N, 3, S, S) in [-1, 1].

Each image is converted to RGB (transparent pixels composited over white), center-cropped to a
square on its shorter side, and resized to ``size`` x ``size`` with a Lanczos filter. Files are
read in sorted name order, so the array is the same every time.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..utils import from_uint8

EXTENSIONS = (".png", ".jpg", ".jpeg")


def _load_one(path: Path, size: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("RGBA", "LA", "P"):
                image = image.convert("RGBA")
                white = Image.new("RGBA", image.size, (255, 255, 255, 255))
                image = Image.alpha_composite(white, image)
            image = image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ValueError(f"load_folder: cannot read image {path}: {exc}") from None
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.LANCZOS)
    return np.asarray(image, np.uint8)


def load_folder(path, size: int = 32, limit: int | None = None) -> np.ndarray:
    """All .png/.jpg/.jpeg files directly in ``path`` -> float32 (N, 3, size, size) in [-1, 1].

    ``limit``: read at most this many (the first in name order). Errors name the folder or file.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"load_folder: {folder} is not a folder")
    if not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"load_folder: size must be a positive int, got {size!r}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS)
    if limit is not None:
        files = files[:limit]
    if not files:
        raise ValueError(f"load_folder: no images ({', '.join(EXTENSIONS)}) in {folder}")
    pixels = np.stack([_load_one(f, size) for f in files])                  # (N, S, S, 3) uint8
    return np.ascontiguousarray(from_uint8(pixels))                         # x = pixel / 127.5 - 1
