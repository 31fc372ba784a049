"""GroupNorm and LayerNorm's fast routes: one fused kernel per pass on a GPU, BLAS row sums on the host.

On the host every mean over a group or a token is a BLAS matrix-vector product (sums.py), and
group_norm_backward needs no pass of its own for the two group means of the derivation
(nn/ops/norm.py): a group's sum of g = gamma_c dy is the gamma-weighted sum of its channels'
sums of dy, and likewise for g x_hat with the sums of dy x_hat, the very per-(sample, channel)
sums that dbeta and dgamma are made of. On a GPU kernels.py does each pass in one launch
(group_norm_silu included: SiLU(GroupNorm(x)) in one kernel). The caches are the derivation's.
"""
from __future__ import annotations

from ... import backend
from ...backend import get_array_module
from . import kernels
from .activation import silu, silu_backward
from .sums import rowdot, sum_first, sum_last


def normalize(x, eps):
    """ops.norm.normalize with its means as BLAS products."""
    xp = get_array_module(x)
    mu = sum_last(x, keepdims=True) * (1.0 / x.shape[-1])
    x_hat = x - mu                                            # x - mu
    var = rowdot(x_hat, x_hat) * (1.0 / x.shape[-1])          # var = mean((x - mu)^2)
    inv_std = 1.0 / xp.sqrt(var + eps)                        # 1 / sqrt(var + eps)
    x_hat *= inv_std
    return x_hat, inv_std


def normalize_backward(dx_hat, x_hat, inv_std):
    """ops.norm.normalize_backward with its means as BLAS products; dx_hat (a fresh array from
    the caller) is overwritten and returned as dx."""
    mean_g = sum_last(dx_hat, keepdims=True) * (1.0 / x_hat.shape[-1])   # mean(g)
    mean_g_xhat = rowdot(dx_hat, x_hat) * (1.0 / x_hat.shape[-1])        # mean(g * x_hat)
    dx = dx_hat
    dx -= mean_g
    dx -= x_hat * mean_g_xhat
    dx *= inv_std
    return dx


def group_norm(x, gamma, beta, num_groups, eps):
    if backend.use_fused(x):
        return kernels.group_norm(x, gamma, beta, num_groups, eps)
    B, C = x.shape[:2]
    x_hat, inv_std = normalize(x.reshape(B, num_groups, -1), eps)   # (B, G, N), (B, G, 1)
    per_channel = (1, C) + (1,) * (x.ndim - 2)
    y = x_hat.reshape(x.shape) * gamma.reshape(per_channel)
    y += beta.reshape(per_channel)
    return y, (x_hat, inv_std, gamma)


def group_norm_backward(dy, cache):
    if backend.use_fused(dy):
        return kernels.group_norm_backward(dy, cache)
    x_hat, inv_std, gamma = cache                                           # (B, G, N), (B, G, 1), (C,)
    B, G, N = x_hat.shape
    C = gamma.shape[0]
    dy_c = dy.reshape(B, C, -1)                                             # (B, C, H*W)
    x_hat_c = x_hat.reshape(dy_c.shape)                                     # (B, C, H*W)
    sum_dy = sum_last(dy_c)                                                 # (B, C)
    sum_dy_xhat = rowdot(dy_c, x_hat_c)[..., 0]                             # (B, C)
    dbeta = sum_dy.sum(axis=0)                                              # (C,)
    dgamma = sum_dy_xhat.sum(axis=0)                                        # (C,)
    # the group means of g = gamma dy and of g x_hat, from the per-channel sums
    mean_g = (sum_dy * gamma).reshape(B, G, -1).sum(axis=-1, keepdims=True) * (1.0 / N)            # (B, G, 1)
    mean_g_xhat = (sum_dy_xhat * gamma).reshape(B, G, -1).sum(axis=-1, keepdims=True) * (1.0 / N)  # (B, G, 1)
    # dx = inv_std (gamma dy - mean(g) - x_hat mean(g x_hat)), in the (B, G, C/G, H*W) view
    per_group = (B, G, C // G, -1)
    dx = dy_c.reshape(per_group) * (gamma.reshape(1, G, -1, 1) * inv_std[..., None])
    dx -= x_hat.reshape(per_group) * (inv_std * mean_g_xhat)[..., None]
    dx -= (inv_std * mean_g)[..., None]
    return dx.reshape(dy.shape), dgamma, dbeta


def group_norm_silu(x, gamma, beta, num_groups, eps):
    if backend.use_fused(x):
        return kernels.group_norm_silu(x, gamma, beta, num_groups, eps)
    a, (x_hat, inv_std, gamma) = group_norm(x, gamma, beta, num_groups, eps)
    y, _ = silu(a)
    return y, (x_hat, inv_std, gamma, beta)


def group_norm_silu_backward(dy, cache):
    if backend.use_fused(dy):
        return kernels.group_norm_silu_backward(dy, cache)
    x_hat, inv_std, gamma, beta = cache
    per_channel = (1, gamma.shape[0]) + (1,) * (dy.ndim - 2)
    a = x_hat.reshape(dy.shape) * gamma.reshape(per_channel) + beta.reshape(per_channel)
    da = silu_backward(dy, silu(a)[1])
    return group_norm_backward(da, (x_hat, inv_std, gamma))


def layer_norm(x, gamma, beta, eps):
    if backend.use_fused(x):
        return kernels.layer_norm(x, gamma, beta, eps)
    x_hat, inv_std = normalize(x, eps)                        # (..., D), (..., 1)
    y = x_hat * gamma
    y += beta
    return y, (x_hat, inv_std, gamma)


def layer_norm_backward(dy, cache):
    if backend.use_fused(dy):
        return kernels.layer_norm_backward(dy, cache)
    x_hat, inv_std, gamma = cache
    D = gamma.shape[0]
    dbeta = sum_first(dy.reshape(-1, D))                      # (D,)
    dgamma = sum_first((dy * x_hat).reshape(-1, D))           # (D,)
    return normalize_backward(dy * gamma, x_hat, inv_std), dgamma, dbeta
