"""A noise-aware classifier p(y | x_t, t), for classifier guidance (Dhariwal & Nichol, 2021).

Classifier guidance steers an unconditional (or weakly conditional) diffusion model with the
gradient of a classifier that was trained on *noisy* inputs x_t at every t, so its gradient still
means something at t = 900 where an ordinary classifier sees only noise. By Bayes,

    grad_x log p(x_t | y) = grad_x log p(x_t) + grad_x log p(y | x_t)

and the score is -eps / sqrt(1 - abar_t), so the guided noise prediction is

    eps_hat = eps(x_t) - s sqrt(1 - abar_t) grad_x log p(y | x_t)        (diffusion/guidance.py)

The input gradient comes from our own backward: with p = softmax(logits), d log p_y / d logits =
onehot(y) - p, handed to ``backward``, which returns d/dx through every layer.

The network (on the VAE's 4 x 8 x 8 latents): conv_in -> per level [ResBlock told t (+ Downsample)]
-> GroupNorm + SiLU -> mean over H, W -> Linear -> logits (B, num_classes).

Read beside: ``minidiff/models/blocks.py`` (ResBlock, TimestepEmbedding, Downsample),
``minidiff/diffusion/guidance.py`` (both guidances).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ..backend import get_array_module
from ..checks import positive_int, positive_ints
from ..nn import functional as F
from ..nn.layers import Conv2d, GroupNorm, Linear
from ..nn.module import Module, is_grad_enabled
from .blocks import Downsample, ResBlock, TimestepEmbedding, groups_for

__all__ = ["NoisyClassifierConfig", "NoisyClassifier", "log_prob_gradient"]


@dataclasses.dataclass
class NoisyClassifierConfig:
    in_channels: int = 4
    channels: tuple = (32, 64)        # level i's width; each level after the first halves H, W
    num_classes: int = 6              # the shapes' colours
    norm_groups: int = 8
    image_size: int = 8

    def __post_init__(self):
        for name in ("in_channels", "num_classes", "norm_groups", "image_size"):
            setattr(self, name, positive_int("NoisyClassifierConfig", name, getattr(self, name)))
        self.channels = positive_ints("NoisyClassifierConfig", "channels", self.channels)

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.channels[0]

    @classmethod
    def tiny(cls):
        return cls(in_channels=2, channels=(4, 8), num_classes=3, norm_groups=2, image_size=4)


class NoisyClassifier(Module):
    """logits = classifier(x_t, t): forward(x (B, C, H, W), t (B,)) -> (B, num_classes);
    backward(dlogits) -> dx (t is an input without a gradient)."""

    def __init__(self, config: NoisyClassifierConfig | None = None, seed: int = 0):
        self.config = config = config if config is not None else NoisyClassifierConfig()
        rng = np.random.default_rng(seed)
        c0, temb = config.channels[0], config.time_embed_dim
        self.time_embedding = TimestepEmbedding(c0, temb, rng=rng)
        self.conv_in = Conv2d(config.in_channels, c0, 3, padding=1, rng=rng)
        self.resnets, self.downsamples = [], []
        for level, c in enumerate(config.channels):
            c_in = config.channels[level - 1] if level else c0
            self.resnets.append(ResBlock(c_in, c, config.norm_groups, time_embed_dim=temb, rng=rng))
            if level < len(config.channels) - 1:
                self.downsamples.append(Downsample(c, rng=rng))
        c_last = config.channels[-1]
        self.norm_out = GroupNorm(groups_for(c_last, config.norm_groups), c_last, activation="silu")
        self.head = Linear(c_last, config.num_classes, rng=rng)
        self._cache = None

    def forward(self, x, t):
        xp = get_array_module(x)
        t = xp.broadcast_to(xp.asarray(t), (x.shape[0],)).astype(x.dtype)
        temb = self.time_embedding(t)                                  # (B, temb)
        h = self.conv_in(x)
        for level, resnet in enumerate(self.resnets):
            h = resnet(h, temb)
            if level < len(self.downsamples):
                h = self.downsamples[level](h)                         # (B, C, H/2, W/2)
        h = self.norm_out(h)
        self._cache = h.shape if self.caching else None
        # pooled = mean over H, W                                      (B, C)
        return self.head(h.mean(axis=(2, 3)))                          # (B, num_classes)

    def backward(self, dlogits):
        shape, self._cache = self._cache, None
        xp = get_array_module(dlogits)
        dpooled = self.head.backward(dlogits)
        # forward was: pooled = mean over H, W -> every position gets 1 / (H W) of the gradient
        dh = xp.broadcast_to(dpooled[:, :, None, None] / (shape[2] * shape[3]), shape)
        dh = self.norm_out.backward(xp.ascontiguousarray(dh))
        dtemb = None
        for level in reversed(range(len(self.resnets))):
            if level < len(self.downsamples):
                dh = self.downsamples[level].backward(dh)
            dh, dt = self.resnets[level].backward(dh)
            dtemb = dt if dtemb is None else dtemb + dt                # summed over every ResBlock
        dx = self.conv_in.backward(dh)
        self.time_embedding.backward(dtemb)
        return dx


def log_prob_gradient(classifier: NoisyClassifier, x, t, y):
    """grad_x log p(y | x_t, t) (B, C, H, W) by the classifier's own backward; ``y`` (B,) class ids.

    log p_y = log_softmax(logits)_y, so d log p_y / d logits = onehot(y) - softmax(logits). The
    classifier's parameter gradients are computed on the way and cleared (it stays as it was).
    Needs gradients on: not inside ``no_grad()``."""
    if not is_grad_enabled():
        raise RuntimeError("log_prob_gradient runs a backward pass: call it outside no_grad()")
    xp = get_array_module(x)
    was_training = classifier.training
    classifier.train()
    try:
        logits = classifier.forward(x, t)
        log_p, cache = F.log_softmax(logits, axis=-1)
        onehot = xp.zeros_like(log_p)
        onehot[xp.arange(len(y)), xp.asarray(y)] = 1.0
        # sum_b log p(y_b | x_b): each row's gradient is its own image's
        dx = classifier.backward(F.log_softmax_backward(onehot, cache))
    finally:
        classifier.zero_grad()
        classifier.train(was_training)
    return dx
