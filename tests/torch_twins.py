"""PyTorch twins of minidiff's models, for tests and benchmarks (import only where torch exists).

A twin is an independent PyTorch implementation of the same architecture with the same
parameter names, so minidiff's ``state_dict()`` loads into it unchanged. Tests run both in
float64 on the same weights and compare outputs and every gradient; ``minidiff bench`` can build
a float32 twin on CUDA to time against.

    twin = UNetTwin(config).to(torch.float64)
    load_minidiff_state(twin, model.state_dict())
    y = twin(x, t, context)                       # torch autograd supplies the reference gradients
    grads = twin_grads(twin)                      # {minidiff name: numpy gradient}

Organised by model: shared helpers first, then one section per model (U-Net, ...).
"""
from __future__ import annotations

import math
import re

import numpy as np
import torch
import torch.nn.functional as TF
from torch import nn

from minidiff.models.unet import UNetConfig


# == shared helpers ===============================================================================
def load_minidiff_state(twin: nn.Module, state_dict, rename=None):
    """Copy a minidiff ``state_dict()`` ({name: numpy array}) into ``twin``'s parameters, keeping
    each parameter's dtype and device. ``rename(minidiff_name) -> twin_name`` maps names when the
    two differ. Raises ValueError on any missing, unexpected or mis-shaped key."""
    params = dict(twin.named_parameters())
    renamed = {(rename(k) if rename else k): v for k, v in state_dict.items()}
    missing = sorted(set(params) - set(renamed))
    unexpected = sorted(set(renamed) - set(params))
    if missing or unexpected:
        raise ValueError(f"load_minidiff_state: missing {missing[:5]} ({len(missing)}), "
                         f"unexpected {unexpected[:5]} ({len(unexpected)})")
    with torch.no_grad():
        for name, value in renamed.items():
            p = params[name]
            value = torch.as_tensor(np.asarray(value))
            if tuple(value.shape) != tuple(p.shape):
                raise ValueError(f"load_minidiff_state: {name!r} is {tuple(value.shape)} in the state, "
                                 f"{tuple(p.shape)} in the twin")
            p.copy_(value.to(dtype=p.dtype, device=p.device))
    return twin


def twin_grads(twin: nn.Module, rename=None):
    """{name: numpy gradient} of every parameter after ``loss.backward()`` (zeros where untouched)."""
    grads = {}
    for name, p in twin.named_parameters():
        grad = torch.zeros_like(p) if p.grad is None else p.grad
        grads[rename(name) if rename else name] = grad.detach().cpu().numpy()
    return grads


# == U-Net (minidiff/models/unet.py) ==============================================================
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


# == text encoder (minidiff/models/text_encoder.py) ================================================
class TextAttentionTwin(AttentionTwin):
    """Self-attention of the text encoder: like AttentionTwin, but q, k and v have biases (as in CLIP)."""

    def __init__(self, dim, heads):
        super().__init__(dim, heads)
        self.to_q, self.to_k, self.to_v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)


class TextBlockTwin(nn.Module):
    """Pre-LN block: x + Attn(LN_1(x), mask), then + MLP(LN_2(.)) with fc1 -> GELU -> fc2."""

    def __init__(self, config):
        super().__init__()
        width, eps = config.width, config.layer_norm_eps
        self.approximate = config.gelu_approximate
        self.layer_norm1 = nn.LayerNorm(width, eps=eps)
        self.self_attn = TextAttentionTwin(width, config.num_heads)
        self.layer_norm2 = nn.LayerNorm(width, eps=eps)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(width, config.mlp_ratio * width)
        self.mlp.fc2 = nn.Linear(config.mlp_ratio * width, width)

    def forward(self, x, mask):
        h = x + self.self_attn(self.layer_norm1(x), mask=mask)
        return h + self.mlp.fc2(TF.gelu(self.mlp.fc1(self.layer_norm2(h)), approximate=self.approximate))


class TextEncoderTwin(nn.Module):
    """minidiff.models.text_encoder.TextEncoder in PyTorch; same parameter names;
    forward(ids (B, L) int64, mask (B, L) bool) -> (states (B, L, W), pooled (B, W))."""

    def __init__(self, config):
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.position_embedding = nn.Parameter(torch.zeros(config.max_length, config.width))
        self.blocks = nn.ModuleList(TextBlockTwin(config) for _ in range(config.num_layers))
        self.final_layer_norm = nn.LayerNorm(config.width, eps=config.layer_norm_eps)

    def forward(self, ids, mask):
        B, L = ids.shape
        x = self.token_embedding(ids) + self.position_embedding[:L]
        causal = torch.tril(torch.ones(L, L, dtype=torch.bool, device=ids.device))
        attn_mask = causal[None, None] & mask[:, None, None, :]           # (B, 1, L, L), True = attend
        for block in self.blocks:
            x = block(x, attn_mask)
        states = self.final_layer_norm(x)
        end = mask.sum(dim=1) - 1                                         # the last real token: <end>
        return states, states[torch.arange(B, device=ids.device), end]


def make_text_encoder_twin(config, state_dict=None, dtype=torch.float64, device="cpu"):
    """A TextEncoderTwin in ``dtype`` on ``device``, loaded with ``state_dict`` (a minidiff
    ``TextEncoder.state_dict()``) when given."""
    twin = TextEncoderTwin(config).to(device=device, dtype=dtype)
    if state_dict is not None:
        load_minidiff_state(twin, state_dict)
    return twin


# == VAE (minidiff/models/vae.py) =================================================================
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
