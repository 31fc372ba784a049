"""Activations: SiLU, GELU (and the normal CDF it needs), GEGLU, softmax and log-softmax."""
from __future__ import annotations

import math

import numpy as np

from .. import fast
from ...backend import get_array_module
from ._checks import floats
from .erf import erf, normal_cdf_float32, normal_cdf_float64  # noqa: F401  (erf: re-exported)

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_TANH_C = 0.044715


def silu(x):
    """y = x * sigmoid(x),  sigmoid(x) = 1 / (1 + exp(-x)).   cache: (x, s) with s = sigmoid(x)"""
    floats("silu", x=x)
    if fast.enabled(x):                                       # CPU blocks / fused CUDA kernel, tested equal
        return fast.silu(x)
    xp = get_array_module(x)
    # s = 1 / (1 + exp(-x)); clipping x at -80 keeps exp finite in float32 (sigmoid(-80) ~ 2e-35)
    s = 1.0 / (1.0 + xp.exp(-xp.maximum(x, -80.0)))
    return x * s, (x, s)


def silu_backward(dy, cache):
    """sigmoid' = s (1 - s), so dy/dx = s + x s (1 - s) = s (1 + x (1 - s))."""
    if fast.enabled(dy):                                      # CPU blocks / fused CUDA kernel
        return fast.silu_backward(dy, cache)
    x, s = cache
    return dy * s * (1.0 + x * (1.0 - s))


def normal_cdf(x):
    """Phi(x) = P(N(0, 1) <= x) = (1 + erf(x / sqrt 2)) / 2, elementwise, in x's dtype.

    float64 goes through erf (~1e-14), float32 through its own tail formula (erf.py): both as
    e = erfc(|x| / sqrt 2) / 2, Phi(x) = 1 - e for x >= 0 and e for x < 0, which keeps the relative
    accuracy deep in the lower tail, where 1 + erf would cancel.
    """
    if fast.enabled(x):                                       # float32 in cache-sized blocks on every core
        return fast.normal_cdf(x)
    return normal_cdf_float32(x) if x.dtype == np.float32 else normal_cdf_float64(x)


def gelu(x, approximate="none"):
    """GELU: y = x Phi(x), Phi the standard normal CDF.

    approximate="none":  Phi(x) = (1 + erf(x / sqrt 2)) / 2             (exact)
    approximate="tanh":  Phi(x) ~ (1 + tanh(u)) / 2,  u = sqrt(2/pi) (x + 0.044715 x^3)
    cache: (x, Phi or its tanh approximation, approximate)
    """
    floats("gelu", x=x)
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    if fast.enabled(x):                                       # CPU blocks / fused CUDA kernel
        return fast.gelu(x, approximate)
    xp = get_array_module(x)
    if approximate == "none":
        phi_cdf = normal_cdf(x)                               # Phi(x)
    else:
        phi_cdf = 0.5 * (1.0 + xp.tanh(_SQRT_2_OVER_PI * (x + _GELU_TANH_C * x * x * x)))   # (1 + tanh u) / 2
    return x * phi_cdf, (x, phi_cdf, approximate)


def gelu_backward(dy, cache):
    """exact:  d/dx [x Phi(x)] = Phi(x) + x phi(x),  phi(x) = exp(-x^2/2) / sqrt(2 pi)
    tanh:   with T = (1 + tanh u)/2 and tanh' = 1 - tanh^2 = 4 T (1 - T):
            d/dx [x T] = T + x * 2 T (1 - T) * du/dx,  du/dx = sqrt(2/pi) (1 + 3 * 0.044715 x^2)
    """
    if fast.enabled(dy):                                      # CPU blocks / fused CUDA kernel
        return fast.gelu_backward(dy, cache)
    x, phi_cdf, approximate = cache
    xp = get_array_module(x)
    if approximate == "none":
        density = xp.exp(-0.5 * x * x) * (1.0 / math.sqrt(2.0 * math.pi))     # phi(x)
        return dy * (phi_cdf + x * density)
    du_dx = _SQRT_2_OVER_PI * (1.0 + 3.0 * _GELU_TANH_C * x * x)
    return dy * (phi_cdf + x * 2.0 * phi_cdf * (1.0 - phi_cdf) * du_dx)


def geglu(h):
    """The gated GELU of Stable Diffusion's feed-forward (GEGLU):

        [a, gate] = h       (the two halves of h's last axis)
        y = a * GELU(gate)

    h: (..., 2n)  ->  y: (..., n).  cache: (a, g = GELU(gate), gate, Phi(gate))
    """
    floats("geglu", h=h)
    if h.ndim < 1 or h.shape[-1] % 2:
        raise ValueError(f"geglu: h's last axis must hold the two halves [a, gate], so it must have an even "
                         f"length; got shape {tuple(h.shape)}")
    if fast.enabled(h):                                       # the whole chain in blocks on every core
        return fast.geglu(h)
    n = h.shape[-1] // 2
    a, gate = h[..., :n], h[..., n:]                          # (..., n) each
    g, (_, phi_cdf, _) = gelu(gate)                           # g = GELU(gate) = gate Phi(gate)
    return a * g, (a, g, gate, phi_cdf)                       # y = a * g


def geglu_backward(dy, cache):
    """y = a * g with g = GELU(gate), so

        da = dy * g          dgate = gelu_backward(dy * a) = dy * a * (Phi(gate) + gate phi(gate))

    returned side by side, dh = [da, dgate]: (..., 2n), the gradient of h."""
    if fast.enabled(dy):                                      # blocks; [da, dgate] written into one array
        return fast.geglu_backward(dy, cache)
    a, g, gate, phi_cdf = cache
    xp = get_array_module(dy)
    # forward was: y = a * g
    da = dy * g
    # forward was: g = GELU(gate)
    dgate = gelu_backward(dy * a, (gate, phi_cdf, "none"))
    return xp.concatenate([da, dgate], axis=-1)


def softmax(x, axis=-1):
    """y = exp(x - max x) / sum(exp(x - max x)) along ``axis`` (subtracting the maximum keeps exp
    from overflowing). A row of only -inf gives zeros (defined so masked attention never produces
    NaN: such a row is shifted by 0, its exps are all 0, and 0 / 1 = 0).
    cache: (y, axis)"""
    floats("softmax", x=x)
    if fast.enabled(x):                                       # BLAS row sums / fused CUDA kernels
        return fast.softmax(x, axis)
    xp = get_array_module(x)
    m = x.max(axis=axis, keepdims=True)                       # max x
    m = xp.where(m == -xp.inf, 0.0, m).astype(x.dtype, copy=False)
    e = xp.exp(x - m)                                         # e = exp(x - max)
    total = e.sum(axis=axis, keepdims=True)
    y = e / xp.where(total == 0, 1.0, total).astype(x.dtype, copy=False)   # e / sum(e)
    return y, (y, axis)


def softmax_backward(dy, cache):
    """dy_i/dx_j = y_i (delta_ij - y_j), so dx_j = sum_i dy_i y_i (delta_ij - y_j)
                                              = y_j (dy_j - sum_i dy_i y_i)."""
    if fast.enabled(dy):                                      # BLAS row dots / fused CUDA kernels
        return fast.softmax_backward(dy, cache)
    y, axis = cache
    dot = (dy * y).sum(axis=axis, keepdims=True)              # sum_i dy_i y_i
    return y * (dy - dot)


def log_softmax(x, axis=-1):
    """log p = x - logsumexp(x) along ``axis``, computed stably with m = max x:

        log p = (x - m) - log sum exp(x - m)        (every exp is <= 1: no overflow)

    Each row needs a finite entry. cache: (p = exp(log p), axis)
    """
    floats("log_softmax", x=x)
    xp = get_array_module(x)
    shifted = x - x.max(axis=axis, keepdims=True)             # x - m
    log_p = shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))
    return log_p, (xp.exp(log_p), axis)


def log_softmax_backward(dy, cache):
    """d log p_i / d x_j = delta_ij - p_j, so dx_j = dy_j - p_j sum_i dy_i."""
    p, axis = cache
    return dy - p * dy.sum(axis=axis, keepdims=True)
