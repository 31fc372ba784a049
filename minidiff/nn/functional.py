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

Each backward's docstring derives it in a few lines; the code then follows the derivation in
order, quoting (``# forward was: ...``) the forward line each step undoes. Every pair is checked
against finite differences in float64 (``minidiff/nn/gradcheck.py``, ``tests/test_functional.py``)
and the convolutions and attention against the loop versions in ``minidiff/nn/reference.py``.

Contents: linear | conv2d, conv_transpose2d (im2col + one GEMM) | upsample_nearest2x, avg_pool2d |
group_norm, group_norm_silu, layer_norm | silu, gelu (+ erf), geglu, softmax | attention | embedding,
sinusoidal_embedding | dropout | mse_loss, cross_entropy.
"""
from __future__ import annotations

import math

import numpy as np

from .. import backend
from ..backend import get_array_module
from . import host        # host arrays: elementwise chains in cache-sized blocks on every core
from . import kernels     # fused CuPy kernels: a branch of some ops below, taken when backend.use_fused(x)

__all__ = [
    "linear", "linear_backward",
    "conv2d", "conv2d_backward", "conv_transpose2d", "conv_transpose2d_backward", "conv_output_size",
    "upsample_nearest2x", "upsample_nearest2x_backward", "avg_pool2d", "avg_pool2d_backward",
    "group_norm", "group_norm_backward", "group_norm_silu", "group_norm_silu_backward",
    "layer_norm", "layer_norm_backward",
    "silu", "silu_backward", "gelu", "gelu_backward", "geglu", "geglu_backward", "erf", "normal_cdf", "softmax", "softmax_backward",
    "attention", "attention_backward", "attention_probs",
    "embedding", "embedding_backward", "sinusoidal_embedding",
    "dropout", "dropout_backward",
    "mse_loss", "mse_loss_backward", "cross_entropy", "cross_entropy_backward",
]


# ================================================================================================
# argument checks (one clear line naming the op, the values, and what is allowed)
# ================================================================================================
def _floats(op, **arrays):
    """All given arrays (None skipped) share one floating dtype: no silent float32 -> float64."""
    named = [(name, a) for name, a in arrays.items() if a is not None]
    first_name, first = named[0]
    if first.dtype.kind != "f":
        raise ValueError(f"{op}: {first_name} must be a floating-point array, got dtype {first.dtype}")
    for name, a in named[1:]:
        if a.dtype != first.dtype:
            raise ValueError(f"{op}: {name} has dtype {a.dtype} but {first_name} has dtype {first.dtype}; "
                             f"cast one so they match (float32 to train, float64 to check gradients)")


def _ndim(op, name, a, ndim, layout):
    if a.ndim != ndim:
        raise ValueError(f"{op}: {name} must be {layout} ({ndim} axes), got shape {tuple(a.shape)}")


def _vector(op, name, a, size, what):
    if a is not None and tuple(a.shape) != (size,):
        raise ValueError(f"{op}: {name} must have shape ({size},) (one per {what}), got {tuple(a.shape)}")


def _int_at_least(op, name, value, low):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{op}: {name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _broadcasts_to(shape, target) -> bool:
    try:
        return np.broadcast_shapes(shape, target) == tuple(target)
    except ValueError:
        return False


def _index_array(op, name, ids, num_classes, xp):
    """Integer ids as an array of xp; the range is checked for host arrays (on a GPU that would be
    a synchronisation, so device ids are trusted)."""
    host = isinstance(ids, (list, tuple, int, np.integer, np.ndarray))
    ids = xp.asarray(ids)
    if ids.dtype.kind not in "iu":
        raise ValueError(f"{op}: {name} must be integers, got dtype {ids.dtype}")
    if host and ids.size and (int(ids.min()) < 0 or int(ids.max()) >= num_classes):
        raise ValueError(f"{op}: {name} must lie in [0, {num_classes}), "
                         f"got values from {int(ids.min())} to {int(ids.max())}")
    return ids


# ================================================================================================
# linear
# ================================================================================================
def linear(x, w, b=None):
    """y = x w^T + b

    x: (..., in), w: (out, in), b: (out,) or None  ->  y: (..., out)
    cache: (x2d (N, in), w, x_shape, has_bias)
    """
    _floats("linear", x=x, w=w, b=b)
    _ndim("linear", "w", w, 2, "(out_features, in_features)")
    if x.ndim < 1 or x.shape[-1] != w.shape[1]:
        raise ValueError(f"linear: x has shape {tuple(x.shape)} but w has shape {tuple(w.shape)}; "
                         f"x's last axis must equal w's in_features ({w.shape[1]})")
    _vector("linear", "b", b, w.shape[0], "output feature")
    x2d = x.reshape(-1, w.shape[1])                           # (N, in),  N = prod(leading axes)
    y = x2d @ w.T                                             # (N, out)
    if b is not None:
        y += b
    return y.reshape(*x.shape[:-1], w.shape[0]), (x2d, w, x.shape, b is not None)


def linear_backward(dy, cache):
    """y_ni = sum_j x_nj w_ij + b_i, so

        dx = dy w          dw = dy^T x          db = sum_n dy_n
    """
    x2d, w, x_shape, has_bias = cache
    dy2d = dy.reshape(-1, w.shape[0])                         # (N, out)
    dx = (dy2d @ w).reshape(x_shape)                          # (N, in) -> (..., in)
    dw = dy2d.T @ x2d                                         # (out, in)
    db = _sum_first(dy2d) if has_bias else None               # (out,)
    return dx, dw, db


# ================================================================================================
# convolution: im2col + one GEMM
# ================================================================================================
def conv_output_size(size, kernel_size, stride=1, padding=0):
    """floor((size + 2 padding - kernel_size) / stride) + 1: positions a kernel takes along one axis."""
    return (size + 2 * padding - kernel_size) // stride + 1


def batch_last(x, Ho, Wo) -> bool:
    """The order of an im2col matrix's columns for data like ``x``: (Ho, Wo, B) for host images of
    at most 256 positions, (B, Ho, Wo) otherwise. Either way one column is one window; only their
    order differs.

    The NumPy copies in im2col and col2im move runs of numbers that are contiguous in memory. With
    the batch first a run is one output row, Wo numbers; with the batch last it is Wo * B numbers.
    At 8x8 and 4x4 (the latent U-Net) Wo-long runs are so short that NumPy spends most of its
    time stepping from one run to the next (col2im 6.5 -> 2.4 ms for B=128, 48 channels, 8x8 on
    one core), while at 32x32 the batch-last layout's transposes cost more than they save. On a
    GPU one thread gathers each entry and the batch-first order keeps neighbouring threads on
    neighbouring pixels, so GPU arrays (and the fused kernels) always use it.
    """
    return not (backend.is_gpu_array(x) or backend.use_fused(x)) and Ho * Wo <= 256


def _window(a, rows, cols, last):
    """a[:, :, rows, cols] of a (C, B, H, W) array, or a[:, rows, cols] of a (C, H, W, B) one."""
    return a[:, rows, cols] if last else a[:, :, rows, cols]


def _copy_batch_last(x, out):
    """out[c, h, w, b] = x[b, c, h, w] for x (B, C, H, W), eight samples at a time: each chunk's
    reads stay in the CPU cache while its writes fill whole cache lines (at B=128, 48 channels,
    8x8 four times faster than one big transposing copy)."""
    for start in range(0, x.shape[0], 8):
        out[..., start:start + 8] = x[start:start + 8].transpose(1, 2, 3, 0)


def _to_columns(x, last):
    """(B, C, H, W) -> (C, B*H*W), or (C, H*W*B) with the batch last: a copy."""
    xp = get_array_module(x)
    if last:
        B, C, H, W = x.shape
        columns = xp.empty((C, H, W, B), dtype=x.dtype)
        _copy_batch_last(x, columns)
        return columns.reshape(C, -1)
    return xp.ascontiguousarray(x.transpose(1, 0, 2, 3)).reshape(x.shape[1], -1)


def _from_columns(a2d, shape, last, bias=None):
    """The inverse of _to_columns: (C, B*H*W) or (C, H*W*B) -> a C-contiguous (B, C, H, W),
    plus ``bias`` (C,) per channel when given, added in the same pass."""
    B, C, H, W = shape
    xp = get_array_module(a2d)
    if last:
        view = a2d.reshape(C, H, W, B).transpose(3, 0, 1, 2)
    else:
        view = a2d.reshape(C, B, H, W).transpose(1, 0, 2, 3)
    if bias is None:
        return xp.ascontiguousarray(view)
    return xp.add(view, bias.reshape(1, C, 1, 1), out=xp.empty(shape, dtype=a2d.dtype))


def _im2col(x, kh, kw, stride, padding, Ho, Wo):
    """Unfold every kh x kw window of the zero-padded input into one column.

    x: (B, C, H, W)  ->  col: (C*kh*kw, B*Ho*Wo), C-contiguous, with

        col[(c, i, j), (b, oy, ox)] = x_pad[c, b, stride*oy + i, stride*ox + j]

    the columns in (b, oy, ox) order, or (oy, ox, b) order when ``batch_last(x, Ho, Wo)``.
    Row (c, i, j) holds, for every window, the pixel at kernel offset (i, j) of channel c; for
    all windows at once that is one strided slice of x_pad, so the copy loops over the kh*kw
    offsets, never over pixels. x_pad is laid out channels-first, (C, B, H+2p, W+2p) (or
    (C, H+2p, W+2p, B)), like the rows and columns of col, so each slice copies without reordering.
    """
    if backend.use_fused(x):
        return kernels.im2col(x, kh, kw, stride, padding, Ho, Wo)       # one gather kernel
    last = batch_last(x, Ho, Wo)
    xp = get_array_module(x)
    B, C, H, W = x.shape
    if kh == kw == 1 and stride == 1 and padding == 0:       # a 1x1 window is the pixel itself:
        return _to_columns(x, last)                           # col = x as (C, B*H*W)
    Hp, Wp = H + 2 * padding, W + 2 * padding
    col = xp.empty((C, kh, kw) + ((Ho, Wo, B) if last else (B, Ho, Wo)), dtype=x.dtype)

    def unfold(channels):                                     # col[channels] from x[:, channels]
        x_c = x[:, channels]
        n = x_c.shape[1]
        x_pad = xp.zeros((n, Hp, Wp, B) if last else (n, B, Hp, Wp), dtype=x.dtype)
        inside = _window(x_pad, slice(padding, padding + H), slice(padding, padding + W), last)
        if last:
            _copy_batch_last(x_c, inside)                     # x_pad[c, p + y, p + x, b] = x[b, c, y, x]
        else:
            inside[...] = x_c.transpose(1, 0, 2, 3)           # x_pad[c, b, p + y, p + x] = x[b, c, y, x]
        for i in range(kh):
            for j in range(kw):
                col[channels, i, j] = _window(x_pad, slice(i, i + stride * Ho, stride),
                                              slice(j, j + stride * Wo, stride), last)

    host.for_blocks(unfold, C, col)                           # on the host: channel blocks on every core
    return col.reshape(C * kh * kw, B * Ho * Wo)


def _col2im(col, x_shape, kh, kw, stride, padding, Ho, Wo):
    """The adjoint of _im2col: add every column entry back onto the pixel it was copied from.

    col: (C*kh*kw, B*Ho*Wo)  ->  (B, C, H, W). Windows overlap, so a pixel gathers the sum of all
    the entries copied from it; again one strided ``+=`` per kernel offset.
    """
    if backend.use_fused(col):
        return kernels.col2im(col, x_shape, kh, kw, stride, padding, Ho, Wo)   # one gather kernel
    last = batch_last(col, Ho, Wo)
    xp = get_array_module(col)
    B, C, H, W = x_shape
    if kh == kw == 1 and stride == 1 and padding == 0:       # 1x1 windows do not overlap: nothing to add
        return _from_columns(col, x_shape, last)
    col = col.reshape((C, kh, kw) + ((Ho, Wo, B) if last else (B, Ho, Wo)))
    Hp, Wp = H + 2 * padding, W + 2 * padding
    x_pad = xp.zeros((C, Hp, Wp, B) if last else (C, B, Hp, Wp), dtype=col.dtype)
    for i in range(kh):
        for j in range(kw):
            _window(x_pad, slice(i, i + stride * Ho, stride), slice(j, j + stride * Wo, stride), last)[...] += \
                col[:, i, j]
    x = _window(x_pad, slice(padding, padding + H), slice(padding, padding + W), last)   # (C, B, H, W) or (C, H, W, B)
    return xp.ascontiguousarray(x.transpose((3, 0, 1, 2) if last else (1, 0, 2, 3)))  # (B, C, H, W)


def _conv_arguments(op, x, w, b, stride, padding, transposed):
    """The checks conv2d and conv_transpose2d share; returns (stride, padding) as ints."""
    layout = "(C_in, C_out, kh, kw)" if transposed else "(C_out, C_in, kh, kw)"
    _floats(op, x=x, w=w, b=b)
    _ndim(op, "x", x, 4, "(B, C_in, H, W)")
    _ndim(op, "w", w, 4, layout)
    C_in, C_out = (w.shape[0], w.shape[1]) if transposed else (w.shape[1], w.shape[0])
    if x.shape[1] != C_in:
        raise ValueError(f"{op}: x has {x.shape[1]} channels (shape {tuple(x.shape)}) but w expects {C_in} "
                         f"(shape {tuple(w.shape)} = {layout})")
    _vector(op, "b", b, C_out, "output channel")
    return _int_at_least(op, "stride", stride, 1), _int_at_least(op, "padding", padding, 0)


def conv2d(x, w, b=None, stride=1, padding=0):
    """2-D cross-correlation (what deep learning calls convolution), NCHW.

    x: (B, C_in, H, W), w: (C_out, C_in, kh, kw), b: (C_out,) or None
    y: (B, C_out, Ho, Wo),  Ho = floor((H + 2 padding - kh) / stride) + 1  (Wo alike)

        y[b, o, oy, ox] = b_o + sum_{c,i,j} w[o, c, i, j] x_pad[b, c, stride*oy + i, stride*ox + j]

    Unfold the windows into the columns of col (C_in*kh*kw, B*Ho*Wo) and the whole convolution is
    ONE matrix product, Y2d = W2d @ col, with W2d = w.reshape(C_out, C_in*kh*kw).
    cache: (col, w, x_shape, stride, padding, has_bias)
    """
    stride, padding = _conv_arguments("conv2d", x, w, b, stride, padding, transposed=False)
    B, C_in, H, W = x.shape
    C_out, _, kh, kw = w.shape
    Ho, Wo = conv_output_size(H, kh, stride, padding), conv_output_size(W, kw, stride, padding)
    if Ho < 1 or Wo < 1:
        raise ValueError(f"conv2d: a {kh}x{kw} kernel does not fit a {H}x{W} input with padding {padding}")
    col = _im2col(x, kh, kw, stride, padding, Ho, Wo)         # (C_in*kh*kw, B*Ho*Wo)
    # Y2d = W2d @ col
    y2d = w.reshape(C_out, -1) @ col                          # (C_out, B*Ho*Wo)
    cache = (col, w, x.shape, stride, padding, b is not None)
    if backend.use_fused(x):                                  # the two lines below in one launch
        return kernels.conv_output(y2d, b, (B, C_out, Ho, Wo)), cache
    # Y2d + b, laid out as (B, C_out, Ho, Wo), in one pass
    return _from_columns(y2d, (B, C_out, Ho, Wo), batch_last(x, Ho, Wo), b), cache


def conv2d_backward(dy, cache):
    """The forward is Y2d = W2d @ col (+ b), col = im2col(x), so with dY2d the upstream gradient
    laid out like Y2d:

        db   = sum of dY2d over its columns (every position of every sample)
        dW2d = dY2d @ col^T                      (matrix-product rule, as in linear)
        dcol = W2d^T @ dY2d
        dx   = col2im(dcol)   each column entry flows back to the pixel it was copied from,
                              and overlapping windows add up

    For stride 1 the last two lines are themselves a convolution. Pixel (Y, X) of x_pad met
    weight w[o, c, i, j] in output (Y - i, X - j), so

        dx_pad[b, c, Y, X] = sum_{o,i,j} w[o, c, i, j] dy[b, o, Y - i, X - j]

    which is conv2d(dy, w_flipped, padding = k - 1 - padding) with w_flipped[c, o, i, j] =
    w[o, c, k-1-i, k-1-j]: the kernel rotated by 180 degrees, input and output channels swapped.
    On the host that is faster (no C_in*k*k x B*Ho*Wo matrix to write and fold back), so the
    plain code takes it there; the GPU keeps its one-launch col2im gather.
    """
    col, w, x_shape, stride, padding, has_bias = cache
    C_out, C_in, kh, kw = w.shape
    B, _, Ho, Wo = dy.shape
    # forward was: y = Y2d laid out as (B, C_out, Ho, Wo)
    dy2d = _to_columns(dy, batch_last(dy, Ho, Wo))                # (C_out, B*Ho*Wo), a copy
    # forward was: Y2d += b
    db = _sum_last(dy2d) if has_bias else None                    # (C_out,)
    # forward was: Y2d = W2d @ col
    dw = (dy2d @ col.T).reshape(w.shape)                          # (C_out, C_in, kh, kw)
    if stride == 1 and kh == kw and padding < kh and not backend.use_fused(dy):
        # dx = conv2d(dy, w rotated 180 degrees with C_in and C_out swapped, padding k - 1 - p)
        xp = get_array_module(dy)
        w_flipped = xp.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))   # (C_in, C_out, kh, kw)
        dx, _ = conv2d(dy, w_flipped, None, stride=1, padding=kh - 1 - padding)       # (B, C_in, H, W)
        return dx, dw, db
    dcol = w.reshape(C_out, -1).T @ dy2d                          # (C_in*kh*kw, B*Ho*Wo)
    # forward was: col = im2col(x)
    dx = _col2im(dcol, x_shape, kh, kw, stride, padding, Ho, Wo)  # (B, C_in, H, W)
    return dx, dw, db


def conv_transpose2d(x, w, b=None, stride=1, padding=0, output_padding=0):
    """Transposed convolution (PyTorch's ConvTranspose2d): the adjoint of conv2d, plus a bias.

    x: (B, C_in, H, W), w: (C_in, C_out, kh, kw), b: (C_out,) or None
    y: (B, C_out, Ho, Wo),  Ho = (H - 1) stride - 2 padding + kh + output_padding  (Wo alike)

    Each input pixel stamps its kernel, scaled by its value, onto the output at stride spacing;
    overlapping stamps add. That is exactly how conv2d's backward sends dcol to dx, so:

        col = W2d^T @ X2d        W2d = w.reshape(C_in, C_out*kh*kw),  X2d: (C_in, B*H*W)
        y   = col2im(col) + b    (with conv2d's geometry: an Ho x Wo image, this stride/padding)

    output_padding (< stride) adds rows/columns at the bottom/right to pick one of the output
    sizes that stride-s conv2d maps to the same H.
    cache: (x2d, w, x_shape, stride, padding, has_bias)
    """
    stride, padding = _conv_arguments("conv_transpose2d", x, w, b, stride, padding, transposed=True)
    output_padding = _int_at_least("conv_transpose2d", "output_padding", output_padding, 0)
    if output_padding >= stride:
        raise ValueError(f"conv_transpose2d: output_padding must be smaller than stride={stride}, "
                         f"got {output_padding}")
    B, _, H, W = x.shape
    C_in, C_out, kh, kw = w.shape
    Ho = (H - 1) * stride - 2 * padding + kh + output_padding
    Wo = (W - 1) * stride - 2 * padding + kw + output_padding
    if Ho < 1 or Wo < 1:
        raise ValueError(f"conv_transpose2d: padding {padding} removes the whole {Ho + 2 * padding}x"
                         f"{Wo + 2 * padding} output of a {kh}x{kw} kernel on a {H}x{W} input")
    x2d = _to_columns(x, batch_last(x, H, W))                    # (C_in, B*H*W), columns as col2im's
    # col = W2d^T @ X2d
    col = w.reshape(C_in, -1).T @ x2d                         # (C_out*kh*kw, B*H*W)
    # y = col2im(col) + b   (the conv2d that maps y's shape back to x's shape has Ho' = H, Wo' = W)
    y = _col2im(col, (B, C_out, Ho, Wo), kh, kw, stride, padding, H, W)
    if b is not None:
        y += b[:, None, None]
    return y, (x2d, w, x.shape, stride, padding, b is not None)


def conv_transpose2d_backward(dy, cache):
    """The forward is col = W2d^T @ X2d, y = col2im(col) + b. col2im's adjoint is im2col, so

        db   = sum of dy over (B, Ho, Wo)
        dcol = im2col(dy)                 (C_out*kh*kw, B*H*W): a conv2d's unfolding of dy
        dX2d = W2d @ dcol                 so dx is conv2d(dy, w) with w read as (C_in, C_out, kh, kw)
        dW2d = X2d @ dcol^T
    """
    x2d, w, x_shape, stride, padding, has_bias = cache
    C_in, C_out, kh, kw = w.shape
    B, _, H, W = x_shape
    # forward was: y += b
    db = dy.sum(axis=(0, 2, 3)) if has_bias else None             # (C_out,)
    # forward was: y = col2im(col)
    dcol = _im2col(dy, kh, kw, stride, padding, H, W)             # (C_out*kh*kw, B*H*W)
    # forward was: col = W2d^T @ X2d
    dx2d = w.reshape(C_in, -1) @ dcol                             # (C_in, B*H*W)
    dw = (x2d @ dcol.T).reshape(w.shape)                          # (C_in, C_out, kh, kw)
    # forward was: X2d = x as columns
    dx = _from_columns(dx2d, x_shape, batch_last(dy, H, W))           # (B, C_in, H, W)
    return dx, dw, db


# ================================================================================================
# resampling
# ================================================================================================
def upsample_nearest2x(x):
    """Nearest-neighbour 2x upsampling: every pixel becomes a 2x2 block.

    x: (B, C, H, W) -> y: (B, C, 2H, 2W),  y[b, c, 2i + di, 2j + dj] = x[b, c, i, j]
    cache: x_shape
    """
    _floats("upsample_nearest2x", x=x)
    _ndim("upsample_nearest2x", "x", x, 4, "(B, C, H, W)")
    xp = get_array_module(x)
    B, C, H, W = x.shape
    blocks = xp.broadcast_to(x[:, :, :, None, :, None], (B, C, H, 2, W, 2))   # (B, C, H, 2, W, 2)
    return blocks.reshape(B, C, 2 * H, 2 * W), x.shape


def upsample_nearest2x_backward(dy, cache):
    """Each x pixel was copied into the four entries of its 2x2 block, so dx is the block's sum."""
    # dx = dy[2i, 2j] + dy[2i, 2j + 1] + dy[2i + 1, 2j] + dy[2i + 1, 2j + 1]: the block's four
    # corners are four strided views of dy, so three adds (NumPy's sum over the two length-2 axes
    # of a (B, C, H, 2, W, 2) view is several times slower)
    dx = dy[:, :, 0::2, 0::2] + dy[:, :, 0::2, 1::2]         # (B, C, H, W)
    dx += dy[:, :, 1::2, 0::2]
    dx += dy[:, :, 1::2, 1::2]
    return dx


def avg_pool2d(x, kernel_size=2):
    """Average over non-overlapping k x k windows (stride k, as PyTorch's AvgPool2d(k)).

    x: (B, C, H, W) -> y: (B, C, H // k, W // k); trailing rows/columns that do not fill a window
    are dropped (floor), as in PyTorch.
        y[b, c, i, j] = mean_{di, dj < k} x[b, c, k i + di, k j + dj]
    cache: (x_shape, kernel_size)
    """
    _floats("avg_pool2d", x=x)
    _ndim("avg_pool2d", "x", x, 4, "(B, C, H, W)")
    k = _int_at_least("avg_pool2d", "kernel_size", kernel_size, 1)
    B, C, H, W = x.shape
    Ho, Wo = H // k, W // k
    if Ho < 1 or Wo < 1:
        raise ValueError(f"avg_pool2d: kernel_size={k} is larger than the {H}x{W} input")
    windows = x[:, :, :Ho * k, :Wo * k].reshape(B, C, Ho, k, Wo, k)          # (B, C, Ho, k, Wo, k)
    return windows.mean(axis=(3, 5)), (x.shape, k)


def avg_pool2d_backward(dy, cache):
    """y = (1/k^2) sum of a window, so each pixel of the window gets dy / k^2 (dropped ones get 0)."""
    x_shape, k = cache
    xp = get_array_module(dy)
    B, C, Ho, Wo = dy.shape
    dx = xp.zeros(x_shape, dtype=dy.dtype)
    share = xp.broadcast_to((dy * (1.0 / (k * k)))[:, :, :, None, :, None], (B, C, Ho, k, Wo, k))
    dx[:, :, :Ho * k, :Wo * k] = share.reshape(B, C, Ho * k, Wo * k)
    return dx


# ================================================================================================
# normalisation: GroupNorm and LayerNorm share "normalise over the last axis"
# ================================================================================================
def _sum_last(a, keepdims=False):
    """sum(a, axis=-1). On the host as one BLAS matrix-vector product, (rows, n) @ ones(n):
    NumPy's own reduction over a short last axis (a group's or a token's numbers) is ~8x slower.
    A GPU array keeps its one reduction kernel (the product would add a launch to fill the ones)."""
    if backend.is_gpu_array(a):
        return a.sum(axis=-1, keepdims=keepdims)
    total = a.reshape(-1, a.shape[-1]) @ np.ones(a.shape[-1], dtype=a.dtype)
    return total.reshape(a.shape[:-1] + ((1,) if keepdims else ()))


def _sum_first(a2d):
    """sum(a2d, axis=0); on the host as ones(rows) @ a2d, one BLAS matrix-vector product."""
    if backend.is_gpu_array(a2d):
        return a2d.sum(axis=0)
    return np.ones(a2d.shape[0], dtype=a2d.dtype) @ a2d


def _rowdot(a, b):
    """sum(a * b, axis=-1, keepdims=True) as a batched matrix product: one BLAS pass over the
    data and no (a * b) temporary."""
    return (a[..., None, :] @ b[..., :, None])[..., 0]


def _normalize(x, eps):
    """x_hat = (x - mu) / sqrt(var + eps) over the last axis (N values; two-pass variance).

    Returns x_hat (a new array, x's shape) and inv_std = 1 / sqrt(var + eps) (last axis 1).
    """
    xp = get_array_module(x)
    mu = _sum_last(x, keepdims=True) * (1.0 / x.shape[-1])
    x_hat = x - mu                                            # x - mu
    var = _rowdot(x_hat, x_hat) * (1.0 / x.shape[-1])         # var = mean((x - mu)^2)
    inv_std = 1.0 / xp.sqrt(var + eps)                        # 1 / sqrt(var + eps)
    x_hat *= inv_std
    return x_hat, inv_std


def _normalize_backward(dx_hat, x_hat, inv_std):
    """Gradient through x_hat = (x - mu) * inv_std, mu and var taken over the last axis (N values).

    With dmu/dx_j = 1/N, dvar/dx_j = 2 (x_j - mu) / N and d inv_std / dvar = -inv_std^3 / 2:

        dx_hat_i / dx_j = inv_std (delta_ij - 1/N - x_hat_i x_hat_j / N)

    and summing against g = dL/dx_hat:

        dx = inv_std * (g - mean(g) - x_hat * mean(g * x_hat))

    dx_hat (a fresh array from the caller) is overwritten and returned as dx.
    """
    mean_g = _sum_last(dx_hat, keepdims=True) * (1.0 / x_hat.shape[-1])  # mean(g)
    mean_g_xhat = _rowdot(dx_hat, x_hat) * (1.0 / x_hat.shape[-1])      # mean(g * x_hat)
    dx = dx_hat
    dx -= mean_g
    dx -= x_hat * mean_g_xhat
    dx *= inv_std
    return dx


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
    _floats("group_norm", x=x, gamma=gamma, beta=beta)
    if x.ndim < 2:
        raise ValueError(f"group_norm: x must be (B, C, ...), got shape {tuple(x.shape)}")
    B, C = x.shape[:2]
    G = _int_at_least("group_norm", "num_groups", num_groups, 1)
    if C % G:
        raise ValueError(f"group_norm: {C} channels do not divide into {G} groups (x shape {tuple(x.shape)})")
    _vector("group_norm", "gamma", gamma, C, "channel")
    _vector("group_norm", "beta", beta, C, "channel")
    if backend.use_fused(x):
        return kernels.group_norm(x, gamma, beta, G, eps)
    x_hat, inv_std = _normalize(x.reshape(B, G, -1), eps)     # (B, G, N), (B, G, 1)
    per_channel = (1, C) + (1,) * (x.ndim - 2)
    # y = gamma * x_hat + beta
    y = x_hat.reshape(x.shape) * gamma.reshape(per_channel)
    y += beta.reshape(per_channel)
    return y, (x_hat, inv_std, gamma)


def group_norm_backward(dy, cache):
    """y = gamma_c x_hat + beta_c per channel c, x_hat = normalise(x) per (sample, group):

        dbeta_c  = sum over samples and positions of dy
        dgamma_c = sum over samples and positions of dy * x_hat
        g = dx_hat = gamma_c dy,  then per group (see _normalize_backward)
        dx = inv_std (g - mean(g) - x_hat mean(g x_hat))

    The two group means need no pass of their own: a group's sum of g = gamma_c dy is the
    gamma-weighted sum of its channels' sums of dy, and likewise for g x_hat with the sums of
    dy x_hat, the very per-(sample, channel) sums that dbeta and dgamma are made of.
    """
    if backend.use_fused(dy):
        return kernels.group_norm_backward(dy, cache)
    x_hat, inv_std, gamma = cache                                           # (B, G, N), (B, G, 1), (C,)
    B, G, N = x_hat.shape
    C = gamma.shape[0]
    dy_c = dy.reshape(B, C, -1)                                             # (B, C, H*W)
    x_hat_c = x_hat.reshape(dy_c.shape)                                     # (B, C, H*W)
    sum_dy = _sum_last(dy_c)                                                # (B, C)
    sum_dy_xhat = _rowdot(dy_c, x_hat_c)[..., 0]                            # (B, C)
    # forward was: y = gamma * x_hat + beta
    dbeta = sum_dy.sum(axis=0)                                              # (C,)
    dgamma = sum_dy_xhat.sum(axis=0)                                        # (C,)
    # forward was: x_hat, inv_std = normalise(x.reshape(B, G, N)), with g = gamma * dy
    mean_g = (sum_dy * gamma).reshape(B, G, -1).sum(axis=-1, keepdims=True) * (1.0 / N)            # (B, G, 1)
    mean_g_xhat = (sum_dy_xhat * gamma).reshape(B, G, -1).sum(axis=-1, keepdims=True) * (1.0 / N)  # (B, G, 1)
    # dx = inv_std (gamma dy - mean(g) - x_hat mean(g x_hat)), in the (B, G, C/G, H*W) view
    per_group = (B, G, C // G, -1)
    dx = dy_c.reshape(per_group) * (gamma.reshape(1, G, -1, 1) * inv_std[..., None])
    dx -= x_hat.reshape(per_group) * (inv_std * mean_g_xhat)[..., None]
    dx -= (inv_std * mean_g)[..., None]
    return dx.reshape(dy.shape), dgamma, dbeta


def group_norm_silu(x, gamma, beta, num_groups, eps=1e-5):
    """SiLU(GroupNorm(x)): the pair that opens every ResBlock branch, as one op.

        a = gamma_c x_hat + beta_c     (group_norm above)
        y = a * sigmoid(a)             (silu below)

    On a GPU both run in one kernel launch; here they are the two ops in turn.
    cache: (x_hat (B, G, N), inv_std (B, G, 1), gamma, beta): a is recomputed in backward, which
    costs less than keeping it.
    """
    if backend.use_fused(x):
        return kernels.group_norm_silu(x, gamma, beta, num_groups, eps)
    a, (x_hat, inv_std, gamma) = group_norm(x, gamma, beta, num_groups, eps)
    y, _ = silu(a)
    return y, (x_hat, inv_std, gamma, beta)


def group_norm_silu_backward(dy, cache):
    """Chain rule through the two steps: da = silu_backward(dy) at a = gamma x_hat + beta, then
    (dx, dgamma, dbeta) = group_norm_backward(da)."""
    if backend.use_fused(dy):
        return kernels.group_norm_silu_backward(dy, cache)
    x_hat, inv_std, gamma, beta = cache
    per_channel = (1, gamma.shape[0]) + (1,) * (dy.ndim - 2)
    # forward was: a = gamma * x_hat + beta;  y = silu(a)
    a = x_hat.reshape(dy.shape) * gamma.reshape(per_channel) + beta.reshape(per_channel)
    da = silu_backward(dy, silu(a)[1])
    return group_norm_backward(da, (x_hat, inv_std, gamma))


def layer_norm(x, gamma, beta, eps=1e-5):
    """LayerNorm over the last axis (D features), then a per-feature scale and shift.

    x: (..., D), gamma, beta: (D,)
        x_hat = (x - mean(x)) / sqrt(var(x) + eps)   (statistics over the last axis)
        y = gamma * x_hat + beta
    cache: (x_hat (..., D), inv_std (..., 1), gamma)
    """
    _floats("layer_norm", x=x, gamma=gamma, beta=beta)
    if x.ndim < 1:
        raise ValueError("layer_norm: x must have at least one axis")
    D = x.shape[-1]
    _vector("layer_norm", "gamma", gamma, D, "feature of x's last axis")
    _vector("layer_norm", "beta", beta, D, "feature of x's last axis")
    if backend.use_fused(x):
        return kernels.layer_norm(x, gamma, beta, eps)
    x_hat, inv_std = _normalize(x, eps)                       # (..., D), (..., 1)
    # y = gamma * x_hat + beta
    y = x_hat * gamma
    y += beta
    return y, (x_hat, inv_std, gamma)


def layer_norm_backward(dy, cache):
    """As group_norm_backward with one group per row: dbeta = sum dy, dgamma = sum dy x_hat,
    dx_hat = gamma dy, dx = inv_std (dx_hat - mean(dx_hat) - x_hat mean(dx_hat x_hat))."""
    if backend.use_fused(dy):
        return kernels.layer_norm_backward(dy, cache)
    x_hat, inv_std, gamma = cache
    D = gamma.shape[0]
    # forward was: y = gamma * x_hat + beta
    dbeta = _sum_first(dy.reshape(-1, D))                     # (D,)
    dgamma = _sum_first((dy * x_hat).reshape(-1, D))          # (D,)
    dx_hat = dy * gamma                                       # (..., D)
    # forward was: x_hat, inv_std = normalise(x)
    return _normalize_backward(dx_hat, x_hat, inv_std), dgamma, dbeta


# ================================================================================================
# activations
# ================================================================================================
def silu(x):
    """y = x * sigmoid(x),  sigmoid(x) = 1 / (1 + exp(-x)).   cache: (x, s) with s = sigmoid(x)"""
    _floats("silu", x=x)
    if backend.use_fused(x):
        return kernels.silu(x)
    y, s = host.map_rows(_silu, x)                            # on the host: in blocks, on every core
    return y, (x, s)


def _silu(x):
    xp = get_array_module(x)
    s = xp.exp(-xp.maximum(x, -80.0))                         # exp(-x); the clip keeps it finite in float32
    s += 1.0
    xp.reciprocal(s, out=s)                                   # s = 1 / (1 + exp(-x))  (sigmoid(-80) ~ 2e-35)
    return x * s, s


def silu_backward(dy, cache):
    """sigmoid' = s (1 - s), so dy/dx = s + x s (1 - s) = s (1 + x (1 - s))."""
    if backend.use_fused(dy):
        return kernels.silu_backward(dy, cache)
    x, s = cache
    return host.map_rows(_silu_grad, dy, x, s)


def _silu_grad(dy, x, s):
    return dy * s * (1.0 + x * (1.0 - s))


# erf by W. J. Cody-style rational approximations, coefficients from S. L. Moshier's Cephes
# library (ndtr.c):  erf(x) = x T(x^2) / U(x^2) for |x| < 1;  erfc(x) = exp(-x^2) P(x) / Q(x) for
# 1 <= x <= 8 (and erf(x) = 1 to double precision beyond 8). U and Q have a leading 1 not stored.
# Absolute error below 1e-14 in float64 (checked against math.erf in tests/test_functional.py).
_ERF_T = (9.60497373987051638749E0, 9.00260197203842689217E1, 2.23200534594684319226E3,
          7.00332514112805075473E3, 5.55923013010394962768E4)
_ERF_U = (3.35617141647503099647E1, 5.21357949780152679795E2, 4.59432382970980127987E3,
          2.26290000613890934246E4, 4.92673942608635921086E4)
_ERFC_P = (2.46196981473530512524E-10, 5.64189564831068821977E-1, 7.46321056442269912687E0,
           4.86371970985681366614E1, 1.96520832956077098242E2, 5.26445194995477358631E2,
           9.34528527171957607540E2, 1.02755188689515710272E3, 5.57535335369399327526E2)
# erfc(x) = exp(-x^2) R(x) / S(x) for x >= 8 (Cephes again); S has a leading 1 not stored.
_ERFC_R = (5.64189583547755073984E-1, 1.27536670759978104416E0, 5.01905042251180477414E0,
           6.16021097993053585195E0, 7.40974269950448939160E0, 2.97886665372100240670E0)
_ERFC_S = (2.26052863220117276590E0, 9.39603524938001434673E0, 1.20489539808096656605E1,
           1.70814450747565897222E1, 9.60896809063285878198E0, 3.36907645100081516050E0)
_ERFC_Q = (1.32281951154744992508E1, 8.67072140885989742329E1, 3.54937778887819891062E2,
           9.75708501743205489753E2, 1.82390916687909736289E3, 2.24633760818710981792E3,
           1.65666309194161350182E3, 5.57535340817727675546E2)


def _polynomial(z, coefficients, leading_one=False):
    """Horner's rule, highest power first: c_0 z^n + c_1 z^(n-1) + ... + c_n,
    with an extra leading 1 * z^(n+1) when ``leading_one`` (Cephes' p1evl)."""
    coefficients = ((1.0,) if leading_one else ()) + tuple(coefficients)
    result = coefficients[0] * z + coefficients[1]
    for c in coefficients[2:]:
        result *= z
        result += c
    return result


def _erfc_tail(z):
    """erfc(z) for z >= 1 (float64, Cephes): exp(-z^2) P(z) / Q(z) below 8, exp(-z^2) R(z) / S(z)
    from 8 on. Computed from exp(-z^2) directly, so it keeps its relative accuracy where
    1 - erf(z) would be rounding error. (Entries below 1 get numbers the callers discard.)"""
    xp = get_array_module(z)
    return xp.exp(-z * z) * xp.where(
        z < 8.0, _polynomial(z, _ERFC_P) / _polynomial(z, _ERFC_Q, leading_one=True),
        _polynomial(z, _ERFC_R) / _polynomial(z, _ERFC_S, leading_one=True))


def erf(x):
    """The error function erf(x) = 2/sqrt(pi) int_0^x exp(-t^2) dt, elementwise, in x's dtype.

    NumPy has no erf; this rational approximation is accurate to ~1e-14 in float64, so that
    gelu's exact derivative Phi(x) + x phi(x) matches finite differences of gelu itself.
    """
    xp = get_array_module(x)
    x = xp.clip(x, -8.0, 8.0)                                 # erf(8) = 1 - 1e-29: 1 in float64
    a = xp.abs(x)
    z = x * x
    near_zero = x * _polynomial(z, _ERF_T) / _polynomial(z, _ERF_U, leading_one=True)
    away = xp.sign(x) * (1.0 - _erfc_tail(a))                # erf(x) = sign(x) (1 - erfc(|x|))
    return xp.where(a < 1.0, near_zero, away)


# erfc to float32 precision in one formula for z >= 0 (Numerical Recipes' erfcc, a Chebyshev fit
# with fractional error below 1.2e-7):  t = 1 / (1 + z/2),  erfc(z) = t exp(-z^2 + P(t)).
_ERFC_FLOAT32 = (0.17087277, -0.82215223, 1.48851587, -1.13520398, 0.27886807, -0.18628806,
                 0.09678418, 0.37409196, 1.00002368, -1.26551223)


def normal_cdf(x):
    """Phi(x) = P(N(0, 1) <= x) = (1 + erf(x / sqrt 2)) / 2, elementwise, in x's dtype.

    float64 goes through erf above (~1e-14). float32 uses the tail function instead:
    with e = erfc(|x| / sqrt 2) / 2,  Phi(x) = 1 - e for x >= 0 and e for x < 0. One short formula
    covers every x to float32's precision (also deep in the lower tail, where 1 + erf would cancel),
    at about half the array passes of erf's two branches: GELU is a sizeable share of a CPU step.
    """
    if x.dtype != np.float32:
        xp = get_array_module(x)
        z = xp.abs(x) * (1.0 / math.sqrt(2.0))
        # e = erfc(z) / 2: 1 - erf(z) near 0, where nothing cancels; the tail formulas beyond,
        # so that Phi keeps its relative accuracy far into the lower tail (Phi(-8) = 6e-16, where
        # 1 + erf(x / sqrt 2) would be pure rounding error, and so would its finite differences)
        tail = 0.5 * xp.where(z < 1.0, 1.0 - erf(z), _erfc_tail(xp.maximum(z, 1.0)))
        return xp.where(x >= 0, 1.0 - tail, tail)
    # on the host, one cache-sized block at a time, on every core (nn/host.py): each of the ~25
    # passes below then reads its block from the CPU cache instead of main memory
    return host.map_rows(_normal_cdf_float32, x)


def _normal_cdf_float32(x):
    xp = get_array_module(x)
    z = xp.abs(x) * np.float32(1.0 / math.sqrt(2.0))
    t = 1.0 / (1.0 + 0.5 * z)
    exponent = _polynomial(t, _ERFC_FLOAT32)
    exponent -= z * z                                         # -z^2 + P(t)
    tail = xp.exp(exponent, out=exponent)
    tail *= 0.5 * t                                           # e = erfc(z) / 2
    return xp.where(x >= 0, 1.0 - tail, tail)


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_TANH_C = 0.044715


def gelu(x, approximate="none"):
    """GELU: y = x Phi(x), Phi the standard normal CDF.

    approximate="none":  Phi(x) = (1 + erf(x / sqrt 2)) / 2             (exact)
    approximate="tanh":  Phi(x) ~ (1 + tanh(u)) / 2,  u = sqrt(2/pi) (x + 0.044715 x^3)
    cache: (x, Phi or tanh(u), approximate)
    """
    _floats("gelu", x=x)
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    if backend.use_fused(x):
        return kernels.gelu(x, approximate)
    y, phi_cdf = host.map_rows(_gelu if approximate == "none" else _gelu_tanh, x)
    return y, (x, phi_cdf, approximate)


def _gelu(x):
    phi_cdf = normal_cdf(x)                                   # Phi(x)
    return x * phi_cdf, phi_cdf


def _gelu_tanh(x):
    xp = get_array_module(x)
    phi_cdf = xp.tanh(_SQRT_2_OVER_PI * (x + _GELU_TANH_C * x * x * x))   # tanh(u)
    phi_cdf += 1.0
    phi_cdf *= 0.5                                            # (1 + tanh u) / 2
    return x * phi_cdf, phi_cdf


def gelu_backward(dy, cache):
    """exact:  d/dx [x Phi(x)] = Phi(x) + x phi(x),  phi(x) = exp(-x^2/2) / sqrt(2 pi)
    tanh:   with T = (1 + tanh u)/2 and tanh' = 1 - tanh^2 = 4 T (1 - T):
            d/dx [x T] = T + x * 2 T (1 - T) * du/dx,  du/dx = sqrt(2/pi) (1 + 3 * 0.044715 x^2)
    """
    if backend.use_fused(dy):
        return kernels.gelu_backward(dy, cache)
    x, phi_cdf, approximate = cache
    return host.map_rows(_gelu_grad if approximate == "none" else _gelu_tanh_grad, dy, x, phi_cdf)


def _gelu_grad(dy, x, phi_cdf):
    xp = get_array_module(x)
    density = xp.exp(-0.5 * x * x) * (1.0 / math.sqrt(2.0 * math.pi))     # phi(x)
    return dy * (phi_cdf + x * density)


def _gelu_tanh_grad(dy, x, phi_cdf):
    du_dx = _SQRT_2_OVER_PI * (1.0 + 3.0 * _GELU_TANH_C * x * x)
    return dy * (phi_cdf + x * 2.0 * phi_cdf * (1.0 - phi_cdf) * du_dx)


def geglu(h):
    """The gated GELU of Stable Diffusion's feed-forward (GEGLU):

        [a, gate] = h       (the two halves of h's last axis)
        y = a * GELU(gate)

    h: (..., 2n)  ->  y: (..., n).  cache: (a, g = GELU(gate), gate, Phi(gate))
    One op instead of gelu and a product, so that on the host the whole chain runs in blocks
    on every core and the backward writes [da, dgate] straight into one array.
    """
    _floats("geglu", h=h)
    if h.ndim < 1 or h.shape[-1] % 2:
        raise ValueError(f"geglu: h's last axis must hold the two halves [a, gate], so it must have an even "
                         f"length; got shape {tuple(h.shape)}")
    n = h.shape[-1] // 2
    a, gate = h[..., :n], h[..., n:]                          # (..., n) each
    y, g, phi_cdf = host.map_rows(_geglu, a, gate)
    return y, (a, g, gate, phi_cdf)


def _geglu(a, gate):
    g, (_, phi_cdf, _) = gelu(gate)                           # g = GELU(gate) = gate Phi(gate)
    return a * g, g, phi_cdf                                  # y = a * g


def geglu_backward(dy, cache):
    """y = a * g with g = GELU(gate), so

        da = dy * g          dgate = gelu_backward(dy * a) = dy * a * (Phi(gate) + gate phi(gate))

    returned side by side, dh = [da, dgate]: (..., 2n), the gradient of h."""
    return host.map_rows(_geglu_grad, dy, *cache)


def _geglu_grad(dy, a, g, gate, phi_cdf):
    xp = get_array_module(dy)
    n = dy.shape[-1]
    dh = xp.empty(dy.shape[:-1] + (2 * n,), dtype=dy.dtype)
    # forward was: y = a * g
    xp.multiply(dy, g, out=dh[..., :n])                       # da = dy g
    # forward was: g = GELU(gate)
    dh[..., n:] = gelu_backward(dy * a, (gate, phi_cdf, "none"))   # dgate
    return dh


def _softmax_inplace(z, axis):
    """z <- softmax(z) along axis, in place (z is a buffer the caller owns).

    Subtracting the row maximum first keeps exp from overflowing (nanmax is that maximum, via
    NumPy's faster fmax reduction). A row whose entries are all -inf (attention with every key
    masked) becomes all zeros instead of 0/0 = NaN.
    """
    if backend.use_fused(z) and axis in (-1, z.ndim - 1):
        return kernels.softmax_(z)
    xp = get_array_module(z)
    m = xp.nanmax(z, axis=axis, keepdims=True)
    m = xp.where(m == -xp.inf, 0.0, m).astype(z.dtype, copy=False)
    z -= m                                                    # x - max(x)
    xp.exp(z, out=z)                                          # e = exp(x - max)
    total = _sum_last(z, keepdims=True) if axis in (-1, z.ndim - 1) else z.sum(axis=axis, keepdims=True)
    z *= 1.0 / xp.where(total == 0, 1.0, total).astype(z.dtype, copy=False)   # e / sum(e)
    return z


def softmax(x, axis=-1):
    """y = exp(x - max x) / sum(exp(x - max x)) along ``axis``.
    A row of only -inf gives zeros (defined so masked attention never produces NaN).
    cache: (y, axis)"""
    _floats("softmax", x=x)
    y = _softmax_inplace(x.copy(), axis)
    return y, (y, axis)


def softmax_backward(dy, cache):
    """dy_i/dx_j = y_i (delta_ij - y_j), so dx_j = sum_i dy_i y_i (delta_ij - y_j)
                                              = y_j (dy_j - sum_i dy_i y_i)."""
    y, axis = cache
    if backend.use_fused(dy) and axis in (-1, y.ndim - 1):
        return kernels.softmax_backward(dy, y)
    if axis in (-1, y.ndim - 1):
        dot = _rowdot(dy, y)                                  # sum_i dy_i y_i (one BLAS pass)
    else:
        dot = (dy * y).sum(axis=axis, keepdims=True)          # sum_i dy_i y_i
    dx = dy - dot
    dx *= y
    return dx


# ================================================================================================
# attention
# ================================================================================================
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
    _floats("attention", q=q, k=k, v=v)
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
        if mask.dtype != bool or not _broadcasts_to(mask.shape, scores_shape):
            raise ValueError(f"attention: mask must be a bool array broadcastable to (B, heads, Lq, Lk) = "
                             f"{scores_shape}, got dtype {mask.dtype} and shape {tuple(mask.shape)}")
    if backend.use_fused(q) and q.ndim == 4 and max(q.shape[-1], v.shape[-1]) <= kernels.MAX_HEAD_DIM:
        out, P = kernels.attention(q, k, v, mask, scale)      # all of the below in one launch
        return out, (q, k, v, P, scale)
    if mask is not None:
        # 0 where the mask allows, -inf where it does not; built at the mask's own (small) shape
        mask = xp.where(mask, 0.0, -xp.inf).astype(q.dtype, copy=False)
    # samples are independent: on the host, blocks of them go to every core (nn/host.py)
    if mask is not None and mask.ndim == q.ndim and mask.shape[0] > 1:      # a mask row per sample
        out, P = host.map_rows(lambda *rows: _attention(*rows, scale), q, k, v, mask)
    else:
        out, P = host.map_rows(lambda *rows: _attention(*rows, mask, scale), q, k, v)
    return out, (q, k, v, P, scale)


def _attention(q, k, v, mask, scale):
    """attention's math for a block of samples; mask: None or additive (0 / -inf)."""
    # S = q k^T / sqrt(d)
    scores = q @ k.swapaxes(-1, -2)                           # (B, heads, Lq, Lk)
    scores *= scale
    if mask is not None:
        scores += mask                                        # S + mask: -inf where not allowed
    # P = softmax(S)
    P = _softmax_inplace(scores, axis=-1)                     # (B, heads, Lq, Lk)
    # O = P v
    out = P @ v                                               # (B, heads, Lq, dv)
    return out, P


def attention_backward(d_out, cache):
    """Undo the three forward steps in reverse:

        O = P v:                dv = P^T dO,   dP = dO v^T
        P = softmax(S):         dS = P * (dP - rowsum(dP * P))   (softmax_backward; masked: P = 0 -> dS = 0)
        S = q k^T scale:        dq = dS k * scale,   dk = dS^T q * scale
    """
    q, k, v, P, scale = cache
    return host.map_rows(lambda *rows: _attention_backward(*rows, scale), d_out, q, k, v, P)


def _attention_backward(d_out, q, k, v, P, scale):
    """attention_backward's math for a block of samples."""
    # forward was: O = P v
    dv = P.swapaxes(-1, -2) @ d_out                           # (B, heads, Lk, dv)
    dP = d_out @ v.swapaxes(-1, -2)                           # (B, heads, Lq, Lk)
    # forward was: P = softmax(S)
    dS = softmax_backward(dP, (P, -1))                        # (B, heads, Lq, Lk)
    # forward was: S = q k^T * scale
    dS *= scale
    dq = dS @ k                                               # (B, heads, Lq, d)
    dk = dS.swapaxes(-1, -2) @ q                              # (B, heads, Lk, d)
    return dq, dk, dv


def attention_probs(cache):
    """The attention probabilities P (B, heads, Lq, Lk) kept in an attention cache (for pictures)."""
    return cache[3]


# ================================================================================================
# embeddings
# ================================================================================================
def embedding(ids, weight):
    """Look up rows of a table: y[...] = weight[ids[...]].

    ids: integers (...) in [0, V), weight: (V, D)  ->  y: (..., D)
    cache: (ids, weight_shape)
    """
    _floats("embedding", weight=weight)
    _ndim("embedding", "weight", weight, 2, "(num_embeddings, dim)")
    xp = get_array_module(weight)
    ids = _index_array("embedding", "ids", ids, weight.shape[0], xp)
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
    dim = _int_at_least("sinusoidal_embedding", "dim", dim, 2)
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


# ================================================================================================
# dropout
# ================================================================================================
def dropout(x, p, rng, training=True):
    """Inverted dropout: y = x * m / (1 - p), m_i ~ Bernoulli(1 - p) drawn from ``rng``.

    The 1/(1 - p) keeps E[y] = x, so evaluation (training=False or p = 0) is the identity.
    rng: a numpy or cupy Generator (backend.rng); draws from a host generator are copied to x's
    device. cache: the scaled mask m / (1 - p) (x's dtype), or None for the identity.
    """
    _floats("dropout", x=x)
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


# ================================================================================================
# losses (scalar outputs are 0-d arrays on the data's device: no synchronisation)
# ================================================================================================
def _upstream(d_loss, like):
    """The upstream gradient of a scalar loss (1.0 usually) as a 0-d array of ``like``'s dtype."""
    return get_array_module(like).asarray(d_loss, dtype=like.dtype)


def mse_loss(pred, target):
    """loss = mean((pred - target)^2) over every element.   cache: (pred - target)"""
    _floats("mse_loss", pred=pred, target=target)
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
        log p = logits - logsumexp(logits)     stable: logsumexp = m + log sum exp(logits - m)
        loss  = -(1/N) sum_n log p[n, targets[n]]
    cache: (p = softmax(logits) (N, K), targets (N,), logits_shape)
    """
    _floats("cross_entropy", logits=logits)
    xp = get_array_module(logits)
    if logits.ndim < 1:
        raise ValueError("cross_entropy: logits must be (N, K)")
    K = logits.shape[-1]
    targets = _index_array("cross_entropy", "targets", targets, K, xp)
    if targets.shape != logits.shape[:-1]:
        raise ValueError(f"cross_entropy: targets must have shape {tuple(logits.shape[:-1])} "
                         f"(one class per row of logits {tuple(logits.shape)}), got {tuple(targets.shape)}")
    z = logits.reshape(-1, K)                                                   # (N, K)
    rows = xp.arange(z.shape[0])
    shifted = z - z.max(axis=1, keepdims=True)                                  # logits - m
    log_p = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))        # log softmax
    loss = -log_p[rows, targets.reshape(-1)].mean()
    return loss, (xp.exp(log_p), targets.reshape(-1), logits.shape)


def cross_entropy_backward(d_loss, cache):
    """dloss/dlogits[n] = (softmax(logits[n]) - onehot(targets[n])) / N   (grad of the logits only)."""
    p, targets, logits_shape = cache
    xp = get_array_module(p)
    dlogits = p.copy()
    dlogits[xp.arange(p.shape[0]), targets] -= 1.0            # p - onehot
    dlogits *= _upstream(d_loss, p) * (1.0 / p.shape[0])
    return dlogits.reshape(logits_shape)


if __name__ == "__main__":
    image = np.arange(25.0).reshape(1, 1, 5, 5)
    box = np.full((1, 1, 3, 3), 1 / 9)
    y, (col, *_) = conv2d(image, box, padding=1)
    print(f"3x3 box blur of a 5x5 ramp via im2col: col {col.shape} -> y {y.shape}\n{y[0, 0].round(2)}")
    q = k = v = np.random.default_rng(0).standard_normal((1, 1, 4, 2))
    out, cache = attention(q, k, v, mask=np.tril(np.ones((4, 4), bool)))
    print(f"causal attention probabilities (rows sum to 1, zeros above the diagonal):\n"
          f"{attention_probs(cache)[0, 0].round(3)}")
