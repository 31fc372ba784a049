r"""Lesson 06: samplers (DDPM, DDIM, Euler, Euler ancestral, DPM-Solver++), and what the network predicts.

One trained network can be turned into images in many ways. Every sampler walks a descending list
of timesteps t_0 > t_1 > ... > t_{n-1}, asks the network once at each, forms the clean-image guess
x0_hat and moves x to the next timestep t'. They differ in how they move, and in how few steps
they can get away with. Each network call costs the same, so steps are the price of an image.

DDPM (ancestral; the reverse SDE). Sample from the Gaussian posterior of lesson 02 with x0_hat
in place of the unknown x_0, a jump of size t - t' (alpha = abar_t / abar_t', beta = 1 - alpha):

    x_t' = sqrt(abar_t') beta / (1 - abar_t) x0_hat + sqrt(alpha) (1 - abar_t') / (1 - abar_t) x_t + sigma z,
    sigma^2 = beta (1 - abar_t') / (1 - abar_t),   z ~ N(0, I).

  Fresh noise every step: exact when the steps are small, so DDPM wants hundreds of them.

DDIM (deterministic; eta = 0). Keep the network's noise and re-noise x0_hat to the next level:

    x_t' = sqrt(abar_t') x0_hat + sqrt(1 - abar_t') eps_hat.

Euler on the probability-flow ODE, in sigma space. Write x = x_t / sqrt(abar_t) = x_0 + sigma eps,
sigma = sqrt((1 - abar_t) / abar_t). The deterministic process with the forward process's marginals
(Song et al. 2021; Karras et al. 2022) is dx / dsigma = (x - x0_hat) / sigma, and one Euler step is
x' = x + (sigma' - sigma) (x - x0_hat) / sigma. Substitute back: it is exactly the DDIM update
(checked below). Euler ancestral steps down past sigma' to sigma_down and adds fresh noise of size
sigma_up, sigma_up^2 = sigma'^2 (sigma^2 - sigma'^2) / sigma^2: in x_t terms DDIM with eta = 1,
whose noise is DDPM's posterior noise (also checked below).

DPM-Solver++(2M). In lambda = log(alpha_t / sigma_t) (half the log-SNR; alpha_t = sqrt(abar_t),
sigma_t = sqrt(1 - abar_t)) the ODE's linear part integrates exactly, leaving an integral of x0_hat
over lambda. First order holds x0_hat constant over the step (DDIM again); the second-order
multistep method fits a line through this and the previous step's x0_hat:

    x_t' = (sigma_t' / sigma_t) x_t - alpha_t' (e^{-h} - 1) (D0 + D1 / 2),   h = lambda_t' - lambda_t,
    D0 = x0_hat_t,   D1 = (x0_hat_t - x0_hat_prev) / r,   r = h_prev / h.

  One network call a step; 10-20 steps do what DDIM needs 50 or more for.

What the network predicts. Three outputs carry the same information at a given (x_t, t):

    eps:  x0_hat = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t)
    x_0:  x0_hat = the output
    v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0  (Salimans & Ho 2022):  x0_hat = sqrt(abar_t) x_t - sqrt(1 - abar_t) v_hat

  but they spread the network's error differently. An error e in eps_hat becomes an error
  sqrt(1 - abar_t) / sqrt(abar_t) e = e / sqrt(SNR) in x0_hat: at t = 999 of the cosine schedule,
  sqrt(abar_t) = 5e-5, so the first x0_hat of every sampler is the error magnified 20,000 times,
  clipped to a random pattern of +-1. DDPM adds fresh noise over it; an ODE sampler (DDIM, Euler,
  DPM-Solver++) carries it to the end: that is why a short-trained eps model's deterministic
  samples keep patches of noise. A v error reaches x0_hat multiplied by sqrt(1 - abar_t) <= 1,
  an x_0 error unchanged, at every t. The losses weigh the x_0 error as (minidiff/diffusion/loss.py)

    |eps - eps_hat|^2 = SNR |x_0 - x0_hat|^2,   |v - v_hat|^2 = (SNR + 1) |x_0 - x0_hat|^2,   |x_0 - x0_hat|^2,

  so eps training spends its effort on the nearly clean timesteps (SNR large) and x_0 training on
  the noisy ones. Min-SNR-gamma (Hang et al. 2023) caps the x_0-space weight at min(SNR, gamma),
  gamma = 5: for v the weight is min(SNR, 5) / (SNR + 1). This lesson trains the same small U-Net
  four ways (eps, x_0, v, v + min-SNR-5) and compares their x0_hat errors at each t and their samples.

ODE or SDE? A deterministic sampler carries every mistake of the network along its trajectory to
the end; a stochastic one replaces part of x_t with fresh noise at every step, which washes some
of them out (Karras et al. 2022, section 4). On a well-trained network the difference shrinks: the
ODE samplers solve one ODE (DPM-Solver++ in 20 steps lands where DDIM lands in 100; at 10 steps it
is not there yet) and that solution is as close to the data as DDPM's at 1000 steps. A Frechet
distance over a few dozen images is itself noisy, so the lesson measures that noise (the spread of
the distance between independent sets of real images) and every claim allows for it. --quick's 32
images per row cannot tell the samplers apart (one run: a floor of 1927 +- 100, every sampler 52 to
136 above it, all inside the band of two spreads); the same lesson checkpoint with --full's size
(--quick --images 1024 --ddpm-steps 1000 --batch 256, a minute on a GPU) gives, above a floor of
69 +- 5:

    DDPM 1000: 26    DDIM 50: 11    DDIM 100: 7    Euler 20: 24    Euler ancestral 20: 84
    DPM-Solver++(2M) 10: 22    DPM-Solver++(2M) 20: 9

DPM-Solver++ at 20 steps is as close to the data as DDIM at 100 and closer than DDPM at 1000; at 10
steps it is not there yet; the stochastic Euler ancestral pays for its fresh noise at 20 steps.

The sampler comparison runs on a U-Net trained to predict v with min-SNR-5 weighting on the cosine
schedule ("trailing" timestep spacing, so every sampler starts at t = T-1, Lin et al. 2023; x0_hat
clipped to [-1, 1], as lesson 05), and ends in one table of Frechet distances over the real-vs-real
floor, the shape of fast.ai's Fashion-MNIST one. In --quick it loads
data/pretrained/lessons/pixel16_v.npz (trained by minidiff's own pixel job, command and time in
data/pretrained/lessons/README.md) and the four small comparison models beside it; --full trains
everything from scratch.

Read beside: minidiff/diffusion/samplers.py (every step function and the ``sample`` driver),
minidiff/diffusion/schedule.py (x0_and_eps, velocity, snr), minidiff/diffusion/loss.py
(prediction_target, min_snr_weights), minidiff/train/jobs.py (run_pixel) and minidiff/evaluate.py
(classifier features, Frechet distance).

Run: python lessons/06_samplers.py [--quick] [--smoke] [--full] [--device cpu|gpu]
Exercises at the end: MINIDIFF_EXERCISE=1|2|3 python lessons/06_samplers.py --quick
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
from minidiff.datasets import shapes
from minidiff.diffusion import samplers
from minidiff.diffusion.schedule import NoiseSchedule
from minidiff.models.unet import UNetConfig
from minidiff.nn.module import no_grad
from minidiff.utils import REPO_ROOT, image_grid, output_dir, parse_lesson_args, pyplot, save_figure

NAMES = {"ddpm": "DDPM", "ddim": "DDIM", "euler": "Euler", "euler_ancestral": "Euler ancestral",
         "dpmpp_2m": "DPM-Solver++(2M)"}
LESSON_MODELS = REPO_ROOT / "data" / "pretrained" / "lessons"
PREDICTIONS = {"eps": "epsilon", "x0": "sample", "v": "v_prediction", "v_minsnr": "v_prediction"}
PREDICTION_NAMES = {"eps": "eps", "x0": "x_0", "v": "v", "v_minsnr": "v + min-SNR-5"}


@dataclasses.dataclass
class Settings:
    num_images: int               # images per table row for the Frechet distance
    ddpm_steps: int               # DDPM's row: 1000 in full, the most the quick budget allows
    runs: tuple                   # (sampler, steps) rows of the table besides DDPM's
    grid_images: int = 4          # images per cell of the grid figure
    prediction_images: int = 64   # images per comparison model
    prediction_steps: int = 500   # training steps of each comparison model (when trained here)
    dpm_factor: float = 1.5       # DPM-Solver++ at 20 steps: FD - floor <= factor * (DDPM's FD - floor)
    batch: int = 32               # images per network call (32 is the fastest per image on a CPU)


ROWS = (("ddim", 50), ("ddim", 100), ("euler", 20), ("euler_ancestral", 20), ("dpmpp_2m", 10), ("dpmpp_2m", 20))
FULL = Settings(num_images=1024, ddpm_steps=1000, runs=ROWS, prediction_images=512)
QUICK = Settings(num_images=32, ddpm_steps=50, runs=(("ddim", 50),) + ROWS[2:])   # about 35 s of CPU
SMOKE = Settings(num_images=8, ddpm_steps=10, runs=(("ddim", 5), ("euler", 3), ("euler_ancestral", 3),
                                                      ("dpmpp_2m", 3), ("dpmpp_2m", 5)),
                 grid_images=2, prediction_images=8, prediction_steps=10, dpm_factor=1e9, batch=8)

def table_size(parser):
    """--images N / --ddpm-steps N / --batch N: the table at another size, e.g. --quick's checkpoint on a GPU
    with --full's 1024 images and DDPM at 1000 steps: --quick --images 1024 --ddpm-steps 1000 --batch 256."""
    for name in ("--images", "--ddpm-steps", "--batch"):
        parser.add_argument(name, type=int, default=None)


args = parse_lesson_args("Lesson 06: samplers, and what the network predicts.", extra=table_size)
settings = SMOKE if args.smoke else QUICK if args.quick else FULL
settings = dataclasses.replace(settings, **{k: v for k, v in (("num_images", args.images),
                                                                ("ddpm_steps", args.ddpm_steps),
                                                                ("batch", args.batch)) if v})
out = output_dir("06_samplers", args.out)
device = backend.device()
xp = backend.get_xp()
plt = pyplot()
lesson_start = time.perf_counter()
SPACING = "trailing"
EXERCISE = os.environ.get("MINIDIFF_EXERCISE", "")
TINY = UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(), num_heads=2,
                  norm_groups=4, image_size=16)


def pixel_job(**changes):
    """The pixel job of minidiff/train/ (python -m minidiff train pixel) with this lesson's changes."""
    job = dataclasses.replace(train.PixelJob.quick(), seed=args.seed, sample_every=10 ** 6, **changes)
    if args.smoke:
        job = dataclasses.replace(job, model=TINY, steps=10, warmup_steps=1, batch_size=8, dataset_size=64,
                                  sample_steps=4, num_samples=4)
    return job


def load_or_train(name, job):
    """A shipped lesson checkpoint in --quick, else train ``job`` here (a finished run is reused)."""
    shipped = LESSON_MODELS / f"{name}.npz"
    if args.quick and shipped.exists():
        model, ckpt = zoo.load_trained(shipped, expect="pixel")
        return model, zoo.diffusion_settings(ckpt), f"{shipped.relative_to(REPO_ROOT)} (step {ckpt.step})"
    run_dir = out / "models" / name
    try:
        result = train.run_pixel(job, out=run_dir, resume=True, progress=False)
    except ValueError:                        # an earlier run with other settings: start afresh
        (run_dir / train.FILES["pixel"]).unlink()
        result = train.run_pixel(job, out=run_dir, progress=False)
    return result.model.eval(), job.diffusion(), f"trained here, {job.steps} steps"


# %% the model: a U-Net that predicts v, trained with min-SNR-5 on the cosine schedule
main_job = pixel_job(schedule="cosine", prediction_type="v_prediction", min_snr_gamma=5.0, lr=2e-3,
                     warmup_steps=100, ema_decay=0.998, steps=2000)
if args.full:                                 # 32x32, the GPU recipe
    main_job = dataclasses.replace(main_job, model=UNetConfig.pixel32(), image_size=32, steps=20000,
                                   batch_size=128, lr=2e-4, warmup_steps=500, ema_decay=0.999, dataset_size=50000)
model, diffusion, where = load_or_train("pixel16_v", main_job)
PREDICTION = diffusion["prediction_type"]
S = model.config.image_size
schedule = NoiseSchedule.make(diffusion["schedule"], num_steps=diffusion["num_steps"])
print(f"model: {where}; {model.num_parameters():,} parameters, {S}x{S} images, {diffusion['schedule']} "
      f"schedule over {schedule.num_steps} timesteps, predicts {PREDICTION}")


def network(x, t):
    return model(x, t)


# %% DDIM is Euler on the ODE, DDPM is Euler ancestral: one step of each pair, checked
# Noise real images to t, ask the network once, then step to t' in x_t (DDIM, DDPM) and in sigma space
# (Euler, Euler ancestral), x = x_t / sqrt(abar_t) = x_t sqrt(sigma^2 + 1), with the same fresh noise z.
t, t_next = 600, 400
x0 = backend.to_device(shapes.sample(2, seed=(args.seed, 3), size=S)["images"], device)
x_t = schedule.q_sample(x0, t, backend.rng(args.seed).standard_normal(x0.shape, dtype=np.float32))
z = backend.rng(args.seed + 1).standard_normal(x0.shape, dtype=np.float32)
with no_grad():
    output = network(x_t, xp.full((2,), t))
sigma, sigma_next = samplers.sigmas_at(schedule, [t, t_next])                      # sigma = sqrt((1 - abar) / abar)
to_sigma, from_sigma = np.float32(np.sqrt(sigma ** 2 + 1)), np.float32(np.sqrt(sigma_next ** 2 + 1))
kind = {"prediction_type": PREDICTION}
ddim_next, _ = samplers.ddim_step(schedule, output, t, t_next, x_t, **kind)
euler_next, _ = samplers.euler_step(output, sigma, sigma_next, x_t * to_sigma, **kind)
ddpm_next, _ = samplers.ddpm_step(schedule, output, t, x_t, z, t_prev=t_next, **kind)
ancestral_next, _ = samplers.euler_ancestral_step(output, sigma, sigma_next, x_t * to_sigma, z, **kind)
gaps = {"DDIM - Euler": ddim_next - euler_next / from_sigma,
        "DDPM - Euler ancestral": ddpm_next - ancestral_next / from_sigma}
print(f"one step t = {t} -> {t_next} (sigma {sigma:.3f} -> {sigma_next:.3f}), back in x_t coordinates:")
for name, gap in gaps.items():
    gaps[name] = float(abs(backend.to_numpy(gap)).max())
    print(f"  max |{name}| = {gaps[name]:.1e}   (float32 round-off: one update, two coordinate systems)")
    assert gaps[name] < 1e-4

# %% the judge: the shipped classifier's features define the Frechet distance (lesson 05)
judge = evaluate.load_classifier()


def features(images):
    """Classifier features of images in [-1, 1] at the classifier's 32x32 (16x16 repeated 2x2)."""
    return evaluate.classifier_features(judge, evaluate.match_size(images, judge.config.image_size))


def fd_of(images):
    return evaluate.frechet_distance_from_features(real_features, features(images))


real = shapes.sample(settings.num_images, seed=(args.seed, evaluate.HELDOUT_SEED), size=S)["images"]
real_features = features(real)
# The floor: the distance between independent sets of real images. Its spread over a few draws is
# the noise of the measurement itself: differences smaller than that say nothing.
real_sets = [shapes.sample(settings.num_images, seed=(args.seed, evaluate.HELDOUT_SEED + k), size=S)["images"]
             for k in range(1, 5)]
real_again = real_sets[0]
floors = [fd_of(images) for images in real_sets]
floor, noise = float(np.mean(floors)), float(np.std(floors, ddof=1))
print(f"FD between independent sets of {settings.num_images} real images (the floor at this sample size): "
      f"{floor:.1f} +- {noise:.1f} (mean and spread of {len(floors)} draws: {', '.join(f'{f:.0f}' for f in floors)})")


# %% the table: every sampler from the same starting noise x_T
def draw(net, prediction_type, sampler, steps, x_T, seed):
    """Images on the host from ``x_T``, batch by batch; x0_hat clipped to [-1, 1] at every step."""
    batches = []
    for i in range(0, len(x_T), settings.batch):
        with no_grad():
            x = samplers.sample(net, schedule, x_T[i:i + settings.batch].shape, sampler=sampler, steps=steps,
                                x_T=x_T[i:i + settings.batch], rng=backend.rng(seed + i), spacing=SPACING,
                                clip_x0=True, prediction_type=prediction_type, progress=False)
        batches.append(backend.to_numpy(x))
    return np.concatenate(batches)


x_T = backend.rng(args.seed + 100).standard_normal((settings.num_images, 3, S, S), dtype=np.float32)
rows = (("ddpm", settings.ddpm_steps),) + settings.runs
results = {}
for sampler, steps in rows:
    began, cpu = time.perf_counter(), time.process_time()
    images = draw(network, PREDICTION, sampler, steps, x_T, args.seed + 200)
    results[sampler, steps] = {"images": images, "fd": fd_of(images),
                               "ms": 1e3 * (time.process_time() - cpu) / len(images),
                               "saturated": float(np.mean(np.abs(images) >= 0.999))}
    print(f"  {NAMES[sampler]:17s} {steps:5d} steps: FD {results[sampler, steps]['fd']:7.1f} "
          f"({time.perf_counter() - began:.0f} s)", flush=True)

print(f"\nFrechet distance to {settings.num_images} held-out real images (classifier features; lower is better)")
print(f"{'sampler':18s}{'steps':>6s}{'FD':>9s}{'FD - floor':>12s}{'CPU ms/image':>14s}{'pixels at +-1':>15s}")
print(f"{'real vs real':18s}{'-':>6s}{floor:9.1f}{0:12.1f}{'-':>14s}{np.mean(np.abs(real) >= 0.999):15.1%}")
for (sampler, steps), r in results.items():
    print(f"{NAMES[sampler]:18s}{steps:6d}{r['fd']:9.1f}{r['fd'] - floor:12.1f}{r['ms']:14.1f}{r['saturated']:15.1%}")

# %% quality against steps: one point per row of the table
markers = {"ddpm": "o", "ddim": "s", "euler": "x", "euler_ancestral": "^", "dpmpp_2m": "D"}
fig, ax = plt.subplots(figsize=(8, 5), layout="constrained")
for sampler in NAMES:
    counts = sorted(s for (name, s) in results if name == sampler)
    if counts:
        ax.plot(counts, [results[sampler, s]["fd"] for s in counts], marker=markers[sampler], ms=8,
                label=NAMES[sampler])
ax.axhline(floor, color="gray", lw=1, linestyle=":", label="real vs real (the floor)")
ax.axhspan(floor, floor + 2 * noise, color="gray", alpha=0.15,
           label="floor + 2 spreads: differences inside this band are noise")
ticks = sorted({s for _, s in results})
ax.set(xscale="log", xlabel="sampling steps = network calls per image (log scale)",
       ylabel="Frechet distance to real images (lower is better)",
       title=f"{S}x{S} shapes, v-prediction U-Net, {SPACING} spacing, {settings.num_images} images per point")
ax.set_xticks(ticks, [str(s) for s in ticks])
ax.xaxis.set_minor_locator(plt.NullLocator())
ax.legend(fontsize=9)
ax.grid(True, alpha=0.3)
save_figure(fig, out / "quality_vs_steps.png")

# %% the same x_T through every sampler: one column per row of the table
n = settings.grid_images
fig, axes = plt.subplots(1, len(results), figsize=(2.3 * len(results), 2.9), squeeze=False, layout="constrained")
for ax, ((sampler, steps), r) in zip(axes[0], results.items()):
    ax.imshow(image_grid(np.clip(r["images"][:n], -1, 1), nrow=int(np.ceil(np.sqrt(n)))), interpolation="nearest")
    ax.set_title(f"{NAMES[sampler]}\n{steps} steps, FD {r['fd']:.0f}", fontsize=9)
    ax.axis("off")
fig.suptitle("The same four starting noises x_T through each sampler (FD over all images of the row)")
save_figure(fig, out / "samplers_grid.png")

# %% the claims
ddpm = results["ddpm", settings.ddpm_steps]
few = [key for key in results if key[0] == "dpmpp_2m"]
dpm = results[max(few)]
band = 2 * noise                              # two spreads of the floor: below that, no difference is measured
print(f"FD above the floor: DPM-Solver++ at {max(few)[1]} steps {dpm['fd'] - floor:.1f}, DDPM at "
      f"{settings.ddpm_steps} steps {ddpm['fd'] - floor:.1f}, the measurement's noise band +-{band:.1f}")
print(f"  claim: DPM-Solver++ at {max(few)[1]} steps is within {settings.dpm_factor} x DDPM's distance above "
      f"the floor (or within the noise band), with {settings.ddpm_steps // max(few)[1]}x fewer network calls")
if not args.smoke:
    assert dpm["fd"] - floor <= max(settings.dpm_factor * (ddpm["fd"] - floor), band)
# the ODE samplers solve one ODE: DPM-Solver++ in 20 steps lands where DDIM lands in 100
ode = {key: results[key]["fd"] - floor for key in results if key[0] in ("ddim", "euler", "dpmpp_2m")}
print("FD above the floor of the deterministic samplers: " + ", ".join(
    f"{NAMES[k[0]]} {k[1]}: {v:.0f}" for k, v in ode.items()))
most = max(s for name, s in results if name == "ddim")        # DDIM's most steps in the table (100; 50 in --quick)
ddim100 = results["ddim", most]["fd"] - floor
dpm20 = dpm["fd"] - floor
print(f"DPM-Solver++ at {max(few)[1]} steps {dpm20:.0f} vs DDIM at {most} steps {ddim100:.0f} above the floor: "
      f"{most // max(few)[1]}x fewer calls for the same ODE solution (must be no worse than 1.25 x DDIM's, or "
      f"within the noise band; at {min(few)[1]} steps: {results[min(few)]['fd'] - floor:.0f})")
if not args.smoke:
    assert dpm20 <= max(1.25 * ddim100, ddim100 + band)
if not args.smoke:
    worst = max(results, key=lambda key: results[key]["saturated"])
    print(f"most pixels at +-1: {NAMES[worst[0]]} {worst[1]} steps, {results[worst]['saturated']:.1%} "
          f"(real images {np.mean(np.abs(real) >= 0.999):.1%}): no sampler leaves noise behind")
    assert results[worst]["saturated"] < 0.05

# %% what the network predicts: the same U-Net trained four ways
predictors = {}
for name, prediction_type in PREDICTIONS.items():
    job = pixel_job(model=dataclasses.replace(UNetConfig.quick16(), base_channels=16, norm_groups=8),
                    schedule="cosine", prediction_type=prediction_type,
                    min_snr_gamma=5.0 if name == "v_minsnr" else None, steps=settings.prediction_steps,
                    warmup_steps=settings.prediction_steps // 10, lr=2e-3, ema_decay=0.995)
    net, recorded, where = load_or_train(f"pred16_{name}", job)
    assert recorded["prediction_type"] == prediction_type and recorded["schedule"] == "cosine"
    predictors[name] = net
    print(f"{PREDICTION_NAMES[name]:14s} {where}")

# x0_hat's error at each t, on held-out images noised with the same eps
probe_t = [0, 100, 300, 500, 700, 900, 980, 999]
held = xp.asarray(real[:settings.prediction_images])
noise = backend.rng(args.seed + 300).standard_normal(held.shape, dtype=np.float32)
x0_error = {name: [] for name in predictors}
for t in probe_t:
    noisy = schedule.q_sample(held, t, noise)
    tt = xp.full((len(held),), t)
    for name, net in predictors.items():
        with no_grad():
            x0_hat, _ = schedule.x0_and_eps(net(noisy, tt), noisy, tt, PREDICTIONS[name])
        x0_error[name].append(float(((xp.clip(x0_hat, -1, 1) - held) ** 2).mean()))
average = float(((xp.asarray(real_again).mean(axis=0) - held) ** 2).mean())    # guessing the average image
print(f"\nmean |x_0 - clip(x0_hat)|^2 on {len(held)} held-out images (guessing the average image every time: "
      f"{average:.3f})")
print(f"{'t':>14s}" + "".join(f"{t:>8d}" for t in probe_t))
for name in predictors:
    print(f"{PREDICTION_NAMES[name]:>14s}" + "".join(f"{e:8.3f}" for e in x0_error[name]))

# the same samplers on each: DPM-Solver++ (an ODE) and DDPM, 20 steps, the same x_T
pred_x_T = x_T[:settings.prediction_images] if len(x_T) >= settings.prediction_images else \
    backend.rng(args.seed + 100).standard_normal((settings.prediction_images, 3, S, S), dtype=np.float32)
pred_real = real_features if len(x_T) == settings.prediction_images else features(
    shapes.sample(settings.prediction_images, seed=(args.seed, evaluate.HELDOUT_SEED), size=S)["images"])
pred_floor = floor if len(x_T) == settings.prediction_images else evaluate.frechet_distance_from_features(
    pred_real, features(shapes.sample(settings.prediction_images, seed=(args.seed, evaluate.HELDOUT_SEED + 1),
                                      size=S)["images"]))
compare = {}
for name, net in predictors.items():
    for sampler in ("dpmpp_2m", "ddpm"):
        images = draw(lambda x, t, net=net: net(x, t), PREDICTIONS[name], sampler, 20, pred_x_T, args.seed + 400)
        compare[name, sampler] = {"images": images, "saturated": float(np.mean(np.abs(images) >= 0.999)),
                                  "fd": evaluate.frechet_distance_from_features(pred_real, features(images))}
print(f"\n{'prediction':14s}{'FD DPM++ 20':>13s}{'FD DDPM 20':>12s}{'+-1 DPM++':>11s}   (floor {pred_floor:.1f})")
for name in predictors:
    a, b = compare[name, "dpmpp_2m"], compare[name, "ddpm"]
    print(f"{PREDICTION_NAMES[name]:14s}{a['fd']:13.1f}{b['fd']:12.1f}{a['saturated']:11.1%}")

print("eps: the worst x0_hat near t = T-1 and noisy ODE samples; x_0: the best x0_hat at high t but blurred, "
      "too-empty samples (it is the worst at t = 0); v: good at both ends and the best samples. min-SNR-5 for v "
      "weights t = T-1 by about SNR, nearly 0, so the noisiest steps are barely trained (its x0_hat there is worse "
      "than guessing the average image); at 500 steps it does not beat plain v")
fig, (ax, ax2) = plt.subplots(1, 2, figsize=(14, 4.8), layout="constrained")
for name in predictors:
    ax.plot(probe_t, x0_error[name], marker="o", label=PREDICTION_NAMES[name])
ax.axhline(average, color="gray", linestyle=":", label="the average image, at every t")
ax.set(yscale="log", xlabel="timestep t (t = 999: pure noise)", ylabel="mean |x_0 - clip(x0_hat)|^2",
       title="Where each prediction's x0_hat goes wrong")
ax.legend()
ax.grid(True, alpha=0.3)
labels = list(predictors)
ax2.bar(np.arange(len(labels)) - 0.2, [compare[k, "dpmpp_2m"]["fd"] for k in labels], 0.4, label="DPM-Solver++, 20 steps")
ax2.bar(np.arange(len(labels)) + 0.2, [compare[k, "ddpm"]["fd"] for k in labels], 0.4, label="DDPM, 20 steps")
ax2.axhline(pred_floor, color="gray", linestyle=":", label="real vs real (the floor)")
ax2.set_xticks(np.arange(len(labels)), [PREDICTION_NAMES[k] for k in labels])
ax2.set(ylabel="Frechet distance (lower is better)", title="Samples of the same small U-Net trained four ways")
ax2.legend()
fig.suptitle(f"What the network predicts: one {S}x{S} U-Net, {settings.prediction_steps} training steps each, "
             "cosine schedule")
save_figure(fig, out / "predictions.png")

fig, axes = plt.subplots(2, len(labels), figsize=(3 * len(labels), 6.4), layout="constrained", squeeze=False)
for c, name in enumerate(labels):
    for r, sampler in enumerate(("dpmpp_2m", "ddpm")):
        cell = compare[name, sampler]
        axes[r, c].imshow(image_grid(np.clip(cell["images"][:16], -1, 1), nrow=4), interpolation="nearest")
        axes[r, c].set_title(f"{PREDICTION_NAMES[name]}, {NAMES[sampler]} 20\nFD {cell['fd']:.0f}", fontsize=9)
        axes[r, c].axis("off")
fig.suptitle("Top: DPM-Solver++ (an ODE) keeps what x0_hat got wrong at t = T-1 (eps: noise to the end).\n"
             "Bottom: DDPM's fresh noise cleans that up, but 20 DDPM steps leave grain of their own")
save_figure(fig, out / "predictions_samples.png")

# why a deterministic sampler leaves noise behind: eps at t = T-1, trailing spacing, and clipping
noisy_x_T = pred_x_T[:32]
print(f"\nDPM-Solver++ 20 steps, {len(noisy_x_T)} images: how many are more than 10% saturated (pixels at +-1)")
noisy = {}
for name in ("eps", "v"):
    for spacing, clip in (("trailing", True), ("leading", True), ("trailing", False)):
        with no_grad():
            x = samplers.sample(lambda x, t, net=predictors[name]: net(x, t), schedule, noisy_x_T.shape,
                                sampler="dpmpp_2m", steps=20, x_T=noisy_x_T, spacing=spacing, clip_x0=clip,
                                prediction_type=PREDICTIONS[name], progress=False)
        share = np.mean(np.abs(np.clip(backend.to_numpy(x), -1, 1)) >= 0.999, axis=(1, 2, 3))
        noisy[name, spacing, clip] = int((share > 0.1).sum())
        print(f"  {PREDICTION_NAMES[name]:4s} {spacing:8s} spacing, x0_hat {'clipped' if clip else 'not clipped':11s}: "
              f"{noisy[name, spacing, clip]:2d} of {len(noisy_x_T)} images")
print(f"eps without clipping: the first x0_hat (error / 5e-5) swamps every image; clipped, it still saturates "
      f"{noisy['eps', 'trailing', True]} of {len(noisy_x_T)}, and the others keep a colour noise this count misses "
      "(predictions_samples.png, top left); leading spacing starts at a smaller t where the division is milder; "
      "v needs none of it")
if not args.smoke:
    assert noisy["eps", "trailing", False] > len(noisy_x_T) // 2
    assert all(noisy["v", spacing, clip] == 0 for spacing, clip in (("trailing", True), ("trailing", False)))

# the claims: eps is the worst guess of x_0 at t = T-1, v and x_0 stay near a grey guess there
last = probe_t.index(999)
print(f"x0_hat error at t = 999: eps {x0_error['eps'][last]:.3f}, x_0 {x0_error['x0'][last]:.3f}, "
      f"v {x0_error['v'][last]:.3f}")
if not args.smoke:
    assert x0_error["eps"][last] > 2 * max(x0_error["v"][last], x0_error["x0"][last])
    assert compare["v", "dpmpp_2m"]["fd"] < compare["eps", "dpmpp_2m"]["fd"]
print(f"lesson 06 done in {time.perf_counter() - lesson_start:.0f} s (CPU {time.process_time():.0f} s)")

# %% Exercises
# 1. Min-SNR for eps. Train the eps comparison model again with min_snr_gamma=5.0 (one line: the
#    ``min_snr_gamma`` in the loop above) and predict first: which timesteps' x0_hat error will fall,
#    which will rise? MINIDIFF_EXERCISE=1 trains it here (about 2 minutes of CPU in --quick) and
#    prints its row beside the others.
# 2. x0_hat from v. Fill in ``x0_from_v`` below without looking at schedule.py; MINIDIFF_EXERCISE=2
#    checks it against the network's own outputs at five timesteps.
# 3. Spacing. Set SPACING = "leading" and rerun: the first step of every sampler is then t = 900
#    for 10 steps, not 999. Predict which rows of the table move most (hint: DPM-Solver++ at 10
#    steps never sees the noisiest tenth of the schedule), then check.


def x0_from_v(v_hat, x_t, abar_t):
    """Exercise 2: the clean-image guess implied by a v prediction at x_t (abar_t a float)."""
    raise NotImplementedError("write x0_hat in terms of v_hat, x_t and abar_t")


if EXERCISE == "1":
    job = pixel_job(model=dataclasses.replace(UNetConfig.quick16(), base_channels=16, norm_groups=8),
                    schedule="cosine", prediction_type="epsilon", min_snr_gamma=5.0,
                    steps=settings.prediction_steps, warmup_steps=settings.prediction_steps // 10, lr=2e-3,
                    ema_decay=0.995)
    net = train.run_pixel(job, out=out / "models" / "exercise_eps_minsnr", resume=True, progress=False).model.eval()
    errors = []
    for t in probe_t:
        noisy, tt = schedule.q_sample(held, t, noise), xp.full((len(held),), t)
        with no_grad():
            x0_hat = schedule.predict_x0(noisy, tt, net(noisy, tt))
        errors.append(float(((xp.clip(x0_hat, -1, 1) - held) ** 2).mean()))
    print(f"{'eps + min-SNR-5':>14s}" + "".join(f"{e:8.3f}" for e in errors))
if EXERCISE == "2":
    for t in (0, 250, 500, 750, 999):
        noisy, tt = schedule.q_sample(held[:8], t, noise[:8]), xp.full((8,), t)
        with no_grad():
            v_hat = predictors["v"](noisy, tt)
        want, _ = schedule.x0_and_eps(v_hat, noisy, tt, "v_prediction")
        got = x0_from_v(v_hat, noisy, float(schedule.alphas_cumprod[t]))
        assert float(abs(got - want).max()) < 1e-4, f"x0_from_v is off at t = {t}"
    print("exercise 2: x0_from_v agrees with the schedule at t = 0, 250, 500, 750, 999")
