"""The activations' fast routes: elementwise chains in cache-sized blocks on every core (host), one
fused kernel each (GPU).

NumPy runs each ufunc on one core over the whole array; GELU is a chain of ~25 of them, so on the
host it would read and write its whole input from main memory ~25 times. blocks.map_rows runs the
whole chain on one cache-sized block of rows at a time, on every core, with the same operations
in the same order (so the same numbers). The chains below also work in place where they can
(``exp(.., out=)``, ``reciprocal(.., out=)``): fewer temporaries per block. SiLU, GELU, GEGLU
and softmax are a sizeable share of a CPU training step.

On a GPU (``backend.use_fused(x)``) each op is one or two kernel launches (kernels.py). Softmax
on the host finds the row maximum with ``nanmax`` (NumPy's faster fmax reduction) and sums rows
as BLAS products (sums.py).
"""
from __future__ import annotations

import math

import numpy as np

from ... import backend
from ...backend import get_array_module
from ..ops import erf
from . import blocks, kernels
from .sums import rowdot, sum_last

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_TANH_C = 0.044715


# -- SiLU ------------------------------------------------------------------------------------------
def silu(x):
    if backend.use_fused(x):
        return kernels.silu(x)
    y, s = blocks.map_rows(_silu, x)
    return y, (x, s)


def _silu(x):
    xp = get_array_module(x)
    s = xp.exp(-xp.maximum(x, -80.0))                         # exp(-x), clipped as in the derivation
    s += 1.0
    xp.reciprocal(s, out=s)                                   # s = 1 / (1 + exp(-x))
    return x * s, s


def silu_backward(dy, cache):
    if backend.use_fused(dy):
        return kernels.silu_backward(dy, cache)
    x, s = cache
    return blocks.map_rows(_silu_grad, dy, x, s)


def _silu_grad(dy, x, s):
    return dy * s * (1.0 + x * (1.0 - s))


# -- the normal CDF and GELU -----------------------------------------------------------------------
def normal_cdf(x):
    """float32 in cache-sized blocks: each of the formula's ~25 passes then reads its block from
    the CPU cache instead of main memory (float64 is computed as in the derivation)."""
    if x.dtype != np.float32:
        return erf.normal_cdf_float64(x)
    return blocks.map_rows(erf.normal_cdf_float32, x)


def gelu(x, approximate):
    if backend.use_fused(x):
        return kernels.gelu(x, approximate)
    y, phi_cdf = blocks.map_rows(_gelu if approximate == "none" else _gelu_tanh, x)
    return y, (x, phi_cdf, approximate)


def _gelu(x):
    phi_cdf = normal_cdf(x)                                   # Phi(x)
    return x * phi_cdf, phi_cdf


def _gelu_tanh(x):
    xp = get_array_module(x)
    phi_cdf = xp.tanh(_SQRT_2_OVER_PI * (x + _GELU_TANH_C * x * x * x))   # tanh(u)
    phi_cdf += 1.0
    phi_cdf *= 0.5                                            # (1 + tanh u) / 2
    return x * phi_cdf, phi_cdf


def gelu_backward(dy, cache):
    if backend.use_fused(dy):
        return kernels.gelu_backward(dy, cache)
    x, phi_cdf, approximate = cache
    return blocks.map_rows(_gelu_grad if approximate == "none" else _gelu_tanh_grad, dy, x, phi_cdf)


def _gelu_grad(dy, x, phi_cdf):
    xp = get_array_module(x)
    density = xp.exp(-0.5 * x * x) * (1.0 / math.sqrt(2.0 * math.pi))     # phi(x)
    return dy * (phi_cdf + x * density)


def _gelu_tanh_grad(dy, x, phi_cdf):
    du_dx = _SQRT_2_OVER_PI * (1.0 + 3.0 * _GELU_TANH_C * x * x)
    return dy * (phi_cdf + x * 2.0 * phi_cdf * (1.0 - phi_cdf) * du_dx)


# -- GEGLU: the whole chain in blocks; the backward writes [da, dgate] into one array ---------------
def geglu(h):
    n = h.shape[-1] // 2
    a, gate = h[..., :n], h[..., n:]                          # (..., n) each
    y, g, phi_cdf = blocks.map_rows(_geglu, a, gate)
    return y, (a, g, gate, phi_cdf)


def _geglu(a, gate):
    g, (_, phi_cdf, _) = gelu(gate, "none")                   # g = GELU(gate) = gate Phi(gate)
    return a * g, g, phi_cdf                                  # y = a * g


def geglu_backward(dy, cache):
    return blocks.map_rows(_geglu_grad, dy, *cache)


def _geglu_grad(dy, a, g, gate, phi_cdf):
    xp = get_array_module(dy)
    n = dy.shape[-1]
    dh = xp.empty(dy.shape[:-1] + (2 * n,), dtype=dy.dtype)
    xp.multiply(dy, g, out=dh[..., :n])                       # da = dy g
    dh[..., n:] = gelu_backward(dy * a, (gate, phi_cdf, "none"))   # dgate
    return dh


# -- softmax ----------------------------------------------------------------------------------------
def softmax_(z, axis):
    """z <- softmax(z) along axis, in place (z is a buffer the caller owns)."""
    if backend.use_fused(z) and axis in (-1, z.ndim - 1):
        return kernels.softmax_(z)
    xp = get_array_module(z)
    m = xp.nanmax(z, axis=axis, keepdims=True)
    m = xp.where(m == -xp.inf, 0.0, m).astype(z.dtype, copy=False)
    z -= m                                                    # x - max(x)
    xp.exp(z, out=z)                                          # e = exp(x - max)
    total = sum_last(z, keepdims=True) if axis in (-1, z.ndim - 1) else z.sum(axis=axis, keepdims=True)
    z *= 1.0 / xp.where(total == 0, 1.0, total).astype(z.dtype, copy=False)   # e / sum(e)
    return z


def softmax(x, axis):
    y = softmax_(x.copy(), axis)
    return y, (y, axis)


def softmax_backward(dy, cache):
    y, axis = cache
    if backend.use_fused(dy) and axis in (-1, y.ndim - 1):
        return kernels.softmax_backward(dy, y)
    if axis in (-1, y.ndim - 1):
        dot = rowdot(dy, y)                                   # sum_i dy_i y_i (one BLAS pass)
    else:
        dot = (dy * y).sum(axis=axis, keepdims=True)
    dx = dy - dot
    dx *= y
    return dx
