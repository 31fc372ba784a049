"""A PatchGAN discriminator with the hinge loss: the adversarial half of the autoencoder recipe.

Why pixel losses blur
---------------------
When the exact position of an edge or the grain of a texture cannot be recovered from the latent,
the reconstruction that minimises E|x - x_rec|^2 is the average of all the plausible images: a
blur (L1 gives the median, only a little sharper). The pixel loss is content with it.

"Perceptual + patch-adversarial" (taming-transformers; Stable Diffusion's autoencoder)
-----------------------------------------------------------------------------------
* A perceptual loss compares the two images in the feature space of a frozen network,
  sum_l mean (phi_l(x_rec) - phi_l(x))^2 (``vae_loss.vae_loss(perceptual_fn=...)``). Features respond
  to edges and shapes, so a faithful but slightly shifted edge costs less there than a blur.
* A patch discriminator D looks at small overlapping patches (each output logit sees a window of
  the image, not the whole) and scores each as real or reconstructed. A blurred patch is easy to
  tell from a real one, so the decoder is pushed to commit to one sharp, plausible detail instead
  of the average of many. Judging patches keeps the adversarial job local (texture, crispness)
  and leaves global layout to the reconstruction terms; it also has few parameters and many
  "samples" per image.

The losses (hinge form), with logits D(.) of shape (B, 1, h, w), means over every patch:

    L_D = 1/2 [ mean relu(1 - D(x)) + mean relu(1 + D(x_rec)) ]     (the discriminator's loss)
    L_G = -mean D(x_rec)                                             (added to the autoencoder's)

    dL_D/dD(x)     = -1/(2N) [D(x) < 1],    dL_D/dD(x_rec) = 1/(2N) [D(x_rec) > -1]
    dL_G/dD(x_rec) = -1/N

The hinge stops pushing a patch once it is classified with margin 1, which keeps D from growing
without bound. In practice the adversarial term is switched on only after the autoencoder already
reconstructs well (a "discriminator start" step): early on D wins trivially and its gradient says
little. Stable Diffusion weighs L_G adaptively (the ratio of the gradient norms of the
reconstruction and GAN terms at the decoder's last layer); here the weight is a fixed number.

The layers (taming's NLayerDiscriminator with GroupNorm in place of BatchNorm, so every image is
normalised on its own and real and reconstructed batches can share one forward pass):

    conv 4x4 s2 -> LeakyReLU -> [conv 4x4 s2 -> GroupNorm -> LeakyReLU] x (num_layers - 1)
    -> conv 4x4 s1 -> GroupNorm -> LeakyReLU -> conv 4x4 s1 -> 1 logit per patch

Read beside: ``minidiff/models/vae_loss.py`` (``vae_loss``, which trains D and the autoencoder
together) and ``minidiff/nn/layers.py``.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from ..backend import get_array_module
from ..checks import positive_int
from ..nn.layers import Conv2d, GroupNorm
from ..nn.module import Module, Sequential

__all__ = ["DiscriminatorConfig", "PatchDiscriminator", "LeakyReLU", "leaky_relu", "leaky_relu_backward",
           "hinge_d_loss", "hinge_g_loss", "backward_input_only"]


# -- LeakyReLU: the one op this file adds --------------------------------------------------------
def leaky_relu(x, negative_slope=0.2):
    """y = x if x > 0 else a x"""
    xp = get_array_module(x)
    positive = x > 0
    return xp.where(positive, x, x * x.dtype.type(negative_slope)), (positive, negative_slope)


def leaky_relu_backward(dy, cache):
    """dy/dx = 1 where x > 0, a elsewhere"""
    positive, negative_slope = cache
    xp = get_array_module(dy)
    return xp.where(positive, dy, dy * dy.dtype.type(negative_slope))


class LeakyReLU(Module):
    def __init__(self, negative_slope=0.2):
        self.negative_slope = negative_slope
        self._cache = None

    def forward(self, x):
        y, cache = leaky_relu(x, self.negative_slope)
        self._cache = cache if self.caching else None
        return y

    def backward(self, dy):
        if self._cache is None:
            raise RuntimeError("LeakyReLU.backward called without a cached forward pass")
        cache, self._cache = self._cache, None
        return leaky_relu_backward(dy, cache)


# -- the hinge losses ----------------------------------------------------------------------------
def hinge_d_loss(logits_real, logits_fake):
    """L_D = 1/2 [mean relu(1 - D(x)) + mean relu(1 + D(x_rec))] -> (L_D, (dL/dlogits_real, dL/dlogits_fake))"""
    xp = get_array_module(logits_real)
    dtype = logits_real.dtype.type
    loss = dtype(0.5) * (xp.maximum(1 - logits_real, 0).mean() + xp.maximum(1 + logits_fake, 0).mean())
    # d relu(1 - r)/dr = -[r < 1];  d relu(1 + f)/df = [f > -1]
    d_real = (logits_real < 1) * dtype(-0.5 / logits_real.size)
    d_fake = (logits_fake > -1) * dtype(0.5 / logits_fake.size)
    return loss, (d_real, d_fake)


def hinge_g_loss(logits_fake):
    """L_G = -mean D(x_rec) -> (L_G, dL_G/dlogits_fake = -1/N)"""
    xp = get_array_module(logits_fake)
    return -logits_fake.mean(), xp.full_like(logits_fake, -1.0 / logits_fake.size)


def backward_input_only(module, grad_out):
    """``module.backward(grad_out)`` for a frozen network: returns the input gradient and leaves
    the parameters' grads exactly as they were (used for the generator's pass through D and for a
    frozen perceptual feature extractor)."""
    params = module.parameters()
    saved = [p.grad for p in params]
    for p in params:
        p.grad = None
    try:
        return module.backward(grad_out)
    finally:
        for p, g in zip(params, saved):
            p.grad = g


# -- the discriminator ---------------------------------------------------------------------------
@dataclass
class DiscriminatorConfig:
    in_channels: int = 3
    base_channels: int = 32
    num_layers: int = 2              # stride-2 convs after the first one: num_layers - 1
    norm_groups: int = 8
    negative_slope: float = 0.2

    def __post_init__(self):
        for name in ("in_channels", "base_channels", "num_layers", "norm_groups"):
            setattr(self, name, positive_int("DiscriminatorConfig", name, getattr(self, name)))
        slope = self.negative_slope
        if isinstance(slope, bool) or not isinstance(slope, numbers.Real) or not 0 <= slope < 1:
            raise ValueError(f"DiscriminatorConfig: negative_slope must be a number in [0, 1), got {slope!r}")
        for width in self.widths[1:]:
            if width % self.norm_groups:
                raise ValueError(f"DiscriminatorConfig: {width} channels do not divide into "
                                 f"norm_groups={self.norm_groups}")

    @property
    def widths(self):
        """Channels after each conv but the last: base * min(2^n, 8), n = 0 .. num_layers."""
        return [self.base_channels * min(2 ** n, 8) for n in range(self.num_layers + 1)]

    @classmethod
    def tiny(cls):
        return cls(base_channels=4, num_layers=1, norm_groups=2)


class PatchDiscriminator(Module):
    """x (B, C, H, W) -> logits (B, 1, h, w), one per overlapping patch. Real and reconstructed
    images go through one forward pass together (``discriminator_loss``), as a module's cache
    holds one pass."""

    def __init__(self, config: DiscriminatorConfig | None = None, seed: int = 0):
        self.config = DiscriminatorConfig() if config is None else config
        cfg, rng = self.config, np.random.default_rng(seed)
        widths = cfg.widths
        layers = [Conv2d(cfg.in_channels, widths[0], 4, stride=2, padding=1, rng=rng),
                  LeakyReLU(cfg.negative_slope)]
        for n in range(1, cfg.num_layers + 1):
            stride = 2 if n < cfg.num_layers else 1
            layers += [Conv2d(widths[n - 1], widths[n], 4, stride=stride, padding=1, bias=False, rng=rng),
                       GroupNorm(cfg.norm_groups, widths[n]),
                       LeakyReLU(cfg.negative_slope)]
        layers.append(Conv2d(widths[-1], 1, 4, stride=1, padding=1, rng=rng))
        self.net = Sequential(*layers)

    def output_size(self, size):
        """Side of the logit map for an input side ``size``: each conv maps s -> (s + 2 - 4) // stride + 1."""
        for layer in self.net.layers:
            if isinstance(layer, Conv2d):
                size = (size + 2 * layer.padding - layer.kernel_size) // layer.stride + 1
        return size

    def forward(self, x):
        c = self.config.in_channels
        if x.ndim != 4 or x.shape[1] != c:
            raise ValueError(f"PatchDiscriminator: images must be (B, {c}, H, W), got shape {tuple(x.shape)}")
        if min(self.output_size(x.shape[2]), self.output_size(x.shape[3])) < 1:
            raise ValueError(f"PatchDiscriminator: images of {x.shape[2]}x{x.shape[3]} are too small for "
                             f"{self.config.num_layers} layers (no patch logit left)")
        return self.net(x)

    def backward(self, dlogits):
        return self.net.backward(dlogits)

    def discriminator_loss(self, real, fake):
        """Forward D on [real; fake], the hinge loss L_D, and its backward into D's parameter grads
        (added; call zero_grad() first). ``fake`` is the autoencoder's output, treated as data.
        Returns (L_D, stats) with 0-d arrays: mean logits on real and fake images."""
        xp = get_array_module(real)
        B = real.shape[0]
        logits = self.forward(xp.concatenate([real, fake]))      # (2B, 1, h, w)
        loss, (d_real, d_fake) = hinge_d_loss(logits[:B], logits[B:])
        self.backward(xp.concatenate([d_real, d_fake]))
        return loss, {"d_loss": loss, "logits_real": logits[:B].mean(), "logits_fake": logits[B:].mean()}

    def generator_loss(self, fake):
        """L_G = -mean D(x_rec) and dL_G/dx_rec, leaving D's parameter grads untouched."""
        loss, dlogits = hinge_g_loss(self.forward(fake))
        return loss, backward_input_only(self, dlogits)
