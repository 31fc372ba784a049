"""Layers: float64 gradient checks over random shapes (inputs AND parameters), caching rules,
state dicts, dtype moves, PyTorch-style initialisation, and attention against a loop reference."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minidiff import backend
from minidiff.nn import layers as L
from minidiff.nn.gradcheck import check_module
from minidiff.nn.module import no_grad

GRADCHECK = settings(max_examples=12, deadline=None)


# -- float64 finite-difference checks through minidiff.nn.gradcheck ------------------------------
def assert_gradients_match(layer, inputs, seed):
    """check_module on ``layer`` with every parameter set to random values first (the default init
    would leave norms at gamma = 1, beta = 0). Step h = 1e-5: some gradients here are as small as
    ~1e-5, where h = 1e-6 lets rounding noise (~1e-16 |L| / h) dominate, while h = 1e-4 lets the
    O(h^2) truncation error of a normalisation over 4 values show.

    A gradient that is zero in exact arithmetic (attention's key bias: softmax ignores a shift
    shared by a whole row of scores) shows only rounding noise in both estimates; such rows pass
    on their absolute error instead. Returns the report."""
    rng = np.random.default_rng(seed)
    for p in layer.parameters():                # random, moderate: no saturated softmax or SiLU
        p.data = 0.5 * rng.standard_normal(p.shape)
    report = check_module(layer, inputs, seed=seed, eps=1e-5)
    bad = [r for r in report.rows if r.rel_error >= 1e-6 and r.max_abs_error >= 1e-9]
    assert not bad, f"{type(layer).__name__}: gradients do not match\n{report}"
    return report


class FixedRandom:
    """Stands in for a Generator so that every forward pass draws the same dropout mask."""

    def __init__(self, seed):
        self.seed = seed

    def random(self, shape, dtype=np.float64):
        return np.random.default_rng(self.seed).random(shape, dtype=dtype)


def _normal(rng, *shape):
    return rng.standard_normal(shape)


# -- gradient checks -------------------------------------------------------------------------------
@GRADCHECK
@given(lead=st.lists(st.integers(1, 3), min_size=1, max_size=2), fan_in=st.integers(1, 5),
       fan_out=st.integers(1, 5), bias=st.booleans(), seed=st.integers(0, 2**16))
def test_linear_gradients_match_finite_differences(lead, fan_in, fan_out, bias, seed):
    rng = np.random.default_rng(seed)
    layer = L.Linear(fan_in, fan_out, bias=bias, rng=rng)
    assert_gradients_match(layer, (_normal(rng, *lead, fan_in),), seed)


@GRADCHECK
@given(batch=st.integers(1, 2), c_in=st.integers(1, 3), c_out=st.integers(1, 3), k=st.integers(1, 3),
       stride=st.sampled_from([1, 2]), padding=st.sampled_from([0, 1, 2]), extra_h=st.integers(0, 3),
       extra_w=st.integers(0, 3), bias=st.booleans(), seed=st.integers(0, 2**16))
def test_conv2d_gradients_match_finite_differences(batch, c_in, c_out, k, stride, padding, extra_h, extra_w,
                                                   bias, seed):
    rng = np.random.default_rng(seed)
    H, W = max(k - 2 * padding, 1) + extra_h, max(k - 2 * padding, 1) + extra_w
    layer = L.Conv2d(c_in, c_out, k, stride=stride, padding=padding, bias=bias, rng=rng)
    assert_gradients_match(layer, (_normal(rng, batch, c_in, H, W),), seed)


@pytest.mark.parametrize("padding", [0, 1, 2])
def test_conv2d_stride_2_gradients_match_finite_differences(padding):
    rng = np.random.default_rng(padding)
    layer = L.Conv2d(2, 3, 3, stride=2, padding=padding, rng=rng)
    assert_gradients_match(layer, (_normal(rng, 2, 2, 5, 4),), padding)


@GRADCHECK
@given(batch=st.integers(1, 2), groups=st.integers(1, 3), per_group=st.integers(1, 2), H=st.integers(2, 3),
       W=st.integers(2, 3), seed=st.integers(0, 2**16))
def test_group_norm_gradients_match_finite_differences(batch, groups, per_group, H, W, seed):
    # at least 4 values per group: with 2, x_hat = +-1 whatever x is and the check is ill-conditioned
    rng = np.random.default_rng(seed)
    layer = L.GroupNorm(groups, groups * per_group)
    assert_gradients_match(layer, (_normal(rng, batch, groups * per_group, H, W),), seed)


@GRADCHECK
@given(groups=st.integers(1, 3), per_group=st.integers(1, 2), seed=st.integers(0, 2**16))
def test_group_norm_with_silu_gradients_match_finite_differences(groups, per_group, seed):
    rng = np.random.default_rng(seed)
    layer = L.GroupNorm(groups, groups * per_group, activation="silu")
    layer.bias.data[...] = rng.standard_normal(groups * per_group)     # beta moves a off zero, into SiLU's bend
    assert_gradients_match(layer, (_normal(rng, 2, groups * per_group, 3, 2),), seed)


def test_group_norm_rejects_an_unknown_activation():
    with pytest.raises(ValueError, match="activation must be None or 'silu', got 'relu'"):
        L.GroupNorm(2, 4, activation="relu")


@GRADCHECK
@given(lead=st.lists(st.integers(1, 3), min_size=1, max_size=2), dim=st.integers(4, 6), seed=st.integers(0, 2**16))
def test_layer_norm_gradients_match_finite_differences(lead, dim, seed):
    rng = np.random.default_rng(seed)
    assert_gradients_match(L.LayerNorm(dim), (_normal(rng, *lead, dim),), seed)


@GRADCHECK
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=3),
       layer=st.sampled_from(["silu", "gelu", "gelu_tanh"]), seed=st.integers(0, 2**16))
def test_activation_gradients_match_finite_differences(shape, layer, seed):
    rng = np.random.default_rng(seed)
    module = {"silu": L.SiLU(), "gelu": L.GELU(), "gelu_tanh": L.GELU(approximate="tanh")}[layer]
    assert_gradients_match(module, (_normal(rng, *shape) * 2,), seed)


@GRADCHECK
@given(batch=st.integers(1, 2), channels=st.integers(1, 3), H=st.integers(1, 3), W=st.integers(1, 3),
       seed=st.integers(0, 2**16))
def test_upsample_and_avg_pool_gradients_match_finite_differences(batch, channels, H, W, seed):
    rng = np.random.default_rng(seed)
    assert_gradients_match(L.Upsample2x(), (_normal(rng, batch, channels, H, W),), seed)
    assert_gradients_match(L.AvgPool2d(2), (_normal(rng, batch, channels, 2 * H, 2 * W),), seed)


@GRADCHECK
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=3), p=st.sampled_from([0.0, 0.25, 0.5]),
       seed=st.integers(0, 2**16))
def test_dropout_gradients_match_finite_differences_for_a_fixed_mask(shape, p, seed):
    rng = np.random.default_rng(seed)
    layer = L.Dropout(p, rng=FixedRandom(seed))
    assert_gradients_match(layer, (_normal(rng, *shape),), seed)


@GRADCHECK
@given(num=st.integers(1, 6), dim=st.integers(1, 4), batch=st.integers(1, 2), length=st.integers(1, 5),
       seed=st.integers(0, 2**16))
def test_embedding_weight_gradient_matches_finite_differences(num, dim, batch, length, seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, num, size=(batch, length))        # repeated ids must add up
    assert_gradients_match(L.Embedding(num, dim, rng=rng), (ids,), seed)


def _attention_case(rng, self_attention, masked, batch, heads, head_dim, L_q, S, context_dim):
    dim = heads * head_dim
    layer = L.MultiHeadAttention(dim, heads, context_dim=None if self_attention else context_dim,
                                 bias=bool(rng.integers(2)), rng=rng)
    x = _normal(rng, batch, L_q, dim)
    context = None if self_attention else _normal(rng, batch, S, context_dim)
    mask = None
    if masked:
        keys = L_q if self_attention else S
        mask = rng.random((batch, 1, L_q, keys)) < 0.6
        mask[..., 0] = True                                  # every query may attend somewhere
    return layer, x, context, mask


@settings(max_examples=15, deadline=None)
@given(self_attention=st.booleans(), masked=st.booleans(), batch=st.integers(1, 2), heads=st.integers(1, 2),
       head_dim=st.integers(1, 3), L_q=st.integers(1, 4), S=st.integers(1, 4), context_dim=st.integers(1, 4),
       seed=st.integers(0, 2**16))
def test_attention_gradients_match_finite_differences(self_attention, masked, batch, heads, head_dim, L_q, S,
                                                      context_dim, seed):
    rng = np.random.default_rng(seed)
    layer, x, context, mask = _attention_case(rng, self_attention, masked, batch, heads, head_dim, L_q, S,
                                              context_dim)
    report = assert_gradients_match(layer, (x, context, mask), seed)
    assert ("input:x1" in report.errors) == (not self_attention)    # dcontext checked for cross-attention


def test_self_attention_returns_no_context_gradient_and_cross_attention_does():
    rng = np.random.default_rng(0)
    layer = L.MultiHeadAttention(4, 2, rng=rng)
    y = layer(_normal(rng, 2, 3, 4).astype(np.float32))
    dx, dcontext = layer.backward(np.ones_like(y))
    assert dx.shape == (2, 3, 4) and dcontext is None
    cross = L.MultiHeadAttention(4, 2, context_dim=6, rng=rng)
    y = cross(_normal(rng, 2, 3, 4).astype(np.float32), _normal(rng, 2, 5, 6).astype(np.float32))
    dx, dcontext = cross.backward(np.ones_like(y))
    assert dx.shape == (2, 3, 4) and dcontext.shape == (2, 5, 6)


# -- attention against a loop reference, on each backend -------------------------------------------
def _attention_by_loops(layer, x, context, mask):
    """softmax(q k^T / sqrt(d) masked) v head by head and query by query, from the layer's weights."""
    sd = layer.state_dict()
    proj = lambda name, a: a @ sd[f"{name}.weight"].T + sd.get(f"{name}.bias", 0.0)  # noqa: E731
    c = x if context is None else context
    q, k, v = proj("to_q", x), proj("to_k", c), proj("to_v", c)
    B, Lq, dim = q.shape
    d = dim // layer.num_heads
    out = np.zeros_like(q)
    for b in range(B):
        for h in range(layer.num_heads):
            cols = slice(h * d, (h + 1) * d)
            for i in range(Lq):
                scores = k[b, :, cols] @ q[b, i, cols] / np.sqrt(d)
                if mask is not None:
                    scores = np.where(np.broadcast_to(mask, (B, layer.num_heads, Lq, c.shape[1]))[b, h, i],
                                      scores, -np.inf)
                weights = np.exp(scores - scores.max())
                out[b, i, cols] = (weights / weights.sum()) @ v[b, :, cols]
    return proj("to_out", out)


@pytest.mark.parametrize("self_attention", [True, False])
def test_attention_matches_loop_reference(xp, self_attention):
    rng = np.random.default_rng(3)
    layer, x, context, mask = _attention_case(rng, self_attention, True, 2, 2, 3, 4, 5, 3)
    layer.to(device="gpu" if xp is not np else "cpu", dtype=np.float64)
    to = lambda a: None if a is None else xp.asarray(a)  # noqa: E731
    y = layer(to(x), to(context), mask=to(mask))
    np.testing.assert_allclose(backend.to_numpy(y), _attention_by_loops(layer, x, context, mask), rtol=1e-10)


def test_stored_attention_probabilities_are_rows_of_a_softmax_with_masked_zeros():
    rng = np.random.default_rng(4)
    layer, x, context, mask = _attention_case(rng, False, True, 2, 2, 2, 3, 4, 5)
    layer.store_attention = True
    layer.eval()
    layer(x.astype(np.float32), context.astype(np.float32), mask=mask)
    probs = layer.last_attention_probs
    assert probs.shape == (2, 2, 3, 4)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)
    assert np.all(probs[~np.broadcast_to(mask, probs.shape)] == 0)
    assert layer._cache is None                              # stored for pictures, but no backward cache


# -- caching: only in training with gradients on ---------------------------------------------------
def _all_caches(module):
    return [m._cache for m in module.modules() if hasattr(m, "_cache")]


@pytest.mark.parametrize("mode", ["eval", "no_grad"])
def test_nothing_is_cached_in_eval_or_no_grad(mode):
    rng = np.random.default_rng(0)
    layer = L.MultiHeadAttention(4, 2, context_dim=3, rng=rng)
    x, c = _normal(rng, 1, 2, 4).astype(np.float32), _normal(rng, 1, 3, 3).astype(np.float32)
    layer(x, c)
    assert all(cache is not None for cache in _all_caches(layer))      # training: every sub-layer cached
    layer.backward(np.ones((1, 2, 4), np.float32))
    if mode == "eval":
        layer.eval()
        layer(x, c)
    else:
        with no_grad():
            layer(x, c)
    assert all(cache is None for cache in _all_caches(layer))
    with pytest.raises(RuntimeError, match="without a cached forward pass"):
        layer.backward(np.ones((1, 2, 4), np.float32))


def test_gradients_of_two_backward_passes_add_up():
    rng = np.random.default_rng(0)
    layer = L.Linear(3, 2, rng=rng)
    x, dy = _normal(rng, 4, 3).astype(np.float32), _normal(rng, 4, 2).astype(np.float32)
    layer(x)
    layer.backward(dy)
    once = layer.weight.grad.copy()
    layer(x)
    layer.backward(dy)
    np.testing.assert_allclose(layer.weight.grad, 2 * once, rtol=1e-6)


# -- state dicts, dtype, initialisation ------------------------------------------------------------
def test_attention_state_dict_names_and_round_trip():
    rng = np.random.default_rng(0)
    a = L.MultiHeadAttention(4, 2, context_dim=6, rng=rng)
    assert list(a.state_dict()) == ["to_q.weight", "to_k.weight", "to_v.weight", "to_out.weight", "to_out.bias"]
    b = L.MultiHeadAttention(4, 2, context_dim=6, rng=np.random.default_rng(1)).eval()
    b.load_state_dict(a.state_dict())
    x, c = _normal(rng, 1, 2, 4).astype(np.float32), _normal(rng, 1, 3, 6).astype(np.float32)
    np.testing.assert_array_equal(a.eval()(x, c), b(x, c))


def test_load_state_dict_with_mismatched_shape_names_the_key():
    conv = L.Conv2d(3, 4, 3)
    with pytest.raises(ValueError, match=r"'weight' has shape \(4, 2, 3, 3\)"):
        conv.load_state_dict(L.Conv2d(2, 4, 3).state_dict())


def test_to_float64_runs_in_float64_and_float32_stays_float32():
    rng = np.random.default_rng(0)
    layer = L.Linear(3, 2, rng=rng)
    x = _normal(rng, 2, 3)
    assert layer(x.astype(np.float32)).dtype == np.float32
    layer.to(dtype=np.float64)
    assert layer.weight.data.dtype == np.float64 and layer(x).dtype == np.float64


@pytest.mark.parametrize("make, fan_in", [(lambda rng: L.Linear(64, 200, rng=rng), 64),
                                          (lambda rng: L.Conv2d(8, 50, 3, rng=rng), 72)])
def test_init_is_pytorch_uniform_bound_one_over_sqrt_fan_in(make, fan_in):
    layer = make(np.random.default_rng(0))
    bound = 1 / np.sqrt(fan_in)
    w = layer.weight.data
    assert w.dtype == np.float32 and np.abs(w).max() <= bound
    assert abs(w.std() - bound / np.sqrt(3)) < 0.05 * bound    # std of U(-b, b) is b / sqrt(3)
    assert np.abs(layer.bias.data).max() <= bound


def test_norm_init_is_identity_and_embedding_is_standard_normal():
    gn = L.GroupNorm(2, 4)
    assert gn.weight.data.tolist() == [1.0] * 4 and gn.bias.data.tolist() == [0.0] * 4
    emb = L.Embedding(100, 50, rng=np.random.default_rng(0))
    assert abs(emb.weight.data.std() - 1.0) < 0.05 and abs(emb.weight.data.mean()) < 0.05


def test_same_rng_seed_gives_same_weights():
    a = L.Conv2d(2, 3, 3, rng=np.random.default_rng(7))
    b = L.Conv2d(2, 3, 3, rng=np.random.default_rng(7))
    np.testing.assert_array_equal(a.weight.data, b.weight.data)


@pytest.mark.parametrize("make, message", [
    (lambda: L.GroupNorm(3, 4), "4 channels do not divide into 3 groups"),
    (lambda: L.MultiHeadAttention(6, 4), "dim=6 is not divisible by num_heads=4"),
    (lambda: L.Linear(0, 3), "in_features must be a positive integer, got 0"),
    (lambda: L.Dropout(1.0), r"p must be in \[0, 1\), got 1.0"),
    (lambda: L.GELU("fast"), "approximate must be 'none' or 'tanh'"),
])
def test_bad_constructor_arguments_raise_clear_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_dropout_is_identity_in_eval_and_scales_kept_units_in_training():
    layer = L.Dropout(0.5, rng=np.random.default_rng(0))
    x = np.ones((1000,), np.float32)
    y = layer(x)
    assert set(np.unique(y).tolist()) == {0.0, 2.0} and 0.4 < (y == 0).mean() < 0.6
    layer.eval()
    np.testing.assert_array_equal(layer(x), x)


def test_linear_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    layer = L.Linear(5, 3, rng=rng)
    x = _normal(rng, 2, 4, 5).astype(np.float32)
    ref = torch.nn.functional.linear(torch.tensor(x), torch.tensor(layer.weight.data), torch.tensor(layer.bias.data))
    np.testing.assert_allclose(layer(x), ref.numpy(), rtol=1e-5, atol=1e-6)


def test_attention_matches_torch_sdpa():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    layer, x, context, mask = _attention_case(rng, False, True, 2, 2, 3, 4, 5, 3)
    layer.to(dtype=np.float64)
    sd = {k: torch.tensor(v) for k, v in layer.state_dict().items()}
    proj = lambda name, a: torch.nn.functional.linear(a, sd[f"{name}.weight"], sd.get(f"{name}.bias"))  # noqa: E731
    tx, tc = torch.tensor(x), torch.tensor(context)

    def heads(t):                                            # (B, L, 6) -> (B, 2, L, 3)
        return t.reshape(t.shape[0], t.shape[1], 2, 3).transpose(1, 2)

    q, k, v = heads(proj("to_q", tx)), heads(proj("to_k", tc)), heads(proj("to_v", tc))
    o = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=torch.tensor(mask))
    ref = proj("to_out", o.transpose(1, 2).reshape(2, 4, 6))
    np.testing.assert_allclose(layer(x, context, mask=mask), ref.numpy(), rtol=1e-10)


def test_key_bias_gets_no_gradient_because_softmax_ignores_a_shared_shift():
    # k_j = W_k c_j + b  adds q . b to every score of a query row; softmax is unchanged by that
    rng = np.random.default_rng(5)
    layer = L.MultiHeadAttention(4, 2, bias=True, rng=rng).to(dtype=np.float64)
    y = layer(_normal(rng, 2, 3, 4))
    layer.backward(_normal(rng, *y.shape))
    assert np.abs(layer.to_k.bias.grad).max() < 1e-12
    assert np.abs(layer.to_q.bias.grad).max() > 1e-3           # the query bias does matter
