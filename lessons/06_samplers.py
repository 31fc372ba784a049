r"""Lesson 06: samplers — DDPM, DDIM, Euler, Euler ancestral and DPM-Solver++ at 5 to 250 steps.

One trained noise predictor eps_theta(x_t, t) (lesson 05's U-Net) can be turned into images in
many ways. Every sampler walks a descending list of timesteps t_0 > t_1 > ... > t_{n-1}, asks
the network for eps at each, forms the clean-image guess

    x0_hat = (x_t - sqrt(1 - abar_t) eps_theta(x_t, t)) / sqrt(abar_t),

and moves x to the next timestep t'. They differ in how they move, and in how few steps they
can get away with. Each network call costs the same, so steps are the price of an image.

DDPM (ancestral; the reverse SDE). Sample from the Gaussian posterior of lesson 02 with x0_hat
in place of the unknown x_0, a jump of size t - t' (alpha = abar_t / abar_t', beta = 1 - alpha):

    x_t' = sqrt(abar_t') beta / (1 - abar_t) x0_hat + sqrt(alpha) (1 - abar_t') / (1 - abar_t) x_t + sigma z,
    sigma^2 = beta (1 - abar_t') / (1 - abar_t),   z ~ N(0, I).

  Fresh noise every step: exact when steps are small, but with big jumps the posterior of a blurry
  x0_hat is a blurry mean plus noise, so DDPM needs hundreds of steps.

DDIM (deterministic; eta = 0). Keep the network's noise and re-noise x0_hat to the next level:

    x_t' = sqrt(abar_t') x0_hat + sqrt(1 - abar_t') eps_theta(x_t, t).

  The same x_T always gives the same image, and 20-50 steps suffice.

Euler on the probability-flow ODE, in sigma space. Write x = x_t / sqrt(abar_t) = x_0 + sigma eps,
with sigma = sqrt((1 - abar_t) / abar_t). The deterministic process with the same marginals as
the forward noising (Song et al. 2021; Karras et al. 2022) is the ODE

    dx / dsigma = eps_theta = (x - x0_hat) / sigma,

  and one Euler step is x' = x + (sigma' - sigma) (x - x0_hat) / sigma. Substitute back and it is
  exactly the DDIM update: DDIM IS Euler's method on this ODE (this lesson checks it numerically).
  Euler ancestral steps down past sigma' to sigma_down, then adds fresh noise of size sigma_up,
  sigma_up^2 = sigma'^2 (sigma^2 - sigma'^2) / sigma^2, sigma_down^2 = sigma'^2 - sigma_up^2: an
  SDE sampler. In x_t terms it is DDIM with eta = 1, whose noise is exactly DDPM's posterior
  noise: given the same z at every step, DDPM and Euler ancestral make the same images.

DPM-Solver++(2M). In lambda = log(alpha_t / sigma_t) (half the log-SNR) the ODE's linear part can
be integrated exactly, leaving an integral of x0_hat over lambda. First order treats x0_hat as
constant over the step (that is DDIM again); the second-order multistep method fits a line
through this step's and the previous step's x0_hat:

    x_t' = (sigma_t' / sigma_t) x_t - alpha_t' (e^{-h} - 1) (D0 + D1 / 2),   h = lambda_t' - lambda_t,
    D0 = x0_hat_t,   D1 = (x0_hat_t - x0_hat_prev) / r,   r = h_prev / h,

  with alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t). It reuses the previous call's x0_hat, so
  a second-order step costs one network call, and 10-20 steps do what DDIM needs 50 for.

Timestep spacing matters at few steps. Stable Diffusion's "leading" spacing never visits t = T-1
(5 steps start at t = 800, and DPM-Solver's 250 steps at t = 750!), but the driver starts from
pure noise all the same; "trailing" spacing starts every sampler at t = T-1 (Lin et al. 2023), so
this lesson uses it. Each x0_hat is clipped to [-1, 1], as in lesson 05.

ODE or SDE? A deterministic sampler carries every mistake of the network along its trajectory to
the end; a stochastic one replaces part of x_t with fresh noise at every step, which washes the
mistakes out (Karras et al. 2022, section 4). The worst mistakes come first: near t = T,
x0_hat = (x_t - sqrt(1 - abar_t) eps_theta) / sqrt(abar_t) divides by sqrt(abar_t) (5e-5 at
t = 999 with the cosine schedule), so the tiniest error in eps becomes a wild x0_hat, clipped to a
random pattern of +-1, which an ODE step then mixes into x_t as if it were the image. With the few
minutes of CPU training of lesson 05 --quick you will see the ODE samplers (DDIM, Euler,
DPM-Solver++) keep such noisy patches to the end while DDPM and Euler ancestral clean them up. A
better-trained network (lesson 05 on a GPU) shrinks the gap; predicting v instead of eps
(Salimans & Ho 2022, used by Stable Diffusion 2) removes the division altogether.

What you will see: FD (lesson 05's Frechet distance) against steps for each sampler (log x axis);
how fast the deterministic samplers converge to their own many-step result; a grid of samples
from the same x_T, one row per sampler; and a table of time per image.

Read beside: minidiff/diffusion/samplers.py (every step function and the ``sample`` driver),
minidiff/diffusion/schedule.py (abar_t, predict_x0), minidiff/evaluate.py (Frechet distance).

Run: python lessons/06_samplers.py [--quick] [--smoke] [--device cpu|gpu]
(uses outputs/05_unet_pixel_diffusion/unet.npz from lesson 05; trains a quick model if it is missing)
"""
# %% setup: `import minidiff` from this clone, as a script or in a notebook kernel (which has no __file__)
import sys, pathlib  # noqa: E401
_lessons = pathlib.Path(globals().get("__file__", "lessons/_")).resolve().parent
sys.path.insert(0, str(next((p for p in (_lessons.parent, pathlib.Path.cwd(), pathlib.Path.cwd().parent)
                             if (p / "minidiff" / "__init__.py").is_file()), _lessons.parent)))
import minidiff  # noqa: F401,E402  (before NumPy: it sets how OpenBLAS's threads wait, minidiff/__init__.py)

# %% settings
import dataclasses
import time

import numpy as np

from minidiff import backend, evaluate, train
from minidiff.checkpoint import load_checkpoint, load_into, save_checkpoint
from minidiff.datasets import shapes
from minidiff.diffusion import samplers
from minidiff.diffusion.schedule import NoiseSchedule
from minidiff.models.unet import UNet, UNetConfig
from minidiff.nn.module import no_grad
from minidiff.utils import REPO_ROOT, image_grid, output_dir, parse_lesson_args, pyplot, save_figure

SAMPLERS = samplers.SAMPLERS                  # ddpm, ddim, euler, euler_ancestral, dpmpp_2m
NAMES = {"ddpm": "DDPM", "ddim": "DDIM", "euler": "Euler", "euler_ancestral": "Euler ancestral",
         "dpmpp_2m": "DPM-Solver++(2M)"}


@dataclasses.dataclass
class Settings:
    num_images: int               # images per (sampler, steps) for the Frechet distance
    steps: tuple                  # step counts every sampler runs
    long_steps: int               # the long run ...
    long_samplers: tuple          # ... for these samplers (all of them on a GPU)
    grid_images: int = 4          # images per cell of the grid figure
    ode_images: int = 8           # images for the convergence check of the deterministic samplers
    fallback_steps: int = 600     # training steps when lesson 05's model is missing (lesson 05's quick setting)
    ddpm_margin: float = 0.6      # DDPM's best from 20 steps up: FD - floor < margin * (FD - floor) at 5 steps
    dpm_factor: float = 2.0       # DPM-Solver++ at 20 steps: FD - floor < factor * that of DDIM at 50 steps


FULL = Settings(num_images=1024, steps=(5, 10, 20, 50), long_steps=250, long_samplers=SAMPLERS)
QUICK = Settings(num_images=96, steps=(5, 10, 20, 50), long_steps=250, long_samplers=("ddpm",))
SMOKE = Settings(num_images=8, steps=(2, 5), long_steps=10, long_samplers=("ddpm",), grid_images=2, ode_images=2,
                 fallback_steps=20, ddpm_margin=10.0, dpm_factor=100.0)

args = parse_lesson_args('Lesson 06: samplers — DDPM, DDIM, Euler, Euler ancestral and DPM-Solver++ at 5 to 250 steps.')
settings = SMOKE if args.smoke else QUICK if args.quick else FULL
out = output_dir("06_samplers", args.out)
device = backend.device()
plt = pyplot()
lesson_start = time.perf_counter()
LESSON05 = REPO_ROOT / "outputs" / "05_unet_pixel_diffusion"
SPACING = "trailing"

# %% one trained model: lesson 05's, else a quick one trained here by minidiff/train/
lesson05 = LESSON05 / "unet.npz"
recorded = load_checkpoint(lesson05).config if lesson05.exists() else None
if not args.smoke and recorded is not None and recorded.get("train", {}).get("mode") != "smoke":
    model = UNet(UNetConfig(**recorded["model"])).to(device).eval()
    load_into(model, lesson05)
    schedule_name, num_train_steps = recorded["diffusion"]["schedule"], recorded["diffusion"]["num_steps"]
    print(f"model: lesson 05's U-Net ({recorded['train'].get('mode')} settings), {lesson05}")
else:
    why = "smoke mode trains a tiny one" if args.smoke else f"{lesson05} is missing or a smoke-test model"
    # about lesson 05's quick recipe, run by the training command's loop (python -m minidiff train pixel)
    job = dataclasses.replace(train.PixelJob.quick(), steps=settings.fallback_steps, seed=args.seed, lr=2e-3,
                              warmup_steps=min(100, settings.fallback_steps // 10), ema_decay=0.995,
                              schedule="cosine", sample_every=10 ** 6)
    if args.smoke:
        job = dataclasses.replace(job, model=UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                                                        attention_levels=(), num_heads=2, norm_groups=4,
                                                        image_size=16),
                                  batch_size=8, dataset_size=64, sample_steps=4, num_samples=4)
    print(f"model: {why}; training a U-Net ({job.model.base_channels} x {job.model.channel_mults} channels) "
          f"for {job.steps} steps with minidiff/train/ ...")
    try:                                      # a finished run from before is loaded, not trained again
        model = train.run_pixel(job, out=out / "model", resume=True, progress=False).model.eval()
    except ValueError as exc:                 # ... unless its settings differ: then start afresh
        print(f"{exc}\nremoving it and training again")
        (out / "model" / train.FILES["pixel"]).unlink()
        model = train.run_pixel(job, out=out / "model", progress=False).model.eval()
    schedule_name, num_train_steps = job.schedule, job.num_train_timesteps
S = model.config.image_size
schedule = NoiseSchedule.make(schedule_name, num_steps=num_train_steps)
print(f"{model.num_parameters():,} parameters, {S}x{S} images, {schedule_name} schedule over "
      f"{schedule.num_steps} timesteps")


def eps_theta(x, t):
    return model(x, t)


# %% DDIM is Euler on the ODE, DDPM is Euler ancestral: one step of each pair, checked
# Noise real images to t, ask the network once, then step to t' in x_t (DDIM, DDPM) and in sigma space
# (Euler, Euler ancestral), x = x_t / sqrt(abar_t) = x_t sqrt(sigma^2 + 1), with the same fresh noise z.
t, t_next = 600, 400
x0 = backend.to_device(shapes.sample(2, seed=(args.seed, 3), size=S)["images"], device)
x_t = schedule.q_sample(x0, t, backend.rng(args.seed).standard_normal(x0.shape, dtype=np.float32))
z = backend.rng(args.seed + 1).standard_normal(x0.shape, dtype=np.float32)
with no_grad():
    eps = eps_theta(x_t, backend.get_array_module(x_t).full((2,), t))
sigma, sigma_next = samplers.sigmas_at(schedule, [t, t_next])                      # sigma = sqrt((1 - abar) / abar)
to_sigma, from_sigma = np.float32(np.sqrt(sigma ** 2 + 1)), np.float32(np.sqrt(sigma_next ** 2 + 1))
ddim_next, _ = samplers.ddim_step(schedule, eps, t, t_next, x_t)                    # x_t -> x_t'
euler_next, _ = samplers.euler_step(eps, sigma, sigma_next, x_t * to_sigma)        # x' = x + (sigma' - sigma) eps
ddpm_next, _ = samplers.ddpm_step(schedule, eps, t, x_t, z, t_prev=t_next)         # posterior mean + std z
ancestral_next, _ = samplers.euler_ancestral_step(eps, sigma, sigma_next, x_t * to_sigma, z)
gaps = {"DDIM - Euler": ddim_next - euler_next / from_sigma,
        "DDPM - Euler ancestral": ddpm_next - ancestral_next / from_sigma}
print(f"one step t = {t} -> {t_next} (sigma {sigma:.3f} -> {sigma_next:.3f}), back in x_t coordinates:")
for name, gap in gaps.items():
    gaps[name] = float(abs(backend.to_numpy(gap)).max())
    print(f"  max |{name}| = {gaps[name]:.1e}   (float32 round-off: one update, two coordinate systems)")
    assert gaps[name] < 1e-4

# %% the judge: the classifier whose features define the Frechet distance (as in lesson 05)
shipped, from_lesson05 = evaluate.DEFAULT_CLASSIFIER, LESSON05 / "classifier.npz"
trained_here = out / "classifier.npz"
candidates = [p for p in (shipped, from_lesson05, trained_here) if p.exists()]
if candidates:
    judge = evaluate.load_classifier(candidates[0])
    print(f"classifier: {candidates[0]}")
else:
    config = evaluate.ClassifierConfig.tiny() if args.smoke else evaluate.ClassifierConfig(
        image_size=S, channels=(16, 32, 64))
    print(f"classifier: none found; training a small one ({config})")
    judge = train.train_classifier(steps=30 if args.smoke else 600, config=config, seed=args.seed,
                                      dataset_size=256 if args.smoke else 8000)
    save_checkpoint(trained_here, model=judge, config={"job": "classifier", "model": dataclasses.asdict(judge.config)})


def features(images):
    """Classifier features of images in [-1, 1], resized to the classifier's input (nearest up, mean down)."""
    size = judge.config.image_size
    if images.shape[2] < size:
        factor = size // images.shape[2]
        images = images.repeat(factor, axis=2).repeat(factor, axis=3)
    return evaluate.classifier_features(judge, evaluate.match_size(images, size))


real = shapes.sample(settings.num_images, seed=(args.seed, evaluate.HELDOUT_SEED), size=S)["images"]
real_features = features(real)
real_again = shapes.sample(settings.num_images, seed=(args.seed, evaluate.HELDOUT_SEED + 1), size=S)["images"]
floor = evaluate.frechet_distance_from_features(real_features, features(real_again))
print(f"FD between two sets of {settings.num_images} real images (the floor at this sample size): {floor:.1f}")


# %% every sampler at every step count, from the same starting noise x_T
x_T = backend.rng(args.seed + 100).standard_normal((settings.num_images, 3, S, S), dtype=np.float32)


def run(sampler, steps, start=None):
    """(images (N, 3, S, S) on the host, seconds per image): one sampler at one step count from x_T
    (or ``start``). Each step's x0_hat is clipped to [-1, 1], as in lesson 05."""
    start = x_T if start is None else start
    backend.synchronize()
    began = time.perf_counter()
    with no_grad():
        x = samplers.sample(eps_theta, schedule, start.shape, sampler=sampler, steps=steps, x_T=start,
                            rng=backend.rng(args.seed + 200), spacing=SPACING, clip_x0=True, progress=False)
    backend.synchronize()
    return backend.to_numpy(x), (time.perf_counter() - began) / start.shape[0]


results = {}                                  # (sampler, steps) -> {"images", "fd", "seconds"}
for sampler in SAMPLERS:
    counts = settings.steps + ((settings.long_steps,) if sampler in settings.long_samplers else ())
    for steps in counts:
        images, seconds = run(sampler, steps)
        fd = evaluate.frechet_distance_from_features(real_features, features(images))
        results[sampler, steps] = {"images": images, "fd": fd, "seconds": seconds}
        print(f"  {NAMES[sampler]:17s} {steps:4d} steps: FD {fd:8.1f}   {1e3 * seconds:7.1f} ms/image", flush=True)

all_steps = sorted({steps for _, steps in results})
print(f"\nFrechet distance to real images (lower is better; floor {floor:.2f}):")
print(f"{'sampler':18s}" + "".join(f"{s:>9d}" for s in all_steps))
for sampler in SAMPLERS:
    print(f"{NAMES[sampler]:18s}" + "".join(f"{results[sampler, s]['fd']:9.2f}" if (sampler, s) in results
                                            else f"{'-':>9s}" for s in all_steps))
print(f"\ntime per image in ms ({device}; the network call dominates, so it grows with the steps):")
print(f"{'sampler':18s}" + "".join(f"{s:>9d}" for s in all_steps))
for sampler in SAMPLERS:
    print(f"{NAMES[sampler]:18s}" + "".join(f"{1e3 * results[sampler, s]['seconds']:9.1f}"
                                            if (sampler, s) in results else f"{'-':>9s}" for s in all_steps))

# %% the deterministic samplers solve one ODE: how far is each from its own many-step solution?
DETERMINISTIC = ("ddim", "euler", "dpmpp_2m")
k = settings.ode_images
limits = {sampler: run(sampler, settings.long_steps, start=x_T[:k])[0] for sampler in DETERMINISTIC}
ode_error = {(sampler, steps): float(np.abs(results[sampler, steps]["images"][:k] - limits[sampler]).mean())
             for sampler in DETERMINISTIC for steps in settings.steps}
print(f"\nmean |x_0 after n steps - x_0 after {settings.long_steps} steps| over {k} images (same x_T):")
print(f"{'sampler':18s}" + "".join(f"{s:>9d}" for s in settings.steps))
for sampler in DETERMINISTIC:
    print(f"{NAMES[sampler]:18s}" + "".join(f"{ode_error[sampler, s]:9.4f}" for s in settings.steps))
apart = {other: float(np.abs(limits["dpmpp_2m"] - limits[other]).mean()) for other in ("euler", "ddim")}
print(f"after {settings.long_steps} steps DPM-Solver++ is {apart['euler']:.4f} from Euler and {apart['ddim']:.4f} "
      "from DDIM on average. Euler and DPM-Solver++ step with the clipped x0_hat; DDIM (as diffusers) re-noises "
      "with the network's unclipped eps, so where clipping bites it follows a slightly different path")

# %% quality against steps, and convergence of the ODE samplers
fig, (ax, ax2) = plt.subplots(1, 2, figsize=(14, 4.8), layout="constrained")
markers = {"ddpm": "o", "ddim": "s", "euler": "x", "euler_ancestral": "^", "dpmpp_2m": "D"}
for sampler in SAMPLERS:
    counts = [s for s in all_steps if (sampler, s) in results]
    ax.plot(counts, [results[sampler, s]["fd"] for s in counts], marker=markers[sampler], label=NAMES[sampler],
            linestyle="--" if sampler == "euler" else "-")
ax.axhline(floor, color="gray", lw=1, linestyle=":", label="real vs real (the floor)")
ax.set(xscale="log", xlabel="sampling steps (network calls per image)", ylabel="Frechet distance to real images",
       title=f"Sample quality against steps ({settings.num_images} images each)")
ax.set_xticks(all_steps, [str(s) for s in all_steps])
ax.xaxis.set_minor_locator(plt.NullLocator())
ax.legend(fontsize=8)
ax.grid(True, which="both", alpha=0.3)
for sampler in DETERMINISTIC:
    ax2.plot(settings.steps, [ode_error[sampler, s] for s in settings.steps], marker=markers[sampler],
             label=NAMES[sampler], linestyle="--" if sampler == "euler" else "-")
ax2.set(xscale="log", yscale="log", xlabel="sampling steps",
        ylabel=f"mean |x_0 - x_0 at {settings.long_steps} steps|",
        title="Deterministic samplers: distance to their own converged result")
ax2.set_xticks(settings.steps, [str(s) for s in settings.steps])
ax2.xaxis.set_minor_locator(plt.NullLocator())
ax2.legend(fontsize=8)
ax2.grid(True, which="both", alpha=0.3)
fig.suptitle(f"{S}x{S} shapes U-Net, {SPACING} timesteps, x0_hat clipped to [-1, 1]")
save_figure(fig, out / "quality_vs_steps.png")

# %% one row per sampler, the same starting noise in every cell
grid_steps = [s for s in all_steps if all((sampler, s) in results for sampler in SAMPLERS)]
n = settings.grid_images
fig, axes = plt.subplots(len(SAMPLERS), len(grid_steps), figsize=(2.2 * len(grid_steps), 2.4 * len(SAMPLERS)),
                         squeeze=False, layout="constrained")
for r, sampler in enumerate(SAMPLERS):
    for c, steps in enumerate(grid_steps):
        ax = axes[r, c]
        cell = results[sampler, steps]
        ax.imshow(image_grid(cell["images"][:n], nrow=int(np.ceil(np.sqrt(n)))), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{steps} steps, FD {cell['fd']:.0f}", fontsize=9)
        if c == 0:
            ax.set_ylabel(NAMES[sampler], fontsize=10)
fig.suptitle("The same x_T through every sampler (rows) at growing step counts (columns)")
save_figure(fig, out / "samplers_grid.png")

# %% the claims
fd = {key: value["fd"] for key, value in results.items()}
few, many = min(settings.steps), max(settings.steps)
mid = 20 if 20 in settings.steps else settings.steps[-1]
# finite samples never reach FD = 0: compare what lies above the real-vs-real floor
# (one FD from a few dozen images is noisy, so take DDPM's best from 20 steps up)
ddpm_best = min((fd["ddpm", s], s) for (sampler, s) in fd if sampler == "ddpm" and s >= mid)[1]
print(f"FD above the floor, DDPM: {few} steps {fd['ddpm', few] - floor:.1f}; its best from {mid} steps up "
      f"({ddpm_best} steps) {fd['ddpm', ddpm_best] - floor:.1f} (must be < {settings.ddpm_margin} x the first)")
assert fd["ddpm", ddpm_best] - floor < settings.ddpm_margin * (fd["ddpm", few] - floor)

print(f"FD above the floor: DPM-Solver++ at {mid} steps {fd['dpmpp_2m', mid] - floor:.1f}; DDIM at {many} steps "
      f"{fd['ddim', many] - floor:.1f} (must be < {settings.dpm_factor} x that: 2.5x fewer network calls)")
assert fd["dpmpp_2m", mid] - floor < settings.dpm_factor * (fd["ddim", many] - floor)

best = min(SAMPLERS, key=lambda sampler: fd[sampler, many])
print(f"at {many} steps the best FD is {NAMES[best]}'s ({fd[best, many]:.1f}); stochastic samplers: "
      f"{min(fd['ddpm', many], fd['euler_ancestral', many]):.1f}, deterministic: "
      f"{min(fd[s, many] for s in DETERMINISTIC):.1f}")

# over whole trajectories the pairs part: at t = T-1 the cosine schedule's abar (2.4e-9) lies below the
# 2^-24 at which the sigma-space samplers clamp it (as diffusers does), so their first steps differ; and
# where x0_hat is clipped, DDIM re-noises with the network's unclipped eps while Euler uses the clipped x0_hat
pairs = {"DDIM - Euler": ("ddim", "euler"), "DDPM - Euler ancestral": ("ddpm", "euler_ancestral")}
for name, (first, second) in pairs.items():
    apart = float(np.abs(results[first, many]["images"] - results[second, many]["images"]).mean())
    print(f"{name} over {many} steps, same x_T and noise: mean |difference| {apart:.4f}")

for sampler in DETERMINISTIC:
    assert ode_error[sampler, many] < ode_error[sampler, few], f"{sampler} should converge as steps grow"
print(f"at {mid} steps, distance to the converged result: DPM-Solver++ {ode_error['dpmpp_2m', mid]:.4f}, "
      f"Euler {ode_error['euler', mid]:.4f}, DDIM {ode_error['ddim', mid]:.4f}. DPM-Solver++'s second order "
      "hardly shows: every sampler's first step, from t = T-1 (sigma clamped at 4096) down to a sigma of 10 to "
      "100, is a first-order jump across much of the log-SNR range, and its error dominates")
print(f"lesson 06 done in {time.perf_counter() - lesson_start:.0f} s")
