"""Images to judge: a text-to-image pipeline's for a list of prompts, an unconditional model's."""
from __future__ import annotations

import numpy as np

from .. import backend
from ..diffusion import samplers
from ..nn.module import no_grad


def generate(pipe, prompts, guidance_scale: float, steps: int = 50, seed: int = 0, sampler: str = "ddim",
             batch_size: int = 64, spacing: str = "leading"):
    """One image per prompt from a text-to-image ``pipeline.Pipeline`` (``Pipeline.sample_prompts``:
    a different prompt in every row of a batch, classifier-free guidance against the empty prompt).
    Host images (N, 3, H, W) in [-1, 1]."""
    return pipe.sample_prompts(prompts, guidance_scale, steps=steps, seed=seed, sampler=sampler,
                               batch_size=batch_size, spacing=spacing)


def sample_unconditional(model, schedule, n: int, shape, steps: int = 50, seed: int = 0, sampler: str = "ddim",
                         prediction_type: str = "epsilon", decode=None, batch_size: int = 64,
                         spacing: str = "leading", clip_x0: bool = False):
    """n samples of an unconditional U-Net (decoded by ``decode`` for a latent model); host (N, C, H, W),
    clipped to [-1, 1].

    ``spacing`` and ``clip_x0`` are ``samplers.sample``'s, with its defaults: the timestep spacing
    ("leading", "trailing" or "linspace"), and whether every x0 prediction is clipped to [-1, 1]
    (for pixel models; a latent's x0 is not an image and must not be clipped)."""
    images = []
    for start in range(0, n, batch_size):
        count = min(batch_size, n - start)
        with no_grad():
            x = samplers.sample(lambda x_t, t: model.forward(x_t, t), schedule, (count,) + tuple(shape),
                                sampler=sampler, steps=steps, rng=backend.rng(seed + start),
                                prediction_type=prediction_type, spacing=spacing, clip_x0=clip_x0,
                                progress=False)
            if decode is not None:
                x = decode(x)
        images.append(backend.to_numpy(x))
    return np.clip(np.concatenate(images), -1.0, 1.0)
