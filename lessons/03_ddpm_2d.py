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
clipping, a warmup + cosine learning rate and an EMA of its weights (minidiff/optim.py).

Sampling runs the process backwards from x_T ~ N(0, I):

  DDPM (ancestral): x_{t-1} ~ q(x_{t-1} | x_t, x_0 = x0_hat), the Gaussian posterior of lesson 02
      with x0_hat = (x_t - sqrt(1 - abar_t) eps_theta) / sqrt(abar_t); fresh noise at every step,
      so it needs all T = 1000 steps.
  DDIM (eta = 0): x_{t'} = sqrt(abar_t') x0_hat + sqrt(1 - abar_t') eps_theta — no fresh noise,
      big jumps t -> t' allowed, so 50 steps do.

How good are the samples? The maximum mean discrepancy (MMD) with a Gaussian (RBF) kernel k,

    MMD^2(P, Q) = E k(x, x') + E k(y, y') - 2 E k(x, y),    x, x' ~ P,  y, y' ~ Q,

is 0 when the two distributions are equal and grows as they differ. We compare the samples'
MMD to the data with that of plain N(0, I) noise (where sampling starts) and of a second draw
of the data itself (the best any model can do with this many points).

Read beside: minidiff/models/mlp.py, minidiff/diffusion/schedule.py (q_sample, posterior),
minidiff/diffusion/loss.py, minidiff/diffusion/samplers.py (ddpm_step, ddim_step, sample),
minidiff/optim.py, minidiff/checkpoint.py.

Run: python lessons/03_ddpm_2d.py [--quick] [--smoke] [--device cpu|gpu]
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
    num_samples: int = 2000      # points drawn by each sampler (and from the data, to compare)
    ddpm_steps: int = 1000       # ancestral sampling needs every step
    ddim_steps: int = 50
    mmd_margin: float = 0.2      # samples' MMD^2 must be below this fraction of the Gaussian's


FULL = Settings(MLPConfig.full(), train_steps=12000, num_samples=4000)
QUICK = Settings(MLPConfig.quick(), train_steps=3000)
SMOKE = Settings(MLPConfig(hidden_dim=64, num_blocks=2, time_embed_dim=16), train_steps=400, lr=5e-3,
                 warmup_steps=10, num_samples=300, ddpm_steps=40, ddim_steps=10, mmd_margin=1.0)

args = parse_lesson_args('Lesson 03: DDPM on 2-D points — train a noise predictor, then sample with DDPM and DDIM.')
settings = SMOKE if args.smoke else QUICK if args.quick else FULL
out = output_dir("03_ddpm_2d", args.out)
device = backend.device()
plt = pyplot()
DATASET = "swiss_roll"
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

# %% train eps_theta with L_simple
model = MLPDenoiser(settings.model, seed=args.seed).to(device)
optimizer = AdamW(model, lr=settings.lr, weight_decay=0.0)
ema = EMA(model, decay=0.995)
rng = backend.rng(args.seed)
xp = backend.get_array_module(pool)
print(f"model: {model.num_parameters():,} parameters")

losses = []                                   # device scalars: no host sync inside the loop
start = time.perf_counter()
for step in range(settings.train_steps):
    x0 = pool[rng.integers(0, pool.shape[0], size=settings.batch_size)]          # (B, 2)
    x_t, t, noise, _ = training_targets(schedule, x0, rng)                        # t ~ U{0..T-1}, eps ~ N(0, I)
    model.zero_grad()
    eps_hat = model(x_t, t)                                                       # eps_theta(x_t, t)
    loss, d_eps_hat = diffusion_loss(eps_hat, x0, noise, t, schedule)            # |eps - eps_hat|^2
    model.backward(d_eps_hat)
    clip_grad_norm(model, max_norm=1.0)
    optimizer.step(lr=warmup_cosine(step, settings.lr, settings.warmup_steps, settings.train_steps,
                                    min_lr=settings.lr / 20))
    ema.update()
    losses.append(loss)
losses = backend.to_numpy(xp.stack(losses)).astype(np.float64)
train_seconds = time.perf_counter() - start
window = max(1, len(losses) // 10)
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
ax.set(title="Training loss L_simple (MLP on the swiss roll)", xlabel="training step",
       ylabel="mean |eps - eps_theta(x_t, t)|^2", ylim=(0, max(1.2, float(smooth.max()) * 1.05)))
ax.legend()
save_figure(fig, out / "loss.png")


# %% sample with DDPM (1000 steps) and DDIM (50 steps), using the EMA weights
def eps_theta(x, t):
    return model(x, t)


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
ema.swap(model)                               # back to the raw weights
with no_grad():
    ddim_raw = samplers.sample(eps_theta, schedule, x_T.shape, sampler="ddim", steps=settings.ddim_steps,
                               x_T=x_T, progress=False)

gaussian = np.random.default_rng(args.seed + 12).standard_normal((settings.num_samples, 2))
data_again = sample_toy(DATASET, settings.num_samples, seed=args.seed + 2)
scores = {"N(0, I) noise": mmd2(gaussian, reference),
          f"DDPM, {settings.ddpm_steps} steps (EMA)": mmd2(ddpm, reference),
          f"DDIM, {settings.ddim_steps} steps (EMA)": mmd2(ddim, reference),
          f"DDIM, {settings.ddim_steps} steps (raw weights)": mmd2(ddim_raw, reference),
          "another draw of the data": mmd2(data_again, reference)}
print(f"sampling {settings.num_samples} points: DDPM {ddpm_seconds:.1f} s, DDIM {ddim_seconds:.1f} s")
print("MMD^2 to held-out data (lower is better):")
for name, value in scores.items():
    print(f"  {name:34s} {value:.5f}")
noise_score = scores["N(0, I) noise"]
for name in list(scores)[1:3]:
    ratio = scores[name] / noise_score
    print(f"{name}: {ratio:.3f} of the noise's MMD^2 (must be < {settings.mmd_margin})")
    assert np.isfinite(scores[name]) and ratio < settings.mmd_margin

fig, axes = plt.subplots(1, 4, figsize=(16, 4.4), sharex=True, sharey=True)
panels = [("data (held out)", reference, "k"), ("N(0, I): where sampling starts", gaussian, "tab:gray"),
          (f"DDPM, {settings.ddpm_steps} steps", ddpm, "tab:blue"), (f"DDIM, {settings.ddim_steps} steps", ddim,
                                                                      "tab:orange")]
for ax, (title, points, colour) in zip(axes, panels):
    points = backend.to_numpy(points)
    if title.startswith(("DDPM", "DDIM")):
        ax.scatter(reference[:, 0], reference[:, 1], s=2, c="lightgray", label="data")
        title += f"\nMMD^2 = {mmd2(points, reference):.4f}"
    ax.scatter(points[:, 0], points[:, 1], s=2, c=colour)
    ax.set(title=title, xlim=(-3, 3), ylim=(-3, 3), aspect="equal", xlabel="x1")
axes[0].set_ylabel("x2")
fig.suptitle(f"Samples from the trained MLP over the data (MMD^2 of pure noise: {noise_score:.4f})")
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

fig, axes = plt.subplots(1, 2, figsize=(12, 6), sharex=True, sharey=True)
panels = [(f"DDPM ({settings.ddpm_steps} steps): fresh noise at every step", ddpm_path, 6),
          (f"DDIM ({settings.ddim_steps} steps, eta = 0): no fresh noise", ddim_path, 25)]
for ax, (title, path, count) in zip(axes, panels):
    ax.scatter(reference[:, 0], reference[:, 1], s=2, c="darkgray", label="data", zorder=1)
    for k in range(count):
        ax.plot(path[:, k, 0], path[:, k, 1], lw=0.7, alpha=0.8, zorder=2)
    ax.scatter(path[0, :count, 0], path[0, :count, 1], marker="o", s=20, c="k", label="x_T (noise)", zorder=3)
    ax.scatter(path[-1, :count, 0], path[-1, :count, 1], marker="*", s=90, c="tab:red", label="x_0", zorder=3)
    ax.set(title=title, xlim=(-3, 3), ylim=(-3, 3), aspect="equal", xlabel="x1")
    ax.legend(loc="lower right", fontsize=8)
axes[0].set_ylabel("x2")
fig.suptitle("Reverse trajectories from the same starting noise x_T")
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
