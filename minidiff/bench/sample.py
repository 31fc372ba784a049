"""The sample suite: text-to-image. The text encoder, 50 DDIM steps with classifier-free guidance
(minidiff.diffusion.guidance: the unconditional and conditional branches as one batch of 2B
latents through the U-Net each step) and the VAE decode; batch 1 on the CPU, 64 on the GPU.
PyTorch runs the same loop on its twins (minidiff.bench.twins) with the same weights."""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from .. import backend
from ..diffusion import samplers
from ..diffusion.guidance import guided_model_fn
from ..diffusion.schedule import NoiseSchedule
from ..models.text_encoder import TextEncoder, TextEncoderConfig
from ..models.unet import UNet, UNetConfig
from ..models.vae import AutoencoderKL, VAEConfig
from ..nn.module import no_grad
from . import twins
from .work import Work, to_torch


def sampling_models(tiny):
    """(UNetConfig, VAEConfig, TextEncoderConfig) of the text-to-image system (tiny: small ones)."""
    if not tiny:
        return UNetConfig.latent8(), VAEConfig.f4_32(), TextEncoderConfig.shipped()
    vae = VAEConfig.tiny()
    unet = dataclasses.replace(UNetConfig.tiny(), in_channels=vae.latent_channels,
                               out_channels=vae.latent_channels, image_size=vae.latent_size)
    text = TextEncoderConfig(vocab_size=32, max_length=8, width=unet.context_dim, num_layers=1, num_heads=2)
    return unet, vae, text


def prompt_ids(text_config, batch, seed=1):
    """Random token ids and right-padded masks (B, L): stand-ins for a tokenised prompt."""
    rng = np.random.default_rng(seed)
    L = text_config.max_length
    ids = rng.integers(0, text_config.vocab_size, (batch, L)).astype(np.int64)
    lengths = rng.integers(2, L + 1, batch)
    mask = np.arange(L)[None, :] < lengths[:, None]
    return ids, mask


def sample_work(tiny, batch, steps, guidance_scale=4.0):
    unet_config, vae_config, text_config = sampling_models(tiny)
    schedule = NoiseSchedule.make("scaled_linear", num_steps=1000)
    latent_shape = (unet_config.in_channels, unet_config.image_size, unet_config.image_size)

    def make(device, b):
        unet = UNet(unet_config, seed=0).to(device.name).eval()
        vae = AutoencoderKL(vae_config, seed=0).to(device.name).eval()
        text_encoder = TextEncoder(text_config, seed=0).to(device.name).eval()
        ids, mask = (device.put(a) for a in prompt_ids(text_config, 2 * b))   # rows [:b] uncond, [b:] cond

        def generate():
            with no_grad():
                context, _ = text_encoder(ids, mask)                        # (2B, L, width)
                model_fn = guided_model_fn(unet, context[b:], mask[b:], context[:b], mask[:b], guidance_scale)
                latents = samplers.sample(model_fn, schedule, (b,) + latent_shape, sampler="ddim",
                                          steps=steps, rng=backend.rng(0, device.name), progress=False)
                return vae.decode(latents)
        return generate

    def make_torch(torch, device, b):
        kw = dict(dtype=torch.float32, device=device.torch_device)
        unet = twins.make_unet_twin(unet_config, UNet(unet_config, seed=0).state_dict(), **kw).eval()
        vae = twins.make_vae_twin(vae_config, AutoencoderKL(vae_config, seed=0).state_dict(), **kw).eval()
        text_encoder = twins.make_text_encoder_twin(text_config, TextEncoder(text_config, seed=0).state_dict(),
                                                    **kw).eval()
        ids, mask = (to_torch(torch, device, a) for a in prompt_ids(text_config, 2 * b))
        ts = [int(t) for t in samplers.timesteps(schedule, steps)]
        abar = [float(schedule.alphas_cumprod[t]) for t in ts] + [1.0]        # abar_t, then abar_prev

        @torch.no_grad()
        def generate():
            context, _ = text_encoder(ids, mask)
            z = torch.randn((b,) + latent_shape, device=device.torch_device)
            for i, t in enumerate(ts):
                tt = torch.full((2 * b,), float(t), device=device.torch_device)
                out = unet(torch.cat([z, z]), tt, context, mask)
                eps = out[:b] + guidance_scale * (out[b:] - out[:b])          # the reference's own guidance
                # DDIM (eta = 0): x0 = (z - sqrt(1 - abar) eps) / sqrt(abar); z' = sqrt(abar') x0 + sqrt(1 - abar') eps
                x0 = (z - math.sqrt(1 - abar[i]) * eps) / math.sqrt(abar[i])
                z = math.sqrt(abar[i + 1]) * x0 + math.sqrt(1 - abar[i + 1]) * eps
            return vae.decode(z)
        return generate
    shape = f"B={batch} ({2 * batch} through the U-Net), {steps} DDIM steps, CFG"
    return Work("sample", "text-to-image", shape, batch, make, make_torch, images=batch)


def sample_works(tiny, device, batch=None):
    batch = batch or (2 if tiny else (64 if device.name == "gpu" else 1))
    return [sample_work(tiny, batch, steps=2 if tiny else 50)]
