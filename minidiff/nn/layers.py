"""Layers: thin ``Module`` wrappers around the functional (forward, backward) pairs.

Each layer owns its ``Parameter``s, calls one pair from ``functional.py`` and keeps the pair's
cache only while ``self.caching`` (training mode with gradients enabled):

    y = layer.forward(x)          # y, cache = F.op(x, W, ...);  cache kept only when caching
    dx = layer.backward(dy)       # dx, dW, ... = F.op_backward(dy, cache);  W.grad += dW

Constructor arguments mirror PyTorch (``nn.Linear(in_features, out_features)`` ...), weights are
laid out as in PyTorch, and initialisation follows PyTorch's defaults, so a learner can compare
numbers with a PyTorch twin. Parameters start as float32 NumPy arrays on the host; call
``model.to("gpu")`` to move them. ``rng`` is a ``numpy.random.Generator`` used for the
initialisation only (``None``: a fresh ``np.random.default_rng()``).

Read beside: ``minidiff/nn/ops/`` (the math of each op and its derivative, gathered in
``minidiff/nn/functional.py``) and ``minidiff/nn/module.py`` (parameter discovery, state dicts,
train/eval).
"""
from __future__ import annotations

import math

import numpy as np

from .. import backend
from ..checks import positive_int
from . import functional as F
from .module import Module, Parameter

__all__ = ["Linear", "Conv2d", "GroupNorm", "LayerNorm", "SiLU", "GELU", "Dropout",
           "Upsample2x", "AvgPool2d", "Embedding", "MultiHeadAttention"]


# -- helpers shared by the layers ----------------------------------------------------------------
def _generator(rng):
    return np.random.default_rng() if rng is None else rng


def _uniform(rng, bound, shape):
    """U(-bound, bound) as float32: PyTorch's default init for weights and biases, with
    bound = 1 / sqrt(fan_in) (kaiming_uniform with a = sqrt(5) works out to exactly this)."""
    return rng.uniform(-bound, bound, size=shape).astype(np.float32)


class _CachingModule(Module):
    """Stores the functional cache only while ``self.caching``; ``_take_cache`` hands it to backward."""

    _cache = None

    def _keep(self, cache):
        self._cache = cache if self.caching else None

    def _take_cache(self):
        if self._cache is None:
            raise RuntimeError(
                f"{type(self).__name__}.backward called without a cached forward pass: run forward "
                "in training mode with gradients enabled (not after .eval() or inside no_grad())")
        cache, self._cache = self._cache, None
        return cache


# -- affine layers -------------------------------------------------------------------------------
class Linear(_CachingModule):
    """y = x W^T + b,  W: (out_features, in_features),  b: (out_features,)

    Works on any leading shape: x (..., in_features) -> y (..., out_features)."""

    def __init__(self, in_features, out_features, bias=True, rng=None):
        self.in_features = positive_int("Linear", "in_features", in_features)
        self.out_features = positive_int("Linear", "out_features", out_features)
        rng = _generator(rng)
        bound = 1.0 / math.sqrt(self.in_features)
        self.weight = Parameter(_uniform(rng, bound, (self.out_features, self.in_features)))
        self.bias = Parameter(_uniform(rng, bound, (self.out_features,))) if bias else None

    def forward(self, x):
        bias = None if self.bias is None else self.bias.data
        y, cache = F.linear(x, self.weight.data, bias)            # (..., in) -> (..., out)
        self._keep(cache)
        return y

    def backward(self, dy):
        dx, dw, db = F.linear_backward(dy, self._take_cache())
        self.weight.accumulate(dw)                                # dL/dW = dy^T x
        if self.bias is not None:
            self.bias.accumulate(db)                              # dL/db = sum_n dy_n
        return dx                                                 # dL/dx = dy W


class Conv2d(_CachingModule):
    """2-D convolution, NCHW.  W: (C_out, C_in, k, k),  b: (C_out,)

    H_out = floor((H + 2 padding - k) / stride) + 1  (same for W)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True, rng=None):
        self.in_channels = positive_int("Conv2d", "in_channels", in_channels)
        self.out_channels = positive_int("Conv2d", "out_channels", out_channels)
        self.kernel_size = positive_int("Conv2d", "kernel_size", kernel_size)
        self.stride = positive_int("Conv2d", "stride", stride)
        if isinstance(padding, bool) or not isinstance(padding, (int, np.integer)) or padding < 0:
            raise ValueError(f"Conv2d: padding must be a non-negative integer, got {padding!r}")
        self.padding = int(padding)
        rng = _generator(rng)
        fan_in = self.in_channels * self.kernel_size * self.kernel_size
        bound = 1.0 / math.sqrt(fan_in)
        k = self.kernel_size
        self.weight = Parameter(_uniform(rng, bound, (self.out_channels, self.in_channels, k, k)))
        self.bias = Parameter(_uniform(rng, bound, (self.out_channels,))) if bias else None

    def forward(self, x):
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"Conv2d: expected input (B, {self.in_channels}, H, W), got shape {tuple(x.shape)}")
        bias = None if self.bias is None else self.bias.data
        y, cache = F.conv2d(x, self.weight.data, bias, stride=self.stride, padding=self.padding)
        self._keep(cache)
        return y                                                  # (B, C_out, H_out, W_out)

    def backward(self, dy):
        dx, dw, db = F.conv2d_backward(dy, self._take_cache())
        self.weight.accumulate(dw)
        if self.bias is not None:
            self.bias.accumulate(db)
        return dx                                                 # (B, C_in, H, W)


# -- normalisation -------------------------------------------------------------------------------
class GroupNorm(_CachingModule):
    """y = gamma * (x - mean_g) / sqrt(var_g + eps) + beta, statistics per sample and group of
    C / num_groups channels (over those channels and all of H, W).  gamma, beta: (C,).

    ``activation="silu"`` applies SiLU to y as part of the same op (``F.group_norm_silu``): the
    norm-then-SiLU pair that opens every ResBlock branch, one kernel launch on a GPU instead of two
    ops. The parameters, and so the state dict, are the same either way."""

    def __init__(self, num_groups, num_channels, eps=1e-5, activation=None):
        self.num_groups = positive_int("GroupNorm", "num_groups", num_groups)
        self.num_channels = positive_int("GroupNorm", "num_channels", num_channels)
        if self.num_channels % self.num_groups:
            raise ValueError(f"GroupNorm: {num_channels} channels do not divide into {num_groups} groups")
        if activation not in (None, "silu"):
            raise ValueError(f"GroupNorm: activation must be None or 'silu', got {activation!r}")
        self.eps = float(eps)
        self.activation = activation
        self.weight = Parameter(np.ones(self.num_channels, np.float32))    # gamma
        self.bias = Parameter(np.zeros(self.num_channels, np.float32))     # beta

    def forward(self, x):
        if x.ndim < 2 or x.shape[1] != self.num_channels:
            raise ValueError(f"GroupNorm: expected input (B, {self.num_channels}, ...), got shape {tuple(x.shape)}")
        op = F.group_norm if self.activation is None else F.group_norm_silu
        y, cache = op(x, self.weight.data, self.bias.data, self.num_groups, eps=self.eps)
        self._keep(cache)
        return y

    def backward(self, dy):
        op_backward = F.group_norm_backward if self.activation is None else F.group_norm_silu_backward
        dx, dgamma, dbeta = op_backward(dy, self._take_cache())
        self.weight.accumulate(dgamma)
        self.bias.accumulate(dbeta)
        return dx


class LayerNorm(_CachingModule):
    """y = gamma * (x - mean) / sqrt(var + eps) + beta over the last axis.  gamma, beta: (dim,)."""

    def __init__(self, dim, eps=1e-5):
        self.dim = positive_int("LayerNorm", "dim", dim)
        self.eps = float(eps)
        self.weight = Parameter(np.ones(self.dim, np.float32))             # gamma
        self.bias = Parameter(np.zeros(self.dim, np.float32))              # beta

    def forward(self, x):
        if x.shape[-1] != self.dim:
            raise ValueError(f"LayerNorm: last axis of the input has size {x.shape[-1]} "
                             f"(shape {tuple(x.shape)}), expected dim={self.dim}")
        y, cache = F.layer_norm(x, self.weight.data, self.bias.data, eps=self.eps)
        self._keep(cache)
        return y

    def backward(self, dy):
        dx, dgamma, dbeta = F.layer_norm_backward(dy, self._take_cache())
        self.weight.accumulate(dgamma)
        self.bias.accumulate(dbeta)
        return dx


# -- parameter-free layers -----------------------------------------------------------------------
class _ParameterFree(_CachingModule):
    """One functional pair and no parameters:  y, cache = op(x, **options);  dx = op_backward(dy, cache)."""

    op = op_backward = None

    def options(self):
        return {}

    def forward(self, x):
        y, cache = self.op(x, **self.options())
        self._keep(cache)
        return y

    def backward(self, dy):
        return self.op_backward(dy, self._take_cache())


class SiLU(_ParameterFree):
    """y = x * sigmoid(x)"""

    op, op_backward = staticmethod(F.silu), staticmethod(F.silu_backward)


class GELU(_ParameterFree):
    """y = x * Phi(x) (exact, erf) or its tanh approximation (``approximate="tanh"``)."""

    op, op_backward = staticmethod(F.gelu), staticmethod(F.gelu_backward)

    def __init__(self, approximate="none"):
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def options(self):
        return {"approximate": self.approximate}


class Upsample2x(_ParameterFree):
    """Nearest-neighbour 2x upsampling: (B, C, H, W) -> (B, C, 2H, 2W)."""

    op, op_backward = staticmethod(F.upsample_nearest2x), staticmethod(F.upsample_nearest2x_backward)


class AvgPool2d(_ParameterFree):
    """Average over non-overlapping k x k windows: (B, C, H, W) -> (B, C, H/k, W/k)."""

    op, op_backward = staticmethod(F.avg_pool2d), staticmethod(F.avg_pool2d_backward)

    def __init__(self, kernel_size=2):
        self.kernel_size = positive_int("AvgPool2d", "kernel_size", kernel_size)

    def options(self):
        return {"kernel_size": self.kernel_size}


class Dropout(_CachingModule):
    """Training: y = x * mask / (1 - p), mask ~ Bernoulli(1 - p); eval: y = x.

    ``rng`` (None: a fresh ``np.random.default_rng()``) draws the masks: a NumPy generator for host
    arrays, and a CuPy one (``backend.rng(seed, "gpu")``, as the training loop sets each step) for
    GPU arrays. A NumPy generator meeting a GPU array seeds a device generator once, so masks are
    always drawn where the data is, never copied from the host inside a training step."""

    def __init__(self, p=0.5, rng=None):
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p!r}")
        self.p = float(p)
        self.rng = _generator(rng)
        self._device_rng = None

    def _rng_for(self, x):
        if backend.is_gpu_array(x) and isinstance(self.rng, np.random.Generator):
            if self._device_rng is None:
                self._device_rng = backend.rng(int(self.rng.integers(2 ** 63)), "gpu")
            return self._device_rng
        return self.rng

    def forward(self, x):
        training = self.training and self.p > 0
        y, mask = F.dropout(x, self.p, self._rng_for(x) if training else None, training)
        self._keep((mask,))                 # mask may be None (p = 0): wrap it so "no cache" stays None
        return y

    def backward(self, dy):
        (mask,) = self._take_cache()
        return F.dropout_backward(dy, mask)


# -- embeddings ----------------------------------------------------------------------------------
class Embedding(_CachingModule):
    """y[b, l] = W[ids[b, l]],  W: (num_embeddings, dim), initialised N(0, 1) as in PyTorch.

    Integer ids have no gradient: ``backward`` adds into W.grad and returns None."""

    def __init__(self, num_embeddings, dim, rng=None):
        self.num_embeddings = positive_int("Embedding", "num_embeddings", num_embeddings)
        self.dim = positive_int("Embedding", "dim", dim)
        rng = _generator(rng)
        self.weight = Parameter(rng.standard_normal((self.num_embeddings, self.dim)).astype(np.float32))

    def forward(self, ids):
        y, cache = F.embedding(ids, self.weight.data)             # (B, L) -> (B, L, dim)
        self._keep(cache)
        return y

    def backward(self, dy):
        self.weight.accumulate(F.embedding_backward(dy, self._take_cache()))  # dW[i] = sum_{ids=i} dy
        return None


# -- attention -----------------------------------------------------------------------------------
class MultiHeadAttention(_CachingModule):
    """Multi-head (self- or cross-) attention, named like diffusers' ``Attention``.

        q = x W_q^T                 x: (B, L, dim)               -> (B, L, dim)
        k = c W_k^T,  v = c W_v^T   c: (B, S, context_dim)       -> (B, S, dim)   (c = x for self-attention)
        split heads                 (B, L, dim) -> (B, heads, L, d),  d = dim / heads
        o = softmax(q k^T / sqrt(d) + mask) v                     -> (B, heads, L, d)
        merge heads                 (B, heads, L, d) -> (B, L, dim)
        y = o W_o^T + b_o                                         -> (B, L, dim)

    ``mask``: bool, broadcastable to (B, heads, L, S), True = may attend.
    Set ``store_attention = True`` on an instance to keep the attention probabilities of the last
    forward pass in ``last_attention_probs`` (B, heads, L, S), in eval mode too (for pictures).
    """

    store_attention = False

    def __init__(self, dim, num_heads, context_dim=None, bias=False, rng=None):
        self.dim = positive_int("MultiHeadAttention", "dim", dim)
        self.num_heads = positive_int("MultiHeadAttention", "num_heads", num_heads)
        if self.dim % self.num_heads:
            raise ValueError(f"MultiHeadAttention: dim={dim} is not divisible by num_heads={num_heads}")
        self.head_dim = self.dim // self.num_heads
        self.context_dim = self.dim if context_dim is None else positive_int(
            "MultiHeadAttention", "context_dim", context_dim)
        rng = _generator(rng)
        self.to_q = Linear(self.dim, self.dim, bias=bias, rng=rng)
        self.to_k = Linear(self.context_dim, self.dim, bias=bias, rng=rng)
        self.to_v = Linear(self.context_dim, self.dim, bias=bias, rng=rng)
        self.to_out = Linear(self.dim, self.dim, bias=True, rng=rng)
        self.last_attention_probs = None

    def _split_heads(self, t):
        """(B, L, heads * d) -> (B, heads, L, d)"""
        B, L, _ = t.shape
        return t.reshape(B, L, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)

    def _merge_heads(self, t):
        """(B, heads, L, d) -> (B, L, heads * d)"""
        B, _, L, _ = t.shape
        return t.transpose(0, 2, 1, 3).reshape(B, L, self.dim)

    def forward(self, x, context=None, mask=None):
        if x.ndim != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"MultiHeadAttention: x must be (B, L, {self.dim}), got shape {tuple(x.shape)}")
        self_attention = context is None
        c = x if self_attention else context
        if c.ndim != 3 or c.shape[0] != x.shape[0] or c.shape[-1] != self.context_dim:
            raise ValueError(f"MultiHeadAttention: context must be ({x.shape[0]}, S, {self.context_dim}), "
                             f"got shape {tuple(c.shape)}")
        q = self._split_heads(self.to_q(x))                       # (B, heads, L, d)
        k = self._split_heads(self.to_k(c))                       # (B, heads, S, d)
        v = self._split_heads(self.to_v(c))                       # (B, heads, S, d)
        o, cache = F.attention(q, k, v, mask)                     # (B, heads, L, d)
        if self.store_attention:
            self.last_attention_probs = F.attention_probs(cache)  # (B, heads, L, S)
        self._keep((cache, self_attention))
        return self.to_out(self._merge_heads(o))                  # (B, L, dim)

    def backward(self, dy):
        """Returns (dx, dcontext); dcontext is None for self-attention, whose dx then holds the
        sum of the three paths x -> q, x -> k and x -> v."""
        cache, self_attention = self._take_cache()
        do = self._split_heads(self.to_out.backward(dy))          # (B, heads, L, d)
        dq, dk, dv = F.attention_backward(do, cache)
        dx = self.to_q.backward(self._merge_heads(dq))            # (B, L, dim)
        # c feeds both k and v, so its gradient is the sum of the two paths
        dc = self.to_k.backward(self._merge_heads(dk)) + self.to_v.backward(self._merge_heads(dv))
        if self_attention:
            return dx + dc, None                                  # c was x
        return dx, dc                                             # (B, L, dim), (B, S, context_dim)
