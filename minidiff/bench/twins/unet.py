"""The U-Net twin: minidiff.models.unet.UNet written in PyTorch with the same parameter names, and
diffusers' UNet2DConditionModel built to the same config (the reference most practitioners use).

The building blocks here (timestep embedding, ResBlock, attention, transformer block, up/down
sampling) are reused by the text-encoder and VAE twins."""
from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as TF
from torch import nn

from ...models.unet import UNetConfig
from .common import load_minidiff_state


def timestep_sinusoid(t, dim, max_period=10000.0):
    """[cos(t w_i), sin(t w_i)], w_i = max_period^(-i / half): diffusers' get_timestep_embedding
    with flip_sin_to_cos=True, downscale_freq_shift=0 (zero-padded when dim is odd)."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=t.dtype, device=t.device) / half
    angles = t[:, None] * torch.exp(exponent)[None, :]                    # (B, half)
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    return TF.pad(emb, (0, 1)) if dim % 2 else emb


class TimestepEmbeddingTwin(nn.Module):
    def __init__(self, sinusoid_dim, time_embed_dim):
        super().__init__()
        self.sinusoid_dim = sinusoid_dim
        self.linear_1 = nn.Linear(sinusoid_dim, time_embed_dim)
        self.linear_2 = nn.Linear(time_embed_dim, time_embed_dim)

    def forward(self, t):
        emb = timestep_sinusoid(t, self.sinusoid_dim).to(self.linear_1.weight.dtype)
        return self.linear_2(TF.silu(self.linear_1(emb)))


class ResBlockTwin(nn.Module):
    def __init__(self, c_in, c_out, config: UNetConfig):
        super().__init__()
        self.norm1 = nn.GroupNorm(config.groups_for(c_in), c_in, eps=1e-5)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.time_emb_proj = nn.Linear(config.time_embed_dim, c_out)
        self.norm2 = nn.GroupNorm(config.groups_for(c_out), c_out, eps=1e-5)
        self.dropout = nn.Dropout(config.dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x, temb):
        h = self.conv1(TF.silu(self.norm1(x)))
        h = h + self.time_emb_proj(TF.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(TF.silu(self.norm2(h))))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class AttentionTwin(nn.Module):
    def __init__(self, dim, heads, context_dim=None):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim or dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim or dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x, context=None, mask=None):
        c = x if context is None else context
        B, L, D = x.shape

        def split(t):                                                     # (B, N, D) -> (B, heads, N, d)
            return t.reshape(B, t.shape[1], self.heads, D // self.heads).transpose(1, 2)
        o = TF.scaled_dot_product_attention(split(self.to_q(x)), split(self.to_k(c)), split(self.to_v(c)),
                                            attn_mask=mask)
        return self.to_out(o.transpose(1, 2).reshape(B, L, D))


class FeedForwardTwin(nn.Module):
    def __init__(self, dim, mult, kind):
        super().__init__()
        self.inner, self.gated = mult * dim, kind == "geglu"
        self.proj = nn.Linear(dim, (2 if self.gated else 1) * self.inner)
        self.out = nn.Linear(self.inner, dim)

    def forward(self, x):
        h = self.proj(x)
        if self.gated:
            a, gate = h.chunk(2, dim=-1)
            return self.out(a * TF.gelu(gate))
        return self.out(TF.gelu(h))


class TransformerBlockTwin(nn.Module):
    def __init__(self, channels, config: UNetConfig):
        super().__init__()
        heads = config.heads_for(channels)
        self.norm = nn.GroupNorm(config.groups_for(channels), channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, channels)
        self.norm1 = nn.LayerNorm(channels)
        self.attn1 = AttentionTwin(channels, heads)
        if config.context_dim is not None:
            self.norm2 = nn.LayerNorm(channels)
            self.attn2 = AttentionTwin(channels, heads, config.context_dim)
        else:
            self.norm2 = self.attn2 = None
        self.norm3 = nn.LayerNorm(channels)
        self.ff = FeedForwardTwin(channels, config.ff_mult, config.feed_forward)
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, x, context=None, mask=None):
        B, C, H, W = x.shape
        h = self.proj_in(self.norm(x).reshape(B, C, H * W).transpose(1, 2))
        h = h + self.attn1(self.norm1(h))
        if context is not None:
            h = h + self.attn2(self.norm2(h), context, mask)
        h = h + self.ff(self.norm3(h))
        return x + self.proj_out(h).transpose(1, 2).reshape(B, C, H, W)


class DownsampleTwin(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


class UpsampleTwin(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(TF.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNetTwin(nn.Module):
    """minidiff.models.unet.UNet in PyTorch; same parameter names; forward(x, t, context, context_mask)."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = cfg = config
        levels, ch = len(cfg.channel_mults), cfg.channels
        self.time_embedding = TimestepEmbeddingTwin(cfg.base_channels, cfg.time_embed_dim)
        self.conv_in = nn.Conv2d(cfg.in_channels, ch(0), 3, padding=1)
        skip_channels = [ch(0)]
        self.down_blocks = nn.ModuleList()
        for level in range(levels):
            c_in, last = ch(max(level - 1, 0)), level == levels - 1
            block = nn.Module()
            block.resnets = nn.ModuleList(ResBlockTwin(c_in if j == 0 else ch(level), ch(level), cfg)
                                          for j in range(cfg.num_res_blocks))
            attention = level in cfg.attention_levels
            block.attentions = nn.ModuleList(TransformerBlockTwin(ch(level), cfg)
                                             for _ in range(cfg.num_res_blocks) if attention)
            block.downsample = None if last else DownsampleTwin(ch(level))
            skip_channels += [ch(level)] * (cfg.num_res_blocks + (0 if last else 1))
            self.down_blocks.append(block)
        self.mid_block = nn.Module()
        self.mid_block.resnets = nn.ModuleList(ResBlockTwin(ch(levels - 1), ch(levels - 1), cfg) for _ in range(2))
        self.mid_block.attentions = nn.ModuleList(TransformerBlockTwin(ch(levels - 1), cfg)
                                                  for _ in range(1) if cfg.mid_attention)
        self.up_blocks = nn.ModuleList()
        c_in = ch(levels - 1)
        for level in reversed(range(levels)):
            block = nn.Module()
            popped = [skip_channels.pop() for _ in range(cfg.num_res_blocks + 1)]
            block.resnets = nn.ModuleList(ResBlockTwin((c_in if j == 0 else ch(level)) + c_skip, ch(level), cfg)
                                          for j, c_skip in enumerate(popped))
            block.attentions = nn.ModuleList(TransformerBlockTwin(ch(level), cfg) for _ in popped
                                             if level in cfg.attention_levels)
            block.upsample = UpsampleTwin(ch(level)) if level != 0 else None
            self.up_blocks.append(block)
            c_in = ch(level)
        self.conv_norm_out = nn.GroupNorm(cfg.groups_for(ch(0)), ch(0), eps=1e-5)
        self.conv_out = nn.Conv2d(ch(0), cfg.out_channels, 3, padding=1)

    @staticmethod
    def _stage(block, j, h, temb, context, mask):
        h = block.resnets[j](h, temb)
        return block.attentions[j](h, context, mask) if len(block.attentions) else h

    def forward(self, x, t, context=None, context_mask=None):
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        mask = None if context_mask is None else context_mask.bool()[:, None, None, :]
        temb = self.time_embedding(t)
        h = self.conv_in(x)
        skips = [h]
        for block in self.down_blocks:
            for j in range(len(block.resnets)):
                h = self._stage(block, j, h, temb, context, mask)
                skips.append(h)
            if block.downsample is not None:
                h = block.downsample(h)
                skips.append(h)
        h = self.mid_block.resnets[0](h, temb)
        if len(self.mid_block.attentions):
            h = self.mid_block.attentions[0](h, context, mask)
        h = self.mid_block.resnets[1](h, temb)
        for block in self.up_blocks:
            for j in range(len(block.resnets)):
                h = self._stage(block, j, torch.cat([h, skips.pop()], dim=1), temb, context, mask)
            if block.upsample is not None:
                h = block.upsample(h)
        return self.conv_out(TF.silu(self.conv_norm_out(h)))


def make_unet_twin(config: UNetConfig, state_dict=None, dtype=torch.float64, device="cpu"):
    """A UNetTwin in ``dtype`` on ``device`` (float32 on "cuda" for benchmarks), loaded with
    ``state_dict`` (a minidiff ``UNet.state_dict()``) when given."""
    twin = UNetTwin(config).to(device=device, dtype=dtype)
    if state_dict is not None:
        load_minidiff_state(twin, state_dict)
    return twin


def diffusers_unet_name(name):
    """minidiff U-Net parameter name -> diffusers UNet2DConditionModel name."""
    name = re.sub(r"\.downsample\.conv\.", ".downsamplers.0.conv.", name)
    name = re.sub(r"\.upsample\.conv\.", ".upsamplers.0.conv.", name)
    name = re.sub(r"(\.attentions\.\d+\.)(norm[123]|attn[12]|ff)\.", r"\1transformer_blocks.0.\2.", name)
    name = re.sub(r"(attn[12])\.to_out\.", r"\1.to_out.0.", name)
    name = re.sub(r"\.ff\.proj\.", ".ff.net.0.proj.", name)
    return re.sub(r"\.ff\.out\.", ".ff.net.2.", name)


def diffusers_unet_from_minidiff(config: UNetConfig, state_dict=None, dtype=torch.float64):
    """diffusers' UNet2DConditionModel (Stable Diffusion's U-Net) built to ``config`` and loaded
    with a minidiff state dict. Needs a cross-attention config (context_dim set), GEGLU with
    ff_mult 4, one norm_groups dividing every width, and num_heads (not head_dim): the settings
    diffusers exposes. Call it with a context: diffusers turns a missing one into self-attention."""
    from diffusers import UNet2DConditionModel

    if config.context_dim is None or config.feed_forward != "geglu" or config.ff_mult != 4 or config.head_dim:
        raise ValueError("diffusers_unet_from_minidiff: needs context_dim, feed_forward='geglu', ff_mult=4, "
                         f"head_dim=None; got {config}")
    levels = range(len(config.channel_mults))
    attention = [level in config.attention_levels for level in levels]
    model = UNet2DConditionModel(
        sample_size=config.image_size, in_channels=config.in_channels, out_channels=config.out_channels,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        mid_block_type="UNetMidBlock2DCrossAttn",
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
        block_out_channels=tuple(config.channels(level) for level in levels),
        layers_per_block=config.num_res_blocks, norm_num_groups=config.norm_groups,
        cross_attention_dim=config.context_dim, attention_head_dim=config.num_heads,   # (diffusers: = heads)
        use_linear_projection=True, time_embedding_dim=config.time_embed_dim,
        flip_sin_to_cos=True, freq_shift=0, norm_eps=1e-5, dropout=config.dropout,
    ).to(dtype).eval()
    if state_dict is not None:
        load_minidiff_state(model, state_dict, rename=diffusers_unet_name)
    return model
