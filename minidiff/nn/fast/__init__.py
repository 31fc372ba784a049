"""The fast routes: what an op in nn/ops/ hands its work to when speed matters.

Each op in nn/ops/ is the derivation; a faster route is one visible line at its top:

    def group_norm_backward(dy, cache):
        if fast.enabled(dy):                        # CPU row sums / fused CUDA kernel, tested equal
            return fast.group_norm_backward(dy, cache)
        ...the derivation...

A route takes the same arguments (already checked by the op) and returns the same results, to
float rounding, with a cache the other route's backward can read. ``tests/test_kernels.py``
checks every op's two routes against each other (NumPy, and CuPy on a GPU) and the fused kernels'
bodies (compiled for the CPU where no GPU is).

One switch: ``MINIDIFF_FAST=0`` in the environment (``MINIDIFF_FUSED=0``, its old name), or
``set_enabled(False)``, or ``with disabled():``, runs the derivation everywhere.

What is here (each file's docstring has its measurements):

    blocks.py      host: elementwise chains in cache-sized blocks of rows on every core; glibc
                   keeps freed memory (mallopt); OpenBLAS's workers wait less (minidiff/__init__.py)
    sums.py        host: short-axis sums as BLAS matrix-vector products (linear's db, norms, softmax)
    conv.py        host: batch-last im2col columns, channel blocks, the flipped-kernel stride-1
                   backward; GPU: one gather kernel for im2col and for col2im
    norm.py        GroupNorm / LayerNorm (+ SiLU): BLAS row sums on the host, one kernel per pass on a GPU
    activation.py  SiLU, GELU, GEGLU, normal CDF, softmax: blocks on the host, fused kernels on a GPU
    attention.py   blocks of samples on the host, one online-softmax kernel on a GPU
    kernels.py     the fused CuPy kernels themselves (and AdamW's, used by optim.py)

Why the host routes pay: NumPy runs each ufunc on one core over the whole array, so a chain such
as GELU (~25 ufuncs) streams its input through main memory ~25 times while the other cores idle;
BLAS is the only part of NumPy that uses them. Why the GPU routes pay: at 8x8 latents and 32x32
images a step is launch-bound (each CuPy call costs ~10-20 us of host time), and a fused kernel
does a chain of five to thirty calls in one launch.

Two speed choices stay inside the derivations, because they are the math written one way rather
than another: upsample_nearest2x_backward sums each 2x2 block as three adds of strided views
(8.1 -> 0.7 ms at B=128, 96 channels, 8x8, against NumPy's sum over the two length-2 axes of a
(B, C, H, 2, W, 2) view), and float32's normal CDF is one short tail formula (about half the
array passes of float64's two erf branches; GELU is a sizeable share of a CPU step).
"""
from __future__ import annotations

import contextlib

from ... import backend
from . import blocks, kernels  # noqa: F401  (the two engines the routes below run on)
from .activation import (gelu, gelu_backward, geglu, geglu_backward, normal_cdf, silu, silu_backward,  # noqa: F401
                         softmax, softmax_backward)
from .attention import attention, attention_backward  # noqa: F401
from .conv import conv2d, conv2d_backward, conv_transpose2d, conv_transpose2d_backward  # noqa: F401
from .norm import (group_norm, group_norm_backward, group_norm_silu, group_norm_silu_backward,  # noqa: F401
                   layer_norm, layer_norm_backward)
from .sums import linear_backward  # noqa: F401


def enabled(x) -> bool:
    """Whether an op on ``x`` takes its fast route: the switch is on, and x is a host array or a
    float32/float64 GPU array (the fused kernels are built for those two)."""
    return backend.fast_enabled() and (not backend.is_gpu_array(x) or x.dtype.char in "fd")


def set_enabled(on: bool) -> bool:
    """Turn the fast routes on or off, everywhere; returns the previous setting."""
    return backend.set_fast(on)


@contextlib.contextmanager
def disabled():
    """``with fast.disabled():`` runs the derivation inside, then restores the setting."""
    previous = set_enabled(False)
    try:
        yield
    finally:
        set_enabled(previous)
