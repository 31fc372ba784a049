"""Pure (forward, backward) pairs: every op minidiff's models are made of, with its derivative beside it.

The contract (cs231n style, NCHW, weights laid out as in PyTorch)::

    out, cache = name(inputs..., options...)
    grads      = name_backward(d_out, cache)    # grads of the ARRAY inputs, in order;
                                                # None for an absent bias

* ``cache`` holds exactly what the backward pass needs (``x_hat``, ``inv_std``, the im2col
  matrix ...), named after the math; nothing else.
* Every op takes its array module from its data, ``xp = get_array_module(x)``, so the same
  function runs on NumPy and on CuPy.
* dtypes are kept: float32 in, float32 out. Mixing float32 and float64 arrays in one op is a
  ValueError rather than a silent promotion to float64.
* Bad shapes raise a ValueError that names the op, the shapes and what would be valid.

The ops live by family in ``minidiff/nn/ops/`` (this file gathers them under one name). Each is
the derivation: each backward's docstring derives it in a few lines, and the code then follows
the derivation in order, quoting (``# forward was: ...``) the forward line each step undoes. A
faster route (``minidiff/nn/fast/``: CPU layouts and thread blocks, fused CuPy kernels) is one
visible ``if fast.enabled(x):`` line at an op's top, tested equal; ``MINIDIFF_FAST=0`` turns every
one of them off. Every pair is checked against finite differences in float64
(``minidiff/nn/gradcheck.py``, ``tests/test_functional.py``) and the convolutions and attention
against the loop versions in ``minidiff/nn/reference.py``.

Contents: linear | conv2d, conv_transpose2d (im2col + one GEMM, col2im) | upsample_nearest2x,
avg_pool2d | group_norm, group_norm_silu, layer_norm (one normalize_backward) | silu, gelu (+ erf,
normal_cdf), geglu, softmax, log_softmax | attention | embedding, sinusoidal_embedding | dropout |
mse_loss, cross_entropy.
"""
from __future__ import annotations

from .ops.activation import (erf, geglu, geglu_backward, gelu, gelu_backward, log_softmax,
                             log_softmax_backward, normal_cdf, silu, silu_backward, softmax, softmax_backward)
from .ops.attention import attention, attention_backward, attention_probs
from .ops.conv import conv2d, conv2d_backward, conv_output_size, conv_transpose2d, conv_transpose2d_backward
from .ops.embedding import embedding, embedding_backward, sinusoidal_embedding
from .ops.linear import linear, linear_backward
from .ops.loss import cross_entropy, cross_entropy_backward, dropout, dropout_backward, mse_loss, mse_loss_backward
from .ops.norm import (group_norm, group_norm_backward, group_norm_silu, group_norm_silu_backward, layer_norm,
                       layer_norm_backward)
from .ops.norm import normalize_backward as _normalize_backward  # noqa: F401  (its old name here)
from .ops.resample import avg_pool2d, avg_pool2d_backward, upsample_nearest2x, upsample_nearest2x_backward

__all__ = [
    "linear", "linear_backward",
    "conv2d", "conv2d_backward", "conv_transpose2d", "conv_transpose2d_backward", "conv_output_size",
    "upsample_nearest2x", "upsample_nearest2x_backward", "avg_pool2d", "avg_pool2d_backward",
    "group_norm", "group_norm_backward", "group_norm_silu", "group_norm_silu_backward",
    "layer_norm", "layer_norm_backward",
    "silu", "silu_backward", "gelu", "gelu_backward", "geglu", "geglu_backward", "erf", "normal_cdf",
    "softmax", "softmax_backward", "log_softmax", "log_softmax_backward",
    "attention", "attention_backward", "attention_probs",
    "embedding", "embedding_backward", "sinusoidal_embedding",
    "dropout", "dropout_backward",
    "mse_loss", "mse_loss_backward", "cross_entropy", "cross_entropy_backward",
]


if __name__ == "__main__":
    import numpy as np
    image = np.arange(25.0).reshape(1, 1, 5, 5)
    box = np.full((1, 1, 3, 3), 1 / 9)
    y, (col, *_) = conv2d(image, box, padding=1)
    print(f"3x3 box blur of a 5x5 ramp via im2col: col {col.shape} -> y {y.shape}\n{y[0, 0].round(2)}")
    q = k = v = np.random.default_rng(0).standard_normal((1, 1, 4, 2))
    out, cache = attention(q, k, v, mask=np.tril(np.ones((4, 4), bool)))
    print(f"causal attention probabilities (rows sum to 1, zeros above the diagonal):\n"
          f"{attention_probs(cache)[0, 0].round(3)}")
