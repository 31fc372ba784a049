r"""Lesson 13: real images -- the shipped handwritten digits, and training on a folder of your own.

Everything before this lesson was rendered shapes. Two kinds of real data now:

* 5,000 MNIST digits ship in data/digits/mnist_5k.npz (500 per class, 28 x 28 uint8; CC BY-SA 3.0,
  data/README.md). The last 50 of each class are held out: no training run reads them, so a
  judge of generated digits can compare against images the model never saw.
* a folder of your own PNG / JPEG files, with a captions.txt beside them (or captions in the file
  names), for every training job: ``python -m minidiff train all --data folder:DIR``.

Images become float32 in [-1, 1], x = pixel / 127.5 - 1. A 28 x 28 digit goes to S x S by padding
with background (S >= 28) or by area averaging (S < 28): output pixel (i, j) is the mean of the
input area it covers, y = A x B^T with A's rows summing to 1, so the mean ink is kept exactly.
Grey is repeated into three channels for the VAE and U-Net, which take RGB.

Captions are measured from the ink, not guessed: stroke width w = 2 * area / perimeter (a stroke
of width w and length L has area w L and perimeter about 2 L) says "thin" or "thick"; the shear
-cov(x, y) / var(y) of the ink (rows grow downwards) says "slanted" or "upright". A caption states
some labels (the digit always); caption j fits image i when every stated label equals image i's,
which is how mini-CLIP decides its positives (datasets.captions.label_matches).

Cells: (1) the digits and the held-out split; (2) a grid per digit; (3) sizes: padding and area
averaging; (4) the ink measures and the captions; (5) your own folder: a captions.txt, the
one-line errors; (6) a small pixel-space model trained on that folder, and what comes out;
then exercises.

Settings: --smoke (seconds), --quick (at most 3 minutes on a 2-core CPU), no flag (longer training).

Read beside: minidiff/datasets/digits.py, minidiff/datasets/folder.py, minidiff/train/data.py
(load_data: the one reader of --data), minidiff/train/jobs.py (run_pixel, run_clip, run_text2image).
"""
# %% 0. setup
import sys, pathlib  # noqa: E401
_lessons = pathlib.Path(globals().get("__file__", "lessons/_")).resolve().parent
sys.path.insert(0, str(next((p for p in (_lessons.parent, pathlib.Path.cwd(), pathlib.Path.cwd().parent)
                             if (p / "minidiff" / "__init__.py").is_file()), _lessons.parent)))
import minidiff  # noqa: F401,E402  (before NumPy: it sets how OpenBLAS's threads wait, minidiff/__init__.py)

import dataclasses
import shutil
import time

import numpy as np
from PIL import Image

from minidiff.datasets import captions, digits, folder
from minidiff.train.config import make_config
from minidiff.train.data import load_data
from minidiff.train.jobs import RUNNERS
from minidiff.utils import image_grid, output_dir, parse_lesson_args

NAME = "13_digits_and_your_own_images"


@dataclasses.dataclass
class Settings:
    steps: int                    # training steps of the folder model
    batch_size: int
    per_class: int                # images per digit written into the folder


FULL = Settings(steps=3000, batch_size=32, per_class=40)
QUICK = Settings(steps=500, batch_size=16, per_class=12)
SMOKE = Settings(steps=4, batch_size=4, per_class=4)

args = parse_lesson_args("Lesson 13: handwritten digits and your own images.")
settings = SMOKE if args.smoke else QUICK if args.quick else FULL
out = output_dir(NAME, args.out)
lesson_start = time.perf_counter()

# %% 1. the digits and the held-out split
train_pixels, train_labels = digits.load_uint8("train")
heldout_pixels, heldout_labels = digits.load_uint8("heldout")
print(f"train: {len(train_labels)} digits {np.bincount(train_labels).tolist()} per class")
print(f"held out: {len(heldout_labels)} digits {np.bincount(heldout_labels).tolist()} per class")
seen = {row.tobytes() for row in train_pixels}
shared = sum(row.tobytes() in seen for row in heldout_pixels)
print(f"held-out images also in train: {shared} (expected 0)")
assert len(train_labels) == 4500 and len(heldout_labels) == 500 and shared == 0

# %% 2. a grid per digit: one row per class, ten training examples each
rows = np.concatenate([train_pixels[train_labels == d][:10] for d in range(10)])
grid = image_grid(digits.to_images(rows, size=28), nrow=10, scale=3)
grid.save(out / "digits_grid.png")
print(f"saved {out / 'digits_grid.png'}: row d holds ten handwritten d's")

# %% 3. sizes: 32 x 32 pads with background, 16 x 16 averages areas (the mean ink is kept)
x32, _ = digits.load("heldout", size=32, channels=3)
x16, _ = digits.load("heldout", size=16, channels=1)
x28 = digits.to_images(heldout_pixels, size=28)
ink_change = np.abs(x16.mean(axis=(1, 2, 3)) - x28.mean(axis=(1, 2, 3))).max()
print(f"32x32 RGB: {x32.shape}, the border is background: {bool(np.all(x32[:, :, :2] == -1))}")
print(f"16x16 grey: {x16.shape}, largest change of an image's mean brightness: {ink_change:.1e}")
assert x32.shape == (500, 3, 32, 32) and np.all(x32[:, :, :2] == -1)
assert ink_change < 1e-5
image_grid(x16[::50], nrow=10, scale=4).save(out / "digits_16.png")           # one of each digit at 16 x 16

# %% 4. the ink measures and the captions
measured = digits.measure(train_pixels)
print("digit  median stroke width  median shear")
for d in range(10):
    in_class = train_labels == d
    print(f"  {d}    {np.median(measured['width'][in_class]):5.2f} px            "
          f"{np.median(measured['shear'][in_class]):+.2f}")
texts, said, have = digits.captions_and_said(heldout_pixels, heldout_labels, seed=0)
for i in range(0, 500, 83):
    print(f"  a {heldout_labels[i]}: {texts[i]!r}")
fits = captions.label_matches(have, said)
other_digit = fits[heldout_labels[:, None] != heldout_labels[None, :]].mean()
print(f"every caption fits its own image: {bool(fits.diagonal().all())}; "
      f"share of (image, caption) pairs of different digits that fit: {other_digit:.3f} (expected 0)")
assert fits.diagonal().all() and other_digit == 0
thick = have[:, 1] == 1
width = digits.measure(heldout_pixels)["width"]
print(f"'thick' digits' mean stroke width {width[thick].mean():.2f} px vs the others' {width[~thick].mean():.2f} px")
assert width[thick].mean() > width[~thick].mean() + 0.5

# %% 5. your own folder: images of any size and mode, a captions.txt beside them
mine = out / "my_images"
shutil.rmtree(mine, ignore_errors=True)
mine.mkdir(parents=True)
lines = []
for d in (0, 1, 7):
    for k, pixels in enumerate(train_pixels[train_labels == d][:settings.per_class]):
        name = f"digit{d}_{k:02d}.png"
        big = Image.fromarray(255 - pixels).resize((40, 40))       # dark ink on white, 40 x 40: any size will do
        big.save(mine / name)
        lines.append(f"{name}\tthe digit {digits.NAMES[d]}")
(mine / "captions.txt").write_text("\n".join(lines) + "\n")
data = load_data(f"folder:{mine}", size=16, count=10 ** 6, seed=0, need_captions=True)
print(f"{mine.name}/: {len(data.captions)} images -> {data.images.shape}, captions such as {data.captions[0]!r}")
assert data.images.shape == (3 * settings.per_class, 3, 16, 16) and len(set(data.captions)) == 3
for broken, why in ((lambda: (mine / "captions.txt").write_text(lines[0] + "\nnot_here.png\tx\n"), "missing image"),
                    (lambda: (mine / "captions.txt").write_text(lines[0] + "\n"), "images left out")):
    broken()
    try:
        load_data(f"folder:{mine}", size=16, count=100, seed=0, need_captions=True)
        raise AssertionError(f"a caption file with {why} was accepted")
    except ValueError as error:
        print(f"{why}: {error}")
(mine / "captions.txt").write_text("\n".join(lines) + "\n")

# %% 6. a small pixel-space model trained on that folder, and what comes out
cfg = make_config("pixel", "quick", {"data": f"folder:{mine}", "steps": settings.steps,
                                     "batch_size": settings.batch_size, "log_every": max(1, settings.steps // 10),
                                     "checkpoint_every": 10 ** 6, "sample_every": 10 ** 6})
# a short run: the EMA (the weights that sample) must follow within tens of steps, not thousands
cfg = dataclasses.replace(cfg, num_samples=8, sample_steps=10 if args.smoke else 25, ema_decay=0.98)
result = RUNNERS["pixel"](cfg, out=None, progress=False)
first, last = result.history[0][1], result.history[-1][1]
print(f"trained {result.step} steps in {result.seconds:.0f} s: loss {first:.3f} -> {last:.3f}")
if not args.smoke:
    assert last < first, "the loss did not fall"
from minidiff import backend  # noqa: E402
from minidiff.diffusion import samplers  # noqa: E402
from minidiff.diffusion.schedule import NoiseSchedule  # noqa: E402
schedule = NoiseSchedule.make(cfg.schedule, cfg.num_train_timesteps)
samples = samplers.sample(lambda x_t, t: result.model.forward(x_t, t), schedule, (8, 3, 16, 16), sampler="ddim",
                          steps=cfg.sample_steps, rng=backend.rng(args.seed), progress=False)
samples = np.clip(backend.to_numpy(samples), -1, 1)
image_grid(np.concatenate([data.images[::max(1, len(data.images) // 8)][:8], samples]), nrow=8, scale=4).save(
    out / "folder_samples.png")
print(f"saved {out / 'folder_samples.png'}: top row your images, bottom row the model's samples "
      f"(mean brightness {samples.mean():+.2f}; the folder's {data.images.mean():+.2f}, a white page with dark ink)")
# What comes out after a few hundred CPU steps (measured, 800 steps): a few samples are dark strokes on
# white, most are still coloured noise -- the loss has fallen far faster than the samples improve.
# A model of your own needs the thousands of steps of the full mode (or a GPU); judge it by its samples.
print(f"lesson 13 took {time.perf_counter() - lesson_start:.0f} s")

# %% 7. exercises
# 1. Train the text-to-image chain on the digits (a GPU or an hour of CPU):
#      python -m minidiff train all --data digits --out outputs/digits
#      python -m minidiff generate "the digit seven" --checkpoints outputs/digits --out seven.png
#    Which captions does it obey first: the digit, or "thick"?
# 2. Put ten photos of your own in a folder with a captions.txt and run
#      python -m minidiff train vae --data folder:DIR --steps 200
#    How does the reconstruction L1 compare with the shapes'? Why would photos be harder at 32 x 32?
# 3. digits.measure gives stroke width 2 area / perimeter. For a one-pixel line of length L the
#    perimeter is 2 L + 2: what width does it report for L = 20, and why is it below 1?
# 4. Write a caption rule for slant to the left (shear < -0.1) and check with label_matches that
#    no caption of a left-leaning digit fits a right-leaning one.
