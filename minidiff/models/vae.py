"""The KL autoencoder of Stable Diffusion ("AutoencoderKL"), small, with hand-written backward.

Why an autoencoder
------------------
Diffusion in pixel space spends most of its compute on detail the eye barely notices. Stable
Diffusion first trains an autoencoder that squeezes a 512x512x3 image into a 64x64x4 latent
(48x fewer numbers) and runs the whole diffusion process on latents; the decoder turns the final
latent back into pixels. Here the same idea at small scale: ``f8_64`` maps 64x64x3 -> 8x8x4
(the same 48x), ``f4_32`` maps 32x32x3 -> 8x8x4 (12x).

The model and its objective (the ELBO)
--------------------------------------
The encoder outputs, for every latent position, a mean and a log-variance: the approximate
posterior is a diagonal Gaussian

    q(z | x) = N(z; mu(x), diag sigma^2(x)),         logvar = log sigma^2 (clamped to [-30, 20])

and the decoder maps a latent back to an image x_rec = Dec(z). A VAE maximises the evidence lower
bound (ELBO) on log p(x):

    log p(x) >= E_{z ~ q(z|x)} [ log p(x | z) ]  -  KL( q(z | x) || p(z) ),      p(z) = N(0, I)

With a Laplace likelihood p(x | z) ∝ exp(-|x - Dec(z)|) the first term is minus the L1 error
summed over the pixels (a Gaussian likelihood gives the L2 error). Stable Diffusion trains

    L = sum_pixels |x - x_rec|  +  kl_weight * KL,        kl_weight = 1e-6,

so the KL is a gentle leash that keeps the latents from drifting, not a strong prior: the latents
end up with a scale far from 1 (hence the scale factor below). The objective, with its optional
perceptual and adversarial terms, is ``minidiff/models/vae_loss.py``; this file is the model and
the two pieces of the ELBO it owns: the posterior's sample and its KL.

The reparameterisation trick
----------------------------
Sampling is not differentiable, but a sample can be written as a differentiable function of the
parameters and an independent noise draw:

    z = mu + sigma * eps,   eps ~ N(0, I),   sigma = exp(logvar / 2)
    dz/dmu = 1,             dz/dlogvar = eps * sigma / 2

``DiagonalGaussian.sample`` keeps eps so ``sample_backward`` can apply these two lines.

The KL between diagonal Gaussians
---------------------------------
Per latent dimension, KL( N(mu, sigma^2) || N(0, 1) ) = 1/2 (mu^2 + sigma^2 - 1 - log sigma^2);
``kl()`` sums this over every latent dimension and averages over the batch. Its gradient:

    dKL/dmu = mu,          dKL/dlogvar = (sigma^2 - 1) / 2

(zero at mu = 0, sigma = 1, the prior itself). The clamp on logvar passes gradients only inside
[-30, 20].

Why latents are scaled
----------------------
The diffusion forward process q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) is designed for
data of about unit variance: then the signal-to-noise ratio abar_t / (1 - abar_t) means the same
thing at every t, and x_T is close to N(0, I). With kl_weight = 1e-6 nothing pins the latents to
unit variance, so Stable Diffusion multiplies them by a constant, 1 / std(latents) measured on the
training data (0.18215 for SD's VAE), before diffusion, and divides by it before decoding.
``compute_scale_factor`` measures it; ``encode_latents`` / ``decode_latents`` apply it.

Architecture (diffusers' AutoencoderKL, same layer order and padding)
---------------------------------------------------------------------
    Encoder: conv_in -> [ResBlock x num_res_blocks, Downsample]_levels (none after the last level)
             -> mid (ResBlock, self-attention over H*W, ResBlock) -> GroupNorm-SiLU-conv_out
             -> 2 * latent_channels (mean, logvar) -> quant_conv (1x1)
    Decoder: post_quant_conv (1x1) -> conv_in -> mid -> [ResBlock x (num_res_blocks + 1), Upsample]_levels
             -> GroupNorm-SiLU-conv_out -> in_channels

Read beside: ``minidiff/models/blocks.py`` (ResBlock, AttnBlock, Downsample, Upsample),
``minidiff/models/vae_loss.py`` (the training objective), ``minidiff/nn/layers.py`` and
``minidiff/nn/functional.py`` (the ops and their derivatives) and lesson 07.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from ..backend import get_array_module
from ..checks import positive_int, positive_ints
from ..nn.layers import Conv2d, GroupNorm
from ..nn.module import Module, no_grad
from .blocks import AttnBlock, Downsample, ResBlock, Upsample

__all__ = ["VAEConfig", "DiagonalGaussian", "Level", "MidBlock", "Encoder", "Decoder", "AutoencoderKL",
           # the blocks live in blocks.py, the objective in vae_loss.py
           "ResBlock", "AttnBlock", "Downsample", "Upsample"]


# -- configuration -------------------------------------------------------------------------------
@dataclass
class VAEConfig:
    """Sizes of the autoencoder. The downsampling factor is f = 2 ** (len(channel_mults) - 1):
    level i has base_channels * channel_mults[i] channels and every level but the last halves H, W."""

    in_channels: int = 3
    latent_channels: int = 4
    base_channels: int = 16
    channel_mults: tuple = (1, 2, 4)
    num_res_blocks: int = 1
    mid_attention: bool = True
    norm_groups: int = 8
    norm_eps: float = 1e-6            # Stable Diffusion's VAE uses 1e-6 in every GroupNorm
    logvar_min: float = -30.0         # the clamp on log sigma^2, as in Stable Diffusion
    logvar_max: float = 20.0
    image_size: int = 32

    def __post_init__(self):
        owner = "VAEConfig"
        for name in ("in_channels", "latent_channels", "base_channels", "num_res_blocks",
                     "norm_groups", "image_size"):
            setattr(self, name, positive_int(owner, name, getattr(self, name)))
        self.channel_mults = positive_ints(owner, "channel_mults", self.channel_mults)   # JSON gives back a list
        for name in ("norm_eps", "logvar_min", "logvar_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ValueError(f"VAEConfig: {name} must be a number, got {value!r}")
        if not self.norm_eps > 0:
            raise ValueError(f"VAEConfig: norm_eps must be positive, got {self.norm_eps!r}")
        if not isinstance(self.mid_attention, (bool, np.bool_)):
            raise ValueError(f"VAEConfig: mid_attention must be True or False, got {self.mid_attention!r}")
        for m in self.channel_mults:
            if (self.base_channels * m) % self.norm_groups:
                raise ValueError(f"VAEConfig: {self.base_channels * m} channels (base_channels * {m}) "
                                 f"do not divide into norm_groups={self.norm_groups}")
        if self.image_size % self.downsample_factor:
            raise ValueError(f"VAEConfig: image_size={self.image_size} is not a multiple of the "
                             f"downsampling factor {self.downsample_factor}")
        if not self.logvar_min < self.logvar_max:
            raise ValueError(f"VAEConfig: need logvar_min < logvar_max, got {self.logvar_min}, {self.logvar_max}")

    @property
    def downsample_factor(self) -> int:
        """f: each side of the image is f times the side of the latent."""
        return 2 ** (len(self.channel_mults) - 1)

    @property
    def latent_size(self) -> int:
        return self.image_size // self.downsample_factor

    @property
    def latent_shape(self) -> tuple:
        """(latent_channels, h, w) of one image's latent."""
        return (self.latent_channels, self.latent_size, self.latent_size)

    @property
    def compression_ratio(self) -> float:
        """numbers in an image / numbers in its latent = C H W / (c h w)."""
        return self.in_channels * self.image_size ** 2 / float(np.prod(self.latent_shape))

    @classmethod
    def tiny(cls):
        """For gradient checks and fast tests: 8x8x3 -> 4x4x4 (f = 2), 44k parameters."""
        return cls(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, norm_groups=4, image_size=8)

    @classmethod
    def f4_32(cls):
        """32x32x3 -> 8x8x4 (f = 4, 12x fewer numbers): the CPU setting of the text-to-image pipeline.
        Narrow (16 channels at full resolution) so decoding one image takes a few ms on a CPU."""
        return cls(base_channels=16, channel_mults=(1, 2, 4), num_res_blocks=1, norm_groups=8, image_size=32)

    @classmethod
    def f8_64(cls):
        """64x64x3 -> 8x8x4 (f = 8): the 48x compression of Stable Diffusion's 512x512x3 -> 64x64x4.
        f4_32 with one more level in front: 16 channels at 64x64 and 32x32, 32 at 16x16, 64 at 8x8."""
        return cls(base_channels=16, channel_mults=(1, 1, 2, 4), num_res_blocks=1, norm_groups=8, image_size=64)


# -- the posterior q(z | x) ----------------------------------------------------------------------
class DiagonalGaussian:
    """q(z | x) = N(mean, diag exp(logvar)), built from the encoder's moments (B, 2c, h, w).

    The backward methods return gradients w.r.t. ``mean`` and the *unclamped* logvar the encoder
    produced (the clamp's zero gradient outside [logvar_min, logvar_max] already applied), ready
    for ``AutoencoderKL.encode_backward``."""

    def __init__(self, moments, logvar_min=-30.0, logvar_max=20.0):
        if moments.ndim != 4 or moments.shape[1] % 2:
            raise ValueError(f"DiagonalGaussian: moments must be (B, 2c, h, w), got shape {tuple(moments.shape)}")
        xp = get_array_module(moments)
        c = moments.shape[1] // 2
        self.mean = moments[:, :c]                                # (B, c, h, w)
        raw_logvar = moments[:, c:]
        # logvar = clamp(raw, min, max): d logvar / d raw = 1 inside the range, 0 outside
        self.logvar = xp.clip(raw_logvar, logvar_min, logvar_max)
        self.in_range = (raw_logvar >= logvar_min) & (raw_logvar <= logvar_max)
        # sigma = exp(logvar / 2),  sigma^2 = exp(logvar)
        self.std = xp.exp(0.5 * self.logvar)
        self.var = xp.exp(self.logvar)
        self.noise = None                                         # eps of the last sample()

    def sample(self, rng):
        """z = mean + std * eps, eps ~ N(0, I) drawn from ``rng`` (a NumPy generator works for
        CuPy arrays too: the draw is copied to the device)."""
        xp = get_array_module(self.mean)
        self.noise = xp.asarray(rng.standard_normal(self.mean.shape, dtype=self.mean.dtype))
        return self.mean + self.std * self.noise

    def sample_backward(self, dz):
        """dz/dmean = 1,  dz/dlogvar = eps * std / 2   ->   (dmean, dlogvar)"""
        if self.noise is None:
            raise RuntimeError("DiagonalGaussian.sample_backward called before sample()")
        return dz, self._through_clamp(dz * self.noise * self.std * 0.5)

    def mode(self):
        """The most likely latent: the mean (no noise)."""
        return self.mean

    def mode_backward(self, dz):
        """z = mean: the gradient goes to the mean only."""
        return dz, get_array_module(dz).zeros_like(self.logvar)

    def kl(self):
        """KL(q || N(0, I)) = 1/2 sum_dims (mean^2 + var - 1 - logvar), averaged over the batch.
        Returns a 0-d array (no device synchronisation)."""
        per_dim = 0.5 * (self.mean ** 2 + self.var - 1.0 - self.logvar)
        return per_dim.sum() / self.mean.shape[0]

    def kl_backward(self, dkl=1.0):
        """dKL/dmean = mean / B,  dKL/dlogvar = (var - 1) / (2B), times the upstream ``dkl``."""
        scale = self.mean.dtype.type(dkl / self.mean.shape[0])
        return scale * self.mean, self._through_clamp(scale * 0.5 * (self.var - 1.0))

    def _through_clamp(self, dlogvar):
        # forward was: logvar = clip(raw, logvar_min, logvar_max)
        return dlogvar * self.in_range


# -- the levels ----------------------------------------------------------------------------------
class Level(Module):
    """One resolution of the encoder or decoder: ResBlocks, then an optional Downsample or Upsample."""

    def __init__(self, in_channels, out_channels, num_res_blocks, resample, config, rng):
        channels = [in_channels] + [out_channels] * num_res_blocks
        self.resnets = [ResBlock(channels[i], channels[i + 1], config.norm_groups, eps=config.norm_eps, rng=rng)
                        for i in range(num_res_blocks)]
        self.resample = resample                                  # Downsample, Upsample or None

    def forward(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        return x if self.resample is None else self.resample(x)

    def backward(self, dout):
        if self.resample is not None:
            dout = self.resample.backward(dout)
        for resnet in reversed(self.resnets):
            dout = resnet.backward(dout)
        return dout


class MidBlock(Module):
    """ResBlock -> self-attention (optional) -> ResBlock, at the lowest resolution."""

    def __init__(self, channels, config, rng):
        groups, eps = config.norm_groups, config.norm_eps
        self.resnets = [ResBlock(channels, channels, groups, eps=eps, rng=rng)]
        self.attention = AttnBlock(channels, groups, eps, rng=rng) if config.mid_attention else None
        self.resnets.append(ResBlock(channels, channels, groups, eps=eps, rng=rng))

    def forward(self, x):
        x = self.resnets[0](x)
        if self.attention is not None:
            x = self.attention(x)
        return self.resnets[1](x)

    def backward(self, dout):
        dout = self.resnets[1].backward(dout)
        if self.attention is not None:
            dout = self.attention.backward(dout)
        return self.resnets[0].backward(dout)


class Encoder(Module):
    """x (B, in_channels, H, W) -> moments (B, 2 * latent_channels, H/f, W/f)."""

    def __init__(self, config: VAEConfig, rng):
        widths = [config.base_channels * m for m in config.channel_mults]
        self.conv_in = Conv2d(config.in_channels, widths[0], 3, padding=1, rng=rng)
        self.down_blocks = []
        previous = widths[0]
        for i, width in enumerate(widths):
            last = i == len(widths) - 1
            self.down_blocks.append(Level(previous, width, config.num_res_blocks,
                                          None if last else Downsample(width, asymmetric=True, rng=rng), config, rng))
            previous = width
        self.mid_block = MidBlock(widths[-1], config, rng)
        self.norm_out = GroupNorm(config.norm_groups, widths[-1], eps=config.norm_eps, activation="silu")
        self.conv_out = Conv2d(widths[-1], 2 * config.latent_channels, 3, padding=1, rng=rng)

    def forward(self, x):
        h = self.conv_in(x)
        for level in self.down_blocks:
            h = level(h)                                          # H, W halve at every level but the last
        h = self.mid_block(h)
        return self.conv_out(self.norm_out(h))      # (B, 2c, H/f, W/f)

    def backward(self, dout):
        dh = self.norm_out.backward(self.conv_out.backward(dout))
        dh = self.mid_block.backward(dh)
        for level in reversed(self.down_blocks):
            dh = level.backward(dh)
        return self.conv_in.backward(dh)


class Decoder(Module):
    """z (B, latent_channels, h, w) -> image (B, in_channels, f h, f w). Mirrors the encoder, with
    one more ResBlock per level (as in Stable Diffusion)."""

    def __init__(self, config: VAEConfig, rng):
        widths = [config.base_channels * m for m in reversed(config.channel_mults)]
        self.conv_in = Conv2d(config.latent_channels, widths[0], 3, padding=1, rng=rng)
        self.mid_block = MidBlock(widths[0], config, rng)
        self.up_blocks = []
        previous = widths[0]
        for i, width in enumerate(widths):
            last = i == len(widths) - 1
            self.up_blocks.append(Level(previous, width, config.num_res_blocks + 1,
                                        None if last else Upsample(width, rng=rng), config, rng))
            previous = width
        self.norm_out = GroupNorm(config.norm_groups, widths[-1], eps=config.norm_eps, activation="silu")
        self.conv_out = Conv2d(widths[-1], config.in_channels, 3, padding=1, rng=rng)

    def forward(self, z):
        h = self.mid_block(self.conv_in(z))
        for level in self.up_blocks:
            h = level(h)                                          # H, W double at every level but the last
        return self.conv_out(self.norm_out(h))

    def backward(self, dout):
        dh = self.norm_out.backward(self.conv_out.backward(dout))
        for level in reversed(self.up_blocks):
            dh = level.backward(dh)
        return self.conv_in.backward(self.mid_block.backward(dh))


# -- the autoencoder -----------------------------------------------------------------------------
class AutoencoderKL(Module):
    """Encoder -> DiagonalGaussian -> (sample or mode) -> Decoder.

        posterior = vae.encode(x)                       # x: (B, 3, H, W) in [-1, 1]
        x_rec = vae.decode(posterior.sample(rng))       # (B, 3, H, W)
        x_rec, posterior = vae.forward(x, rng)          # both at once (caches for backward)
        dx = vae.backward(d_xrec, kl_weight)            # d/dx and parameter grads of L_rec + kl_weight KL

    Each sub-module runs once per forward pass. ``scale_factor`` (None until computed or loaded)
    maps latents to unit variance for diffusion: see ``encode_latents`` / ``decode_latents``.
    """

    def __init__(self, config: VAEConfig | None = None, seed: int = 0):
        self.config = VAEConfig.f4_32() if config is None else config
        rng = np.random.default_rng(seed)
        c = self.config.latent_channels
        self.encoder = Encoder(self.config, rng)
        self.quant_conv = Conv2d(2 * c, 2 * c, 1, rng=rng)
        self.post_quant_conv = Conv2d(c, c, 1, rng=rng)
        self.decoder = Decoder(self.config, rng)
        self.scale_factor = None
        self._posterior = None            # the posterior of the last forward pass (while caching)
        self._sampled = False             # whether that pass used sample() (True) or mode()

    # -- input checks ----------------------------------------------------------------------------
    def _check_images(self, x):
        cfg, f = self.config, self.config.downsample_factor
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"AutoencoderKL.encode: images must be (B, {cfg.in_channels}, H, W), "
                             f"got shape {tuple(x.shape)}")
        if x.shape[2] % f or x.shape[3] % f:
            raise ValueError(f"AutoencoderKL.encode: image size {x.shape[2]}x{x.shape[3]} is not a multiple "
                             f"of the downsampling factor {f} (this VAE was built for "
                             f"{cfg.image_size}x{cfg.image_size})")

    def _check_latents(self, z):
        c = self.config.latent_channels
        if z.ndim != 4 or z.shape[1] != c:
            raise ValueError(f"AutoencoderKL.decode: latents must be (B, {c}, h, w) (for this VAE "
                             f"{(c, *self.config.latent_shape[1:])} per image), got shape {tuple(z.shape)}")

    # -- forward ---------------------------------------------------------------------------------
    def encode(self, x) -> DiagonalGaussian:
        """q(z | x): images (B, C, H, W) -> posterior over latents (B, c, H/f, W/f)."""
        self._check_images(x)
        moments = self.quant_conv(self.encoder(x))                # (B, 2c, h, w): mean and logvar
        return DiagonalGaussian(moments, self.config.logvar_min, self.config.logvar_max)

    def decode(self, z):
        """Dec(z): latents (B, c, h, w) -> images (B, C, f h, f w)."""
        self._check_latents(z)
        return self.decoder(self.post_quant_conv(z))

    def forward(self, x, rng=None, sample_posterior=True):
        """Encode, take z ~ q(z|x) (or its mode), decode. Returns (x_rec, posterior)."""
        if sample_posterior and rng is None:
            raise ValueError("AutoencoderKL.forward: sample_posterior=True needs a random generator rng "
                             "(or pass sample_posterior=False to decode the mean)")
        posterior = self.encode(x)
        z = posterior.sample(rng) if sample_posterior else posterior.mode()
        x_rec = self.decode(z)
        if self.caching:
            self._posterior, self._sampled = posterior, sample_posterior
        return x_rec, posterior

    # -- backward --------------------------------------------------------------------------------
    def decode_backward(self, d_xrec):
        """dL/dz from dL/dx_rec (adds the decoder's parameter grads)."""
        return self.post_quant_conv.backward(self.decoder.backward(d_xrec))

    def encode_backward(self, dmean, dlogvar):
        """dL/dx from the gradients w.r.t. the posterior's mean and (unclamped) logvar."""
        # forward was: moments = concat(mean, logvar) along channels
        dmoments = get_array_module(dmean).concatenate([dmean, dlogvar], axis=1)
        return self.encoder.backward(self.quant_conv.backward(dmoments))

    def backward(self, d_xrec, kl_weight=0.0):
        """Backward of L = L_rec(x_rec) + kl_weight * KL after ``forward``: returns dL/dx.

        d_xrec is dL_rec/dx_rec; the KL term's gradient joins at the posterior's mean and logvar."""
        posterior = self._posterior
        if posterior is None:
            raise RuntimeError("AutoencoderKL.backward called without a cached forward pass: run "
                               "forward in training mode with gradients enabled")
        self._posterior = None
        dz = self.decode_backward(d_xrec)
        dmean, dlogvar = posterior.sample_backward(dz) if self._sampled else posterior.mode_backward(dz)
        if kl_weight:
            dmean_kl, dlogvar_kl = posterior.kl_backward(kl_weight)
            dmean, dlogvar = dmean + dmean_kl, dlogvar + dlogvar_kl
        return self.encode_backward(dmean, dlogvar)

    # -- scaled latents for diffusion ------------------------------------------------------------
    def compute_scale_factor(self, images, rng=None, batch_size=64):
        """scale_factor = 1 / std(z) over latents of ``images`` (z sampled with ``rng``, or the
        posterior means when rng is None). Stores it and returns it as a Python float."""
        xp = get_array_module(images)
        latents = []
        with no_grad():
            for start in range(0, images.shape[0], batch_size):
                posterior = self.encode(images[start:start + batch_size])
                latents.append(posterior.mode() if rng is None else posterior.sample(rng))
        std = float(xp.concatenate(latents).astype(np.float64).std())
        if not std > 0:
            raise ValueError(f"AutoencoderKL.compute_scale_factor: the latents have std {std}; "
                             "need more than one distinct image")
        self.scale_factor = 1.0 / std
        return self.scale_factor

    def _require_scale_factor(self, caller):
        if self.scale_factor is None:
            raise ValueError(f"AutoencoderKL.{caller}: this VAE has no latent scale factor; compute it with "
                             "vae.compute_scale_factor(images) or load a checkpoint that stores it")
        return self.scale_factor

    def encode_latents(self, x, rng=None):
        """Images -> scaled latents z * scale_factor (about unit variance), the diffusion model's data.
        The posterior mean when rng is None, else a sample. Runs without caching (frozen VAE)."""
        scale = self._require_scale_factor("encode_latents")
        with no_grad():
            posterior = self.encode(x)
            z = posterior.mode() if rng is None else posterior.sample(rng)
        return z * z.dtype.type(scale)

    def decode_latents(self, z_scaled):
        """Scaled latents -> images: decode(z_scaled / scale_factor). Runs without caching."""
        scale = self._require_scale_factor("decode_latents")
        with no_grad():
            return self.decode(z_scaled / z_scaled.dtype.type(scale))


if __name__ == "__main__":
    import time

    for name in ("tiny", "f4_32", "f8_64"):
        config = getattr(VAEConfig, name)()
        vae = AutoencoderKL(config).eval()
        x = np.random.default_rng(0).uniform(-1, 1, (1, 3, config.image_size, config.image_size)).astype(np.float32)
        start = time.perf_counter()
        z = vae.encode(x).mode()
        x_rec = vae.decode(z)
        ms = 1000 * (time.perf_counter() - start)
        print(f"{name:6s} {tuple(x.shape)} -> latent {tuple(z.shape)} -> {tuple(x_rec.shape)}: "
              f"{config.compression_ratio:.0f}x fewer numbers, {vae.num_parameters():,} parameters, "
              f"encode+decode {ms:.1f} ms")
