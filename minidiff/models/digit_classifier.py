"""The digit classifier: the judge of generated handwritten digits (class accuracy, Fréchet distance).

    x (B, 1, S, S) -> conv stages (3x3 conv -> GroupNorm -> SiLU; stride 2 into every stage,
                      the first too by default: a 32x32 digit is plenty at 16x16 after one conv)
                   -> average pool to a coarse g x g grid -> flatten
                   -> Linear -> SiLU                      (the *features*, for the Fréchet distance)
                   -> Linear                              (10 logits, one per digit)

The same building blocks as the attribute classifier (``models/classifier.py``: ConvNormAct,
a g x g average pool, Linear heads), with one head of 10 classes and no coordinate planes (a
digit is centred in its image; what it is does not depend on where it sits).

The loss is the mean cross-entropy of the digit head,

    L = -(1/B) sum_b log softmax(logits_b)[y_b]

and ``digit_loss`` runs the backward pass: dL/dlogits = (softmax(logits) - onehot(y)) / B, then
back through the head, the features, the pool (each pixel of a pooling window receives its
window's gradient divided by the window's size) and the conv stages in reverse.

Read beside: ``minidiff/evaluate/digits.py`` (class accuracy and the Fréchet distance in these
features) and ``minidiff/train/jobs.py`` (the ``digit_classifier`` job that trains it on the
digits' training split).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..checks import positive_int, positive_ints
from ..nn import functional as F
from ..nn.layers import AvgPool2d, Linear, SiLU
from ..nn.module import Module
from .clip import ConvNormAct

NUM_DIGITS = 10


@dataclass
class DigitClassifierConfig:
    """Shape of the digit classifier. ``channels[i]`` is stage i's width; stage i > 0 halves H, W, and
    stage 0 divides them by ``stem_stride``."""
    image_size: int = 32
    in_channels: int = 1            # grey digits (an RGB sample is averaged to grey before judging)
    channels: tuple = (32, 64, 128)
    convs_per_stage: int = 1
    stem_stride: int = 2            # 1 keeps the full resolution in stage 0 (four times its work)
    num_groups: int = 8
    pool_grid: int = 2              # average-pool the last feature map to pool_grid x pool_grid
    feature_dim: int = 128
    num_classes: int = NUM_DIGITS

    def __post_init__(self):
        for name in ("image_size", "in_channels", "convs_per_stage", "stem_stride", "num_groups", "pool_grid",
                     "feature_dim", "num_classes"):
            setattr(self, name, positive_int("DigitClassifierConfig", name, getattr(self, name)))
        self.channels = positive_ints("DigitClassifierConfig", "channels", self.channels)  # JSON gives a list
        if any(c % self.num_groups for c in self.channels):
            raise ValueError(f"DigitClassifierConfig: channels {self.channels} must each divide into "
                             f"num_groups={self.num_groups}")
        step = self.pool_grid * self.stem_stride * 2 ** (len(self.channels) - 1)
        if self.image_size % step:
            raise ValueError(f"DigitClassifierConfig: image_size {self.image_size} must be a multiple of "
                             f"{step} (pool_grid {self.pool_grid} x stem_stride {self.stem_stride} x "
                             f"2^(stages - 1))")

    @property
    def final_size(self) -> int:
        """H = W of the last conv stage's feature map."""
        return self.image_size // (self.stem_stride * 2 ** (len(self.channels) - 1))

    @classmethod
    def tiny(cls):
        """For tests: milliseconds on a CPU."""
        return cls(image_size=8, channels=(4, 8), stem_stride=1, num_groups=2, pool_grid=2, feature_dim=8)


class DigitClassifier(Module):
    """Images (B, in_channels, S, S) in [-1, 1] -> logits (B, num_classes)."""

    def __init__(self, config: DigitClassifierConfig = DigitClassifierConfig(), seed: int = 0):
        self.config = config
        rng = np.random.default_rng(seed)
        widths = [config.in_channels] + [c for c in config.channels for _ in range(config.convs_per_stage)]
        strides = [(config.stem_stride if i == 0 else 2) if j == 0 else 1
                   for i in range(len(config.channels)) for j in range(config.convs_per_stage)]
        self.blocks = [ConvNormAct(c_in, c_out, s, config.num_groups, rng=rng)
                       for c_in, c_out, s in zip(widths[:-1], widths[1:], strides)]
        self.pool = AvgPool2d(config.final_size // config.pool_grid)
        self.hidden = Linear(config.channels[-1] * config.pool_grid ** 2, config.feature_dim, rng=rng)
        self.hidden_act = SiLU()
        self.head = Linear(config.feature_dim, config.num_classes, rng=rng)

    def features(self, x):
        """(B, C, S, S) -> (B, feature_dim): the penultimate activations (used for the FD)."""
        C, S = self.config.in_channels, self.config.image_size
        if x.ndim != 4 or x.shape[1:] != (C, S, S):
            raise ValueError(f"DigitClassifier: expected images (B, {C}, {S}, {S}), got shape {tuple(x.shape)}")
        h = x
        for block in self.blocks:
            h = block(h)                                       # (B, C_i, H_i, W_i)
        pooled = self.pool(h)                                  # (B, C, g, g)
        self._pooled_shape = pooled.shape
        flat = pooled.reshape(pooled.shape[0], -1)             # (B, C g g)
        return self.hidden_act(self.hidden(flat))              # (B, feature_dim)

    def forward(self, x):
        return self.head(self.features(x))                     # (B, num_classes)

    def backward(self, d_logits):
        """d_logits (B, num_classes) -> dL/dx (B, C, S, S); adds into every parameter's grad."""
        df = self.head.backward(d_logits)                      # (B, feature_dim)
        d_flat = self.hidden.backward(self.hidden_act.backward(df))
        dh = self.pool.backward(d_flat.reshape(self._pooled_shape))   # forward was: flatten (B, C, g, g)
        for block in reversed(self.blocks):
            dh = block.backward(dh)
        return dh


def digit_loss(model: DigitClassifier, images, digits):
    """Mean cross-entropy of the digit head on (images (B, C, S, S), digits int (B,)); runs backward.

    Returns the loss as a 0-d array (no sync); the parameters' grads are filled."""
    logits = model.forward(images)
    loss, cache = F.cross_entropy(logits, digits)
    model.backward(F.cross_entropy_backward(1.0, cache))      # (softmax - onehot) / B
    return loss


if __name__ == "__main__":
    model = DigitClassifier(DigitClassifierConfig())
    x = np.random.default_rng(0).uniform(-1, 1, (2, 1, 32, 32)).astype(np.float32)
    print(f"digit classifier: {model.num_parameters():,} parameters; images {x.shape} -> "
          f"features {model.features(x).shape} -> logits {model.forward(x).shape}")
