"""The command line: ``python -m minidiff <command> ...``.

    python -m minidiff generate "a red circle above a blue square" --n 4 --guidance 4
    python -m minidiff img2img photo.png "a green triangle on the left" --strength 0.6
    python -m minidiff inpaint photo.png mask.png "a yellow square"      (white in the mask = repaint)
    python -m minidiff outpaint photo.png "a purple circle" --extend 8
    python -m minidiff train pixel|vae|latent|clip|text2image|classifier|all [--preset full] ...
    python -m minidiff evaluate outputs/train/unet.npz --guidance 1 4 7.5
    python -m minidiff bench

The image commands write PNG files (and, with ``--n`` > 1, a grid of all of them): all of them or
none. Each goes to a temporary name first; only when every one is written are they renamed into
place, and an existing file is never replaced without ``--force`` (decided at the rename itself,
so two runs racing for one name cannot both win). Everything that can be checked before the
models load (numbers, files, sizes, the output path) is checked first.

Every failure ends in one place, :func:`main`: one line on stderr and an exit code, never a
traceback (``--debug`` adds one):

    0    done
    1    a runtime failure: a full disk, out of memory, training that diverged, a result that is
         not a number, or an internal error (please report it)
    2    bad input: arguments, files, images, checkpoints, an output that exists
    130  interrupted: Ctrl-C or SIGTERM (a training run keeps its last checkpoint)
"""
from __future__ import annotations

import argparse
import errno
import io
import math
import os
import re
import sys
import traceback
import warnings
from pathlib import Path

from . import backend
from .diffusion.samplers import SAMPLERS
from .files import atomic_write_many, interrupt_on_sigterm, remove_stale_temps
from .images import MAX_PIXELS
from .models.tokenizer import MAX_TEXT_CHARS
from .utils import REPO_ROOT, image_grid

EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 1, 2, 130
# errors of the machine, not of the input: exit code 1
RUNTIME_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.ENOMEM, errno.EFBIG, errno.EPIPE}
DEFAULT_OUTPUTS = REPO_ROOT / "outputs"
MAX_IMAGES = 256
MAX_BATCH_PIXELS = MAX_IMAGES * 32 * 32      # --n times the pixels of one image, for one run
MAX_SEED = 2 ** 63


class UsageError(Exception):
    """A command line argparse could not parse (reported like every other bad input)."""


class Parser(argparse.ArgumentParser):
    """argparse, but a parse error raises (main prints one line) instead of printing usage and exiting."""

    def error(self, message):
        raise UsageError(f"{self.prog}: {message}")


# -- the image commands ----------------------------------------------------------------------------
def _add_sampling_arguments(parser):
    parser.add_argument("--negative", default="", help="negative prompt (guidance pushes away from it)")
    parser.add_argument("--steps", type=int, default=50, help="sampler steps (default 50)")
    parser.add_argument("--guidance", type=float, default=None,
                        help="classifier-free guidance scale, >= 0 (default: the checkpoint folder's pipeline.json, "
                             "else 4; the shipped shapes model 4, the digits 2)")
    parser.add_argument("--sampler", default="ddim", help=f"one of {', '.join(SAMPLERS)} (default ddim)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n", type=int, default=1, help="number of images (a grid is written too when > 1)")
    parser.add_argument("--out", help="output PNG (default outputs/<command>/<prompt>_seed<seed>.png)")
    parser.add_argument("--force", action="store_true", help="overwrite existing output files")
    parser.add_argument("--checkpoints", help="folder with vae.npz, unet.npz, text_encoder.npz, tokenizer.json "
                                              "(default data/pretrained)")
    backend.add_device_argument(parser)


def _check_text(text, name):
    """A prompt as the shell gave it: valid UTF-8 (bytes that are not arrive as surrogates) and short."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        char = text[exc.start]
        what = f"byte 0x{ord(char) - 0xDC00:02x}" if 0xDC80 <= ord(char) <= 0xDCFF else f"U+{ord(char):04X}"
        raise ValueError(f"{name} is not valid UTF-8 text ({what} at character {exc.start}); "
                         "check the terminal's encoding") from None
    if len(text) > MAX_TEXT_CHARS:
        raise ValueError(f"{name} is {len(text):,} characters, over the limit of {MAX_TEXT_CHARS:,} "
                         "(the text encoder reads 24 tokens, about 100 characters)")


def _check_sampling_arguments(args):
    from .pipeline import MAX_GUIDANCE_SCALE
    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    if args.guidance is not None and not (math.isfinite(args.guidance) and 0 <= args.guidance <= MAX_GUIDANCE_SCALE):
        raise ValueError(f"--guidance must be a number in [0, {MAX_GUIDANCE_SCALE:g}], got {args.guidance}")
    if args.sampler not in SAMPLERS:
        raise ValueError(f"--sampler must be one of {', '.join(SAMPLERS)}; got {args.sampler!r}")
    if not 0 <= args.seed < MAX_SEED:
        raise ValueError(f"--seed must be an integer in [0, 2**63), got {args.seed}")
    if not 1 <= args.n <= MAX_IMAGES:
        raise ValueError(f"--n must be between 1 and {MAX_IMAGES}, got {args.n}")
    _check_text(args.prompt, "the prompt")
    if not args.prompt.strip():
        raise ValueError('the prompt is empty: say what to draw, e.g. "a red circle on the left" (for samples '
                         'that ignore the prompt, give any prompt with --guidance 0: the unconditional model)')
    _check_text(args.negative, "--negative")
    if args.checkpoints is not None and not Path(args.checkpoints).is_dir():
        raise FileNotFoundError(f"--checkpoints {args.checkpoints}: no such folder")


def _check_batch(args, width, height):
    """--n images of ``width`` x ``height`` within MAX_BATCH_PIXELS (memory grows with their sum)."""
    if args.n * width * height > MAX_BATCH_PIXELS:
        most = max(1, MAX_BATCH_PIXELS // (width * height))
        raise ValueError(f"--n {args.n} images of {width}x{height} pixels are {args.n * width * height:,} pixels, "
                         f"over the limit of {MAX_BATCH_PIXELS:,} for one run; use --n {most} or fewer")


def _slug(text: str) -> str:
    words = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    return words[:60] or "unconditional"


def _check_extend(extend, width, height):
    """The canvas outpainting grows, (width + 2 extend) x (height + 2 extend), within MAX_PIXELS."""
    grown = (width + 2 * extend) * (height + 2 * extend)
    if grown > MAX_PIXELS:
        # the largest e with (W + 2e)(H + 2e) <= MAX_PIXELS:  4e^2 + 2(W + H)e + WH - MAX_PIXELS <= 0
        most = (math.isqrt((width + height) ** 2 - 4 * (width * height - MAX_PIXELS)) - (width + height)) // 4
        raise ValueError(f"--extend {extend} grows the {width}x{height} image to {width + 2 * extend}x"
                         f"{height + 2 * extend} = {grown:,} pixels, over the limit of {MAX_PIXELS:,}; "
                         f"use --extend {most} or less")


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


def write_images(images, paths, overwrite=False):
    """PIL images -> PNG files, all or none (``files.atomic_write_many``); the last path gets a grid
    when there are several. Without ``overwrite`` a file that appeared meanwhile is refused."""
    import numpy as np
    blobs = [_png_bytes(image) for image in images]
    if len(paths) > len(images):           # the grid of all images
        tiles = np.stack([np.asarray(image) for image in images]).astype(np.float32) / 127.5 - 1.0
        blobs.append(_png_bytes(image_grid(tiles.transpose(0, 3, 1, 2), scale=4)))
    for path in atomic_write_many(dict(zip(paths, blobs)), overwrite=overwrite):
        print(f"wrote {_printable(path)}")


def _read_image(path):
    """Check an input image early (exists, readable, RGB, size) so bad input fails before the models load."""
    from .images import load_image
    return load_image(path)


def run_image_command(args) -> int:
    from . import pipeline
    _check_sampling_arguments(args)
    command = args.command
    common = dict(negative_prompt=args.negative, steps=args.steps, guidance_scale=args.guidance,
                  sampler=args.sampler, seed=args.seed, num_images=args.n, checkpoints=args.checkpoints,
                  device=args.device, progress=True)
    if command == "generate":
        paths = output_paths(args, command)
        remove_stale_temps(paths[0].parent)
        images = pipeline.text_to_image(args.prompt, control=args.control, control_scale=args.control_scale,
                                        lora=args.lora, lora_scale=args.lora_scale, **common)
    elif command == "img2img":
        if not 0.0 <= args.strength <= 1.0:
            raise ValueError(f"--strength must be in [0, 1], got {args.strength}")
        height, width = _read_image(args.image).shape[2:]
        _check_batch(args, width, height)
        paths = output_paths(args, command)
        remove_stale_temps(paths[0].parent)
        images = pipeline.image_to_image(args.image, args.prompt, strength=args.strength, **common)
    elif command == "inpaint":
        from .images import load_mask
        height, width = _read_image(args.image).shape[2:]
        load_mask(args.mask, (height, width))
        _check_batch(args, width, height)
        paths = output_paths(args, command)
        remove_stale_temps(paths[0].parent)
        images = pipeline.inpaint(args.image, args.mask, args.prompt, **common)
    else:  # outpaint
        if args.extend < 1:
            raise ValueError(f"--extend must be >= 1 pixel, got {args.extend}")
        height, width = _read_image(args.image).shape[2:]
        _check_extend(args.extend, width, height)
        _check_batch(args, width + 2 * args.extend, height + 2 * args.extend)
        paths = output_paths(args, command)
        remove_stale_temps(paths[0].parent)
        images = pipeline.outpaint(args.image, args.prompt, extend=args.extend, **common)
    write_images(images, paths, overwrite=args.force)
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
    generate.add_argument("--control", help="outline PNG (white on black, RGB or greyscale) at the model's image "
                                            "size; needs controlnet.npz in --checkpoints (train controlnet)")
    generate.add_argument("--control-scale", type=float, default=1.0, help="weight of the control (default 1)")
    generate.add_argument("--lora", help="a LoRA adapter .npz (from train lora)")
    generate.add_argument("--lora-scale", type=float, default=1.0, help="weight of the adapter (0 = the base model)")

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
        return train.main(args)
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


def _printable(text) -> str:
    """``text`` safe to print on any terminal: bytes that were not UTF-8 in a path shown escaped."""
    return str(text).encode("utf-8", "backslashreplace").decode("utf-8")


def _one_line(exc) -> str:
    return _printable(" ".join(str(exc).split()) or type(exc).__name__)


def _is_bad_input(exc) -> bool:
    """Errors that the input caused (exit 2): values, files, checkpoints, images."""
    if isinstance(exc, OSError):
        return exc.errno not in RUNTIME_ERRNOS
    if isinstance(exc, (ValueError, OverflowError)):  # CheckpointError and UnicodeError are ValueErrors
        return True
    image_module = sys.modules.get("PIL.Image")       # PIL's bomb guard, for an image read elsewhere
    return image_module is not None and isinstance(exc, image_module.DecompressionBombError)


def failure(exc) -> tuple:
    """(exit code, the one line to print) for an exception that ended a command."""
    if isinstance(exc, UsageError):
        return EXIT_BAD_INPUT, f"{_one_line(exc)} (try --help)"
    if isinstance(exc, KeyboardInterrupt):
        detail = _one_line(exc) if str(exc) else ""
        return EXIT_INTERRUPTED, "minidiff: interrupted" + (f": {detail}" if detail else "")
    if _is_bad_input(exc):
        return EXIT_BAD_INPUT, f"minidiff: error: {_one_line(exc)}"
    if isinstance(exc, MemoryError):
        return EXIT_FAILED, (f"minidiff: error: out of memory ({_one_line(exc)}); try fewer images (--n), "
                             "a smaller image or fewer --steps")
    if isinstance(exc, (OSError, RuntimeError, ArithmeticError)):   # disk full, diverged, not a number
        return EXIT_FAILED, f"minidiff: error: {_one_line(exc)}"
    return EXIT_FAILED, (f"minidiff: internal error: {type(exc).__name__}: {_one_line(exc)} "
                         "(a bug: please report it; --debug shows where)")


def _print_warning(message, category, filename, lineno, file=None, line=None):
    """warnings.showwarning as one line ("minidiff: warning: ..."), without Python's source line."""
    print(f"minidiff: warning: {_one_line(message)}", file=sys.stderr)


def main(argv=None) -> int:
    """Parse ``argv`` (default sys.argv[1:]), run the command, return the exit code.

    Every failure goes through this one handler: one line on stderr and the exit code the module
    docstring lists. ``--debug`` anywhere in ``argv`` (or ``MINIDIFF_DEBUG=1``) prints the
    traceback too. SIGTERM is handled as Ctrl-C; warnings print as one line each."""
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    debug = "--debug" in argv or os.environ.get("MINIDIFF_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    with warnings.catch_warnings(), interrupt_on_sigterm():
        warnings.showwarning = _print_warning
        try:
            if argv[:1] == ["bench"]:
                return run_bench(argv[1:])
            return _dispatch(build_parser(argv[0] if argv else None).parse_args(argv))
        except (Exception, KeyboardInterrupt) as exc:
            code, line = failure(exc)
            if debug:
                traceback.print_exc()
            print(line, file=sys.stderr)
            return code
