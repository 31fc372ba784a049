"""Small helpers shared by lessons and commands: arguments, output folders, images, figures."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from . import backend
from .files import atomic_write_bytes  # noqa: F401  (re-exported: lessons write files too)

REPO_ROOT = Path(__file__).resolve().parents[1]


LESSON_MODES = ("smoke", "quick", "full")


def in_notebook() -> bool:
    """True inside a Jupyter kernel or VS Code's interactive window (a ``__main__`` with no file)."""
    import sys
    main = sys.modules.get("__main__")
    return main is not None and not hasattr(main, "__file__")


def lesson_parser(description: str) -> argparse.ArgumentParser:
    """The flags every lesson takes: --smoke (seconds, for the tests), --quick (minutes on a
    2-core CPU), --full (everything from scratch; the default of a script), --device, --seed,
    --out (where figures go)."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--smoke", action="store_true",
                       help="tiny settings that only check the lesson runs (used by the tests)")
    modes.add_argument("--quick", action="store_true",
                       help="smaller, faster settings: at most a few minutes on a 2-core CPU")
    modes.add_argument("--full", action="store_true",
                       help="train everything from scratch at full size (the default of a script)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="output folder (default outputs/<lesson>)")
    parser.add_argument("--exercise", default=None, metavar="N[,M]",
                        help="also run these exercises of the lesson's last cell (same as MINIDIFF_EXERCISE=N)")
    backend.add_device_argument(parser)
    return parser


def parse_lesson_args(description: str, argv=None, extra=None):
    """Parse the standard lesson flags, pick the mode and select the device.

    The mode is a flag when one is given; else ``MINIDIFF_LESSON=smoke|quick|full``; else "quick"
    in a notebook kernel and "full" for a script. A kernel's own arguments (``-f kernel.json``)
    are ignored, not an error. ``args.mode`` names the mode; ``args.smoke``, ``args.quick`` and
    ``args.full`` say the same as booleans. ``extra(parser)``: adds a lesson's own options."""
    import sys
    notebook = in_notebook()
    if argv is None:
        argv = [] if notebook else sys.argv[1:]
    parser = lesson_parser(description)
    if extra is not None:
        extra(parser)
    args, unknown = parser.parse_known_args(argv)
    if unknown and not notebook:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    flagged = [mode for mode in LESSON_MODES if getattr(args, mode)]
    from_env = os.environ.get("MINIDIFF_LESSON", "").strip().lower()
    if from_env and from_env not in LESSON_MODES:
        parser.error(f"MINIDIFF_LESSON must be one of {', '.join(LESSON_MODES)}, got {from_env!r}")
    args.mode = flagged[0] if flagged else from_env or ("quick" if notebook else "full")
    if args.exercise is not None:          # the lessons read the exercises to run from the environment
        os.environ["MINIDIFF_EXERCISE"] = args.exercise
    for mode in LESSON_MODES:
        setattr(args, mode, args.mode == mode)
    backend.set_device(args.device)
    return args


def output_dir(name: str, override: str | None = None) -> Path:
    """``outputs/<name>/`` (created): under ``MINIDIFF_OUTPUTS`` when that is set, else under the
    repository; or ``override`` when given."""
    root = Path(os.environ["MINIDIFF_OUTPUTS"]) if os.environ.get("MINIDIFF_OUTPUTS") else REPO_ROOT / "outputs"
    path = Path(override) if override else root / name
    path.mkdir(parents=True, exist_ok=True)
    return path


class NotFiniteImageError(FloatingPointError):
    """An image holding NaN or infinite values: as uint8 it would be silently black or flat."""


def to_uint8(images):
    """Images in [-1, 1], (N, C, H, W) or (C, H, W), NumPy or CuPy -> uint8 (N, H, W, C) on the host.

    NaN or infinite values raise NotFiniteImageError: cast to uint8 they would become a plausible
    but meaningless (black or flat) picture."""
    x = backend.to_numpy(images).astype(np.float32)
    if not np.isfinite(x).all():
        bad = int(np.size(x) - np.isfinite(x).sum())
        raise NotFiniteImageError(f"the image holds {bad:,} NaN or infinite values out of {np.size(x):,}: "
                                  "the model's output is not a number (damaged weights, or a guidance "
                                  "scale far too large)")
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
    """Save a matplotlib figure (PNG, 120 dpi), show it inline in a notebook, close it, and print
    where it went."""
    import io

    import matplotlib.pyplot as plt
    path = Path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())
    if in_notebook():
        try:
            from IPython.display import display
            display(fig)
        except ImportError:                 # a kernel-like run without IPython: the file is enough
            pass
    plt.close(fig)
    print(f"saved {path}")
    return path


def pyplot():
    """matplotlib.pyplot: a non-interactive backend for scripts (lessons run headless); a notebook
    keeps its own (inline) backend."""
    import matplotlib
    if os.environ.get("MPLBACKEND") is None and not in_notebook():
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt
