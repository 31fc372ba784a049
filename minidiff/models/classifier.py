"""The attribute classifier: the judge behind prompt accuracy and the Fréchet distance.

conv stages (3x3 conv -> GroupNorm -> SiLU, stride 2 between stages) -> average pool to a coarse
g x g grid -> Linear -> SiLU (the *features*) -> one Linear head per label. Position and relation
labels depend on *where* things are, which a global average pool would throw away: the coarse grid
keeps it, and two extra input channels holding each pixel's x and y in [-1, 1] ("CoordConv", Liu et
al. 2018) give it within each cell. (``pool_grid=1`` is the global pool; position accuracy then
stays near chance for many more steps.)

Absent labels (-1: no position in a two-object scene, no second object in a one-object scene) take
no part in the loss: a training batch is arranged as [one-object scenes | two-object scenes], and
each head's cross-entropy runs over the rows where its label exists (``head_rows``).

The heads' class counts are the shapes grammar's vocabulary sizes (``minidiff/datasets/captions.py``;
a test checks they agree). The model knows nothing of the data beyond these counts.

Read beside: ``minidiff/models/clip.py`` (ConvNormAct and the coordinate planes, shared with the
CLIP image tower) and ``minidiff/evaluate.py`` (what the classifier's predictions are used for).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import backend
from ..checks import positive_int, positive_ints
from ..nn import functional as F
from ..nn.layers import Linear, SiLU
from ..nn.module import Module
from .clip import ConvNormAct, coordinate_planes

# One head per label: (label key, number of classes, which scenes have the label).
# Classes: 1 or 2 objects; 3 shapes; 6 colours; 2 sizes; 5 positions; 4 relations.
HEADS = (("num_objects", 2, "all"),
         ("shape", 3, "all"),
         ("colour", 6, "all"),
         ("size", 2, "all"),
         ("position", 5, "one"),
         ("shape2", 3, "two"),
         ("colour2", 6, "two"),
         ("size2", 2, "two"),
         ("relation", 4, "two"))
HEAD_NAMES = tuple(name for name, _, _ in HEADS)


@dataclass
class ClassifierConfig:
    """Shape of the attribute classifier. ``channels[i]`` is stage i's width; stage i > 0 halves H, W."""
    image_size: int = 32
    channels: tuple = (32, 64, 128)
    convs_per_stage: int = 2
    num_groups: int = 8
    pool_grid: int = 4          # average-pool the last feature map to pool_grid x pool_grid (1 = global pool)
    feature_dim: int = 128

    def __post_init__(self):
        for name in ("image_size", "convs_per_stage", "num_groups", "pool_grid", "feature_dim"):
            setattr(self, name, positive_int("ClassifierConfig", name, getattr(self, name)))
        self.channels = positive_ints("ClassifierConfig", "channels", self.channels)   # JSON gives back a list
        if any(c % self.num_groups for c in self.channels):
            raise ValueError(f"ClassifierConfig: channels {self.channels} must each divide into "
                             f"num_groups={self.num_groups}")

    @classmethod
    def judge64(cls):
        """The judge of 64x64 images: one more stride-2 stage in front, so it pools the same 4x4 grid."""
        return cls(image_size=64, channels=(16, 32, 64, 128))

    @classmethod
    def tiny(cls):
        """For tests: seconds on a CPU."""
        return cls(image_size=16, channels=(8, 16), convs_per_stage=1, num_groups=4, pool_grid=2, feature_dim=16)


class AttributeClassifier(Module):
    """Image (B, 3, S, S) in [-1, 1] -> {label key: logits (B, classes)} for every head in HEADS."""

    def __init__(self, config: ClassifierConfig = ClassifierConfig(), seed: int = 0):
        self.config = config
        rng = np.random.default_rng(seed)
        widths = [3 + 2] + [c for c in config.channels for _ in range(config.convs_per_stage)]
        strides = [2 if (i > 0 and j == 0) else 1
                   for i in range(len(config.channels)) for j in range(config.convs_per_stage)]
        self.blocks = [ConvNormAct(c_in, c_out, s, config.num_groups, rng=rng)
                       for c_in, c_out, s in zip(widths[:-1], widths[1:], strides)]
        self.hidden = Linear(config.channels[-1] * config.pool_grid ** 2, config.feature_dim, rng=rng)
        self.hidden_act = SiLU()
        self.heads = [Linear(config.feature_dim, classes, rng=rng) for _, classes, _ in HEADS]

    def features(self, x):
        """(B, 3, S, S) -> (B, feature_dim): the penultimate activations (used for the FD)."""
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != x.shape[3]:
            raise ValueError(f"AttributeClassifier: expected square images (B, 3, S, S), got shape {tuple(x.shape)}")
        xp = backend.get_array_module(x)
        B, _, S, _ = x.shape
        h = xp.concatenate([x, coordinate_planes(B, S, xp, x.dtype)], axis=1)      # (B, 5, S, S): + x, y planes
        for block in self.blocks:
            h = block(h)                                       # (B, C, H', W')
        B, C, H, W = h.shape
        g = self.config.pool_grid
        if H % g or W % g:
            raise ValueError(f"AttributeClassifier: a {H}x{W} feature map does not pool to {g}x{g}; "
                             f"images must be multiples of {g * 2 ** (len(self.config.channels) - 1)} pixels")
        self._pooled_shape = h.shape
        # average over (H/g x W/g) windows: (B, C, H, W) -> (B, C, g, g) -> (B, C g g)
        pooled = h.reshape(B, C, g, H // g, g, W // g).mean(axis=(3, 5)).reshape(B, C * g * g)
        return self.hidden_act(self.hidden(pooled))            # (B, feature_dim)

    def forward(self, x):
        f = self.features(x)
        return {name: head(f) for name, head in zip(HEAD_NAMES, self.heads)}

    def backward(self, d_logits):
        """d_logits: {label key: (B, classes)} (heads missing from the dict get no gradient).
        Returns dL/dx (B, 3, S, S)."""
        df = None
        for name, head in zip(HEAD_NAMES, self.heads):
            if name in d_logits:
                g = head.backward(d_logits[name])              # every head reads the same features
                df = g if df is None else df + g
        d_pooled = self.hidden.backward(self.hidden_act.backward(df))          # (B, C g g)
        B, C, H, W = self._pooled_shape
        g = self.config.pool_grid
        xp = backend.get_array_module(d_pooled)
        # forward was: window means -> each of a window's (H/g)(W/g) positions receives d_pooled / its size
        d_windows = (d_pooled / ((H // g) * (W // g))).reshape(B, C, g, 1, g, 1)
        dh = xp.broadcast_to(d_windows, (B, C, g, H // g, g, W // g)).reshape(B, C, H, W)
        for block in reversed(self.blocks):
            dh = block.backward(dh)
        return dh[:, :3]                                       # drop the coordinate channels



# -- the loss ----------------------------------------------------------------------------------
def head_rows(name: str, num_single: int, batch: int) -> slice:
    """The rows of an arranged batch whose label ``name`` exists."""
    scenes = dict((n, s) for n, _, s in HEADS)[name]
    return {"all": slice(0, batch), "one": slice(0, num_single), "two": slice(num_single, batch)}[scenes]


def classifier_loss(model: AttributeClassifier, images, targets: dict, num_single: int):
    """Sum over heads of the cross-entropy on the rows where the head's label exists; runs backward.

    images (B, 3, S, S) arranged as [one-object | two-object] (`arrange_batch`), ``num_single``
    rows of one-object scenes first; targets {head: int (B,)} on the images' device.
    Returns the loss as a 0-d array (no sync); the parameters' grads are filled.
    """
    batch = images.shape[0]
    logits = model.forward(images)
    xp = backend.get_array_module(images)
    total, d_logits = 0.0, {}
    for name in HEAD_NAMES:
        rows = head_rows(name, num_single, batch)
        if rows.stop - rows.start == 0:                 # e.g. no two-object scene in this batch
            d_logits[name] = xp.zeros_like(logits[name])
            continue
        loss, cache = F.cross_entropy(logits[name][rows], targets[name][rows])
        total = total + loss
        d_logits[name] = xp.zeros_like(logits[name])
        d_logits[name][rows] = F.cross_entropy_backward(1.0, cache)
    model.backward(d_logits)
    return total


# -- the classifier as a frozen feature extractor (the VAE's perceptual loss) ---------------------
class ClassifierFeatures(Module):
    """The feature maps of a trained AttributeClassifier's conv stages, as a perceptual network:
    ``forward(x) -> [h_1, ..., h_K]`` (one map per ConvNormAct block) and
    ``backward([dh_1, ..., dh_K]) -> dx``. LPIPS does the same with VGG; here the network knows
    exactly the shapes, colours and places the autoencoder must keep. Its weights are never
    updated (``models/vae_loss.py``'s ``frozen_features`` restores their grads)."""

    def __init__(self, classifier: AttributeClassifier):
        self.classifier = classifier

    def forward(self, x):
        xp = backend.get_array_module(x)
        B, _, S, _ = x.shape
        h = xp.concatenate([x, coordinate_planes(B, S, xp, x.dtype)], axis=1)      # + x, y planes
        maps = []
        for block in self.classifier.blocks:
            h = block(h)
            maps.append(h)
        return maps

    def backward(self, d_maps):
        # forward was: h_k = block_k(h_{k-1}), each h_k also an output -> its gradient joins on the way back
        dh = None
        for block, d_map in zip(reversed(self.classifier.blocks), reversed(list(d_maps))):
            dh = d_map if dh is None else dh + d_map
            dh = block.backward(dh)
        return dh[:, :3]                                   # the coordinate planes are constants
