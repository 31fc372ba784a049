"""Which function trains each job: ``RUNNERS[job](cfg, out=..., resume=..., deadline=..., stop_at=...,
progress=..., ship_dtype=...)``, for the command line (``cli.py``) and ``train all`` (``recipe.py``).

    jobs.py         pixel, vae, latent, clip, text2image, classifier, digit_classifier
    finetune.py     lora, textual_inversion, controlnet, noisy_classifier (a finished model, frozen)
    vae_decoder.py  vae_decoder (a finished VAE's decoder alone)
    vae64.py        vae64 (a 64x64 VAE taught a 32x32 one's latents)
"""
from __future__ import annotations

from .finetune import run_controlnet, run_lora, run_noisy_classifier, run_textual_inversion
from .jobs import run_classifier, run_clip, run_digit_classifier, run_latent, run_pixel, run_text2image, run_vae
from .vae64 import run_vae64
from .vae_decoder import run_vae_decoder

RUNNERS = {"pixel": run_pixel, "vae": run_vae, "latent": run_latent, "clip": run_clip,
           "text2image": run_text2image, "classifier": run_classifier, "digit_classifier": run_digit_classifier,
           "lora": run_lora, "textual_inversion": run_textual_inversion, "controlnet": run_controlnet,
           "noisy_classifier": run_noisy_classifier, "vae_decoder": run_vae_decoder, "vae64": run_vae64}
