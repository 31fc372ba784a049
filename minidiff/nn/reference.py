"""Naive loop versions of conv2d, conv_transpose2d and attention: the definitions, written out.

Same arguments as the fast versions in ``functional.py``, but each output number is computed by
a plain Python loop straight from its formula, so a reader can check the fast code against them
(and the tests do). They return only the output (no cache, no backward), on the host as NumPy
arrays, and are slow: use tiny inputs only.
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import to_numpy


def conv2d(x, w, b=None, stride=1, padding=0):
    """y[n, o, i, j] = b[o] + sum_{c, di, dj} w[o, c, di, dj] x_pad[n, c, stride*i + di, stride*j + dj]

    x: (B, C_in, H, W), w: (C_out, C_in, kh, kw)  ->  (B, C_out, Ho, Wo)
    """
    x, w = to_numpy(x), to_numpy(w)
    B, C_in, H, W = x.shape
    C_out, _, kh, kw = w.shape
    x_pad = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    Ho = (H + 2 * padding - kh) // stride + 1
    Wo = (W + 2 * padding - kw) // stride + 1
    y = np.zeros((B, C_out, Ho, Wo), dtype=x.dtype)
    for n in range(B):
        for o in range(C_out):
            for i in range(Ho):
                for j in range(Wo):
                    window = x_pad[n, :, stride * i:stride * i + kh, stride * j:stride * j + kw]
                    y[n, o, i, j] = np.sum(window * w[o])
            if b is not None:
                y[n, o] += to_numpy(b)[o]
    return y


def conv_transpose2d(x, w, b=None, stride=1, padding=0, output_padding=0):
    """Every input pixel stamps its kernel, times its value, onto the output (stride apart):

        y_full[n, :, stride*i : stride*i + kh, stride*j : stride*j + kw] += x[n, c, i, j] * w[c]

    then ``padding`` rows/columns are cut from each border of y_full and b is added.
    x: (B, C_in, H, W), w: (C_in, C_out, kh, kw)  ->  (B, C_out, Ho, Wo),
    Ho = (H - 1) stride - 2 padding + kh + output_padding
    """
    x, w = to_numpy(x), to_numpy(w)
    B, C_in, H, W = x.shape
    _, C_out, kh, kw = w.shape
    y_full = np.zeros((B, C_out, (H - 1) * stride + kh + output_padding,
                       (W - 1) * stride + kw + output_padding), dtype=x.dtype)
    for n in range(B):
        for c in range(C_in):
            for i in range(H):
                for j in range(W):
                    y_full[n, :, stride * i:stride * i + kh, stride * j:stride * j + kw] += x[n, c, i, j] * w[c]
    y = y_full[:, :, padding:y_full.shape[2] - padding, padding:y_full.shape[3] - padding]
    if b is not None:
        y = y + to_numpy(b)[:, None, None]
    return np.ascontiguousarray(y)


def attention(q, k, v, mask=None):
    """For each (batch, head) and query i, over the keys j it may attend to:

        s_j = q_i . k_j / sqrt(d),   p_j = exp(s_j) / sum_j' exp(s_j'),   out_i = sum_j p_j v_j

    A query that may attend to no key gets out_i = 0.
    q: (..., Lq, d), k: (..., Lk, d), v: (..., Lk, dv), mask: bool broadcastable to (..., Lq, Lk)
    """
    q, k, v = to_numpy(q), to_numpy(k), to_numpy(v)
    lead, (Lq, d), Lk = q.shape[:-2], q.shape[-2:], k.shape[-2]
    allowed = np.ones(lead + (Lq, Lk), bool) if mask is None else np.broadcast_to(to_numpy(mask), lead + (Lq, Lk))
    out = np.zeros(lead + (Lq, v.shape[-1]), dtype=q.dtype)
    for index in np.ndindex(*lead):
        for i in range(Lq):
            keys = [j for j in range(Lk) if allowed[index + (i, j)]]
            if not keys:
                continue
            scores = [float(q[index + (i,)] @ k[index + (j,)]) / math.sqrt(d) for j in keys]
            top = max(scores)
            weights = [math.exp(s - top) for s in scores]
            total = sum(weights)
            for j, weight in zip(keys, weights):
                out[index + (i,)] += weight / total * v[index + (j,)]
    return out
