"""Convolution's fast routes: batch-last columns, channel blocks on every core, a flipped-kernel
backward on the host, and the fused gather kernels on a GPU.

The derivation (nn/ops/conv.py) unfolds the windows into col (C*kh*kw, B*Ho*Wo) with its columns
in (b, oy, ox) order and folds them back with col2im. Here the same matrices are made faster:

* Batch-last columns. NumPy's copies in im2col and col2im move runs of numbers that are
  contiguous in memory. With the batch first a run is one output row, Wo numbers; with the batch
  last, columns in (oy, ox, b) order, it is Wo * B numbers. At 8x8 and 4x4 (the latent U-Net)
  Wo-long runs are so short that NumPy spends most of its time stepping from one run to the next
  (col2im 6.5 -> 2.4 ms for B=128, 48 channels, 8x8 on one core), while at 32x32 the batch-last
  layout's transposes cost more than they save: ``batch_last`` picks it for host images of at
  most 256 positions. On a GPU one thread gathers each entry and the batch-first order keeps
  neighbouring threads on neighbouring pixels, so GPU arrays (and the fused kernels) always use
  it. The order is kept in the cache (its last entry), so the backward reads the columns the
  way its forward wrote them.
* Channel blocks. im2col unfolds blocks of channels on every core (blocks.for_blocks).
* Copies eight samples at a time (_copy_batch_last): each chunk's reads stay in the CPU cache
  while its writes fill whole cache lines (at B=128, 48 channels, 8x8 four times faster than one
  big transposing copy).
* The stride-1 backward as a convolution. Pixel (Y, X) of x_pad met weight w[o, c, i, j] in
  output (Y - i, X - j), so

      dx_pad[b, c, Y, X] = sum_{o,i,j} w[o, c, i, j] dy[b, o, Y - i, X - j]

  which is conv2d(dy, w_flipped, padding = k - 1 - padding) with w_flipped[c, o, i, j] =
  w[o, c, k-1-i, k-1-j]: the kernel rotated by 180 degrees, input and output channels swapped.
  On the host that is faster than dcol = W2d^T dY2d and col2im (no C_in*k*k x B*Ho*Wo matrix to
  write and fold back); the GPU keeps its one-launch col2im gather.
* conv2d adds its bias while laying out the output (one pass instead of two); on a GPU one
  kernel (kernels.conv_output) does both.
"""
from __future__ import annotations

from ... import backend
from ...backend import get_array_module
from . import blocks, kernels
from .sums import sum_last


def batch_last(x, Ho, Wo) -> bool:
    """The order of an im2col matrix's columns for data like ``x``: (Ho, Wo, B) for host images of
    at most 256 positions, (B, Ho, Wo) otherwise. Either way one column is one window."""
    return not (backend.is_gpu_array(x) or backend.use_fused(x)) and Ho * Wo <= 256


def _window(a, rows, cols, last):
    """a[:, :, rows, cols] of a (C, B, H, W) array, or a[:, rows, cols] of a (C, H, W, B) one."""
    return a[:, rows, cols] if last else a[:, :, rows, cols]


def _copy_batch_last(x, out):
    """out[c, h, w, b] = x[b, c, h, w] for x (B, C, H, W), eight samples at a time."""
    for start in range(0, x.shape[0], 8):
        out[..., start:start + 8] = x[start:start + 8].transpose(1, 2, 3, 0)


def to_columns(x, last):
    """(B, C, H, W) -> (C, B*H*W), or (C, H*W*B) with the batch last: a copy."""
    xp = get_array_module(x)
    if last:
        B, C, H, W = x.shape
        columns = xp.empty((C, H, W, B), dtype=x.dtype)
        _copy_batch_last(x, columns)
        return columns.reshape(C, -1)
    return xp.ascontiguousarray(x.transpose(1, 0, 2, 3)).reshape(x.shape[1], -1)


def from_columns(a2d, shape, last, bias=None):
    """The inverse of to_columns: (C, B*H*W) or (C, H*W*B) -> a C-contiguous (B, C, H, W),
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


def im2col(x, kh, kw, stride, padding, Ho, Wo, last):
    """ops.conv.im2col with the columns in (oy, ox, b) order when ``last``; x_pad is laid out
    channels-first, (C, B, H+2p, W+2p) or (C, H+2p, W+2p, B), like the rows and columns of col,
    so each kernel offset's slice copies without reordering."""
    if backend.use_fused(x):
        return kernels.im2col(x, kh, kw, stride, padding, Ho, Wo)       # one gather kernel
    xp = get_array_module(x)
    B, C, H, W = x.shape
    if kh == kw == 1 and stride == 1 and padding == 0:       # a 1x1 window is the pixel itself:
        return to_columns(x, last)                            # col = x as (C, B*H*W)
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

    blocks.for_blocks(unfold, C, col)                         # on the host: channel blocks on every core
    return col.reshape(C * kh * kw, B * Ho * Wo)


def col2im(col, x_shape, kh, kw, stride, padding, Ho, Wo, last):
    """ops.conv.col2im for columns in either order."""
    if backend.use_fused(col):
        return kernels.col2im(col, x_shape, kh, kw, stride, padding, Ho, Wo)   # one gather kernel
    xp = get_array_module(col)
    B, C, H, W = x_shape
    if kh == kw == 1 and stride == 1 and padding == 0:       # 1x1 windows do not overlap: nothing to add
        return from_columns(col, x_shape, last)
    col = col.reshape((C, kh, kw) + ((Ho, Wo, B) if last else (B, Ho, Wo)))
    Hp, Wp = H + 2 * padding, W + 2 * padding
    x_pad = xp.zeros((C, Hp, Wp, B) if last else (C, B, Hp, Wp), dtype=col.dtype)
    for i in range(kh):
        for j in range(kw):
            _window(x_pad, slice(i, i + stride * Ho, stride), slice(j, j + stride * Wo, stride), last)[...] += \
                col[:, i, j]
    x = _window(x_pad, slice(padding, padding + H), slice(padding, padding + W), last)   # (C, B, H, W) or (C, H, W, B)
    return xp.ascontiguousarray(x.transpose((3, 0, 1, 2) if last else (1, 0, 2, 3)))  # (B, C, H, W)


def conv2d(x, w, b, stride, padding, Ho, Wo):
    """ops.conv.conv2d (arguments already checked)."""
    B = x.shape[0]
    C_out, _, kh, kw = w.shape
    last = batch_last(x, Ho, Wo)
    col = im2col(x, kh, kw, stride, padding, Ho, Wo, last)   # (C_in*kh*kw, B*Ho*Wo)
    y2d = w.reshape(C_out, -1) @ col                          # (C_out, B*Ho*Wo)
    cache = (col, w, x.shape, stride, padding, b is not None, last)
    if backend.use_fused(x):                                  # + b and the NCHW layout in one launch
        return kernels.conv_output(y2d, b, (B, C_out, Ho, Wo)), cache
    return from_columns(y2d, (B, C_out, Ho, Wo), last, b), cache


def conv2d_backward(dy, cache):
    """ops.conv.conv2d_backward; for stride 1 on the host dx is the flipped-kernel convolution."""
    col, w, x_shape, stride, padding, has_bias, last = cache
    C_out, C_in, kh, kw = w.shape
    B, _, Ho, Wo = dy.shape
    dy2d = to_columns(dy, last)                                   # (C_out, B*Ho*Wo), as col's columns
    db = sum_last(dy2d) if has_bias else None                     # (C_out,)
    dw = (dy2d @ col.T).reshape(w.shape)                          # (C_out, C_in, kh, kw)
    if stride == 1 and kh == kw and padding < kh and not backend.use_fused(dy):
        # dx = conv2d(dy, w rotated 180 degrees with C_in and C_out swapped, padding k - 1 - p)
        xp = get_array_module(dy)
        w_flipped = xp.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))   # (C_in, C_out, kh, kw)
        H, W = x_shape[2], x_shape[3]
        dx, _ = conv2d(dy, w_flipped, None, 1, kh - 1 - padding, H, W)               # (B, C_in, H, W)
        return dx, dw, db
    dcol = w.reshape(C_out, -1).T @ dy2d                          # (C_in*kh*kw, B*Ho*Wo)
    dx = col2im(dcol, x_shape, kh, kw, stride, padding, Ho, Wo, last)   # (B, C_in, H, W)
    return dx, dw, db


def conv_transpose2d(x, w, b, stride, padding, Ho, Wo):
    """ops.conv.conv_transpose2d (arguments already checked, output size Ho x Wo)."""
    B, _, H, W = x.shape
    C_in, C_out, kh, kw = w.shape
    last = batch_last(x, H, W)
    x2d = to_columns(x, last)                                 # (C_in, B*H*W), columns as col2im's
    col = w.reshape(C_in, -1).T @ x2d                         # (C_out*kh*kw, B*H*W)
    y = col2im(col, (B, C_out, Ho, Wo), kh, kw, stride, padding, H, W, last)
    if b is not None:
        y += b[:, None, None]
    return y, (x2d, w, x.shape, stride, padding, b is not None, last)


def conv_transpose2d_backward(dy, cache):
    """ops.conv.conv_transpose2d_backward, the columns in the order of the forward's."""
    x2d, w, x_shape, stride, padding, has_bias, last = cache
    C_in, C_out, kh, kw = w.shape
    B, _, H, W = x_shape
    db = dy.sum(axis=(0, 2, 3)) if has_bias else None             # (C_out,)
    dcol = im2col(dy, kh, kw, stride, padding, H, W, last)        # (C_out*kh*kw, B*H*W)
    dx2d = w.reshape(C_in, -1) @ dcol                             # (C_in, B*H*W)
    dw = (x2d @ dcol.T).reshape(w.shape)                          # (C_in, C_out, kh, kw)
    dx = from_columns(dx2d, x_shape, last)                        # (B, C_in, H, W)
    return dx, dw, db
