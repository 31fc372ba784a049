"""linear: y = x w^T + b, and its backward."""
from __future__ import annotations

from .. import fast
from ._checks import floats, ndim, vector


def linear(x, w, b=None):
    """y = x w^T + b

    x: (..., in), w: (out, in), b: (out,) or None  ->  y: (..., out)
    cache: (x2d (N, in), w, x_shape, has_bias)
    """
    floats("linear", x=x, w=w, b=b)
    ndim("linear", "w", w, 2, "(out_features, in_features)")
    if x.ndim < 1 or x.shape[-1] != w.shape[1]:
        raise ValueError(f"linear: x has shape {tuple(x.shape)} but w has shape {tuple(w.shape)}; "
                         f"x's last axis must equal w's in_features ({w.shape[1]})")
    vector("linear", "b", b, w.shape[0], "output feature")
    x2d = x.reshape(-1, w.shape[1])                           # (N, in),  N = prod(leading axes)
    y = x2d @ w.T                                             # (N, out)
    if b is not None:
        y += b
    return y.reshape(*x.shape[:-1], w.shape[0]), (x2d, w, x.shape, b is not None)


def linear_backward(dy, cache):
    """y_ni = sum_j x_nj w_ij + b_i, so

        dx = dy w          dw = dy^T x          db = sum_n dy_n
    """
    if fast.enabled(dy):                                      # db as a BLAS product, tested equal
        return fast.linear_backward(dy, cache)
    x2d, w, x_shape, has_bias = cache
    dy2d = dy.reshape(-1, w.shape[0])                         # (N, out)
    dx = (dy2d @ w).reshape(x_shape)                          # (N, in) -> (..., in)
    dw = dy2d.T @ x2d                                         # (out, in)
    db = dy2d.sum(axis=0) if has_bias else None               # (out,)
    return dx, dw, db
