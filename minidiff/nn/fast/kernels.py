"""Fused CuPy kernels: one GPU launch where the plain NumPy-style code makes five to ten.

At 8x8 latents and 32x32 images a training step is launch-bound: every CuPy call costs ~10-20 us
of host time however little work it does, and the small ops (GroupNorm, SiLU, GELU, softmax, the
AdamW update, im2col) are chains of such calls, each reading and writing the whole tensor again.
Each function below does one of those chains in one to five kernels.

They are one of the fast routes (this package's __init__ says how one is chosen): the op in
minidiff/nn/ops/ keeps its derivation, and its fast route calls the kernel when
``backend.use_fused(x)``: x is a float32/float64 CuPy array and the fast routes are on
(``MINIDIFF_FAST=0`` turns them off). Every function takes the same arguments as the code it
stands for and returns the same results, to float rounding, with the same cache, so a fused
forward can feed a plain backward and the other way round. ``tests/test_kernels.py`` compares
the two on a GPU (and, compiled as C++ by a stand-in for CuPy, on a CPU).

The math of each op, and its derivation, is in minidiff/nn/ops/; the comment above each kernel
quotes the lines it fuses. CuPy compiles a kernel (NVRTC) at its first
call for each dtype and caches the binary on disk; it comes from ``backend.cupy_module()``, so
backend.py remains the only file that imports CuPy.

    kernel                     replaces (nn/ops/ unless noted)                launches: plain -> fused
    silu / silu_backward       silu, silu_backward                               4 -> 1,  4 -> 1
    gelu / gelu_backward       gelu (erf polynomial, or tanh), gelu_backward   ~30 -> 1,  6 -> 1
    softmax_ (last axis)       softmax over the last axis                       ~9 -> 3
    softmax_backward           softmax_backward                                 ~4 -> 2
    attention (head dim <= 64) attention's forward (both products, mask,      ~10 -> 1
                               softmax, and the head split/merge copies)
    layer_norm (+ backward)    layer_norm, layer_norm_backward                 ~8 -> 1,  ~11 -> 3
    group_norm (+ backward)    group_norm, group_norm_backward                 ~9 -> 1,  ~13 -> 3
    group_norm_silu (+ bwd)    group_norm_silu, group_norm_silu_backward      ~13 -> 1,  ~20 -> 3
    im2col / col2im            im2col, col2im (conv2d, conv_transpose2d)     ~12 -> 1, ~13 -> 1
    conv_output                conv2d's "+ b, then (C_out, B, H, W) -> NCHW"    2 -> 1
    adamw_update               optim.AdamW.step                 ~10 per parameter -> 1 for all of them
                               (once AdamW has laid them in one flat buffer)
"""
from __future__ import annotations

import functools
import types

import numpy as np

from ... import backend

# exp(x - max) of a row whose maximum is -inf (every key masked) would be exp(-inf + inf) = nan;
# such rows are shifted by 0 instead, so they become exp(-inf) = 0 everywhere (as in the plain code)
_ROW_SHIFT = """
template <typename T> __device__ T minidiff_row_shift(T m) {
    return (isinf(m) && m < T(0)) ? T(0) : m;
}
"""


MAX_HEAD_DIM = 64      # the fused attention keeps a query row and its output row in registers

# One warp per row of n numbers (rows = B*G for GroupNorm, tokens for LayerNorm):
#   mu = mean(x);  inv_std = 1 / sqrt(mean((x - mu)^2) + eps)      (two passes over the row)
#   x_hat = (x - mu) inv_std;  y = gamma_c x_hat + beta_c;  then y = SiLU(y) when silu != 0
# Row r is group (r % groups) of its sample, so its element j is channel ((r % groups) n + j) / hw
# (LayerNorm: groups = hw = 1, channel = j).
_NORMALIZE_ROWS = r"""
template <typename T> __device__ T minidiff_warp_sum(T v) {
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;                                       // every lane now holds the sum of all 32
}

template <typename T>
__global__ void minidiff_normalize_rows(const T* x, const T* gamma, const T* beta, T* y, T* x_hat, T* inv_std,
                                        long long rows, int n, int groups, long long hw, T eps, int silu) {
    const long long row = ((long long)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    if (row >= rows) return;                        // whole warps leave together
    const T* x_row = x + row * n;
    T total = T(0);
    for (int j = lane; j < n; j += 32) total += x_row[j];
    const T mu = minidiff_warp_sum(total) / T(n);
    T squares = T(0);
    for (int j = lane; j < n; j += 32) { const T centred = x_row[j] - mu; squares += centred * centred; }
    const T inv = T(1) / sqrt(minidiff_warp_sum(squares) / T(n) + eps);
    if (lane == 0) inv_std[row] = inv;
    const long long first = (row % groups) * (long long)n;
    for (int j = lane; j < n; j += 32) {
        const T normalized = (x_row[j] - mu) * inv;
        const long long c = (first + j) / hw;
        T out = normalized * gamma[c] + beta[c];
        if (silu) out = out * (T(1) / (T(1) + exp(-(out > T(-80) ? out : T(-80)))));
        x_hat[row * n + j] = normalized;
        y[row * n + j] = out;
    }
}

// Its backward, one warp per row again. With g = gamma_c da (da = dy, or with silu
// da = dy SiLU'(gamma_c x_hat + beta_c), also written out for dgamma and dbeta):
//   dx = inv_std (g - mean(g) - x_hat mean(g x_hat))          (the two means over the row)
template <typename T> __device__ T minidiff_row_grad(const T* dy, const T* x_hat, const T* gamma, const T* beta,
                                                     long long at, long long c, int silu) {
    if (!silu) return dy[at];
    const T a = gamma[c] * x_hat[at] + beta[c];
    const T s = T(1) / (T(1) + exp(-(a > T(-80) ? a : T(-80))));
    return dy[at] * s * (T(1) + a * (T(1) - s));
}

template <typename T>
__global__ void minidiff_normalize_rows_backward(const T* dy, const T* x_hat, const T* inv_std, const T* gamma,
                                                 const T* beta, T* dx, T* da, long long rows, int n, int groups,
                                                 long long hw, int silu) {
    const long long row = ((long long)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    if (row >= rows) return;
    const long long first = (row % groups) * (long long)n;
    T sum_g = T(0), sum_g_xhat = T(0);
    for (int j = lane; j < n; j += 32) {
        const long long at = row * n + j, c = (first + j) / hw;
        const T grad = minidiff_row_grad(dy, x_hat, gamma, beta, at, c, silu);
        if (silu) da[at] = grad;
        sum_g += gamma[c] * grad;
        sum_g_xhat += gamma[c] * grad * x_hat[at];
    }
    sum_g = minidiff_warp_sum(sum_g);
    sum_g_xhat = minidiff_warp_sum(sum_g_xhat);
    const T inv = inv_std[row];
    for (int j = lane; j < n; j += 32) {
        const long long at = row * n + j, c = (first + j) / hw;
        const T g = gamma[c] * (silu ? da[at] : dy[at]);
        dx[at] = inv * (g - (sum_g + x_hat[at] * sum_g_xhat) / T(n));
    }
}
"""
_ROWS_PER_BLOCK = 8


@functools.cache
def _normalize_rows_kernel(dtype_char, backward=False):
    name = (f"minidiff_normalize_rows{'_backward' if backward else ''}"
            f"<{'float' if dtype_char == 'f' else 'double'}>")
    module = backend.cupy_module().RawModule(code=_NORMALIZE_ROWS, name_expressions=(name,))
    return module.get_function(name)


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

    # Phi(x) = (1 + erf(x / sqrt 2)) / 2 = erfc(-x / sqrt 2) / 2 (the second keeps its relative
    # accuracy in the lower tail, where 1 + erf cancels);  y = x * Phi(x)
    k.gelu_erf = elementwise("T x", "T y, T phi", """
        phi = T(0.5) * erfc(-x * T(0.70710678118654752440));
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

    # sum of u * v * w over the reduced axes (a scalar 1 stands for an absent factor)
    k.sum_of_products = reduction("T u, T v, T w", "T total", "u * v * w", "a + b", "total = a", "0",
                                  "minidiff_sum_of_products")
    # col[(c, ki, kj), (b, oy, ox)] = x_pad[b, c, stride*oy + ki, stride*ox + kj]  (0 in the padding)
    # (columns batch-first: fast.conv.batch_last is False for GPU arrays)
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
    # deterministic), adding the kernel offsets (ki, kj) in the same order as the plain col2im
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

    # y[b, o, p] = y2d[o, (b, p)] + bias[o]: conv2d's bias add and its (C_out, B, Ho*Wo) -> NCHW copy
    k.conv_output = elementwise(
        "raw T y2d, raw T bias, int32 channels, int32 batch, int32 positions, int32 has_bias", "T y", """
        const ptrdiff_t p = i % positions, o = (i / positions) % channels;
        const ptrdiff_t b = i / ((ptrdiff_t)positions * channels);
        y = y2d[(o * batch + b) * positions + p] + (has_bias ? bias[o] : T(0));""", "minidiff_conv_output")

    # Attention, one thread per query row i = (b, h, l). q, k, v and out are token-major,
    # (B, L, heads, d) as the projections make them, so no head split or merge is ever copied;
    # probs is (B, heads, Lq, Lk), the mask a bool view broadcast to that shape.
    #   s_j = (q scale) . k_j  (masked: skipped);   P_j = exp(s_j - max) / sum_j exp(s_j - max)
    #   out = sum_j P_j v_j, as an "online" softmax: one pass keeps the running maximum m and
    #   rescales the running sums by exp(m_old - m_new) whenever m grows. A row whose keys are all
    #   masked has total 0 and gets out = 0 and P = 0, as in the plain code.
    k.attention = elementwise(
        "raw T q, raw T k, raw T v, raw bool mask, int32 heads, int32 q_len, int32 k_len, int32 d, int32 dv, "
        "T scale, int32 has_mask", "raw T out, raw T probs", """
        const int l = i % q_len, h = (i / q_len) % heads;
        const ptrdiff_t b = i / ((ptrdiff_t)q_len * heads);
        T q_row[MINIDIFF_MAX_HEAD_DIM], acc[MINIDIFF_MAX_HEAD_DIM];
        for (int e = 0; e < d; ++e) q_row[e] = q[((b * q_len + l) * heads + h) * d + e] * scale;
        for (int e = 0; e < dv; ++e) acc[e] = T(0);
        T m = T(0), total = T(0);
        bool seen = false;                                // m is the maximum of the scores seen so far
        for (int j = 0; j < k_len; ++j) {
            if (has_mask && !mask[(ptrdiff_t)i * k_len + j]) continue;
            const ptrdiff_t key = (b * k_len + j) * heads + h;
            T s = T(0);
            for (int e = 0; e < d; ++e) s += q_row[e] * k[key * d + e];
            if (!seen || s > m) {                         // a new maximum: rescale what is summed so far
                const T c = seen ? exp(m - s) : T(0);
                total *= c;
                for (int e = 0; e < dv; ++e) acc[e] *= c;
                m = s;
                seen = true;
            }
            const T p = exp(s - m);
            total += p;
            for (int e = 0; e < dv; ++e) acc[e] += p * v[key * dv + e];
        }
        for (int e = 0; e < dv; ++e) out[((b * q_len + l) * heads + h) * dv + e] = total > T(0) ? acc[e] / total : T(0);
        for (int j = 0; j < k_len; ++j) {                 // the probabilities, for backward and pictures
            T p = T(0);
            if (total > T(0) && !(has_mask && !mask[(ptrdiff_t)i * k_len + j])) {
                const ptrdiff_t key = (b * k_len + j) * heads + h;
                T s = T(0);
                for (int e = 0; e < d; ++e) s += q_row[e] * k[key * d + e];
                p = exp(s - m) / total;
            }
            probs[(ptrdiff_t)i * k_len + j] = p;
        }""", "minidiff_attention", preamble=f"#define MINIDIFF_MAX_HEAD_DIM {MAX_HEAD_DIM}")

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
def _normalize_rows(x, gamma, beta, rows, groups, hw, eps, silu=False):
    """y, x_hat (rows, n) and inv_std (rows,) of the contiguous x seen as ``rows`` rows, in one launch."""
    cp = backend.cupy_module()
    kernel = _normalize_rows_kernel(x.dtype.char)
    x = cp.ascontiguousarray(x).reshape(rows, -1)
    y, x_hat = cp.empty_like(x), cp.empty_like(x)
    inv_std = cp.empty(rows, dtype=x.dtype)
    if rows and x.shape[1]:
        blocks = (rows + _ROWS_PER_BLOCK - 1) // _ROWS_PER_BLOCK
        kernel((blocks,), (32 * _ROWS_PER_BLOCK,),
               (x, cp.ascontiguousarray(gamma), cp.ascontiguousarray(beta), y, x_hat, inv_std, np.int64(rows),
                np.int32(x.shape[1]), np.int32(groups), np.int64(hw), _scalar(x, eps), np.int32(silu)))
    return y, x_hat, inv_std


def _normalize_rows_backward(dy, x_hat, inv_std, gamma, beta, rows, groups, hw, silu=False):
    """dx and the gradient at the affine output, da (dy itself without SiLU), as (rows, n) arrays,
    in one launch: the mirror of _normalize_rows."""
    cp = backend.cupy_module()
    kernel = _normalize_rows_kernel(dy.dtype.char, backward=True)
    dy = cp.ascontiguousarray(dy).reshape(rows, -1)
    dx = cp.empty_like(dy)
    da = cp.empty_like(dy) if silu else dy
    if rows and dy.shape[1]:
        blocks = (rows + _ROWS_PER_BLOCK - 1) // _ROWS_PER_BLOCK
        kernel((blocks,), (32 * _ROWS_PER_BLOCK,),
               (dy, cp.ascontiguousarray(x_hat), inv_std, cp.ascontiguousarray(gamma),
                cp.ascontiguousarray(gamma if beta is None else beta), dx, da, np.int64(rows), np.int32(dy.shape[1]),
                np.int32(groups), np.int64(hw), np.int32(silu)))
    return dx, da


def layer_norm(x, gamma, beta, eps=1e-5):
    rows = x.size // x.shape[-1]
    y, x_hat, inv_std = _normalize_rows(x, gamma, beta, rows, groups=1, hw=1, eps=eps)
    return y.reshape(x.shape), (x_hat.reshape(x.shape), inv_std.reshape(x.shape[:-1] + (1,)), gamma)


def layer_norm_backward(dy, cache):
    x_hat, inv_std, gamma = cache
    D = gamma.shape[0]
    rows = dy.size // D
    dx, da = _normalize_rows_backward(dy, x_hat, inv_std, gamma, None, rows, groups=1, hw=1)
    # dbeta = sum dy,  dgamma = sum dy x_hat  (over every row)
    dgamma = _kernels().sum_of_products(da, x_hat.reshape(rows, D), _scalar(dy, 1), axis=0)
    return dx.reshape(dy.shape), dgamma, da.sum(axis=0)


def group_norm(x, gamma, beta, num_groups, eps=1e-5, silu=False):
    """One row per (sample, group): its N = C/G * H*W numbers are contiguous in x. With ``silu``
    the SiLU is applied too (group_norm_silu) and beta joins the cache."""
    B, C, G = x.shape[0], x.shape[1], num_groups
    hw = x.size // (B * C)                                                       # H*W
    y, x_hat, inv_std = _normalize_rows(x, gamma, beta, B * G, groups=G, hw=hw, eps=eps, silu=silu)
    cache = (x_hat.reshape(B, G, -1), inv_std.reshape(B, G, 1), gamma)
    return y.reshape(x.shape), cache + ((beta,) if silu else ())


def group_norm_backward(dy, cache, beta=None):
    """One row kernel for dx (with ``beta``: through the SiLU too), then dgamma and dbeta as sums
    over samples and positions of the (B, C, H*W) view."""
    x_hat, inv_std, gamma = cache                                                # (B, G, N), (B, G, 1), (C,)
    B, G, N = x_hat.shape
    C = gamma.shape[0]
    silu = beta is not None
    dx, da = _normalize_rows_backward(dy, x_hat, inv_std, gamma, beta, B * G, groups=G, hw=N * G // C, silu=silu)
    per_channel = (B, C, -1)
    da = da.reshape(per_channel)
    # dbeta_c = sum da,  dgamma_c = sum da x_hat  (over samples b and positions)
    dgamma = _kernels().sum_of_products(da, x_hat.reshape(per_channel), _scalar(dy, 1), axis=(0, 2))
    return dx.reshape(dy.shape), dgamma, da.sum(axis=(0, 2))


def group_norm_silu(x, gamma, beta, num_groups, eps=1e-5):
    return group_norm(x, gamma, beta, num_groups, eps, silu=True)


def group_norm_silu_backward(dy, cache):
    x_hat, inv_std, gamma, beta = cache
    return group_norm_backward(dy, (x_hat, inv_std, gamma), beta=beta)


# -- attention -----------------------------------------------------------------------------------
@functools.cache
def _no_mask():
    """A one-element stand-in for the mask argument when there is none (made once, not per call)."""
    return backend.cupy_module().ones(1, dtype=bool)


def attention(q, k, v, mask, scale):
    """out (B, heads, Lq, dv) and P (B, heads, Lq, Lk) in one launch; q, k, v (B, heads, L, d)."""
    cp = backend.cupy_module()
    B, heads, Lq, d = q.shape
    Lk, dv = k.shape[2], v.shape[3]
    # (B, heads, L, d) -> token-major (B, L, heads, d): free when the array is a split-heads view
    q, k, v = (cp.ascontiguousarray(t.transpose(0, 2, 1, 3)) for t in (q, k, v))
    out = cp.empty((B, Lq, heads, dv), dtype=q.dtype)
    probs = cp.empty((B, heads, Lq, Lk), dtype=q.dtype)
    has_mask = mask is not None
    mask = cp.broadcast_to(mask, probs.shape) if has_mask else _no_mask()
    _kernels().attention(q, k, v, mask, heads, Lq, Lk, d, dv, _scalar(q, scale), int(has_mask), out, probs,
                         size=B * heads * Lq)
    return out.transpose(0, 2, 1, 3), probs


# -- convolution: unfold and fold ----------------------------------------------------------------
def im2col(x, kh, kw, stride, padding, Ho, Wo):
    """x (B, C, H, W) -> col (C*kh*kw, B*Ho*Wo), one thread per col entry."""
    B, C, H, W = x.shape
    col = backend.cupy_module().empty((C * kh * kw, B * Ho * Wo), dtype=x.dtype)
    _kernels().im2col(backend.cupy_module().ascontiguousarray(x), B, C, H, W, Ho, Wo, kh, kw, stride, padding,
                      col)
    return col


def conv_output(y2d, bias, out_shape):
    """y2d (C_out, B*Ho*Wo) (+ bias per row) -> y (B, C_out, Ho, Wo), one thread per output element."""
    cp = backend.cupy_module()
    B, C_out = out_shape[0], out_shape[1]
    y = cp.empty(tuple(out_shape), dtype=y2d.dtype)
    has_bias = bias is not None
    _kernels().conv_output(y2d, bias if has_bias else y2d, C_out, B, y2d.shape[1] // B, int(has_bias),
                           y)
    return y


def col2im(col, x_shape, kh, kw, stride, padding, Ho, Wo):
    """col (C*kh*kw, B*Ho*Wo) -> (B, C, H, W), one thread per pixel."""
    B, C, H, W = x_shape
    dx = backend.cupy_module().empty(tuple(x_shape), dtype=col.dtype)
    _kernels().col2im(backend.cupy_module().ascontiguousarray(col), B, C, H, W, Ho, Wo, kh, kw, stride, padding,
                      dx)
    return dx


# -- optimiser -----------------------------------------------------------------------------------
def adamw_update(theta, g, m, v, lr, weight_decay, betas, eps, bias_correction1, bias_correction2):
    """One AdamW step of one parameter, theta, m and v updated in place (see optim.AdamW)."""
    beta1, beta2 = betas
    s = functools.partial(_scalar, theta)
    _kernels().adamw(g, s(1.0 - lr * weight_decay), s(beta1), s(1.0 - beta1), s(beta2), s(1.0 - beta2),
                     s(lr / bias_correction1), s(bias_correction2 ** 0.5), s(eps), theta, m, v)
