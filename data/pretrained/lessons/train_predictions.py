"""Train the four small U-Nets that lesson 06 compares in "what the network predicts": the same
network, data, seed and steps, trained to predict eps, x_0 or v, and v with min-SNR-5 weighting.

    OPENBLAS_NUM_THREADS=1 python data/pretrained/lessons/train_predictions.py [OUT_DIR] [--steps 500]

Each is the pixel job of ``python -m minidiff train pixel`` (minidiff/train/jobs.py run_pixel) with
PixelJob.quick() changed in the fields below (the command line has no --schedule, --prediction-type
or --min-snr-gamma yet). Results: OUT_DIR/NAME/pixel.npz, copied to data/pretrained/lessons/pred16_NAME.npz.
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
from minidiff.models.unet import UNetConfig  # noqa: E402

VARIANTS = {"eps": dict(prediction_type="epsilon"),
            "x0": dict(prediction_type="sample"),
            "v": dict(prediction_type="v_prediction"),
            "v_minsnr": dict(prediction_type="v_prediction", min_snr_gamma=5.0)}


def job(name, steps=500):
    """The PixelJob of one variant: a 16-channel quick16 U-Net, cosine schedule, 500 steps of batch 32."""
    model = dataclasses.replace(UNetConfig.quick16(), base_channels=16, norm_groups=8)
    return dataclasses.replace(train.PixelJob.quick(), model=model, schedule="cosine", steps=steps,
                               batch_size=32, lr=2e-3, warmup_steps=steps // 10, ema_decay=0.995,
                               dataset_size=4000, seed=0, **VARIANTS[name])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="runs/pred16")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--only", nargs="*", default=list(VARIANTS))
    a = parser.parse_args()
    for name in a.only:
        start, cpu = time.perf_counter(), time.process_time()
        train.run_pixel(job(name, a.steps), out=pathlib.Path(a.out) / name, progress=False, ship_dtype=np.float16)
        print(f"{name}: wall {time.perf_counter() - start:.0f} s, CPU {time.process_time() - cpu:.0f} s", flush=True)
