"""Classifier-free guidance, written once (Ho & Salimans, 2022); classifier guidance beside it.

One network is trained both with the caption and, a fraction of the time, with an empty caption
(conditioning dropout), so it predicts the noise two ways: eps(x_t, c) and eps(x_t, ∅). At sampling
time the two are pushed apart by a guidance scale s:

    eps_guided = eps(x_t, ∅) + s (eps(x_t, c) - eps(x_t, ∅))

s = 1 is the conditional model alone, s = 0 the unconditional one, s > 1 exaggerates what the
caption changes (sharper prompt-following, less variety). The pipeline, the evaluation and the
benchmark all sample through :func:`guided_model_fn`.

Classifier guidance (Dhariwal & Nichol, 2021) needs no second branch of the diffusion model but a
noise-aware classifier p(y | x_t, t) (``models/noisy_classifier.py``). The score of x_t is
-eps / sqrt(1 - abar_t), and Bayes adds the classifier's: grad log p(x_t | y) = grad log p(x_t) +
grad log p(y | x_t), so, with a scale s on the classifier's term,

    eps_hat = eps(x_t) - s sqrt(1 - abar_t) grad_x log p(y | x_t)

(:func:`classifier_guided_model_fn`). The two compose: the eps may itself be classifier-free guided.
"""
from __future__ import annotations

from ..backend import get_array_module


def guided_prediction(eps_uncond, eps_cond, guidance_scale):
    """eps = eps_uncond + s (eps_cond - eps_uncond); s = 1 is exactly eps_cond, s = 0 exactly eps_uncond."""
    if guidance_scale == 1:
        return eps_cond
    if guidance_scale == 0:
        return eps_uncond
    # the scale takes the data's dtype (a Python float would be fine; a NumPy float64 would upcast)
    return eps_uncond + eps_cond.dtype.type(guidance_scale) * (eps_cond - eps_uncond)


def guided_model_fn(denoiser, cond, cond_mask, uncond, uncond_mask, guidance_scale):
    """model_fn(x_t, t) for the samplers: ``denoiser(x_t, t, context, context_mask)`` under guidance.

    cond, uncond:           (B, L, width) context states of the prompt and of the negative (or empty) prompt
    cond_mask, uncond_mask: (B, L) which tokens are real

    Scales 1 and 0 need one network call per step. Any other scale runs the unconditional and the
    conditional branch as one batch of 2B (half the calls, the same result), then splits it."""
    xp = get_array_module(cond)
    both = xp.concatenate([uncond, cond])                   # (2B, L, width): rows [:B] unconditional
    both_mask = xp.concatenate([uncond_mask, cond_mask])
    batch = cond.shape[0]

    def model_fn(x, t):
        if guidance_scale == 1:
            return denoiser(x, t, cond, cond_mask)
        if guidance_scale == 0:
            return denoiser(x, t, uncond, uncond_mask)
        out = denoiser(xp.concatenate([x, x]), xp.concatenate([t, t]), both, both_mask)
        return guided_prediction(out[:batch], out[batch:], guidance_scale)
    return model_fn


# -- classifier guidance ----------------------------------------------------------------------------
def classifier_guided_eps(eps, grad_log_prob, sqrt_one_minus_abar, guidance_scale):
    """eps_hat = eps - s sqrt(1 - abar_t) grad_x log p(y | x_t); s = 0 is eps itself."""
    if guidance_scale == 0:
        return eps
    return eps - eps.dtype.type(guidance_scale) * sqrt_one_minus_abar.astype(eps.dtype) * grad_log_prob


def classifier_guided_model_fn(model_fn, grad_log_prob_fn, schedule, guidance_scale):
    """model_fn(x_t, t) for the samplers: an epsilon-predicting ``model_fn`` steered by
    ``grad_log_prob_fn(x_t, t)`` = grad_x log p(y | x_t) (e.g. noisy_classifier.log_prob_gradient
    with y fixed)."""
    def guided(x, t):
        eps = model_fn(x, t)
        if guidance_scale == 0:
            return eps
        sqrt_one_minus_abar = schedule.gather("sqrt_one_minus_alphas_cumprod", t, x)
        return classifier_guided_eps(eps, grad_log_prob_fn(x, t), sqrt_one_minus_abar, guidance_scale)
    return guided
