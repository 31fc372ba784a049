"""Train the lesson checkpoint pixel16_v.npz: the 16x16 pixel U-Net that lessons 05, 06 and 08 load
in --quick mode (cosine schedule, v-prediction, min-SNR-5 weighting; EMA weights in float16).

    OPENBLAS_NUM_THREADS=1 python data/pretrained/lessons/train_pixel16.py [OUT_DIR] [--steps N] [--batch-size B] [--ema-decay D] [--minutes M]

It is the pixel job of ``python -m minidiff train pixel`` (minidiff/train/jobs.py run_pixel) with
the PixelJob.quick() preset changed in the fields below; the command line has no --schedule,
--prediction-type or --min-snr-gamma yet, so this script sets them. The result is OUT_DIR/pixel.npz; ship.py beside this file writes
data/pretrained/lessons/pixel16_v.npz from it (README.md beside this file has both commands).
"""
import argparse
import dataclasses
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[3]))
import minidiff  # noqa: E402,F401
import numpy as np  # noqa: E402

from minidiff import train  # noqa: E402

SETTINGS = dict(schedule="cosine", prediction_type="v_prediction", min_snr_gamma=5.0,
                steps=8000, batch_size=64, lr=2e-3, warmup_steps=100, ema_decay=0.999,
                dataset_size=4000, seed=0)

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="runs/pixel16_v")
    parser.add_argument("--steps", type=int, default=SETTINGS["steps"])
    parser.add_argument("--batch-size", type=int, default=SETTINGS["batch_size"])
    parser.add_argument("--ema-decay", type=float, default=SETTINGS["ema_decay"])
    parser.add_argument("--minutes", type=float, default=None, help="stop (and save) after this many minutes")
    parser.add_argument("--resume", action="store_true")
    a = parser.parse_args()
    cfg = dataclasses.replace(train.PixelJob.quick(), **{**SETTINGS, "steps": a.steps, "batch_size": a.batch_size,
                                                                    "ema_decay": a.ema_decay})
    deadline = None if a.minutes is None else time.perf_counter() + 60 * a.minutes
    start = time.perf_counter()
    result = train.run_pixel(cfg, out=a.out, resume=a.resume, deadline=deadline, progress=False,
                             ship_dtype=np.float16)
    print(f"wall {time.perf_counter() - start:.0f} s, CPU {time.process_time():.0f} s")
