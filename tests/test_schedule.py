"""NoiseSchedule: the identities of the forward process, the posterior, and parity with diffusers."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minidiff.backend import to_numpy
from minidiff.diffusion.schedule import SCHEDULES, NoiseSchedule

names = st.sampled_from(SCHEDULES)
num_steps = st.integers(min_value=2, max_value=1200)
FAST = settings(max_examples=20, deadline=None)


def _schedule_and_t(data, min_t=0):
    schedule = NoiseSchedule.make(data.draw(names), data.draw(num_steps))
    t = data.draw(st.integers(min_value=min_t, max_value=schedule.num_steps - 1))
    return schedule, t


# -------------------------------------------------------------------------------------------
# the schedules themselves
# -------------------------------------------------------------------------------------------

@FAST
@given(names, num_steps)
def test_betas_in_open_unit_interval_and_abar_strictly_decreasing(name, T):
    s = NoiseSchedule.make(name, T)
    assert s.betas.dtype == np.float64 and s.betas.shape == (T,) and s.num_steps == T
    assert np.all(s.betas > 0) and np.all(s.betas < 1)
    assert np.all(np.diff(s.alphas_cumprod) < 0)
    assert 0 < s.alphas_cumprod[-1] < s.alphas_cumprod[0] < 1


@FAST
@given(names, num_steps)
def test_abar_is_cumulative_product_of_one_minus_beta(name, T):
    s = NoiseSchedule.make(name, T)
    running = 1.0
    for t in range(T):
        running *= 1.0 - s.betas[t]
        assert s.alphas_cumprod[t] == pytest.approx(running, rel=1e-12)
    np.testing.assert_allclose(s.alphas, 1 - s.betas, rtol=0, atol=0)


@FAST
@given(st.data())
def test_composing_one_step_maps_gives_closed_form(data):
    """x_t = sqrt(alpha_t) x_{t-1} + sqrt(beta_t) eps, applied t+1 times to x_0, is the affine map
    x_0 -> m x_0 + N(0, v) with m = sqrt(abar_t) and v = 1 - abar_t."""
    s, t = _schedule_and_t(data)
    m, v = 1.0, 0.0
    for step in range(t + 1):
        m = np.sqrt(s.alphas[step]) * m                      # mean coefficient of x_0
        v = s.alphas[step] * v + s.betas[step]               # variance: alpha * old + beta
    assert m == pytest.approx(np.sqrt(s.alphas_cumprod[t]), rel=1e-12, abs=1e-15)
    assert v == pytest.approx(1 - s.alphas_cumprod[t], rel=1e-12, abs=1e-15)


@FAST
@given(names, num_steps)
def test_snr_strictly_decreasing(name, T):
    s = NoiseSchedule.make(name, T)
    snr = s.snr(np.arange(T))
    assert np.all(np.diff(snr) < 0) and np.all(snr > 0)
    assert s.snr(0) == pytest.approx(s.alphas_cumprod[0] / (1 - s.alphas_cumprod[0]))


@FAST
@given(names, st.integers(min_value=2, max_value=1200))
def test_zero_terminal_snr_rescale_gives_zero_abar_T_and_keeps_abar_0(name, T):
    plain = NoiseSchedule.make(name, T)
    s = NoiseSchedule.make(name, T, rescale_zero_terminal_snr=True)
    assert s.alphas_cumprod[-1] == pytest.approx(0.0, abs=1e-20)
    assert s.snr(T - 1) == pytest.approx(0.0, abs=1e-20)
    assert s.alphas_cumprod[0] == pytest.approx(plain.alphas_cumprod[0], rel=1e-12)
    assert np.all(np.diff(s.alphas_cumprod) < 0)
    assert s.betas[-1] == pytest.approx(1.0) and np.all(s.betas[:-1] < 1)


# -------------------------------------------------------------------------------------------
# the posterior q(x_{t-1} | x_t, x_0)
# -------------------------------------------------------------------------------------------

@FAST
@given(st.data())
def test_posterior_variance_matches_closed_form(data):
    s, t = _schedule_and_t(data, min_t=1)
    x = np.zeros((1, 2))
    _, variance, log_variance = s.posterior(x, x, t)
    expected = (1 - s.alphas_cumprod[t - 1]) / (1 - s.alphas_cumprod[t]) * s.betas[t]
    assert variance == pytest.approx(expected, rel=1e-12)
    assert log_variance == pytest.approx(np.log(expected), rel=1e-10)


@FAST
@given(st.data())
def test_posterior_is_normalised_product_of_the_two_gaussians(data):
    """q(x_{t-1}|x_t,x_0) is proportional to q(x_t|x_{t-1}) q(x_{t-1}|x_0). As functions of x_{t-1}:
    q(x_t|x_{t-1}) ~ N(x_t / sqrt(alpha_t), beta_t / alpha_t) and q(x_{t-1}|x_0) = N(sqrt(abar_{t-1}) x_0,
    1 - abar_{t-1}); a product of Gaussians has precision = sum of precisions and a precision-weighted mean."""
    s, t = _schedule_and_t(data, min_t=1)
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 16)))
    x0, xt = rng.standard_normal((2, 3, 4))
    mean_a, var_a = xt / np.sqrt(s.alphas[t]), s.betas[t] / s.alphas[t]
    mean_b, var_b = np.sqrt(s.alphas_cumprod[t - 1]) * x0, 1 - s.alphas_cumprod[t - 1]
    var = 1 / (1 / var_a + 1 / var_b)
    mean = var * (mean_a / var_a + mean_b / var_b)
    got_mean, got_var, _ = s.posterior(x0, xt, t)
    assert got_var == pytest.approx(var, rel=1e-9)
    np.testing.assert_allclose(got_mean, mean, rtol=1e-9, atol=1e-12)


def test_posterior_at_t0_is_a_point_mass_at_x0():
    s = NoiseSchedule.make("linear", 1000)
    x0, xt = np.ones((1, 3)), np.full((1, 3), 5.0)
    mean, variance, _ = s.posterior(x0, xt, 0)
    np.testing.assert_allclose(mean, x0, atol=1e-12)
    assert variance == 0.0


# -------------------------------------------------------------------------------------------
# x0 / eps / v algebra, dtypes, devices, per-sample t
# -------------------------------------------------------------------------------------------

@FAST
@given(st.data())
def test_x0_eps_v_round_trips(data):
    s, t = _schedule_and_t(data)
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 16)))
    x0, eps = rng.standard_normal((2, 2, 3))
    xt = s.q_sample(x0, t, eps)
    v = s.velocity(x0, eps, t)
    np.testing.assert_allclose(s.predict_eps(xt, t, x0), eps, rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(s.predict_x0_from_v(xt, t, v), x0, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(s.predict_eps_from_v(xt, t, v), eps, rtol=1e-9, atol=1e-9)
    if s.alphas_cumprod[t] > 1e-6:                     # x0 from eps divides by sqrt(abar_t)
        np.testing.assert_allclose(s.predict_x0(xt, t, eps), x0, rtol=1e-6, atol=1e-6)
    for kind, output in (("epsilon", eps), ("sample", x0), ("v_prediction", v)):
        got_x0, got_eps = s.x0_and_eps(output, xt, t, kind)
        np.testing.assert_allclose(got_eps, eps, rtol=1e-6, atol=1e-6)


def test_q_sample_and_conversions_keep_float32(xp):
    s = NoiseSchedule.make("cosine", 100)
    x0 = xp.ones((3, 2, 4, 4), dtype=xp.float32)
    eps = xp.zeros_like(x0)
    for t in (7, np.array([0, 50, 99])):
        for out in (s.q_sample(x0, t, eps), s.predict_x0(x0, t, eps), s.velocity(x0, eps, t),
                    s.posterior(x0, x0, t)[0], s.predict_eps_from_v(x0, t, eps)):
            assert out.dtype == xp.float32


def test_array_t_gives_each_sample_its_own_timestep(xp):
    s = NoiseSchedule.make("scaled_linear", 1000)
    rng = np.random.default_rng(0)
    x0, eps = (xp.asarray(a) for a in rng.standard_normal((2, 4, 3, 2, 2)))
    t = np.array([0, 10, 500, 999])
    for t_array in (t, xp.asarray(t)):
        batched = to_numpy(s.q_sample(x0, t_array, eps))
        for i, ti in enumerate(t):
            single = to_numpy(s.q_sample(x0[i:i + 1], int(ti), eps[i:i + 1]))
            np.testing.assert_allclose(batched[i:i + 1], single, rtol=1e-12)
    snr = to_numpy(s.snr(xp.asarray(t)))
    np.testing.assert_allclose(snr, [s.snr(int(ti)) for ti in t], rtol=1e-12)


# -------------------------------------------------------------------------------------------
# bad input
# -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("call, words", [
    (lambda: NoiseSchedule.make("quadratic"), "quadratic"),
    (lambda: NoiseSchedule.make("linear", 0), "num_steps"),
    (lambda: NoiseSchedule.make("linear", 2.5), "num_steps"),
    (lambda: NoiseSchedule.make("cosine", 10, beta_end=0.1), "beta_end"),
    (lambda: NoiseSchedule.make("linear", 10).q_sample(np.zeros(3), 10, np.zeros(3)), "t=10"),
    (lambda: NoiseSchedule.make("linear", 10).q_sample(np.zeros(3), -1, np.zeros(3)), "t=-1"),
    (lambda: NoiseSchedule.make("linear", 10).q_sample(np.zeros((2, 3)), np.array([0, 10]), np.zeros((2, 3))),
     "0 <= t <= 9"),
    (lambda: NoiseSchedule.make("linear", 10).q_sample(np.zeros((2, 3)), np.array([0, 1, 2]), np.zeros((2, 3))),
     "shape"),
    (lambda: NoiseSchedule.make("linear", 10).q_sample(np.zeros((2, 3)), 1, np.zeros((3, 2))), "noise"),
    (lambda: NoiseSchedule.make("linear", 10).x0_and_eps(np.zeros(2), np.zeros(2), 1, "score"), "prediction_type"),
    (lambda: NoiseSchedule(np.array([0.1, 1.5])), "betas"),
])
def test_bad_inputs_raise_value_error_naming_the_argument(call, words):
    with pytest.raises(ValueError, match=words):
        call()


# -------------------------------------------------------------------------------------------
# parity with diffusers: numbers stored from diffusers 0.42 (checked in CI), and live (if installed)
# -------------------------------------------------------------------------------------------

REFERENCE_T = [0, 1, 250, 500, 999]
REFERENCE_ALPHAS_CUMPROD = {   # diffusers DDIMScheduler(beta_schedule=...).alphas_cumprod[REFERENCE_T]
    ("linear", False): [0.999899983, 0.999780059, 0.521422982, 0.0777966529, 4.03583035e-05],
    ("cosine", False): [0.999958694, 0.99991256, 0.845888019, 0.492285043, 2.42873499e-09],
    ("scaled_linear", False): [0.999149978, 0.998296022, 0.673792303, 0.276332468, 0.00466009509],
    ("scaled_linear", True): [0.999149978, 0.998233497, 0.65245676, 0.241018638, 0.0],
}


@pytest.mark.parametrize("name, zero_snr", list(REFERENCE_ALPHAS_CUMPROD))
def test_alphas_cumprod_match_stored_diffusers_numbers(name, zero_snr):
    s = NoiseSchedule.make(name, 1000, rescale_zero_terminal_snr=zero_snr)
    np.testing.assert_allclose(s.alphas_cumprod[REFERENCE_T], REFERENCE_ALPHAS_CUMPROD[name, zero_snr],
                               rtol=2e-6, atol=1e-9)


DIFFUSERS_NAMES = {"linear": "linear", "cosine": "squaredcos_cap_v2", "scaled_linear": "scaled_linear"}


@pytest.mark.parametrize("zero_snr", [False, True])
@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("T", [1000, 50])
def test_betas_and_alphas_cumprod_match_diffusers(name, zero_snr, T):
    diffusers = pytest.importorskip("diffusers")
    kw = dict(beta_start=0.00085, beta_end=0.012) if name == "scaled_linear" else {}
    ref = diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule=DIFFUSERS_NAMES[name],
                                  rescale_betas_zero_snr=zero_snr, **kw)
    s = NoiseSchedule.make(name, T, rescale_zero_terminal_snr=zero_snr)
    # diffusers holds these in float32: agreement to float32 precision. Its zero-SNR betas come from
    # 1 - abar_t / abar_{t-1} in float32, a cancellation that leaves absolute errors near 2e-6.
    np.testing.assert_allclose(s.betas, ref.betas.double().numpy(), rtol=1e-5, atol=5e-6 if zero_snr else 1e-7)
    np.testing.assert_allclose(s.alphas_cumprod, ref.alphas_cumprod.double().numpy(), rtol=1e-5, atol=1e-6)
