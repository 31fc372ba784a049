"""MNIST / Fashion-MNIST from IDX files you download yourself into ``data/`` (nothing is fetched).

The IDX format (LeCun et al.) is a tiny binary header followed by the raw array, big-endian:

    bytes 0-1   0x00 0x00
    byte  2     element type: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64
    byte  3     number of dimensions d
    4 .. 4+4d   each dimension as a big-endian uint32
    then        prod(dims) elements, row-major

MNIST's images are ``(N, 28, 28)`` uint8 (0 = background) and its labels ``(N,)`` uint8. Files
may be gzip-compressed (detected from their first bytes, whatever their name). Put the four files
(``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``, ``t10k-...``) in ``data/``
(MNIST) or another folder such as ``data/fashion/`` (Fashion-MNIST uses the same names).
"""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from ..utils import from_uint8

IDX_TYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
             0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
GZIP_MAGIC = b"\x1f\x8b"
MAX_BYTES = 1 << 30                     # the most IDX data one file may hold (after decompression)


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """The array in an IDX byte string; ValueError naming ``name`` for a wrong or corrupt file."""
    if len(data) < 4:
        raise ValueError(f"{name}: only {len(data)} bytes, too short for an IDX header (4 bytes)")
    if data[0] != 0 or data[1] != 0:
        raise ValueError(f"{name}: not an IDX file (first bytes {data[:4].hex()}, expected 0000tt0d)")
    type_code, ndim = data[2], data[3]
    if type_code not in IDX_TYPES:
        raise ValueError(f"{name}: unknown IDX element type 0x{type_code:02x}; "
                         f"known: {', '.join(f'0x{c:02x}' for c in IDX_TYPES)}")
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise ValueError(f"{name}: IDX header promises {ndim} dimensions but the file is "
                         f"{len(data)} bytes long")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dtype = IDX_TYPES[type_code]
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(f"{name}: IDX header says shape {dims} of {dtype.name} ({expected} bytes of "
                         f"data) but the file holds {len(data) - header}: truncated or corrupt")
    return np.frombuffer(data, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def read_idx(path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a NumPy array (uint8 for MNIST)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {path}")
    with open(path, "rb") as f:
        compressed = f.read(2) == GZIP_MAGIC
    too_big = f"{path}: more than {MAX_BYTES:,} bytes of IDX data (MNIST's largest file holds 47 MB)"
    if not compressed:
        if path.stat().st_size > MAX_BYTES:
            raise ValueError(too_big)
        return parse_idx(path.read_bytes(), str(path))
    try:                                # read at most one byte past the limit: a gzip bomb stops there
        with gzip.open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{path}: gzip data is corrupt ({exc})") from None
    if len(data) > MAX_BYTES:
        raise ValueError(too_big + " once decompressed")
    return parse_idx(data, str(path))


def _find(directory: Path, stem: str) -> Path:
    """``train-images-idx3-ubyte`` or ``train-images.idx3-ubyte``, with or without ``.gz``."""
    dotted = stem.replace("-idx", ".idx")
    candidates = [directory / (s + gz) for s in (stem, dotted) for gz in ("", ".gz")]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"no {stem}[.gz] in {directory}/ (looked for {', '.join(c.name for c in candidates)}). "
        "minidiff never downloads data: fetch the MNIST or Fashion-MNIST IDX files yourself and "
        f"place them in {directory}/")


def load_idx_dataset(directory="data", split: str = "train"):
    """(images uint8 (N, H, W), labels uint8 (N,)) from the IDX files in ``directory``.

    ``split``: "train" (files ``train-*``) or "test" (files ``t10k-*``).
    """
    prefixes = {"train": "train", "test": "t10k"}
    if split not in prefixes:
        raise ValueError(f"load_idx_dataset: split must be 'train' or 'test', got {split!r}")
    directory = Path(directory)
    images = read_idx(_find(directory, f"{prefixes[split]}-images-idx3-ubyte"))
    labels = read_idx(_find(directory, f"{prefixes[split]}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{directory}: images {images.shape} and labels {labels.shape} do not form "
                         "a data set (expected (N, H, W) and (N,))")
    return images.astype(np.uint8), labels.astype(np.uint8)


def to_float_images(images, pad_to: int | None = 32):
    """uint8 (N, H, W) -> float32 (N, 1, S, S) in [-1, 1], padded with -1 (background) to ``pad_to``.

    x = pixel / 127.5 - 1; MNIST's 28x28 gets 2 pixels of background on each side to make 32x32.
    """
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"to_float_images: expected (N, H, W) images, got shape {images.shape}")
    x = np.ascontiguousarray(from_uint8(images[..., None]))     # (N, 1, H, W), x = pixel / 127.5 - 1
    if pad_to is None:
        return x
    height, width = images.shape[1:]
    if pad_to < max(height, width):
        raise ValueError(f"to_float_images: pad_to={pad_to} is smaller than the images ({height}x{width})")
    top, left = (pad_to - height) // 2, (pad_to - width) // 2
    pad = ((0, 0), (0, 0), (top, pad_to - height - top), (left, pad_to - width - left))
    return np.pad(x, pad, constant_values=-1.0)
