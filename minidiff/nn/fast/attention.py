"""Attention's fast routes: one fused kernel for the forward on a GPU, blocks of samples on the host.

* GPU, 4-D q, k, v with head dims <= kernels.MAX_HEAD_DIM: both products, the mask, the softmax
  and the head split/merge copies in one launch (kernels.attention, an online softmax).
* Host: samples are independent, so blocks of them go to every core (blocks.map_rows), forward
  and backward; the mask is made additive (0 / -inf) once, at its own small shape, and the
  softmax runs in place on the scores (activation.softmax_).
"""
from __future__ import annotations

from ... import backend
from ...backend import get_array_module
from . import blocks, kernels
from .activation import softmax_, softmax_backward


def attention(q, k, v, mask, scale):
    """ops.attention.attention (arguments checked; mask None or a bool array)."""
    if backend.use_fused(q) and q.ndim == 4 and max(q.shape[-1], v.shape[-1]) <= kernels.MAX_HEAD_DIM:
        out, P = kernels.attention(q, k, v, mask, scale)
        return out, (q, k, v, P, scale)
    if mask is not None:
        xp = get_array_module(q)
        mask = xp.where(mask, 0.0, -xp.inf).astype(q.dtype, copy=False)
    if mask is not None and mask.ndim == q.ndim and mask.shape[0] > 1:      # a mask row per sample
        out, P = blocks.map_rows(lambda *rows: _attention(*rows, scale), q, k, v, mask)
    else:
        out, P = blocks.map_rows(lambda *rows: _attention(*rows, mask, scale), q, k, v)
    return out, (q, k, v, P, scale)


def _attention(q, k, v, mask, scale):
    """attention's math for a block of samples; mask: None or additive (0 / -inf)."""
    scores = q @ k.swapaxes(-1, -2)                           # S = q k^T   (B, heads, Lq, Lk)
    scores *= scale
    if mask is not None:
        scores += mask                                        # S + mask: -inf where not allowed
    P = softmax_(scores, axis=-1)                             # P = softmax(S)
    return P @ v, P                                           # O = P v


def attention_backward(d_out, cache):
    q, k, v, P, scale = cache
    return blocks.map_rows(lambda *rows: _attention_backward(*rows, scale), d_out, q, k, v, P)


def _attention_backward(d_out, q, k, v, P, scale):
    dv = P.swapaxes(-1, -2) @ d_out                           # (B, heads, Lk, dv)
    dP = d_out @ v.swapaxes(-1, -2)                           # (B, heads, Lq, Lk)
    dS = softmax_backward(dP, (P, -1))                        # (B, heads, Lq, Lk)
    dS *= scale
    return dS @ k, dS.swapaxes(-1, -2) @ q, dv                # dq, dk, dv
