r"""Samplers: turning a trained noise predictor into samples, from x_T ~ N(0, I) down to x_0.

Every sampler walks a short, descending list of timesteps t_0 > t_1 > ... and, at each, asks the
network for its prediction at (x_t, t), converts it to a guess of x_0 and eps
(``schedule.x0_and_eps``), and moves x to the next timestep. They differ only in how they move:

DDPM (Ho et al. 2020): ancestral sampling. Draw x_{t'} from the posterior q(x_{t'} | x_t, x_0 = x0_pred):
    x_{t'} = sqrt(abar_t') beta / (1 - abar_t) x0_pred + sqrt(alpha) (1 - abar_t') / (1 - abar_t) x_t + sigma z
    with alpha = abar_t / abar_t', beta = 1 - alpha (one step of size t - t'), z ~ N(0, I).
DDIM (Song et al. 2021): keep the predicted noise, re-noise x0_pred to the next level.
    x_{t'} = sqrt(abar_t') x0_pred + sqrt(1 - abar_t' - sigma^2) eps_pred + sigma z,
    sigma^2 = eta^2 (1 - abar_t') / (1 - abar_t) (1 - abar_t / abar_t')
    eta = 0 is deterministic; eta = 1 between consecutive steps is exactly DDPM.
Euler (Karras et al. 2022): in "sigma space" x = x_0 + sigma eps, sigma = sqrt((1 - abar) / abar),
    the probability-flow ODE is dx/dsigma = eps = (x - x0_pred) / sigma; one Euler step
    x' = x + (sigma' - sigma) (x - x0_pred) / sigma. (Rewritten back in x_t this IS DDIM with eta = 0.)
Euler ancestral: step down to sigma_down, then add fresh noise of size sigma_up, where
    sigma_up^2 = sigma'^2 (sigma^2 - sigma'^2) / sigma^2, sigma_down^2 = sigma'^2 - sigma_up^2.
    (In x_t terms this is DDIM with eta = 1.)
DPM-Solver++(2M) (Lu et al. 2022): integrate the ODE exactly in lambda = log(alpha_t / sigma_t) for
    a data prediction that is linear in lambda, fitted through the last two x0 predictions:
    x_{t'} = (sigma_t' / sigma_t) x_t - alpha_t' (e^{-h} - 1) (D0 + D1 / 2),  h = lambda_t' - lambda_t,
    D0 = x0_pred, D1 = (x0_pred - x0_pred_prev) / r, r = h_prev / h   (first order, D1 = 0, at the ends).

All numbers follow diffusers (DDPMScheduler, DDIMScheduler, EulerDiscreteScheduler,
EulerAncestralDiscreteScheduler, DPMSolverMultistepScheduler with algorithm_type="dpmsolver++",
solver_order=2, lower_order_final=True, final_sigmas_type="zero"): same timesteps, same step
results for the same inputs. Where minidiff differs, it says so below:

* The driver's DDIM step goes from each timestep to the NEXT one in the list (-1 after the last).
  DDIMScheduler uses t - T // steps instead; the two agree for "leading" spacing and for
  "trailing" when steps divides T, and differ by one timestep otherwise.
* Euler samplers use integer timesteps (the network is conditioned on an integer t). diffusers'
  Euler "linspace" spacing uses fractional timesteps with interpolated sigmas; minidiff rounds them,
  exactly as DDIM's "linspace" does. "leading" and "trailing" are identical to diffusers.
* The driver always starts from x_T ~ N(0, I). diffusers' Euler schedulers with "linspace" or
  "trailing" spacing start from sigma_max * z in sigma space, i.e. a variance of
  sigma_max^2 / (sigma_max^2 + 1) < 1 in x_t terms (a difference below 1e-4 for T = 1000).

Arrays: the samples live on the device of x_T (or of ``rng``); the schedule's coefficients are read
on the host as float64 scalars and cast to the data's dtype, so a float32 chain stays float32 and
no step synchronises with the GPU.
"""
from __future__ import annotations

import math

import numpy as np

from .. import backend
from ..backend import get_array_module
from .schedule import PREDICTION_TYPES, x0_and_eps

SAMPLERS = ("ddpm", "ddim", "euler", "euler_ancestral", "dpmpp_2m")
SPACINGS = ("leading", "trailing", "linspace")
VARIANCE_TYPES = ("fixed_small", "fixed_large")
MIN_ALPHA_CUMPROD = 2.0 ** -24      # sigma samplers clamp abar here so a zero-SNR sigma stays finite (as diffusers)


# ---------------------------------------------------------------------------------------------
# timesteps
# ---------------------------------------------------------------------------------------------

def _check_num_steps(num_inference_steps, num_train_steps):
    if (isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer))
            or not 1 <= num_inference_steps <= num_train_steps):
        raise ValueError(f"steps must be an integer in [1, {num_train_steps}] (the schedule's num_steps), "
                         f"got {num_inference_steps!r}")


def _check_spacing(spacing):
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")


def _checked_timesteps(ts, schedule, what):
    """The timesteps as int64, after checking they are strictly decreasing inside [0, T-1]."""
    ts = np.asarray(ts).astype(np.int64)
    if ts.size == 0 or ts.max() > schedule.num_steps - 1 or ts.min() < 0 or np.any(np.diff(ts) >= 0):
        raise ValueError(f"{what} gives timesteps {ts.tolist()[:8]}..., which are not strictly decreasing "
                         f"inside [0, {schedule.num_steps - 1}]; use fewer steps, another spacing or a smaller "
                         "steps_offset")
    return ts


def timesteps(schedule, num_inference_steps, spacing="leading", steps_offset=0):
    """Descending int64 timesteps, as DDIMScheduler.set_timesteps (also DDPM and Euler) makes them.

    leading:  0, r, 2r, ... (r = T // n) reversed, + steps_offset   (Stable Diffusion uses offset 1)
    trailing: round(T - i T/n) - 1 for i = 0..n-1: starts at T-1, the pure-noise end (Lin et al. 2023)
    linspace: round(linspace(0, T-1, n)) reversed
    """
    T = schedule.num_steps
    _check_num_steps(num_inference_steps, T)
    _check_spacing(spacing)
    n = int(num_inference_steps)
    if spacing == "leading":
        ts = (np.arange(n) * (T // n))[::-1] + steps_offset
    elif spacing == "trailing":
        ts = np.round(np.arange(T, 0, -T / n)[:n]) - 1                    # [:n]: arange may overshoot by one
    else:
        ts = np.linspace(0, T - 1, n).round()[::-1]
    return _checked_timesteps(ts, schedule, f"timesteps(steps={n}, spacing={spacing!r}, steps_offset={steps_offset})")


def dpm_solver_timesteps(schedule, num_inference_steps, spacing="leading", steps_offset=0):
    """Descending timesteps as DPMSolverMultistepScheduler.set_timesteps makes them.

    Its last step jumps to sigma = 0 (clean data), so "leading" and "linspace" divide the range into
    n + 1 points and drop t = 0: leading uses r = T // (n + 1); linspace drops the 0 of
    round(linspace(0, T-1, n+1)). "trailing" is the same as ``timesteps``.
    """
    T = schedule.num_steps
    _check_num_steps(num_inference_steps, T)
    _check_spacing(spacing)
    n = int(num_inference_steps)
    if spacing == "leading":
        ts = (np.arange(n + 1) * (T // (n + 1)))[::-1][:-1] + steps_offset
    elif spacing == "trailing":
        ts = np.round(np.arange(T, 0, -T / n)[:n]) - 1                    # [:n]: arange may overshoot by one
    else:
        ts = np.linspace(0, T - 1, n + 1).round()[::-1][:-1]
    return _checked_timesteps(ts, schedule, f"dpm_solver_timesteps(steps={n}, spacing={spacing!r}, "
                                            f"steps_offset={steps_offset})")


def sampler_timesteps(schedule, steps, sampler="ddim", spacing="leading", steps_offset=0):
    """The timesteps ``sample`` visits for ``sampler``: image-to-image noises its input to
    ``sampler_timesteps(...)[start_step]``."""
    _check_sampler(sampler)
    make = dpm_solver_timesteps if sampler == "dpmpp_2m" else timesteps
    return make(schedule, steps, spacing, steps_offset)


def sigmas_at(schedule, ts):
    """sigma_t = sqrt((1 - abar_t) / abar_t) at each timestep, float64 (abar clamped at 2^-24)."""
    abar = np.maximum(schedule.alphas_cumprod[np.asarray(ts)], MIN_ALPHA_CUMPROD)
    return np.sqrt((1 - abar) / abar)


# ---------------------------------------------------------------------------------------------
# one step of each sampler
# ---------------------------------------------------------------------------------------------

def _check_sampler(sampler):
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")


def _check_prediction_type(prediction_type):
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


def _check_int_timestep(schedule, t, name):
    if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, np.integer)):
        raise ValueError(f"{name} must be a Python/NumPy integer (one timestep for the batch), got {t!r}")


def _abar_pair(schedule, t, t_prev):
    """(abar_t, abar_t') as floats; t_prev < 0 means abar_t' = 1 (the clean end)."""
    _check_int_timestep(schedule, t, "t")
    _check_int_timestep(schedule, t_prev, "t_prev")
    schedule.check_timestep(t)
    if t_prev >= t:
        raise ValueError(f"t_prev must be smaller than t (sampling goes down), got t={t}, t_prev={t_prev}")
    abar_t = float(schedule.alphas_cumprod[t])
    abar_prev = float(schedule.alphas_cumprod[t_prev]) if t_prev >= 0 else 1.0
    return abar_t, abar_prev


def _clip(x0, clip_x0):
    return get_array_module(x0).clip(x0, -1.0, 1.0) if clip_x0 else x0


def ddpm_step(schedule, model_output, t, sample, noise, prediction_type="epsilon", t_prev=None,
              variance_type="fixed_small", clip_x0=False):
    """One ancestral step x_t -> x_{t'} (t' = t_prev, default t - 1), as DDPMScheduler.step.

    noise: z ~ N(0, I) like ``sample`` (unused, may be None, when t == 0). Returns (prev_sample, x0_pred).
    variance_type: "fixed_small" = posterior variance beta (1 - abar_t') / (1 - abar_t),
                   "fixed_large" = beta (Ho et al. found both work; "small" is the exact posterior).
    """
    _check_prediction_type(prediction_type)
    if variance_type not in VARIANCE_TYPES:
        raise ValueError(f"variance_type must be one of {VARIANCE_TYPES}, got {variance_type!r}")
    t_prev = t - 1 if t_prev is None else t_prev
    abar_t, abar_prev = _abar_pair(schedule, t, t_prev)
    dtype = sample.dtype.type
    x0_pred, _ = schedule.x0_and_eps(model_output, sample, t, prediction_type)
    x0_pred = _clip(x0_pred, clip_x0)
    alpha = abar_t / abar_prev                                    # alpha = abar_t / abar_t' (one "big" step)
    beta = 1 - alpha
    # mean = sqrt(abar_t') beta / (1 - abar_t) x0 + sqrt(alpha) (1 - abar_t') / (1 - abar_t) x_t
    coef_x0 = dtype(math.sqrt(abar_prev) * beta / (1 - abar_t))
    coef_xt = dtype(math.sqrt(alpha) * (1 - abar_prev) / (1 - abar_t))
    prev_sample = coef_x0 * x0_pred + coef_xt * sample
    if t > 0:                                                     # no noise on the very last step
        if noise is None:
            raise ValueError(f"ddpm_step: noise is required when t > 0 (got t={t})")
        if variance_type == "fixed_small":
            variance = max((1 - abar_prev) / (1 - abar_t) * beta, 1e-20)   # beta (1-abar_t')/(1-abar_t)
        else:
            variance = beta
        prev_sample = prev_sample + dtype(math.sqrt(variance)) * noise
    return prev_sample, x0_pred


def ddim_step(schedule, model_output, t, t_prev, sample, eta=0.0, noise=None, prediction_type="epsilon",
              clip_x0=False):
    """One DDIM step x_t -> x_{t'} as DDIMScheduler.step (t_prev < 0: abar_t' = 1). Returns (prev_sample, x0_pred).

    eta = 0: deterministic. eta > 0 needs ``noise`` (z ~ N(0, I)). A clipped x0 is not fed back into
    eps (diffusers' default, use_clipped_model_output=False).
    """
    _check_prediction_type(prediction_type)
    if eta < 0:
        raise ValueError(f"ddim_step: eta must be >= 0, got {eta}")
    abar_t, abar_prev = _abar_pair(schedule, t, t_prev)
    dtype = sample.dtype.type
    x0_pred, eps_pred = schedule.x0_and_eps(model_output, sample, t, prediction_type)
    x0_pred = _clip(x0_pred, clip_x0)
    # sigma^2 = eta^2 (1 - abar_t') / (1 - abar_t) (1 - abar_t / abar_t')     (DDIM eq. 16)
    std = eta * math.sqrt((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev))
    # x_t' = sqrt(abar_t') x0 + sqrt(1 - abar_t' - sigma^2) eps + sigma z      (DDIM eq. 12)
    prev_sample = dtype(math.sqrt(abar_prev)) * x0_pred + dtype(math.sqrt(max(1 - abar_prev - std ** 2, 0.0))) * eps_pred
    if eta > 0:
        if noise is None:
            raise ValueError("ddim_step: eta > 0 needs noise (an array like sample)")
        prev_sample = prev_sample + dtype(std) * noise
    return prev_sample, x0_pred


def _x0_in_sigma_space(model_output, sigma, sample, prediction_type):
    """x0 from a network output when sample = x_0 + sigma eps (the Euler samplers' space)."""
    _check_prediction_type(prediction_type)
    dtype = sample.dtype.type
    if prediction_type == "epsilon":
        return sample - dtype(sigma) * model_output                           # x0 = x - sigma eps
    if prediction_type == "v_prediction":
        # x_t = x / sqrt(sigma^2 + 1) and x0 = sqrt(abar) x_t - sqrt(1-abar) v, sqrt(abar) = 1/sqrt(sigma^2+1)
        return model_output * dtype(-sigma / math.sqrt(sigma ** 2 + 1)) + sample * dtype(1 / (sigma ** 2 + 1))
    return model_output


def euler_step(model_output, sigma, sigma_next, sample, prediction_type="epsilon", clip_x0=False):
    """One Euler step of dx/dsigma = (x - x0) / sigma, in sigma space (sample = x_0 + sigma eps).

    As EulerDiscreteScheduler.step (s_churn = 0). The network saw x / sqrt(sigma^2 + 1).
    Returns (prev_sample in sigma space at sigma_next, x0_pred).
    """
    dtype = sample.dtype.type
    x0_pred = _clip(_x0_in_sigma_space(model_output, sigma, sample, prediction_type), clip_x0)
    derivative = (sample - x0_pred) / dtype(sigma)                            # d = (x - x0) / sigma
    return sample + derivative * dtype(sigma_next - sigma), x0_pred           # x' = x + (sigma' - sigma) d


def euler_ancestral_step(model_output, sigma, sigma_next, sample, noise, prediction_type="epsilon", clip_x0=False):
    """Euler down to sigma_down, then fresh noise of size sigma_up (EulerAncestralDiscreteScheduler.step)."""
    dtype = sample.dtype.type
    x0_pred = _clip(_x0_in_sigma_space(model_output, sigma, sample, prediction_type), clip_x0)
    # sigma_up^2 = sigma'^2 (sigma^2 - sigma'^2) / sigma^2,  sigma_down^2 = sigma'^2 - sigma_up^2
    sigma_up = math.sqrt(sigma_next ** 2 * (sigma ** 2 - sigma_next ** 2) / sigma ** 2)
    sigma_down = math.sqrt(sigma_next ** 2 - sigma_up ** 2)
    derivative = (sample - x0_pred) / dtype(sigma)
    prev_sample = sample + derivative * dtype(sigma_down - sigma) + noise * dtype(sigma_up)
    return prev_sample, x0_pred


def _alpha_sigma(sigma):
    """(alpha_t, sigma_t) of x_t = alpha_t x_0 + sigma_t eps from sigma = sigma_t / alpha_t."""
    alpha_t = 1 / math.sqrt(sigma ** 2 + 1)
    return alpha_t, sigma * alpha_t


def dpmpp_2m_step(model_output, sigma, sigma_next, sample, prediction_type="epsilon", previous=None,
                  clip_x0=False):
    """One DPM-Solver++(2M) step x_t -> x_{t'} (x_t is the usual sample, not sigma-scaled).

    sigma, sigma_next: sqrt((1 - abar) / abar) now and at the next timestep (0 at the end).
    previous: (x0_pred, sigma) of the step before, or None on the first step (first order then).
    The last step (sigma_next = 0) is first order, as diffusers' lower_order_final.
    Returns (prev_sample, x0_pred); pass (x0_pred, sigma) as ``previous`` to the next call.
    """
    dtype = sample.dtype.type
    alpha_now, sigma_now = _alpha_sigma(sigma)
    alpha_next, sigma_t_next = _alpha_sigma(sigma_next)
    x0_pred, _ = x0_and_eps(model_output, sample, dtype(alpha_now), dtype(sigma_now), prediction_type)
    x0_pred = _clip(x0_pred, clip_x0)
    # lambda = log(alpha_t / sigma_t) = -log(sigma), so e^{-h} = sigma' / sigma (finite even when sigma' = 0)
    exp_neg_h = sigma_next / sigma
    # x_t' = (sigma_t' / sigma_t) x_t - alpha_t' (e^{-h} - 1) D0                  (first order = DDIM)
    prev_sample = dtype(sigma_t_next / sigma_now) * sample - dtype(alpha_next * (exp_neg_h - 1)) * x0_pred
    if previous is not None and sigma_next > 0:
        x0_pred_prev, sigma_prev = previous
        h = math.log(sigma / sigma_next)                                     # lambda_t' - lambda_t
        h_prev = math.log(sigma_prev / sigma)                                # lambda_t - lambda_prev
        r = h_prev / h
        # D1 = (D0 - D0_prev) / r;  second order adds - alpha_t' (e^{-h} - 1) D1 / 2
        prev_sample = prev_sample - dtype(0.5 * alpha_next * (exp_neg_h - 1) / r) * (x0_pred - x0_pred_prev)
    return prev_sample, x0_pred


# ---------------------------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------------------------

def _draw_noise(rng, shape, dtype, xp):
    z = rng.standard_normal(shape, dtype=dtype)
    if get_array_module(z) is not xp:
        raise ValueError(f"rng draws {get_array_module(z).__name__} arrays but the samples are "
                         f"{xp.__name__} arrays: make rng with backend.rng(seed) on the same device")
    return z


def sample(model_fn, schedule, shape, sampler="ddim", steps=50, rng=None, eta=0.0, prediction_type="epsilon",
           spacing="leading", steps_offset=0, x_T=None, start_step=0, step_callback=None,
           return_intermediates=False, progress=True, clip_x0=False, dtype=np.float32,
           variance_type="fixed_small"):
    """Draw samples: start at x_T ~ N(0, I) and apply ``steps`` steps of ``sampler``.

    model_fn(x_t, t) -> model output (epsilon, x0 or v, per ``prediction_type``) of x_t's shape.
        x_t is always the variance-preserving sample sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps the
        network was trained on (for Euler the driver divides by sqrt(sigma^2 + 1) first); t is an
        int64 array of shape (B,) on x_t's device. Classifier-free guidance lives here, in the
        caller: evaluate the network with and without the condition and return
        eps_uncond + scale * (eps_cond - eps_uncond).
    schedule: the NoiseSchedule the network was trained with.
    shape: (B, ...) of the samples. sampler: "ddpm" | "ddim" | "euler" | "euler_ancestral" | "dpmpp_2m".
    steps: number of steps, 1..T. spacing/steps_offset: see ``timesteps`` ("leading" for every sampler
        by default, as Stable Diffusion's scheduler configs; "trailing" starts at t = T-1 and is the
        better choice for few steps or zero terminal SNR).
    rng: a generator from ``backend.rng(seed)`` (the only source of randomness); None -> unseeded.
    eta: DDIM's noise scale (0 deterministic, 1 DDPM-like). variance_type: DDPM's, "fixed_small" | "fixed_large".
    x_T: start from this sample instead of fresh noise. start_step: skip the first steps; with it, x_T
        must be the input noised to ``sampler_timesteps(...)[start_step]`` (image-to-image).
    step_callback(i, t_prev, x) -> x: runs after step i (an index into the full timestep list) with
        t_prev the timestep x is now at (-1 = clean); return x, changed or not (inpainting pastes the
        known region, noised to t_prev, here).
    clip_x0: clip each x0 prediction to [-1, 1] (DDPM/DDIM keep the unclipped eps, as diffusers;
        Euler and DPM-Solver step with the clipped x0). dtype: of the samples (float32).

    Returns x_0 of ``shape``, or (x_0, xs, x0_preds) with return_intermediates: the sample after each
    step and the x0 prediction at each step (the denoising strip).
    """
    _check_sampler(sampler)
    _check_prediction_type(prediction_type)
    ts = sampler_timesteps(schedule, steps, sampler, spacing, steps_offset)
    if isinstance(start_step, bool) or not isinstance(start_step, (int, np.integer)) or not 0 <= start_step < len(ts):
        raise ValueError(f"start_step must be an integer in [0, {len(ts) - 1}], got {start_step!r}")
    if start_step > 0 and x_T is None:
        raise ValueError("start_step > 0 needs x_T: the input noised to sampler_timesteps(...)[start_step]")
    shape = tuple(shape)
    if rng is None:
        rng = backend.rng(None, None if x_T is None else ("gpu" if backend.is_gpu_array(x_T) else "cpu"))
    if x_T is None:
        x = rng.standard_normal(shape, dtype=dtype)
    else:
        if tuple(x_T.shape) != shape:
            raise ValueError(f"x_T has shape {tuple(x_T.shape)} but shape is {shape}")
        x = x_T.astype(dtype, copy=True)
    xp = get_array_module(x)
    t_next = np.append(ts[1:], -1)                                  # where each step lands; -1 = clean
    sigmas = np.append(sigmas_at(schedule, ts), 0.0)                # used by the sigma-space samplers
    previous = None                                                 # DPM-Solver's (x0_pred, sigma) memory
    xs, x0_preds = [], []

    from tqdm.auto import tqdm
    for i in tqdm(range(start_step, len(ts)), desc=sampler, disable=not progress, leave=False):
        t, t_prev = int(ts[i]), int(t_next[i])
        t_batch = xp.full((shape[0],), t, dtype=xp.int64)
        model_output = model_fn(x, t_batch)
        if tuple(model_output.shape) != shape:
            raise ValueError(f"model_fn returned shape {tuple(model_output.shape)}, expected {shape}")
        model_output = model_output.astype(x.dtype, copy=False)
        if sampler == "ddpm":
            noise = _draw_noise(rng, shape, dtype, xp) if t > 0 else None
            x, x0_pred = ddpm_step(schedule, model_output, t, x, noise, prediction_type, t_prev,
                                   variance_type, clip_x0)
        elif sampler == "ddim":
            noise = _draw_noise(rng, shape, dtype, xp) if eta > 0 else None
            x, x0_pred = ddim_step(schedule, model_output, t, t_prev, x, eta, noise, prediction_type, clip_x0)
        elif sampler == "dpmpp_2m":
            x, x0_pred = dpmpp_2m_step(model_output, sigmas[i], sigmas[i + 1], x, prediction_type, previous,
                                       clip_x0)
            previous = (x0_pred, sigmas[i])
        else:
            # sigma space: x_sigma = x_t * sqrt(sigma^2 + 1) = x_0 + sigma eps; back again after the step
            x_sigma = x * x.dtype.type(math.sqrt(sigmas[i] ** 2 + 1))
            if sampler == "euler":
                x_sigma, x0_pred = euler_step(model_output, sigmas[i], sigmas[i + 1], x_sigma, prediction_type,
                                              clip_x0)
            else:
                noise = _draw_noise(rng, shape, dtype, xp)
                x_sigma, x0_pred = euler_ancestral_step(model_output, sigmas[i], sigmas[i + 1], x_sigma, noise,
                                                        prediction_type, clip_x0)
            x = x_sigma / x.dtype.type(math.sqrt(sigmas[i + 1] ** 2 + 1))
        if step_callback is not None:
            x = step_callback(i, t_prev, x)
            if x is None:
                raise ValueError("step_callback must return the sample x (changed or not), got None")
        if return_intermediates:
            xs.append(x)
            x0_preds.append(x0_pred)
    if return_intermediates:
        return x, xs, x0_preds
    return x
