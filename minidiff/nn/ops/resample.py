"""Resampling: nearest-neighbour 2x upsampling and average pooling, with their backwards."""
from __future__ import annotations

from ...backend import get_array_module
from ._checks import floats, ndim, positive_int


def upsample_nearest2x(x):
    """Nearest-neighbour 2x upsampling: every pixel becomes a 2x2 block.

    x: (B, C, H, W) -> y: (B, C, 2H, 2W),  y[b, c, 2i + di, 2j + dj] = x[b, c, i, j]
    cache: x_shape
    """
    floats("upsample_nearest2x", x=x)
    ndim("upsample_nearest2x", "x", x, 4, "(B, C, H, W)")
    xp = get_array_module(x)
    B, C, H, W = x.shape
    blocks = xp.broadcast_to(x[:, :, :, None, :, None], (B, C, H, 2, W, 2))   # (B, C, H, 2, W, 2)
    return blocks.reshape(B, C, 2 * H, 2 * W), x.shape


def upsample_nearest2x_backward(dy, cache):
    """Each x pixel was copied into the four entries of its 2x2 block, so dx is the block's sum:

        dx[i, j] = dy[2i, 2j] + dy[2i, 2j + 1] + dy[2i + 1, 2j] + dy[2i + 1, 2j + 1]

    (the four corners are four strided views of dy)."""
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
    floats("avg_pool2d", x=x)
    ndim("avg_pool2d", "x", x, 4, "(B, C, H, W)")
    k = positive_int("avg_pool2d", "kernel_size", kernel_size)
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
