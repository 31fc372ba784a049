"""Write a lesson checkpoint to ship: the EMA weights of a pixel-job checkpoint (finished, or stopped
at its --minutes deadline) in float16, without optimizer state.

    python data/pretrained/lessons/ship.py RUN_DIR/pixel.npz data/pretrained/lessons/NAME.npz
"""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[3]))
import minidiff  # noqa: E402,F401
import numpy as np  # noqa: E402

from minidiff import zoo  # noqa: E402
from minidiff.checkpoint import save_checkpoint  # noqa: E402


def ship(source, dest):
    model, ckpt = zoo.load_trained(source, expect="pixel")          # the EMA weights when it has them
    extra = {"complete": np.asarray(1), "steps_run": np.asarray(ckpt.step)}
    path = save_checkpoint(dest, model=model, config=ckpt.config, step=ckpt.step, extra=extra, dtype=np.float16,
                           compress=True)
    print(f"{dest}: step {ckpt.step} of {ckpt.config['train']['steps']}, {path.stat().st_size / 1e6:.2f} MB")
    return path


if __name__ == "__main__":
    ship(sys.argv[1], sys.argv[2])
