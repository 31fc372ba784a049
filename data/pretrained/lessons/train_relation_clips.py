"""Train the two mini-CLIPs lesson 14 loads in --quick: the same small model, data, steps and seed,
without and with hard negatives (clip16_bag.npz, clip16_hard.npz; EMA weights in float16).

    OPENBLAS_NUM_THREADS=2 python data/pretrained/lessons/train_relation_clips.py [RUN_DIR] [--steps N]

It is the clip job of ``python -m minidiff train clip`` (minidiff/train/jobs.py run_clip) with the
ClipJob.quick() preset changed in the fields below, the model being lesson 14's LESSON_CLIP (16x16
scenes, image tower pooled over a 2x2 grid) and the shipped tokenizer.
"""
import argparse
import dataclasses
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
import minidiff  # noqa: E402,F401
import numpy as np  # noqa: E402

from minidiff import train, zoo  # noqa: E402
from minidiff.checkpoint import save_checkpoint  # noqa: E402
from minidiff.models.clip import CLIPConfig  # noqa: E402

MODEL = dataclasses.replace(CLIPConfig.quick(), image_size=16, channels=(16, 32, 32), pool_grid=2)
SETTINGS = dict(steps=3000, batch_size=64, lr=1e-3, two_object_fraction=0.6, dataset_size=8000, seed=0)
NAMES = {False: "clip16_bag", True: "clip16_hard"}


def job(hard: bool, steps: int = SETTINGS["steps"]):
    cfg = train.make_config("clip", "quick", {**SETTINGS, "steps": steps})
    return dataclasses.replace(cfg, model=MODEL, hard_negatives=hard, log_every=100,
                               tokenizer=str(zoo.PRETRAINED_DIR / zoo.FILES["tokenizer"]))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="runs/relation_clips")
    parser.add_argument("--steps", type=int, default=SETTINGS["steps"])
    parser.add_argument("--only", choices=("bag", "hard"))
    a = parser.parse_args()
    for hard in (False, True):
        if a.only and a.only != ("hard" if hard else "bag"):
            continue
        began = time.perf_counter()
        run_dir = pathlib.Path(a.out) / NAMES[hard]
        result = train.run_clip(job(hard, a.steps), out=run_dir, resume=True, progress=False)
        model, ckpt = zoo.load_trained(run_dir / zoo.FILES["clip"], expect="clip")
        dest = pathlib.Path(__file__).resolve().parent / f"{NAMES[hard]}.npz"
        save_checkpoint(dest, model=model, config=ckpt.config, step=ckpt.step,
                        extra={"complete": np.asarray(1)}, dtype=np.float16, compress=True)
        print(f"{dest.name}: {ckpt.step} steps in {time.perf_counter() - began:.0f} s, "
              f"{dest.stat().st_size / 1e6:.2f} MB", flush=True)
