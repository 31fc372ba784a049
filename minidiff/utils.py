"""Small helpers shared by lessons and commands: arguments, output folders, images, figures."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from . import backend
from .files import atomic_write_bytes  # noqa: F401  (re-exported: lessons write files too)

REPO_ROOT = Path(__file__).resolve().parents[1]


def lesson_parser(description: str) -> argparse.ArgumentParser:
    """The flags every lesson takes: --quick (CPU, minutes), --smoke (seconds, for the tests),
    --device, --seed, --out (where figures go)."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smaller, faster settings: a few minutes on a 2-core CPU")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny settings that only check the lesson runs (used by the tests)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="output folder (default outputs/<lesson>)")
    backend.add_device_argument(parser)
    return parser


def parse_lesson_args(description: str, argv=None):
    """Parse the standard lesson flags and select the device."""
    args = lesson_parser(description).parse_args(argv)
    backend.set_device(args.device)
    return args


def output_dir(name: str, override: str | None = None) -> Path:
    """``outputs/<name>/`` under the repository (created), or ``override`` when given."""
    path = Path(override) if override else REPO_ROOT / "outputs" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def to_uint8(images):
    """Images in [-1, 1], (N, C, H, W) or (C, H, W), NumPy or CuPy -> uint8 (N, H, W, C) on the host."""
    x = backend.to_numpy(images).astype(np.float32)
    if x.ndim == 3:
        x = x[None]
    x = np.clip((x + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    return x.transpose(0, 2, 3, 1)


def from_uint8(images):
    """uint8 (N, H, W, C) or (H, W, C) -> float32 (N, C, H, W) in [-1, 1] on the host."""
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[None]
    return (x.astype(np.float32) / 127.5 - 1.0).transpose(0, 3, 1, 2)


def image_grid(images, nrow: int | None = None, pad: int = 1, scale: int = 1):
    """Tile images in [-1, 1] (N, C, H, W) into one PIL image, ``nrow`` per row, upscaled ``scale`` x."""
    from PIL import Image
    tiles = to_uint8(images)
    n, h, w, c = tiles.shape
    nrow = nrow or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / nrow))
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, np.uint8)
    for i, tile in enumerate(tiles):
        r, col = divmod(i, nrow)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = tile
    img = Image.fromarray(grid if c != 1 else grid[..., 0])
    if scale != 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    return img


def save_figure(fig, path):
    """Save a matplotlib figure (PNG, 120 dpi), close it, and print where it went."""
    import matplotlib.pyplot as plt
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    print(f"saved {path}")
    return path


def pyplot():
    """matplotlib.pyplot with a non-interactive backend (lessons run headless)."""
    import matplotlib
    if os.environ.get("MPLBACKEND") is None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt
