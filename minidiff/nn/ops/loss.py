"""Dropout and the losses (scalar outputs are 0-d arrays on the data's device: no synchronisation)."""
from __future__ import annotations

import numpy as np

from ...backend import get_array_module
from ._checks import floats, index_array
from .activation import log_softmax


def dropout(x, p, rng, training=True):
    """Inverted dropout: y = x * m / (1 - p), m_i ~ Bernoulli(1 - p) drawn from ``rng``.

    The 1/(1 - p) keeps E[y] = x, so evaluation (training=False or p = 0) is the identity.
    rng: a numpy or cupy Generator (backend.rng); draws from a host generator are copied to x's
    device. cache: the scaled mask m / (1 - p) (x's dtype), or None for the identity.
    """
    floats("dropout", x=x)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p must be in [0, 1], got {p!r}")
    if not training or p == 0.0:
        return x, None
    xp = get_array_module(x)
    keep = xp.asarray(rng.random(x.shape, dtype=np.float32) >= p)          # m ~ Bernoulli(1 - p)
    scaled_mask = keep.astype(x.dtype) * (0.0 if p == 1.0 else 1.0 / (1.0 - p))
    return x * scaled_mask, scaled_mask


def dropout_backward(dy, cache):
    """y = x * m / (1 - p) is linear in x: dx = dy * m / (1 - p)."""
    return dy if cache is None else dy * cache


def _upstream(d_loss, like):
    """The upstream gradient of a scalar loss (1.0 usually) as a 0-d array of ``like``'s dtype."""
    return get_array_module(like).asarray(d_loss, dtype=like.dtype)


def mse_loss(pred, target):
    """loss = mean((pred - target)^2) over every element.   cache: (pred - target)"""
    floats("mse_loss", pred=pred, target=target)
    if pred.shape != target.shape:
        raise ValueError(f"mse_loss: pred has shape {tuple(pred.shape)} but target has {tuple(target.shape)}")
    diff = pred - target
    return (diff * diff).mean(), diff


def mse_loss_backward(d_loss, cache):
    """d/dpred mean((pred - target)^2) = 2 (pred - target) / N   (the grad of pred only)."""
    diff = cache
    return diff * (_upstream(d_loss, diff) * (2.0 / diff.size))


def cross_entropy(logits, targets):
    """Mean over rows of -log softmax(logits)[target].

    logits: (N, K) (or (..., K)), targets: integers (N,) (or (...)) in [0, K)
        log p = log_softmax(logits)        (stable: logits - m - log sum exp(logits - m))
        loss  = -(1/N) sum_n log p[n, targets[n]]
    cache: (p = softmax(logits) (N, K), targets (N,), logits_shape)
    """
    floats("cross_entropy", logits=logits)
    xp = get_array_module(logits)
    if logits.ndim < 1:
        raise ValueError("cross_entropy: logits must be (N, K)")
    K = logits.shape[-1]
    targets = index_array("cross_entropy", "targets", targets, K, xp)
    if targets.shape != logits.shape[:-1]:
        raise ValueError(f"cross_entropy: targets must have shape {tuple(logits.shape[:-1])} "
                         f"(one class per row of logits {tuple(logits.shape)}), got {tuple(targets.shape)}")
    log_p, (p, _) = log_softmax(logits.reshape(-1, K), axis=1)               # (N, K)
    loss = -log_p[xp.arange(log_p.shape[0]), targets.reshape(-1)].mean()
    return loss, (p, targets.reshape(-1), logits.shape)


def cross_entropy_backward(d_loss, cache):
    """dloss/dlogits[n] = (softmax(logits[n]) - onehot(targets[n])) / N   (grad of the logits only)."""
    p, targets, logits_shape = cache
    xp = get_array_module(p)
    dlogits = p.copy()
    dlogits[xp.arange(p.shape[0]), targets] -= 1.0            # p - onehot
    dlogits *= _upstream(d_loss, p) * (1.0 / p.shape[0])
    return dlogits.reshape(logits_shape)
