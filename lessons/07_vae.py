r"""Lesson 07: the KL autoencoder that latent diffusion works in.

Stable Diffusion does not run diffusion on pixels. It first trains an autoencoder that squeezes a
512x512x3 image into a 64x64x4 latent (48x fewer numbers) and back, then trains the diffusion
model on latents (lesson 08). This lesson opens the autoencoder: minidiff's AutoencoderKL with
VAEConfig.f4_32, 32x32x3 shapes images -> 8x8x4 latents, trained with the ELBO below and shipped in
data/pretrained/vae32.npz; then (section 3b) the one the pipeline uses, data/pretrained/vae.npz:
64x64x3 -> the same 8x8x4 latents, Stable Diffusion's 48x.

The model. The encoder outputs, at every latent position, a mean and a log-variance: the
approximate posterior over latents is a diagonal Gaussian, and the decoder maps a latent back:

    q(z | x) = N(z; mu(x), diag sigma^2(x)),          x_rec = Dec(z).

The objective: the evidence lower bound. For any q, log p(x) is bounded below by

    ELBO(x) = E_{z ~ q(z|x)} [log p(x | z)]  -  KL( q(z | x) || p(z) ),       p(z) = N(0, I).

The first term asks the decoder to reconstruct x from a latent drawn from q; with a Laplace
likelihood p(x | z) ~ exp(-|x - Dec(z)|) it is minus the L1 error (a Gaussian gives L2). The
second pulls every posterior toward the prior.

The reparameterisation trick. "Draw z from q" has no gradient, but the same draw can be written
as a differentiable function of (mu, sigma) and noise that does not depend on them:

    z = mu + sigma * eps,   eps ~ N(0, I),     dz/dmu = 1,   dz/dlogvar = eps * sigma / 2.

The KL to N(0, I) has a closed form per latent dimension,

    KL( N(mu, sigma^2) || N(0, 1) ) = 1/2 (mu^2 + sigma^2 - 1 - log sigma^2),

zero only at mu = 0, sigma = 1, the prior itself.

Why Stable Diffusion keeps the KL weight tiny. It trains L = |x - x_rec|_1 + 1e-6 KL (plus a
perceptual and a GAN term: section 7). A full-weight KL would push every sigma toward 1 and
every mu toward 0: the decoder would then see mostly noise, and reconstructions blur (this lesson
shows how much by decoding mu + 1 * eps). SD wants a sharp autoencoder, not a generative
model: the diffusion model will be the generative model. The tiny KL is only a leash that stops
the latents drifting to huge values; sigma ends up small (the encoder is nearly deterministic)
and the latents' spread ends up far from 1.

The latent scale factor. Diffusion's forward process x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps
assumes data of about unit variance (then x_T is about N(0, I) and the signal-to-noise ratio of
each t means what the schedule says). So SD multiplies latents by a constant before diffusion
and divides after:

    scale_factor = 1 / std(z over the training set)   (0.18215 for SD's VAE),
    z_diffusion = scale_factor * z,      x = Dec(z_diffusion / scale_factor).

It fixes the spread only: the latents keep their mean (here about +1, because the grey background
that covers three quarters of every image encodes to positive values). Diffusion does not mind:
by t = T the offset is multiplied by sqrt(abar_T) = 0.07 and drowns in unit noise.

Compression. A latent cell holds 4 numbers for an f x f patch of 3-channel pixels: 3 f^2 / 4
fewer numbers. Stable Diffusion has f = 8: 3x512x512 = 786,432 -> 4x64x64 = 16,384, 48x. The
32x32 VAE has f = 4: 3x32x32 = 3072 -> 4x8x8 = 256, only 12x (a 32x32 image has too few pixels to
lose more); the shipped 64x64 one (VAEConfig.f8_64) has f = 8, SD's 48x: 12,288 -> 256.

Keeping a latent space (section 3b). The shipped 64x64 VAE was not trained on the ELBO from scratch:
that would give a latent space of its own, and the U-Net, its LoRA and its ControlNet (all trained on
the 32x32 VAE's latents) would have to be trained again. Instead it copies the 32x32 one (`python -m
minidiff train vae64`, minidiff/train/vae64.py): every scene is rendered at 32x32 and at 64x64, its
decoder learns to draw the 64x64 rendering from the 32x32 VAE's latent, and its encoder learns to
give that latent from the 64x64 rendering. Same latents, four times the pixels.

Sharper reconstructions (section 7). A pixel loss rewards the average of the images a latent
could mean: soft edges. SD's autoencoder adds a perceptual term (distance in a frozen network's
feature maps; here the attribute classifier's conv stages, models/classifier.py
ClassifierFeatures) and a patch-GAN term (models/discriminator.py), both in
models/vae_loss.py and on the command line as `python -m minidiff train vae --perceptual-weight W
--adversarial-weight W --adversarial-start S`. The lesson fine-tunes the 32x32 VAE for a few
steps with and without the perceptual term and measures edge sharpness.

What you will see (outputs/07_vae/): compression.png (how many numbers an image becomes, and the
f x f patch that one latent cell summarises); scratch_loss.png (a VAE trained from scratch for a
short run with the `vae` job); reconstructions.png (the 32x32 VAE on held-out images,
with the posterior's own noise and with the prior's sigma = 1); vae64.png (the shipped 64x64 VAE:
48x, and the latent it gives beside the 32x32 one's); latent_channels.png;
interpolation.png (latent path vs pixel cross-fade); scale_factor.png (the latents' spread made 1,
their mean not 0, and where the peaks come from); sharpness.png (fine-tuning with and without
the perceptual term). The last cell holds exercises.

Read beside: minidiff/models/vae.py (DiagonalGaussian: sample, kl and their backward; the
Encoder/Decoder; compute_scale_factor, encode_latents, decode_latents), minidiff/models/vae_loss.py
(the objective: reconstruction, KL, perceptual and adversarial terms), minidiff/models/classifier.py
(ClassifierFeatures), minidiff/models/discriminator.py (PatchDiscriminator, hinge losses),
minidiff/optim.py (AdamW), minidiff/train/jobs.py (run_vae: the `vae` job, which stores the scale
factor when it finishes) and minidiff/zoo.py (load_vae).

Run: python lessons/07_vae.py [--quick] [--smoke] [--device cpu|gpu]
No flag: the `vae` job's whole quick preset (800 steps of batch 16) and 200 fine-tuning steps per
objective, meant for a GPU. --quick: 120 steps of batch 8 from scratch (a short run: its reconstructions
are blurred blobs, often of the wrong colour or missing) and 40 fine-tuning steps per objective on a CPU (about
a minute on an idle 2-core CPU, several on a busy one). --smoke: a tiny VAE for 15 steps.
Exercises: MINIDIFF_EXERCISE=3 also fine-tunes with the GAN term.
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

from minidiff import backend, train, zoo
from minidiff.datasets import shapes
from minidiff.diffusion.schedule import NoiseSchedule
from minidiff.evaluate import HELDOUT_SEED
from minidiff.models.classifier import ClassifierFeatures
from minidiff.models.discriminator import DiscriminatorConfig, PatchDiscriminator
from minidiff.models.vae import VAEConfig
from minidiff.models.vae_loss import feature_matching, frozen_features, vae_loss
from minidiff.nn.module import no_grad
from minidiff.optim import AdamW
from minidiff.utils import image_grid, output_dir, parse_lesson_args, pyplot, save_figure


@dataclasses.dataclass
class Settings:
    scratch_model: VAEConfig      # the VAE trained from scratch in this lesson (vae32.npz is f4_32)
    scratch_steps: int
    scratch_batch: int
    scratch_dataset: int          # training images rendered once
    num_eval: int                 # held-out images for PSNR and the scale factor
    log_every: int
    tune_steps: int               # section 7: fine-tuning steps of the 32x32 VAE, per objective
    tune_batch: int
    tune_lr: float = 5e-5         # small: the 32x32 VAE is already good, a fine-tune only nudges it
    perceptual_weight: float = 1.0
    adversarial_weight: float = 0.1
    psnr_min: float = 28.0        # dB, the 32x32 VAE on held-out images (measured: 33.8 on 256)
    latent_error_max: float = 0.1  # the 64x64 VAE's latents vs the 32x32 one's, over their spread (measured 0.020)
    scratch_loss_ratio: float = 0.5   # the scratch VAE's last logged loss < this x its first


FULL = Settings(VAEConfig.f4_32(), scratch_steps=800, scratch_batch=16, scratch_dataset=4000, num_eval=1024,
                log_every=50, tune_steps=200, tune_batch=16)
# quick: a scratch step of batch 8 (f4_32 at 32x32) takes 0.16 s on an idle 2-core CPU and up to 1 s on a busy
# one, so 120 of them: the loss curve and the first blurred blobs; vae32.npz shows what longer training gives
QUICK = Settings(VAEConfig.f4_32(), scratch_steps=120, scratch_batch=8, scratch_dataset=600, num_eval=256,
                 log_every=10, tune_steps=40, tune_batch=8)
SMOKE = Settings(dataclasses.replace(VAEConfig.tiny(), image_size=16), scratch_steps=15, scratch_batch=4,
                 scratch_dataset=64, num_eval=32, log_every=5, tune_steps=2, tune_batch=2, scratch_loss_ratio=1.0)

args = parse_lesson_args('Lesson 07: the KL autoencoder that latent diffusion works in.')
settings = SMOKE if args.smoke else QUICK if args.quick else FULL
out = output_dir("07_vae", args.out)
exercise = os.environ.get("MINIDIFF_EXERCISE", "")      # "3": also run exercise 3's experiment
xp = backend.get_xp()
plt = pyplot()
lesson_start = time.perf_counter()


def show(ax, images, nrow, title):
    """Draw images in [-1, 1] (N, 3, H, W) as one grid on a matplotlib axis."""
    ax.imshow(image_grid(np.clip(backend.to_numpy(images), -1, 1), nrow=nrow), interpolation="nearest")
    ax.set_title(title, fontsize=10)
    ax.axis("off")


def psnr(x, y):
    """Peak signal-to-noise ratio in dB over all pixels: 10 log10(range^2 / MSE), range = 2 for [-1, 1]."""
    mse = float(np.mean((np.clip(backend.to_numpy(x), -1, 1) - backend.to_numpy(y)) ** 2))
    return 10.0 * np.log10(4.0 / mse)


# %% 1. Compression: how many numbers an image becomes
# one latent cell holds latent_channels numbers for an f x f patch of 3-channel pixels: 3 f^2 / 4 fewer
VAE32, VAE64 = train.PRETRAINED_DIR / zoo.VAE32_FILE, train.PRETRAINED_DIR / zoo.FILES["vae"]
shipped_config = VAEConfig.f4_32()
bottlenecks = [("ours at 32x32 (vae32.npz, f = 4)", 3, 32, 4, 8), ("ours at 64x64 (vae.npz, f = 8)", 3, 64, 4, 8),
               ("Stable Diffusion (f = 8)", 3, 512, 4, 64)]
for name, c_img, size, c_lat, latent in bottlenecks:
    print(f"{name:34s}: image {c_img}x{size}x{size} = {c_img * size * size:7,d} numbers -> latent "
          f"{c_lat}x{latent}x{latent} = {c_lat * latent * latent:6,d}: {c_img * size ** 2 / (c_lat * latent ** 2):.0f}x "
          f"fewer (f = {size // latent}: one latent cell = {c_lat} numbers for a {size // latent}x{size // latent} "
          f"patch of {c_img * (size // latent) ** 2} pixel values)")
sd_ratio = (512 * 512 * 3) / (64 * 64 * 4)
assert shipped_config.compression_ratio == 3 * 32 * 32 / (4 * 8 * 8) == 12, "ours: 12x, not Stable Diffusion's 48x"
assert VAEConfig.f8_64().compression_ratio == sd_ratio == 48, "f = 8 with 4 latent channels is SD's 48x"
assert VAEConfig.f8_64().latent_shape == shipped_config.latent_shape == (4, 8, 8)

scene = shapes.parse_caption("a large red circle above a small blue square")
fig, axes = plt.subplots(1, 3, figsize=(14, 4.6), gridspec_kw={"width_ratios": [1.25, 1, 1]})
names = [name.replace(" (", "\n(") for name, *_ in bottlenecks]
positions = np.arange(len(bottlenecks))
axes[0].bar(positions - 0.2, [c * s * s for _, c, s, _, _ in bottlenecks], 0.4, label="image (3 x H x W)")
axes[0].bar(positions + 0.2, [c * s * s for _, _, _, c, s in bottlenecks], 0.4, label="latent (4 x h x w)")
for k, (_, c_img, size, c_lat, latent) in enumerate(bottlenecks):
    axes[0].text(k, c_img * size * size * 1.4, f"{c_img * size ** 2 / (c_lat * latent ** 2):.0f}x", ha="center")
axes[0].set(yscale="log", ylim=(100, 4e6), ylabel="numbers per image (log scale)", xticks=positions,
            title="the bottleneck: numbers in, numbers kept")
axes[0].set_xticklabels(names, fontsize=8)
axes[0].legend(fontsize=8, loc="upper left")
for ax, size, f_down in ((axes[1], 32, 4), (axes[2], 64, 8)):
    picture = shapes.render(scene, size, rng=args.seed)
    ax.imshow(image_grid(picture[None], pad=0), interpolation="nearest", extent=(0, size, size, 0))
    for line in range(0, size + 1, f_down):                       # the latent grid: one cell per f x f patch
        ax.axhline(line, color="white", lw=0.6)
        ax.axvline(line, color="white", lw=0.6)
    ax.set(xticks=[], yticks=[], xlabel=f"{size}x{size}x3 = {3 * size * size:,} numbers  ->  8x8 cells x 4 = 256",
           title=f"f = {f_down}: each {f_down}x{f_down} pixel patch ({3 * f_down * f_down} values)\n"
                 f"-> one latent cell of 4 numbers: {3 * f_down * f_down // 4}x")
fig.suptitle("Compression: 12x at 32x32 (f = 4); the shipped 64x64 VAE has f = 8, Stable Diffusion's 48x (right)")
fig.tight_layout()
save_figure(fig, out / "compression.png")

# %% 2. Train a small VAE from scratch with the `vae` job: L1 + 1e-6 KL, falling
scratch_cfg = train.make_config("vae", "quick", {"steps": settings.scratch_steps, "batch_size": settings.scratch_batch,
                                                 "dataset_size": settings.scratch_dataset, "seed": args.seed,
                                                 "log_every": settings.log_every})
scratch_cfg = dataclasses.replace(scratch_cfg, model=settings.scratch_model,
                                  scale_images=min(512, settings.scratch_dataset))
S_scratch = settings.scratch_model.image_size
print(f"\nFROM SCRATCH: the `vae` job's quick preset cut to {scratch_cfg.steps} steps of batch "
      f"{scratch_cfg.batch_size} (the preset runs 800 of 16), {S_scratch}x{S_scratch} images, "
      f"kl_weight {scratch_cfg.kl_weight:g}, recon {scratch_cfg.recon}")
scratch = train.run_vae(scratch_cfg, out=None, progress=False)
steps_logged, losses = map(np.asarray, zip(*scratch.history))
print(f"scratch VAE: {scratch.steps_run} steps in {scratch.seconds:.1f} s "
      f"({1e3 * scratch.seconds / scratch.steps_run:.0f} ms/step); loss (mean |x - x_rec| + KL term, per pixel) "
      f"{losses[0]:.4f} over the first {settings.log_every} steps -> {losses[-1]:.4f} over the last")
assert losses[-1] < settings.scratch_loss_ratio * losses[0] or (args.smoke and losses[-1] < losses[0]), \
    "the scratch VAE's loss did not fall"

fig, ax = plt.subplots(figsize=(7, 4))
ax.plot(steps_logged, losses, marker="o")
ax.set(title=f"A VAE trained from scratch ({scratch.steps_run} steps, batch {scratch_cfg.batch_size}, "
             f"{S_scratch}x{S_scratch})", xlabel="training step",
       ylabel=f"loss: mean |x - x_rec| + KL term\n(mean over the last {settings.log_every} steps)", yscale="log")
ax.grid(alpha=0.3)
save_figure(fig, out / "scratch_loss.png")

# %% 3. The 32x32 VAE: trained for longer, on a GPU
vae, ckpt = train.load_trained(VAE32)
trained = ckpt.config["train"]
print(f"\n32x32 VAE: {ckpt.path}: {vae.config.image_size}x{vae.config.image_size} -> {vae.config.latent_shape}, "
      f"{vae.num_parameters():,} parameters, {ckpt.step} steps of batch {trained['batch_size']} "
      f"(kl_weight {trained['kl_weight']:g}), stored scale factor {vae.scale_factor:.4f}")
assert vae.config.latent_shape == (4, 8, 8) and vae.scale_factor is not None

S = vae.config.image_size
held_out_batch = shapes.sample(settings.num_eval, seed=(args.seed, HELDOUT_SEED), size=S)     # never trained on
held_out = held_out_batch["images"]
x = xp.asarray(held_out)
with no_grad():
    posterior = vae.encode(x)                                      # q(z | x): mean, std (N, 4, 8, 8)
    mean = posterior.mean
    reconstructed = vae.decode(mean)                               # Dec(mu): the usual reconstruction
    eps = backend.rng(args.seed).standard_normal(mean.shape, dtype=np.float32)
    sampled = vae.decode(mean + posterior.std * eps)               # Dec(z), z ~ q(z | x)
    prior_sigma = vae.decode(mean + eps)                           # as if sigma were the prior's 1
psnr_shipped = psnr(reconstructed, held_out)
psnr_sampled = psnr(sampled, held_out)
psnr_prior = psnr(prior_sigma, held_out)
per_image = 10 * np.log10(4 / np.mean((np.clip(backend.to_numpy(reconstructed), -1, 1) - held_out) ** 2,
                                     axis=(1, 2, 3)))
print(f"reconstruction PSNR on {settings.num_eval} held-out images (10 log10(2^2 / MSE)):")
print(f"  Dec(mu)                        {psnr_shipped:6.2f} dB   (per image: median {np.median(per_image):.1f}, "
      f"worst {per_image.min():.1f})")
print(f"  Dec(mu + sigma eps), z ~ q     {psnr_sampled:6.2f} dB   (the posterior's own noise barely matters)")
print(f"  Dec(mu + 1 * eps), prior sigma {psnr_prior:6.2f} dB   (what a full-weight KL would push toward)")
colour = held_out_batch["labels"]["colour"]                       # the first object's colour
by_colour = {name: per_image[colour == k].mean() for k, name in enumerate(shapes.COLOURS) if (colour == k).any()}
print("  mean PSNR per image by (first) object colour: " + ", ".join(f"{k} {v:.1f}" for k, v in by_colour.items())
      + " dB (the errors sit on the edges; blue and green edges come back softest)")
assert psnr_shipped > settings.psnr_min, f"shipped VAE PSNR {psnr_shipped:.2f} dB <= {settings.psnr_min}"
assert psnr_sampled > psnr_shipped - 2.0 and psnr_prior < psnr_shipped - 5.0

# the scratch VAE on the same kind of held-out images (at its own size)
held_small = shapes.sample(settings.num_eval, seed=(args.seed, HELDOUT_SEED), size=S_scratch)["images"]
scratch_vae = scratch.model.eval()
with no_grad():
    scratch_rec = scratch_vae.decode(scratch_vae.encode(xp.asarray(held_small)).mean)
psnr_scratch = psnr(scratch_rec, held_small)
print(f"  scratch VAE, Dec(mu)           {psnr_scratch:6.2f} dB   ({scratch.steps_run} CPU steps vs "
      f"{ckpt.step} GPU steps of batch {trained['batch_size']})")

n_show = 8
error = np.abs(np.clip(backend.to_numpy(reconstructed[:n_show]), -1, 1) - held_out[:n_show])   # in [0, 2]
rows = [(held_out[:n_show], "held-out originals x"),
        (reconstructed[:n_show], f"vae32.npz: Dec(mu)  ({psnr_shipped:.1f} dB over {settings.num_eval} images)"),
        (2 * error - 1, "|x - Dec(mu)|, 0 = black, 1 = white"),
        (sampled[:n_show], f"Dec(mu + sigma eps), z ~ q(z|x)  ({psnr_sampled:.1f} dB)"),
        (prior_sigma[:n_show], f"Dec(mu + 1 * eps), the prior's sigma  ({psnr_prior:.1f} dB)")]
if S_scratch == S:
    rows.append((scratch_rec[:n_show], f"VAE trained here from scratch, {scratch.steps_run} steps of batch "
                                       f"{scratch_cfg.batch_size}  "
                                       f"({psnr_scratch:.1f} dB)"))
fig, axes = plt.subplots(len(rows), 1, figsize=(9, 1.55 * len(rows) + 0.6), constrained_layout=True)
for ax, (images, title) in zip(axes, rows):
    show(ax, images, n_show, title)
fig.suptitle(f"Reconstructions: {S}x{S}x3 -> latent 4x8x8 -> {S}x{S}x3")
save_figure(fig, out / "reconstructions.png")

# %% 3b. Stable Diffusion's 48x: the shipped 64x64 VAE, which speaks the 32x32 one's latents
vae64, ckpt64 = train.load_trained(VAE64)
S64 = vae64.config.image_size
taught = ckpt64.config.get("train", {})
print(f"\n64x64 VAE (the pipeline's): {ckpt64.path}: {S64}x{S64}x3 -> {vae64.config.latent_shape}, "
      f"{vae64.config.compression_ratio:.0f}x fewer numbers, {vae64.num_parameters():,} parameters; taught the "
      f"latents of {pathlib.Path(taught.get('teacher', VAE32)).name} for {ckpt64.step} steps of batch "
      f"{taught.get('batch_size')} (train vae64); scale factor {vae64.scale_factor:.4f} (the 32x32 one's "
      f"{vae.scale_factor:.4f}: the same latent space, the same scale)")
assert vae64.config.compression_ratio == sd_ratio == 48 and vae64.config.latent_shape == vae.config.latent_shape
twins = shapes.sample(settings.num_eval, seed=(args.seed, HELDOUT_SEED), size=S64)   # the same scenes, at 64x64
assert twins["captions"] == held_out_batch["captions"]
with no_grad():
    mu32 = vae.encode(x).mean                                       # the 32x32 rendering's latent
    mu64 = vae64.encode(xp.asarray(twins["images"])).mean           # the 64x64 rendering's latent
    rec64 = vae64.decode(mu64)                                      # 64x64 -> 8x8x4 -> 64x64
    drawn64 = vae64.decode(mu32)                                    # the 32x32 VAE's latent drawn at 64x64
latent_error = float(xp.abs(mu64 - mu32).mean() / mu32.std())
psnr64, psnr_drawn = psnr(rec64, twins["images"]), psnr(drawn64, twins["images"])
print(f"  |Enc64(x64) - Enc32(x32)| / spread of the latents: {latent_error:.3f} (0 = the same latent)")
print(f"  Dec64(Enc64(x64)) against x64: {psnr64:.2f} dB;  Dec64(Enc32(x32)) against x64: {psnr_drawn:.2f} dB "
      f"(the 32x32 VAE's own reconstruction: {psnr_shipped:.2f} dB at 32x32)")
assert latent_error < settings.latent_error_max, f"the 64x64 VAE's latents are {latent_error:.3f} from the 32x32 one's"
assert min(psnr64, psnr_drawn) > settings.psnr_min, "the 64x64 VAE should reconstruct as well as the 32x32 one"

rows = [(held_out[:n_show], f"x32: held-out 32x32 images ({3 * 32 * 32:,} numbers each)"),
        (twins["images"][:n_show], f"x64: the same scenes at 64x64 ({3 * S64 * S64:,} numbers each)"),
        (rec64[:n_show], f"Dec64(Enc64(x64)): 64x64 -> 4x8x8 = 256 numbers -> 64x64, 48x  ({psnr64:.1f} dB)"),
        (drawn64[:n_show], f"Dec64(Enc32(x32)): the 32x32 VAE's latent, drawn at 64x64  ({psnr_drawn:.1f} dB)")]
fig, axes = plt.subplots(len(rows) + 1, 1, figsize=(9, 1.7 * len(rows) + 3.2), constrained_layout=True,
                         gridspec_kw={"height_ratios": [1] * len(rows) + [1.9]})
for ax, (images, title) in zip(axes, rows):
    show(ax, images, n_show, title)
picks = slice(0, None, max(1, mu32.size // 4000))                  # a few thousand latent numbers
axes[-1].scatter(backend.to_numpy(mu32).ravel()[picks], backend.to_numpy(mu64).ravel()[picks], s=3, alpha=0.4)
lo, hi = float(mu32.min()), float(mu32.max())
axes[-1].plot([lo, hi], [lo, hi], color="black", lw=0.8, label="the same latent")
axes[-1].set(xlabel="latent number from the 32x32 VAE, Enc32(x32)", ylabel="from the 64x64 VAE,\nEnc64(x64)",
             title=f"one latent space: the 64x64 VAE's encoder lands where the 32x32 one does "
                   f"(error {latent_error:.3f} of the spread)")
axes[-1].set(xlim=(lo - 1, hi + 1), ylim=(lo - 1, hi + 1))
axes[-1].legend(fontsize=8)
fig.suptitle("The shipped 64x64 VAE: Stable Diffusion's 48x, in the 32x32 VAE's latent space")
save_figure(fig, out / "vae64.png")

# %% 4. The latent: four 8x8 channels per image, and how random q(z | x) is
z = backend.to_numpy(mean).astype(np.float64)                      # (N, 4, 8, 8)
sigma = backend.to_numpy(posterior.std).astype(np.float64)
kl_per_image = float(posterior.kl())                                # sum over 256 latent dims, mean over images
kl_term = trained["kl_weight"] * kl_per_image / held_out[0].size    # as vae_loss weighs it, per pixel value
l1 = float(np.mean(np.abs(np.clip(backend.to_numpy(reconstructed), -1, 1) - held_out)))
print(f"\nlatent statistics over {settings.num_eval} held-out images:")
for channel in range(z.shape[1]):
    print(f"  channel {channel}: mean {z[:, channel].mean():+6.3f}, std {z[:, channel].std():.3f}")
print(f"  posterior sigma: mean {sigma.mean():.3f} vs std of the means {z.std():.3f}: q(z|x) is nearly a point")
print(f"  KL(q || N(0, I)) = {kl_per_image:.0f} nats per image; x kl_weight / (3*{S}*{S}) = {kl_term:.2e} per "
      f"pixel value vs the L1 term {l1:.4f}: the KL is {100 * kl_term / (kl_term + l1):.3f}% of the loss")
assert sigma.mean() < 0.2 * z.std(), "the encoder should be close to deterministic"
assert kl_term < 0.01 * l1, "with kl_weight = 1e-6 the KL is a leash, not a prior"

n_rows = 4
limit = float(np.abs(z[:n_rows]).max())
fig, axes = plt.subplots(n_rows, 5, figsize=(11, 2.3 * n_rows), constrained_layout=True)
for i in range(n_rows):
    axes[i, 0].imshow(np.asarray(image_grid(held_out[i:i + 1], pad=0)), interpolation="nearest")
    axes[i, 0].set(title="image x" if i == 0 else None, xticks=[], yticks=[])
    axes[i, 0].set_ylabel(f"image {i}")
    for channel in range(4):
        ax = axes[i, channel + 1]
        im = ax.imshow(z[i, channel], cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
        ax.set(xticks=range(0, 8, 2), yticks=range(0, 8, 2))
        if i == 0:
            ax.set_title(f"latent channel {channel}\n(8x8)", fontsize=10)
        if i == n_rows - 1:
            ax.set_xlabel("latent column")
        if channel == 0:
            ax.set_ylabel("latent row")
fig.colorbar(im, ax=axes[:, 1:], shrink=0.6, label="mu(x) (unscaled)")
fig.suptitle("The 32x32 VAE: each 32x32 image becomes four 8x8 maps, one latent pixel per 4x4 patch")
save_figure(fig, out / "latent_channels.png")

# %% 5. Interpolation: a straight line in latent space vs a cross-fade in pixels
endpoints = np.stack([shapes.render(shapes.parse_caption(caption), S, rng=args.seed)
                      for caption in ("a large red circle on the left", "a large blue square on the right")])
alphas = np.linspace(0.0, 1.0, 9, dtype=np.float32)
with no_grad():
    z1, z2 = vae.encode(xp.asarray(endpoints)).mean                 # (4, 8, 8) each
    # z(a) = (1 - a) z1 + a z2, decoded
    path = xp.stack([(1 - a) * z1 + a * z2 for a in alphas])
    latent_path = np.clip(backend.to_numpy(vae.decode(path)), -1, 1)
pixel_path = np.stack([(1 - a) * endpoints[0] + a * endpoints[1] for a in alphas])
ends_match = psnr(latent_path[0], endpoints[0]), psnr(latent_path[-1], endpoints[1])
middle = len(alphas) // 2
background = np.median(endpoints)                                   # the grey


def faint(images):
    """Fraction of pixels that are neither background nor at least 60% of a shape's colour: ghosts."""
    distance = np.abs(images - background).max(axis=1)              # (N, H, W) how far from the grey
    full = np.abs(endpoints - background).max(axis=1).max()
    return ((distance > 0.1) & (distance < 0.6 * full)).mean(axis=(1, 2))


print(f"\ninterpolating 'a large red circle on the left' -> 'a large blue square on the right': "
      f"the ends decode back to the two images ({ends_match[0]:.1f}, {ends_match[1]:.1f} dB PSNR against them)")
print(f"  half-faded ('ghost') pixels at a = 0.5: pixel cross-fade {faint(pixel_path)[middle]:.3f}, "
      f"latent path {faint(latent_path)[middle]:.3f} (fraction of the image)")
assert min(ends_match) > settings.psnr_min - 5
assert faint(latent_path)[middle] < faint(pixel_path)[middle], "the decoder should avoid see-through blends"
fig, axes = plt.subplots(2, 1, figsize=(11, 3.6))
show(axes[0], latent_path, len(alphas), "decoded latent interpolation Dec((1 - a) z1 + a z2), a = 0, 1/8, ..., 1")
show(axes[1], pixel_path, len(alphas), "pixel cross-fade (1 - a) x1 + a x2")
fig.suptitle("Between two images: a straight line in latent space vs in pixel space")
save_figure(fig, out / "interpolation.png")

# %% 6. The scale factor: 1 / std of the latents -- unit standard deviation, not zero mean
recomputed = vae.compute_scale_factor(x)                          # sets vae.scale_factor ...
stored = float(np.asarray(ckpt.extra["scale_factor"]))
vae.scale_factor = stored                                          # ... so put the stored one back
scaled = backend.to_numpy(vae.encode_latents(x)).astype(np.float64)   # z * scale_factor, (N, 4, 8, 8)
print(f"\nscale factor: stored {stored:.4f} (1 / std of 2048 training latents), recomputed on {settings.num_eval} "
      f"held-out images {recomputed:.4f} (ratio {recomputed / stored:.3f}); Stable Diffusion's is 0.18215")
print(f"latents: std {z.std():.3f} -> scaled std {scaled.std():.3f}, scaled mean {scaled.mean():+.3f}: "
      "the factor fixes the spread, not the centre (as in Stable Diffusion)")
assert abs(recomputed / stored - 1) < 0.1, "the stored scale factor should fit held-out images too"
assert abs(scaled.std() - 1) < 0.1, "scaled latents have unit standard deviation"

# where the mean comes from: latent cells whose 4x4 pixel patch is all background
background_colour = np.median(held_out.reshape(len(held_out), 3, -1), axis=2)[:, :, None, None]
plain_pixels = np.abs(held_out - background_colour).max(axis=1) < 0.05             # (N, S, S)
f_down = S // z.shape[-1]
plain_cells = plain_pixels.reshape(len(held_out), 8, f_down, 8, f_down).all(axis=(2, 4))   # (N, 8, 8)
per_channel = scaled.transpose(1, 0, 2, 3)                                          # (4, N, 8, 8)
edges = np.linspace(-6, 6, 121)
modes, background_values = [], []
print(f"  {plain_cells.mean():.0%} of the latent cells see only background:")
for channel in range(4):
    counts, _ = np.histogram(per_channel[channel], bins=edges)
    modes.append(float(edges[counts.argmax()] + 0.05))                               # the tallest bin's centre
    background_values.append(float(np.median(per_channel[channel][plain_cells])))
    print(f"  channel {channel}: mean {per_channel[channel].mean():+.2f}, std {per_channel[channel].std():.2f}; "
          f"histogram peak at {modes[-1]:+.2f}, background cells' median {background_values[-1]:+.2f}")
schedule = NoiseSchedule.make("scaled_linear", 1000)          # lesson 08's schedule
offset_at_T = float(np.sqrt(schedule.alphas_cumprod[-1])) * scaled.mean()
print(f"  the peaks ARE the background, and all four sit above 0, hence the mean {scaled.mean():+.2f}. "
      f"At t = T the forward process keeps sqrt(abar_T) = {np.sqrt(schedule.alphas_cumprod[-1]):.3f} of it: an "
      f"offset of {offset_at_T:.3f} beside unit noise, so x_T is still about N(0, I)")
assert scaled.mean() > 0.5, "the scaled latents are not centred"
assert plain_cells.mean() > 0.5
assert all(abs(m - b) < 0.3 for m, b in zip(modes, background_values)), (modes, background_values)
assert offset_at_T < 0.1
with no_grad():
    round_trip = backend.to_numpy(vae.decode_latents(vae.encode_latents(x[:8])))   # Dec(s mu / s)
round_trip_gap = float(np.abs(round_trip - backend.to_numpy(reconstructed[:8])).max())
print(f"decode_latents(encode_latents(x)) == Dec(mu): max difference {round_trip_gap:.1e}")
assert round_trip_gap < 1e-4

fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
grid = np.linspace(-6, 6, 200)
gauss = np.exp(-grid ** 2 / 2) / np.sqrt(2 * np.pi)
axes[0].hist(z.ravel(), bins=edges, density=True, alpha=0.7, color="grey")
axes[0].set(title=f"latents mu(x): std {z.std():.2f}, mean {z.mean():+.2f}", xlabel="value", ylabel="density")
axes[1].hist(scaled.ravel(), bins=edges, density=True, alpha=0.7, label="scaled latent values")
axes[1].plot(grid, gauss, "k--", label="N(0, 1)")
axes[1].plot(grid + scaled.mean(), gauss, "k:", label=f"N({scaled.mean():+.2f}, 1)")
axes[1].axvline(scaled.mean(), color="tab:red", lw=1, label=f"mean {scaled.mean():+.2f}")
axes[1].set(title=f"scale_factor x mu(x): std {scaled.std():.2f} (1), mean {scaled.mean():+.2f} (not 0)",
            xlabel="value", ylabel="density")
axes[1].legend(loc="upper left", fontsize=8)
colours = ("tab:blue", "tab:orange", "tab:green", "tab:purple")
for channel in range(4):
    axes[2].hist(per_channel[channel].ravel(), bins=edges, density=True, histtype="step", lw=1.4,
                 color=colours[channel], label=f"channel {channel}")
    axes[2].axvline(background_values[channel], color=colours[channel], ls="--", lw=1)
axes[2].set(title=f"by channel; dashed: the background cells ({plain_cells.mean():.0%} of cells)",
            xlabel="scaled value", ylabel="density")
axes[2].legend(fontsize=8)
fig.suptitle(f"The scale factor {stored:.3f} = 1 / std(z) gives unit standard deviation, not zero mean: "
             "the tall peaks are the grey background", y=1.02)
fig.tight_layout()
save_figure(fig, out / "scale_factor.png")


# %% 7. Sharper reconstructions: fine-tune with and without the perceptual term
# L = mean |x - x_rec| + (1e-6 / D) KL  [+ w_P sum_l mean (phi_l(x_rec) - phi_l(x))^2]  [+ w_G (-mean D(x_rec))]
tune_data = xp.asarray(shapes.sample(max(256, 16 * settings.tune_batch), seed=(args.seed, 1), size=S)["images"])
judge = zoo.load_classifier(device=backend.device())
perceptual_fn = frozen_features(ClassifierFeatures(judge.train()))     # phi: the classifier's conv maps, frozen


def spectral_high(images):
    """Fraction of each image's spectral energy above 0.25 cycles/pixel, mean over images."""
    power = np.abs(np.fft.fft2(images)) ** 2                          # (N, 3, S, S)
    frequency = np.fft.fftfreq(images.shape[-1])
    radius = np.hypot(frequency[:, None], frequency[None, :])
    return float((power[..., radius > 0.25].sum(axis=-1) / power.reshape(*power.shape[:2], -1).sum(axis=-1)).mean())


def gradient_magnitude(images):
    """|grad| by forward differences, (N, 3, S-1, S-1)."""
    return np.hypot(np.diff(images, axis=-1)[..., :-1, :], np.diff(images, axis=-2)[..., :, :-1])


real_edges = gradient_magnitude(held_out) > 0.2                      # where the real images have an edge


def sharpness(model):
    """Reconstructions of the held-out images and what they are measured by."""
    model.eval()
    with no_grad():
        rec = np.clip(backend.to_numpy(model.decode(model.encode(x).mean)), -1, 1)
        features_rec, _ = perceptual_fn(xp.asarray(rec))
        features_real, _ = perceptual_fn(x)
    model.train()
    return {"images": rec, "L1": float(np.abs(rec - held_out).mean()),
            "edge": float(gradient_magnitude(rec)[real_edges].mean() / gradient_magnitude(held_out)[real_edges].mean()),
            "high": spectral_high(rec) / spectral_high(held_out),
            "perceptual": float(feature_matching(features_rec, features_real)[0])}


def fine_tune(perceptual_weight=0.0, adversarial_weight=0.0):
    """The 32x32 VAE after settings.tune_steps AdamW steps on the objective with these weights.
    Every objective sees the same batches and the same posterior noise (one seed)."""
    model = zoo.load_vae(VAE32, backend.device()).train()
    optimizer = AdamW(model, lr=settings.tune_lr, weight_decay=0.0)
    discriminator = None
    if adversarial_weight:
        discriminator = PatchDiscriminator(DiscriminatorConfig(), seed=args.seed).to(backend.device()).train()
        d_optimizer = AdamW(discriminator, lr=2e-4, betas=(0.5, 0.9), weight_decay=0.0)
    rng = backend.rng(args.seed)
    for _ in range(settings.tune_steps):
        images = tune_data[rng.integers(0, len(tune_data), size=(settings.tune_batch,))]
        model.zero_grad()
        if discriminator is not None:
            discriminator.zero_grad()
        _, parts = vae_loss(model, images, rng, kl_weight=1e-6, recon="l1",
                            perceptual_fn=perceptual_fn if perceptual_weight else None,
                            perceptual_weight=perceptual_weight, discriminator=discriminator,
                            adversarial_weight=adversarial_weight)
        optimizer.step()
        if discriminator is not None:
            d_optimizer.step()                     # the discriminator's own step, on its hinge loss
    return sharpness(model)


objectives = {"vae32.npz (before)": None, "L1 + KL": {},
              f"L1 + KL + {settings.perceptual_weight:g} x perceptual": {"perceptual_weight": settings.perceptual_weight}}
if exercise == "3" or args.full:
    objectives[f"L1 + KL + {settings.adversarial_weight:g} x GAN"] = {"adversarial_weight": settings.adversarial_weight}
tune_start = time.perf_counter()
measured = {name: sharpness(vae) if weights is None else fine_tune(**weights) for name, weights in objectives.items()}
print(f"\nfine-tuning the 32x32 VAE for {settings.tune_steps} steps of batch {settings.tune_batch} (lr "
      f"{settings.tune_lr:g}) per objective ({time.perf_counter() - tune_start:.0f} s); on {settings.num_eval} held-out "
      "images (edge: mean |gradient| of the reconstruction where the real image has an edge, over the real one's; "
      "high: spectral energy above 0.25 cycles/pixel, over the real one's; 1 = as sharp as the real images):")
print(f"  {'objective':36s} {'L1':>7s} {'edge':>6s} {'high':>6s} {'perceptual distance':>20s}")
for name, m in measured.items():
    print(f"  {name:36s} {m['L1']:7.4f} {m['edge']:6.3f} {m['high']:6.3f} {m['perceptual']:20.4f}")
plain, perceptual = measured["L1 + KL"], measured[list(objectives)[2]]
print(f"  the perceptual term cuts the feature distance {plain['perceptual']:.4f} -> {perceptual['perceptual']:.4f} "
      f"and moves edge sharpness {plain['edge']:.3f} -> {perceptual['edge']:.3f}, L1 {plain['L1']:.4f} -> "
      f"{perceptual['L1']:.4f}")
if not args.smoke:
    assert perceptual["perceptual"] < plain["perceptual"], "the perceptual term lowers the distance it measures"

n_show = 6
rows = [(held_out[:n_show], "held-out originals")] + [(m["images"][:n_show], f"{name}: edge {m['edge']:.3f}, "
                                                      f"L1 {m['L1']:.4f}") for name, m in measured.items()]
fig, axes = plt.subplots(len(rows), 1, figsize=(8, 1.75 * len(rows) + 0.6), constrained_layout=True)
for ax, (images, title) in zip(axes, rows):
    show(ax, images, n_show, title)
fig.suptitle(f"Fine-tuning {settings.tune_steps} steps with each objective (edge 1.00 = as sharp as the originals)")
save_figure(fig, out / "sharpness.png")
print(f"lesson 07 done in {time.perf_counter() - lesson_start:.0f} s")


# %% Exercises
# 1. The KL in closed form. Fill in kl_to_prior: KL(N(mean, exp(logvar)) || N(0, I)) summed over the latent
#    dimensions of each image, averaged over the images (the docstring's formula). The cell checks it against
#    DiagonalGaussian.kl() (minidiff/models/vae.py).
# 2. Centre the latents too. Fill in standardise: per latent channel, subtract the channel's mean and divide by
#    its std (over images and positions). Predict first: what would the histogram in scale_factor.png look like?
# 3. The GAN term. Run with MINIDIFF_EXERCISE=3 (or --full) to fine-tune with adversarial_weight 0.1 as well:
#    the patch discriminator starts untrained, so after a few dozen steps what does it tell the decoder?
#    Compare its row in sharpness.png with the perceptual one. (From the command line:
#    python -m minidiff train vae --perceptual-weight 1 --adversarial-weight 0.1 --adversarial-start 500)


def kl_to_prior(mean, logvar):
    """Your code: KL(N(mean, exp(logvar)) || N(0, 1)) summed per image over (C, h, w), mean over images."""
    return None


def standardise(latents):
    """Your code: (N, C, h, w) -> the same with every channel at mean 0, std 1."""
    return None


answer = kl_to_prior(posterior.mean, posterior.logvar)
if answer is None:
    print("exercise 1: fill in kl_to_prior")
else:
    assert abs(float(answer) / float(posterior.kl()) - 1) < 1e-3, (float(answer), float(posterior.kl()))
    print(f"exercise 1: correct, {float(answer):.1f} nats per image")
answer = standardise(scaled)
if answer is None:
    print("exercise 2: fill in standardise")
else:
    answer = np.asarray(answer)
    assert np.allclose(answer.mean(axis=(0, 2, 3)), 0, atol=1e-6) and np.allclose(answer.std(axis=(0, 2, 3)), 1)
    print("exercise 2: correct, every channel at mean 0 and std 1")
