"""The VAE twin: minidiff.models.vae.AutoencoderKL written in PyTorch with the same parameter names,
and diffusers' AutoencoderKL built to the same config."""
from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as TF
from torch import nn

from .common import load_minidiff_state
from .unet import UpsampleTwin


class VAEResBlockTwin(nn.Module):
    def __init__(self, c_in, c_out, config):
        super().__init__()
        self.norm1 = nn.GroupNorm(config.norm_groups, c_in, eps=config.norm_eps)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = nn.GroupNorm(config.norm_groups, c_out, eps=config.norm_eps)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x):
        h = self.conv1(TF.silu(self.norm1(x)))
        h = self.conv2(TF.silu(self.norm2(h)))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class VAEAttnBlockTwin(nn.Module):
    """x + to_out(softmax(q k^T / sqrt(C)) v) over the H*W positions of GroupNorm(x), one head."""

    def __init__(self, channels, config):
        super().__init__()
        self.group_norm = nn.GroupNorm(config.norm_groups, channels, eps=config.norm_eps)
        self.attn = nn.Module()
        for name in ("to_q", "to_k", "to_v", "to_out"):
            setattr(self.attn, name, nn.Linear(channels, channels))

    def forward(self, x):
        B, C, H, W = x.shape
        h = self.group_norm(x).reshape(B, C, H * W).transpose(1, 2)          # (B, HW, C)
        q, k, v = self.attn.to_q(h), self.attn.to_k(h), self.attn.to_v(h)
        o = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(C), dim=-1) @ v
        return x + self.attn.to_out(o).transpose(1, 2).reshape(B, C, H, W)


class VAEDownTwin(nn.Module):
    """Zero-pad one row at the bottom and one column at the right, then a stride-2 3x3 conv."""

    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x):
        return self.conv(TF.pad(x, (0, 1, 0, 1)))


class VAELevelTwin(nn.Module):
    def __init__(self, c_in, c_out, num_res_blocks, resample, config):
        super().__init__()
        self.resnets = nn.ModuleList(VAEResBlockTwin(c_in if j == 0 else c_out, c_out, config)
                                     for j in range(num_res_blocks))
        self.resample = resample

    def forward(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        return x if self.resample is None else self.resample(x)


class VAEMidBlockTwin(nn.Module):
    def __init__(self, channels, config):
        super().__init__()
        self.resnets = nn.ModuleList(VAEResBlockTwin(channels, channels, config) for _ in range(2))
        self.attention = VAEAttnBlockTwin(channels, config) if config.mid_attention else None

    def forward(self, x):
        x = self.resnets[0](x)
        if self.attention is not None:
            x = self.attention(x)
        return self.resnets[1](x)


class VAETwin(nn.Module):
    """minidiff.models.vae.AutoencoderKL in PyTorch; same parameter names.
    forward(x, noise) -> (x_rec, kl) with z = mean + exp(logvar / 2) * noise."""

    def __init__(self, config):
        super().__init__()
        self.config = cfg = config
        widths = [cfg.base_channels * m for m in cfg.channel_mults]
        last = len(widths) - 1
        self.encoder = enc = nn.Module()
        enc.conv_in = nn.Conv2d(cfg.in_channels, widths[0], 3, padding=1)
        enc.down_blocks = nn.ModuleList(
            VAELevelTwin(widths[max(i - 1, 0)], w, cfg.num_res_blocks, VAEDownTwin(w) if i < last else None, cfg)
            for i, w in enumerate(widths))
        enc.mid_block = VAEMidBlockTwin(widths[-1], cfg)
        enc.norm_out = nn.GroupNorm(cfg.norm_groups, widths[-1], eps=cfg.norm_eps)
        enc.conv_out = nn.Conv2d(widths[-1], 2 * cfg.latent_channels, 3, padding=1)
        self.quant_conv = nn.Conv2d(2 * cfg.latent_channels, 2 * cfg.latent_channels, 1)
        self.post_quant_conv = nn.Conv2d(cfg.latent_channels, cfg.latent_channels, 1)
        widths = widths[::-1]
        self.decoder = dec = nn.Module()
        dec.conv_in = nn.Conv2d(cfg.latent_channels, widths[0], 3, padding=1)
        dec.mid_block = VAEMidBlockTwin(widths[0], cfg)
        dec.up_blocks = nn.ModuleList(
            VAELevelTwin(widths[max(i - 1, 0)], w, cfg.num_res_blocks + 1, UpsampleTwin(w) if i < last else None, cfg)
            for i, w in enumerate(widths))
        dec.norm_out = nn.GroupNorm(cfg.norm_groups, widths[-1], eps=cfg.norm_eps)
        dec.conv_out = nn.Conv2d(widths[-1], cfg.in_channels, 3, padding=1)

    def encode(self, x):
        """-> (mean, clamped logvar)"""
        enc = self.encoder
        h = enc.conv_in(x)
        for level in enc.down_blocks:
            h = level(h)
        h = enc.conv_out(TF.silu(enc.norm_out(enc.mid_block(h))))
        mean, logvar = self.quant_conv(h).chunk(2, dim=1)
        return mean, logvar.clamp(self.config.logvar_min, self.config.logvar_max)

    def decode(self, z):
        dec = self.decoder
        h = dec.mid_block(dec.conv_in(self.post_quant_conv(z)))
        for level in dec.up_blocks:
            h = level(h)
        return dec.conv_out(TF.silu(dec.norm_out(h)))

    def forward(self, x, noise):
        mean, logvar = self.encode(x)
        z = mean + torch.exp(0.5 * logvar) * noise
        kl = 0.5 * (mean ** 2 + logvar.exp() - 1 - logvar).sum() / x.shape[0]
        return self.decode(z), kl


def make_vae_twin(config, state_dict=None, dtype=torch.float64, device="cpu"):
    """A VAETwin in ``dtype`` on ``device``, loaded with ``state_dict`` (a minidiff
    ``AutoencoderKL.state_dict()``) when given."""
    twin = VAETwin(config).to(device=device, dtype=dtype)
    if state_dict is not None:
        load_minidiff_state(twin, state_dict)
    return twin


def diffusers_vae_name(name):
    """minidiff AutoencoderKL parameter name -> diffusers AutoencoderKL name."""
    name = re.sub(r"\.down_blocks\.(\d+)\.resample\.", r".down_blocks.\1.downsamplers.0.", name)
    name = re.sub(r"\.up_blocks\.(\d+)\.resample\.", r".up_blocks.\1.upsamplers.0.", name)
    name = name.replace(".mid_block.attention.attn.to_out.", ".mid_block.attentions.0.to_out.0.")
    name = name.replace(".mid_block.attention.attn.", ".mid_block.attentions.0.")
    name = name.replace(".mid_block.attention.", ".mid_block.attentions.0.")
    return name.replace(".norm_out.", ".conv_norm_out.")


def diffusers_vae_from_minidiff(config, state_dict=None, dtype=torch.float64):
    """diffusers' AutoencoderKL (Stable Diffusion's VAE) built to ``config`` and loaded with a
    minidiff state dict. diffusers fixes GroupNorm eps at 1e-6 and the logvar clamp at [-30, 20]."""
    from diffusers import AutoencoderKL

    if config.norm_eps != 1e-6 or (config.logvar_min, config.logvar_max) != (-30.0, 20.0):
        raise ValueError(f"diffusers_vae_from_minidiff: needs norm_eps=1e-6 and logvar range (-30, 20); got {config}")
    levels = len(config.channel_mults)
    model = AutoencoderKL(
        in_channels=config.in_channels, out_channels=config.in_channels,
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(config.base_channels * m for m in config.channel_mults),
        layers_per_block=config.num_res_blocks, act_fn="silu", latent_channels=config.latent_channels,
        norm_num_groups=config.norm_groups, sample_size=config.image_size,
        mid_block_add_attention=config.mid_attention,
    ).to(dtype).eval()
    if state_dict is not None:
        load_minidiff_state(model, state_dict, rename=diffusers_vae_name)
    return model
