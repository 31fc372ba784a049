"""A 64x64 autoencoder that speaks the 32x32 one's latents: ``python -m minidiff train vae64``.

Stable Diffusion compresses a 512x512x3 image into a 64x64x4 latent: f = 8, 48x fewer numbers. Our
first autoencoder (f = 4) maps 32x32x3 -> 8x8x4, 12x. This job builds the f = 8 one, 64x64x3 -> the
same 8x8x4 latent, 48x, without retraining anything that works in latent space: the U-Net, its
LoRA, its token and its ControlNet, and the noise-aware classifier all keep working, because the
new autoencoder is taught to use *the old one's latents*.

Every training scene is rendered twice, at 32x32 (x32) and at 64x64 (x64): the same objects, the
same places (``datasets.shapes.sample`` scales its geometry with the size). The frozen 32x32
autoencoder (the teacher) gives the latent posterior q_T(z | x32) = N(mu_T, sigma_T^2). The new one
learns two regressions at once, each half from its own loss:

    decoder:  z ~ q_T(z | x32),   L_dec = mean |Dec(z) - x64|              (it draws 64x64 from the old latent)
    encoder:  (mu, logvar) = Enc(x64),
              L_enc = mean (s (mu - mu_T))^2 + w_v mean (logvar - logvar_T)^2     (s = the scale factor)

    dL_dec/dDec(z) = sign(Dec(z) - x64) / N,   dL_enc/dmu = 2 s^2 (mu - mu_T) / N,
    dL_enc/dlogvar = 2 w_v (logvar - logvar_T) / N

so Enc(x64) lands where the teacher puts x32, and the teacher's scale factor carries over unchanged.
This is distillation: the student copies the teacher's latent space instead of finding its own (a
VAE trained from scratch at 64x64 would find a different latent space, and every model above it
would have to be trained again). Stable Diffusion's improved autoencoders (ft-EMA, ft-MSE) kept
the old latent space for the same reason, by fine-tuning the decoder alone.

Read beside: ``minidiff/train/vae_decoder.py`` (the decoder-only fine-tune), ``minidiff/models/vae.py``.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from .. import backend, zoo
from ..checkpoint import load_checkpoint
from ..datasets import shapes
from ..models.vae import AutoencoderKL
from ..models.vae_loss import reconstruction_loss
from ..nn.module import no_grad
from .config import VAE64Job
from .data import SHAPES_DATA_SEED, draw_latents
from .loop import fit


def teacher_moments(teacher, images, batch_size=256):
    """The teacher's posterior mean and log-variance (unscaled, clamped) for host images, on the device."""
    xp = backend.get_xp()
    means, logvars = [], []
    with no_grad():
        for start in range(0, len(images), batch_size):
            posterior = teacher.encode(xp.asarray(images[start:start + batch_size]))
            means.append(posterior.mean)
            logvars.append(posterior.logvar)
    return xp.concatenate(means), xp.concatenate(logvars)


def twin_scenes(n, seed, teacher_size, size, cfg):
    """The same n scenes rendered at the teacher's size and at the student's (host float32)."""
    kwargs = dict(two_object_fraction=cfg.two_object_fraction, extra_colours=("pink",),
                  extra_fraction=cfg.extra_fraction)
    small = shapes.sample(n, seed=seed, size=teacher_size, **kwargs)
    large = shapes.sample(n, seed=seed, size=size, **kwargs)
    if small["captions"] != large["captions"]:       # the scenes must be the same ones
        raise RuntimeError("vae64: the two renderings of the training scenes differ")
    return small["images"], large["images"]


def distillation_loss(student, x64, z, mean_t, logvar_t, logvar_weight=0.01, recon="l1"):
    """L = L_dec + L_enc of the module docstring for one batch; fills the student's parameter grads
    (call zero_grad first) and returns L.

    x64 (B, 3, 64, 64): the 64x64 renderings; z: latents drawn from the teacher's posterior of their
    32x32 twins; mean_t, logvar_t: that posterior's (unscaled) moments. s = student.scale_factor."""
    # the decoder: draw the 64x64 scene from a latent the teacher could have given
    loss_dec, d_rec = reconstruction_loss(student.decode(z), x64, recon)
    student.decode_backward(d_rec)
    # the encoder: put the 64x64 scene where the teacher puts its 32x32 twin
    posterior = student.encode(x64)
    d_mean, d_logvar = posterior.mean - mean_t, posterior.logvar - logvar_t
    dtype = d_mean.dtype.type
    s2, w_v, n = dtype(student.scale_factor) ** 2, dtype(logvar_weight), dtype(1.0 / d_mean.size)
    loss_enc = s2 * (d_mean ** 2).mean() + w_v * (d_logvar ** 2).mean()
    config = student.config
    inside = (posterior.logvar > config.logvar_min) & (posterior.logvar < config.logvar_max)
    student.encode_backward(2 * s2 * n * d_mean, 2 * w_v * n * d_logvar * inside)   # the clamp passes none outside
    return loss_dec + loss_enc


def run_vae64(cfg: VAE64Job, out=None, resume=False, deadline=None, stop_at=None, progress=True, ship_dtype=None):
    """Train an f = 8 VAE (``cfg.model``) on the latent space of the VAE at ``cfg.teacher``; with
    ``out``, DIR/vae.npz: checkpoints while it trains (``--resume`` continues one, as for every base
    job), and at the end a finished VAE with the teacher's scale factor."""
    xp = backend.get_xp()
    source = load_checkpoint(cfg.teacher, hint="the 32x32 VAE it learns from: train one with "
                                               "python -m minidiff train vae")
    teacher = zoo.load_vae(cfg.teacher, backend.device())
    if cfg.init is not None:                  # more steps for a finished student (its config, its weights)
        student = zoo.load_vae(cfg.init, backend.device())
        if dataclasses.asdict(student.config) != dataclasses.asdict(cfg.model):
            cfg = dataclasses.replace(cfg, model=student.config)
    else:
        student = AutoencoderKL(cfg.model, seed=cfg.seed).to(backend.device())
    if student.config.latent_shape != teacher.config.latent_shape:
        raise ValueError(f"train vae64: the new VAE's latent {student.config.latent_shape} must be the teacher's "
                         f"{teacher.config.latent_shape} (choose --model f8_64 for a 32x32 teacher)")
    student.scale_factor = teacher.scale_factor
    small, large = twin_scenes(cfg.dataset_size, (cfg.seed, SHAPES_DATA_SEED, 64), teacher.config.image_size,
                               student.config.image_size, cfg)
    mean_t, logvar_t = teacher_moments(teacher, small)
    std_t = xp.exp(0.5 * logvar_t)
    images = xp.asarray(large)
    del teacher, small

    def loss_fn(rng, step):
        idx = rng.integers(0, images.shape[0], size=(cfg.batch_size,))
        # a latent the teacher could have given the 32x32 twin: z ~ q_T(z | x32)
        z = draw_latents(rng, mean_t[idx], std_t[idx])
        return distillation_loss(student, images[idx], z, mean_t[idx], logvar_t[idx], cfg.logvar_weight, cfg.recon)

    def sample_fn(vae):             # 8 of the 64x64 scenes, then the same 8 drawn from the teacher's latents
        return xp.concatenate([images[:8], vae.decode(mean_t[:8])])

    def finalize(vae):              # the teacher's scale factor: the latents are the teacher's
        return {"scale_factor": np.asarray(vae.scale_factor, np.float64)}

    # a "vae" checkpoint (every loader reads it as a VAE); its train section says it was distilled
    config = {"job": "vae", "model": dataclasses.asdict(student.config),
              "train": {**dataclasses.asdict(cfg), "job": "vae64"},
              "teacher": {"path": Path(cfg.teacher).name, "config": source.config.get("model")}}
    result = fit("vae64", student, loss_fn, cfg, config, out, resume, deadline, stop_at, sample_fn=sample_fn,
                 finalize=finalize, progress=progress, ship_dtype=ship_dtype)
    result.vae = result.model
    if result.complete:
        student.eval()
        result.evaluation = distillation_report(student, zoo.load_vae(cfg.teacher, backend.device()), seed=cfg.seed)
        print("vae64: held-out " + ", ".join(f"{k} {v:.3f}" for k, v in result.evaluation.items()))
    return result


def distillation_report(student, teacher, n: int = 128, seed: int = 0) -> dict:
    """How well the student copies the teacher, on held-out twin scenes:

    latent_error: |Enc_S(x64).mean - Enc_T(x32).mean| / std of the teacher's means (0 = the same latent);
    psnr_64: PSNR in dB of Dec_S(Enc_T(x32).mean) against x64 (peak-to-peak 2 for images in [-1, 1]);
    psnr_teacher_32: the teacher's own Dec_T(Enc_T(x32).mean) against x32, for scale."""
    xp = backend.get_xp()
    cfg = dataclasses.replace(VAE64Job.quick(), two_object_fraction=0.5, extra_fraction=0.15)
    small, large = twin_scenes(n, (seed, 7, 64), teacher.config.image_size, student.config.image_size, cfg)
    with no_grad():
        mean_t = teacher.encode(xp.asarray(small)).mean
        mean_s = student.encode(xp.asarray(large)).mean
        rec_64 = xp.clip(student.decode(mean_t), -1, 1)
        rec_32 = xp.clip(teacher.decode(mean_t), -1, 1)

    def psnr(a, b):
        mse = float(((backend.to_numpy(a) - b) ** 2).mean())
        return float(10 * np.log10(4.0 / max(mse, 1e-12)))

    return {"latent_error": float(xp.abs(mean_s - mean_t).mean() / mean_t.std()),
            "psnr_64": psnr(rec_64, large), "psnr_teacher_32": psnr(rec_32, small)}
