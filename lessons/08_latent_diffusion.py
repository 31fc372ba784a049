r"""Lesson 08: latent diffusion — the diffusion model of lesson 05, run on the VAE's latents.

Lesson 07's autoencoder turns a 64x64x3 image (12288 numbers) into a 4x8x8 latent (256 numbers, 48x fewer)
and back with little loss. Latent diffusion (Rombach et al. 2022, the "LDM" in Stable Diffusion)
trains the diffusion model on latents instead of pixels:

    z_0 = scale_factor * z,   z ~ q(z | x) = N(mu(x), sigma^2(x))     (the frozen VAE's encoder)
    z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps,                   eps ~ N(0, I)
    L   = E || eps - eps_theta(z_t, t) ||^2                           (L_simple, unchanged)

and to generate, samples z_0 by DDIM from z_T ~ N(0, I) exactly as in lesson 05, then decodes
once: x = Dec(z_0 / scale_factor). Nothing in the diffusion math changes; only the data does.
(Training draws z from the posterior, not its mean, as Stable Diffusion does; the VAE's sigma is
small, lesson 07.) The noise schedule is Stable Diffusion's "scaled_linear".

Why bother? Cost. A U-Net's convolutions cost about (positions) x (channels)^2 and its
self-attention (positions)^2 x channels. At 8x8 there are 64x fewer positions than at 64x64,
and 4096x fewer attention pairs. The decoder runs once per sample, not once per step. This lesson
measures it: time per training step and per sample for
  * the latent U-Net on 4x8x8 latents (256 numbers per image, output decoded to 64x64),
  * the same-width pixel U-Net of lesson 05 on 3x16x16 images (768 numbers; lesson 05 --quick),
  * that pixel U-Net on 3x64x64 images (12288 numbers, the latent model's output size; timed only, its
    training step at batch 4 and scaled to the batch: at that size the step's cost grows with the batch).
Each number is the median over rounds that time the three models one after the other, so a
process that shares the CPU for a while slows a round, not one model. Then it trains the latent
U-Net for a number of steps, and the 16x16 pixel U-Net for the number of steps the measured cost
ratio buys with the same compute (both with a deadline, so a busy machine stops them early
instead of running on), and compares their samples by lesson 05's Frechet distance (classifier
features; the floor is the FD between two sets of real images, the ceiling an untrained model's).

A fair baseline: the pixel model gets what lessons 05 and 06 recommend for pixels (the cosine
schedule, v-prediction with min-SNR-5 weighting, x0_hat clipped to [-1, 1]); both are sampled by
DPM-Solver++ in 20 steps with trailing spacing (lesson 06). The latent model keeps Stable
Diffusion's scaled-linear schedule and eps, and is never clipped (a latent is not an image).

The price: the latent model can never beat its VAE. Whatever the decoder cannot draw (lesson 07:
soft edges, small squares coming back rounded) no latent sample will show.

Read beside: minidiff/train/jobs.py (run_latent: the `latent` job, run_pixel), minidiff/train/loop.py
(fit, its deadline), minidiff/train/data.py (encode_dataset), minidiff/models/vae.py
(encode_latents, decode_latents), minidiff/diffusion/samplers.py, minidiff/evaluate.py
(sample_unconditional with decode=, frechet_distance_from_features), lessons 05 to 07.

Run: python lessons/08_latent_diffusion.py [--quick] [--smoke] [--full] [--device cpu|gpu]
--full: the `latent` job's quick preset (1500 steps), meant for a GPU. --quick: 400 latent steps on
a CPU. --smoke: tiny U-Nets, seconds.
Exercises at the end: MINIDIFF_EXERCISE=1|2 python lessons/08_latent_diffusion.py --quick
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

from minidiff import backend, evaluate, train
from minidiff.datasets import shapes
from minidiff.diffusion import samplers
from minidiff.diffusion.loss import diffusion_loss, training_targets
from minidiff.diffusion.schedule import NoiseSchedule
from minidiff.models.unet import UNet, UNetConfig
from minidiff.nn.module import no_grad
from minidiff.utils import image_grid, output_dir, parse_lesson_args, pyplot, save_figure


@dataclasses.dataclass
class Settings:
    latent_model: UNetConfig      # widths of the latent U-Net (in/out channels and size come from the VAE)
    pixel_model: UNetConfig       # the pixel U-Net, trained at pixel_size
    pixel_size: int
    latent_steps: int
    batch_size: int
    lr: float
    dataset_size: int             # images rendered (and encoded) once
    num_eval: int                 # samples per set for the Fréchet distances
    sample_steps: int             # DDIM steps
    timing_rounds: int = 5        # rounds of alternated timings (one step of each model per round); medians
    timing_samples: int = 8       # batch of the network calls timed for sampling
    full_size_timing_batch: int = 4  # the SxS pixel U-Net's training step is timed at this batch, then scaled
    min_pixel_steps: int = 20
    deadline_factor: float = 4.0  # each run stops (saved) after this many times its expected seconds of wall time
    fd_ratio: float = 0.5         # latent FD must be below this fraction of the untrained model's
    latent_beats_pixel: bool = True   # at equal CPU seconds (not asserted on a GPU, where both are launch-bound)


QUICK_LATENT = train.LatentJob.quick().model
QUICK_PIXEL = train.PixelJob.quick().model                     # UNetConfig.quick16: lesson 05 --quick
FULL = Settings(QUICK_LATENT, QUICK_PIXEL, pixel_size=16, latent_steps=1500, batch_size=32, lr=1e-3,
                dataset_size=4000, num_eval=512, sample_steps=20, latent_beats_pixel=False)
QUICK = Settings(QUICK_LATENT, QUICK_PIXEL, pixel_size=16, latent_steps=400, batch_size=32, lr=2e-3,
                 dataset_size=2000, num_eval=128, sample_steps=20)
SMOKE_UNET = UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(1,),
                        num_heads=2, norm_groups=4, image_size=16)
SMOKE = Settings(SMOKE_UNET, SMOKE_UNET, pixel_size=16, latent_steps=20, batch_size=8, lr=2e-3, dataset_size=64,
                 num_eval=24, sample_steps=5, timing_rounds=2, timing_samples=2, min_pixel_steps=5, fd_ratio=3.0,
                 latent_beats_pixel=False)

args = parse_lesson_args("Lesson 08: latent diffusion — the diffusion model of lesson 05, run on the VAE's latents.")
settings = SMOKE if args.smoke else QUICK if args.quick else FULL
out = output_dir("08_latent_diffusion", args.out)
device = backend.device()
xp = backend.get_xp()
plt = pyplot()
lesson_start = time.perf_counter()
SAMPLER, SPACING = "dpmpp_2m", "trailing"            # lesson 06's choice: 20 steps, every run starting at t = T-1
# the pixel baseline gets what lessons 05 and 06 recommend for pixels: the cosine schedule, v-prediction
# with min-SNR-5 weighting, and x0_hat clipped to [-1, 1]; the latent model keeps Stable Diffusion's
# scaled-linear schedule and eps, and no clipping (a latent is not an image in [-1, 1])
PIXEL_RECIPE = dict(schedule="cosine", prediction_type="v_prediction", min_snr_gamma=5.0)


def show(ax, images, nrow, title):
    """Draw images in [-1, 1] (N, 3, H, W) as one grid on a matplotlib axis."""
    ax.imshow(image_grid(np.clip(backend.to_numpy(images), -1, 1), nrow=nrow), interpolation="nearest")
    ax.set_title(title, fontsize=10)
    ax.axis("off")


# %% 1. The frozen VAE and what the diffusion model will see
vae, vae_ckpt = train.load_trained(train.PRETRAINED_DIR / "vae.npz")
S = vae.config.image_size
latent_shape = vae.config.latent_shape                                 # (4, 8, 8)
probe = shapes.sample(256, seed=(args.seed, train.SHAPES_DATA_SEED), size=S)["images"]
z0 = backend.to_numpy(vae.encode_latents(xp.asarray(probe)))           # scale_factor * mu(x)
print(f"VAE {pathlib.Path(vae_ckpt.path).name}: {S}x{S}x3 = {3 * S * S} numbers -> latent {latent_shape} = "
      f"{int(np.prod(latent_shape))} numbers; scale factor {vae.scale_factor:.4f}")
print(f"scaled latents of 256 training images: std {z0.std():.3f} (about 1, as the schedule expects), "
      f"mean {z0.mean():+.3f}, range [{z0.min():.1f}, {z0.max():.1f}]")
assert abs(z0.std() - 1) < 0.15

# %% 2. Cost: a training step and a sample, in latent and in pixel space
latent_config = dataclasses.replace(settings.latent_model, in_channels=latent_shape[0], out_channels=latent_shape[0],
                                    image_size=latent_shape[1], context_dim=None)
candidates = {
    "latent 4x8x8": (latent_config, "scaled_linear", True),
    f"pixel 3x{settings.pixel_size}x{settings.pixel_size}": (
        dataclasses.replace(settings.pixel_model, image_size=settings.pixel_size), "cosine", False),
    f"pixel 3x{S}x{S}": (dataclasses.replace(settings.pixel_model, image_size=S), "cosine", False),
}


def decode(z):
    """Scaled latents -> images in [-1, 1]: Dec(z / scale_factor)."""
    return xp.clip(vae.decode_latents(z), -1, 1)


# On a CPU the clock is this process's CPU time (what the work costs, whoever else shares the cores);
# on a GPU it is wall time (the kernels run outside the process).
clock = time.process_time if device == "cpu" else time.perf_counter


def timed(fn):
    backend.synchronize()
    start = clock()
    fn()
    backend.synchronize()
    return clock() - start


# One round times one training step (forward + backward of L_simple), one sampling network call and
# (latent) one decode of every model, one model after the other. Another process that grabs the CPU
# for a while slows all three in that round, not one model's whole measurement; the median over
# rounds then drops such rounds.
# The SxS pixel U-Net's training step (tens of seconds at the full batch on a CPU) is timed at a small batch and
# scaled up: at that size every GEMM is large, so a step's cost is proportional to the batch.
models, batches = {}, {}
timing_batch = {name: settings.batch_size for name in candidates}
timing_batch[f"pixel 3x{S}x{S}"] = min(settings.batch_size, settings.full_size_timing_batch)
for name, (config, schedule_name, is_latent) in candidates.items():
    shape = (config.in_channels, config.image_size, config.image_size)
    models[name] = (UNet(config, seed=args.seed).to(device), NoiseSchedule.make(schedule_name, 1000), shape)
    batches[name] = backend.rng(args.seed).standard_normal((max(timing_batch[name], settings.timing_samples),) + shape,
                                                            dtype=np.float32)


def train_step(name):
    model, schedule, _ = models[name]
    model.train()
    model.zero_grad()
    x0 = batches[name][:timing_batch[name]]
    x_t, t, noise, _ = training_targets(schedule, x0, backend.rng(args.seed))
    loss, d_out = diffusion_loss(model(x_t, t), x0, noise, t, schedule)
    model.backward(d_out)
    model.eval()


def network_call(name):
    model, _, _ = models[name]
    with no_grad():
        model(batches[name][:settings.timing_samples], xp.full((settings.timing_samples,), 500))


timings = {name: {"step": [], "call": [], "decode": []} for name in candidates}
z_probe = backend.rng(args.seed).standard_normal((settings.timing_samples,) + tuple(latent_shape), dtype=np.float32)
for round_ in range(settings.timing_rounds + 1):                        # round 0 warms up (buffers, caches)
    for name, (_, _, is_latent) in candidates.items():
        step, call = timed(lambda: train_step(name)), timed(lambda: network_call(name))
        dec = timed(lambda: decode(z_probe)) if is_latent else 0.0
        if round_ > 0:
            timings[name]["step"].append(step)
            timings[name]["call"].append(call)
            timings[name]["decode"].append(dec)
costs = {}
for name, (config, _, _) in candidates.items():
    median = {key: float(np.median(values)) for key, values in timings[name].items()}
    costs[name] = {"numbers": int(np.prod(models[name][2])), "parameters": models[name][0].num_parameters(),
                   "step_ms": 1e3 * median["step"] * settings.batch_size / timing_batch[name],
                   "sample_ms": 1e3 * (settings.sample_steps * median["call"] + median["decode"]) / settings.timing_samples,
                   "spread": max(np.ptp(values) / max(np.median(values), 1e-9) for values in timings[name].values())}
latent_name, pixel_name, pixel_full_name = costs
print(f"\n{'CPU' if device == 'cpu' else 'wall'} time on {device}, medians of {settings.timing_rounds} alternated rounds (training step: batch "
      f"{settings.batch_size}, forward + backward; sample: {settings.sample_steps} network calls at batch "
      f"{settings.timing_samples}, the latent one plus Dec):")
print(f"  {'':16s} {'numbers/image':>13s} {'parameters':>11s} {'ms/train step':>14s} {'ms/sample':>10s}")
for name, cost in costs.items():
    print(f"  {name:16s} {cost['numbers']:13d} {cost['parameters']:11,d} {cost['step_ms']:14.0f} "
          f"{cost['sample_ms']:10.1f}   (rounds spread {cost['spread']:.0%} around the median"
          + (f"; its step timed at batch {timing_batch[name]}, x {settings.batch_size // timing_batch[name]})"
             if timing_batch[name] != settings.batch_size else ")"))
speedup_step = costs[pixel_full_name]["step_ms"] / costs[latent_name]["step_ms"]
speedup_sample = costs[pixel_full_name]["sample_ms"] / costs[latent_name]["sample_ms"]
print(f"  -> for {S}x{S} images the latent model trains {speedup_step:.1f}x and samples {speedup_sample:.1f}x "
      f"faster per image than the pixel model ({costs[pixel_full_name]['numbers'] // costs[latent_name]['numbers']}"
      "x fewer numbers)")
if not args.smoke:
    assert speedup_step > 2 and speedup_sample > 2, f"latent diffusion should be much cheaper than {S}x{S} pixels"

fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
names = [f"{n}\n({costs[n]['numbers']} numbers)" for n in costs]
for ax, key, label in ((axes[0], "step_ms", f"ms per training step (batch {settings.batch_size})"),
                       (axes[1], "sample_ms", f"ms per sample ({settings.sample_steps} steps)")):
    values = [cost[key] for cost in costs.values()]
    bars = ax.barh(names, values, color=["tab:blue", "tab:orange", "tab:red"])
    ax.bar_label(bars, fmt="%.0f" if key == "step_ms" else "%.1f", padding=3)
    ax.set(xlabel=label, xscale="log", title=label.split(" (")[0])
    ax.set_xlim(min(values) / 2, max(values) * 4)
    ax.tick_params(axis="x", which="minor", labelbottom=False)           # powers of ten only
axes[0].set_ylabel("U-Net input")
fig.suptitle(f"{'CPU' if device == 'cpu' else 'Wall'} time on {device}: latent 4x8x8 (sampling includes the decoder) vs pixel U-Nets of the same widths\n"
             f"(medians of {settings.timing_rounds} rounds that alternate the three models)", y=1.06)
save_figure(fig, out / "cost.png")

# %% 3. Train the latent U-Net with the `latent` job
latent_cfg = train.make_config("latent", "quick", {"steps": settings.latent_steps, "batch_size": settings.batch_size,
                                                   "lr": settings.lr, "dataset_size": settings.dataset_size,
                                                   "seed": args.seed,
                                                   "log_every": max(1, settings.latent_steps // 20)})
latent_cfg = dataclasses.replace(latent_cfg, model=settings.latent_model)
print(f"\nLATENT: the `latent` job, {latent_cfg.steps} steps of batch {latent_cfg.batch_size}, lr {latent_cfg.lr:g}, "
      f"{latent_cfg.dataset_size} images encoded once, schedule {latent_cfg.schedule}")
expected = settings.latent_steps * costs[latent_name]["step_ms"] / 1e3
latent = train.run_latent(latent_cfg, out=None, progress=False,
                          deadline=time.perf_counter() + max(60.0, settings.deadline_factor * expected))
latent_seconds = latent.seconds
print(f"latent U-Net: {latent.steps_run} steps in {latent_seconds:.1f} s "
      f"({1e3 * latent_seconds / latent.steps_run:.0f} ms/step)")

# %% 4. Train the pixel U-Net for the same compute: a step count from the measured cost ratio
step_ratio = costs[latent_name]["step_ms"] / costs[pixel_name]["step_ms"]
pixel_steps = max(settings.min_pixel_steps, int(round(latent.steps_run * step_ratio)))
pixel_cfg = train.make_config("pixel", "quick", {"steps": pixel_steps, "batch_size": settings.batch_size,
                                                 "lr": settings.lr, "dataset_size": settings.dataset_size,
                                                 "seed": args.seed, "log_every": max(1, pixel_steps // 20)})
pixel_cfg = dataclasses.replace(pixel_cfg, model=settings.pixel_model, image_size=settings.pixel_size, **PIXEL_RECIPE)
print(f"\nPIXEL: the `pixel` job at {settings.pixel_size}x{settings.pixel_size} ({pixel_cfg.schedule} schedule, "
      f"{pixel_cfg.prediction_type}, min-SNR {pixel_cfg.min_snr_gamma:g}), {pixel_steps} steps = {latent.steps_run} "
      f"latent steps x {step_ratio:.3f} (the median cost ratio above): the same compute")
expected = pixel_steps * costs[pixel_name]["step_ms"] / 1e3
pixel = train.run_pixel(pixel_cfg, out=None, progress=False,
                        deadline=time.perf_counter() + max(60.0, settings.deadline_factor * expected))
print(f"pixel U-Net: {pixel.steps_run} steps in {pixel.seconds:.1f} s ({1e3 * pixel.seconds / pixel.steps_run:.0f} "
      f"ms/step); latent U-Net: {latent.steps_run} steps in {latent_seconds:.1f} s")

fig, ax = plt.subplots(figsize=(7, 4))
for result, label in ((latent, f"latent 4x8x8 ({latent.steps_run} steps)"),
                      (pixel, f"pixel {settings.pixel_size}x{settings.pixel_size} ({pixel.steps_run} steps)")):
    steps_logged, losses = map(np.asarray, zip(*result.history))
    step_ms = costs[latent_name if result is latent else pixel_name]["step_ms"]
    ax.plot(steps_logged * step_ms / 1e3, losses, marker=".", label=label)
ax.set(title="Training loss against compute (the same budget for both)",
       xlabel="steps x median cost of a step, from the timing above (s)",
       ylabel="training loss, mean over a log window", yscale="log")
ax.legend()
ax.grid(alpha=0.3)
save_figure(fig, out / "loss.png")
first, last = latent.history[0][1], latent.history[-1][1]
print(f"L_simple over the first -> last log window: latent {first:.4f} -> {last:.4f}, pixel "
      f"{pixel.history[0][1]:.4f} -> {pixel.history[-1][1]:.4f} (the two losses do not compare: other data, "
      "and the pixel model's is a min-SNR-weighted v loss)")
assert last < first

# %% 5. Samples and Fréchet distances
judge = evaluate.load_classifier()


def features(images):
    return evaluate.classifier_features(judge, evaluate.match_size(images, judge.config.image_size))


latent_schedule = NoiseSchedule.make(latent_cfg.schedule, latent_cfg.num_train_timesteps)
pixel_schedule = NoiseSchedule.make(pixel_cfg.schedule, pixel_cfg.num_train_timesteps)
class Untrained:
    """An untrained U-Net's output: eps_theta = 0 everywhere (its last conv starts at zero)."""
    def forward(self, x, t):
        return xp.zeros_like(x)


untrained = Untrained()
sample = dict(steps=settings.sample_steps, seed=args.seed + 100, sampler=SAMPLER, spacing=SPACING)
start = time.perf_counter()
latent_samples = evaluate.sample_unconditional(latent.model, latent_schedule, settings.num_eval, latent_shape,
                                               decode=decode, **sample)
latent_sample_seconds = time.perf_counter() - start
start = time.perf_counter()
pixel_samples = evaluate.sample_unconditional(pixel.model, pixel_schedule, settings.num_eval,
                                              (3, settings.pixel_size, settings.pixel_size),
                                              prediction_type=pixel_cfg.prediction_type, clip_x0=True, **sample)
pixel_sample_seconds = time.perf_counter() - start
untrained_samples = evaluate.sample_unconditional(untrained, latent_schedule, settings.num_eval, latent_shape,
                                                  decode=decode, **sample)
real = shapes.sample(settings.num_eval, seed=(args.seed, evaluate.HELDOUT_SEED), size=S)["images"]
real_again = shapes.sample(settings.num_eval, seed=(args.seed, evaluate.HELDOUT_SEED + 1), size=S)["images"]
real_small = shapes.sample(settings.num_eval, seed=(args.seed, evaluate.HELDOUT_SEED + 1),
                           size=settings.pixel_size)["images"]
real_features = features(real)
fd = {"real vs real (the floor)": features(real_again),
      f"real {settings.pixel_size}x{settings.pixel_size}, upsampled": features(real_small),
      "latent U-Net": features(latent_samples),
      f"pixel U-Net {settings.pixel_size}x{settings.pixel_size}": features(pixel_samples),
      "untrained latent U-Net": features(untrained_samples)}
fd = {name: evaluate.frechet_distance_from_features(real_features, f) for name, f in fd.items()}
pixel_label = f"pixel U-Net {settings.pixel_size}x{settings.pixel_size}"
# the FD's own noise at this sample size: the spread of the real-vs-real distance over independent sets
floors = [fd["real vs real (the floor)"]] + [evaluate.frechet_distance_from_features(real_features, features(
    shapes.sample(settings.num_eval, seed=(args.seed, evaluate.HELDOUT_SEED + k), size=S)["images"])) for k in (2, 3)]
noise = float(np.std(floors, ddof=1))
print(f"\nsampling {settings.num_eval} images, {SAMPLER} {settings.sample_steps} steps ({SPACING}): latent "
      f"{latent_sample_seconds:.1f} s (with decoding), pixel {pixel_sample_seconds:.1f} s")
print(f"Fréchet distance to {settings.num_eval} held-out {S}x{S} images (classifier features; lower is better):")
for name, value in fd.items():
    print(f"  {name:30s} {value:10.1f}")
ratio = fd["latent U-Net"] / fd["untrained latent U-Net"]
print(f"latent / untrained FD = {ratio:.3f} (must be < {settings.fd_ratio}); latent / pixel FD at equal training "
      f"compute = {fd['latent U-Net'] / fd[pixel_label]:.3f} (must be < 1.25, or within two spreads of the floor "
      f"({2 * noise:.0f}) of the pixel model's; real-vs-real over {len(floors)} sets: "
      f"{', '.join(f'{f:.0f}' for f in floors)}). At --quick's budget the latent model's {S}x{S} samples come out about "
      f"10% farther from the data than the pixel model's {settings.pixel_size}x{settings.pixel_size} ones (1.11 and "
      f"1.12 measured): not better, but close, at {(S // settings.pixel_size) ** 2} times the pixels")
assert np.isfinite(fd["latent U-Net"]) and ratio < settings.fd_ratio
if pixel.steps_run < pixel_steps:
    print(f"the machine was busy: the pixel run stopped at its deadline after {pixel.steps_run} of {pixel_steps} "
          "steps, so the comparison is not at equal compute and is not asserted")
elif settings.latent_beats_pixel:
    assert fd["latent U-Net"] < max(1.25 * fd[pixel_label], fd[pixel_label] + 2 * noise), \
        "at equal compute the latent model should keep close to the pixel model"

count = min(48, settings.num_eval)
nrow = 8 if count >= 8 else count
fig, axes = plt.subplots(1, 4, figsize=(19, 4.6))
show(axes[0], real[:count], nrow, f"real {S}x{S} (held out)")
show(axes[1], latent_samples[:count], nrow, f"latent diffusion: Dec(z_0),\n{latent.steps_run} training steps, "
                                            f"FD {fd['latent U-Net']:.0f}")
show(axes[2], pixel_samples[:count], nrow, f"pixel diffusion {settings.pixel_size}x{settings.pixel_size}, "
                                           f"{pixel.steps_run} training steps\n(the same compute), FD {fd[pixel_label]:.0f}")
show(axes[3], untrained_samples[:count], nrow, f"untrained latent U-Net\n(eps_theta = 0), decoded, "
                                               f"FD {fd['untrained latent U-Net']:.0f}")
fig.suptitle(f"Unconditional samples, DPM-Solver++ {settings.sample_steps} steps, after the same compute "
             f"(real-vs-real FD {fd['real vs real (the floor)']:.0f})")
save_figure(fig, out / "samples.png")
image_grid(latent_samples[:64], nrow=8, scale=4).save(out / "latent_samples_grid.png")

# %% 6. One latent trajectory: z_t (three of its channels) and the decoded prediction Dec(z0_hat)
z_T = backend.rng(args.seed + 7).standard_normal((1,) + latent_shape, dtype=np.float32)
with no_grad():
    _, zs, z0_preds = samplers.sample(lambda z, t: latent.model(z, t), latent_schedule, (1,) + latent_shape,
                                      sampler="ddim", steps=settings.sample_steps, x_T=z_T, spacing=SPACING,
                                      return_intermediates=True, progress=False)
ts = samplers.sampler_timesteps(latent_schedule, settings.sample_steps, "ddim", spacing=SPACING)
inputs = [z_T] + zs[:-1]                                               # z_t entering step i
columns = np.linspace(0, settings.sample_steps - 1, min(7, settings.sample_steps)).round().astype(int)
fig, axes = plt.subplots(2, len(columns) + 1, figsize=(2.1 * (len(columns) + 1), 4.6))
for j, i in enumerate(columns):
    z_t = backend.to_numpy(inputs[i])[0, :3]                           # channels 0-2 as R, G, B
    axes[0, j].imshow(np.clip((z_t.transpose(1, 2, 0) + 3) / 6, 0, 1), interpolation="nearest")
    axes[0, j].set_title(f"z_t, t = {ts[i]}", fontsize=9)
    axes[0, j].axis("off")
    show(axes[1, j], decode(z0_preds[i]), 1, f"Dec(z0_hat), t = {ts[i]}")
z_final = backend.to_numpy(zs[-1])[0, :3]
axes[0, -1].imshow(np.clip((z_final.transpose(1, 2, 0) + 3) / 6, 0, 1), interpolation="nearest")
axes[0, -1].set_title("z_0 (result)", fontsize=9)
axes[0, -1].axis("off")
show(axes[1, -1], decode(zs[-1]), 1, "Dec(z_0): the sample")
axes[0, 0].text(-0.15, 0.5, "latent 8x8, ch. 0-2\nas RGB, [-3, 3] -> [0, 1]", transform=axes[0, 0].transAxes,
                rotation=90, va="center", ha="right", fontsize=8)
axes[1, 0].text(-0.15, 0.5, "decoded x0 prediction", transform=axes[1, 0].transAxes, rotation=90, va="center",
                ha="right", fontsize=8)
fig.suptitle(f"Denoising in latent space: the decoder turns each step's z0_hat into a {S}x{S} image")
save_figure(fig, out / "latent_trajectory.png")
print(f"lesson 08 done in {time.perf_counter() - lesson_start:.0f} s (CPU {time.process_time():.0f} s)")

# %% Exercises
# 1. Compression and cost. The latent has 48x fewer numbers than the 64x64 image; the table above
#    says how much cheaper a training step is. Predict first from the docstring's cost model
#    (convolutions ~ positions, attention ~ positions^2), then fill in ``predicted_speedup`` and
#    run with MINIDIFF_EXERCISE=1: it prints your guess beside the measured ratio (within 2x counts).
# 2. Whose limit? A latent sample can be no better than Dec(Enc(x)). MINIDIFF_EXERCISE=2 measures the
#    FD of real images passed through the VAE: predict whether it lies nearer the real-vs-real floor or
#    the latent U-Net's FD, and what that says about where the latent model's remaining error comes from.
# 3. (open) Give the latent model v-prediction with min-SNR-5 too (``PIXEL_RECIPE`` without the schedule,
#    on latent_cfg) and compare its FD with the eps run above.
EXERCISE = os.environ.get("MINIDIFF_EXERCISE", "")
predicted_speedup = None                     # exercise 1: your guess of pixel-64x64 / latent ms per training step
if EXERCISE == "1":
    assert predicted_speedup is not None, "write your guess into predicted_speedup first"
    measured = costs[pixel_full_name]["step_ms"] / costs[latent_name]["step_ms"]
    verdict = "within 2x" if 0.5 < predicted_speedup / measured < 2 else "off by more than 2x"
    print(f"exercise 1: you said {predicted_speedup:.1f}x, measured {measured:.1f}x ({verdict})")
if EXERCISE == "2":
    with no_grad():
        round_trip = np.concatenate([backend.to_numpy(decode(vae.encode_latents(xp.asarray(real_again[i:i + 64]))))
                                     for i in range(0, len(real_again), 64)])
    vae_fd = evaluate.frechet_distance_from_features(real_features, features(round_trip))
    print(f"exercise 2: FD of Dec(Enc(x)) {vae_fd:.1f}; floor {fd['real vs real (the floor)']:.1f}, "
          f"latent U-Net {fd['latent U-Net']:.1f}")
