"""The 2-D MLP noise predictor: whole-model gradient check, shapes, time conditioning, training."""
import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minidiff import backend
from minidiff.models.mlp import MLPConfig, MLPDenoiser
from minidiff.nn import functional as F
from minidiff.nn.gradcheck import check_module
from minidiff.optim import AdamW


@settings(max_examples=10, deadline=None)
@given(batch=st.integers(1, 4), hidden=st.integers(3, 8), blocks=st.integers(1, 2),
       half_embed=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_whole_model_gradients_match_finite_differences(batch, hidden, blocks, half_embed, seed):
    config = MLPConfig(hidden_dim=hidden, num_blocks=blocks, time_embed_dim=2 * half_embed)
    model = MLPDenoiser(config, seed=seed)
    rng = np.random.default_rng(seed)
    for p in model.parameters():                 # gamma != 1 and beta != 0 too
        p.data = 0.5 * rng.standard_normal(p.shape)
    x = rng.standard_normal((batch, 2))
    t = rng.integers(0, 1000, size=batch)
    # eps 3e-6: a LayerNorm row of nearly equal values (std ~0.03 happens at hidden=3) has large
    # third derivatives, and the central difference's O(eps^2) error passed 1e-6 at eps=1e-5 (a
    # hypothesis-found case: 3.4e-6); at 1e-6 the O(1/eps) rounding noise nears 1e-6 instead
    report = check_module(model, (x, t), seed=seed, eps=3e-6)
    assert report.passed(1e-6), str(report)
    assert {f"param:{name}" for name, _ in model.named_parameters()} <= set(report.errors)


def test_output_shape_dtype_and_parameter_count():
    model = MLPDenoiser(MLPConfig.quick(), seed=0)
    out = model(np.zeros((7, 2), np.float32), np.arange(7))
    assert out.shape == (7, 2) and out.dtype == np.float32
    H, E, K = 128, 64, 3
    expected = (E * H + H) + (H * H + H) + (2 * H + H) + K * (2 * H + 2 * (H * H + H)) + 2 * H + (H * 2 + 2)
    assert model.num_parameters() == expected


def test_prediction_depends_on_the_timestep():
    model = MLPDenoiser(MLPConfig.tiny(), seed=0).eval()
    x = np.ones((2, 2), np.float32)
    out = model(x, np.array([0, 900]))
    assert np.abs(out[0] - out[1]).max() > 1e-3


def test_same_seed_same_weights_other_seed_other_weights():
    a, b, c = (MLPDenoiser(MLPConfig.tiny(), seed=s).state_dict() for s in (0, 0, 1))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["in_proj.weight"], c["in_proj.weight"])


def test_float32_on_each_backend_matches_float64_on_the_host(xp):
    rng = np.random.default_rng(0)
    x, t = rng.standard_normal((5, 2)), rng.integers(0, 1000, size=5)
    reference = MLPDenoiser(MLPConfig.quick(), seed=3).to(dtype=np.float64).eval()(x, t)
    model = MLPDenoiser(MLPConfig.quick(), seed=3).to(device="gpu" if xp is not np else "cpu").eval()
    out = model(xp.asarray(x, dtype=np.float32), xp.asarray(t))
    np.testing.assert_allclose(backend.to_numpy(out), reference, rtol=1e-4, atol=1e-5)


def test_a_few_adamw_steps_fit_one_batch_of_noise():
    model = MLPDenoiser(MLPConfig(hidden_dim=32, num_blocks=2, time_embed_dim=16), seed=0)
    opt = AdamW(model, lr=1e-2, weight_decay=0.0)
    rng = np.random.default_rng(0)
    x, t = rng.standard_normal((32, 2)).astype(np.float32), rng.integers(0, 1000, size=32)
    target = rng.standard_normal((32, 2)).astype(np.float32)
    losses = []
    for _ in range(100):
        model.zero_grad()
        loss, cache = F.mse_loss(model(x, t), target)
        model.backward(F.mse_loss_backward(1.0, cache))
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.1 * losses[0], (losses[0], losses[-1])


@pytest.mark.parametrize("x_shape, t_shape, message", [
    ((4, 3), (4,), r"x must be \(B, 2\), got shape \(4, 3\)"),
    ((4, 2), (3,), r"t must be \(4,\), one step per sample, got shape \(3,\)"),
])
def test_bad_input_shapes_raise_clear_errors(x_shape, t_shape, message):
    model = MLPDenoiser(MLPConfig.tiny())
    with pytest.raises(ValueError, match=message):
        model(np.zeros(x_shape, np.float32), np.zeros(t_shape, np.int64))


@pytest.mark.parametrize("field, value, message", [
    ("hidden_dim", 0, "MLPConfig: hidden_dim must be a positive integer, got 0"),
    ("num_blocks", True, "MLPConfig: num_blocks must be a positive integer, got True"),
    ("data_dim", "2", "MLPConfig: data_dim must be a positive integer, got '2'"),
    ("max_period", "long", "MLPConfig: max_period must be a positive number, got 'long'"),
])
def test_bad_config_raises_one_clear_value_error(field, value, message):
    with pytest.raises(ValueError, match=message):
        MLPConfig(**{field: value})


def test_config_rejects_odd_time_embedding_and_round_trips_through_a_dict():
    with pytest.raises(ValueError, match="time_embed_dim must be even"):
        MLPConfig(time_embed_dim=5)
    config = MLPConfig.full()
    assert MLPConfig(**dataclasses.asdict(config)) == config
