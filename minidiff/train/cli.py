"""``python -m minidiff train JOB [options]``: the arguments, and the command around every job
(``train all``, the whole recipe, lives in ``recipe.py``)."""
from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np

from .. import backend, zoo
from .config import JOBS, OVERRIDES, make_config
from .runners import RUNNERS
from .loop import LOCK_FILE, output_lock
from .recipe import default_parallel, plan, run_all, stage_configs, stages_for  # noqa: F401 (train all)

OUTPUT_DIR = zoo.REPO_ROOT / "outputs" / "train"

ALL_STAGES = stages_for("shapes")       # the shipped recipe's stages, in order


def add_arguments(parser):
    parser.add_argument("job", choices=JOBS + ("all",), help="what to train")
    parser.add_argument("--preset", choices=("quick", "full"), default="quick",
                        help="quick: minutes on a CPU (default); full: the shipped models, on a GPU")
    parser.add_argument("--out", default=None,
                        help="output folder (default outputs/train)")
    parser.add_argument("--resume", action="store_true", help="continue the checkpoint in --out")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="save a checkpoint and stop after this many minutes (continue with --resume)")
    parser.add_argument("--stop-at", type=int, default=None, help="save a checkpoint and stop at this step")
    parser.add_argument("--plan", action="store_true",
                        help="all: print the stages (work, order, files) and train nothing")
    parser.add_argument("--parallel", type=int, default=None,
                        help="all: stages trained side by side, each in a process of its own (default 3 on a "
                             "GPU, 1 on a CPU)")
    for flag, kind, what in (("--steps", int, "training steps"), ("--batch-size", int, "batch size"),
                             ("--lr", float, "peak learning rate"), ("--seed", int, "seed of data, init and noise"),
                             ("--dataset-size", int, "images rendered once and kept on the device"),
                             ("--log-every", int, "steps between loss read-outs"),
                             ("--checkpoint-every", int, "steps between checkpoints"),
                             ("--sample-every", int, "steps between sample grids")):
        parser.add_argument(flag, type=kind, help=f"{what} (default: the preset's)")
    parser.add_argument("--data", help="the training images of pixel, vae, latent, clip, text2image, "
                                       "digit_classifier and all: shapes (default), digits, folder:DIR or idx:DIR")
    parser.add_argument("--vae", help="latent, text2image, vae_decoder: the VAE checkpoint (default data/pretrained/vae.npz)")
    parser.add_argument("--text-encoder", help="text2image: text_encoder.npz or clip.npz")
    parser.add_argument("--tokenizer", help="clip (optional: else one is trained), text2image: tokenizer.json")
    parser.add_argument("--model", help="a named model config of the job (e.g. vae: f4_32, f8_64; pixel: quick16, pixel32)")
    parser.add_argument("--init", help="text2image: start from the weights of a finished unet.npz (fine-tune); "
                                       "vae64: from a finished 64x64 vae.npz")
    parser.add_argument("--two-object-fraction", type=float,
                        help="text2image: share of two-object scenes in the training data (default 0.3)")
    parser.add_argument("--schedule", choices=("linear", "cosine", "scaled_linear"),
                        help="pixel, latent, text2image: the noise schedule (default: the preset's)")
    parser.add_argument("--prediction-type", choices=("epsilon", "sample", "v_prediction"),
                        help="pixel, latent, text2image: what the U-Net predicts (default epsilon)")
    parser.add_argument("--min-snr-gamma", type=float,
                        help="pixel, latent, text2image: min-SNR loss weighting with this gamma (e.g. 5; default off)")
    parser.add_argument("--perceptual-weight", type=float,
                        help="vae: weight of a perceptual term in the frozen attribute classifier's features (default 0: off)")
    parser.add_argument("--adversarial-weight", type=float,
                        help="vae: weight of a patch-GAN term, its discriminator trained alongside (default 0: off)")
    parser.add_argument("--adversarial-start", type=int,
                        help="vae: the step at which the GAN term joins (default 0)")
    parser.add_argument("--teacher", help="vae64: the 32x32 VAE whose latents it learns (default data/pretrained/vae32.npz)")
    parser.add_argument("--unet", help="lora: the finished text2image unet.npz to adapt (default data/pretrained/unet.npz)")
    parser.add_argument("--rank", type=int, help="lora: the adapters' rank r (default 4)")
    parser.add_argument("--alpha", type=float, help="lora: the adapters' alpha; they add (alpha / r) B A (default 4)")
    parser.add_argument("--extra-fraction", type=float,
                        help="lora: share of training scenes whose object is pink (default 0.5)")
    parser.add_argument("--init-word", help="textual_inversion: the word whose embedding the new token starts from (default red)")
    parser.add_argument("--half", action="store_true",
                        help="store the final weights as float16 (half the file size)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    backend.add_device_argument(parser)
    return parser


def main(args) -> int:
    """Run ``python -m minidiff train`` from parsed arguments; returns the exit code."""
    backend.set_device(args.device)
    if args.max_minutes is not None and not args.max_minutes > 0:
        raise ValueError(f"--max-minutes must be > 0, got {args.max_minutes}")
    if args.stop_at is not None and args.stop_at < 1:
        raise ValueError(f"--stop-at must be >= 1, got {args.stop_at}")
    if args.stop_at is not None and args.job == "all":
        raise ValueError(f"--stop-at {args.stop_at} names a step of one job; `train all` runs several "
                         "(stop it with --max-minutes)")
    if args.parallel is not None and args.job != "all":
        raise ValueError(f"--parallel {args.parallel}: only `train all` has stages to run side by side")
    if args.parallel is not None and args.parallel < 1:
        raise ValueError(f"--parallel must be an integer >= 1, got {args.parallel}")
    if args.plan and args.job != "all":
        raise ValueError(f"--plan: only `train all` has a plan of stages (`train {args.job} --help` lists its settings)")
    deadline = time.perf_counter() + 60 * args.max_minutes if args.max_minutes else None
    out = Path(args.out) if args.out else OUTPUT_DIR
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    overrides = {name: getattr(args, name) for name in OVERRIDES}
    ship_dtype = np.float16 if args.half else None
    # the settings are checked before --out is made: a bad option leaves no new folder behind
    if args.job == "all" and args.plan:
        plan(out, args.preset, overrides, args.parallel if args.parallel is not None else default_parallel())
        return 0
    if args.job == "all":
        stage_configs(out, args.preset, overrides)
    else:
        cfg = make_config(args.job, args.preset, overrides)
    with _training_into(out):
        print(f"train {args.job}: preset {args.preset}, device {backend.device()}, output {out}")
        if args.job == "all":
            parallel = args.parallel if args.parallel is not None else default_parallel()
            run_all(out, args.preset, overrides, deadline, not args.no_progress, ship_dtype, parallel)
        else:
            RUNNERS[args.job](cfg, out=out, resume=args.resume, deadline=deadline, stop_at=args.stop_at,
                              progress=not args.no_progress, ship_dtype=ship_dtype)
    return 0


@contextlib.contextmanager
def _training_into(out):
    """``out`` locked for the whole command (``loop.output_lock``: a second run on the same folder
    refuses at once, before it loads any data; ``fit`` inside takes the same lock again, a no-op).
    A folder this command made is removed again when the run fails before writing anything into
    it, while the lock is still held, so no other run can be using it."""
    made = not out.exists()
    with output_lock(out):
        try:
            yield
        except BaseException:
            if made and [p.name for p in out.iterdir()] == [LOCK_FILE]:
                with contextlib.suppress(OSError):     # another run may have come in: keep the folder
                    (out / LOCK_FILE).unlink()
                    out.rmdir()
            raise
