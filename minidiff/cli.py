"""The command line: ``python -m minidiff <command> ...``.

    python -m minidiff generate "a red circle above a blue square" --n 4 --guidance 4
    python -m minidiff img2img photo.png "a green triangle on the left" --strength 0.6
    python -m minidiff inpaint photo.png mask.png "a yellow square"      (white in the mask = repaint)
    python -m minidiff outpaint photo.png "a purple circle" --extend 8
    python -m minidiff train pixel|vae|latent|clip|text2image|classifier|all [--preset full] ...
    python -m minidiff evaluate outputs/train/unet.npz --guidance 1 4 7.5
    python -m minidiff bench

The image commands write PNG files (and, with ``--n`` > 1, a grid of all of them): each file goes
to a temporary name and is renamed into place, and an existing file is never replaced without
``--force``. Everything that can be checked before the models load (numbers, files, sizes, the
output path) is checked first. Bad input ends with one line on stderr and exit code 2, never a
traceback; a training run whose loss stops being finite ends with exit code 1.
"""
from __future__ import annotations

import argparse
import io
import math
import os
import re
import sys
from pathlib import Path

from . import backend
from .diffusion.samplers import SAMPLERS
from .files import atomic_write_bytes
from .utils import REPO_ROOT, image_grid

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
DEFAULT_OUTPUTS = REPO_ROOT / "outputs"


class UsageError(Exception):
    """A command line argparse could not parse (reported like every other bad input)."""


class Parser(argparse.ArgumentParser):
    """argparse, but a parse error raises (main prints one line) instead of printing usage and exiting."""

    def error(self, message):
        raise UsageError(f"{self.prog}: {message}")


# -- the image commands ----------------------------------------------------------------------------
def _add_sampling_arguments(parser, default_guidance=4.0):
    parser.add_argument("--negative", default="", help="negative prompt (guidance pushes away from it)")
    parser.add_argument("--steps", type=int, default=50, help="sampler steps (default 50)")
    parser.add_argument("--guidance", type=float, default=default_guidance,
                        help=f"classifier-free guidance scale, >= 0 (default {default_guidance})")
    parser.add_argument("--sampler", default="ddim", help=f"one of {', '.join(SAMPLERS)} (default ddim)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n", type=int, default=1, help="number of images (a grid is written too when > 1)")
    parser.add_argument("--out", help="output PNG (default outputs/<command>/<prompt>_seed<seed>.png)")
    parser.add_argument("--force", action="store_true", help="overwrite existing output files")
    parser.add_argument("--checkpoints", help="folder with vae.npz, unet.npz, text_encoder.npz, tokenizer.json "
                                              "(default data/pretrained)")
    backend.add_device_argument(parser)


def _check_sampling_arguments(args):
    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    if not (math.isfinite(args.guidance) and args.guidance >= 0):
        raise ValueError(f"--guidance must be a number >= 0, got {args.guidance}")
    if args.sampler not in SAMPLERS:
        raise ValueError(f"--sampler must be one of {', '.join(SAMPLERS)}; got {args.sampler!r}")
    if not 1 <= args.n <= 256:
        raise ValueError(f"--n must be between 1 and 256, got {args.n}")
    if args.checkpoints is not None and not Path(args.checkpoints).is_dir():
        raise FileNotFoundError(f"--checkpoints {args.checkpoints}: no such folder")


def _slug(text: str) -> str:
    words = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    return words[:60] or "unconditional"


def output_paths(args, command: str):
    """The files a command will write: [FILE] for one image; FILE_1.png ... FILE_n.png and the grid
    FILE for --n > 1. Refuses (before any work is done) a path that cannot be written."""
    if args.out is not None:
        out = Path(args.out)
        if not args.out.strip() or out.name in ("", ".", ".."):
            raise ValueError(f"--out must name a .png file, got {args.out!r}")
        if out.suffix.lower() != ".png":
            raise ValueError(f"--out must end in .png, got {args.out!r}")
        if out.is_dir():
            raise IsADirectoryError(f"--out {out} is a folder; name a .png file inside it")
        if not out.parent.is_dir():
            raise FileNotFoundError(f"--out {out}: the folder {out.parent} does not exist")
    else:
        out = DEFAULT_OUTPUTS / command / f"{_slug(args.prompt)}_seed{args.seed}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(out.parent, os.W_OK):
        raise PermissionError(f"--out {out}: the folder {out.parent} is not writable")
    paths = [out] if args.n == 1 else [out.with_name(f"{out.stem}_{i}.png") for i in range(1, args.n + 1)] + [out]
    existing = [p for p in paths if p.exists()]
    if existing and not args.force:
        raise FileExistsError(f"{existing[0]} exists; pass --force to overwrite it, or choose another --out")
    return paths


def _png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_images(images, paths):
    """PIL images -> PNG files (atomically); the last path gets a grid when there are several."""
    import numpy as np
    blobs = [_png_bytes(image) for image in images]
    if len(paths) > len(images):           # the grid of all images
        tiles = np.stack([np.asarray(image) for image in images]).astype(np.float32) / 127.5 - 1.0
        blobs.append(_png_bytes(image_grid(tiles.transpose(0, 3, 1, 2), scale=4)))
    for blob, path in zip(blobs, paths):
        atomic_write_bytes(path, blob)
        print(f"wrote {path}")


def _read_image(path):
    """Check an input image early (exists, readable, RGB) so bad input fails before the models load."""
    from .pipeline import load_image
    return load_image(path)


def run_image_command(args) -> int:
    from . import pipeline
    _check_sampling_arguments(args)
    command = args.command
    common = dict(negative_prompt=args.negative, steps=args.steps, guidance_scale=args.guidance,
                  sampler=args.sampler, seed=args.seed, num_images=args.n, checkpoints=args.checkpoints,
                  device=args.device, progress=True)
    if command == "generate":
        if not args.prompt.strip():
            print("note: the prompt is empty: sampling unconditionally (guidance has no effect)", file=sys.stderr)
        paths = output_paths(args, command)
        images = pipeline.text_to_image(args.prompt, **common)
    elif command == "img2img":
        if not 0.0 <= args.strength <= 1.0:
            raise ValueError(f"--strength must be in [0, 1], got {args.strength}")
        _read_image(args.image)
        paths = output_paths(args, command)
        images = pipeline.image_to_image(args.image, args.prompt, strength=args.strength, **common)
    elif command == "inpaint":
        pixels = _read_image(args.image)
        pipeline.load_mask(args.mask, pixels.shape[2:])
        paths = output_paths(args, command)
        images = pipeline.inpaint(args.image, args.mask, args.prompt, **common)
    else:  # outpaint
        if args.extend < 1:
            raise ValueError(f"--extend must be >= 1 pixel, got {args.extend}")
        _read_image(args.image)
        paths = output_paths(args, command)
        images = pipeline.outpaint(args.image, args.prompt, extend=args.extend, **common)
    write_images(images, paths)
    return 0


# -- the parser --------------------------------------------------------------------------------------
def build_parser(command=None):
    """The whole command line. The training and evaluation stacks are imported only when
    ``command`` is theirs, so ``generate`` never loads them."""
    parser = Parser(prog="minidiff", description="Stable Diffusion from scratch in NumPy/CuPy.",
                    formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n")[1])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    generate = commands.add_parser("generate", help="text -> image")
    generate.add_argument("prompt", help='e.g. "a red circle above a blue square" ("" = unconditional)')
    _add_sampling_arguments(generate)

    img2img = commands.add_parser("img2img", help="image + text -> image")
    img2img.add_argument("image", help="RGB PNG/JPEG")
    img2img.add_argument("prompt")
    img2img.add_argument("--strength", type=float, default=0.6,
                         help="how much to change: 0 keeps the image, 1 ignores it (default 0.6)")
    _add_sampling_arguments(img2img)

    inpaint = commands.add_parser("inpaint", help="repaint the white part of a mask")
    inpaint.add_argument("image", help="RGB PNG/JPEG")
    inpaint.add_argument("mask", help="same size as the image; white = repaint, black = keep")
    inpaint.add_argument("prompt")
    _add_sampling_arguments(inpaint)

    outpaint = commands.add_parser("outpaint", help="grow the canvas and paint the new border")
    outpaint.add_argument("image", help="RGB PNG/JPEG")
    outpaint.add_argument("prompt")
    outpaint.add_argument("--extend", type=int, default=8, help="pixels added on every side (default 8)")
    _add_sampling_arguments(outpaint)

    train = commands.add_parser("train", help="train a model (see minidiff/train/)")
    evaluate = commands.add_parser("evaluate", help="Frechet distance and prompt accuracy of a checkpoint")
    if command == "train":
        from . import train as training
        training.add_arguments(train)
    if command == "evaluate":
        from . import evaluate as evaluation
        evaluation.add_arguments(evaluate)
    commands.add_parser("bench", help="timing tables (minidiff/bench/; its own --help)", add_help=False)
    return parser


def _dispatch(args) -> int:
    if getattr(args, "device", None) is not None:
        try:
            backend.set_device(args.device)
        except RuntimeError as exc:            # a GPU was asked for and none is usable
            raise ValueError(str(exc)) from None
    if args.command == "train":
        from . import train
        try:
            return train.main(args)
        except train.TrainingDiverged as exc:
            print(f"minidiff: {_one_line(exc)}", file=sys.stderr)
            return EXIT_FAILED
    if args.command == "evaluate":
        from . import evaluate
        return evaluate.main(args)
    return run_image_command(args)


def run_bench(argv) -> int:
    """``bench`` hands all its arguments to minidiff/bench.py (which parses them itself)."""
    import importlib.util
    if importlib.util.find_spec("minidiff.bench") is None:
        raise ValueError("this minidiff has no bench package (minidiff/bench/)")
    from . import bench
    return bench.main(list(argv)) or 0


def _one_line(exc) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv=None) -> int:
    """Parse ``argv`` (default sys.argv[1:]), run the command, return the exit code.

    Every expected failure goes through this one handler: one line on stderr, no traceback."""
    from .checkpoint import CheckpointError
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    try:
        if argv[:1] == ["bench"]:
            return run_bench(argv[1:])
        return _dispatch(build_parser(argv[0] if argv else None).parse_args(argv))
    except UsageError as exc:
        print(f"{_one_line(exc)} (try --help)", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (ValueError, CheckpointError, OSError) as exc:   # FileNotFound, FileExists, Permission, ...
        print(f"minidiff: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("minidiff: interrupted", file=sys.stderr)
        return 130
