"""Reading the images and masks a user hands to the pipeline, with limits checked before decoding.

An image file is untrusted input: its header can claim 30000 x 30000 pixels in a few bytes (a
"decompression bomb"), its data can be cut short, its mode can be anything. ``load_image`` and
``load_mask`` read the header first and refuse, with one ValueError, any image of more than
``MAX_PIXELS`` pixels before a single pixel is decoded. The limit is about memory: the VAE and the
U-Net hold activations for every pixel, and self-attention compares every latent cell with every
other one, so memory grows with the square of the area (a 256 x 256 image takes about 1.2 GB on the
shipped models; the models were trained at 32 x 32).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .utils import from_uint8

MAX_SIDE = 256
MAX_PIXELS = MAX_SIDE * MAX_SIDE          # one image (or canvas) at most this many pixels


def check_pixels(width: int, height: int, what: str = "image"):
    """ValueError unless a ``width`` x ``height`` image has at least one and at most ``MAX_PIXELS`` pixels."""
    if width < 1 or height < 1:
        raise ValueError(f"{what} of {width}x{height} pixels is empty")
    if width * height > MAX_PIXELS:
        raise ValueError(f"{what} of {width}x{height} = {width * height:,} pixels is over the limit of "
                         f"{MAX_PIXELS:,} ({MAX_SIDE}x{MAX_SIDE}); the models were trained at 32x32: "
                         "scale it down first")


def _open(path: Path, what: str):
    """A decoded PIL image from a file, its size checked from the header before any pixel is decoded."""
    from PIL import Image
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} not found")
    with warnings.catch_warnings():
        # PIL's own, larger bomb limit (ours speaks first) and its notes on damaged metadata (a damaged
        # file that still decodes is used; one that does not is the error below)
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.simplefilter("ignore", UserWarning)
        try:
            opened = Image.open(path)                 # reads the header only
        except Image.DecompressionBombError:
            raise ValueError(f"{what} {path} claims more pixels than even PIL will decode; the limit here is "
                             f"{MAX_PIXELS:,} ({MAX_SIDE}x{MAX_SIDE})") from None
        except Exception as exc:                     # a foreign or damaged file: whatever the decoder says
            raise ValueError(f"cannot read {what} {path}: {type(exc).__name__}: {exc}") from None
        with opened:
            check_pixels(*opened.size, what=f"{what} {path}")
            try:
                opened.load()
                return opened.copy()
            except Exception as exc:                 # truncated or corrupt pixel data
                raise ValueError(f"cannot read {what} {path}: {type(exc).__name__}: {exc}") from None


def load_image(image):
    """A PIL image, a path, or a uint8 (H, W, 3) array -> float32 (1, 3, H, W) in [-1, 1] on the host.

    The image must be RGB: other modes (RGBA, grey, palette) are refused rather than guessed at."""
    from PIL import Image
    if isinstance(image, (str, Path)):
        image = _open(Path(image), "image")
    if isinstance(image, Image.Image):
        if image.mode != "RGB":
            raise ValueError(f"image must be RGB, got mode {image.mode!r}: convert it first, "
                             f"e.g. Image.open(path).convert('RGB')")
        check_pixels(*image.size)
        image = np.asarray(image)
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"image must be RGB uint8 of shape (H, W, 3), got {array.dtype} {array.shape}")
    check_pixels(array.shape[1], array.shape[0])
    return from_uint8(array)


def load_mask(mask, size, what: str = "mask"):
    """A PIL image, path or array -> float32 (H, W) in {0, 1} (1 = repaint). ``size`` = (H, W) of the image.

    A mask with no white pixel asks for nothing to be repainted: that is refused, not answered with
    the unchanged image. ``what`` names the input in messages ("control image": a ControlNet's outline,
    read the same way, white lines on black)."""
    from PIL import Image
    if isinstance(mask, (str, Path)):
        mask = _open(Path(mask), what)
    if isinstance(mask, Image.Image):
        check_pixels(*mask.size, what=what)
        try:
            mask = np.asarray(mask.convert("L"))
        except ValueError as exc:                    # a mode PIL cannot turn into grey
            raise ValueError(f"cannot read the {what}'s mode {mask.mode!r} as grey: {exc}") from None
    array = np.asarray(mask)
    if array.ndim == 3:                      # an RGB mask: any bright channel counts
        array = array.max(axis=2)
    if array.ndim != 2 or not (array.dtype == bool or array.dtype.kind in "uif"):
        raise ValueError(f"{what} must be a (H, W) or (H, W, C) array of numbers, got {array.dtype} {array.shape}")
    if array.shape != tuple(size):
        raise ValueError(f"{what} size {array.shape[1]}x{array.shape[0]} does not match the image size "
                         f"{size[1]}x{size[0]}")
    threshold = 0.5 if array.dtype.kind == "f" or array.dtype == bool else 128
    repaint = (array >= threshold).astype(np.float32)
    if not repaint.any():
        if what == "mask":
            raise ValueError("the mask has no white pixel: nothing to repaint (white = repaint, black = keep)")
        raise ValueError(f"the {what} has no white pixel: nothing to follow (draw white lines on black)")
    return repaint
