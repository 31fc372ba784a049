r"""Lesson 03: DDPM on 2-D points — train a noise predictor, then sample with DDPM and DDIM.

Two-dimensional data is the best place to watch diffusion work: every sample is a dot you can
plot, a model trains in seconds on a CPU, and you can follow single points as they are denoised.

The forward process (lesson 01) noises a data point x_0 in closed form,

    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps,      eps ~ N(0, I),   t = 0 .. T-1,

and by t = T-1 almost nothing of x_0 is left: x_{T-1} is close to N(0, I). A network
eps_theta(x_t, t) learns to tell the noise apart from the point by minimising L_simple (lesson 02):

    L_simple = E_{x_0, t, eps} || eps - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t) ||^2.

Here eps_theta is a small MLP (minidiff/models/mlp.py): a sinusoidal embedding of t, added to a
linear projection of x_t, then residual Linear-SiLU blocks. It is trained with AdamW, gradient
clipping, a warmup + cosine learning rate and an EMA of its weights (minidiff/optim.py):

    shadow <- decay * shadow + (1 - decay) * theta      after every optimiser step,

an average over the last ~1 / (1 - decay) steps that smooths out the noise of single steps.

Sampling runs the process backwards from x_T ~ N(0, I):

  DDPM (ancestral): x_{t-1} ~ q(x_{t-1} | x_t, x_0 = x0_hat), the Gaussian posterior of lesson 02
      with x0_hat = (x_t - sqrt(1 - abar_t) eps_theta) / sqrt(abar_t); fresh noise at every step,
      so it needs all T = 1000 steps.
  DDIM (eta = 0): x_{t'} = sqrt(abar_t') x0_hat + sqrt(1 - abar_t') eps_theta — no fresh noise,
      big jumps t -> t' allowed: a deterministic path (an ODE) from each x_T to its x_0.

What 50 DDIM steps buy, honestly: close to DDPM's 1000, not equal. Two errors remain. Step-size
error: 50 big jumps cut the ODE's corners (250 DDIM steps remove most of it, as the table shows).
Model error: where eps_theta is wrong, a deterministic path follows the mistake to the end, while
DDPM's fresh noise lets each point be corrected later. Both are worst between the arms of the
roll, where the data has no points and the network little practice. After 3000 training steps
(exercise 1) DDIM-50 visibly fills the inside of the spiral: 5.3% of its points land off the roll,
DDPM's 0.7%. After quick mode's 10,000 steps: 0.7% against DDPM's 0.1%, and 250 DDIM steps bring
it to 0.2%. So "50 steps suffice" holds for a well-trained model, and the table below says by how much.

How good are the samples? Two numbers. The maximum mean discrepancy (MMD) with a Gaussian (RBF)
kernel k,

    MMD^2(P, Q) = E k(x, x') + E k(y, y') - 2 E k(x, y),    x, x' ~ P,  y, y' ~ Q,

is 0 when the two distributions are equal and grows as they differ; with a finite number of
points a second draw of the data itself scores above 0 (the floor no model can beat). And the
fraction of samples "off the roll", farther than 0.15 from every one of 20,000 training
points: the stray dots a learner sees between the arms.

You will see: the loss curve (loss.png); DDIM samples from the raw weights and from their EMA as
training goes (ema_vs_raw.png: the EMA reaches the floor by mid-training, the raw weights only once
the cosine learning rate has decayed, which smooths the same noise); each sampler's samples and
scores (samples.png); the DDPM cloud condensing late, at small t (reverse_process.png); and four
single trajectories, DDPM's coloured by t beside DDIM's from the same x_T (trajectories.png).

Read beside: minidiff/models/mlp.py, minidiff/datasets/toy2d.py, minidiff/diffusion/schedule.py
(q_sample, posterior), minidiff/diffusion/loss.py (training_targets, diffusion_loss),
minidiff/diffusion/samplers.py (ddpm_step, ddim_step, sample), minidiff/optim.py (AdamW, EMA,
clip_grad_norm, warmup_cosine), minidiff/checkpoint.py; the loop here is written out in full,
minidiff/train/loop.py (fit) is the same loop grown up, which later lessons call.

Run: python lessons/03_ddpm_2d.py [--quick] [--smoke] [--device cpu|gpu]
"""
# %% setup: `import minidiff` from this clone, as a script or in a notebook kernel (which has no __file__)
import sys, pathlib  # noqa: E401
_lessons = pathlib.Path(globals().get("__file__", "lessons/_")).resolve().parent
sys.path.insert(0, str(next((p for p in (_lessons.parent, pathlib.Path.cwd(), pathlib.Path.cwd().parent)
                             if (p / "minidiff" / "__init__.py").is_file()), _lessons.parent)))
import os  # noqa: E402
# this lesson's matrices are tiny (256 x 128): BLAS threads only wait on each other, worst on a busy machine
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import minidiff  # noqa: F401,E402  (before NumPy: it sets how OpenBLAS's threads wait, minidiff/__init__.py)

# %% settings
import dataclasses
import time

import numpy as np

from minidiff import backend
from minidiff.checkpoint import load_checkpoint, load_into, save_checkpoint
from minidiff.datasets.toy2d import sample_toy
from minidiff.diffusion import samplers
from minidiff.diffusion.loss import diffusion_loss, training_targets
from minidiff.diffusion.schedule import NoiseSchedule
from minidiff.models.mlp import MLPConfig, MLPDenoiser
from minidiff.nn.module import no_grad
from minidiff.optim import EMA, AdamW, clip_grad_norm, warmup_cosine
from minidiff.utils import output_dir, parse_lesson_args, pyplot, save_figure


@dataclasses.dataclass
class Settings:
    model: MLPConfig
    train_steps: int
    batch_size: int = 256
    lr: float = 2e-3
    warmup_steps: int = 100
    ema_decay: float = 0.999
    short_train_steps: int = 3000   # exercise 1: too little training
    eval_every: int = 1000       # raw vs EMA weights: a DDIM sample every this many training steps
    eval_samples: int = 1000     # points in each of those samples
    num_samples: int = 2000      # points drawn by each sampler (and from the data, to compare)
    ddpm_steps: int = 1000       # ancestral sampling needs every step
    ddim_steps: int = 50
    ddim_more_steps: int = 250
    mmd_margin: float = 0.2      # samples' MMD^2 must be below this fraction of the Gaussian's
    max_off_roll: float = 0.02   # fraction of DDPM's and DDIM's samples allowed off the roll


FULL = Settings(MLPConfig.full(), train_steps=20000, num_samples=4000, eval_every=2000)
QUICK = Settings(MLPConfig.quick(), train_steps=10000)
SMOKE = Settings(MLPConfig(hidden_dim=64, num_blocks=2, time_embed_dim=16), train_steps=400, lr=5e-3,
                 warmup_steps=10, ema_decay=0.99, short_train_steps=100, eval_every=200, eval_samples=200, num_samples=300, ddpm_steps=40,
                 ddim_steps=10, ddim_more_steps=20, mmd_margin=1.0, max_off_roll=1.0)

args = parse_lesson_args('Lesson 03: DDPM on 2-D points — train a noise predictor, then sample with DDPM and DDIM.')
settings = SMOKE if args.smoke else QUICK if args.quick else FULL
out = output_dir("03_ddpm_2d", args.out)
device = backend.device()
plt = pyplot()
DATASET = "swiss_roll"
OFF_ROLL = 0.15                  # a sample farther than this from every training point is "off the roll"
print(f"device {device}; {DATASET}; {settings.train_steps} training steps, model {settings.model}")


def mmd2(a, b, bandwidths=(0.05, 0.1, 0.2, 0.5, 1.0)):
    """Biased estimate of MMD^2 between point sets a (n, 2) and b (m, 2), host float64, with
    k(x, y) = sum over bandwidths s of exp(-|x - y|^2 / (2 s^2)) (several widths: fine and coarse)."""
    a, b = (backend.to_numpy(v).astype(np.float64) for v in (a, b))

    def mean_kernel(x, y):
        sq_dist = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2 * x @ y.T      # |x - y|^2
        return sum(np.exp(-np.maximum(sq_dist, 0) / (2 * s * s)).mean() for s in bandwidths)

    return mean_kernel(a, a) + mean_kernel(b, b) - 2 * mean_kernel(a, b)


# %% the data and the noise schedule
pool = backend.to_device(sample_toy(DATASET, 20000, seed=args.seed), device)   # training points
reference = sample_toy(DATASET, settings.num_samples, seed=args.seed + 1)      # held out, for MMD
schedule = NoiseSchedule.make("linear", num_steps=1000)
abar = schedule.alphas_cumprod
print(f"data: mean {backend.to_numpy(pool).mean(0).round(2)}, std {backend.to_numpy(pool).std(0).round(2)} "
      "(unit scale, like the noise)")
print(f"schedule: abar_0 = {abar[0]:.4f} (x_0 kept), abar_T-1 = {abar[-1]:.2e} "
      f"(sqrt = {np.sqrt(abar[-1]):.4f} of x_0 left: x_T is practically N(0, I))")
assert np.sqrt(abar[-1]) < 0.01

# %% train eps_theta with L_simple; every eval_every steps, sample with the raw and with the EMA weights
model = MLPDenoiser(settings.model, seed=args.seed).to(device)
optimizer = AdamW(model, lr=settings.lr, weight_decay=0.0)
ema = EMA(model, decay=settings.ema_decay)
rng = backend.rng(args.seed)
xp = backend.get_array_module(pool)
print(f"model: {model.num_parameters():,} parameters; EMA decay {settings.ema_decay} "
      f"(an average over the last ~{1 / (1 - settings.ema_decay):.0f} steps)")


def eps_theta(x, t):
    return model(x, t)


def ddim_sample(x_T, steps=settings.ddim_steps, eta=0.0, seed=None):
    """DDIM from x_T with whatever weights the model holds now (eval mode, nothing cached)."""
    with no_grad():
        return backend.to_numpy(samplers.sample(eps_theta, schedule, x_T.shape, sampler="ddim", steps=steps, x_T=x_T,
                                                eta=eta, rng=None if seed is None else backend.rng(seed),
                                                progress=False))


def off_roll(points):
    """Fraction of points farther than OFF_ROLL from every training point (the stray dots between the arms)."""
    points, data = backend.to_numpy(points).astype(np.float64), backend.to_numpy(pool).astype(np.float64)
    nearest = np.concatenate([np.sqrt(np.maximum(((chunk[:, None] - data[None]) ** 2).sum(-1).min(1), 0))
                              for chunk in np.array_split(points, max(1, len(points) // 250))])
    return float((nearest > OFF_ROLL).mean())


eval_x_T = backend.rng(args.seed + 20).standard_normal((settings.eval_samples, 2), dtype=np.float32)
eval_reference = sample_toy(DATASET, settings.eval_samples, seed=args.seed + 3)
history = {"step": [], "raw": [], "EMA": []}      # MMD^2 of a DDIM sample to held-out data, during training
snapshots = {}                                    # the samples at the middle evaluation, for the figure
def train(model, optimizer, ema, num_steps, evaluate=None):
    """The training loop: num_steps of AdamW on L_simple, the EMA updated after each. Calls evaluate(step) every
    eval_every steps. Returns the per-step losses (host) and the seconds spent in training steps."""
    losses = []                                   # device scalars: no host sync inside the loop
    seconds = 0.0
    for step in range(1, num_steps + 1):
        start = time.perf_counter()
        x0 = pool[rng.integers(0, pool.shape[0], size=settings.batch_size)]      # (B, 2)
        x_t, t, noise, _ = training_targets(schedule, x0, rng)                    # t ~ U{0..T-1}, eps ~ N(0, I)
        model.zero_grad()
        eps_hat = model(x_t, t)                                                   # eps_theta(x_t, t)
        loss, d_eps_hat = diffusion_loss(eps_hat, x0, noise, t, schedule)        # |eps - eps_hat|^2
        model.backward(d_eps_hat)
        clip_grad_norm(model, max_norm=1.0)
        optimizer.step(lr=warmup_cosine(step - 1, settings.lr, settings.warmup_steps, num_steps,
                                        min_lr=settings.lr / 20))
        ema.update()                                                              # shadow <- d shadow + (1-d) theta
        losses.append(loss)
        seconds += time.perf_counter() - start
        if evaluate is not None and step % settings.eval_every == 0:
            evaluate(step)
    return backend.to_numpy(xp.stack(losses)).astype(np.float64), seconds


def evaluate(step):
    """DDIM samples from the same x_T with the raw weights and with their EMA, scored against held-out data."""
    model.eval()
    raw = ddim_sample(eval_x_T)
    ema.swap(model)                                                               # the model holds the average now
    averaged = ddim_sample(eval_x_T)
    ema.swap(model)                                                               # and its own weights again
    model.train()
    history["step"].append(step)
    history["raw"].append(mmd2(raw, eval_reference))
    history["EMA"].append(mmd2(averaged, eval_reference))
    if len(history["step"]) == (settings.train_steps // settings.eval_every + 1) // 2:
        snapshots.update(step=step, raw=raw, EMA=averaged)


losses, train_seconds = train(model, optimizer, ema, settings.train_steps, evaluate)
window = max(1, len(losses) // 50)
first, last = losses[:10].mean(), losses[-window:].mean()
print(f"trained {settings.train_steps} steps in {train_seconds:.1f} s "
      f"({1e3 * train_seconds / settings.train_steps:.1f} ms/step)")
print(f"L_simple: {first:.3f} over the first 10 steps -> {last:.3f} over the last {window} "
      "(1.0 = guessing eps = 0; the floor is above 0 because eps cannot be fully recovered from x_t)")
assert last < (0.8 if args.smoke else 0.4) * first, "the loss did not go down enough"

fig, ax = plt.subplots(figsize=(7, 4))
ax.plot(losses, lw=0.5, alpha=0.4, label="per step")
smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
ax.plot(np.arange(window - 1, len(losses)), smooth, lw=2, label=f"mean of {window} steps")
ax.set(title="Training loss L_simple (MLP on the swiss roll): nearly flat after ~2000 steps,\n"
             "while the samples keep improving (ema_vs_raw.png): the loss is a blunt guide", xlabel="training step",
       ylabel="mean |eps - eps_theta(x_t, t)|^2", ylim=(0, max(1.2, float(smooth.max()) * 1.05)))
ax.legend()
save_figure(fig, out / "loss.png")

# %% raw weights vs their EMA, over training
# what a perfect model would score with this few points: the mean over a few fresh draws of the data itself
eval_floor = np.mean([mmd2(sample_toy(DATASET, settings.eval_samples, seed=args.seed + 30 + k), eval_reference)
                      for k in range(4)])
print(f"DDIM-{settings.ddim_steps} samples ({settings.eval_samples} points) during training, MMD^2 to held-out data "
      f"(fresh draws of the data score {eval_floor:.4f} on average):")
for step, raw, averaged in zip(history["step"], history["raw"], history["EMA"]):
    print(f"  step {step:6d}: raw weights {raw:.4f}   EMA {averaged:.4f}")
ema_wins = sum(e < r for r, e in zip(history["raw"], history["EMA"]))
print(f"the EMA's samples are closer to the data at {ema_wins} of {len(history['step'])} evaluations")
if not args.smoke:
    assert ema_wins >= 0.6 * len(history["step"]), "averaging the weights should help at most evaluations"

fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), constrained_layout=True)
axes[0].plot(history["step"], history["raw"], "o-", label="raw weights theta")
axes[0].plot(history["step"], history["EMA"], "o-", label=f"EMA of theta (decay {settings.ema_decay})")
axes[0].axhline(eval_floor, color="k", ls=":", label="fresh draws of the data (the floor, within noise)")
axes[0].axvline(snapshots["step"], color="grey", lw=0.8)
axes[0].set(title=f"DDIM-{settings.ddim_steps} samples ({settings.eval_samples} points) during training",
            xlabel="training step",
            ylabel="MMD^2 to held-out data (lower is better)", yscale="log")
axes[0].legend(fontsize=8)
for ax, name in zip(axes[1:], ("raw", "EMA")):
    points = snapshots[name]
    ax.scatter(eval_reference[:, 0], eval_reference[:, 1], s=2, c="lightgray")
    ax.scatter(points[:, 0], points[:, 1], s=3, c="tab:blue" if name == "raw" else "tab:orange")
    ax.set(title=f"{name} weights at step {snapshots['step']} (grey line): MMD^2 {mmd2(points, eval_reference):.4f}",
           xlim=(-3, 3), ylim=(-3, 3), aspect="equal", xlabel="x1", ylabel="x2")
    ax.title.set_fontsize(10)
fig.suptitle("Sampling from the EMA of the weights instead of the weights themselves (same x_T)")
save_figure(fig, out / "ema_vs_raw.png")

# %% sample with DDPM (1000 steps) and DDIM (50 and 250 steps), using the EMA weights
model.eval()
ema.swap(model)                               # the model now holds the averaged weights
x_T = backend.rng(args.seed + 10).standard_normal((settings.num_samples, 2), dtype=np.float32)   # x_T ~ N(0, I)
with no_grad():
    start = time.perf_counter()
    ddpm, ddpm_xs, _ = samplers.sample(eps_theta, schedule, x_T.shape, sampler="ddpm", steps=settings.ddpm_steps,
                                       x_T=x_T, rng=backend.rng(args.seed + 11), return_intermediates=True,
                                       progress=False)
    ddpm_seconds = time.perf_counter() - start
    start = time.perf_counter()
    ddim, ddim_xs, _ = samplers.sample(eps_theta, schedule, x_T.shape, sampler="ddim", steps=settings.ddim_steps,
                                       x_T=x_T, return_intermediates=True, progress=False)
    ddim_seconds = time.perf_counter() - start
ddim_more = ddim_sample(x_T, steps=settings.ddim_more_steps)
ema.swap(model)                               # back to the raw weights
ddim_raw = ddim_sample(x_T)

gaussian = np.random.default_rng(args.seed + 12).standard_normal((settings.num_samples, 2))
data_again = sample_toy(DATASET, settings.num_samples, seed=args.seed + 2)
ddpm_name, ddim_name = f"DDPM, {settings.ddpm_steps} steps (EMA)", f"DDIM, {settings.ddim_steps} steps (EMA)"
more_name = f"DDIM, {settings.ddim_more_steps} steps (EMA)"
rows = {"N(0, I) noise": gaussian, ddpm_name: ddpm, ddim_name: ddim, more_name: ddim_more,
        f"DDIM, {settings.ddim_steps} steps (raw weights)": ddim_raw, "another draw of the data (floor)": data_again}
scores = {name: mmd2(points, reference) for name, points in rows.items()}
strays = {name: off_roll(points) for name, points in rows.items()}
print(f"sampling {settings.num_samples} points: DDPM {ddpm_seconds:.1f} s, DDIM {ddim_seconds:.1f} s")
print(f"{'':38s} {'MMD^2':>8s} {'/ floor':>8s} {'off the roll':>13s}   (held-out data; lower is better)")
floor = scores["another draw of the data (floor)"]
for name in rows:
    print(f"  {name:36s} {scores[name]:8.5f} {scores[name] / floor:8.2f} {100 * strays[name]:12.1f}%")
noise_score = scores["N(0, I) noise"]
for name in (ddpm_name, ddim_name):
    ratio = scores[name] / noise_score
    print(f"{name}: {ratio:.3f} of the noise's MMD^2 (must be < {settings.mmd_margin}), "
          f"{100 * strays[name]:.1f}% off the roll (must be < {100 * settings.max_off_roll:.0f}%)")
    assert np.isfinite(scores[name]) and ratio < settings.mmd_margin
    assert strays[name] < settings.max_off_roll, f"{name}: too many samples between the arms"
if not args.smoke:
    assert scores[more_name] < scores[ddim_name], "more DDIM steps must remove step-size error"

fig, axes = plt.subplots(1, 5, figsize=(20, 4.6), sharex=True, sharey=True, constrained_layout=True)
panels = [("data (held out)", reference, "k"), ("N(0, I): where sampling starts", gaussian, "tab:gray"),
          (ddpm_name, ddpm, "tab:blue"), (ddim_name, ddim, "tab:orange"), (more_name, ddim_more, "tab:red")]
for ax, (title, points, colour) in zip(axes, panels):
    if title.startswith(("DDPM", "DDIM")):
        ax.scatter(reference[:, 0], reference[:, 1], s=2, c="lightgray", label="data")
        title += f"\nMMD^2 {scores[title]:.4f} ({scores[title] / floor:.2f}x floor), {100 * strays[title]:.1f}% off"
    ax.scatter(points[:, 0], points[:, 1], s=2, c=colour)
    ax.set(title=title, xlim=(-3, 3), ylim=(-3, 3), aspect="equal", xlabel="x1")
    ax.title.set_fontsize(10)
axes[0].set_ylabel("x2")
fig.suptitle(f"Samples from the trained MLP over the data (MMD^2 of pure noise {noise_score:.4f}, of another draw "
             f"of the data {floor:.4f})")
save_figure(fig, out / "samples.png")


# %% follow points through the reverse process
def trajectories(x_start, steps_after):
    """(steps + 1, N, 2) host array: x_T, then the sample after each step."""
    return np.stack([backend.to_numpy(x_start)] + [backend.to_numpy(x) for x in steps_after])


ddpm_path, ddim_path = trajectories(x_T, ddpm_xs), trajectories(x_T, ddim_xs)
ts = samplers.sampler_timesteps(schedule, settings.ddpm_steps, "ddpm")   # ts[i]: where step i starts
# path[i] is x at timestep ts[i] (path[0] = x_T); the last entry is the clean sample x_0
n = len(ts)
snapshots = [0, n // 2, int(n * 0.8), int(n * 0.9), int(n * 0.95), n]
fig, axes = plt.subplots(1, len(snapshots), figsize=(3.2 * len(snapshots), 3.6), sharex=True, sharey=True)
for ax, i in zip(axes, snapshots):
    ax.scatter(ddpm_path[i, :, 0], ddpm_path[i, :, 1], s=1, c="tab:blue")
    label = f"x_t at t = {ts[i]}" if i < n else "x_0: the samples"
    ax.set(title=label, xlim=(-3, 3), ylim=(-3, 3), aspect="equal", xlabel="x1")
axes[0].set_ylabel("x2")
fig.suptitle("DDPM reverse process: the cloud of noise condenses onto the swiss roll late, at small t")
save_figure(fig, out / "reverse_process.png")

# a few points, one panel each: the DDPM walk coloured by timestep, and DDIM's path from the same x_T
from matplotlib.collections import LineCollection  # noqa: E402

ddim_ts = samplers.sampler_timesteps(schedule, settings.ddim_steps, "ddim")
shown = [int(i) for i in np.linspace(0, settings.num_samples - 1, 4)][: 2 if args.smoke else 4]
fig, axes = plt.subplots(1, len(shown), figsize=(4.4 * len(shown) + 1, 4.6), sharex=True, sharey=True,
                         constrained_layout=True)
colours = plt.get_cmap("viridis_r")
for ax, k in zip(np.atleast_1d(axes), shown):
    ax.scatter(reference[:, 0], reference[:, 1], s=2, c="gainsboro", zorder=0)
    segments = np.stack([ddpm_path[:-1, k], ddpm_path[1:, k]], axis=1)             # (steps, 2 ends, 2)
    lines = LineCollection(segments, cmap=colours, norm=plt.Normalize(0, schedule.num_steps - 1), lw=0.8)
    lines.set_array(np.asarray(ts, dtype=float))                                   # colour = t where the step starts
    ax.add_collection(lines)
    ax.plot(ddim_path[:, k, 0], ddim_path[:, k, 1], "k--", lw=1.2, label=f"DDIM {settings.ddim_steps} steps")
    ax.scatter(*ddpm_path[0, k], marker="o", s=70, c="k", zorder=3, label="x_T (the same noise)")
    ax.scatter(*ddpm_path[-1, k], marker="*", s=220, c="tab:red", edgecolors="k", zorder=3, label="DDPM's x_0")
    ax.scatter(*ddim_path[-1, k], marker="s", s=60, c="white", edgecolors="k", zorder=3, label="DDIM's x_0")
    ax.set(title=f"from x_T = ({ddpm_path[0, k, 0]:.2f}, {ddpm_path[0, k, 1]:.2f})", xlim=(-3, 3), ylim=(-3, 3), aspect="equal", xlabel="x1")
np.atleast_1d(axes)[0].set_ylabel("x2")
np.atleast_1d(axes)[0].legend(fontsize=8, loc="lower left")
fig.colorbar(lines, ax=axes, label="t of the DDPM step (dark: early, noisy; yellow: late)", shrink=0.8)
fig.suptitle(f"Reverse trajectories from the same x_T: DDPM ({settings.ddpm_steps} steps, fresh noise each step, "
             f"coloured by t) wanders and settles late; DDIM ({settings.ddim_steps} steps, eta = 0) glides")
save_figure(fig, out / "trajectories.png")


def path_length(path):
    """Mean over points of the summed length of every step of the path."""
    return np.linalg.norm(np.diff(path, axis=0), axis=2).sum(0).mean()


direct = np.linalg.norm(ddim_path[-1] - ddim_path[0], axis=1).mean()
print(f"mean path length from x_T to x_0: DDPM {path_length(ddpm_path):.1f}, DDIM {path_length(ddim_path):.2f} "
      f"(straight line {direct:.2f}): DDPM wanders, DDIM glides along the deterministic ODE path")
assert path_length(ddpm_path) > 3 * path_length(ddim_path)

# %% save the trained model, load it back, and get the same samples
path = save_checkpoint(out / "mlp_ddpm_2d.npz", model=model, optimizer=optimizer, ema=ema,
                       config=model.config, step=settings.train_steps)
restored = MLPDenoiser(MLPConfig(**load_checkpoint(path).config), seed=123).to(device).eval()
load_into(restored, path, use_ema=True)
with no_grad():
    again = samplers.sample(lambda x, t: restored(x, t), schedule, x_T.shape, sampler="ddim",
                            steps=settings.ddim_steps, x_T=x_T, progress=False)
same = bool(np.array_equal(backend.to_numpy(again), backend.to_numpy(ddim)))
print(f"checkpoint {path.name} ({path.stat().st_size / 1e6:.2f} MB): reloaded EMA model gives identical "
      f"DDIM samples: {same}")
assert same

# %% Exercises
# Run one with MINIDIFF_EXERCISE=N python lessons/03_ddpm_2d.py --quick (several: MINIDIFF_EXERCISE=1,3;
# in a notebook: set EXERCISE below).
#
#   1. Too little training. Train a fresh model for short_train_steps (3000 in quick mode) instead of
#      train_steps. Before running, guess which sampler suffers more, "DDPM" or "DDIM": which one puts more points
#      between the arms? Set MY_SUFFERS_MORE; the lesson trains, samples both from the same x_T and measures.
#   2. Write the DDIM step yourself. Fill in my_ddim_step(x_t, eps, abar_t, abar_prev) (eta = 0; the docstring
#      has the formula). The lesson compares it with samplers.ddim_step, then runs all DDIM steps with yours and
#      checks you get the lesson's DDIM samples.
#   3. A little fresh noise. DDIM with eta > 0 adds noise back at every step (eta = 1 is DDPM's amount). Guess
#      whether 50 steps with eta = 1 put "more" or "fewer" points off the roll than eta = 0, set MY_ETA_GUESS,
#      and run: the lesson samples eta = 0, 0.5, 1 from the same x_T with the EMA weights.
EXERCISE = os.environ.get("MINIDIFF_EXERCISE", "")
MY_SUFFERS_MORE = None          # exercise 1: "DDPM" or "DDIM"
MY_ETA_GUESS = None             # exercise 3: "more" or "fewer"


def my_ddim_step(x_t, eps, abar_t, abar_prev):
    """Exercise 2 (eta = 0):  x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)
                              x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev) eps"""
    return None                 # replace with your two lines


def verdict(guess, answer):
    return "" if guess is None else ("  right" if guess == answer else "  not this time")


if "1" in EXERCISE.split(","):
    short = MLPDenoiser(settings.model, seed=args.seed).to(device)
    short_ema = EMA(short, decay=settings.ema_decay)
    short_optimizer = AdamW(short, lr=settings.lr, weight_decay=0.0)
    short_losses, _ = train(short, short_optimizer, short_ema, settings.short_train_steps)
    short.eval()
    short_ema.swap(short)
    with no_grad():
        short_ddpm, short_ddim = (backend.to_numpy(samplers.sample(
            lambda x, t: short(x, t), schedule, x_T.shape, sampler=sampler, steps=steps, x_T=x_T,
            rng=backend.rng(args.seed + 11), progress=False))
            for sampler, steps in (("ddpm", settings.ddpm_steps), ("ddim", settings.ddim_steps)))
    found = {"DDPM": off_roll(short_ddpm), "DDIM": off_roll(short_ddim)}
    answer = max(found, key=found.get)
    print(f"exercise 1: after {settings.short_train_steps} steps (loss {short_losses[-window:].mean():.3f}; "
          f"{settings.train_steps} steps: {last:.3f}): off the roll DDPM {100 * found['DDPM']:.1f}%, "
          f"DDIM {100 * found['DDIM']:.1f}%; your guess {MY_SUFFERS_MORE}{verdict(MY_SUFFERS_MORE, answer)}")
    if answer == "DDIM":
        print("  why: where eps_theta is wrong, DDIM's deterministic path follows the mistake to x_0, while DDPM's "
              "fresh noise gives every point later chances to be pulled back")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.8), sharex=True, sharey=True, constrained_layout=True)
    for ax, (name, points) in zip(axes, (("DDPM", short_ddpm), ("DDIM", short_ddim))):
        ax.scatter(reference[:, 0], reference[:, 1], s=2, c="lightgray")
        ax.scatter(points[:, 0], points[:, 1], s=2, c="tab:blue" if name == "DDPM" else "tab:orange")
        ax.set(title=f"{name}: {100 * found[name]:.1f}% off the roll, MMD^2 {mmd2(points, reference):.4f}",
               xlim=(-3, 3), ylim=(-3, 3), aspect="equal", xlabel="x1", ylabel="x2")
    fig.suptitle(f"After only {settings.short_train_steps} training steps (EMA weights, same x_T as samples.png)")
    save_figure(fig, out / "exercise_1_short_training.png")
if "2" in EXERCISE.split(","):
    check_rng = np.random.default_rng(args.seed + 5)
    x_check, eps_check = check_rng.standard_normal((8, 2)), check_rng.standard_normal((8, 2))
    if my_ddim_step(x_check, eps_check, 0.5, 0.9) is None:
        print("exercise 2: fill in my_ddim_step first")
    else:
        for t, t_prev in ((999, 979), (500, 480), (20, 0), (0, -1)):
            expected, _ = samplers.ddim_step(schedule, eps_check, t, t_prev, x_check)
            abar_prev = float(abar[t_prev]) if t_prev >= 0 else 1.0
            error = np.abs(np.asarray(my_ddim_step(x_check, eps_check, float(abar[t]), abar_prev)) - expected).max()
            assert error < 1e-10, f"exercise 2: not yet; step {t} -> {t_prev} is off by {error:.2e}"
        ema.swap(model)
        x = x_T.copy()
        with no_grad():
            for t, t_prev in zip(ddim_ts, np.append(ddim_ts[1:], -1)):
                eps = model(x, xp.full((len(x),), int(t), dtype=xp.int64))
                x = my_ddim_step(x, eps, float(abar[t]), float(abar[t_prev]) if t_prev >= 0 else 1.0).astype(np.float32)
        ema.swap(model)
        error = float(np.abs(backend.to_numpy(x) - backend.to_numpy(ddim)).max())
        print(f"exercise 2: your step matches samplers.ddim_step; {len(ddim_ts)} of your steps give the lesson's DDIM "
              f"samples to {error:.1e}")
        assert error < 1e-3, "exercise 2: your sampling loop drifts from samplers.sample"
if "3" in EXERCISE.split(","):
    ema.swap(model)
    by_eta = {eta: ddim_sample(x_T, eta=eta, seed=args.seed + 13) for eta in (0.0, 0.5, 1.0)}
    ema.swap(model)
    stray = {eta: off_roll(points) for eta, points in by_eta.items()}
    answer = "fewer" if stray[1.0] < stray[0.0] else "more"
    print(f"exercise 3: DDIM {settings.ddim_steps} steps, off the roll: "
          + ", ".join(f"eta {eta}: {100 * v:.1f}%" for eta, v in stray.items())
          + "; MMD^2: " + ", ".join(f"eta {eta}: {mmd2(p, reference):.4f}" for eta, p in by_eta.items())
          + f"; eta 1 puts {answer} off the roll; your guess {MY_ETA_GUESS}{verdict(MY_ETA_GUESS, answer)}")
