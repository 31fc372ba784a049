"""Normalisation: GroupNorm and LayerNorm share one "normalise over the last axis" and its backward."""
from __future__ import annotations

from .. import fast
from ...backend import get_array_module
from ._checks import floats, positive_int, vector
from .activation import silu, silu_backward


def normalize(x, eps):
    """x_hat = (x - mu) / sqrt(var + eps) over the last axis (N values; two-pass variance).

    Returns x_hat (x's shape) and inv_std = 1 / sqrt(var + eps) (last axis 1).
    """
    xp = get_array_module(x)
    mu = x.mean(axis=-1, keepdims=True)                       # mu = mean(x)
    centred = x - mu                                          # x - mu
    var = (centred * centred).mean(axis=-1, keepdims=True)    # var = mean((x - mu)^2)
    inv_std = 1.0 / xp.sqrt(var + eps)                        # 1 / sqrt(var + eps)
    return centred * inv_std, inv_std


def normalize_backward(dx_hat, x_hat, inv_std):
    """Gradient through x_hat = (x - mu) * inv_std, mu and var taken over the last axis (N values).

    With dmu/dx_j = 1/N, dvar/dx_j = 2 (x_j - mu) / N and d inv_std / dvar = -inv_std^3 / 2:

        dx_hat_i / dx_j = inv_std (delta_ij - 1/N - x_hat_i x_hat_j / N)

    and summing against g = dL/dx_hat:

        dx = inv_std * (g - mean(g) - x_hat * mean(g * x_hat))
    """
    mean_g = dx_hat.mean(axis=-1, keepdims=True)                      # mean(g)
    mean_g_xhat = (dx_hat * x_hat).mean(axis=-1, keepdims=True)       # mean(g * x_hat)
    return inv_std * (dx_hat - mean_g - x_hat * mean_g_xhat)


def _group_norm_arguments(op, x, gamma, beta, num_groups):
    """The checks group_norm and group_norm_silu share; returns num_groups as an int."""
    floats(op, x=x, gamma=gamma, beta=beta)
    if x.ndim < 2:
        raise ValueError(f"{op}: x must be (B, C, ...), got shape {tuple(x.shape)}")
    C = x.shape[1]
    G = positive_int(op, "num_groups", num_groups)
    if C % G:
        raise ValueError(f"{op}: {C} channels do not divide into {G} groups (x shape {tuple(x.shape)})")
    vector(op, "gamma", gamma, C, "channel")
    vector(op, "beta", beta, C, "channel")
    return G


def group_norm(x, gamma, beta, num_groups, eps=1e-5):
    """GroupNorm: per sample, normalise each group of C / G channels, then scale and shift per channel.

    x: (B, C, *spatial), gamma, beta: (C,). For sample b and group g, over its N = (C/G) * H * W
    numbers:
        mu = mean(x),  var = mean((x - mu)^2)
        x_hat = (x - mu) / sqrt(var + eps)
        y = gamma_c * x_hat + beta_c
    The group's numbers are contiguous in memory, so x.reshape(B, G, N) reduces over the last axis.
    cache: (x_hat (B, G, N), inv_std (B, G, 1), gamma)
    """
    G = _group_norm_arguments("group_norm", x, gamma, beta, num_groups)
    if fast.enabled(x):                                       # BLAS row sums / one fused kernel
        return fast.group_norm(x, gamma, beta, G, eps)
    B, C = x.shape[:2]
    x_hat, inv_std = normalize(x.reshape(B, G, -1), eps)      # (B, G, N), (B, G, 1)
    per_channel = (1, C) + (1,) * (x.ndim - 2)
    # y = gamma * x_hat + beta
    y = x_hat.reshape(x.shape) * gamma.reshape(per_channel) + beta.reshape(per_channel)
    return y, (x_hat, inv_std, gamma)


def group_norm_backward(dy, cache):
    """y = gamma_c x_hat + beta_c per channel c, x_hat = normalize(x) per (sample, group):

        dbeta_c  = sum over samples and positions of dy
        dgamma_c = sum over samples and positions of dy * x_hat
        g = dx_hat = gamma_c dy,  then per group (normalize_backward)
        dx = inv_std (g - mean(g) - x_hat mean(g x_hat))
    """
    if fast.enabled(dy):                                      # CPU row sums / fused CUDA kernel, tested equal
        return fast.group_norm_backward(dy, cache)
    x_hat, inv_std, gamma = cache                             # (B, G, N), (B, G, 1), (C,)
    B, G, N = x_hat.shape
    per_channel = (1, gamma.shape[0]) + (1,) * (dy.ndim - 2)
    samples_and_positions = (0,) + tuple(range(2, dy.ndim))
    # forward was: y = gamma * x_hat + beta
    dbeta = dy.sum(axis=samples_and_positions)                                    # (C,)
    dgamma = (dy * x_hat.reshape(dy.shape)).sum(axis=samples_and_positions)       # (C,)
    dx_hat = (dy * gamma.reshape(per_channel)).reshape(B, G, N)                   # g = gamma dy
    # forward was: x_hat, inv_std = normalize(x.reshape(B, G, N))
    dx = normalize_backward(dx_hat, x_hat, inv_std)                               # (B, G, N)
    return dx.reshape(dy.shape), dgamma, dbeta


def group_norm_silu(x, gamma, beta, num_groups, eps=1e-5):
    """SiLU(GroupNorm(x)): the pair that opens every ResBlock branch, as one op.

        a = gamma_c x_hat + beta_c     (group_norm above)
        y = a * sigmoid(a)             (silu)

    cache: (x_hat (B, G, N), inv_std (B, G, 1), gamma, beta): a is recomputed in backward, which
    costs less than keeping it.
    """
    G = _group_norm_arguments("group_norm_silu", x, gamma, beta, num_groups)
    if fast.enabled(x):                                       # on a GPU: both in one kernel
        return fast.group_norm_silu(x, gamma, beta, G, eps)
    a, (x_hat, inv_std, gamma) = group_norm(x, gamma, beta, G, eps)
    y, _ = silu(a)
    return y, (x_hat, inv_std, gamma, beta)


def group_norm_silu_backward(dy, cache):
    """Chain rule through the two steps: da = silu_backward(dy) at a = gamma x_hat + beta, then
    (dx, dgamma, dbeta) = group_norm_backward(da)."""
    if fast.enabled(dy):                                      # on a GPU: one kernel per pass
        return fast.group_norm_silu_backward(dy, cache)
    x_hat, inv_std, gamma, beta = cache
    per_channel = (1, gamma.shape[0]) + (1,) * (dy.ndim - 2)
    # forward was: a = gamma * x_hat + beta;  y = silu(a)
    a = x_hat.reshape(dy.shape) * gamma.reshape(per_channel) + beta.reshape(per_channel)
    da = silu_backward(dy, silu(a)[1])
    # forward was: a = group_norm(x)
    return group_norm_backward(da, (x_hat, inv_std, gamma))


def layer_norm(x, gamma, beta, eps=1e-5):
    """LayerNorm over the last axis (D features), then a per-feature scale and shift.

    x: (..., D), gamma, beta: (D,)
        x_hat = (x - mean(x)) / sqrt(var(x) + eps)   (statistics over the last axis)
        y = gamma * x_hat + beta
    cache: (x_hat (..., D), inv_std (..., 1), gamma)
    """
    floats("layer_norm", x=x, gamma=gamma, beta=beta)
    if x.ndim < 1:
        raise ValueError("layer_norm: x must have at least one axis")
    D = x.shape[-1]
    vector("layer_norm", "gamma", gamma, D, "feature of x's last axis")
    vector("layer_norm", "beta", beta, D, "feature of x's last axis")
    if fast.enabled(x):                                       # BLAS row sums / one fused kernel
        return fast.layer_norm(x, gamma, beta, eps)
    x_hat, inv_std = normalize(x, eps)                        # (..., D), (..., 1)
    # y = gamma * x_hat + beta
    return x_hat * gamma + beta, (x_hat, inv_std, gamma)


def layer_norm_backward(dy, cache):
    """As group_norm_backward with one group per row: dbeta = sum dy, dgamma = sum dy x_hat,
    g = dx_hat = gamma dy, dx = inv_std (g - mean(g) - x_hat mean(g x_hat))."""
    if fast.enabled(dy):                                      # BLAS row sums / fused CUDA kernels
        return fast.layer_norm_backward(dy, cache)
    x_hat, inv_std, gamma = cache
    D = gamma.shape[0]
    # forward was: y = gamma * x_hat + beta
    dbeta = dy.reshape(-1, D).sum(axis=0)                     # (D,)
    dgamma = (dy * x_hat).reshape(-1, D).sum(axis=0)          # (D,)
    dx_hat = dy * gamma                                       # (..., D)
    # forward was: x_hat, inv_std = normalize(x)
    return normalize_backward(dx_hat, x_hat, inv_std), dgamma, dbeta
