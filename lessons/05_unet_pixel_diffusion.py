r"""Lesson 05: a U-Net learns to denoise shapes images, in pixel space.

Lesson 03 trained an MLP on 2-D points. Images need a network that sees space: the U-Net of
minidiff/models/unet.py. It takes a noisy image x_t and its timestep t and predicts the noise
that was mixed in,

    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps,        eps_theta(x_t, t) ~ eps,

and it is trained with exactly the objective of lessons 02 and 03, now averaged over pixels:

    L_simple = E_{x_0, t ~ U{0..T-1}, eps ~ N(0, I)} (1 / CHW) || eps - eps_theta(x_t, t) ||^2.

Why this shape of network?
  * Convolutions share weights across positions: a circle is a circle wherever it is.
  * The encoder halves the resolution level by level, so deep features see the whole image;
    the decoder climbs back up, and skip connections hand it the encoder's full-resolution
    features, so fine detail (a shape's edge) need not squeeze through the bottleneck.
  * t enters every ResBlock: sinusoid(t) -> MLP -> temb, added to each block's feature map as a
    per-channel bias, h <- h + W temb. The same weights must denoise at every noise level, and
    temb tells them which level this is (remove a little fuzz, or invent a whole layout).
  * Self-attention at the lowest resolution lets distant pixels agree (one object, one colour).
  * The last conv starts at zero, so an untrained U-Net predicts eps = 0 everywhere.

A prediction of eps is also a prediction of the clean image, by inverting the forward process:

    x0_hat = (x_t - sqrt(1 - abar_t) eps_theta(x_t, t)) / sqrt(abar_t).

Sampling starts from x_T ~ N(0, I) and walks down a list of timesteps. Here it is DDPM's ancestral
sampler (lesson 03; lesson 06 compares the others): at each step, draw x_{t'} from the posterior
q(x_{t'} | x_t, x_0 = x0_hat) of lesson 02, a Gaussian whose mean mixes x0_hat and x_t, plus fresh
noise. The denoising strip shows both halves of that story: x_t shedding noise, and x0_hat
sharpening from a grey blur (the average image) into one particular scene. (At t = T-1 itself
x0_hat is clipped noise: see the next paragraph.)

Two choices that matter for small images in pixel space:
  * The cosine schedule (lesson 01), not the linear one. The linear schedule keeps sqrt(abar_t) =
    0.16 of the image at t = 600 and 0.04 at t = 800, the cosine one 0.58 and 0.31: with linear, the
    last third of the timesteps is nearly pure noise for a small image and teaches little (Nichol
    & Dhariwal 2021). In short CPU runs the cosine schedule gave clearly better samples here.
  * x0_hat is clipped to [-1, 1] (the data's range) at every sampling step, as the original
    DDPM code and diffusers' pixel-space schedulers do. Near t = T, sqrt(abar_t) is tiny and
    x0_hat = (x_t - ...) / sqrt(abar_t) magnifies the network's errors; a young network's samples
    then end as saturated noise. (Latent diffusion, lesson 08, does not clip: latents are unbounded.)

How good are the samples? The Frechet distance (FD) compares the distribution of classifier
features of real and generated images: fit a Gaussian to each, then

    FD = |mu_r - mu_g|^2 + tr(S_r + S_g - 2 (S_r^1/2 S_g S_r^1/2)^1/2)

(FID, with a small shapes-attribute classifier in place of Inception; minidiff/evaluate.py). Two
independent sets of real images give the floor that finite samples allow; the untrained U-Net
gives the ceiling we start from.

A few minutes of CPU train the loss curve down but give colour blobs, not shapes. So --quick
trains your own U-Net for 200 steps (the loop below, in plain sight; its loss curve and samples
are shown), then judges data/pretrained/lessons/pixel16_v.npz: the same U-Net trained for 8000
steps of 64 images on a GPU by minidiff's own pixel job (data/pretrained/lessons/README.md has the command,
steps and time). That one predicts v instead of eps, with min-SNR-5 weighting; lesson 06 compares these choices.
--full trains everything here from scratch and judges your model.

Read beside: minidiff/models/unet.py (the levels, the skips, backward), minidiff/models/blocks.py
(ResBlock, SpatialTransformer), minidiff/diffusion/loss.py (training_targets, diffusion_loss),
minidiff/optim.py (AdamW, EMA, clip_grad_norm, warmup_cosine), minidiff/diffusion/samplers.py
(sample), minidiff/evaluate.py (classifier features, Frechet distance), minidiff/train/loop.py
(fit: this loop as the training command's) and minidiff/train/jobs.py (run_pixel:
python -m minidiff train pixel).

Run: python lessons/05_unet_pixel_diffusion.py [--quick] [--smoke] [--full] [--device cpu|gpu]
--quick: 16x16 images, UNetConfig.quick16, 200 training steps, then the lesson checkpoint.
--full (a GPU): 32x32 images, UNetConfig.pixel32, 10,000 steps, judged as trained.
Exercises at the end: MINIDIFF_EXERCISE=1|2|3 python lessons/05_unet_pixel_diffusion.py --quick
"""
# %% setup: `import minidiff` from this clone, as a script or in a notebook kernel (which has no __file__)
import sys, pathlib  # noqa: E401
_lessons = pathlib.Path(globals().get("__file__", "lessons/_")).resolve().parent
sys.path.insert(0, str(next((p for p in (_lessons.parent, pathlib.Path.cwd(), pathlib.Path.cwd().parent)
                             if (p / "minidiff" / "__init__.py").is_file()), _lessons.parent)))
import minidiff  # noqa: F401,E402  (before NumPy: it sets how OpenBLAS's threads wait, minidiff/__init__.py)

# %% settings
import dataclasses
import os
import time

import numpy as np

from minidiff import backend, evaluate, train, zoo
from minidiff.checkpoint import load_checkpoint, load_into, save_checkpoint
from minidiff.datasets import shapes
from minidiff.diffusion import samplers
from minidiff.diffusion.loss import diffusion_loss, training_targets
from minidiff.diffusion.schedule import NoiseSchedule
from minidiff.models.unet import UNet, UNetConfig
from minidiff.nn.module import no_grad
from minidiff.optim import EMA, AdamW, clip_grad_norm, warmup_cosine
from minidiff.utils import REPO_ROOT, image_grid, output_dir, parse_lesson_args, pyplot, save_figure


@dataclasses.dataclass
class Settings:
    model: UNetConfig
    train_steps: int
    batch_size: int
    lr: float
    warmup_steps: int
    ema_decay: float
    dataset_size: int             # training images, rendered once and kept on the device
    num_eval: int                 # images per set for the Frechet distances
    sample_steps: int = 50        # DDPM steps for the samples (trailing spacing: the first is t = T-1)
    classifier: evaluate.ClassifierConfig | None = None   # trained here only when none is shipped
    classifier_steps: int = 600
    classifier_dataset_size: int = 8000
    fd_ratio: float = 0.25        # judged FD - floor must be below this fraction of untrained FD - floor
    loss_ratio: float = 0.5       # final loss must be below this fraction of the first steps' loss
    pretrained: str | None = None  # judge this shipped lesson checkpoint (minutes of CPU train too little)

    @property
    def image_size(self):
        return self.model.image_size


FULL = Settings(UNetConfig.pixel32(), train_steps=10000, batch_size=128, lr=3e-4, warmup_steps=500,
                ema_decay=0.999, dataset_size=50000, num_eval=1024, sample_steps=250,
                classifier=evaluate.ClassifierConfig(image_size=32), classifier_steps=2000)
QUICK = Settings(UNetConfig.quick16(), train_steps=200, batch_size=32, lr=2e-3, warmup_steps=20,
                 ema_decay=0.98, dataset_size=4000, num_eval=64, loss_ratio=0.6,
                 classifier=evaluate.ClassifierConfig(image_size=16, channels=(16, 32, 64)),
                 pretrained="data/pretrained/lessons/pixel16_v.npz")
SMOKE = Settings(UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(),
                            num_heads=2, norm_groups=4, image_size=16),
                 train_steps=30, batch_size=8, lr=2e-3, warmup_steps=5, ema_decay=0.9, dataset_size=64,
                 num_eval=24, sample_steps=8, classifier=evaluate.ClassifierConfig.tiny(), classifier_steps=30,
                 classifier_dataset_size=256, fd_ratio=3.0, loss_ratio=1.0)

args = parse_lesson_args('Lesson 05: a U-Net learns to denoise shapes images, in pixel space.')
settings = SMOKE if args.smoke else QUICK if args.quick else FULL
mode = "smoke" if args.smoke else "quick" if args.quick else "full"
out = output_dir("05_unet_pixel_diffusion", args.out)
device = backend.device()
xp = backend.get_xp()
plt = pyplot()
S = settings.image_size
lesson_start = time.perf_counter()
print(f"device {device}; {S}x{S} shapes images; {settings.train_steps} training steps of batch {settings.batch_size}")


def show(ax, images, nrow, title):
    """Draw images in [-1, 1] (N, 3, H, W) as one grid on a matplotlib axis."""
    ax.imshow(image_grid(np.clip(backend.to_numpy(images), -1, 1), nrow=nrow), interpolation="nearest")
    ax.set_title(title)
    ax.axis("off")


# %% the data: shapes scenes as float32 (N, 3, S, S) in [-1, 1]
data = shapes.sample(settings.dataset_size, seed=(args.seed, 1), size=S)["images"]
print(f"{len(data)} training images, pixel range [{data.min():.2f}, {data.max():.2f}], "
      f"median {np.median(data):.2f} (the grey background, 0.2 in [0, 1] -> -0.6 in [-1, 1])")
assert data.min() >= -1 and data.max() <= 1
data = xp.asarray(data)                                                # on the device for the whole run
SCHEDULE = "cosine"                                                    # see the docstring: not "linear" at 16x16
schedule = NoiseSchedule.make(SCHEDULE, num_steps=1000)

# %% the U-Net
model = UNet(settings.model, seed=args.seed).to(device)
untrained = UNet(settings.model, seed=args.seed).to(device).eval()     # a copy at initialisation, for the FD
print(f"U-Net {settings.model.channel_mults} x {settings.model.base_channels} channels, "
      f"{settings.model.num_res_blocks} ResBlock(s) per level, attention at levels "
      f"{settings.model.attention_levels}: {model.num_parameters():,} parameters")
with no_grad():
    probe = untrained(xp.zeros((2, 3, S, S), np.float32), xp.asarray([0, 999]))
print(f"untrained output max |eps_theta| = {float(abs(probe).max()):.1f} (conv_out starts at zero)")
assert float(abs(probe).max()) == 0.0

# %% train eps_theta with L_simple: the loop of minidiff/train/, in plain sight
optimizer = AdamW(model, lr=settings.lr, weight_decay=0.0)
ema = EMA(model, decay=settings.ema_decay)           # samples come from the averaged weights
rng = backend.rng(args.seed)
losses = []                                          # device scalars: no host sync inside the loop
start = time.perf_counter()
model.train()
for step in range(settings.train_steps):
    x0 = data[rng.integers(0, data.shape[0], size=settings.batch_size)]        # (B, 3, S, S)
    x_t, t, noise, _ = training_targets(schedule, x0, rng)                      # t ~ U{0..T-1}, eps ~ N(0, I)
    model.zero_grad()
    eps_hat = model(x_t, t)                                                     # eps_theta(x_t, t)
    loss, d_eps_hat = diffusion_loss(eps_hat, x0, noise, t, schedule)          # mean |eps - eps_hat|^2
    model.backward(d_eps_hat)                                                   # fills every p.grad
    clip_grad_norm(model, max_norm=1.0)
    optimizer.step(lr=warmup_cosine(step, settings.lr, settings.warmup_steps, settings.train_steps,
                                    min_lr=settings.lr / 20))
    ema.update()
    losses.append(loss)
    if (step + 1) % max(1, settings.train_steps // 10) == 0:
        recent = float(xp.stack(losses[-50:]).mean())
        print(f"  step {step + 1:5d}/{settings.train_steps}: loss {recent:.4f} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
backend.synchronize()
train_seconds = time.perf_counter() - start
losses = backend.to_numpy(xp.stack(losses)).astype(np.float64)
window = max(1, len(losses) // 10)
first, last = losses[:window].mean(), losses[-window:].mean()
print(f"trained {settings.train_steps} steps in {train_seconds:.1f} s "
      f"({1e3 * train_seconds / settings.train_steps:.0f} ms/step)")
print(f"L_simple: {first:.4f} over the first {window} steps -> {last:.4f} over the last {window} "
      "(1.0 = predicting eps = 0, as the untrained U-Net does)")
assert last < settings.loss_ratio * first or (args.smoke and last < first), "the loss did not go down"

fig, ax = plt.subplots(figsize=(7, 4))
ax.plot(losses, lw=0.5, alpha=0.4, label="per step")
smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
ax.plot(np.arange(window - 1, len(losses)), smooth, lw=2, label=f"mean of {window} steps")
ax.set(title=f"Training loss L_simple (U-Net, {S}x{S} shapes)", xlabel="training step",
       ylabel="mean |eps - eps_theta(x_t, t)|^2", yscale="log")
ax.legend()
save_figure(fig, out / "loss.png")
model.eval()
ema.copy_to(model)                                   # from here on the model holds the EMA weights

# %% the model we judge: in --quick the shipped lesson checkpoint, else the one you just trained
yours = model
if settings.pretrained is not None:
    judged, ckpt = zoo.load_trained(REPO_ROOT / settings.pretrained, expect="pixel")
    diffusion = zoo.diffusion_settings(ckpt)
    recipe = ckpt.config["train"]
    judged_name = f"lesson checkpoint ({ckpt.step} steps)"
    print(f"judged model: {settings.pretrained}, the same U-Net trained by minidiff's pixel job for {ckpt.step} "
          f"steps of batch {recipe['batch_size']} (data/pretrained/lessons/README.md); it predicts "
          f"{diffusion['prediction_type']} (min-SNR gamma {recipe['min_snr_gamma']}), choices lesson 06 compares. "
          f"Your {settings.train_steps} steps show the loss falling; they are too few for clean images")
else:
    judged, judged_name = model, f"your U-Net ({settings.train_steps} steps)"
    diffusion = {"schedule": SCHEDULE, "num_steps": schedule.num_steps, "prediction_type": "epsilon"}
judged_schedule = NoiseSchedule.make(diffusion["schedule"], diffusion["num_steps"])

# %% the judge: an attribute classifier whose features define the Frechet distance
shipped = evaluate.DEFAULT_CLASSIFIER
trained_here = out / "classifier.npz"
judge = None
if shipped.exists():
    judge = evaluate.load_classifier(shipped)
    print(f"classifier: the shipped one, {shipped}")
elif trained_here.exists():
    judge = evaluate.load_classifier(trained_here)
    if judge.config == settings.classifier:
        print(f"classifier: trained by an earlier run of this lesson, {trained_here}")
    else:
        judge = None                                 # another mode's classifier: train this mode's
if judge is None:
    print(f"classifier: none shipped ({shipped} is missing); training a small one for "
          f"{settings.classifier_steps} steps ...")
    judge = train.train_classifier(steps=settings.classifier_steps, config=settings.classifier, seed=args.seed,
                                      dataset_size=settings.classifier_dataset_size)
    save_checkpoint(trained_here, model=judge, config={"job": "classifier", "model": dataclasses.asdict(judge.config)})
scores = evaluate.classifier_accuracy(judge, n=256, seed=args.seed)
print("classifier held-out accuracy: " + ", ".join(f"{k} {v:.2f}" for k, v in scores.items()))
if not args.smoke:
    assert scores["colour"] > 0.8 and scores["shape"] > 0.6, "the classifier is too weak to judge samples"


def features(images):
    """Classifier features at its input size (16x16 images repeated 2x2 up to 32x32: evaluate.match_size)."""
    return evaluate.classifier_features(judge, evaluate.match_size(images, judge.config.image_size))


# %% samples and their Frechet distances
SAMPLER = "ddpm"


def draw(unet, prediction_type, sched, n, seed, return_intermediates=False):
    """n samples on the host (N, 3, S, S), in batches of 32 from x_T ~ N(0, I); x0_hat clipped each step."""
    batches = []
    for start in range(0, n, 32):
        with no_grad():
            batches.append(samplers.sample(lambda x, t: unet(x, t), sched, (min(32, n - start), 3, S, S),
                                           sampler=SAMPLER, steps=settings.sample_steps, spacing="trailing",
                                           clip_x0=True, rng=backend.rng(seed + start), prediction_type=prediction_type,
                                           return_intermediates=return_intermediates, progress=False))
    if return_intermediates:
        return batches[0]
    return np.concatenate([backend.to_numpy(x) for x in batches])


def untrained_output(x, t):
    """The untrained U-Net's output, eps_theta = 0 everywhere (its last conv starts at zero, checked above)."""
    return xp.zeros_like(x)


start = time.perf_counter()
samples = draw(judged, diffusion["prediction_type"], judged_schedule, settings.num_eval, seed=args.seed + 100)
sample_seconds = time.perf_counter() - start
sets = {"judged": samples, "untrained": draw(untrained_output, "epsilon", schedule, settings.num_eval, args.seed + 100)}
if yours is not judged:
    sets["yours"] = draw(yours, "epsilon", schedule, settings.num_eval, seed=args.seed + 100)
real = shapes.sample(settings.num_eval, seed=(args.seed, evaluate.HELDOUT_SEED), size=S)["images"]
real_again = shapes.sample(settings.num_eval, seed=(args.seed, evaluate.HELDOUT_SEED + 1), size=S)["images"]
real_features = features(real)
floor = evaluate.frechet_distance_from_features(real_features, features(real_again))
fd = {name: evaluate.frechet_distance_from_features(real_features, features(images)) for name, images in sets.items()}
labels = {"judged": judged_name, "yours": f"your U-Net ({settings.train_steps} steps)",
          "untrained": "untrained U-Net (eps_theta = 0)"}
print(f"sampling {settings.num_eval} images, {SAMPLER.upper()} with {settings.sample_steps} steps: "
      f"{sample_seconds:.1f} s")
print(f"Frechet distance to {settings.num_eval} held-out real images (classifier features, lower is better):")
print(f"  {'real vs real (the floor)':34s} {floor:10.2f}")
for name, value in fd.items():
    print(f"  {labels[name]:34s} {value:10.2f}")
# finite samples never reach FD = 0, so compare what lies above the real-vs-real floor
ratio = (fd["judged"] - floor) / (fd["untrained"] - floor)
if fd["judged"] < floor:
    print(f"  ({judged_name} scores below the floor: with {settings.num_eval} images per set the distance's noise is "
          "larger than the gap between its samples and real ones)")
print(f"FD above the floor, {judged_name} / untrained = {ratio:.3f} (must be < {settings.fd_ratio})")
assert np.isfinite(fd["judged"]) and ratio < settings.fd_ratio

# the samples live in the data's range: mostly the background grey, not washed out, not saturated
print(f"median pixel: samples {np.median(samples):.3f}, real {np.median(real):.3f} (the background); "
      f"pixels at +-1: samples {np.mean(np.abs(samples) >= 0.999):.2%}, real {np.mean(np.abs(real) >= 0.999):.2%}")
if not args.smoke:
    assert abs(np.median(samples) - np.median(real)) < 0.1, "the samples' background is off"
    assert np.mean(np.abs(samples) >= 0.999) < 0.05, "too many saturated pixels: the samples are noise"

nrow = 8
count = min(64, settings.num_eval)
panels = [("real", real)] + [(name, sets[name]) for name in ("judged", "yours", "untrained") if name in sets]
fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 5.6), layout="constrained")
for ax, (name, images) in zip(axes, panels):
    # the titles carry everything (two lines each): a suptitle here ran into them
    title = f"real {S}x{S} shapes images (held out)\na second real set's FD (the floor): {floor:.0f}" if name == "real" \
        else f"{labels[name]}\n{SAMPLER.upper()} {settings.sample_steps} steps, same noise: FD {fd[name]:.0f}"
    show(ax, images[:count], nrow, title)
save_figure(fig, out / "samples.png")
image_grid(samples[:count], nrow=nrow, scale=4).save(out / "samples_grid.png")

# %% the denoising strip: x_t and the U-Net's x0 prediction along one sampling trajectory
x_T = backend.rng(args.seed + 200).standard_normal((1, 3, S, S), dtype=np.float32)
final, xs, x0_preds = draw(judged, diffusion["prediction_type"], judged_schedule, 1, seed=args.seed + 200,
                           return_intermediates=True)
ts = samplers.sampler_timesteps(judged_schedule, settings.sample_steps, SAMPLER, spacing="trailing")
inputs = [x_T] + xs[:-1]                             # x_t fed to step i (xs[i] is what step i made)
columns = np.linspace(0, len(ts) - 1, min(8, len(ts))).round().astype(int)
# there is no "target" image: the closest training image shows what the sample resembles
train_images = backend.to_numpy(data)
nearest = int(np.argmin(((train_images - backend.to_numpy(final)) ** 2).reshape(len(train_images), -1).sum(axis=1)))
nearest_gap = float(np.abs(train_images[nearest] - backend.to_numpy(final)[0]).mean())
fig, axes = plt.subplots(2, len(columns) + 1, figsize=(1.9 * (len(columns) + 1), 4.8), layout="constrained")
for j, i in enumerate(columns):
    show(axes[0, j], inputs[i], 1, f"x_t, t = {ts[i]}")
    show(axes[1, j], x0_preds[i], 1, f"x0_hat, t = {ts[i]}")
show(axes[0, -1], final, 1, "x_0: the sample")
show(axes[1, -1], train_images[nearest:nearest + 1], 1, f"closest training\nimage (|diff| {nearest_gap:.2f})")
fig.suptitle(f"Denoising one sample ({judged_name}, {SAMPLER.upper()} {settings.sample_steps} steps). Top: x_t "
             "entering the step. Bottom: the clean-image guess x0_hat, clipped to [-1, 1]; right: the nearest of "
             f"the {len(train_images)} training images (there is no target: it shows what the sample resembles)", fontsize=9)
save_figure(fig, out / "denoising_strip.png")
print(f"at t = {ts[0]}, sqrt(abar_t) = {np.sqrt(judged_schedule.alphas_cumprod[ts[0]]):.1e}: the first x0_hat "
      "has almost nothing to go on (a dim pattern of the noise itself; for an eps network it would be "
      "that noise magnified 20,000 times and clipped); a few steps later it is a blurry guess")
print(f"closest training image to the sample: mean |difference| {nearest_gap:.3f} per pixel")
# the x0 prediction closes in on the final sample as t falls
gaps = [float(np.abs(backend.to_numpy(x0_preds[i] - final)).mean()) for i in columns]
print("mean |x0_hat - final x_0| at the strip's steps: " + " ".join(f"{g:.3f}" for g in gaps))
assert gaps[-1] < gaps[len(gaps) // 2] < gaps[0]

# %% save your model (EMA weights) and load it back
config = {"job": "pixel", "model": dataclasses.asdict(settings.model),
          "train": {"steps": settings.train_steps, "batch_size": settings.batch_size, "lr": settings.lr,
                    "ema_decay": settings.ema_decay, "seed": args.seed, "lesson": "05_unet_pixel_diffusion",
                    "mode": mode},
          "diffusion": {"schedule": SCHEDULE, "num_steps": schedule.num_steps, "prediction_type": "epsilon"}}
path = save_checkpoint(out / "unet.npz", model=yours, config=config, step=settings.train_steps,
                       extra={"complete": np.asarray(1), "loss": losses})
restored = UNet(UNetConfig(**load_checkpoint(path).config["model"]), seed=123).to(device).eval()
load_into(restored, path)
probe_x, probe_t = xp.asarray(real[:4]), xp.asarray([0, 300, 600, 999])
with no_grad():
    same = bool(xp.array_equal(restored(probe_x, probe_t), yours(probe_x, probe_t)))
print(f"checkpoint {path} ({path.stat().st_size / 1e6:.1f} MB): the reloaded U-Net predicts exactly the same eps: "
      f"{same}")
assert same
print(f"lesson 05 done in {time.perf_counter() - lesson_start:.0f} s (CPU {time.process_time():.0f} s)")

# %% Exercises
# 1. Invert the forward process. Fill in ``predict_x0`` below (x0_hat from x_t, eps_hat and abar_t)
#    without looking at schedule.py; MINIDIFF_EXERCISE=1 checks it at four timesteps.
# 2. Predict before you measure. With SCHEDULE = "linear", what are sqrt(abar_t) at t = 600 and
#    t = 800? Write your guesses in ``linear_guess``; MINIDIFF_EXERCISE=2 checks them (within 0.02)
#    and prints the cosine schedule's values beside them.
# 3. Why clip? MINIDIFF_EXERCISE=3 samples 32 images from your own U-Net with and without
#    clip_x0 and prints the share of saturated pixels of each. Predict which is larger, and why
#    the gap is largest for a young network (hint: the division by sqrt(abar_t) near t = T).
EXERCISE = os.environ.get("MINIDIFF_EXERCISE", "")
linear_guess = {600: None, 800: None}        # exercise 2: your guesses for sqrt(abar_t), linear schedule


def predict_x0(x_t, eps_hat, abar_t):
    """Exercise 1: the clean image implied by a noise prediction (abar_t a float)."""
    raise NotImplementedError("invert x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps for x_0")


if EXERCISE == "1":
    eps_hat = backend.rng(1).standard_normal(probe_x.shape, dtype=np.float32)
    for t in (0, 300, 600, 999):
        x_t = schedule.q_sample(probe_x, t, eps_hat)
        want = schedule.predict_x0(x_t, t, eps_hat)
        got = predict_x0(x_t, eps_hat, float(schedule.alphas_cumprod[t]))
        assert float(abs(got - want).max()) < 1e-3 * max(1.0, float(abs(want).max())), f"off at t = {t}"
    print("exercise 1: predict_x0 agrees with schedule.predict_x0 at t = 0, 300, 600, 999")
if EXERCISE == "2":
    linear, cosine = NoiseSchedule.make("linear", 1000), NoiseSchedule.make("cosine", 1000)
    for t, guess in linear_guess.items():
        value = float(np.sqrt(linear.alphas_cumprod[t]))
        assert guess is not None and abs(guess - value) < 0.02, f"t = {t}: sqrt(abar_t) is not {guess}"
        print(f"t = {t}: linear {value:.3f} (you said {guess}), cosine {np.sqrt(cosine.alphas_cumprod[t]):.3f}")
if EXERCISE == "3":
    for clip in (True, False):
        with no_grad():
            x = samplers.sample(lambda x, t: yours(x, t), schedule, (32, 3, S, S), sampler=SAMPLER,
                                steps=settings.sample_steps, spacing="trailing", clip_x0=clip, rng=backend.rng(5),
                                progress=False)
        print(f"clip_x0={clip}: {float(xp.mean(xp.abs(xp.clip(x, -1, 1)) >= 0.999)):.1%} of pixels at +-1")
