"""ControlNet (Zhang, Rao & Agrawala, 2023): steer a frozen U-Net with a picture -- here, an outline.

The U-Net is locked. A *trainable copy* of its encoder (time embedding, conv_in, down blocks and
middle block, starting from the locked weights) reads the same noisy latent, plus the control image
through a small convolutional hint encoder; every feature map the copy would hand its decoder
(each skip, and the middle) goes through its own zero-initialised 1x1 convolution and is *added* to
the locked U-Net's:

    c      = hint_encoder(control)                                  (B, C0, h, w): image -> latent grid
    skips' = encoder_copy(z_t + ..., t, text)  with conv_in(z_t) + c at its input
    skip_i <- skip_i + s * zero_conv_i(skips'_i)          mid <- mid + s * zero_conv_mid(mid')

Zero convolutions make step 0 harmless: every residual is exactly 0, so the combined model is the
base model bit for bit, and training grows the control from nothing (the hint encoder's last conv
starts at zero too). s is ``control_scale``. The copy runs the U-Net's own DownBlock / MidBlock
forward and backward; the hint encoder and the zero convs are plain convs with theirs.

``ControlledUNet`` wraps a locked U-Net with a ControlNet: it runs the ControlNet, then the locked
U-Net's own forward with the residuals handed in (``UNet.forward(..., residuals=...)`` adds them to
its skips and middle), and the U-Net's own backward, whose skip and middle gradients
(``UNet.residual_grads``) are also the gradients of the residuals.

Control images: ``edge_map`` draws white outlines on black from any image with a Sobel operator
(conv2d with the two 3x3 kernels, |G| thresholded) -- minidiff's own conv, not a library's.

Read beside: ``minidiff/models/unet.py`` (DownBlock, MidBlock: the copied blocks), ``minidiff/nn/layers.py``.
"""
from __future__ import annotations

import copy
import dataclasses

import numpy as np

from ..backend import get_array_module
from ..checks import positive_int
from ..nn import functional as F
from ..nn.layers import Conv2d, SiLU
from ..nn.module import Module, Sequential
from .blocks import zero_init

__all__ = ["ControlNetConfig", "HintEncoder", "ControlNet", "ControlledUNet", "edge_map", "skip_channels"]


@dataclasses.dataclass
class ControlNetConfig:
    """hint_channels: channels of the control image (1: an outline); hint_downsample: stride-2 convs
    from the control image to the latent grid (2: 32x32 pixels -> 8x8 latents); hint_width: their channels."""
    hint_channels: int = 1
    hint_downsample: int = 2
    hint_width: int = 16

    def __post_init__(self):
        for name in ("hint_channels", "hint_width"):
            setattr(self, name, positive_int("ControlNetConfig", name, getattr(self, name)))
        if isinstance(self.hint_downsample, bool) or not isinstance(self.hint_downsample, int) \
                or self.hint_downsample < 0:
            raise ValueError(f"ControlNetConfig: hint_downsample must be an integer >= 0, got {self.hint_downsample!r}")


def skip_channels(unet_config) -> list:
    """Channels of every skip the U-Net's encoder pushes, in order: conv_in's, then each stage's."""
    channels = [unet_config.channels(0)]
    levels = len(unet_config.channel_mults)
    for level in range(levels):
        channels += [unet_config.channels(level)] * (unet_config.num_res_blocks + (0 if level == levels - 1 else 1))
    return channels


class HintEncoder(Sequential):
    """control (B, hint_channels, H, W) -> (B, C0, H / 2^k, W / 2^k): 3x3 convs with SiLU, k of them
    stride 2, the last one zero-initialised (so the hint adds nothing at step 0)."""

    def __init__(self, config: ControlNetConfig, out_channels: int, rng=None):
        width = config.hint_width
        layers = [Conv2d(config.hint_channels, width, 3, padding=1, rng=rng), SiLU()]
        for _ in range(config.hint_downsample):
            layers += [Conv2d(width, width, 3, stride=2, padding=1, rng=rng), SiLU()]
        last = Conv2d(width, out_channels, 3, padding=1, rng=rng)
        zero_init(last)
        super().__init__(*(layers + [last]))


def fit_control(control, size: int):
    """A control image (B, C, H, H) at the hint encoder's ``size``: max-pooled by an integer factor when
    larger (an outline drawn at 64x64 for a ControlNet trained on 32x32 ones keeps every line: a
    cell is on where any of its pixels is). Any other size is a ValueError naming the sizes it takes."""
    height, width = control.shape[2], control.shape[3]
    if height == width == size:
        return control
    if height != width or height % size:
        raise ValueError(f"the control image is {width}x{height}; this ControlNet takes {size}x{size} "
                         f"(or a square image a whole multiple of it)")
    f = height // size
    b, c = control.shape[:2]
    return control.reshape(b, c, size, f, size, f).max(axis=(3, 5))


class ControlNet(Module):
    """The trainable copy of a U-Net's encoder, its hint encoder and its zero convolutions.

    forward(x, t, context, mask, control) -> (down_residuals [one per skip], mid_residual)
    backward((d_down_residuals, d_mid_residual)) -> (dx, dcontext)."""

    def __init__(self, unet, config: ControlNetConfig | None = None, seed: int = 0):
        self.config = config if config is not None else ControlNetConfig()
        self.unet_config = unet.config
        rng = np.random.default_rng(seed)
        # the copy starts from the locked weights (ControlNet's "trainable copy")
        self.time_embedding = copy.deepcopy(unet.time_embedding)
        self.conv_in = copy.deepcopy(unet.conv_in)
        self.down_blocks = [copy.deepcopy(block) for block in unet.down_blocks]
        self.mid_block = copy.deepcopy(unet.mid_block)
        self.hint_encoder = HintEncoder(self.config, unet.config.channels(0), rng=rng)
        self.zero_convs = [Conv2d(c, c, 1, rng=rng) for c in skip_channels(unet.config)]
        c_mid = unet.config.channels(len(unet.config.channel_mults) - 1)
        self.mid_zero_conv = Conv2d(c_mid, c_mid, 1, rng=rng)
        for conv in self.zero_convs + [self.mid_zero_conv]:
            zero_init(conv)

    def forward(self, x, t, context, mask, control):
        temb = self.time_embedding(t)
        control = fit_control(control, x.shape[2] << self.config.hint_downsample)
        # h = conv_in(z_t) + hint_encoder(control): the copy sees the latent and the drawing together
        h = self.conv_in(x) + self.hint_encoder(control)
        skips = [h]
        for block in self.down_blocks:
            h = block(h, temb, context, mask, skips)
        h = self.mid_block(h, temb, context, mask)
        return [conv(s) for conv, s in zip(self.zero_convs, skips)], self.mid_zero_conv(h)

    def backward(self, grads):
        d_down, d_mid = grads
        dh = self.mid_zero_conv.backward(d_mid)
        dskips = [conv.backward(d) for conv, d in zip(self.zero_convs, d_down)]   # ordered as the skips
        dh, dtemb, dcontext = self.mid_block.backward(dh)
        for block in reversed(self.down_blocks):
            dh, dt, dc = block.backward(dh, dskips)
            dtemb, dcontext = _add(dtemb, dt), _add(dcontext, dc)
        dh = dh + dskips.pop()                          # conv_in's output (plus the hint) was skip 0
        self.hint_encoder.backward(dh)                  # the control image itself needs no gradient
        dx = self.conv_in.backward(dh)
        self.time_embedding.backward(dtemb)
        return dx, dcontext


class ControlledUNet(Module):
    """A locked U-Net steered by a ControlNet; its parameters are the ControlNet's alone.

    forward(x, t, context, context_mask, control) -> eps (B, out, H, W): the locked U-Net with
    ``control_scale`` times the ControlNet's residuals added to its skips and middle.
    backward(d_out) -> (dx, dcontext), with the ControlNet's parameters' gradients filled."""

    control_scale = 1.0

    def __init__(self, unet, controlnet: ControlNet):
        self._unet = unet                                # locked: not among this module's parameters
        self.controlnet = controlnet

    @property
    def unet(self):
        return self._unet

    def _children(self):
        yield "controlnet", self.controlnet

    def forward(self, x, t, context=None, context_mask=None, control=None):
        _, mask = self._unet._check_inputs(x, t, context, context_mask)
        down, mid = self.controlnet(x, t, context, mask, control)
        s = x.dtype.type(self.control_scale)
        # the locked U-Net with skip_i <- skip_i + s r_i and mid <- mid + s r_mid
        return self._unet.forward(x, t, context, context_mask, residuals=([s * r for r in down], s * mid))

    def backward(self, d_out):
        s = d_out.dtype.type(self.control_scale)
        dx, dcontext = self._unet.backward(d_out)
        d_down, d_mid = self._unet.residual_grads       # forward added s r: the residuals get s times these
        dx_control, dc_control = self.controlnet.backward(([s * d for d in d_down], s * d_mid))
        return dx + dx_control, _add(dcontext, dc_control)


def _add(total, term):
    if term is None:
        return total
    return term if total is None else total + term


# -- control images ----------------------------------------------------------------------------------
SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32)


def edge_map(images, threshold: float = 0.25):
    """Images in [-1, 1] (B, 3, H, W) -> outlines (B, 1, H, W) in {0, 1}: white edges on black.

    grey = mean over RGB;  G_x = grey * Sobel_x, G_y = grey * Sobel_y (conv2d, zero padding 1);
    edge where |G| = sqrt(G_x^2 + G_y^2) > threshold * max|G| over the batch's images (each its own max)."""
    xp = get_array_module(images)
    grey = images.mean(axis=1, keepdims=True)                                     # (B, 1, H, W)
    kernels = xp.asarray(np.stack([SOBEL_X, SOBEL_X.T])[:, None]).astype(images.dtype)  # (2, 1, 3, 3)
    grey = xp.pad(grey, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")          # (B, 1, H+2, W+2)
    gradient, _ = F.conv2d(grey, kernels, None, stride=1, padding=0)             # (B, 2, H, W)
    magnitude = xp.sqrt((gradient ** 2).sum(axis=1, keepdims=True))             # |G|
    peak = magnitude.max(axis=(1, 2, 3), keepdims=True)
    return (magnitude > threshold * xp.maximum(peak, 1e-6)).astype(images.dtype)
