"""The building blocks the U-Net, the VAE and the text encoder are made of: one definition each.

    TimestepEmbedding   temb = Linear(SiLU(Linear(sinusoid(t)))): the U-Net's clock, fed to every ResBlock
    ResBlock            h = conv(SiLU(GN(x))) [+ proj(SiLU(temb))];  y = skip(x) + conv(SiLU(GN(h)))
    Downsample          a stride-2 3x3 conv (symmetric padding, or Stable Diffusion's VAE asymmetric pad)
    Upsample            nearest 2x, then a 3x3 conv
    FeedForward         per-token MLP: out(GELU(proj(x))), or the gated out(a * GELU(g)), [a, g] = proj(x)
    TransformerBlock    pre-LN over tokens: self-attention [, cross-attention], feed-forward, each residual
    SpatialTransformer  a TransformerBlock over the H*W pixels of a feature map (the U-Net's)
    AttnBlock           GroupNorm + single-head self-attention over the pixels (the VAE's)

The differences between the models are parameters, not copies: a ResBlock hears the timestep only
when built with ``time_embed_dim`` (the U-Net's; the VAE's has none); a TransformerBlock has
cross-attention only with ``context_dim``, its self-attention mask is whatever the caller passes
(causal in the text encoder, none in the U-Net), and its feed-forward is GELU or GEGLU.

Why the names are parameters too
--------------------------------
Each model names its layers as the reference implementation it reproduces, so a reader can hold the
two side by side and the shipped checkpoints' keys read the same: the U-Net's transformer follows
diffusers (``norm1, attn1, norm2, attn2, norm3, ff.proj, ff.out``), the text encoder's follows CLIP
(``layer_norm1, self_attn, layer_norm2, mlp.fc1, mlp.fc2``). A parameter's name is the attribute
that holds its layer, so a ``TransformerBlock`` is told which attribute names to use
(``DIFFUSERS_NAMES`` or ``CLIP_NAMES``) and reaches its layers through role properties
(``self_norm``, ``self_attention``, ...) whatever the names are.

Every composite here writes its backward by hand, mirroring forward in reverse; each module
instance runs once per forward pass (one cache each).

Read beside: ``minidiff/nn/layers.py`` (the layers) and ``minidiff/nn/functional.py`` (their derivatives).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..backend import get_array_module
from ..nn import functional as F
from ..nn.layers import Conv2d, Dropout, GELU, GroupNorm, LayerNorm, Linear, MultiHeadAttention, SiLU, Upsample2x
from ..nn.layers import _CachingModule   # _keep(cache) stores only while caching; _take_cache() hands it back
from ..nn.module import Module

__all__ = ["TimestepEmbedding", "ResBlock", "Downsample", "Upsample", "FeedForward", "LayerNames", "DIFFUSERS_NAMES", "CLIP_NAMES",
           "TransformerBlock", "SpatialTransformer", "AttnBlock", "groups_for", "zero_init", "to_tokens",
           "to_image"]


# -- small helpers -------------------------------------------------------------------------------
def groups_for(channels: int, norm_groups: int) -> int:
    """GroupNorm groups: the largest divisor of ``channels`` that is at most ``norm_groups``."""
    groups = min(norm_groups, channels)
    while channels % groups:
        groups -= 1
    return groups


def zero_init(layer):
    """Start a residual branch's last layer at zero, so its block begins as the identity
    (Stable Diffusion's zero_module); training then grows the branch from nothing."""
    layer.weight.data[...] = 0
    if layer.bias is not None:
        layer.bias.data[...] = 0


def to_tokens(x):
    """(B, C, H, W) -> (B, H*W, C): every pixel becomes a token."""
    B, C, H, W = x.shape
    return x.reshape(B, C, H * W).transpose(0, 2, 1)


def to_image(tokens, shape):
    """(B, H*W, C) -> (B, C, H, W), the inverse of ``to_tokens`` (``shape`` = (B, C, H, W))."""
    return tokens.transpose(0, 2, 1).reshape(shape)


# -- the time embedding --------------------------------------------------------------------------
class TimestepEmbedding(Module):
    """temb = Linear_2(SiLU(Linear_1(sinusoid(t))))        t (B,) -> (B, time_embed_dim)

    sinusoid(t)_i = cos(t w_i) for i < C/2, sin(t w_{i-C/2}) after, w_i = 10000^(-i / (C/2)).
    t is an input, not a parameter, so backward returns nothing: it only fills the Linears' grads."""

    def __init__(self, sinusoid_dim, time_embed_dim, rng=None):
        self.sinusoid_dim = sinusoid_dim
        self.linear_1 = Linear(sinusoid_dim, time_embed_dim, rng=rng)
        self.act = SiLU()
        self.linear_2 = Linear(time_embed_dim, time_embed_dim, rng=rng)

    def forward(self, t):
        emb = F.sinusoidal_embedding(t, self.sinusoid_dim, dtype=self.linear_1.weight.data.dtype)  # (B, C)
        return self.linear_2(self.act(self.linear_1(emb)))               # (B, temb)

    def backward(self, dtemb):
        self.linear_1.backward(self.act.backward(self.linear_2.backward(dtemb)))
        return None


# -- the residual block --------------------------------------------------------------------------
class ResBlock(Module):
    """A residual block, optionally told the timestep (the U-Net's is, the VAE's is not):

        h = conv1(SiLU(norm1(x)))                                  (B, C_out, H, W)
        h = h + time_emb_proj(SiLU(temb))[:, :, None, None]        only with time_embed_dim
        h = conv2(dropout(SiLU(norm2(h))))                         zero_init: conv2 starts at zero
        y = skip(x) + h                                            skip: identity or 1x1 conv

    Each norm applies its SiLU itself (``GroupNorm(..., activation="silu")``, one op); groups are
    ``groups_for(channels, norm_groups)``. forward(x[, temb]) -> y; backward(dy) -> dx, or
    (dx, dtemb) for a block with a time embedding: one gradient per input of forward."""

    def __init__(self, in_channels, out_channels, norm_groups=32, *, eps=1e-5, time_embed_dim=None, dropout=0.0,
                 zero_init_out=False, rng=None):
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = GroupNorm(groups_for(in_channels, norm_groups), in_channels, eps=eps, activation="silu")
        self.conv1 = Conv2d(in_channels, out_channels, 3, padding=1, rng=rng)
        if time_embed_dim is not None:
            self.time_act = SiLU()
            self.time_emb_proj = Linear(time_embed_dim, out_channels, rng=rng)
        else:
            self.time_act = self.time_emb_proj = None
        self.norm2 = GroupNorm(groups_for(out_channels, norm_groups), out_channels, eps=eps, activation="silu")
        self.dropout = Dropout(dropout, rng=rng)                    # the identity at p = 0
        self.conv2 = Conv2d(out_channels, out_channels, 3, padding=1, rng=rng)
        if zero_init_out:
            zero_init(self.conv2)
        self.conv_shortcut = Conv2d(in_channels, out_channels, 1, rng=rng) if in_channels != out_channels else None

    def forward(self, x, temb=None):
        if (temb is None) != (self.time_emb_proj is None):
            raise ValueError("ResBlock: pass temb exactly when the block was built with time_embed_dim")
        h = self.conv1(self.norm1(x))                                         # (B, C_out, H, W)
        if temb is not None:
            h = h + self.time_emb_proj(self.time_act(temb))[:, :, None, None]  # + (B, C_out, 1, 1)
        h = self.conv2(self.dropout(self.norm2(h)))                           # (B, C_out, H, W)
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return skip + h

    def backward(self, dy):
        # y = skip + h: the same gradient flows into both branches
        dskip, dh = dy, dy
        dh = self.norm2.backward(self.dropout.backward(self.conv2.backward(dh)))
        dtemb = None
        if self.time_emb_proj is not None:
            # h = conv1(...) + proj(temb)[:, :, None, None]: broadcasting over H, W becomes a sum over H, W
            dtemb = self.time_act.backward(self.time_emb_proj.backward(dh.sum(axis=(2, 3))))  # (B, temb)
        dx = self.norm1.backward(self.conv1.backward(dh))
        # the skip connection's gradient rejoins the main path
        dx = dx + (dskip if self.conv_shortcut is None else self.conv_shortcut.backward(dskip))
        return dx if self.time_emb_proj is None else (dx, dtemb)


# -- resolution changes --------------------------------------------------------------------------
class Downsample(Module):
    """Halve H and W with a stride-2 3x3 convolution: (B, C, H, W) -> (B, C, H/2, W/2).

    The U-Net pads one pixel on every side (the conv's own padding); Stable Diffusion's VAE pads
    one zero row at the bottom and one zero column at the right only (``asymmetric=True``)."""

    def __init__(self, channels, asymmetric=False, rng=None):
        self.asymmetric = asymmetric
        self.conv = Conv2d(channels, channels, 3, stride=2, padding=0 if asymmetric else 1, rng=rng)

    def forward(self, x):
        if self.asymmetric:
            x = get_array_module(x).pad(x, ((0, 0), (0, 0), (0, 1), (0, 1)))   # (B, C, H+1, W+1)
        return self.conv(x)                                                  # (B, C, H/2, W/2)

    def backward(self, dy):
        dx = self.conv.backward(dy)
        # forward was: x = pad(x): the padding's gradient is dropped
        return dx[:, :, :-1, :-1] if self.asymmetric else dx


class Upsample(Module):
    """Double H and W: nearest-neighbour 2x, then a 3x3 convolution: (B, C, H, W) -> (B, C, 2H, 2W)."""

    def __init__(self, channels, rng=None):
        self.upsample = Upsample2x()
        self.conv = Conv2d(channels, channels, 3, padding=1, rng=rng)

    def forward(self, x):
        return self.conv(self.upsample(x))

    def backward(self, dy):
        return self.upsample.backward(self.conv.backward(dy))


# -- the feed-forward ----------------------------------------------------------------------------
class FeedForward(_CachingModule):
    """A transformer's per-token MLP, hidden width ``hidden``:

        gated=False (CLIP):               h = proj(x);    y = out(GELU(h))
        gated=True  (Stable Diffusion):   [a, g] = proj(x);   y = out(a * GELU(g))     (GEGLU)

    ``names`` are the attributes of the two Linears: ("proj", "out") as in diffusers, or
    ("fc1", "fc2") as in CLIP. ``approximate``: GELU's "none" (erf) or "tanh"."""

    def __init__(self, dim, hidden, gated=False, approximate="none", names=("proj", "out"), rng=None):
        self.gated = gated
        self.names = tuple(names)
        setattr(self, self.names[0], Linear(dim, 2 * hidden if gated else hidden, rng=rng))
        self.act = GELU(approximate)
        setattr(self, self.names[1], Linear(hidden, dim, rng=rng))

    @property
    def linear_in(self):
        return getattr(self, self.names[0])

    @property
    def linear_out(self):
        return getattr(self, self.names[1])

    def forward(self, x):
        h = self.linear_in(x)                               # (B, L, 2 hidden) or (B, L, hidden)
        if not self.gated:
            return self.linear_out(self.act(h))
        y, cache = F.geglu(h)                               # [a, gate] = h;  a * GELU(gate): (B, L, hidden)
        self._keep(cache)
        return self.linear_out(y)                           # (B, L, dim)

    def backward(self, dy):
        dh = self.linear_out.backward(dy)                   # (B, L, hidden)
        if not self.gated:
            return self.linear_in.backward(self.act.backward(dh))
        # forward was: a * GELU(gate), with [a, gate] = h = proj(x)
        return self.linear_in.backward(F.geglu_backward(dh, self._take_cache()))


# -- the transformer block -----------------------------------------------------------------------
@dataclass(frozen=True)
class LayerNames:
    """The attribute (and so parameter-name) of each layer of a TransformerBlock."""
    self_norm: str
    self_attention: str
    cross_norm: str | None           # None: this model never has cross-attention
    cross_attention: str | None
    ff_norm: str
    feed_forward: str
    ff_in: str
    ff_out: str


DIFFUSERS_NAMES = LayerNames("norm1", "attn1", "norm2", "attn2", "norm3", "ff", "proj", "out")
CLIP_NAMES = LayerNames("layer_norm1", "self_attn", None, None, "layer_norm2", "mlp", "fc1", "fc2")


def _role(role):
    """A read-only property: the layer stored under ``self.names.<role>`` (None if the block has none)."""
    def get(self):
        name = getattr(self.names, role)
        return None if name is None else getattr(self, name)
    return property(get, doc=f"the layer in the {role} role")


class TransformerBlock(_CachingModule):
    """One pre-LN transformer block over tokens x (B, L, dim):

        h = x + SelfAttn(LN_1(x), mask)                  mask: e.g. causal & padding (text encoder)
        h = h + CrossAttn(LN_2(h), context, context_mask)  only with context_dim and a context given
        y = h + FF(LN_3(h))                               FF: GELU (CLIP) or GEGLU (Stable Diffusion)

    Normalising each sub-layer's *input* leaves a clean identity path through every block, so
    gradients reach the early layers unscaled. backward(dy) -> (dx, dcontext); dcontext is None
    when forward had no context."""

    self_norm = _role("self_norm")
    self_attention = _role("self_attention")
    cross_norm = _role("cross_norm")
    cross_attention = _role("cross_attention")
    ff_norm = _role("ff_norm")
    feed_forward = _role("feed_forward")

    def __init__(self, dim, num_heads, ff_hidden, *, context_dim=None, gated_ff=False, gelu_approximate="none",
                 eps=1e-5, attention_bias=False, names=DIFFUSERS_NAMES, rng=None):
        self.names = names
        setattr(self, names.self_norm, LayerNorm(dim, eps=eps))
        setattr(self, names.self_attention, MultiHeadAttention(dim, num_heads, bias=attention_bias, rng=rng))
        if names.cross_attention is not None:
            cross = context_dim is not None
            setattr(self, names.cross_norm, LayerNorm(dim, eps=eps) if cross else None)
            setattr(self, names.cross_attention, MultiHeadAttention(dim, num_heads, context_dim=context_dim,
                                                                    bias=attention_bias, rng=rng) if cross else None)
        elif context_dim is not None:
            raise ValueError("TransformerBlock: these layer names have no cross-attention; context_dim must be None")
        setattr(self, names.ff_norm, LayerNorm(dim, eps=eps))
        setattr(self, names.feed_forward, FeedForward(dim, ff_hidden, gated_ff, gelu_approximate,
                                                      names=(names.ff_in, names.ff_out), rng=rng))

    def forward(self, x, mask=None, context=None, context_mask=None):
        if context is not None and self.cross_attention is None:
            raise ValueError("TransformerBlock: a context was given but this block has no cross-attention "
                             "(built with context_dim=None)")
        # h = x + SelfAttn(LN_1(x))                                       tokens attend to tokens
        h = x + self.self_attention(self.self_norm(x), mask=mask)
        if context is not None:
            # h = h + CrossAttn(LN_2(h), context)                          tokens attend to the S context tokens
            h = h + self.cross_attention(self.cross_norm(h), context, context_mask)
        self._keep(context is not None)
        # y = h + FF(LN_3(h))                                             (B, L, dim)
        return h + self.feed_forward(self.ff_norm(h))

    def backward(self, dy):
        used_context = self._take_cache()
        # forward was: y = h + FF(LN_3(h)): the residual passes dy on, the branch adds its own part
        dh = dy + self.ff_norm.backward(self.feed_forward.backward(dy))
        dcontext = None
        if used_context:
            # forward was: h = h + CrossAttn(LN_2(h), context)
            dq_in, dcontext = self.cross_attention.backward(dh)         # dcontext: (B, S, context_dim)
            dh = dh + self.cross_norm.backward(dq_in)
        # forward was: h = x + SelfAttn(LN_1(x)) (self-attention: its dx holds the q, k and v paths)
        d_attn_in, _ = self.self_attention.backward(dh)
        return dh + self.self_norm.backward(d_attn_in), dcontext


class SpatialTransformer(TransformerBlock):
    """A TransformerBlock over the H*W positions of a feature map (diffusers' Transformer2DModel
    with use_linear_projection, holding one BasicTransformerBlock; its layers sit beside the
    block's own, under the same names as there):

        x (B, C, H, W)
        h = proj_in(tokens(norm(x)))                 tokens: (B, C, H, W) -> (B, HW, C)
        h = TransformerBlock(h, context, mask)       pixels attend to pixels, then to the prompt's tokens
        y = x + image(proj_out(h))                   image: (B, HW, C) -> (B, C, H, W); proj_out starts at 0

    forward(x, context=None, mask=None): mask (B, 1, 1, S) bool hides padded context tokens.
    backward(dy) -> (dx, dcontext); dcontext is None when no context was used."""

    def __init__(self, channels, num_heads, norm_groups=32, *, context_dim=None, ff_mult=4, feed_forward="geglu",
                 rng=None):
        self.norm = GroupNorm(groups_for(channels, norm_groups), channels, eps=1e-6)
        self.proj_in = Linear(channels, channels, rng=rng)
        super().__init__(channels, num_heads, ff_mult * channels, context_dim=context_dim,
                         gated_ff=feed_forward == "geglu", rng=rng)
        self.proj_out = Linear(channels, channels, rng=rng)
        zero_init(self.proj_out)

    def forward(self, x, context=None, mask=None):
        h = self.proj_in(to_tokens(self.norm(x)))                       # (B, HW, C): one token per pixel
        h = super().forward(h, context=context, context_mask=mask)      # (B, HW, C)
        return x + to_image(self.proj_out(h), x.shape)

    def backward(self, dy):
        # forward was: y = x + image(proj_out(h)): dy reaches x unchanged, and h through the reshape undone
        dh = self.proj_out.backward(to_tokens(dy))                      # (B, HW, C)
        dh, dcontext = super().backward(dh)
        dh = self.proj_in.backward(dh)                                  # (B, HW, C)
        return dy + self.norm.backward(to_image(dh, dy.shape)), dcontext


# -- the VAE's attention -------------------------------------------------------------------------
class AttnBlock(Module):
    """Single-head self-attention over the H*W positions, with a residual connection:

        h = GroupNorm(x);  tokens = h as (B, H*W, C)
        y = x + to_out(softmax(q k^T / sqrt(C)) v),   q, k, v = linear maps of the tokens
    """

    def __init__(self, channels, norm_groups, norm_eps, rng=None):
        self.group_norm = GroupNorm(norm_groups, channels, eps=norm_eps)
        self.attn = MultiHeadAttention(channels, num_heads=1, bias=True, rng=rng)

    def forward(self, x):
        out = self.attn(to_tokens(self.group_norm(x)))                  # (B, H*W, C)
        return x + to_image(out, x.shape)

    def backward(self, dy):
        dtokens, _ = self.attn.backward(to_tokens(dy))                  # self-attention: q, k, v paths summed
        # y = x + attention(GroupNorm(x)): the residual gradient rejoins here
        return dy + self.group_norm.backward(to_image(dtokens, dy.shape))


if __name__ == "__main__":      # python -m minidiff.models.blocks
    import numpy as np

    x = np.random.default_rng(0).standard_normal((2, 8, 4, 4)).astype(np.float32)
    temb = np.zeros((2, 16), np.float32)
    print("ResBlock 8 -> 16 with a time embedding:", tuple(ResBlock(8, 16, 4, time_embed_dim=16)(x, temb).shape))
    print("Downsample (VAE padding):", tuple(Downsample(8, asymmetric=True)(x).shape),
          " Upsample:", tuple(Upsample(8)(x).shape))
    for label, block in (("U-Net (diffusers names)", TransformerBlock(8, 2, 32, context_dim=6, gated_ff=True)),
                         ("text encoder (CLIP names)", TransformerBlock(8, 2, 32, attention_bias=True,
                                                                        names=CLIP_NAMES))):
        names = sorted({name.rsplit(".", 1)[0] for name, _ in block.named_parameters()})
        print(f"TransformerBlock, {label}: {block.num_parameters()} parameters in {names}")
