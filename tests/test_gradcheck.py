"""The gradient checker itself: it passes correct backwards, catches wrong ones, leaves its inputs
alone, and checks Modules (inputs and parameters) through the Module interface."""
import numpy as np
import pytest

from minidiff.backend import to_device, to_numpy
from minidiff.nn import functional as F
from minidiff.nn.gradcheck import check_module, gradcheck, relative_error
from minidiff.nn.module import Module, Parameter


def on(xp, a):
    return to_device(a, "cpu" if xp is np else "gpu")


def randn(seed, *shape):
    return np.random.default_rng(seed).standard_normal(shape)


def test_gradcheck_passes_a_correct_backward(xp):
    inputs = {"x": on(xp, randn(0, 3, 4)), "w": on(xp, randn(1, 2, 4)), "b": on(xp, randn(2, 2))}
    errors = gradcheck(F.linear, inputs, F.linear_backward)
    assert set(errors) == {"x", "w", "b"} and max(errors.values()) < 1e-8


def test_gradcheck_catches_a_wrong_backward(xp):
    def wrong_backward(dy, cache):                # forgets that dL/db sums over the rows
        dx, dw, db = F.linear_backward(dy, cache)
        return dx, dw, dy[0]
    inputs = {"x": on(xp, randn(0, 3, 4)), "w": on(xp, randn(1, 2, 4)), "b": on(xp, randn(2, 2))}
    errors = gradcheck(F.linear, inputs, wrong_backward)
    assert errors["x"] < 1e-8 and errors["w"] < 1e-8
    assert errors["b"] > 0.1


def test_gradcheck_accepts_precomputed_grads_with_their_upstream_gradient(xp):
    x, w = on(xp, randn(0, 3, 4)), on(xp, randn(1, 2, 4))
    y, cache = F.linear(x, w)
    dout = on(xp, randn(2, *y.shape))
    dx, dw, _ = F.linear_backward(dout, cache)
    errors = gradcheck(F.linear, [x, w], [dx, dw], dout=dout)
    assert set(errors) == {"x0", "x1"} and max(errors.values()) < 1e-8
    assert gradcheck(F.linear, [x, w], [dx, 2 * dw], dout=dout)["x1"] > 0.1


def test_gradcheck_leaves_the_callers_arrays_untouched(xp):
    x32 = on(xp, randn(0, 2, 3).astype(np.float32))
    w64 = on(xp, randn(1, 4, 3))
    x_before, w_before = to_numpy(x32).copy(), to_numpy(w64).copy()
    gradcheck(F.linear, [x32, w64], F.linear_backward)
    np.testing.assert_array_equal(to_numpy(x32), x_before)
    np.testing.assert_array_equal(to_numpy(w64), w_before)
    assert x32.dtype == np.float32


def test_gradcheck_checks_max_coords_entries_and_skips_non_float_inputs():
    calls = []
    ids = np.array([0, 2, 2])

    def counted(weight, ids):
        calls.append(1)
        return F.embedding(ids, weight)

    errors = gradcheck(counted, {"weight": randn(0, 30, 2), "ids": ids}, lambda d, c: (F.embedding_backward(d, c), None),
                       max_coords=5)
    assert list(errors) == ["weight"] and errors["weight"] < 1e-8
    assert len(calls) == 1 + 2 * 5                            # one analytic pass, two per checked entry


def test_relative_error_is_zero_for_equal_and_scale_free():
    a = randn(0, 10)
    assert relative_error(a, a) == 0.0
    b = a + 1e-3 * randn(1, 10)
    assert relative_error(a, b) == pytest.approx(relative_error(1e6 * a, 1e6 * b))
    assert relative_error(np.zeros(3), np.zeros(3)) == 0.0
    assert relative_error(a, -a) == pytest.approx(2.0)


# ------------------------------------------------------------------------------------------------
# check_module: through the Module interface (forward, backward, parameters, zero_grad)
# ------------------------------------------------------------------------------------------------
class TinyMLP(Module):
    """y = W2 silu(W1 x + b1) + b2, with a hand-written backward; ``bug`` breaks one gradient."""

    def __init__(self, rng, bug=False):
        self.w1 = Parameter(rng.standard_normal((5, 3)).astype(np.float32))
        self.b1 = Parameter(rng.standard_normal(5).astype(np.float32))
        self.w2 = Parameter(rng.standard_normal((2, 5)).astype(np.float32))
        self.b2 = Parameter(rng.standard_normal(2).astype(np.float32))
        self.bug = bug

    def forward(self, x):
        h, self.c1 = F.linear(x, self.w1.data, self.b1.data)
        a, self.c2 = F.silu(h)
        y, self.c3 = F.linear(a, self.w2.data, self.b2.data)
        return y

    def backward(self, dy):
        da, dw2, db2 = F.linear_backward(dy, self.c3)
        self.w2.accumulate(dw2)
        self.b2.accumulate(2 * db2 if self.bug else db2)
        dh = F.silu_backward(da, self.c2)
        dx, dw1, db1 = F.linear_backward(dh, self.c1)
        self.w1.accumulate(dw1)
        self.b1.accumulate(db1)
        return dx


class GatedSum(Module):
    """y = x1 * w * x2 (elementwise): two inputs, so backward returns a tuple of input grads."""

    def __init__(self):
        self.w = Parameter(np.linspace(-1, 1, 200).reshape(20, 10))

    def forward(self, x1, x2):
        self.x1, self.x2 = x1, x2
        return x1 * (self.w.data * x2)

    def backward(self, dy):
        self.w.accumulate((dy * self.x1 * self.x2).sum(axis=0))
        return dy * self.w.data * self.x2, (dy * self.x1 * self.w.data).sum(axis=0)   # x2 was broadcast over the batch


def test_check_module_passes_a_correct_module_and_names_every_array():
    report = check_module(TinyMLP(np.random.default_rng(0)), [randn(1, 4, 3)])
    assert report.passed(1e-6), str(report)
    assert set(report.errors) == {"input:x0", "param:w1", "param:b1", "param:w2", "param:b2"}
    table = str(report)
    assert "w1" in table and "b2" in table and "max relative error" in table


def test_check_module_finds_the_broken_parameter_gradient():
    report = check_module(TinyMLP(np.random.default_rng(0), bug=True), [randn(1, 4, 3)])
    assert report.errors["param:b2"] > 0.1
    assert max(v for k, v in report.errors.items() if k != "param:b2") < 1e-6


def test_check_module_restores_parameters_grads_and_mode():
    module = TinyMLP(np.random.default_rng(0))
    module.eval()
    before = {name: p.data for name, p in module.named_parameters()}
    check_module(module, [randn(1, 4, 3)])
    for name, p in module.named_parameters():
        assert p.data is before[name] and p.data.dtype == np.float32 and p.grad is None
    assert module.training is False


def test_check_module_subsamples_big_parameters_and_handles_two_inputs():
    report = check_module(GatedSum(), [randn(0, 3, 20, 10), randn(1, 20, 10)], max_coords=64)
    rows = {row.name: row for row in report.rows}
    assert rows["w"].checked == 64 and rows["w"].shape == (20, 10)
    assert rows["x0"].checked == 64 and rows["x1"].checked == 64
    assert report.passed(1e-6), str(report)


def test_gradcheck_takes_plain_functions_with_a_backward_closure_and_none_caches():
    w = randn(0, 3, 3)
    errors = gradcheck(lambda x: x @ w, [randn(1, 2, 3)], lambda dout: (dout @ w.T,))
    assert errors["x0"] < 1e-8
    # dropout in eval mode returns the cache None: still a functional pair
    eval_errors = gradcheck(lambda x: F.dropout(x, 0.5, None, training=False), [randn(2, 4)], F.dropout_backward)
    assert eval_errors["x0"] < 1e-8


def test_a_gradient_small_from_cancellation_is_judged_against_the_rounding_noise():
    # a 1x1 kernel: dw is a sum of 8 products that nearly cancel (seed found by hypothesis); the
    # finite difference of the whole loss carries rounding noise ~1e-6 of such a small dw
    rng_x, rng_w = np.random.default_rng(217), np.random.default_rng(218)
    x, w = rng_x.standard_normal((1, 1, 2, 4)), rng_w.standard_normal((1, 1, 1, 1))
    conv = lambda x, w: F.conv_transpose2d(x, w, None, 2, 0, 0)              # noqa: E731
    backward = lambda d, cache: F.conv_transpose2d_backward(d, cache)[:2]     # noqa: E731
    assert max(gradcheck(conv, {"x": x, "w": w}, backward, seed=2**20).values()) < 1e-6
    # ... while a gradient 0.1% off still fails by a wide margin
    off = lambda d, cache: tuple(1.001 * g for g in backward(d, cache))      # noqa: E731
    assert max(gradcheck(conv, {"x": x, "w": w}, off, seed=2**20).values()) > 1e-5
