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
roll, where the data has no points and the network little practice. After 2000 training steps
(your model in quick mode, exercise 1) DDIM-50 visibly fills the inside of the spiral. After 10,000
steps (the judged model): MMD^2 0.0044 for DDIM-50 against DDPM-1000's 0.0039 over a floor of 0.0036,
0.8% of its points off the roll against DDPM's 0.1%, and 250 DDIM steps bring it to 0.0039 and 0.2%.
So "50 steps suffice" holds for a well-trained model, up to a few strays: the table says by how much.

Which model is judged. In --quick you train your own model for 2000 steps (about 10-20 s: its loss
curve and samples in loss.png, its raw-vs-EMA scores in ema_vs_raw.png), and the claims are then
checked on data/pretrained/lessons/toy_swiss_roll.npz: the same MLP trained by this lesson's own loop
for 10,000 steps (`python lessons/03_ddpm_2d.py --ship data/pretrained/lessons/toy_swiss_roll.npz`,
83 s alone on a 2-core CPU; the model card data/pretrained/lessons/README.md has the details). --full
trains the larger MLPConfig.full for 20,000 steps from scratch and judges that; it loads nothing.

How good are the samples? Two numbers. The maximum mean discrepancy (MMD) with a Gaussian (RBF)
kernel k,

    MMD^2(P, Q) = E k(x, x') + E k(y, y') - 2 E k(x, y),    x, x' ~ P,  y, y' ~ Q,

is 0 when the two distributions are equal and grows as they differ; with a finite number of
points a second draw of the data itself scores above 0 (the floor no model can beat). And the
fraction of samples "off the roll", farther than 0.15 from every one of 20,000 training
points: the stray dots a learner sees between the arms.

You will see: your loss curve and your model's samples (loss.png); DDIM samples from the raw weights
and from their EMA as training goes (ema_vs_raw.png: the judged model's EMA reaches the floor by
mid-training, 0.0079 against the raw weights' 0.0338 at step 5000, the raw weights only once the cosine
learning rate has decayed, which smooths the same noise; your short run's scores beside them); each
sampler's samples and scores (samples.png); the DDPM cloud condensing late, at small t
(reverse_process.png); and three single trajectories, DDPM's walk coloured by t beside DDIM's path from
the same x_T, with how far the points still are from where they end, against t (trajectories.png).

Read beside: minidiff/models/mlp.py, minidiff/datasets/toy2d.py, minidiff/diffusion/schedule.py
(q_sample, posterior), minidiff/diffusion/loss.py (training_targets, diffusion_loss),
minidiff/diffusion/samplers.py (ddpm_step, ddim_step, sample), minidiff/optim.py (AdamW, EMA,
clip_grad_norm, warmup_cosine), minidiff/checkpoint.py; the loop here is written out in full,
minidiff/train/loop.py (fit) is the same loop grown up, which later lessons call.

Run: python lessons/03_ddpm_2d.py [--quick] [--smoke] [--device cpu|gpu] [--ship PATH]
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
from minidiff.utils import REPO_ROOT, output_dir, parse_lesson_args, pyplot, save_figure


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
    pretrained: str | None = None  # judge this shipped checkpoint (trained with SHIPPED) instead of the model here


PRETRAINED = "data/pretrained/lessons/toy_swiss_roll.npz"
# the recipe of PRETRAINED: `python lessons/03_ddpm_2d.py --quick --ship data/pretrained/lessons/toy_swiss_roll.npz`
SHIPPED = Settings(MLPConfig.quick(), train_steps=10000)
FULL = Settings(MLPConfig.full(), train_steps=20000, num_samples=4000, eval_every=2000)
QUICK = dataclasses.replace(SHIPPED, train_steps=2000, eval_every=500, pretrained=PRETRAINED)
SMOKE = Settings(MLPConfig(hidden_dim=64, num_blocks=2, time_embed_dim=16), train_steps=400, lr=5e-3,
                 warmup_steps=10, ema_decay=0.99, short_train_steps=100, eval_every=200, eval_samples=200,
                 num_samples=300, ddpm_steps=40, ddim_steps=10, ddim_more_steps=20, mmd_margin=1.0, max_off_roll=1.0,
                 pretrained=PRETRAINED)


def ship_option(parser):
    parser.add_argument("--ship", metavar="PATH", default=None,
                        help="train the shipped model's recipe (SHIPPED) from scratch, judge it, and save it to PATH")


args = parse_lesson_args('Lesson 03: DDPM on 2-D points — train a noise predictor, then sample with DDPM and DDIM.',
                         extra=ship_option)
settings = SHIPPED if args.ship else SMOKE if args.smoke else QUICK if args.quick else FULL
out = output_dir("03_ddpm_2d", args.out)
device = backend.device()
plt = pyplot()
DATASET = "swiss_roll"
OFF_ROLL = 0.15                  # a sample farther than this from every training point is "off the roll"
print(f"device {device}; {DATASET}; {settings.train_steps} training steps, model {settings.model}"
      + (f"; then judging {settings.pretrained}" if settings.pretrained else ""))


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


def ddim_sample(net, x_T, steps=settings.ddim_steps, eta=0.0, seed=None):
    """DDIM from x_T with whatever weights net holds now (eval mode, nothing cached); host array."""
    with no_grad():
        return backend.to_numpy(samplers.sample(net, schedule, x_T.shape, sampler="ddim", steps=steps, x_T=x_T,
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
x_T = backend.rng(args.seed + 10).standard_normal((settings.num_samples, 2), dtype=np.float32)   # x_T ~ N(0, I)
history = {"step": [], "raw": [], "EMA": []}      # MMD^2 of a DDIM sample to held-out data, during training
middle = {}                                       # the weights at the middle evaluation: {"step", "raw", "EMA"}


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
    raw = ddim_sample(model, eval_x_T)
    ema.swap(model)                                                               # the model holds the average now
    averaged = ddim_sample(model, eval_x_T)
    ema.swap(model)                                                               # and its own weights again
    model.train()
    history["step"].append(step)
    history["raw"].append(mmd2(raw, eval_reference))
    history["EMA"].append(mmd2(averaged, eval_reference))
    if len(history["step"]) == (settings.train_steps // settings.eval_every + 1) // 2:
        middle.update(step=step, raw=model.state_dict(), EMA=ema.state_dict()["shadow"])


losses, train_seconds = train(model, optimizer, ema, settings.train_steps, evaluate)
window = max(1, len(losses) // 50)
first, last = losses[:10].mean(), losses[-window:].mean()
print(f"trained {settings.train_steps} steps in {train_seconds:.1f} s "
      f"({1e3 * train_seconds / settings.train_steps:.1f} ms/step)")
print(f"L_simple: {first:.3f} over the first 10 steps -> {last:.3f} over the last {window} "
      "(1.0 = guessing eps = 0; the floor is above 0 because eps cannot be fully recovered from x_t)")
assert last < (0.8 if args.smoke else 0.4) * first, "the loss did not go down enough"
model.eval()
ema.swap(model)                                   # your model's averaged weights, for its samples
own_samples = ddim_sample(model, x_T)
ema.swap(model)
own_score, own_strays = mmd2(own_samples, reference), off_roll(own_samples)
print(f"your model after {settings.train_steps} steps, DDIM-{settings.ddim_steps} with the EMA weights: MMD^2 "
      f"{own_score:.4f}, {100 * own_strays:.1f}% of its points off the roll")

fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), gridspec_kw={"width_ratios": [1.6, 1]}, constrained_layout=True)
axes[0].plot(losses, lw=0.5, alpha=0.4, label="per step")
smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
axes[0].plot(np.arange(window - 1, len(losses)), smooth, lw=2, label=f"mean of {window} steps")
axes[0].set(title=f"Your training: loss L_simple over {settings.train_steps} steps\n"
                  "(flattens early while the samples keep improving: a blunt guide)", xlabel="training step",
            ylabel="mean |eps - eps_theta(x_t, t)|^2", ylim=(0, max(1.2, float(smooth.max()) * 1.05)))
axes[0].legend()
axes[1].scatter(reference[:, 0], reference[:, 1], s=2, c="lightgray", label="data")
axes[1].scatter(own_samples[:, 0], own_samples[:, 1], s=2, c="tab:orange", label="your samples")
axes[1].set(title=f"Your model: DDIM-{settings.ddim_steps} samples (EMA)\nMMD^2 {own_score:.4f}, "
                  f"{100 * own_strays:.1f}% off the roll", xlim=(-3, 3), ylim=(-3, 3), aspect="equal",
            xlabel="x1", ylabel="x2")
axes[1].legend(fontsize=8, loc="lower right")
save_figure(fig, out / "loss.png")

# %% the model to judge: in quick mode the shipped one (a few minutes of CPU train too little), else yours
# PRETRAINED was trained by this lesson's own loop with the SHIPPED settings (data/pretrained/lessons/README.md has
# the command, its steps and time); it holds the raw weights and their EMA at the end and at mid-training, and the
# raw-vs-EMA scores recorded while it trained.


def mlp_with(weights, config):
    """An MLPDenoiser in eval mode holding these weights ({name: host array})."""
    net = MLPDenoiser(config, seed=args.seed).to(device).eval()
    net.load_state_dict(weights)
    return net


if settings.pretrained is None:
    whose, judged_config, judged_history = f"your model, {settings.train_steps} steps", settings.model, history
    weights = {"raw": model.state_dict(), "EMA": ema.state_dict()["shadow"]}
else:
    shipped = load_checkpoint(REPO_ROOT / settings.pretrained)
    recipe = shipped.config["train"]
    whose = f"the shipped model, {shipped.step} steps"
    judged_config = MLPConfig(**shipped.config["model"])
    weights = {"raw": shipped.model_state, "EMA": shipped.ema_state["shadow"]}
    middle = {"step": int(shipped.extra["mid_step"]), "raw": shipped.extra["mid_raw"],
              "EMA": shipped.extra["mid_ema"]}
    judged_history = {key: shipped.extra["history"][key].tolist() for key in ("step", "raw", "EMA")}
    print(f"judged model: {settings.pretrained}, {judged_config}, trained by this lesson's loop for {shipped.step} "
          f"steps of batch {recipe['batch_size']} (lr {recipe['lr']}, EMA {recipe['ema_decay']}), stored in float16")
judged, judged_raw = mlp_with(weights["EMA"], judged_config), mlp_with(weights["raw"], judged_config)

# %% raw weights vs their EMA, over training
# what a perfect model would score with this few points: the mean over a few fresh draws of the data itself
eval_floor = np.mean([mmd2(sample_toy(DATASET, settings.eval_samples, seed=args.seed + 30 + k), eval_reference)
                      for k in range(4)])
print(f"DDIM-{settings.ddim_steps} samples ({settings.eval_samples} points) during training, MMD^2 to held-out data "
      f"(fresh draws of the data score {eval_floor:.4f} on average):")
if settings.pretrained is not None:
    print("  your run:")
    for step, raw, averaged in zip(history["step"], history["raw"], history["EMA"]):
        print(f"  step {step:6d}: raw weights {raw:.4f}   EMA {averaged:.4f}")
    print(f"  {whose}, recorded while it trained:")
for step, raw, averaged in zip(judged_history["step"], judged_history["raw"], judged_history["EMA"]):
    print(f"  step {step:6d}: raw weights {raw:.4f}   EMA {averaged:.4f}")
ema_wins = sum(e < r for r, e in zip(judged_history["raw"], judged_history["EMA"]))
print(f"{whose}: the EMA's samples are closer to the data at {ema_wins} of {len(judged_history['step'])} evaluations")
# the middle evaluation, sampled again here from the weights themselves
middle_samples = {name: ddim_sample(mlp_with(middle[name], judged_config), eval_x_T) for name in ("raw", "EMA")}
middle_scores = {name: mmd2(points, eval_reference) for name, points in middle_samples.items()}
print(f"at step {middle['step']} (mid-training, the learning rate still high): MMD^2 raw weights "
      f"{middle_scores['raw']:.4f}, EMA {middle_scores['EMA']:.4f} ({middle_scores['raw'] / middle_scores['EMA']:.1f}x "
      "better with the EMA)")
if settings.pretrained is not None or not args.smoke:
    assert ema_wins >= 0.6 * len(judged_history["step"]), "averaging the weights should help at most evaluations"
    assert middle_scores["EMA"] < 0.7 * middle_scores["raw"], "mid-training, the EMA's samples must be clearly better"

fig, axes = plt.subplots(1, 3, figsize=(15, 4.8), constrained_layout=True)
axes[0].plot(judged_history["step"], judged_history["raw"], "o-", c="tab:blue", label="raw weights theta")
axes[0].plot(judged_history["step"], judged_history["EMA"], "o-", c="tab:orange",
             label=f"EMA of theta (decay {settings.ema_decay})")
if settings.pretrained is not None:
    axes[0].plot(history["step"], history["raw"], "x--", c="tab:blue", alpha=0.6, label="your run: raw")
    axes[0].plot(history["step"], history["EMA"], "x--", c="tab:orange", alpha=0.6, label="your run: EMA")
axes[0].axhline(eval_floor, color="k", ls=":", label="fresh draws of the data (the floor, within noise)")
axes[0].axvline(middle["step"], color="grey", lw=0.8)
axes[0].set(title=f"DDIM-{settings.ddim_steps} samples ({settings.eval_samples} points) during training",
            xlabel="training step", ylabel="MMD^2 to held-out data (lower is better)", yscale="log")
axes[0].legend(fontsize=8)
for ax, name in zip(axes[1:], ("raw", "EMA")):
    points = middle_samples[name]
    ax.scatter(eval_reference[:, 0], eval_reference[:, 1], s=2, c="lightgray")
    ax.scatter(points[:, 0], points[:, 1], s=3, c="tab:blue" if name == "raw" else "tab:orange")
    ax.set(title=f"{name} weights at step {middle['step']} (grey line): MMD^2 {middle_scores[name]:.4f}",
           xlim=(-3, 3), ylim=(-3, 3), aspect="equal", xlabel="x1", ylabel="x2")
    ax.title.set_fontsize(10)
fig.suptitle(f"Sampling from the EMA of the weights instead of the weights themselves: {whose}, same x_T")
save_figure(fig, out / "ema_vs_raw.png")

# %% sample with DDPM (1000 steps) and DDIM (50 and 250 steps), using the EMA weights
with no_grad():
    start = time.perf_counter()
    ddpm, ddpm_xs, _ = samplers.sample(judged, schedule, x_T.shape, sampler="ddpm", steps=settings.ddpm_steps,
                                       x_T=x_T, rng=backend.rng(args.seed + 11), return_intermediates=True,
                                       progress=False)
    ddpm_seconds = time.perf_counter() - start
    start = time.perf_counter()
    ddim, ddim_xs, _ = samplers.sample(judged, schedule, x_T.shape, sampler="ddim", steps=settings.ddim_steps,
                                       x_T=x_T, return_intermediates=True, progress=False)
    ddim_seconds = time.perf_counter() - start
ddim_more = ddim_sample(judged, x_T, steps=settings.ddim_more_steps)
ddim_raw = ddim_sample(judged_raw, x_T)

gaussian = np.random.default_rng(args.seed + 12).standard_normal((settings.num_samples, 2))
data_again = sample_toy(DATASET, settings.num_samples, seed=args.seed + 2)
ddpm_name, ddim_name = f"DDPM, {settings.ddpm_steps} steps (EMA)", f"DDIM, {settings.ddim_steps} steps (EMA)"
more_name = f"DDIM, {settings.ddim_more_steps} steps (EMA)"
rows = {"N(0, I) noise": gaussian, ddpm_name: ddpm, ddim_name: ddim, more_name: ddim_more,
        f"DDIM, {settings.ddim_steps} steps (raw weights)": ddim_raw, "another draw of the data (floor)": data_again}
scores = {name: mmd2(points, reference) for name, points in rows.items()}
strays = {name: off_roll(points) for name, points in rows.items()}
print(f"{whose}, sampling {settings.num_samples} points: DDPM {ddpm_seconds:.1f} s, DDIM {ddim_seconds:.1f} s")
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
    assert scores[ddim_name] < 1.5 * floor, "DDIM-50 should be close to the data (within 1.5x the floor)"

fig, axes = plt.subplots(1, 5, figsize=(20, 4.8), sharex=True, sharey=True, constrained_layout=True)
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
fig.suptitle(f"Samples from {whose}, over the data (MMD^2 of pure noise {noise_score:.4f}, of another draw of the "
             f"data {floor:.4f}): DDIM-{settings.ddim_steps} is close to DDPM-{settings.ddpm_steps}, with a few more "
             "strays inside the spiral")
save_figure(fig, out / "samples.png")


# %% follow points through the reverse process
def trajectories(x_start, steps_after):
    """(steps + 1, N, 2) host array: x_T, then the sample after each step."""
    return np.stack([backend.to_numpy(x_start)] + [backend.to_numpy(x) for x in steps_after])


ddpm_path, ddim_path = trajectories(x_T, ddpm_xs), trajectories(x_T, ddim_xs)
ts = samplers.sampler_timesteps(schedule, settings.ddpm_steps, "ddpm")   # ts[i]: where step i starts
ddim_ts = samplers.sampler_timesteps(schedule, settings.ddim_steps, "ddim")
# path[i] is x at timestep ts[i] (path[0] = x_T); the last entry is the clean sample x_0
n = len(ts)
frames = [0, n // 2, int(n * 0.8), int(n * 0.9), int(n * 0.95), n]
fig, axes = plt.subplots(1, len(frames), figsize=(3.2 * len(frames), 3.6), sharex=True, sharey=True)
for ax, i in zip(axes, frames):
    ax.scatter(ddpm_path[i, :, 0], ddpm_path[i, :, 1], s=1, c="tab:blue")
    label = f"x_t at t = {ts[i]}" if i < n else "x_0: the samples"
    ax.set(title=label, xlim=(-3, 3), ylim=(-3, 3), aspect="equal", xlabel="x1")
axes[0].set_ylabel("x2")
fig.suptitle("DDPM reverse process: the cloud of noise condenses onto the swiss roll late, at small t")
save_figure(fig, out / "reverse_process.png")

# three points, one panel each: the DDPM walk (every stride-th step, coloured by t) and DDIM's path from the same
# x_T; the last panel: how far every point still is from where it ends, against t
from matplotlib.collections import LineCollection  # noqa: E402

stride = max(1, settings.ddpm_steps // 50)                            # 50 segments: a walk the eye can follow
kept = np.append(np.arange(0, n, stride), n)                          # indices into ddpm_path (n = x_0)
kept_t = np.append(np.asarray(ts)[kept[:-1]], 0)
shown = [int(i) for i in np.linspace(0, settings.num_samples - 1, 3)][: 2 if args.smoke else 3]
fig, axes = plt.subplots(1, len(shown) + 1, figsize=(4.6 * (len(shown) + 1) + 1, 4.8), constrained_layout=True)
colours = plt.get_cmap("viridis_r")
for ax, k in zip(axes, shown):
    ax.scatter(reference[:, 0], reference[:, 1], s=2, c="gainsboro", zorder=0)
    walk = ddpm_path[kept, k]                                                      # (len(kept), 2)
    lines = LineCollection(np.stack([walk[:-1], walk[1:]], axis=1), cmap=colours,
                           norm=plt.Normalize(0, schedule.num_steps - 1), lw=1.6)
    lines.set_array(kept_t[:-1].astype(float))                                     # colour = t where it starts
    ax.add_collection(lines)
    ax.plot(ddim_path[:, k, 0], ddim_path[:, k, 1], "-", c="tab:red", lw=2.5, label=f"DDIM, {settings.ddim_steps} steps")
    ax.scatter(*ddpm_path[0, k], marker="o", s=70, c="k", zorder=3, label="x_T (the same noise)")
    ax.scatter(*ddpm_path[-1, k], marker="*", s=220, c="tab:blue", edgecolors="k", zorder=3, label="DDPM's x_0")
    ax.scatter(*ddim_path[-1, k], marker="s", s=60, c="tab:red", edgecolors="k", zorder=3, label="DDIM's x_0")
    ax.set(title=f"from x_T = ({ddpm_path[0, k, 0]:.2f}, {ddpm_path[0, k, 1]:.2f})", xlim=(-3, 3), ylim=(-3, 3),
           aspect="equal", xlabel="x1", ylabel="x2")
axes[0].legend(fontsize=8, loc="lower left")
fig.colorbar(lines, ax=axes[:len(shown)], label="t along the DDPM walk (dark: early, noisy; yellow: late)",
             shrink=0.8, location="left")
ddpm_left = np.linalg.norm(ddpm_path - ddpm_path[-1], axis=2).mean(1)             # mean |x_t - x_0| per step
ddim_left = np.linalg.norm(ddim_path - ddim_path[-1], axis=2).mean(1)
axes[-1].plot(np.append(ts, -1) + 1, ddpm_left, c="tab:blue", label=f"DDPM, {settings.ddpm_steps} steps")
axes[-1].plot(np.append(ddim_ts, -1) + 1, ddim_left, "o-", ms=3, c="tab:red", label=f"DDIM, {settings.ddim_steps} steps")
axes[-1].set(title=f"mean over all {settings.num_samples} points:\nhow far x_t still is from the x_0 it ends at",
             xlabel="timestep t (sampling runs right to left)", ylabel="mean |x_t - x_0|", xlim=(schedule.num_steps, 0))
axes[-1].legend(fontsize=8)
fig.suptitle(f"Reverse trajectories from the same x_T: DDPM (fresh noise at every step; drawn every {stride}th step, "
             f"coloured by t) wanders and settles only at small t; DDIM (eta = 0) glides straight to a point near x_T")
save_figure(fig, out / "trajectories.png")


def path_length(path):
    """Mean over points of the summed length of every step of the path."""
    return np.linalg.norm(np.diff(path, axis=0), axis=2).sum(0).mean()


direct = np.linalg.norm(ddim_path[-1] - ddim_path[0], axis=1).mean()
print(f"mean path length from x_T to x_0: DDPM {path_length(ddpm_path):.1f}, DDIM {path_length(ddim_path):.2f} "
      f"(straight line {direct:.2f}): DDPM wanders, DDIM glides along the deterministic ODE path")
late = int(np.argmax(np.asarray(ts) <= schedule.num_steps // 10))              # the first DDPM step at t <= T/10
print(f"at t = {ts[late]} DDPM's points are still {ddpm_left[late]:.2f} from where they end "
      f"(x_T was {ddpm_left[0]:.2f} away): the walk decides late")
assert path_length(ddpm_path) > 3 * path_length(ddim_path)

# %% save your trained model, load it back, and get the same samples
path = save_checkpoint(out / "mlp_ddpm_2d.npz", model=model, optimizer=optimizer, ema=ema,
                       config=model.config, step=settings.train_steps)
restored = MLPDenoiser(MLPConfig(**load_checkpoint(path).config), seed=123).to(device).eval()
load_into(restored, path, use_ema=True)
same = bool(np.array_equal(ddim_sample(restored, x_T), own_samples))
print(f"checkpoint {path.name} ({path.stat().st_size / 1e6:.2f} MB): your reloaded EMA model gives identical "
      f"DDIM samples: {same}")
assert same
if args.ship:                                     # the lesson checkpoint: weights in float16, no optimizer state
    shipped_path = save_checkpoint(
        args.ship, model=model, ema=ema, step=settings.train_steps, dtype=np.float16, compress=True,
        config={"model": dataclasses.asdict(settings.model), "train": {
            "steps": settings.train_steps, "batch_size": settings.batch_size, "lr": settings.lr,
            "warmup_steps": settings.warmup_steps, "ema_decay": settings.ema_decay, "seed": args.seed,
            "dataset": DATASET, "schedule": "linear"}},
        extra={"mid_step": np.asarray(middle["step"]), "mid_raw": {k: v.astype(np.float16) for k, v in middle["raw"].items()},
               "mid_ema": {k: v.astype(np.float16) for k, v in middle["EMA"].items()},
               "history": {key: np.asarray(values) for key, values in history.items()}})
    print(f"shipped {shipped_path} ({shipped_path.stat().st_size / 1e6:.2f} MB)")

# %% Exercises
# Run one with MINIDIFF_EXERCISE=N python lessons/03_ddpm_2d.py --quick (several: MINIDIFF_EXERCISE=1,3;
# in a notebook: set EXERCISE below).
#
#   1. Too little training. Your own quick-mode model (train_steps = 2000), or in --full a fresh one trained for
#      short_train_steps (3000), against the judged model. Before running, guess which sampler suffers more,
#      "DDPM" or "DDIM": which one puts more points between the arms? Set MY_SUFFERS_MORE; the lesson samples both
#      from the same x_T and measures.
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
    if settings.pretrained is not None:       # your model is the short one: its EMA weights
        short_steps, short_losses = settings.train_steps, losses
        short = mlp_with(ema.state_dict()["shadow"], settings.model)
    else:
        short_steps = settings.short_train_steps
        short = MLPDenoiser(settings.model, seed=args.seed).to(device)
        short_ema = EMA(short, decay=settings.ema_decay)
        short_losses, _ = train(short, AdamW(short, lr=settings.lr, weight_decay=0.0), short_ema, short_steps)
        short.eval()
        short_ema.swap(short)
    with no_grad():
        short_ddpm, short_ddim = (backend.to_numpy(samplers.sample(
            short, schedule, x_T.shape, sampler=sampler, steps=steps, x_T=x_T,
            rng=backend.rng(args.seed + 11), progress=False))
            for sampler, steps in (("ddpm", settings.ddpm_steps), ("ddim", settings.ddim_steps)))
    found = {"DDPM": off_roll(short_ddpm), "DDIM": off_roll(short_ddim)}
    answer = max(found, key=found.get)
    print(f"exercise 1: after {short_steps} steps (loss {short_losses[-window:].mean():.3f}): off the roll DDPM "
          f"{100 * found['DDPM']:.1f}%, DDIM {100 * found['DDIM']:.1f}% ({whose}: DDPM {100 * strays[ddpm_name]:.1f}%, "
          f"DDIM {100 * strays[ddim_name]:.1f}%); your guess {MY_SUFFERS_MORE}{verdict(MY_SUFFERS_MORE, answer)}")
    if answer == "DDIM":
        print("  why: where eps_theta is wrong, DDIM's deterministic path follows the mistake to x_0, while DDPM's "
              "fresh noise gives every point later chances to be pulled back")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.8), sharex=True, sharey=True, constrained_layout=True)
    for ax, (name, points) in zip(axes, (("DDPM", short_ddpm), ("DDIM", short_ddim))):
        ax.scatter(reference[:, 0], reference[:, 1], s=2, c="lightgray")
        ax.scatter(points[:, 0], points[:, 1], s=2, c="tab:blue" if name == "DDPM" else "tab:orange")
        ax.set(title=f"{name}: {100 * found[name]:.1f}% off the roll, MMD^2 {mmd2(points, reference):.4f}",
               xlim=(-3, 3), ylim=(-3, 3), aspect="equal", xlabel="x1", ylabel="x2")
    fig.suptitle(f"After only {short_steps} training steps (EMA weights, same x_T as samples.png)")
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
        x = x_T.copy()
        with no_grad():
            for t, t_prev in zip(ddim_ts, np.append(ddim_ts[1:], -1)):
                eps = judged(x, xp.full((len(x),), int(t), dtype=xp.int64))
                x = my_ddim_step(x, eps, float(abar[t]), float(abar[t_prev]) if t_prev >= 0 else 1.0).astype(np.float32)
        error = float(np.abs(backend.to_numpy(x) - backend.to_numpy(ddim)).max())
        print(f"exercise 2: your step matches samplers.ddim_step; {len(ddim_ts)} of your steps give the lesson's DDIM "
              f"samples to {error:.1e}")
        assert error < 1e-3, "exercise 2: your sampling loop drifts from samplers.sample"
if "3" in EXERCISE.split(","):
    by_eta = {eta: ddim_sample(judged, x_T, eta=eta, seed=args.seed + 13) for eta in (0.0, 0.5, 1.0)}
    stray = {eta: off_roll(points) for eta, points in by_eta.items()}
    answer = "fewer" if stray[1.0] < stray[0.0] else "more"
    print(f"exercise 3: DDIM {settings.ddim_steps} steps, off the roll: "
          + ", ".join(f"eta {eta}: {100 * v:.1f}%" for eta, v in stray.items())
          + "; MMD^2: " + ", ".join(f"eta {eta}: {mmd2(p, reference):.4f}" for eta, p in by_eta.items())
          + f"; eta 1 puts {answer} off the roll; your guess {MY_ETA_GUESS}{verdict(MY_ETA_GUESS, answer)}")
