r"""Lesson 01: the forward process — how an image dissolves into noise, one small step at a time.

A diffusion model learns to undo a fixed noising process. This lesson builds that process and
checks, numerically, the one fact everything else rests on.

One step adds a little Gaussian noise and shrinks what was there, so the overall variance stays 1:

    q(x_t | x_{t-1}) = N(x_t; sqrt(1 - beta_t) x_{t-1}, beta_t I),     t = 0 .. T-1 (0-based),

with a schedule of small variances beta_t. Write alpha_t = 1 - beta_t and abar_t = prod_{s<=t} alpha_s.
Because a sum of independent Gaussians is Gaussian, t steps collapse into one:

    q(x_t | x_0) = N(x_t; sqrt(abar_t) x_0, (1 - abar_t) I)
    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps,       eps ~ N(0, I)          ("closed form")

so training can jump to any t directly. abar_t is the fraction of the signal's variance left at
step t, and SNR(t) = abar_t / (1 - abar_t) is the signal-to-noise ratio. The schedule decides how
fast abar_t falls:

    linear         beta from 1e-4 to 0.02 (DDPM). abar reaches ~0 well before T: the last
                   few hundred steps are almost pure noise.
    cosine         abar_t = f(t)/f(0), f(t) = cos^2(((t/T) + s)/(1 + s) * pi/2) (Nichol & Dhariwal):
                   destroys information more evenly across t.
    scaled_linear  linear in sqrt(beta), 0.00085 .. 0.012 (Stable Diffusion's latent schedule):
                   gentler, and never reaches pure noise (abar_{T-1} = 0.0047).

You will see: the noising strip of a shapes image under the linear and cosine schedules, the
abar_t and log-SNR curves of all three, and a Monte-Carlo check that iterating the one-step
process really gives the closed form (same mean, same variance).

Read beside: minidiff/diffusion/schedule.py (NoiseSchedule.make, q_sample, snr; the module
docstring derives the closed form), minidiff/datasets/shapes.py.

Run: python lessons/01_forward_process.py [--quick] [--smoke] [--device cpu|gpu]
"""
# %% setup: `import minidiff` from this clone, as a script or in a notebook kernel (which has no __file__)
import sys, pathlib  # noqa: E401
_lessons = pathlib.Path(globals().get("__file__", "lessons/_")).resolve().parent
sys.path.insert(0, str(next((p for p in (_lessons.parent, pathlib.Path.cwd(), pathlib.Path.cwd().parent)
                             if (p / "minidiff" / "__init__.py").is_file()), _lessons.parent)))
import minidiff  # noqa: F401,E402  (before NumPy: it sets how OpenBLAS's threads wait, minidiff/__init__.py)

# %% settings
import dataclasses

import numpy as np

from minidiff import backend
from minidiff.datasets import shapes
from minidiff.diffusion.schedule import SCHEDULES, NoiseSchedule
from minidiff.utils import output_dir, parse_lesson_args, pyplot, save_figure, to_uint8


@dataclasses.dataclass
class Settings:
    num_images: int = 3          # rows of the noising strip
    strip_columns: int = 10      # evenly spaced t from 0 to T-1
    chains: int = 20000          # Monte-Carlo chains iterated through q(x_t | x_{t-1})
    pixels: int = 16             # pixels of one image followed by every chain
    z_limit: float = 5.0         # |mean error| allowed, in standard errors of the mean


FULL = Settings()
QUICK = Settings(chains=6000)
SMOKE = Settings(num_images=2, strip_columns=5, chains=600, pixels=8)

args = parse_lesson_args('Lesson 01: the forward process — how an image dissolves into noise, one small step at a time.')
settings = SMOKE if args.smoke else QUICK if args.quick else FULL
out_dir = output_dir("01_forward_process", args.out)
xp = backend.get_xp()
plt = pyplot()
T = 1000
schedules = {name: NoiseSchedule.make(name, T) for name in SCHEDULES}

# %% 1. the three schedules: how much signal survives
print("abar_t, the fraction of x_0's variance left after step t:")
checkpoints = [0, 99, 249, 499, 749, 999]
print(f"{'t':>14}" + "".join(f"{t:>10d}" for t in checkpoints))
for name, s in schedules.items():
    print(f"{name:>14}" + "".join(f"{s.alphas_cumprod[t]:10.4f}" for t in checkpoints))
    assert np.all(np.diff(s.alphas_cumprod) < 0), f"{name}: abar_t must fall at every step"
half = {name: s.alphas_cumprod[T // 2 - 1] for name, s in schedules.items()}
print(f"halfway (t = {T // 2 - 1}): linear keeps {half['linear']:.3f} of the signal, cosine {half['cosine']:.3f}")
assert half["cosine"] > 4 * half["linear"], "cosine keeps far more signal halfway than linear"
assert schedules["linear"].alphas_cumprod[-1] < 1e-4, "linear ends in (almost) pure noise"

# %% 2. the noising strip: x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, one eps for the whole row
data = shapes.sample(settings.num_images, seed=args.seed, size=32)
x0 = backend.to_device(data["images"])                                   # (N, 3, 32, 32) in [-1, 1]
rng = backend.rng(args.seed)
eps = rng.standard_normal(x0.shape, dtype=np.float32)
strip_t = np.linspace(0, T - 1, settings.strip_columns).round().astype(int)


def noising_strip(named_schedules, path, title, marks=None):
    """Draw x_t for each image at the strip's t under each schedule (a block of rows per schedule), save it to
    `path`, and return {(name, t): correlation of x_t with x_0}. `marks`: {name: t}, a red frame on that column."""
    rows = len(named_schedules) * settings.num_images
    fig, axes = plt.subplots(rows, settings.strip_columns, constrained_layout=True, squeeze=False,
                             figsize=(1.3 * settings.strip_columns, 1.35 * rows))
    correlation = {}
    for row_block, (name, s) in enumerate(named_schedules.items()):
        for col, t in enumerate(strip_t):
            xt = s.q_sample(x0, int(t), eps)                                # closed form, one t for the batch
            # how much x_t still looks like x_0: the correlation of their pixels
            a, b = backend.to_numpy(x0).ravel(), backend.to_numpy(xt).ravel()
            correlation[name, int(t)] = float(np.corrcoef(a, b)[0, 1])
            # show x_t clipped to [-1, 1] (noise makes it wander outside)
            tiles = to_uint8(xp.clip(xt, -1, 1))
            for i in range(settings.num_images):
                ax = axes[row_block * settings.num_images + i, col]
                ax.imshow(tiles[i])
                ax.set_xticks([]), ax.set_yticks([])
                if (marks or {}).get(name) == int(t):
                    for spine in ax.spines.values():
                        spine.set(color="red", linewidth=2.5)
                if row_block == 0 and i == 0:
                    ax.set_title(f"t = {t}", fontsize=9)
                if col == 0:
                    ax.set_ylabel(name, fontsize=9)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)
    return correlation


correlation = noising_strip({name: schedules[name] for name in ("linear", "cosine")}, out_dir / "noising_strip.png",
                            "Forward process x_t = sqrt(abar_t) x_0 + sqrt(1-abar_t) eps, same eps in every column:\n"
                            "linear schedule (top rows) vs cosine schedule (bottom rows)")

print("correlation of x_t with x_0 (1 = untouched, 0 = pure noise):")
for name in ("linear", "cosine"):
    print(f"  {name:>6}: " + "  ".join(f"t={t}: {correlation[name, int(t)]:.2f}" for t in strip_t))
mid = int(strip_t[len(strip_t) // 2])
assert correlation["cosine", mid] > correlation["linear", mid], "cosine keeps more of the image mid-way"
assert abs(correlation["linear", T - 1]) < 0.05, "at t = T-1 the linear schedule has erased the image"
assert correlation["linear", 0] > 0.99, "at t = 0 the image is almost untouched"

# %% 3. abar_t and SNR(t) = abar_t / (1 - abar_t) for every schedule
fig, (ax_abar, ax_snr) = plt.subplots(1, 2, figsize=(11, 4))
steps = np.arange(T)
for name, s in schedules.items():
    ax_abar.plot(steps, s.alphas_cumprod, label=name)
    ax_snr.semilogy(steps, s.snr(steps), label=name)
    assert np.all(np.diff(s.snr(steps)) < 0), f"{name}: SNR must fall monotonically"
zero_snr = NoiseSchedule.make("scaled_linear", T, rescale_zero_terminal_snr=True)
ax_abar.plot(steps, zero_snr.alphas_cumprod, "--", label="scaled_linear, zero terminal SNR")
ax_snr.semilogy(steps[:-1], zero_snr.snr(steps[:-1]), "--", label="scaled_linear, zero terminal SNR")
ax_abar.set(title="abar_t: signal variance left", xlabel="timestep t", ylabel="abar_t")
ax_snr.set(title="SNR(t) = abar_t / (1 - abar_t)  (log scale)", xlabel="timestep t", ylabel="SNR")
ax_abar.legend(fontsize=8), ax_snr.legend(fontsize=8)
save_figure(fig, out_dir / "schedules_abar_snr.png")
for name, s in schedules.items():
    print(f"SNR {name:>13}: t=0 {s.snr(0):9.1f}   t=499 {s.snr(499):7.3f}   t=999 {s.snr(999):.2e}")
print(f"zero terminal SNR rescale: abar_(T-1) = {zero_snr.alphas_cumprod[-1]:.1e}, "
      f"abar_0 kept at {zero_snr.alphas_cumprod[0]:.5f}")
assert zero_snr.alphas_cumprod[-1] == 0 and zero_snr.alphas_cumprod[0] == schedules["scaled_linear"].alphas_cumprod[0]

# %% 4. closed form == iterated one-step noising (Monte Carlo)
# Follow a few pixels of one image through x_t = sqrt(alpha_t) x_{t-1} + sqrt(beta_t) eps_t, many chains at
# once, and compare the empirical mean and variance at a few t with sqrt(abar_t) x_0 and 1 - abar_t.
pixels = backend.to_numpy(x0[0]).ravel()[:: (3 * 32 * 32) // settings.pixels][: settings.pixels]
check_t = [9, 99, 499, 999]


def iterate_and_compare(s, pixels, rng, label=""):
    """Follow `pixels` through T one-step noisings, many chains at once; at each t in check_t compare the
    iterated and the closed-form samples with the theory. Returns (iterated, closed, worst z, worst var error)."""
    start = xp.asarray(np.broadcast_to(pixels, (settings.chains, len(pixels))).astype(np.float64))
    x = start.copy()
    iterated, closed = {}, {}
    for t in range(s.num_steps):
        noise = rng.standard_normal(x.shape, dtype=np.float64)
        x = np.sqrt(s.alphas[t]) * x + np.sqrt(s.betas[t]) * noise            # one step of q(x_t | x_{t-1})
        if t in check_t:
            iterated[t] = backend.to_numpy(x)
            closed[t] = backend.to_numpy(s.q_sample(start, t, rng.standard_normal(x.shape, dtype=np.float64)))
    print(f"{label}{settings.chains} chains, {len(pixels)} pixels; theory: mean sqrt(abar_t) x_0, variance 1 - abar_t")
    worst_z, worst_var = 0.0, 0.0
    for t in check_t:
        mean_theory = np.sqrt(s.alphas_cumprod[t]) * pixels
        var_theory = 1 - s.alphas_cumprod[t]
        standard_error = np.sqrt(var_theory / settings.chains)
        for kind, samples in (("iterated", iterated[t]), ("closed", closed[t])):
            z = np.abs(samples.mean(axis=0) - mean_theory).max() / standard_error
            var_error = np.abs(samples.var(axis=0) / var_theory - 1).max()
            worst_z, worst_var = max(worst_z, z), max(worst_var, var_error)
            print(f"  t={t:3d} {kind:>8}: max |mean - theory| = {z:4.2f} standard errors, "
                  f"max |var / theory - 1| = {var_error:.3f}")
    return iterated, closed, worst_z, worst_var


s = schedules["linear"]
iterated, closed, worst_z, worst_var = iterate_and_compare(s, pixels, rng)
var_limit = settings.z_limit * np.sqrt(2 / settings.chains)               # std of a sample variance: sqrt(2/N)
print(f"worst: {worst_z:.2f} standard errors (limit {settings.z_limit}), variance {worst_var:.3f} "
      f"(limit {var_limit:.3f})")
assert worst_z < settings.z_limit and worst_var < var_limit, "iterating q(x_t|x_{t-1}) must match the closed form"

fig, axes = plt.subplots(1, len(check_t), figsize=(3.3 * len(check_t), 3.2), constrained_layout=True)
for ax, t in zip(axes, check_t):
    mu, var = np.sqrt(s.alphas_cumprod[t]) * pixels[0], 1 - s.alphas_cumprod[t]
    grid = np.linspace(mu - 4 * np.sqrt(var), mu + 4 * np.sqrt(var), 200)
    ax.hist(iterated[t][:, 0], bins=40, density=True, alpha=0.5, label=f"iterated {t + 1} steps")
    ax.hist(closed[t][:, 0], bins=40, density=True, alpha=0.5, label="closed form")
    ax.plot(grid, np.exp(-(grid - mu) ** 2 / (2 * var)) / np.sqrt(2 * np.pi * var), "k", lw=1,
            label="N(sqrt(abar) x0, 1-abar)")
    ax.set(title=f"t = {t}", xlabel="pixel value x_t", ylabel="density", xlim=(grid[0], grid[-1]))
axes[0].legend(fontsize=7)
fig.suptitle(f"One pixel (x_0 = {pixels[0]:.2f}): iterating q(x_t|x_(t-1)) vs sampling q(x_t|x_0) directly",
             fontsize=10)
save_figure(fig, out_dir / "closed_form_vs_iterated.png")
print("done: the closed form is exact, so training can noise any x_0 to any t in one step.")

# %% Exercises
# Run one with MINIDIFF_EXERCISE=N python lessons/01_forward_process.py --quick (several: MINIDIFF_EXERCISE=1,3;
# in a notebook: set EXERCISE below).
#
#   1. Predict the strip, then look. my_betas(T) below is a schedule of your own (to start: a constant
#      beta_t = 0.005). Before running, work out on paper at which t its abar_t = prod (1 - beta_s) first falls
#      below 0.5 (half the signal's variance gone), and set MY_HALF_T_GUESS. The lesson draws its noising strip
#      under the linear one, frames the column nearest the true answer, and says how close you were (10%).
#      Then change my_betas (a steeper line? a cosine of your own?) and predict again.
#   2. Check the closed form on your own schedule. Fill in my_alphas_cumprod(betas); the lesson compares it with
#      NoiseSchedule(betas).alphas_cumprod, then iterates one-step noising on my_betas for many chains and checks
#      the closed form as section 4 did.
#   3. Read the SNR figure. Order the three schedules by the t at which SNR(t) first drops below 1 (signal and
#      noise equally strong), earliest first, and set MY_SNR_ORDER; the lesson computes the crossings.
import os

EXERCISE = os.environ.get("MINIDIFF_EXERCISE", "")
MY_HALF_T_GUESS = None          # exercise 1: an integer t
MY_SNR_ORDER = None             # exercise 3: e.g. ["cosine", "linear", "scaled_linear"]


def my_betas(num_steps):
    """Exercise 1 and 2: your schedule, beta_t for t = 0 .. num_steps-1."""
    return np.full(num_steps, 0.005)


def my_alphas_cumprod(betas):
    """Exercise 2: abar_t = prod_{s<=t} (1 - beta_s), from the betas alone."""
    return None                 # replace with your one line


if "1" in EXERCISE.split(","):
    mine = NoiseSchedule(my_betas(T), name="mine")
    half_t = int(np.argmax(mine.alphas_cumprod < 0.5))
    frame = int(strip_t[np.abs(strip_t - half_t).argmin()])
    noising_strip({"linear": schedules["linear"], "mine": mine}, out_dir / "exercise_1_my_strip.png",
                  f"Your schedule (bottom rows) under the linear one: abar_t < 0.5 from t = {half_t} "
                  f"(red frame: the nearest column, t = {frame})", marks={"mine": frame})
    print(f"exercise 1: your schedule's abar_t first falls below 0.5 at t = {half_t}; your guess: {MY_HALF_T_GUESS}")
    if MY_HALF_T_GUESS is not None:
        assert abs(MY_HALF_T_GUESS - half_t) <= 0.1 * half_t + 1, "exercise 1: more than 10% off; look at why"
        print("  within 10%: well predicted")
if "2" in EXERCISE.split(","):
    betas = my_betas(T)
    guess = my_alphas_cumprod(betas)
    if guess is None:
        print("exercise 2: fill in my_alphas_cumprod first")
    else:
        error = np.abs(np.asarray(guess) - NoiseSchedule(betas).alphas_cumprod).max()
        print(f"exercise 2: max |yours - NoiseSchedule(betas).alphas_cumprod| = {error:.1e}")
        assert error < 1e-12, "exercise 2: your abar_t differs from the schedule's"
    _, _, z, var_error = iterate_and_compare(NoiseSchedule(betas, name="mine"), pixels, rng, label="your schedule: ")
    print(f"exercise 2: worst {z:.2f} standard errors, variance {var_error:.3f} (limits {settings.z_limit}, "
          f"{var_limit:.3f})")
    assert z < settings.z_limit and var_error < var_limit, "exercise 2: the closed form must hold for any schedule"
if "3" in EXERCISE.split(","):
    crossing = {name: int(np.argmax(s.snr(steps) < 1)) for name, s in schedules.items()}
    order = sorted(crossing, key=crossing.get)
    print("exercise 3: SNR(t) first below 1 at " + ", ".join(f"{k} t = {v}" for k, v in crossing.items())
          + f"; order {order}; yours {MY_SNR_ORDER}")
    assert MY_SNR_ORDER in (None, order), f"exercise 3: not this time; the order is {order}"
