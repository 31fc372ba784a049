"""Embeddings: a learned lookup table, and the sinusoidal timestep embedding."""
from __future__ import annotations

import math

import numpy as np

from ...backend import get_array_module
from ._checks import floats, index_array, int_at_least, ndim


def embedding(ids, weight):
    """Look up rows of a table: y[...] = weight[ids[...]].

    ids: integers (...) in [0, V), weight: (V, D)  ->  y: (..., D)
    cache: (ids, weight_shape)
    """
    floats("embedding", weight=weight)
    ndim("embedding", "weight", weight, 2, "(num_embeddings, dim)")
    xp = get_array_module(weight)
    ids = index_array("embedding", "ids", ids, weight.shape[0], xp)
    return weight[ids], (ids, weight.shape)


def embedding_backward(dy, cache):
    """y[n] = weight[ids[n]]: row v of weight received every dy[n] with ids[n] = v, so

        dweight[v] = sum_{n : ids[n] = v} dy[n]

    A scatter-add. ``xp.add.at`` does it unbuffered (repeated ids add up, unlike
    ``dweight[ids] += dy``); it is deterministic on NumPy; on CuPy it uses atomic adds, whose order
    (and so the last bits of a sum over repeated ids) can vary from run to run.
    """
    ids, weight_shape = cache
    xp = get_array_module(dy)
    dweight = xp.zeros(weight_shape, dtype=dy.dtype)
    xp.add.at(dweight, ids.reshape(-1), dy.reshape(-1, weight_shape[1]))
    return dweight


def sinusoidal_embedding(t, dim, max_period=10000, dtype=np.float32):
    """Timestep embedding: [cos(t f_0) .. cos(t f_{h-1}), sin(t f_0) .. sin(t f_{h-1})], h = dim // 2,

        f_i = exp(-ln(max_period) * i / h) = max_period^(-i / h)

    (frequencies from 1 down to nearly 1/max_period); an odd dim gets a zero last column.
    This is diffusers' ``get_timestep_embedding(t, dim, flip_sin_to_cos=True,
    downscale_freq_shift=0)``, the Stable Diffusion U-Net's setting. The angles t * f_i are
    computed in float64 and the result cast to ``dtype``: diffusers computes them in float32,
    so at t ~ 1000 its entries differ from these by up to ~1e-4 (float32's spacing near 1000).
    t: scalar or (N,) (integer or real timesteps)  ->  (N, dim). No backward: t is an input,
    not a learned quantity.
    """
    dim = int_at_least("sinusoidal_embedding", "dim", dim, 2)
    xp = get_array_module(t)
    t = xp.asarray(t, dtype=np.float64)
    if t.ndim > 1:
        raise ValueError(f"sinusoidal_embedding: t must be a scalar or 1-D, got shape {tuple(t.shape)}")
    half = dim // 2
    # f_i = exp(-ln(max_period) * i / half)
    freqs = xp.exp(-math.log(max_period) * xp.arange(half, dtype=np.float64) / half)   # (half,)
    angles = t.reshape(-1, 1) * freqs[None, :]                # (N, half)
    emb = xp.concatenate([xp.cos(angles), xp.sin(angles)], axis=-1)
    if dim % 2:
        emb = xp.concatenate([emb, xp.zeros_like(emb[:, :1])], axis=-1)
    return emb.astype(dtype)                                  # (N, dim)
