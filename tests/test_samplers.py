"""Samplers: timestep grids, one step of each sampler, the driver, and parity with diffusers."""
import importlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minidiff.backend import to_numpy
from minidiff.diffusion import samplers as S
from minidiff.diffusion.schedule import SCHEDULES, NoiseSchedule

FAST = settings(max_examples=20, deadline=None)
# diffusers (the live parity tests) converts torch tensors with np.array(..., copy=False) internally
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
PREDICTIONS = ("epsilon", "sample", "v_prediction")


# -------------------------------------------------------------------------------------------
# timesteps
# -------------------------------------------------------------------------------------------

@FAST
@given(st.data())
def test_every_spacing_gives_strictly_decreasing_timesteps_inside_range(data):
    T = data.draw(st.integers(1, 1200))
    n = data.draw(st.integers(1, T))
    spacing = data.draw(st.sampled_from(S.SPACINGS))
    s = NoiseSchedule.make("linear", T)
    ts = S.timesteps(s, n, spacing)
    assert ts.dtype == np.int64 and len(ts) == n
    assert ts.min() >= 0 and ts.max() <= T - 1
    assert np.all(np.diff(ts) < 0)
    if spacing == "trailing":
        assert ts[0] == T - 1
    if n < T:                                          # DPM-Solver drops t = 0, so needs n < T
        dpm = S.dpm_solver_timesteps(s, n, spacing)
        assert len(dpm) == n and dpm.min() >= 0 and dpm.max() <= T - 1 and np.all(np.diff(dpm) < 0)


REFERENCE_TIMESTEPS = {   # diffusers 0.42 set_timesteps, T = 1000
    ("ddim", "leading", 10, 0): [900, 800, 700, 600, 500, 400, 300, 200, 100, 0],
    ("ddim", "leading", 7, 1): [853, 711, 569, 427, 285, 143, 1],
    ("ddim", "trailing", 7, 0): [999, 856, 713, 570, 428, 285, 142],
    ("ddim", "linspace", 7, 0): [999, 832, 666, 500, 333, 166, 0],
    ("dpmpp_2m", "leading", 7, 0): [875, 750, 625, 500, 375, 250, 125],
    ("dpmpp_2m", "trailing", 7, 0): [999, 856, 713, 570, 428, 285, 142],
    ("dpmpp_2m", "linspace", 7, 0): [999, 856, 714, 571, 428, 285, 143],
}


@pytest.mark.parametrize("sampler, spacing, n, offset", list(REFERENCE_TIMESTEPS))
def test_timesteps_match_stored_diffusers_numbers(sampler, spacing, n, offset):
    s = NoiseSchedule.make("linear", 1000)
    got = S.sampler_timesteps(s, n, sampler, spacing, offset)
    assert got.tolist() == REFERENCE_TIMESTEPS[sampler, spacing, n, offset]


def test_timesteps_match_diffusers_for_every_step_count():
    diffusers = pytest.importorskip("diffusers")
    for T in (1000, 37):
        s = NoiseSchedule.make("linear", T)
        for spacing in S.SPACINGS:
            ddim = diffusers.DDIMScheduler(num_train_timesteps=T, timestep_spacing=spacing)
            dpm = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=T, timestep_spacing=spacing)
            for n in range(1, T):
                for ours, reference in ((S.timesteps(s, n, spacing), ddim),
                                        (S.dpm_solver_timesteps(s, n, spacing), dpm)):
                    reference.set_timesteps(n)
                    # diffusers' "trailing" sometimes appends a spurious -1 (float arange overshoot): compare n
                    assert ours.tolist() == reference.timesteps.numpy()[:n].tolist(), (T, n, spacing)


# -------------------------------------------------------------------------------------------
# single steps: identities between samplers
# -------------------------------------------------------------------------------------------

@FAST
@given(st.data())
def test_ddim_eta1_between_consecutive_timesteps_is_the_ddpm_step(data):
    """Same mean (noise = 0) and same noise scale (difference when the noise is z) for every prediction type."""
    s = NoiseSchedule.make(data.draw(st.sampled_from(SCHEDULES)), 1000)
    t = data.draw(st.integers(1, 999))
    kind = data.draw(st.sampled_from(PREDICTIONS))
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 16)))
    out, x, z = rng.standard_normal((3, 2, 5))
    zero = np.zeros_like(z)
    ddpm_mean, ddpm_x0 = S.ddpm_step(s, out, t, x, zero, kind)
    ddim_mean, ddim_x0 = S.ddim_step(s, out, t, t - 1, x, eta=1.0, noise=zero, prediction_type=kind)
    np.testing.assert_allclose(ddim_mean, ddpm_mean, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(ddim_x0, ddpm_x0, rtol=1e-12)
    ddpm_noise = S.ddpm_step(s, out, t, x, z, kind)[0] - ddpm_mean
    ddim_noise = S.ddim_step(s, out, t, t - 1, x, eta=1.0, noise=z, prediction_type=kind)[0] - ddim_mean
    np.testing.assert_allclose(ddim_noise, ddpm_noise, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(ddpm_noise, np.sqrt(s.posterior_variance[t]) * z, rtol=1e-8, atol=1e-12)


@FAST
@given(st.data())
def test_ddpm_step_mean_is_the_posterior_mean(data):
    s = NoiseSchedule.make(data.draw(st.sampled_from(SCHEDULES)), 1000)
    t = data.draw(st.integers(1, 999))
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 16)))
    x0, xt = rng.standard_normal((2, 3, 4))
    mean, _ = S.ddpm_step(s, x0, t, xt, np.zeros_like(x0), prediction_type="sample")
    np.testing.assert_allclose(mean, s.posterior(x0, xt, t)[0], rtol=1e-10, atol=1e-12)


def test_ddpm_fixed_large_variance_is_beta():
    s = NoiseSchedule.make("linear", 1000)
    x, z = np.zeros((1, 4)), np.ones((1, 4))
    spread = S.ddpm_step(s, x, 300, x, z, variance_type="fixed_large")[0]
    np.testing.assert_allclose(spread, np.sqrt(s.betas[300]) * z, rtol=1e-12)


def _gaussian_data_model(schedule, mean=0.7, std=0.3, prediction_type="epsilon"):
    """The exact model output for data x0 ~ N(mean, std^2): E[x0 | x_t] is linear in x_t."""
    def model_fn(x, t):
        a = schedule.sqrt_alphas_cumprod[t].reshape(-1, *(1,) * (x.ndim - 1))
        b = schedule.sqrt_one_minus_alphas_cumprod[t].reshape(-1, *(1,) * (x.ndim - 1))
        # E[x0 | x_t] = mean + a std^2 / (a^2 std^2 + b^2) (x_t - a mean)
        x0 = mean + a * std ** 2 / (a ** 2 * std ** 2 + b ** 2) * (x - a * mean)
        eps = (x - a * x0) / b
        return {"epsilon": eps, "sample": x0, "v_prediction": a * eps - b * x0}[prediction_type]
    return model_fn


@pytest.mark.parametrize("kind", PREDICTIONS)
def test_euler_is_ddim_with_eta0_and_euler_ancestral_is_ddim_with_eta1(kind):
    """In x_t terms Euler's step in sigma space equals DDIM's: an independent check of both."""
    s = NoiseSchedule.make("scaled_linear", 1000)
    model_fn = _gaussian_data_model(s, prediction_type=kind)
    x_T = np.random.default_rng(0).standard_normal((3, 2, 2))
    pairs = (("euler", "ddim", 0.0), ("euler_ancestral", "ddim", 1.0))
    for sigma_sampler, ddim, eta in pairs:
        got = [S.sample(model_fn, s, x_T.shape, sampler=name, steps=12, rng=np.random.default_rng(1), eta=eta,
                        prediction_type=kind, x_T=x_T, progress=False, dtype=np.float64)
               for name in (sigma_sampler, ddim)]
        np.testing.assert_allclose(got[0], got[1], rtol=1e-9, atol=1e-9)


def test_dpmpp_2m_first_step_is_a_ddim_step():
    s = NoiseSchedule.make("linear", 1000)
    rng = np.random.default_rng(0)
    out, x = rng.standard_normal((2, 2, 3))
    sigma, sigma_next = S.sigmas_at(s, [700, 600])
    dpm, _ = S.dpmpp_2m_step(out, sigma, sigma_next, x)
    ddim, _ = S.ddim_step(s, out, 700, 600, x)
    np.testing.assert_allclose(dpm, ddim, rtol=1e-10, atol=1e-10)


def test_deterministic_samplers_solve_the_gaussian_probability_flow_and_dpm_is_second_order():
    """For x0 ~ N(m, s^2) the probability-flow ODE is linear: x_T = a m + sqrt(a^2 s^2 + b^2) z ends at
    x0 = m + s z. Every deterministic sampler gets close in 40 steps; DPM-Solver++(2M), second order, gets
    closest (measured: DDIM and Euler 0.066, DPM-Solver++ 0.018; at 80 steps 0.034 vs 0.0006)."""
    s = NoiseSchedule.make("linear", 1000)
    mean, std = 0.7, 0.3
    z = np.linspace(-2, 2, 9).reshape(9, 1)
    a, b = s.sqrt_alphas_cumprod[999], s.sqrt_one_minus_alphas_cumprod[999]
    exact = mean + std * z
    errors = {}
    for sampler in ("ddim", "euler", "dpmpp_2m"):
        ts = S.sampler_timesteps(s, 40, sampler, "trailing")
        assert ts[0] == 999
        x_T = a * mean + np.sqrt(a ** 2 * std ** 2 + b ** 2) * z
        x0 = S.sample(_gaussian_data_model(s, mean, std), s, x_T.shape, sampler=sampler, steps=40,
                      spacing="trailing", x_T=x_T, progress=False, dtype=np.float64)
        errors[sampler] = float(np.abs(x0 - exact).max())
    assert max(errors.values()) < 0.1, errors
    assert errors["dpmpp_2m"] < 0.5 * errors["ddim"], errors


# -------------------------------------------------------------------------------------------
# reference step outputs stored from diffusers 0.42 (a tiny fixed input)
# -------------------------------------------------------------------------------------------

SAMPLE = np.array([[-1.2, -0.4, 0.3], [0.9, 1.5, -2.0]], np.float32)
OUT = np.array([[0.5, -0.7, 0.1], [1.1, -0.3, 0.8]], np.float32)
OUT2 = np.array([[0.4, -0.6, 0.3], [1.0, -0.1, 0.7]], np.float32)
NOISE = np.array([[0.2, -1.0, 0.6], [-0.4, 0.3, 1.3]], np.float32)


def _reference_steps():
    lin, cos, scaled = (NoiseSchedule.make(name, 1000) for name in ("linear", "cosine", "scaled_linear"))
    sigma_900, sigma_800 = S.sigmas_at(scaled, [900, 800])
    dpm_sigmas = S.sigmas_at(lin, [999, 899, 799])
    dpm_1, dpm_x0 = S.dpmpp_2m_step(OUT, dpm_sigmas[0], dpm_sigmas[1], SAMPLE)
    return {
        "ddpm linear eps 500->400": (
            lambda: S.ddpm_step(lin, OUT, 500, SAMPLE, NOISE, t_prev=400)[0],
            [[-2.23945045, -0.66645485, 0.8088938], [0.04970655, 2.87778163, -3.00058007]]),
        "ddpm cosine v fixed_large 500->499": (
            lambda: S.ddpm_step(cos, OUT, 500, SAMPLE, NOISE, "v_prediction", variance_type="fixed_large")[0],
            [[-1.18842614, -0.45336542, 0.33292046], [0.8726849, 1.5154177, -1.92630303]]),
        "ddim scaled eps eta0 501->451": (
            lambda: S.ddim_step(scaled, OUT, 501, 451, SAMPLE)[0],
            [[-1.41791666, -0.34653997, 0.32174197], [0.84882683, 1.72510862, -2.35834408]]),
        "ddim scaled v eta1 500->450": (
            lambda: S.ddim_step(scaled, OUT, 500, 450, SAMPLE, 1.0, NOISE, "v_prediction")[0],
            [[-1.05558717, -0.68693125, 0.51085067], [0.47637302, 1.50945055, -1.34012902]]),
        "ddim linear sample 0->clean": (
            lambda: S.ddim_step(lin, OUT, 0, -100, SAMPLE, prediction_type="sample")[0], OUT.tolist()),
        "euler scaled eps 900->800": (
            lambda: S.euler_step(OUT, sigma_900, sigma_800, SAMPLE)[0],
            [[-2.81778455, 1.86489785, -0.02355686], [-2.65912533, 2.4706707, -4.58845472]]),
        "euler_ancestral scaled v 900->800": (
            lambda: S.euler_ancestral_step(OUT, sigma_900, sigma_800, SAMPLE, NOISE, "v_prediction")[0],
            [[0.03726906, -3.75983047, 2.47751641], [-1.95350254, 1.97411644, 3.98882818]]),
        "dpmpp_2m linear eps step 1": (
            lambda: dpm_1, [[-3.93931007, 0.08345956, 0.62225825], [0.57763958, 4.40042639, -6.51180267]]),
        "dpmpp_2m linear eps step 2": (
            lambda: S.dpmpp_2m_step(OUT2, dpm_sigmas[1], dpm_sigmas[2], dpm_1, previous=(dpm_x0, dpm_sigmas[0]))[0],
            [[-9.77777004, 0.9520151, 0.93852919], [0.06386212, 10.39693832, -16.25544548]]),
    }


@pytest.mark.parametrize("case", list(_reference_steps()))
def test_step_matches_stored_diffusers_numbers(case):
    compute, expected = _reference_steps()[case]
    got = compute()
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


# -------------------------------------------------------------------------------------------
# the driver
# -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sampler", S.SAMPLERS)
def test_sample_runs_on_each_backend_keeps_float32_and_is_reproducible(xp, sampler):
    from minidiff import backend
    s = NoiseSchedule.make("linear", 100)
    seen = []

    def model_fn(x, t):
        seen.append((type(x), x.dtype, t.dtype, t.shape))
        return 0.5 * x

    dev = "gpu" if xp.__name__ == "cupy" else "cpu"
    runs = [S.sample(model_fn, s, (2, 1, 3, 3), sampler=sampler, steps=5, rng=backend.rng(7, dev), eta=1.0,
                     progress=False) for _ in range(2)]
    assert isinstance(runs[0], xp.ndarray) and runs[0].dtype == np.float32 and runs[0].shape == (2, 1, 3, 3)
    np.testing.assert_array_equal(to_numpy(runs[0]), to_numpy(runs[1]))
    assert np.all(np.isfinite(to_numpy(runs[0])))
    assert seen[0] == (xp.ndarray, np.float32, np.int64, (2,)) and len(seen) == 10


def test_intermediates_callback_and_start_step():
    s = NoiseSchedule.make("cosine", 200)
    calls = []

    def callback(i, t_prev, x):
        calls.append((i, t_prev))
        return x

    x_T = np.ones((1, 2), np.float32)
    x, xs, x0s = S.sample(lambda x, t: 0 * x, s, (1, 2), sampler="dpmpp_2m", steps=6, x_T=x_T, start_step=2,
                          step_callback=callback, return_intermediates=True, progress=False)
    ts = S.sampler_timesteps(s, 6, "dpmpp_2m")
    assert [c[0] for c in calls] == [2, 3, 4, 5]
    assert [c[1] for c in calls] == ts[3:].tolist() + [-1]
    assert len(xs) == len(x0s) == 4 and xs[-1] is x
    # eps = 0 means x0_pred = x_t / sqrt(abar_t): the clean end is the input rescaled
    np.testing.assert_allclose(x, x_T / s.sqrt_alphas_cumprod[ts[2]], rtol=1e-5)


def test_step_callback_can_replace_the_sample():
    s = NoiseSchedule.make("linear", 50)
    x = S.sample(lambda x, t: 0 * x, s, (1, 3), sampler="euler", steps=4, rng=np.random.default_rng(0),
                 step_callback=lambda i, t_prev, x: np.full_like(x, 0.25), progress=False)
    np.testing.assert_allclose(x, 0.25)


@pytest.mark.parametrize("kwargs, words", [
    (dict(sampler="heun"), "sampler"),
    (dict(steps=0), "steps"),
    (dict(steps=101), "steps"),
    (dict(spacing="uniform"), "spacing"),
    (dict(prediction_type="score"), "prediction_type"),
    (dict(start_step=3), "x_T"),
    (dict(start_step=10), "start_step"),
    (dict(x_T=np.zeros((2, 2), np.float32)), "x_T"),
    (dict(sampler="dpmpp_2m", steps=100), "strictly decreasing"),
])
def test_bad_driver_inputs_raise_value_error(kwargs, words):
    s = NoiseSchedule.make("linear", 100)
    args = dict(sampler="ddim", steps=10, rng=np.random.default_rng(0), progress=False)
    args.update(kwargs)
    with pytest.raises(ValueError, match=words):
        S.sample(lambda x, t: x, s, (1, 3), **args)


@pytest.mark.parametrize("call, words", [
    (lambda s: S.ddim_step(s, np.zeros(2), 5, 5, np.zeros(2)), "t_prev"),
    (lambda s: S.ddim_step(s, np.zeros(2), 100, 5, np.zeros(2)), "t=100"),
    (lambda s: S.ddim_step(s, np.zeros(2), 5, 4, np.zeros(2), eta=0.5), "noise"),
    (lambda s: S.ddpm_step(s, np.zeros(2), 5, np.zeros(2), None), "noise"),
    (lambda s: S.ddpm_step(s, np.zeros(2), 5, np.zeros(2), np.zeros(2), variance_type="learned"), "variance_type"),
    (lambda s: S.timesteps(s, 5, "leading", steps_offset=100), "steps_offset"),
])
def test_bad_step_inputs_raise_value_error(call, words):
    with pytest.raises(ValueError, match=words):
        call(NoiseSchedule.make("linear", 100))


# -------------------------------------------------------------------------------------------
# live parity with diffusers over a fake-model trajectory (skipped where diffusers is absent)
# -------------------------------------------------------------------------------------------

def _fake_model(x, t):
    """A fixed, smooth function of (x, t) standing in for a network."""
    t = np.asarray(t, dtype=np.float32).reshape(-1, *(1,) * (x.ndim - 1))
    return (0.8 * np.sin(x + t / 300.0) + 0.1 * x).astype(np.float32)


def _diffusers_trajectory(diffusers, torch, sampler, schedule_name, prediction_type, spacing, steps, x_T, noises,
                          eta):
    classes = {"ddpm": "DDPMScheduler", "ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler",
               "euler_ancestral": "EulerAncestralDiscreteScheduler", "dpmpp_2m": "DPMSolverMultistepScheduler"}
    kw = dict(prediction_type=prediction_type, timestep_spacing=spacing,
              beta_schedule={"cosine": "squaredcos_cap_v2"}.get(schedule_name, schedule_name))
    if schedule_name == "scaled_linear":
        kw.update(beta_start=0.00085, beta_end=0.012)
    if sampler in ("ddpm", "ddim"):
        kw.update(clip_sample=False)
    scheduler = getattr(diffusers, classes[sampler])(**kw)
    scheduler.set_timesteps(steps)
    module = importlib.import_module(type(scheduler).__module__)
    draws = iter(noises)
    original = getattr(module, "randn_tensor", None)
    module.randn_tensor = lambda *a, **k: torch.from_numpy(next(draws))
    sigma_space = sampler in ("euler", "euler_ancestral")
    try:
        x = torch.from_numpy(x_T.copy())
        if sigma_space:                         # start from the same x_T (see the samplers module docstring)
            x = x * float(np.sqrt(float(scheduler.sigmas[0]) ** 2 + 1))
        xs = []
        for t in scheduler.timesteps:
            net_input = scheduler.scale_model_input(x, t) if sigma_space else x
            output = torch.from_numpy(_fake_model(net_input.numpy(), np.full(len(x_T), int(t))))
            if sampler == "ddim":
                noise = torch.from_numpy(next(draws)) if eta > 0 else None
                x = scheduler.step(output, t, x, eta=eta, variance_noise=noise).prev_sample
            else:
                x = scheduler.step(output, t, x).prev_sample
            xs.append(x.numpy())
    finally:
        if original is not None:
            module.randn_tensor = original
    if sigma_space:
        xs = [x / np.sqrt(float(sigma) ** 2 + 1) for x, sigma in zip(xs, scheduler.sigmas[1:])]
    return scheduler.timesteps.numpy(), xs


class _ListRng:
    """Hands out a fixed list of noise draws, in order, as a generator would."""

    def __init__(self, draws):
        self.draws = iter(draws)

    def standard_normal(self, shape, dtype=np.float32):
        return next(self.draws).astype(dtype)


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("prediction_type", PREDICTIONS)
@pytest.mark.parametrize("sampler, eta", [("ddpm", 0.0), ("ddim", 0.0), ("ddim", 1.0), ("euler", 0.0),
                                          ("euler_ancestral", 0.0), ("dpmpp_2m", 0.0)])
def test_trajectory_matches_diffusers(sampler, eta, prediction_type, spacing):
    diffusers = pytest.importorskip("diffusers")
    torch = pytest.importorskip("torch")
    if sampler == "euler_ancestral" and prediction_type == "sample":
        pytest.skip("diffusers' EulerAncestralDiscreteScheduler does not implement prediction_type='sample'")
    rng = np.random.default_rng(0)
    x_T = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    noises = list(rng.standard_normal((25, 2, 3, 4, 4)).astype(np.float32))
    schedule_name = "scaled_linear"
    steps = 10
    ts, reference = _diffusers_trajectory(diffusers, torch, sampler, schedule_name, prediction_type, spacing, steps,
                                          x_T, noises, eta)
    s = NoiseSchedule.make(schedule_name, 1000)
    assert S.sampler_timesteps(s, steps, sampler, spacing).tolist() == ts.astype(np.int64).tolist()
    _, xs, _ = S.sample(_fake_model, s, x_T.shape, sampler=sampler, steps=steps, rng=_ListRng(noises), eta=eta,
                        prediction_type=prediction_type, spacing=spacing, x_T=x_T, return_intermediates=True,
                        progress=False)
    for i, (ours, ref) in enumerate(zip(xs, reference)):
        rel = np.linalg.norm(ours - ref) / np.linalg.norm(ref)
        assert rel < 2e-5, f"{sampler} step {i}: relative difference {rel:.2e}"
