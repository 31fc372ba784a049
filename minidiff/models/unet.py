"""The U-Net noise predictor eps_theta(x_t, t, c): Stable Diffusion's design, at small scale.

Given a noisy image (or latent) x_t, its timestep t and, optionally, a text context c (one vector
per prompt token from the text encoder), the U-Net predicts the noise eps that was mixed in:

    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps        ->       eps_theta(x_t, t, c) ~ eps

Architecture (shown for channel_mults=(1, 2), num_res_blocks=2, attention at both levels;
C = base_channels, image H x W; every arrow keeps the batch axis B):

    t (B,) -> sinusoid (B, C) -> Linear -> SiLU -> Linear -> temb (B, 4C)   fed to every ResBlock
    c (B, S, context_dim)                                                     fed to every cross-attention

    x (B, in, H, W)
    conv_in 3x3 ------------------------------------------------> (B, C, H, W) ........... skip 0
    down_blocks[0]:  ResBlock(C->C)   + Transformer                (B, C, H, W) ........... skip 1
                     ResBlock(C->C)   + Transformer                (B, C, H, W) ........... skip 2
                     Downsample (stride-2 conv)                    (B, C, H/2, W/2) ....... skip 3
    down_blocks[1]:  ResBlock(C->2C)  + Transformer                (B, 2C, H/2, W/2) ...... skip 4
                     ResBlock(2C->2C) + Transformer                (B, 2C, H/2, W/2) ...... skip 5
    mid_block:       ResBlock -> Transformer -> ResBlock           (B, 2C, H/2, W/2)
    up_blocks[0]:    [h, skip 5] -> ResBlock(4C->2C) + Transformer (B, 2C, H/2, W/2)
                     [h, skip 4] -> ResBlock(4C->2C) + Transformer
                     [h, skip 3] -> ResBlock(3C->2C) + Transformer
                     Upsample (nearest 2x + conv)                  (B, 2C, H, W)
    up_blocks[1]:    [h, skip 2] -> ResBlock(3C->C)  + Transformer (B, C, H, W)
                     [h, skip 1] -> ResBlock(2C->C)  + Transformer
                     [h, skip 0] -> ResBlock(2C->C)  + Transformer
    GroupNorm -> SiLU -> conv_out 3x3 (zero-initialised) -------> (B, out, H, W)

[h, skip] concatenates along channels. The encoder pushes every stage's output onto a stack of
skips; the decoder pops them, so the highest-resolution features reach the output directly.
Each Transformer (``SpatialTransformer``) lets every pixel attend to every other pixel
(self-attention) and to the prompt's tokens (cross-attention), which is how words steer pixels.

Backward runs the same diagram from the bottom up. Three gradients are *sums*, and the code says
where: the time embedding's gradient is summed over every ResBlock; the context's gradient over
every cross-attention; and each skip tensor's gradient (split off the decoder's concatenation)
is added back onto the encoder path at the stage that produced it.

Names follow diffusers' ``UNet2DConditionModel`` (``down_blocks.0.resnets.1.conv1`` ...) so a
reader can hold the two side by side. Every module instance runs once per forward pass, so each
keeps a single cache (only in training mode with gradients on; eval mode stores nothing).

Read beside: ``minidiff/models/blocks.py`` (ResBlock, SpatialTransformer, Downsample, Upsample: the
blocks, shared with the VAE and the text encoder), ``minidiff/nn/layers.py`` and
``minidiff/nn/functional.py`` (the op-level derivatives these modules chain together).
"""
from __future__ import annotations

import dataclasses
import numbers

import numpy as np

from ..backend import get_array_module
from ..checks import positive_int, positive_ints
from ..nn.layers import Conv2d, GroupNorm
from ..nn.module import Module
from .blocks import Downsample, ResBlock, SpatialTransformer, TimestepEmbedding, Upsample
from .blocks import groups_for, zero_init

__all__ = ["UNetConfig", "UNet", "TimestepEmbedding", "DownBlock", "MidBlock", "UpBlock", "unet_resblock",
           "unet_transformer",
           # the blocks themselves live in blocks.py (shared with the VAE and the text encoder)
           "ResBlock", "SpatialTransformer", "Downsample", "Upsample"]


# -- configuration -------------------------------------------------------------------------------
@dataclasses.dataclass
class UNetConfig:
    """Everything that fixes the U-Net's shape. ``dataclasses.asdict(config)`` round-trips.

    channel_mults: channels of level i = base_channels * channel_mults[i]; each level but the last
        halves the resolution, so H and W must be divisible by 2 ** (len(channel_mults) - 1).
    attention_levels: indices of the levels whose ResBlocks are each followed by a SpatialTransformer
        (the middle block always has one when ``mid_attention``).
    num_heads / head_dim: heads per SpatialTransformer; if ``head_dim`` is set, each level uses
        channels // head_dim heads instead.
    context_dim: width of the text context; None builds an unconditional U-Net (no cross-attention).
    feed_forward: "geglu" (Stable Diffusion's gated GELU) or "gelu"; hidden width ff_mult * channels.
    norm_groups: GroupNorm groups, reduced where needed to the largest divisor of the channels.
    time_embed_dim: width of the time embedding (default 4 * base_channels).
    image_size: the side the model is trained at (validated; forward accepts any divisible size).
    """
    in_channels: int = 3
    out_channels: int = 3
    base_channels: int = 64
    channel_mults: tuple = (1, 2, 2)
    num_res_blocks: int = 2
    attention_levels: tuple = (2,)
    num_heads: int = 4
    head_dim: int | None = None
    context_dim: int | None = None
    feed_forward: str = "geglu"
    ff_mult: int = 4
    dropout: float = 0.0
    norm_groups: int = 32
    time_embed_dim: int | None = None
    image_size: int = 32
    mid_attention: bool = True

    def __post_init__(self):
        owner = "UNetConfig"
        for name in ("in_channels", "out_channels", "base_channels", "num_res_blocks", "num_heads",
                     "ff_mult", "norm_groups", "image_size"):
            setattr(self, name, positive_int(owner, name, getattr(self, name)))
        for name in ("head_dim", "context_dim", "time_embed_dim"):
            if getattr(self, name) is not None:
                setattr(self, name, positive_int(owner, name, getattr(self, name)))
        if self.time_embed_dim is None:
            self.time_embed_dim = 4 * self.base_channels
        self.channel_mults = positive_ints(owner, "channel_mults", self.channel_mults)   # JSON gives lists back
        levels = len(self.channel_mults)
        self.attention_levels = _level_indices(self.attention_levels, levels)
        if self.image_size % self.downsampling_factor:
            raise ValueError(f"UNetConfig: image_size={self.image_size} is not divisible by the U-Net's total "
                             f"downsampling {self.downsampling_factor} (2 ** (len(channel_mults) - 1) with "
                             f"channel_mults={self.channel_mults})")
        if self.feed_forward not in ("geglu", "gelu"):
            raise ValueError(f"UNetConfig: feed_forward must be 'geglu' or 'gelu', got {self.feed_forward!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, numbers.Real) or not 0 <= self.dropout < 1:
            raise ValueError(f"UNetConfig: dropout must be in [0, 1), got {self.dropout!r}")
        if not isinstance(self.mid_attention, (bool, np.bool_)):
            raise ValueError(f"UNetConfig: mid_attention must be True or False, got {self.mid_attention!r}")
        for level in self.attention_levels + ((levels - 1,) if self.mid_attention else ()):
            self.heads_for(self.channels(level))                 # raises if heads do not divide

    # -- derived sizes ---------------------------------------------------------------------------
    @property
    def downsampling_factor(self) -> int:
        """How much the lowest level is smaller than the input: 2 ** (number of Downsamples)."""
        return 2 ** (len(self.channel_mults) - 1)

    def channels(self, level: int) -> int:
        return self.base_channels * self.channel_mults[level]

    def heads_for(self, channels: int) -> int:
        """Attention heads of a SpatialTransformer with this many channels."""
        heads = self.num_heads if self.head_dim is None else channels // self.head_dim
        if heads < 1 or channels % heads:
            raise ValueError(f"UNetConfig: {channels} channels do not split into {heads} attention heads "
                             f"(num_heads={self.num_heads}, head_dim={self.head_dim})")
        return heads

    def groups_for(self, channels: int) -> int:
        """GroupNorm groups: the largest divisor of ``channels`` that is at most ``norm_groups``."""
        return groups_for(channels, self.norm_groups)

    # -- named instances -------------------------------------------------------------------------
    @classmethod
    def tiny(cls):
        """For float64 gradient checks: two levels, attention with cross-attention at the lower one."""
        return cls(in_channels=2, out_channels=2, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                   attention_levels=(1,), num_heads=2, context_dim=6, ff_mult=2, norm_groups=2,
                   time_embed_dim=16, image_size=8)

    @classmethod
    def quick16(cls):
        """Unconditional 16x16 RGB pixel model small enough to train on a CPU in minutes (lesson 05 --quick)."""
        return cls(in_channels=3, out_channels=3, base_channels=32, channel_mults=(1, 2), num_res_blocks=1,
                   attention_levels=(1,), num_heads=4, norm_groups=8, image_size=16)

    @classmethod
    def pixel32(cls):
        """Unconditional 32x32 RGB pixel model (levels 32, 16, 8; attention at 8x8), trained on a GPU."""
        return cls(in_channels=3, out_channels=3, base_channels=64, channel_mults=(1, 2, 2), num_res_blocks=2,
                   attention_levels=(2,), num_heads=4, dropout=0.1, norm_groups=32, image_size=32)

    @classmethod
    def latent8(cls):
        """The text-to-image model on 4 x 8 x 8 VAE latents: self- and cross-attention at both levels,
        context from the 128-wide text encoder. Kept small (2.4M parameters, one ResBlock a level): at
        8x8 a training step is bound by the number of kernel launches, not arithmetic, so fewer layers
        train faster, and the shipped file stays under 5 MB in float16."""
        return cls(in_channels=4, out_channels=4, base_channels=48, channel_mults=(1, 2), num_res_blocks=1,
                   attention_levels=(0, 1), num_heads=4, context_dim=128, norm_groups=32, image_size=8)


def _level_indices(levels, count):
    """attention_levels as a tuple of ints, each a level index in 0..count-1 (empty is fine)."""
    if isinstance(levels, (str, bytes)) or not hasattr(levels, "__iter__"):
        raise ValueError(f"UNetConfig: attention_levels must be a sequence of level indices, got {levels!r}")
    levels = tuple(levels)
    if any(isinstance(a, bool) or not isinstance(a, numbers.Integral) or not 0 <= a < count for a in levels):
        raise ValueError(f"UNetConfig: attention_levels {levels} must be level indices in 0..{count - 1} "
                         f"(channel_mults has {count} levels)")
    return tuple(int(a) for a in levels)


def _add(total, term):
    """total + term, where None stands for 'no gradient yet' (or none from this branch)."""
    if term is None:
        return total
    return term if total is None else total + term


# -- the U-Net's blocks (defined in blocks.py) ---------------------------------------------------
def unet_resblock(in_channels, out_channels, config: UNetConfig, rng=None) -> ResBlock:
    """A ResBlock that hears the timestep, its output conv zero-initialised (each block starts as the
    identity on its residual path); GroupNorm eps 1e-5, as in Stable Diffusion's U-Net."""
    return ResBlock(in_channels, out_channels, config.norm_groups, eps=1e-5, time_embed_dim=config.time_embed_dim,
                    dropout=config.dropout, zero_init_out=True, rng=rng)


def unet_transformer(channels, config: UNetConfig, rng=None) -> SpatialTransformer:
    """Self-attention among the pixels, cross-attention to the context (when context_dim is set) and
    the feed-forward, with diffusers' layer names (norm1, attn1, norm2, attn2, norm3, ff)."""
    return SpatialTransformer(channels, config.heads_for(channels), config.norm_groups, context_dim=config.context_dim,
                              ff_mult=config.ff_mult, feed_forward=config.feed_forward, rng=rng)


# -- the three kinds of level --------------------------------------------------------------------
class DownBlock(Module):
    """One encoder level: num_res_blocks x (ResBlock [+ SpatialTransformer]) [+ Downsample].

    forward pushes the output of every stage onto ``skips`` for the decoder;
    backward pops their gradients from ``dskips`` and adds each where its tensor was made."""

    def __init__(self, in_channels, out_channels, config: UNetConfig, attention, downsample, rng=None):
        self.resnets = [unet_resblock(in_channels if j == 0 else out_channels, out_channels, config, rng=rng)
                        for j in range(config.num_res_blocks)]
        self.attentions = [unet_transformer(out_channels, config, rng=rng)
                           for _ in range(config.num_res_blocks)] if attention else []
        self.downsample = Downsample(out_channels, rng=rng) if downsample else None

    def forward(self, h, temb, context, mask, skips):
        for j, resnet in enumerate(self.resnets):
            h = resnet(h, temb)
            if self.attentions:
                h = self.attentions[j](h, context, mask)
            skips.append(h)                                   # push: the decoder pops it
        if self.downsample is not None:
            h = self.downsample(h)                            # (B, C, H/2, W/2)
            skips.append(h)
        return h

    def backward(self, dh, dskips):
        """Returns (dh, dtemb, dcontext); consumes this block's skip gradients from ``dskips``."""
        dtemb = dcontext = None
        if self.downsample is not None:
            dh = dh + dskips.pop()                            # the skip's gradient rejoins the main path
            dh = self.downsample.backward(dh)
        for j in reversed(range(len(self.resnets))):
            dh = dh + dskips.pop()                            # the skip's gradient rejoins the main path
            if self.attentions:
                dh, dc = self.attentions[j].backward(dh)
                dcontext = _add(dcontext, dc)
            dh, dt = self.resnets[j].backward(dh)
            dtemb = _add(dtemb, dt)
        return dh, dtemb, dcontext


class MidBlock(Module):
    """The bottleneck at the lowest resolution: ResBlock -> [SpatialTransformer] -> ResBlock."""

    def __init__(self, channels, config: UNetConfig, rng=None):
        self.resnets = [unet_resblock(channels, channels, config, rng=rng) for _ in range(2)]
        self.attentions = [unet_transformer(channels, config, rng=rng)] if config.mid_attention else []

    def forward(self, h, temb, context, mask):
        h = self.resnets[0](h, temb)
        if self.attentions:
            h = self.attentions[0](h, context, mask)
        return self.resnets[1](h, temb)

    def backward(self, dh):
        """Returns (dh, dtemb, dcontext)."""
        dh, dtemb = self.resnets[1].backward(dh)
        dcontext = None
        if self.attentions:
            dh, dcontext = self.attentions[0].backward(dh)
        dh, dt = self.resnets[0].backward(dh)
        return dh, dtemb + dt, dcontext


class UpBlock(Module):
    """One decoder level: (num_res_blocks + 1) x ([h, skip] -> ResBlock [+ SpatialTransformer]) [+ Upsample].

    forward pops one skip per ResBlock and concatenates it to h along channels;
    backward splits that concatenation's gradient and pushes the skip part onto ``dskips``."""

    def __init__(self, in_channels, out_channels, skip_channels, config: UNetConfig, attention, upsample,
                 rng=None):
        self.skip_channels = list(skip_channels)                 # channels of the skip each ResBlock pops
        self.resnets = [unet_resblock((in_channels if j == 0 else out_channels) + c_skip, out_channels, config, rng=rng)
                        for j, c_skip in enumerate(self.skip_channels)]
        self.attentions = [unet_transformer(out_channels, config, rng=rng)
                           for _ in self.resnets] if attention else []
        self.upsample = Upsample(out_channels, rng=rng) if upsample else None

    def forward(self, h, temb, context, mask, skips):
        xp = get_array_module(h)
        for j, resnet in enumerate(self.resnets):
            h = xp.concatenate([h, skips.pop()], axis=1)      # (B, C_h + C_skip, H, W)
            h = resnet(h, temb)
            if self.attentions:
                h = self.attentions[j](h, context, mask)
        if self.upsample is not None:
            h = self.upsample(h)                              # (B, C, 2H, 2W)
        return h

    def backward(self, dh, dskips):
        """Returns (dh, dtemb, dcontext); pushes the skip gradients onto ``dskips``."""
        dtemb = dcontext = None
        if self.upsample is not None:
            dh = self.upsample.backward(dh)
        for j in reversed(range(len(self.resnets))):
            if self.attentions:
                dh, dc = self.attentions[j].backward(dh)
                dcontext = _add(dcontext, dc)
            dh, dt = self.resnets[j].backward(dh)
            dtemb = _add(dtemb, dt)
            # forward was: h = concat([h, skip]) along channels: split the gradient the same way
            c_skip = self.skip_channels[j]
            dskips.append(dh[:, -c_skip:])
            dh = dh[:, :-c_skip]
        return dh, dtemb, dcontext


# -- the U-Net -----------------------------------------------------------------------------------
class UNet(Module):
    """eps_theta(x_t, t, context): see the module docstring for the diagram.

    forward(x (B, in, H, W), t (B,) or scalar, context (B, S, context_dim) or None,
            context_mask (B, S) bool or None, True = real token) -> (B, out, H, W)
    backward(d_out) -> (dx, dcontext)   (dcontext is None when forward had no context)."""

    def __init__(self, config: UNetConfig | None = None, seed: int = 0):
        self.config = config = config if config is not None else UNetConfig()
        rng = np.random.default_rng(seed)
        levels = len(config.channel_mults)
        C0 = config.channels(0)
        self.time_embedding = TimestepEmbedding(config.base_channels, config.time_embed_dim, rng=rng)
        self.conv_in = Conv2d(config.in_channels, C0, 3, padding=1, rng=rng)

        skip_channels = [C0]                                      # conv_in's output is skip 0
        self.down_blocks = []
        for level in range(levels):
            c_in = C0 if level == 0 else config.channels(level - 1)
            c_out = config.channels(level)
            last = level == levels - 1
            self.down_blocks.append(DownBlock(c_in, c_out, config, attention=level in config.attention_levels,
                                              downsample=not last, rng=rng))
            skip_channels += [c_out] * (config.num_res_blocks + (0 if last else 1))

        c_mid = config.channels(levels - 1)
        self.mid_block = MidBlock(c_mid, config, rng=rng)

        self.up_blocks = []
        c_in = c_mid
        for level in reversed(range(levels)):
            c_out = config.channels(level)
            popped = [skip_channels.pop() for _ in range(config.num_res_blocks + 1)]
            self.up_blocks.append(UpBlock(c_in, c_out, popped, config, attention=level in config.attention_levels,
                                          upsample=level != 0, rng=rng))
            c_in = c_out

        self.conv_norm_out = GroupNorm(config.groups_for(C0), C0, eps=1e-5, activation="silu")   # + SiLU
        self.conv_out = Conv2d(C0, config.out_channels, 3, padding=1, rng=rng)
        zero_init(self.conv_out)

    def cross_attentions(self):
        """[(name, MultiHeadAttention)] of every cross-attention layer, encoder to decoder. Set
        ``layer.store_attention = True`` to keep each one's attention probabilities (B, heads, HW, S):
        which pixels listen to which prompt tokens."""
        named = [(f"down_blocks.{i}", b) for i, b in enumerate(self.down_blocks)] + [("mid_block", self.mid_block)]
        named += [(f"up_blocks.{i}", b) for i, b in enumerate(self.up_blocks)]
        return [(f"{name}.attentions.{j}.attn2", block.attn2)
                for name, b in named for j, block in enumerate(b.attentions) if block.attn2 is not None]

    # -- input checks ----------------------------------------------------------------------------
    def _check_inputs(self, x, t, context, context_mask):
        """Validate shapes; returns (t as a (B,) array on x's device, attention mask or None)."""
        cfg = self.config
        if getattr(x, "ndim", None) != 4:
            raise ValueError(f"UNet: x must be (B, C, H, W), got shape {getattr(x, 'shape', type(x))}")
        B, C, H, W = x.shape
        if C != cfg.in_channels:
            raise ValueError(f"UNet: x has {C} channels (shape {tuple(x.shape)}), "
                             f"expected in_channels={cfg.in_channels}")
        f = cfg.downsampling_factor
        if H % f or W % f:
            raise ValueError(f"UNet: image size {H}x{W} is not divisible by the U-Net's total downsampling {f} "
                             f"(channel_mults={cfg.channel_mults})")
        dtype = self.conv_in.weight.data.dtype
        for name, a in (("x", x), ("context", context)):
            if a is not None and a.dtype != dtype:
                raise ValueError(f"UNet: {name} has dtype {a.dtype} but the parameters are {dtype}; cast one "
                                 f"to match (model.to(dtype=...)): float32 to train, float64 to check gradients")
        xp = get_array_module(x)
        t = xp.asarray(t)
        if t.ndim == 0:
            t = xp.broadcast_to(t, (B,))                      # one timestep for the whole batch
        if t.shape != (B,):
            raise ValueError(f"UNet: t must be a scalar or have shape ({B},) to match the batch of x, "
                             f"got shape {tuple(t.shape)}")
        t = t.astype(x.dtype, copy=False)
        mask = None
        if context is not None:
            if cfg.context_dim is None:
                raise ValueError("UNet: a context was given but this U-Net is unconditional (context_dim=None)")
            if getattr(context, "ndim", None) != 3 or context.shape[0] != B or context.shape[2] != cfg.context_dim:
                raise ValueError(f"UNet: context must be ({B}, S, {cfg.context_dim}), "
                                 f"got shape {tuple(getattr(context, 'shape', ()))}")
            if context_mask is not None:
                context_mask = xp.asarray(context_mask)
                if context_mask.shape != context.shape[:2]:
                    raise ValueError(f"UNet: context_mask must have shape {tuple(context.shape[:2])} (B, S) to "
                                     f"match the context, got {tuple(context_mask.shape)}")
                mask = context_mask.astype(bool)[:, None, None, :]   # (B, 1, 1, S): broadcast over heads, pixels
        elif context_mask is not None:
            raise ValueError("UNet: context_mask was given without a context")
        return t, mask

    # -- forward and backward --------------------------------------------------------------------
    def forward(self, x, t, context=None, context_mask=None, residuals=None):
        """eps (or x0, v) for x_t at timesteps t. ``residuals``: (one array per skip, one for the
        middle), added to the encoder's outputs before the decoder reads them -- a ControlNet's way in
        (models/controlnet.py); their gradients are ``residual_grads`` after ``backward``."""
        t, mask = self._check_inputs(x, t, context, context_mask)
        temb = self.time_embedding(t)                             # (B, temb)
        h = self.conv_in(x)                                       # (B, C0, H, W)
        skips = [h]                                               # stack of encoder outputs
        for block in self.down_blocks:
            h = block(h, temb, context, mask, skips)
        h = self.mid_block(h, temb, context, mask)                # (B, C_last, H/f, W/f)
        self._with_residuals = residuals is not None
        if residuals is not None:                                 # skip_i <- skip_i + r_i;  mid <- mid + r_mid
            down, mid = residuals
            skips = [skip + r for skip, r in zip(skips, down)]
            h = h + mid
        for block in self.up_blocks:
            h = block(h, temb, context, mask, skips)
        return self.conv_out(self.conv_norm_out(h))               # (B, out, H, W)

    def backward(self, d_out):
        dh = self.conv_norm_out.backward(self.conv_out.backward(d_out))
        dtemb = dcontext = None                     # sums over every ResBlock / every cross-attention
        dskips = []                                 # the decoder pushes skip gradients, the encoder pops them
        for block in reversed(self.up_blocks):
            dh, dt, dc = block.backward(dh, dskips)
            dtemb, dcontext = _add(dtemb, dt), _add(dcontext, dc)
        # dskips is in the skips' order (the decoder pushes skip 0's gradient first, as it popped it last);
        # a residual added to a skip (or to the middle) gets that tensor's gradient as it is
        self.residual_grads = (list(dskips), dh) if getattr(self, "_with_residuals", False) else None
        dh, dt, dc = self.mid_block.backward(dh)
        dtemb, dcontext = _add(dtemb, dt), _add(dcontext, dc)
        for block in reversed(self.down_blocks):
            dh, dt, dc = block.backward(dh, dskips)
            dtemb, dcontext = _add(dtemb, dt), _add(dcontext, dc)
        dh = dh + dskips.pop()                      # conv_in's output was skip 0 as well
        dx = self.conv_in.backward(dh)
        self.time_embedding.backward(dtemb)         # every ResBlock's share, summed
        return dx, dcontext                         # dcontext is None when forward had no context


# -- demo ----------------------------------------------------------------------------------------
def _trace_shapes(model, x, t, context=None):
    """Run one forward pass printing the output shape of every stage."""
    def traced(name, module):
        forward = module.forward

        def wrapper(*args, **kwargs):
            out = forward(*args, **kwargs)
            print(f"  {name:<28} -> {tuple(out.shape)}")
            return out
        module.forward = wrapper

    traced("conv_in", model.conv_in)
    for prefix, blocks in (("down_blocks", model.down_blocks), ("mid_block", [model.mid_block]),
                           ("up_blocks", model.up_blocks)):
        for i, block in enumerate(blocks):
            name = prefix if prefix == "mid_block" else f"{prefix}.{i}"
            for j, resnet in enumerate(block.resnets):
                traced(f"{name}.resnets.{j}", resnet)
            for j, attention in enumerate(block.attentions):
                traced(f"{name}.attentions.{j}", attention)
            for part in ("downsample", "upsample"):
                if getattr(block, part, None) is not None:
                    traced(f"{name}.{part}", getattr(block, part))
    traced("conv_out", model.conv_out)
    model.eval()
    return model(x, t, context)


if __name__ == "__main__":      # python -m minidiff.models.unet (speed: python -m minidiff bench)
    for name in ("tiny", "quick16", "pixel32", "latent8"):
        cfg = getattr(UNetConfig, name)()
        rng = np.random.default_rng(0)
        x = rng.standard_normal((2, cfg.in_channels, cfg.image_size, cfg.image_size)).astype(np.float32)
        context = None if cfg.context_dim is None else rng.standard_normal((2, 8, cfg.context_dim)).astype(np.float32)
        model = UNet(cfg)
        print(f"{name}: {model.num_parameters():,} parameters; shape trace (x {tuple(x.shape)}, context "
              f"{None if context is None else tuple(context.shape)}):")
        _trace_shapes(model, x, np.array([10, 500]), context)
