"""The functional pairs: gradients against finite differences (float64, random shapes), forwards
against the naive loops in nn/reference.py and against independent formulas, PyTorch where it is
installed, dtypes kept, and bad shapes refused with messages that name them.

Test bodies take the ``xp`` fixture (numpy, and cupy where a GPU is usable): inputs are drawn on
the host, copied to the device, and results compared on the host.
"""
import math
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from minidiff import backend
from minidiff.backend import to_device, to_numpy
from minidiff.nn import functional as F
from minidiff.nn.fast import blocks
from minidiff.nn.fast import conv as fast_conv
from minidiff.nn import reference
from minidiff.nn.gradcheck import gradcheck

TOL = 1e-6                   # max relative error of a float64 gradient check
FAST = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def on(xp, a):
    """A host array on xp's device (None and non-arrays pass through)."""
    if not isinstance(a, np.ndarray):
        return a
    return to_device(a, "cpu" if xp is np else "gpu")


def randn(seed, *shape):
    return np.random.default_rng(seed).standard_normal(shape)


def assert_gradients(fn, inputs, backward, xp, **kwargs):
    inputs = {name: on(xp, a) for name, a in inputs.items()}
    # the upstream gradient's seed lies outside the range the inputs' seeds are drawn from: the same
    # stream for x and dout would make dout a function of x (a group_norm check then sees grad 0)
    errors = gradcheck(fn, inputs, backward, seed=2**20, **kwargs)
    shapes = {name: getattr(a, "shape", a) for name, a in inputs.items()}
    assert errors and max(errors.values()) < TOL, f"relative errors {errors} for inputs {shapes}"


# ------------------------------------------------------------------------------------------------
# gradient checks on random shapes
# ------------------------------------------------------------------------------------------------
@FAST
@given(lead=st.lists(st.integers(1, 3), min_size=1, max_size=2), n_in=st.integers(1, 4),
       n_out=st.integers(1, 4), bias=st.booleans(), seed=st.integers(0, 2**16))
def test_linear_gradients_match_finite_differences(xp, lead, n_in, n_out, bias, seed):
    assert_gradients(F.linear, {"x": randn(seed, *lead, n_in), "w": randn(seed + 1, n_out, n_in),
                                "b": randn(seed + 2, n_out) if bias else None}, F.linear_backward, xp)


conv_geometry = dict(batch=st.integers(1, 2), c_in=st.integers(1, 3), c_out=st.integers(1, 3),
                     kernel=st.sampled_from([1, 3, 4]), stride=st.sampled_from([1, 2]),
                     padding=st.sampled_from([0, 1, 2]), height=st.integers(1, 7), width=st.integers(1, 7),
                     bias=st.booleans(), seed=st.integers(0, 2**16))


@pytest.fixture(params=["batch-first", "batch-last"])
def columns(request):
    """Run a convolution test with the fast route's im2col columns in each order (fast.conv.batch_last
    picks one by image size; the math must not depend on it). The fused GPU kernels are batch-first only."""
    chosen = request.param == "batch-last"
    original = fast_conv.batch_last
    fast_conv.batch_last = lambda x, Ho, Wo: chosen and not backend.use_fused(x)
    yield request.param
    fast_conv.batch_last = original


@FAST
@given(**conv_geometry)
def test_conv2d_gradients_match_finite_differences(xp, columns, batch, c_in, c_out, kernel, stride, padding,
                                                   height, width, bias, seed):
    height, width = max(height, kernel - 2 * padding), max(width, kernel - 2 * padding)
    assert_gradients(lambda x, w, b: F.conv2d(x, w, b, stride=stride, padding=padding),
                     {"x": randn(seed, batch, c_in, height, width), "w": randn(seed + 1, c_out, c_in, kernel, kernel),
                      "b": randn(seed + 2, c_out) if bias else None}, F.conv2d_backward, xp)


@FAST
@given(output_padding=st.integers(0, 1), **conv_geometry)
def test_conv_transpose2d_gradients_match_finite_differences(xp, columns, batch, c_in, c_out, kernel, stride, padding,
                                                             height, width, bias, seed, output_padding):
    output_padding = min(output_padding, stride - 1)
    height, width = min(height, 4), min(width, 4)
    if min(height, width) - 1 + kernel + output_padding - 2 * padding < 1:   # padding would remove everything
        padding = 0
    assert_gradients(lambda x, w, b: F.conv_transpose2d(x, w, b, stride, padding, output_padding),
                     {"x": randn(seed, batch, c_in, height, width), "w": randn(seed + 1, c_in, c_out, kernel, kernel),
                      "b": randn(seed + 2, c_out) if bias else None}, F.conv_transpose2d_backward, xp)


@FAST
@given(height=st.integers(1, 5), width=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_upsample_nearest2x_gradient_matches_finite_differences(xp, height, width, seed):
    assert_gradients(F.upsample_nearest2x, {"x": randn(seed, 2, 2, height, width)},
                     F.upsample_nearest2x_backward, xp)


@FAST
@given(kernel=st.integers(1, 3), height=st.integers(3, 7), width=st.integers(3, 7), seed=st.integers(0, 2**16))
def test_avg_pool2d_gradient_matches_finite_differences(xp, kernel, height, width, seed):
    assert_gradients(lambda x: F.avg_pool2d(x, kernel), {"x": randn(seed, 2, 2, height, width)},
                     F.avg_pool2d_backward, xp)


@FAST
@given(groups=st.integers(1, 3), per_group=st.integers(1, 3),
       spatial=st.lists(st.integers(1, 4), min_size=0, max_size=2), seed=st.integers(0, 2**16))
def test_group_norm_gradients_match_finite_differences(xp, groups, per_group, spatial, seed):
    C, N = groups * per_group, per_group * math.prod(spatial)
    assume(N >= 2)                                            # one number per group: x_hat = 0, nothing to check
    # with 2 numbers per group x_hat is +-1 whatever x is, its true gradient ~eps-sized and swamped
    # by rounding noise in the finite differences; a large eps keeps the check meaningful
    eps = 1e-5 if N >= 3 else 0.5
    assert_gradients(lambda x, g, b: F.group_norm(x, g, b, groups, eps),
                     {"x": randn(seed, 2, C, *spatial) * 3 + 1, "gamma": randn(seed + 1, C),
                      "beta": randn(seed + 2, C)}, F.group_norm_backward, xp)


@FAST
@given(groups=st.integers(1, 3), per_group=st.integers(1, 3),
       spatial=st.lists(st.integers(1, 4), min_size=0, max_size=2), seed=st.integers(0, 2**16))
def test_group_norm_silu_gradients_match_finite_differences(xp, groups, per_group, spatial, seed):
    C, N = groups * per_group, per_group * math.prod(spatial)
    assume(N >= 2)
    eps = 1e-5 if N >= 3 else 0.5                             # as for group_norm
    assert_gradients(lambda x, g, b: F.group_norm_silu(x, g, b, groups, eps),
                     {"x": randn(seed, 2, C, *spatial) * 3 + 1, "gamma": randn(seed + 1, C),
                      "beta": randn(seed + 2, C)}, F.group_norm_silu_backward, xp)


def test_group_norm_silu_is_silu_of_group_norm(xp):
    x, gamma, beta = (on(xp, randn(i, *shape)) for i, shape in enumerate([(2, 6, 3, 4), (6,), (6,)]))
    y, _ = F.group_norm_silu(x, gamma, beta, 3)
    expected, _ = F.silu(F.group_norm(x, gamma, beta, 3)[0])
    np.testing.assert_allclose(to_numpy(y), to_numpy(expected), rtol=1e-12, atol=1e-12)


@FAST
# dim >= 2: over one element x_hat is 0 and dL/dx is exactly 0, so a relative error is only noise
@given(lead=st.lists(st.integers(1, 3), min_size=0, max_size=2), dim=st.integers(2, 6), seed=st.integers(0, 2**16))
def test_layer_norm_gradients_match_finite_differences(xp, lead, dim, seed):
    eps = 1e-5 if dim >= 3 else 0.5                          # as for group_norm: tiny rows need a larger eps
    assert_gradients(lambda x, g, b: F.layer_norm(x, g, b, eps), {"x": randn(seed, *lead, dim) * 2 - 1, "gamma": randn(seed + 1, dim),
                                    "beta": randn(seed + 2, dim)}, F.layer_norm_backward, xp)


ACTIVATIONS = {
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "softmax_last": F.softmax,
    "softmax_first": lambda x: F.softmax(x, axis=0),
}
ACTIVATION_BACKWARDS = {"silu": F.silu_backward, "gelu": F.gelu_backward, "gelu_tanh": F.gelu_backward,
                        "softmax_last": F.softmax_backward, "softmax_first": F.softmax_backward}


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_gradients_match_finite_differences(xp, name):
    x = randn(3, 4, 9) * 3                                    # covers both tails and erf's |x| = 1 switch
    assert_gradients(ACTIVATIONS[name], {"x": x}, ACTIVATION_BACKWARDS[name], xp)


@FAST
@given(lead=st.lists(st.integers(1, 3), min_size=0, max_size=2), half=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_geglu_gradients_match_finite_differences(xp, lead, half, seed):
    assert_gradients(F.geglu, {"h": randn(seed, *lead, 2 * half) * 3}, F.geglu_backward, xp)


def test_geglu_is_a_times_gelu_of_gate(xp):
    h = randn(0, 2, 3, 8) * 3
    y, _ = F.geglu(on(xp, h))
    np.testing.assert_allclose(to_numpy(y), h[..., :4] * F.gelu(h[..., 4:])[0], rtol=1e-14, atol=0)


@FAST
@given(lead=st.lists(st.integers(1, 3), min_size=0, max_size=2), classes=st.integers(1, 6),
       axis=st.sampled_from([-1, 0]), seed=st.integers(0, 2**16))
def test_log_softmax_gradients_match_finite_differences(xp, lead, classes, axis, seed):
    assert_gradients(lambda x: F.log_softmax(x, axis=axis), {"x": randn(seed, *lead, classes) * 3},
                     F.log_softmax_backward, xp)


def test_log_softmax_is_the_log_of_softmax_without_overflow(xp):
    x = randn(0, 3, 4, 7) * 30
    log_p, _ = F.log_softmax(on(xp, x))
    np.testing.assert_allclose(to_numpy(log_p), np.log(to_numpy(F.softmax(on(xp, x))[0])), rtol=1e-10, atol=1e-12)
    big, _ = F.log_softmax(on(xp, x * 1e4 + 1e6))                  # exp(x) alone would overflow
    big = to_numpy(big)
    assert np.all(np.isfinite(big)) and np.all(big <= 0)
    np.testing.assert_allclose(np.exp(big).sum(axis=-1), 1.0, rtol=1e-12)


def make_mask(kind, rng, B, Lq, Lk):
    """None, a causal mask (query i sees keys <= i) or a key-padding mask (per-sample key lengths,
    a length of 0 leaves whole rows masked)."""
    if kind == "none":
        return None
    if kind == "causal":
        return np.tril(np.ones((Lq, Lk), bool))
    lengths = rng.integers(0, Lk + 1, size=B)
    return (np.arange(Lk)[None, :] < lengths[:, None])[:, None, None, :]    # (B, 1, 1, Lk)


@FAST
@given(B=st.integers(1, 2), heads=st.integers(1, 2), Lq=st.integers(1, 4), Lk=st.integers(1, 4),
       d=st.integers(1, 4), dv=st.integers(1, 3), mask_kind=st.sampled_from(["none", "causal", "padding"]),
       seed=st.integers(0, 2**16))
def test_attention_gradients_match_finite_differences(xp, B, heads, Lq, Lk, d, dv, mask_kind, seed):
    mask = make_mask(mask_kind, np.random.default_rng(seed), B, Lq, Lk)
    assert_gradients(F.attention, {"q": randn(seed, B, heads, Lq, d), "k": randn(seed + 1, B, heads, Lk, d),
                                   "v": randn(seed + 2, B, heads, Lk, dv), "mask": mask}, F.attention_backward, xp)


def test_embedding_gradient_adds_up_repeated_ids(xp):
    ids = np.array([[0, 2, 2], [3, 2, 0]])                    # id 2 three times, id 1 never
    assert_gradients(lambda w: F.embedding(on(xp, ids), w), {"weight": randn(0, 4, 3)}, F.embedding_backward, xp)
    dweight = F.embedding_backward(on(xp, np.ones((2, 3, 3))), F.embedding(on(xp, ids), on(xp, randn(0, 4, 3)))[1])
    np.testing.assert_array_equal(to_numpy(dweight)[:, 0], [2, 0, 3, 1])


def test_loss_gradients_match_finite_differences(xp):
    targets = on(xp, np.array([0, 3, 3, 1]))
    assert_gradients(F.mse_loss, {"pred": randn(0, 3, 4), "target": randn(1, 3, 4)},
                     lambda d, cache: (F.mse_loss_backward(d, cache), None), xp)
    assert_gradients(lambda z: F.cross_entropy(z, targets), {"logits": randn(2, 4, 5) * 3},
                     lambda d, cache: (F.cross_entropy_backward(d, cache),), xp)


def test_dropout_gradient_uses_the_same_mask(xp):
    assert_gradients(lambda x: F.dropout(x, 0.4, np.random.default_rng(5)), {"x": randn(0, 6, 7)},
                     F.dropout_backward, xp)


# ------------------------------------------------------------------------------------------------
# forwards against the naive loops
# ------------------------------------------------------------------------------------------------
@FAST
@given(**conv_geometry)
def test_conv2d_matches_naive_loops(xp, columns, batch, c_in, c_out, kernel, stride, padding, height, width, bias, seed):
    height, width = max(height, kernel - 2 * padding), max(width, kernel - 2 * padding)
    x, w = randn(seed, batch, c_in, height, width), randn(seed + 1, c_out, c_in, kernel, kernel)
    b = randn(seed + 2, c_out) if bias else None
    y, _ = F.conv2d(on(xp, x), on(xp, w), on(xp, b), stride=stride, padding=padding)
    np.testing.assert_allclose(to_numpy(y), reference.conv2d(x, w, b, stride, padding), rtol=1e-10, atol=1e-12)


@FAST
@given(output_padding=st.integers(0, 1), **conv_geometry)
def test_conv_transpose2d_matches_naive_loops(xp, columns, batch, c_in, c_out, kernel, stride, padding, height, width,
                                              bias, seed, output_padding):
    output_padding = min(output_padding, stride - 1)
    if min(height, width) - 1 + kernel + output_padding - 2 * padding < 1:
        padding = 0
    x, w = randn(seed, batch, c_in, height, width), randn(seed + 1, c_in, c_out, kernel, kernel)
    b = randn(seed + 2, c_out) if bias else None
    y, _ = F.conv_transpose2d(on(xp, x), on(xp, w), on(xp, b), stride, padding, output_padding)
    expected = reference.conv_transpose2d(x, w, b, stride, padding, output_padding)
    assert y.shape == expected.shape
    np.testing.assert_allclose(to_numpy(y), expected, rtol=1e-10, atol=1e-12)


@FAST
@given(B=st.integers(1, 2), heads=st.integers(1, 2), Lq=st.integers(1, 5), Lk=st.integers(1, 5),
       d=st.integers(1, 4), mask_kind=st.sampled_from(["none", "causal", "padding"]), seed=st.integers(0, 2**16))
def test_attention_matches_naive_loops(xp, B, heads, Lq, Lk, d, mask_kind, seed):
    q, k, v = randn(seed, B, heads, Lq, d), randn(seed + 1, B, heads, Lk, d), randn(seed + 2, B, heads, Lk, 3)
    mask = make_mask(mask_kind, np.random.default_rng(seed), B, Lq, Lk)
    out, _ = F.attention(on(xp, q), on(xp, k), on(xp, v), on(xp, mask))
    np.testing.assert_allclose(to_numpy(out), reference.attention(q, k, v, mask), rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# properties and independent checks (these need nothing but NumPy)
# ------------------------------------------------------------------------------------------------
@FAST
@given(stride=st.integers(1, 3), padding=st.integers(0, 2), kernel=st.integers(1, 4), size=st.integers(2, 6),
       seed=st.integers(0, 2**16))
def test_conv_transpose2d_is_the_adjoint_of_conv2d(xp, stride, padding, kernel, size, seed):
    """<conv2d(x), y> = <x, conv_transpose2d(y)> for the same weights: the defining identity."""
    size = max(size, kernel - 2 * padding)
    x, w = on(xp, randn(seed, 2, 3, size, size)), on(xp, randn(seed + 1, 4, 3, kernel, kernel))
    conv_x, _ = F.conv2d(x, w, stride=stride, padding=padding)
    y = on(xp, randn(seed + 2, *conv_x.shape))
    output_padding = (size + 2 * padding - kernel) % stride    # the rows conv2d's floor dropped
    transposed_y, _ = F.conv_transpose2d(y, w, stride=stride, padding=padding, output_padding=output_padding)
    assert transposed_y.shape == x.shape
    np.testing.assert_allclose(float((conv_x * y).sum()), float((x * transposed_y).sum()), rtol=1e-10)


@pytest.mark.parametrize("in_size, kernel, stride, padding, output_padding, out_size", [
    (4, 4, 2, 1, 0, 8),        # the usual 2x upsampler
    (3, 3, 2, 1, 1, 6),        # 3x3 kernel, stride 2: output_padding picks 6 over 5
    (5, 3, 1, 1, 0, 5),        # "same" size
    (2, 1, 3, 0, 2, 6),
])
def test_conv_transpose2d_output_size_follows_pytorch(xp, in_size, kernel, stride, padding, output_padding, out_size):
    x, w = on(xp, np.ones((1, 1, in_size, in_size))), on(xp, np.ones((1, 2, kernel, kernel)))
    y, _ = F.conv_transpose2d(x, w, stride=stride, padding=padding, output_padding=output_padding)
    assert y.shape == (1, 2, out_size, out_size)


def test_softmax_rows_sum_to_one_and_ignore_shifts(xp):
    x = randn(0, 3, 4, 7) * 30 + 500                          # large: exp would overflow without the max
    y, _ = F.softmax(on(xp, x), axis=-1)
    y = to_numpy(y)
    assert np.all(np.isfinite(y)) and np.all(y >= 0)
    np.testing.assert_allclose(y.sum(axis=-1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(to_numpy(F.softmax(on(xp, x - 123.0))[0]), y, rtol=1e-10)


def test_fully_masked_attention_rows_are_zero_and_pass_no_gradient(xp):
    mask = np.ones((1, 1, 3, 4), bool)
    mask[0, 0, 1] = False                                     # query 1 may attend to nothing
    q, k, v = (on(xp, randn(s, 1, 2, 3 if s == 0 else 4, 5)) for s in range(3))
    out, cache = F.attention(q, k, v, on(xp, mask))
    out = to_numpy(out)
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(out[0, :, 1], 0.0)
    assert np.abs(out[0, :, 0]).max() > 0
    dq, dk, dv = F.attention_backward(on(xp, np.ones(out.shape)), cache)
    np.testing.assert_array_equal(to_numpy(dq)[0, :, 1], 0.0)


def test_erf_matches_math_erf(xp):
    x = np.concatenate([np.linspace(-7, 7, 4001), [-1.0, 1.0, 0.0, -30.0, 30.0, 1e-300]])
    expected = np.array([math.erf(v) for v in x])
    got = F.erf(on(xp, x))
    np.testing.assert_allclose(to_numpy(got), expected, rtol=0, atol=1e-15)
    got32 = F.erf(on(xp, x.astype(np.float32)))
    assert got32.dtype == np.float32
    np.testing.assert_allclose(to_numpy(got32), expected, rtol=0, atol=3e-7)


def test_normal_cdf_matches_math_erfc_in_both_precisions(xp):
    x = np.concatenate([np.linspace(-12, 9, 4001), [0.0, -1e-30, 1e-30]])
    expected = np.array([0.5 * math.erfc(-v / math.sqrt(2)) for v in x])
    np.testing.assert_allclose(to_numpy(F.normal_cdf(on(xp, x))), expected, rtol=1e-13, atol=1e-15)
    # float64 keeps its relative accuracy deep in the lower tail (each of Cephes' erfc branches)
    tail_x = np.linspace(-30, -0.5, 2001)
    tail_expected = np.array([0.5 * math.erfc(-v / math.sqrt(2)) for v in tail_x])
    np.testing.assert_allclose(to_numpy(F.normal_cdf(on(xp, tail_x))), tail_expected, rtol=2e-13, atol=0)
    got32 = F.normal_cdf(on(xp, x.astype(np.float32)))
    assert got32.dtype == np.float32
    # float32: 3e-7 absolute everywhere, and relative accuracy kept deep in the lower tail
    np.testing.assert_allclose(to_numpy(got32), expected, rtol=0, atol=3e-7)
    tail = x < -4
    np.testing.assert_allclose(to_numpy(got32)[tail], expected[tail], rtol=1e-4)
    # a large host array goes through in cache-sized blocks: the same numbers
    big = np.linspace(-12, 9, 7 * (blocks.BLOCK // 2 + 1)).astype(np.float32).reshape(-1, 7)
    np.testing.assert_array_equal(to_numpy(F.normal_cdf(on(xp, big)))[::997],
                                  to_numpy(F.normal_cdf(on(xp, big[::997].copy()))))


def test_gelu_matches_its_definition(xp):
    x = np.linspace(-5, 5, 101)
    phi = np.array([0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x])          # standard normal CDF
    tanh_phi = 0.5 * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    np.testing.assert_allclose(to_numpy(F.gelu(on(xp, x))[0]), x * phi, rtol=0, atol=1e-14)
    np.testing.assert_allclose(to_numpy(F.gelu(on(xp, x), "tanh")[0]), x * tanh_phi, rtol=0, atol=1e-14)
    # PyTorch's values: gelu(1) = 0.8413447460685429, gelu_tanh(1) = 0.8411919906082768
    np.testing.assert_allclose(to_numpy(F.gelu(on(xp, np.array([1.0])))[0]), 0.8413447460685429, rtol=1e-14)
    np.testing.assert_allclose(to_numpy(F.gelu(on(xp, np.array([1.0])), "tanh")[0]), 0.8411919906082768, rtol=1e-14)


def test_silu_is_x_times_sigmoid_without_overflow(xp):
    x = np.array([-1000.0, -20.0, -1.0, 0.0, 1.0, 20.0, 1000.0])
    y, _ = F.silu(on(xp, x))
    with np.errstate(over="ignore"):
        expected = x / (1 + np.exp(-x))
    np.testing.assert_allclose(to_numpy(y), expected, rtol=1e-14, atol=1e-30)


@FAST
@given(groups=st.integers(1, 4), per_group=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_group_norm_gives_each_group_zero_mean_unit_variance(xp, groups, per_group, seed):
    C = groups * per_group
    x = randn(seed, 3, C, 4, 5) * 7 + 3
    y, _ = F.group_norm(on(xp, x), on(xp, np.ones(C)), on(xp, np.zeros(C)), groups, eps=0.0)
    y = to_numpy(y).reshape(3, groups, -1)
    np.testing.assert_allclose(y.mean(axis=-1), 0.0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=-1), 1.0, rtol=1e-12)


def test_layer_norm_equals_group_norm_with_one_group_per_row(xp):
    x, gamma, beta = randn(0, 4, 6), randn(1, 6), randn(2, 6)
    y_ln, _ = F.layer_norm(on(xp, x), on(xp, gamma), on(xp, beta))
    y_gn, _ = F.group_norm(on(xp, x[:, :, None]), on(xp, np.ones(6)), on(xp, np.zeros(6)), 1)
    np.testing.assert_allclose(to_numpy(y_ln), to_numpy(y_gn)[:, :, 0] * gamma + beta, rtol=1e-12)


def test_cross_entropy_is_mean_negative_log_probability(xp):
    logits, targets = randn(0, 5, 4) * 4, np.array([0, 3, 1, 1, 2])
    loss, _ = F.cross_entropy(on(xp, logits), on(xp, targets))
    expected = np.mean([math.log(sum(math.exp(v) for v in row)) - row[t] for row, t in zip(logits, targets)])
    np.testing.assert_allclose(float(loss), expected, rtol=1e-12)
    big, _ = F.cross_entropy(on(xp, logits * 1e4), on(xp, targets))          # no overflow
    assert math.isfinite(float(big))


def test_mse_loss_is_mean_squared_difference(xp):
    pred, target = randn(0, 3, 5), randn(1, 3, 5)
    loss, cache = F.mse_loss(on(xp, pred), on(xp, target))
    np.testing.assert_allclose(float(loss), np.mean((pred - target) ** 2), rtol=1e-12)
    np.testing.assert_allclose(to_numpy(F.mse_loss_backward(0.5, cache)), 0.5 * 2 * (pred - target) / 15, rtol=1e-12)


def test_linear_is_x_times_w_transposed_plus_b(xp):
    x, w, b = randn(0, 2, 3, 4), randn(1, 5, 4), randn(2, 5)
    y, _ = F.linear(on(xp, x), on(xp, w), on(xp, b))
    np.testing.assert_allclose(to_numpy(y), np.einsum("abi,oi->abo", x, w) + b, rtol=1e-12)


def test_upsample_then_avg_pool_is_the_identity(xp):
    x = randn(0, 2, 3, 4, 5)
    up, _ = F.upsample_nearest2x(on(xp, x))
    assert up.shape == (2, 3, 8, 10)
    np.testing.assert_array_equal(to_numpy(up)[:, :, 2 * 3 + 1, 2 * 4], x[:, :, 3, 4])
    np.testing.assert_allclose(to_numpy(F.avg_pool2d(up, 2)[0]), x, rtol=1e-14)


def test_dropout_keeps_the_expected_value_and_is_the_identity_in_eval(xp):
    x = on(xp, np.ones((200, 500)))
    y, _ = F.dropout(x, 0.3, np.random.default_rng(0))
    y = to_numpy(y)
    assert abs((y == 0).mean() - 0.3) < 0.01                  # about p of the entries dropped
    assert abs(y.mean() - 1.0) < 0.02                         # E[y] = x thanks to 1 / (1 - p)
    y_eval, cache = F.dropout(x, 0.3, np.random.default_rng(0), training=False)
    assert y_eval is x and cache is None


def test_sinusoidal_embedding_matches_its_formula(xp):
    t = np.array([0, 7, 999])
    emb = to_numpy(F.sinusoidal_embedding(on(xp, t), 6))
    freqs = [10000 ** (-i / 3) for i in range(3)]
    expected = [[math.cos(s * f) for f in freqs] + [math.sin(s * f) for f in freqs] for s in t]
    assert emb.dtype == np.float32 and emb.shape == (3, 6)
    np.testing.assert_allclose(emb, expected, rtol=0, atol=1e-6)
    odd = to_numpy(F.sinusoidal_embedding(on(xp, t), 7))
    np.testing.assert_array_equal(odd[:, :6], emb)
    np.testing.assert_array_equal(odd[:, 6], 0.0)


# ------------------------------------------------------------------------------------------------
# float32 stays float32
# ------------------------------------------------------------------------------------------------
def float32_cases():
    def f32(*shape):
        return randn(0, *shape).astype(np.float32)
    return {
        "linear": (F.linear, F.linear_backward, (f32(2, 3), f32(4, 3), f32(4))),
        "conv2d": (lambda x, w, b: F.conv2d(x, w, b, 2, 1), F.conv2d_backward, (f32(1, 2, 5, 5), f32(3, 2, 3, 3), f32(3))),
        "conv_transpose2d": (lambda x, w, b: F.conv_transpose2d(x, w, b, 2, 1, 1), F.conv_transpose2d_backward,
                             (f32(1, 2, 3, 3), f32(2, 3, 3, 3), f32(3))),
        "upsample_nearest2x": (F.upsample_nearest2x, F.upsample_nearest2x_backward, (f32(1, 2, 3, 3),)),
        "avg_pool2d": (F.avg_pool2d, F.avg_pool2d_backward, (f32(1, 2, 4, 4),)),
        "group_norm": (lambda x, g, b: F.group_norm(x, g, b, 2), F.group_norm_backward, (f32(2, 4, 3, 3), f32(4), f32(4))),
        "group_norm_silu": (lambda x, g, b: F.group_norm_silu(x, g, b, 2), F.group_norm_silu_backward,
                            (f32(2, 4, 3, 3), f32(4), f32(4))),
        "layer_norm": (F.layer_norm, F.layer_norm_backward, (f32(2, 5), f32(5), f32(5))),
        "silu": (F.silu, F.silu_backward, (f32(3, 4),)),
        "gelu": (F.gelu, F.gelu_backward, (f32(3, 4),)),
        "gelu_tanh": (lambda x: F.gelu(x, "tanh"), F.gelu_backward, (f32(3, 4),)),
        "geglu": (F.geglu, F.geglu_backward, (f32(3, 4),)),
        "softmax": (F.softmax, F.softmax_backward, (f32(3, 4),)),
        "log_softmax": (F.log_softmax, F.log_softmax_backward, (f32(3, 4),)),
        "attention": (lambda q, k, v: F.attention(q, k, v, np.tril(np.ones((3, 3), bool))), F.attention_backward,
                      (f32(1, 2, 3, 4), f32(1, 2, 3, 4), f32(1, 2, 3, 4))),
        "dropout": (lambda x: F.dropout(x, 0.5, np.random.default_rng(0)), F.dropout_backward, (f32(3, 4),)),
        "mse_loss": (F.mse_loss, F.mse_loss_backward, (f32(3, 4), f32(3, 4))),
        "cross_entropy": (lambda z: F.cross_entropy(z, np.array([0, 2, 1])), F.cross_entropy_backward, (f32(3, 4),)),
    }


@pytest.mark.parametrize("name", list(float32_cases()))
def test_float32_stays_float32(xp, name):
    forward, backward, inputs = float32_cases()[name]
    inputs = [on(xp, a) for a in inputs]
    out, cache = forward(*inputs)
    assert out.dtype == np.float32, f"{name} forward gave {out.dtype}"
    grads = backward(on(xp, np.ones(out.shape, np.float32)) if out.ndim else 1.0, cache)
    for g in grads if isinstance(grads, tuple) else (grads,):
        assert g is None or g.dtype == np.float32, f"{name} backward gave {g.dtype}"


def test_embedding_and_timestep_embedding_keep_float32(xp):
    y, cache = F.embedding(np.array([1, 0]), on(xp, randn(0, 3, 2).astype(np.float32)))
    assert y.dtype == np.float32 and F.embedding_backward(y, cache).dtype == np.float32
    assert F.sinusoidal_embedding(on(xp, np.array([3.0])), 8).dtype == np.float32


# ------------------------------------------------------------------------------------------------
# bad input: one clear ValueError naming the shapes
# ------------------------------------------------------------------------------------------------
def z(*shape, dtype=np.float64):
    return np.zeros(shape, dtype)


BAD_INPUTS = {
    "conv2d channels": (lambda: F.conv2d(z(1, 3, 5, 5), z(4, 2, 3, 3)), ["(1, 3, 5, 5)", "(4, 2, 3, 3)"]),
    "conv2d kernel too big": (lambda: F.conv2d(z(1, 1, 2, 2), z(1, 1, 3, 3)), ["3x3", "2x2"]),
    "conv2d not 4-D": (lambda: F.conv2d(z(3, 5, 5), z(4, 3, 3, 3)), ["(B, C_in, H, W)", "(3, 5, 5)"]),
    "conv2d stride 0": (lambda: F.conv2d(z(1, 1, 4, 4), z(1, 1, 3, 3), stride=0), ["stride", "0"]),
    "conv2d bias": (lambda: F.conv2d(z(1, 1, 4, 4), z(2, 1, 3, 3), z(3)), ["(2,)", "(3,)"]),
    "conv_transpose2d channels": (lambda: F.conv_transpose2d(z(1, 3, 4, 4), z(2, 5, 3, 3)), ["(1, 3, 4, 4)", "(2, 5, 3, 3)"]),
    "conv_transpose2d output_padding": (lambda: F.conv_transpose2d(z(1, 1, 2, 2), z(1, 1, 3, 3), stride=2, output_padding=2),
                                        ["output_padding", "stride=2"]),
    "linear features": (lambda: F.linear(z(2, 5), z(3, 4)), ["(2, 5)", "(3, 4)"]),
    "group_norm groups": (lambda: F.group_norm(z(2, 6, 3, 3), z(6), z(6), 4), ["6 channels", "4 groups"]),
    "group_norm gamma": (lambda: F.group_norm(z(2, 6, 3, 3), z(5), z(6), 3), ["gamma", "(6,)", "(5,)"]),
    "layer_norm gamma": (lambda: F.layer_norm(z(2, 6), z(4), z(6)), ["gamma", "(6,)", "(4,)"]),
    "attention head dim": (lambda: F.attention(z(1, 2, 3, 4), z(1, 2, 3, 5), z(1, 2, 3, 5)), ["(1, 2, 3, 4)", "(1, 2, 3, 5)"]),
    "attention key count": (lambda: F.attention(z(1, 2, 3, 4), z(1, 2, 3, 4), z(1, 2, 6, 4)), ["(1, 2, 3, 4)", "(1, 2, 6, 4)"]),
    "attention mask shape": (lambda: F.attention(z(1, 2, 3, 4), z(1, 2, 5, 4), z(1, 2, 5, 4), np.ones((3, 3), bool)),
                             ["(1, 2, 3, 5)", "(3, 3)"]),
    "attention mask dtype": (lambda: F.attention(z(1, 1, 2, 4), z(1, 1, 2, 4), z(1, 1, 2, 4), np.ones((2, 2))), ["bool", "float64"]),
    "mixed dtypes": (lambda: F.linear(z(2, 3, dtype=np.float32), z(4, 3)), ["float64", "float32"]),
    "integer input": (lambda: F.silu(np.arange(3)), ["floating", "int"]),
    "log_softmax integer input": (lambda: F.log_softmax(np.arange(3)), ["log_softmax", "floating"]),
    "gelu approximate": (lambda: F.gelu(z(3), approximate="fast"), ["'none'", "'tanh'", "'fast'"]),
    "geglu odd width": (lambda: F.geglu(z(2, 5)), ["even", "(2, 5)"]),
    "embedding id range": (lambda: F.embedding(np.array([0, 4]), z(4, 2)), ["[0, 4)", "4"]),
    "embedding float ids": (lambda: F.embedding(np.array([0.0, 1.0]), z(4, 2)), ["integers", "float64"]),
    "cross_entropy targets": (lambda: F.cross_entropy(z(3, 4), np.array([0, 1])), ["(3,)", "(2,)"]),
    "cross_entropy class range": (lambda: F.cross_entropy(z(2, 4), np.array([0, 7])), ["[0, 4)", "7"]),
    "mse_loss shapes": (lambda: F.mse_loss(z(2, 3), z(3, 2)), ["(2, 3)", "(3, 2)"]),
    "avg_pool2d kernel": (lambda: F.avg_pool2d(z(1, 1, 2, 2), 3), ["kernel_size=3", "2x2"]),
    "dropout p": (lambda: F.dropout(z(3), 1.5, np.random.default_rng(0)), ["p", "1.5"]),
    "sinusoidal t": (lambda: F.sinusoidal_embedding(np.zeros((2, 2)), 8), ["(2, 2)"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_value_error_naming_the_values(case):
    call, fragments = BAD_INPUTS[case]
    with pytest.raises(ValueError) as info:
        call()
    for fragment in fragments:
        assert fragment in str(info.value), f"{fragment!r} missing from: {info.value}"


# ------------------------------------------------------------------------------------------------
# against PyTorch (float64, forward and backward), where it is installed
# ------------------------------------------------------------------------------------------------
def torch_cases():
    rng = np.random.default_rng(0)
    mask = rng.random((2, 1, 3, 5)) > 0.3
    mask[..., 0] = True                                       # PyTorch gives NaN for fully masked rows
    ce_targets = np.array([0, 4, 2])
    return {
        # name: (inputs, ours(*inputs) -> (out, cache), ours_backward, theirs(torch, *tensors) -> out)
        "gelu": ((randn(0, 3, 7) * 3,), F.gelu, F.gelu_backward, lambda t, x: t.nn.functional.gelu(x)),
        "gelu_tanh": ((randn(0, 3, 7) * 3,), lambda x: F.gelu(x, "tanh"), F.gelu_backward,
                      lambda t, x: t.nn.functional.gelu(x, approximate="tanh")),
        "silu": ((randn(0, 3, 7) * 3,), F.silu, F.silu_backward, lambda t, x: t.nn.functional.silu(x)),
        "geglu": ((randn(0, 3, 8) * 3,), F.geglu, F.geglu_backward,
                  lambda t, h: h[..., :4] * t.nn.functional.gelu(h[..., 4:])),
        "group_norm": ((randn(0, 2, 6, 3, 4), randn(1, 6), randn(2, 6)), lambda x, g, b: F.group_norm(x, g, b, 3),
                       F.group_norm_backward, lambda t, x, g, b: t.nn.functional.group_norm(x, 3, g, b)),
        "group_norm_silu": ((randn(0, 2, 6, 3, 4), randn(1, 6), randn(2, 6)),
                            lambda x, g, b: F.group_norm_silu(x, g, b, 3), F.group_norm_silu_backward,
                            lambda t, x, g, b: t.nn.functional.silu(t.nn.functional.group_norm(x, 3, g, b))),
        "layer_norm": ((randn(0, 2, 3, 6), randn(1, 6), randn(2, 6)), F.layer_norm, F.layer_norm_backward,
                       lambda t, x, g, b: t.nn.functional.layer_norm(x, (6,), g, b)),
        "conv2d": ((randn(0, 2, 3, 7, 6), randn(1, 4, 3, 3, 3), randn(2, 4)), lambda x, w, b: F.conv2d(x, w, b, 2, 1),
                   F.conv2d_backward, lambda t, x, w, b: t.nn.functional.conv2d(x, w, b, stride=2, padding=1)),
        "conv_transpose2d": ((randn(0, 2, 3, 4, 5), randn(1, 3, 2, 4, 4), randn(2, 2)),
                             lambda x, w, b: F.conv_transpose2d(x, w, b, 2, 1), F.conv_transpose2d_backward,
                             lambda t, x, w, b: t.nn.functional.conv_transpose2d(x, w, b, stride=2, padding=1)),
        "attention": ((randn(0, 2, 3, 3, 4), randn(1, 2, 3, 5, 4), randn(2, 2, 3, 5, 2)),
                      lambda q, k, v: F.attention(q, k, v, mask), F.attention_backward,
                      lambda t, q, k, v: t.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=t.tensor(mask))),
        "log_softmax": ((randn(0, 3, 5) * 2,), F.log_softmax, F.log_softmax_backward,
                        lambda t, z: t.nn.functional.log_softmax(z, dim=-1)),
        "cross_entropy": ((randn(0, 3, 5) * 2,), lambda z: F.cross_entropy(z, ce_targets),
                          lambda d, cache: (F.cross_entropy_backward(d, cache),),
                          lambda t, z: t.nn.functional.cross_entropy(z, t.tensor(ce_targets))),
    }


@pytest.mark.parametrize("name", list(torch_cases()))
def test_forward_and_backward_match_pytorch(name):
    torch = pytest.importorskip("torch")
    inputs, ours, ours_backward, theirs = torch_cases()[name]
    out, cache = ours(*inputs)
    d_out = randn(9, *out.shape)
    grads = ours_backward(d_out, cache)
    grads = grads if isinstance(grads, tuple) else (grads,)
    tensors = [torch.tensor(a, requires_grad=True) for a in inputs]
    t_out = theirs(torch, *tensors)
    t_out.backward(torch.tensor(d_out))
    np.testing.assert_allclose(out, t_out.detach().numpy(), rtol=1e-10, atol=1e-12)
    for ours_grad, tensor in zip(grads, tensors):
        np.testing.assert_allclose(ours_grad, tensor.grad.numpy(), rtol=1e-9, atol=1e-12)


def test_sinusoidal_embedding_matches_diffusers():
    pytest.importorskip("diffusers")
    torch = pytest.importorskip("torch")
    from diffusers.models.embeddings import get_timestep_embedding
    t = np.array([0, 1, 10, 250, 999])
    for dim in (8, 9, 320):
        theirs = get_timestep_embedding(torch.tensor(t), dim, flip_sin_to_cos=True, downscale_freq_shift=0).numpy()
        # diffusers forms the angles t * f in float32: about 1e-4 of rounding at t ~ 1000
        np.testing.assert_allclose(F.sinusoidal_embedding(t, dim), theirs, rtol=0, atol=2e-4)
