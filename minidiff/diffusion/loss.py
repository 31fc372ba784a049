r"""The training objective: noise an x_0 to a random t, ask the network for eps (or x_0, or v), score it.

One training step (Ho et al. 2020, Algorithm 1):

    t ~ Uniform{0, ..., T-1},  eps ~ N(0, I)
    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps                   (schedule.q_sample)
    loss = mean |f_theta(x_t, t) - target|^2

The target depends on what the network predicts (the derivation of L_simple from the variational
bound is in minidiff/diffusion/schedule.py):

    "epsilon"       target = eps                                        (DDPM, Stable Diffusion 1.x)
    "sample"        target = x_0
    "v_prediction"  target = v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0   (Salimans & Ho 2022; SD 2.x)

Min-SNR-gamma weighting (Hang et al. 2023). With SNR(t) = abar_t / (1 - abar_t), an x_0 error is
what matters for the image; the three targets weigh it differently:
|eps - eps_hat|^2 = SNR |x_0 - x0_hat|^2 and |v - v_hat|^2 = (SNR + 1) |x_0 - x0_hat|^2.
Min-SNR clamps the x_0-space weight at gamma, min(SNR, gamma), so the nearly-clean, easy timesteps
stop dominating; expressed for each target (as diffusers' training scripts do):

    epsilon: w = min(SNR, gamma) / SNR      sample: w = min(SNR, gamma)      v: w = min(SNR, gamma) / (SNR + 1)
    loss = mean_b( w_b * mean_{c,h,w} (f - target)^2 )

(for epsilon, w -> 1 as SNR -> 0, the value used where SNR = 0 under a zero-terminal-SNR schedule).

The gradient is returned with the loss so a training loop can hand it to ``model.backward``:

    d loss / d f = 2 w_b (f - target) / N,    N = number of elements of f
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..backend import get_array_module
from .schedule import PREDICTION_TYPES


def _check_prediction_type(prediction_type):
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


def prediction_target(x0, noise, t, schedule, prediction_type="epsilon"):
    """What the network should output at x_t = q_sample(x0, t, noise): eps, x_0 or v."""
    _check_prediction_type(prediction_type)
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "sample":
        return x0
    return schedule.velocity(x0, noise, t)                     # v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0


def min_snr_weights(t, schedule, gamma, prediction_type="epsilon"):
    """Per-sample Min-SNR-gamma weights, float64, shape (B,) on t's device (Hang et al. 2023)."""
    _check_prediction_type(prediction_type)
    if not gamma > 0:
        raise ValueError(f"min_snr_gamma must be > 0 (5 is the paper's choice), got {gamma!r}")
    xp = get_array_module(t)
    snr = xp.atleast_1d(xp.asarray(schedule.snr(t)))           # SNR(t) = abar_t / (1 - abar_t)
    clamped = xp.minimum(snr, gamma)                            # min(SNR, gamma): the x_0-space weight
    if prediction_type == "epsilon":
        # min(SNR, gamma) / SNR = gamma / max(SNR, gamma), which is 1 at SNR = 0
        return gamma / xp.maximum(snr, gamma)
    if prediction_type == "v_prediction":
        return clamped / (snr + 1)
    return clamped


def diffusion_loss(model_output, x0, noise, t, schedule, prediction_type="epsilon", min_snr_gamma=None):
    """MSE between the network output and its target; returns (loss, d_model_output).

    model_output, x0, noise: (B, ...) arrays of one dtype; t: int or int array (B,).
    loss is a 0-d array on the data's device (``float(loss)`` to log it; that synchronises a GPU).
    d_model_output has model_output's shape and dtype.
    """
    for name, array in (("x0", x0), ("noise", noise)):
        if array.shape != model_output.shape:
            raise ValueError(f"diffusion_loss: {name} has shape {array.shape} but model_output has shape "
                             f"{model_output.shape}; they must be equal")
    schedule.check_timestep(t)
    xp = get_array_module(model_output)
    target = prediction_target(x0, noise, t, schedule, prediction_type)
    diff = model_output - target                                             # f - target
    batch = model_output.shape[0]
    per_sample = (diff * diff).reshape(batch, -1).mean(axis=1)               # (B,) mean_{c,h,w} (f - target)^2
    if min_snr_gamma is None:
        weights = xp.ones((batch,), dtype=model_output.dtype)
    else:
        weights = xp.asarray(min_snr_weights(t, schedule, min_snr_gamma, prediction_type), dtype=model_output.dtype)
        weights = xp.broadcast_to(weights, (batch,))                         # an int t gives one weight
    loss = (weights * per_sample).mean()                                     # mean_b w_b * per_sample_b
    # d loss / d f = 2 w_b (f - target) / N
    scale = weights.reshape((batch,) + (1,) * (model_output.ndim - 1)) * model_output.dtype.type(2.0 / diff.size)
    d_model_output = scale * diff
    return loss, d_model_output


class TrainingTargets(NamedTuple):
    """One training batch's noising: network input x_t at timesteps t, the noise used, and the target."""
    x_t: object
    t: object
    noise: object
    target: object


def training_targets(schedule, x0, rng, prediction_type="epsilon"):
    """Draw t ~ Uniform{0..T-1} and eps ~ N(0, I) with ``rng`` (backend.rng), noise x0 to x_t.

    Everything stays on x0's device (make rng with ``backend.rng(seed)`` for the same device):
    the loop then calls  out = model(x_t, t);  loss, d_out = diffusion_loss(out, x0, noise, t, ...).
    """
    _check_prediction_type(prediction_type)
    xp = get_array_module(x0)
    batch = x0.shape[0]
    t = rng.integers(0, schedule.num_steps, size=(batch,), dtype=np.int64)            # (B,) t ~ U{0..T-1}
    noise = rng.standard_normal(x0.shape, dtype=x0.dtype)                             # eps ~ N(0, I)
    if get_array_module(noise) is not xp:
        raise ValueError(f"training_targets: rng draws {get_array_module(noise).__name__} arrays but x0 is a "
                         f"{xp.__name__} array; make rng with backend.rng(seed) on x0's device")
    x_t = schedule.q_sample(x0, t, noise)                                                  # sqrt(abar) x0 + sqrt(1-abar) eps
    return TrainingTargets(x_t, t, noise, prediction_target(x0, noise, t, schedule, prediction_type))
