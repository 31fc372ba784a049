"""Fused CuPy kernels: one GPU launch where the plain NumPy-style code makes five to ten.

At 8x8 latents and 32x32 images a training step is launch-bound: every CuPy call costs ~10-20 us
of host time however little work it does, and the small ops (GroupNorm, SiLU, GELU, softmax, the
AdamW update, im2col) are chains of such calls, each reading and writing the whole tensor again.
Each function below does one of those chains in one to five kernels.

They are *branches*, not replacements. functional.py and optim.py keep their plain code as the
readable reference and call the kernel only when ``backend.use_fused(x)``: x is a float32/float64
CuPy array and fused kernels are on (``MINIDIFF_FUSED=0`` turns them off). Every function takes
the same arguments as the code it stands for and returns the same results, to float rounding,
with the same cache, so a fused forward can feed a plain backward and the other way round.
``tests/test_kernels.py`` and ``python -m minidiff bench --check`` compare the two on a GPU.

The math of each op, and its derivation, is beside the plain version in functional.py; the
comment above each kernel quotes the lines it fuses. CuPy compiles a kernel (NVRTC) at its first
call for each dtype and caches the binary on disk; it comes from ``backend.cupy_module()``, so
backend.py remains the only file that imports CuPy.

    kernel                     replaces (functional.py unless noted)          launches: plain -> fused
    silu / silu_backward       silu, silu_backward                               4 -> 1,  4 -> 1
    gelu / gelu_backward       gelu (erf polynomial, or tanh), gelu_backward   ~30 -> 1,  6 -> 1
    softmax_ (last axis)       _softmax_inplace                                 ~9 -> 3
    softmax_backward           softmax_backward                                 ~4 -> 2
    layer_norm (+ backward)    layer_norm, layer_norm_backward                 ~8 -> 3,  ~11 -> 5
    group_norm (+ backward)    group_norm, group_norm_backward                 ~9 -> 3,  ~13 -> 5
    im2col / col2im            _im2col, _col2im (conv2d, conv_transpose2d)   ~12 -> 1, ~13 -> 1
    adamw_update               optim.AdamW.step, per parameter                 ~10 -> 1
"""
from __future__ import annotations

import functools
import types

from .. import backend

# exp(x - max) of a row whose maximum is -inf (every key masked) would be exp(-inf + inf) = nan;
# such rows are shifted by 0 instead, so they become exp(-inf) = 0 everywhere (as in the plain code)
_ROW_SHIFT = """
template <typename T> __device__ T minidiff_row_shift(T m) {
    return (isinf(m) && m < T(0)) ? T(0) : m;
}
"""


@functools.cache
def _kernels():
    """Build the kernel objects once (CuPy compiles each at its first call per dtype)."""
    cp = backend.cupy_module()
    if cp is None:
        raise RuntimeError("minidiff.nn.kernels needs CuPy and a CUDA device")
    elementwise, reduction = cp.ElementwiseKernel, cp.ReductionKernel
    k = types.SimpleNamespace()

    # s = 1 / (1 + exp(-max(x, -80)));  y = x * s
    k.silu = elementwise("T x", "T y, T s", """
        s = T(1) / (T(1) + exp(-(x > T(-80) ? x : T(-80))));
        y = x * s;""", "minidiff_silu")
    # dx = dy * s * (1 + x * (1 - s))
    k.silu_backward = elementwise("T dy, T x, T s", "T dx", """
        dx = dy * s * (T(1) + x * (T(1) - s));""", "minidiff_silu_backward")

    # Phi(x) = (1 + erf(x / sqrt 2)) / 2;  y = x * Phi(x)
    k.gelu_erf = elementwise("T x", "T y, T phi", """
        phi = T(0.5) * (T(1) + erf(x * T(0.70710678118654752440)));
        y = x * phi;""", "minidiff_gelu_erf")
    # Phi(x) ~ (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) / 2;  y = x * Phi(x)
    k.gelu_tanh = elementwise("T x", "T y, T phi", """
        phi = T(0.5) * (T(1) + tanh(T(0.79788456080286535588) * (x + T(0.044715) * x * x * x)));
        y = x * phi;""", "minidiff_gelu_tanh")
    # dx = dy * (Phi(x) + x phi(x)),  phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
    k.gelu_erf_backward = elementwise("T dy, T x, T phi", "T dx", """
        dx = dy * (phi + x * exp(T(-0.5) * x * x) * T(0.39894228040143267794));""",
                                      "minidiff_gelu_erf_backward")
    # dx = dy * (T + x * 2 T (1 - T) * sqrt(2/pi) (1 + 3 * 0.044715 x^2)),  T = Phi(x)
    k.gelu_tanh_backward = elementwise("T dy, T x, T phi", "T dx", """
        dx = dy * (phi + x * T(2) * phi * (T(1) - phi) * T(0.79788456080286535588)
                         * (T(1) + T(3 * 0.044715) * x * x));""", "minidiff_gelu_tanh_backward")

    # total = sum(exp(z - max)) per row (max: the row maximum, -inf rows shifted by 0)
    k.row_exp_sum = reduction("T z, T m", "T total", "exp(z - minidiff_row_shift(m))", "a + b",
                              "total = a", "0", "minidiff_row_exp_sum", preamble=_ROW_SHIFT)
    # z <- exp(z - max) / total, and 0 for a row whose total is 0 (every entry -inf)
    k.softmax_normalize = elementwise("T m, T total", "T z", """
        z = total == T(0) ? T(0) : exp(z - minidiff_row_shift(m)) / total;""",
                                      "minidiff_softmax_normalize", preamble=_ROW_SHIFT)
    # dot = sum(dy * y) per row;  dx = (dy - dot) * y
    k.row_dot = reduction("T dy, T y", "T dot", "dy * y", "a + b", "dot = a", "0", "minidiff_row_dot")
    k.softmax_backward = elementwise("T dy, T y, T dot", "T dx", "dx = (dy - dot) * y;",
                                     "minidiff_softmax_backward")

    # inv_std = 1 / sqrt(mean((x - mu)^2) + eps) over the reduced axes (two-pass variance)
    k.inv_std = reduction("T x, T mu, T eps", "T inv_std", "(x - mu) * (x - mu)", "a + b",
                          "inv_std = T(1) / sqrt(a / T(_in_ind.size() / _out_ind.size()) + eps)", "0",
                          "minidiff_inv_std")
    # x_hat = (x - mu) * inv_std;  y = gamma * x_hat + beta
    k.normalize_affine = elementwise("T x, T mu, T inv_std, T gamma, T beta", "T x_hat, T y", """
        x_hat = (x - mu) * inv_std;
        y = x_hat * gamma + beta;""", "minidiff_normalize_affine")
    # sum of u * v * w over the reduced axes (a scalar 1 stands for an absent factor)
    k.sum_of_products = reduction("T u, T v, T w", "T total", "u * v * w", "a + b", "total = a", "0",
                                  "minidiff_sum_of_products")
    # dx = inv_std (g - mean(g) - x_hat mean(g x_hat)),  g = gamma dy,  mean = sum / N
    k.normalize_backward = elementwise("T dy, T gamma, T x_hat, T inv_std, T sum_g, T sum_g_xhat, T inv_n",
                                       "T dx", """
        dx = inv_std * (gamma * dy - (sum_g + x_hat * sum_g_xhat) * inv_n);""", "minidiff_normalize_backward")

    # col[(c, ki, kj), (b, oy, ox)] = x_pad[b, c, stride*oy + ki, stride*ox + kj]  (0 in the padding)
    k.im2col = elementwise(
        "raw T x, int32 batch, int32 channels, int32 height, int32 width, int32 out_height, int32 out_width, "
        "int32 kernel_h, int32 kernel_w, int32 stride, int32 padding", "T col", """
        const ptrdiff_t columns = (ptrdiff_t)batch * out_height * out_width;
        const ptrdiff_t row = i / columns, column = i - row * columns;
        const int kj = row % kernel_w, ki = (row / kernel_w) % kernel_h;
        const ptrdiff_t c = row / (kernel_w * kernel_h);
        const int ox = column % out_width, oy = (column / out_width) % out_height;
        const ptrdiff_t b = column / ((ptrdiff_t)out_width * out_height);
        const int y = oy * stride + ki - padding, x_ = ox * stride + kj - padding;
        col = (0 <= y && y < height && 0 <= x_ && x_ < width)
              ? x[((b * channels + c) * height + y) * width + x_] : T(0);""", "minidiff_im2col")
    # dx[b, c, y, x] = sum of the col entries im2col copied from that pixel, as a gather (no atomics,
    # deterministic), adding the kernel offsets (ki, kj) in the same order as the plain _col2im
    k.col2im = elementwise(
        "raw T col, int32 batch, int32 channels, int32 height, int32 width, int32 out_height, int32 out_width, "
        "int32 kernel_h, int32 kernel_w, int32 stride, int32 padding", "T dx", """
        const int x_ = i % width, y = (i / width) % height;
        const ptrdiff_t c = (i / ((ptrdiff_t)width * height)) % channels;
        const ptrdiff_t b = i / ((ptrdiff_t)width * height * channels);
        const ptrdiff_t columns = (ptrdiff_t)batch * out_height * out_width;
        T total = T(0);
        for (int ki = 0; ki < kernel_h; ++ki) {
            const int ty = y + padding - ki;                 // = stride * oy for a window that covers y
            if (ty < 0 || ty % stride != 0 || ty / stride >= out_height) continue;
            for (int kj = 0; kj < kernel_w; ++kj) {
                const int tx = x_ + padding - kj;
                if (tx < 0 || tx % stride != 0 || tx / stride >= out_width) continue;
                const ptrdiff_t row = (c * kernel_h + ki) * kernel_w + kj;
                total += col[row * columns + (b * out_height + ty / stride) * out_width + tx / stride];
            }
        }
        dx = total;""", "minidiff_col2im")

    # AdamW for one parameter, in place (optim.AdamW.step):
    #   theta <- theta (1 - lr lambda);  m <- beta1 m + (1 - beta1) g;  v <- beta2 v + (1 - beta2) g^2
    #   theta <- theta - (lr / bc1) m / (sqrt(v) / sqrt(bc2) + eps)
    k.adamw = elementwise(
        "T g, T decay, T beta1, T one_minus_beta1, T beta2, T one_minus_beta2, T step_size, T sqrt_bc2, T eps",
        "T theta, T m, T v", """
        theta *= decay;
        m = beta1 * m + one_minus_beta1 * g;
        v = beta2 * v + one_minus_beta2 * (g * g);
        theta -= step_size * (m / (sqrt(v) / sqrt_bc2 + eps));""", "minidiff_adamw")
    return k


def _scalar(like, value):
    """``value`` as a scalar of ``like``'s dtype, so that a kernel's T is the data's type."""
    return like.dtype.type(value)


# -- activations ---------------------------------------------------------------------------------
def silu(x):
    y, s = _kernels().silu(x)
    return y, (x, s)


def silu_backward(dy, cache):
    x, s = cache
    return _kernels().silu_backward(dy, x, s)


def gelu(x, approximate="none"):
    k = _kernels()
    y, phi = (k.gelu_erf if approximate == "none" else k.gelu_tanh)(x)
    return y, (x, phi, approximate)


def gelu_backward(dy, cache):
    x, phi, approximate = cache
    k = _kernels()
    return (k.gelu_erf_backward if approximate == "none" else k.gelu_tanh_backward)(dy, x, phi)


# -- softmax over the last axis ------------------------------------------------------------------
def softmax_(z):
    """z <- softmax(z) over the last axis, in place: row max, row sum of exp, normalise."""
    k = _kernels()
    m = z.max(axis=-1, keepdims=True)                               # (..., 1)
    total = k.row_exp_sum(z, m, axis=-1, keepdims=True)             # (..., 1)
    k.softmax_normalize(m, total, z)
    return z


def softmax_backward(dy, y):
    """dx = y (dy - sum(dy y)) over the last axis."""
    k = _kernels()
    return k.softmax_backward(dy, y, k.row_dot(dy, y, axis=-1, keepdims=True))


# -- normalisation -------------------------------------------------------------------------------
def _statistics(x, eps, axis):
    """mu and inv_std = 1 / sqrt(var + eps) over ``axis`` (kept as length-1 axes)."""
    mu = x.mean(axis=axis, keepdims=True)
    inv_std = _kernels().inv_std(x, mu, _scalar(x, eps), axis=axis, keepdims=True)
    return mu, inv_std


def _normalize_backward(dy, x_hat, inv_std, gamma, stat_axes, param_axes, count):
    """(dx, dgamma, dbeta) of y = gamma x_hat + beta with x_hat normalised over ``stat_axes``
    (``count`` numbers each) and gamma, beta shared along ``param_axes``."""
    k = _kernels()
    one = _scalar(dy, 1)
    dbeta = dy.sum(axis=param_axes)                                              # sum dy
    dgamma = k.sum_of_products(dy, x_hat, one, axis=param_axes)                  # sum dy x_hat
    sum_g = k.sum_of_products(dy, gamma, one, axis=stat_axes, keepdims=True)     # sum g,  g = gamma dy
    sum_g_xhat = k.sum_of_products(dy, gamma, x_hat, axis=stat_axes, keepdims=True)   # sum g x_hat
    dx = k.normalize_backward(dy, gamma, x_hat, inv_std, sum_g, sum_g_xhat, _scalar(dy, 1.0 / count))
    return dx, dgamma, dbeta


def layer_norm(x, gamma, beta, eps=1e-5):
    mu, inv_std = _statistics(x, eps, axis=-1)                                   # (..., 1)
    x_hat, y = _kernels().normalize_affine(x, mu, inv_std, gamma, beta)
    return y, (x_hat, inv_std, gamma)


def layer_norm_backward(dy, cache):
    x_hat, inv_std, gamma = cache
    return _normalize_backward(dy, x_hat, inv_std, gamma, stat_axes=-1,
                               param_axes=tuple(range(dy.ndim - 1)), count=dy.shape[-1])


def group_norm(x, gamma, beta, num_groups, eps=1e-5):
    """Statistics on the (B, G, N) view, the affine map on the (B, G, C/G, H*W) view, where
    gamma and beta broadcast as (1, G, C/G, 1)."""
    B, C, G = x.shape[0], x.shape[1], num_groups
    mu, inv_std = _statistics(x.reshape(B, G, -1), eps, axis=-1)                 # (B, G, 1)
    per_channel = (1, G, C // G, 1)
    x_hat, y = _kernels().normalize_affine(x.reshape(B, G, C // G, -1), mu[..., None], inv_std[..., None],
                                           gamma.reshape(per_channel), beta.reshape(per_channel))
    return y.reshape(x.shape), (x_hat.reshape(B, G, -1), inv_std, gamma)


def group_norm_backward(dy, cache):
    x_hat, inv_std, gamma = cache                                                # (B, G, N), (B, G, 1), (C,)
    B, G, N = x_hat.shape
    C = gamma.shape[0]
    per_group = (B, G, C // G, -1)
    dx, dgamma, dbeta = _normalize_backward(
        dy.reshape(per_group), x_hat.reshape(per_group), inv_std[..., None], gamma.reshape(1, G, C // G, 1),
        stat_axes=(2, 3), param_axes=(0, 3), count=N)
    return dx.reshape(dy.shape), dgamma.reshape(C), dbeta.reshape(C)


# -- convolution: unfold and fold ----------------------------------------------------------------
def im2col(x, kh, kw, stride, padding, Ho, Wo):
    """x (B, C, H, W) -> col (C*kh*kw, B*Ho*Wo), one thread per col entry."""
    B, C, H, W = x.shape
    col = backend.cupy_module().empty((C * kh * kw, B * Ho * Wo), dtype=x.dtype)
    _kernels().im2col(backend.cupy_module().ascontiguousarray(x), B, C, H, W, Ho, Wo, kh, kw, stride, padding, col)
    return col


def col2im(col, x_shape, kh, kw, stride, padding, Ho, Wo):
    """col (C*kh*kw, B*Ho*Wo) -> (B, C, H, W), one thread per pixel."""
    B, C, H, W = x_shape
    dx = backend.cupy_module().empty(tuple(x_shape), dtype=col.dtype)
    _kernels().col2im(backend.cupy_module().ascontiguousarray(col), B, C, H, W, Ho, Wo, kh, kw, stride, padding, dx)
    return dx


# -- optimiser -----------------------------------------------------------------------------------
def adamw_update(theta, g, m, v, lr, weight_decay, betas, eps, bias_correction1, bias_correction2):
    """One AdamW step of one parameter, theta, m and v updated in place (see optim.AdamW)."""
    beta1, beta2 = betas
    s = functools.partial(_scalar, theta)
    _kernels().adamw(g, s(1.0 - lr * weight_decay), s(beta1), s(1.0 - beta1), s(beta2), s(1.0 - beta2),
                     s(lr / bias_correction1), s(bias_correction2 ** 0.5), s(eps), theta, m, v)
