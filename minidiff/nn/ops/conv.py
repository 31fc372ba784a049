"""Convolution as im2col + one matrix product, its backward through col2im, and the transposed
convolution that is its adjoint."""
from __future__ import annotations

from .. import fast
from ...backend import get_array_module
from ._checks import floats, int_at_least, ndim, positive_int, vector


def conv_output_size(size, kernel_size, stride=1, padding=0):
    """floor((size + 2 padding - kernel_size) / stride) + 1: positions a kernel takes along one axis."""
    return (size + 2 * padding - kernel_size) // stride + 1


def im2col(x, kh, kw, stride, padding, Ho, Wo):
    """Unfold every kh x kw window of the zero-padded input into one column.

    x: (B, C, H, W)  ->  col: (C*kh*kw, B*Ho*Wo), with

        col[(c, i, j), (b, oy, ox)] = x_pad[b, c, stride*oy + i, stride*ox + j]

    Row (c, i, j) holds, for every window, the pixel at kernel offset (i, j) of channel c; for all
    windows at once that is one strided slice of x_pad, so the copy loops over the kh*kw offsets,
    never over pixels.
    """
    xp = get_array_module(x)
    B, C, H, W = x.shape
    x_pad = xp.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))   # (B, C, H+2p, W+2p)
    col = xp.empty((C, kh, kw, B, Ho, Wo), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            # col[(c, i, j), (b, oy, ox)] = x_pad[b, c, stride*oy + i, stride*ox + j]
            window = x_pad[:, :, i:i + stride * Ho:stride, j:j + stride * Wo:stride]   # (B, C, Ho, Wo)
            col[:, i, j] = window.transpose(1, 0, 2, 3)
    return col.reshape(C * kh * kw, B * Ho * Wo)


def col2im(col, x_shape, kh, kw, stride, padding, Ho, Wo):
    """The adjoint of im2col: add every column entry back onto the pixel it was copied from.

    col: (C*kh*kw, B*Ho*Wo)  ->  (B, C, H, W). Windows overlap, so a pixel gathers the sum of all
    the entries copied from it; again one strided ``+=`` per kernel offset.
    """
    xp = get_array_module(col)
    B, C, H, W = x_shape
    col = col.reshape(C, kh, kw, B, Ho, Wo)
    x_pad = xp.zeros((B, C, H + 2 * padding, W + 2 * padding), dtype=col.dtype)
    for i in range(kh):
        for j in range(kw):
            # x_pad[b, c, stride*oy + i, stride*ox + j] += col[(c, i, j), (b, oy, ox)]
            x_pad[:, :, i:i + stride * Ho:stride, j:j + stride * Wo:stride] += col[:, i, j].transpose(1, 0, 2, 3)
    return xp.ascontiguousarray(x_pad[:, :, padding:padding + H, padding:padding + W])   # (B, C, H, W)


def _conv_arguments(op, x, w, b, stride, padding, transposed):
    """The checks conv2d and conv_transpose2d share; returns (stride, padding) as ints."""
    layout = "(C_in, C_out, kh, kw)" if transposed else "(C_out, C_in, kh, kw)"
    floats(op, x=x, w=w, b=b)
    ndim(op, "x", x, 4, "(B, C_in, H, W)")
    ndim(op, "w", w, 4, layout)
    C_in, C_out = (w.shape[0], w.shape[1]) if transposed else (w.shape[1], w.shape[0])
    if x.shape[1] != C_in:
        raise ValueError(f"{op}: x has {x.shape[1]} channels (shape {tuple(x.shape)}) but w expects {C_in} "
                         f"(shape {tuple(w.shape)} = {layout})")
    vector(op, "b", b, C_out, "output channel")
    return positive_int(op, "stride", stride), int_at_least(op, "padding", padding, 0)


def conv2d(x, w, b=None, stride=1, padding=0):
    """2-D cross-correlation (what deep learning calls convolution), NCHW.

    x: (B, C_in, H, W), w: (C_out, C_in, kh, kw), b: (C_out,) or None
    y: (B, C_out, Ho, Wo),  Ho = floor((H + 2 padding - kh) / stride) + 1  (Wo alike)

        y[b, o, oy, ox] = b_o + sum_{c,i,j} w[o, c, i, j] x_pad[b, c, stride*oy + i, stride*ox + j]

    Unfold the windows into the columns of col (C_in*kh*kw, B*Ho*Wo) and the whole convolution is
    ONE matrix product, Y2d = W2d @ col, with W2d = w.reshape(C_out, C_in*kh*kw).
    cache: (col, w, x_shape, stride, padding, has_bias, batch_last), batch_last False: col's
    columns are in (b, oy, ox) order (the fast route may order them (oy, ox, b) and says so here)
    """
    stride, padding = _conv_arguments("conv2d", x, w, b, stride, padding, transposed=False)
    B, C_in, H, W = x.shape
    C_out, _, kh, kw = w.shape
    Ho, Wo = conv_output_size(H, kh, stride, padding), conv_output_size(W, kw, stride, padding)
    if Ho < 1 or Wo < 1:
        raise ValueError(f"conv2d: a {kh}x{kw} kernel does not fit a {H}x{W} input with padding {padding}")
    if fast.enabled(x):                                       # batch-last columns, blocks / gather kernels
        return fast.conv2d(x, w, b, stride, padding, Ho, Wo)
    xp = get_array_module(x)
    col = im2col(x, kh, kw, stride, padding, Ho, Wo)          # (C_in*kh*kw, B*Ho*Wo)
    # Y2d = W2d @ col + b
    y2d = w.reshape(C_out, -1) @ col                          # (C_out, B*Ho*Wo)
    if b is not None:
        y2d += b[:, None]
    # (C_out, B, Ho, Wo) -> (B, C_out, Ho, Wo)
    y = xp.ascontiguousarray(y2d.reshape(C_out, B, Ho, Wo).transpose(1, 0, 2, 3))
    return y, (col, w, x.shape, stride, padding, b is not None, False)


def conv2d_backward(dy, cache):
    """The forward is Y2d = W2d @ col + b, col = im2col(x), so with dY2d the upstream gradient
    laid out like Y2d:

        db   = sum of dY2d over its columns (every position of every sample)
        dW2d = dY2d @ col^T                      (matrix-product rule, as in linear)
        dcol = W2d^T @ dY2d
        dx   = col2im(dcol)   each column entry flows back to the pixel it was copied from,
                              and overlapping windows add up
    """
    col, w, x_shape, stride, padding, has_bias, batch_last = cache
    if fast.enabled(dy) or batch_last:                        # (batch-last columns: the fast forward's)
        return fast.conv2d_backward(dy, cache)
    C_out, C_in, kh, kw = w.shape
    B, _, Ho, Wo = dy.shape
    # forward was: y = Y2d laid out as (B, C_out, Ho, Wo)
    dy2d = dy.transpose(1, 0, 2, 3).reshape(C_out, -1)            # (C_out, B*Ho*Wo)
    # forward was: Y2d = W2d @ col + b
    db = dy2d.sum(axis=1) if has_bias else None                   # (C_out,)
    dw = (dy2d @ col.T).reshape(w.shape)                          # (C_out, C_in, kh, kw)
    dcol = w.reshape(C_out, -1).T @ dy2d                          # (C_in*kh*kw, B*Ho*Wo)
    # forward was: col = im2col(x)
    dx = col2im(dcol, x_shape, kh, kw, stride, padding, Ho, Wo)   # (B, C_in, H, W)
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
    cache: (x2d, w, x_shape, stride, padding, has_bias, batch_last) (batch_last as in conv2d)
    """
    stride, padding = _conv_arguments("conv_transpose2d", x, w, b, stride, padding, transposed=True)
    output_padding = int_at_least("conv_transpose2d", "output_padding", output_padding, 0)
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
    if fast.enabled(x):                                       # batch-last columns / gather kernel
        return fast.conv_transpose2d(x, w, b, stride, padding, Ho, Wo)
    x2d = x.transpose(1, 0, 2, 3).reshape(C_in, -1)           # X2d: (C_in, B*H*W)
    # col = W2d^T @ X2d
    col = w.reshape(C_in, -1).T @ x2d                         # (C_out*kh*kw, B*H*W)
    # y = col2im(col) + b   (the conv2d that maps y's shape back to x's shape has Ho' = H, Wo' = W)
    y = col2im(col, (B, C_out, Ho, Wo), kh, kw, stride, padding, H, W)
    if b is not None:
        y += b[:, None, None]
    return y, (x2d, w, x.shape, stride, padding, b is not None, False)


def conv_transpose2d_backward(dy, cache):
    """The forward is col = W2d^T @ X2d, y = col2im(col) + b. col2im's adjoint is im2col, so

        db   = sum of dy over (B, Ho, Wo)
        dcol = im2col(dy)                 (C_out*kh*kw, B*H*W): a conv2d's unfolding of dy
        dX2d = W2d @ dcol                 so dx is conv2d(dy, w) with w read as (C_in, C_out, kh, kw)
        dW2d = X2d @ dcol^T
    """
    x2d, w, x_shape, stride, padding, has_bias, batch_last = cache
    if fast.enabled(dy) or batch_last:                        # (batch-last columns: the fast forward's)
        return fast.conv_transpose2d_backward(dy, cache)
    xp = get_array_module(dy)
    C_in, C_out, kh, kw = w.shape
    B, _, H, W = x_shape
    # forward was: y = col2im(col) + b
    db = dy.sum(axis=(0, 2, 3)) if has_bias else None             # (C_out,)
    dcol = im2col(dy, kh, kw, stride, padding, H, W)              # (C_out*kh*kw, B*H*W)
    # forward was: col = W2d^T @ X2d
    dx2d = w.reshape(C_in, -1) @ dcol                             # (C_in, B*H*W)
    dw = (x2d @ dcol.T).reshape(w.shape)                          # (C_in, C_out, kh, kw)
    # forward was: X2d = x as columns, (B, C_in, H, W) -> (C_in, B*H*W)
    dx = xp.ascontiguousarray(dx2d.reshape(C_in, B, H, W).transpose(1, 0, 2, 3))
    return dx, dw, db
