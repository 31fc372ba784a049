"""The diffusion training objective: targets, MSE, min-SNR weights and the gradient handed to backward."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minidiff import backend
from minidiff.backend import to_numpy
from minidiff.diffusion.loss import diffusion_loss, min_snr_weights, prediction_target, training_targets
from minidiff.diffusion.schedule import SCHEDULES, NoiseSchedule

FAST = settings(max_examples=20, deadline=None)
PREDICTIONS = ("epsilon", "sample", "v_prediction")


def _batch(seed, shape=(3, 2, 2, 2), T=1000):
    rng = np.random.default_rng(seed)
    x0, noise, out = rng.standard_normal((3,) + shape)
    t = rng.integers(0, T, size=shape[0])
    return x0, noise, out, t


@FAST
@given(st.sampled_from(SCHEDULES), st.sampled_from(PREDICTIONS), st.integers(0, 2 ** 16))
def test_target_for_each_prediction_type(name, kind, seed):
    s = NoiseSchedule.make(name, 1000)
    x0, noise, _, t = _batch(seed)
    target = prediction_target(x0, noise, t, s, kind)
    a = s.sqrt_alphas_cumprod[t].reshape(-1, 1, 1, 1)
    b = s.sqrt_one_minus_alphas_cumprod[t].reshape(-1, 1, 1, 1)
    expected = {"epsilon": noise, "sample": x0, "v_prediction": a * noise - b * x0}[kind]
    np.testing.assert_allclose(target, expected, rtol=1e-12, atol=1e-14)
    # the target is what recovers (x0, eps) from x_t through the schedule's conversions
    x0_back, eps_back = s.x0_and_eps(target, s.q_sample(x0, t, noise), t, kind)
    np.testing.assert_allclose(eps_back, noise, rtol=1e-6, atol=1e-6)


@FAST
@given(st.sampled_from(PREDICTIONS), st.integers(0, 2 ** 16))
def test_unweighted_loss_is_the_mean_squared_error(kind, seed):
    s = NoiseSchedule.make("linear", 1000)
    x0, noise, out, t = _batch(seed)
    loss, _ = diffusion_loss(out, x0, noise, t, s, kind)
    assert float(loss) == pytest.approx(np.mean((out - prediction_target(x0, noise, t, s, kind)) ** 2), rel=1e-12)
    perfect, grad = diffusion_loss(prediction_target(x0, noise, t, s, kind), x0, noise, t, s, kind)
    assert float(perfect) == 0.0 and not grad.any()


@FAST
@given(st.sampled_from(PREDICTIONS), st.sampled_from([None, 0.5, 5.0]), st.integers(0, 2 ** 16))
def test_gradient_matches_finite_differences(kind, gamma, seed):
    s = NoiseSchedule.make("cosine", 1000)
    x0, noise, out, t = _batch(seed)
    _, grad = diffusion_loss(out, x0, noise, t, s, kind, min_snr_gamma=gamma)
    h = 1e-6
    numeric = np.zeros_like(out)
    for index in np.ndindex(out.shape):
        plus, minus = out.copy(), out.copy()
        plus[index] += h
        minus[index] -= h
        numeric[index] = (float(diffusion_loss(plus, x0, noise, t, s, kind, gamma)[0])
                          - float(diffusion_loss(minus, x0, noise, t, s, kind, gamma)[0])) / (2 * h)
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-9)


@FAST
@given(st.sampled_from(SCHEDULES), st.floats(0.1, 20.0), st.integers(0, 2 ** 16))
def test_min_snr_weights_match_the_formula(name, gamma, seed):
    s = NoiseSchedule.make(name, 1000)
    t = np.random.default_rng(seed).integers(0, 1000, size=8)
    snr = s.alphas_cumprod[t] / (1 - s.alphas_cumprod[t])
    np.testing.assert_allclose(min_snr_weights(t, s, gamma, "epsilon"), np.minimum(snr, gamma) / snr, rtol=1e-12)
    np.testing.assert_allclose(min_snr_weights(t, s, gamma, "sample"), np.minimum(snr, gamma), rtol=1e-12)
    np.testing.assert_allclose(min_snr_weights(t, s, gamma, "v_prediction"), np.minimum(snr, gamma) / (snr + 1),
                               rtol=1e-12)


def test_min_snr_weighted_loss_is_the_weighted_mean_of_per_sample_errors():
    s = NoiseSchedule.make("scaled_linear", 1000)
    x0, noise, out, t = _batch(3)
    loss, _ = diffusion_loss(out, x0, noise, t, s, "v_prediction", min_snr_gamma=5.0)
    per_sample = ((out - s.velocity(x0, noise, t)) ** 2).mean(axis=(1, 2, 3))
    assert float(loss) == pytest.approx(np.mean(min_snr_weights(t, s, 5.0, "v_prediction") * per_sample), rel=1e-12)


def test_min_snr_epsilon_weight_is_one_at_zero_terminal_snr():
    s = NoiseSchedule.make("linear", 1000, rescale_zero_terminal_snr=True)
    weights = min_snr_weights(np.array([999, 998]), s, 5.0, "epsilon")
    assert weights[0] == 1.0 and weights[1] == 1.0 and np.all(np.isfinite(weights))


def test_min_snr_weights_match_diffusers_compute_snr():
    training_utils = pytest.importorskip("diffusers.training_utils")
    diffusers = pytest.importorskip("diffusers")
    torch = pytest.importorskip("torch")
    ref = diffusers.DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    t = np.array([0, 10, 100, 400, 999])
    snr_ref = training_utils.compute_snr(ref, torch.from_numpy(t)).double().numpy()
    s = NoiseSchedule.make("scaled_linear", 1000)
    # diffusers forms 1 - abar in float32: at t = 0 (1 - abar = 8.5e-4) that costs ~7e-5 relative
    np.testing.assert_allclose(s.snr(t), snr_ref, rtol=1e-4)
    # diffusers' training scripts: stack([snr, gamma]).min() / snr (eps), / (snr + 1) (v)
    np.testing.assert_allclose(min_snr_weights(t, s, 5.0, "epsilon"), np.minimum(snr_ref, 5.0) / snr_ref, rtol=1e-4)
    np.testing.assert_allclose(min_snr_weights(t, s, 5.0, "v_prediction"), np.minimum(snr_ref, 5.0) / (snr_ref + 1),
                               rtol=1e-4)


def test_training_targets_noise_with_q_sample_on_each_backend(xp):
    s = NoiseSchedule.make("linear", 50)
    dev = "gpu" if xp.__name__ == "cupy" else "cpu"
    x0 = xp.asarray(np.random.default_rng(0).standard_normal((64, 1, 2, 2)), dtype=xp.float32)
    batch = training_targets(s, x0, backend.rng(1, dev), "v_prediction")
    assert isinstance(batch.t, xp.ndarray) and batch.t.shape == (64,)
    t = to_numpy(batch.t)
    assert t.min() >= 0 and t.max() <= 49 and len(np.unique(t)) > 20
    for array in (batch.x_t, batch.noise, batch.target):
        assert isinstance(array, xp.ndarray) and array.dtype == np.float32 and array.shape == x0.shape
    np.testing.assert_allclose(to_numpy(batch.x_t), to_numpy(s.q_sample(x0, batch.t, batch.noise)), rtol=1e-6)
    np.testing.assert_allclose(to_numpy(batch.target), to_numpy(s.velocity(x0, batch.noise, batch.t)), rtol=1e-6)
    loss, grad = diffusion_loss(batch.target + 1, x0, batch.noise, batch.t, s, "v_prediction", min_snr_gamma=5.0)
    assert isinstance(grad, xp.ndarray) and grad.dtype == np.float32 and float(loss) > 0


@pytest.mark.parametrize("call, words", [
    (lambda s, a: diffusion_loss(a, a, a, 1, s, "score"), "prediction_type"),
    (lambda s, a: diffusion_loss(a, a[:1], a, 1, s), "x0"),
    (lambda s, a: diffusion_loss(a, a, a, 1, s, min_snr_gamma=0), "min_snr_gamma"),
    (lambda s, a: diffusion_loss(a, a, a, 10, s), "t=10"),
    (lambda s, a: training_targets(s, a, np.random.default_rng(0), "x0"), "prediction_type"),
])
def test_bad_inputs_raise_value_error(call, words):
    with pytest.raises(ValueError, match=words):
        call(NoiseSchedule.make("linear", 10), np.zeros((2, 3)))
