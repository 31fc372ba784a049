"""Scaled dot-product attention and its backward."""
from __future__ import annotations

import math

from .. import fast
from ...backend import get_array_module
from ._checks import broadcasts_to, floats
from .activation import softmax, softmax_backward


def attention(q, k, v, mask=None):
    """Scaled dot-product attention, per batch element and head.

    q: (B, heads, Lq, d), k: (B, heads, Lk, d), v: (B, heads, Lk, dv)  (any leading axes work)
        S = q k^T / sqrt(d)                      (B, heads, Lq, Lk)   scores
        P = softmax(S) over the keys              attention probabilities
        O = P v                                   (B, heads, Lq, dv)
    mask: bool, broadcastable to (B, heads, Lq, Lk); True = may attend. Masked scores are set to
    -inf, so their probability is exactly 0. A query row with every key masked gets P = 0 and
    output 0 (not NaN), and no gradient flows through it.
    cache: (q, k, v, P, scale = 1 / sqrt(d))
    """
    floats("attention", q=q, k=k, v=v)
    if q.ndim < 2 or k.ndim != q.ndim or v.ndim != q.ndim:
        raise ValueError(f"attention: q, k, v must be (B, heads, L, d) with the same number of axes, "
                         f"got shapes {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"attention: q and k must share the head dimension d, got q {tuple(q.shape)} "
                         f"and k {tuple(k.shape)}")
    if k.shape[:-1] != v.shape[:-1] or q.shape[:-2] != k.shape[:-2]:
        raise ValueError(f"attention: k and v must be (..., Lk, d) and (..., Lk, dv) with the same leading "
                         f"axes as q, got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    xp = get_array_module(q)
    scores_shape = q.shape[:-1] + (k.shape[-2],)
    scale = 1.0 / math.sqrt(q.shape[-1])
    if mask is not None:
        mask = xp.asarray(mask)
        if mask.dtype != bool or not broadcasts_to(mask.shape, scores_shape):
            raise ValueError(f"attention: mask must be a bool array broadcastable to (B, heads, Lq, Lk) = "
                             f"{scores_shape}, got dtype {mask.dtype} and shape {tuple(mask.shape)}")
    if fast.enabled(q):                                       # blocks of samples / one fused kernel
        return fast.attention(q, k, v, mask, scale)
    # S = q k^T / sqrt(d)
    scores = (q @ k.swapaxes(-1, -2)) * scale                 # (B, heads, Lq, Lk)
    if mask is not None:
        scores = xp.where(mask, scores, -xp.inf).astype(q.dtype, copy=False)   # -inf where not allowed
    # P = softmax(S)
    P, _ = softmax(scores, axis=-1)                           # (B, heads, Lq, Lk)
    # O = P v
    out = P @ v                                               # (B, heads, Lq, dv)
    return out, (q, k, v, P, scale)


def attention_backward(d_out, cache):
    """Undo the three forward steps in reverse:

        O = P v:                dv = P^T dO,   dP = dO v^T
        P = softmax(S):         dS = P * (dP - rowsum(dP * P))   (softmax_backward; masked: P = 0 -> dS = 0)
        S = q k^T scale:        dq = dS k * scale,   dk = dS^T q * scale
    """
    if fast.enabled(d_out):                                   # blocks of samples on every core
        return fast.attention_backward(d_out, cache)
    q, k, v, P, scale = cache
    # forward was: O = P v
    dv = P.swapaxes(-1, -2) @ d_out                           # (B, heads, Lk, dv)
    dP = d_out @ v.swapaxes(-1, -2)                           # (B, heads, Lq, Lk)
    # forward was: P = softmax(S)
    dS = softmax_backward(dP, (P, -1))                        # (B, heads, Lq, Lk)
    # forward was: S = q k^T * scale
    dS = dS * scale
    dq = dS @ k                                               # (B, heads, Lq, d)
    dk = dS.swapaxes(-1, -2) @ q                              # (B, heads, Lk, d)
    return dq, dk, dv


def attention_probs(cache):
    """The attention probabilities P (B, heads, Lq, Lk) kept in an attention cache (for pictures)."""
    return cache[3]
