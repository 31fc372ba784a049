"""The unet suite: one training step (forward, MSE loss, backward, AdamW) of the shipped
text-to-image U-Net (UNetConfig.latent8: 4x8x8 latents, a 24 x 128 text context) at batch 128,
and of the 32x32 pixel U-Net (UNetConfig.pixel32) at batch 64. PyTorch trains its twin
(minidiff.bench.twins) on the same weights and inputs."""
from __future__ import annotations

import numpy as np

from ..models.unet import UNet, UNetConfig
from ..nn import functional as F
from ..optim import AdamW
from . import twins
from .work import Work, host_normal, to_torch


def unet_inputs(config, batch, context_length, seed=0):
    """(x, t, context, noise) on the host; context is None for an unconditional U-Net."""
    rng = np.random.default_rng(seed)
    size = config.image_size
    x = host_normal(rng, (batch, config.in_channels, size, size))
    t = rng.integers(0, 1000, batch).astype(np.int64)
    noise = host_normal(rng, (batch, config.out_channels, size, size))
    context = None
    if config.context_dim is not None:
        context = host_normal(rng, (batch, context_length, config.context_dim))
    return x, t, context, noise


def unet_work(name, config, batch, context_length=24):
    def make(device, b):
        model = UNet(config, seed=0).to(device.name).train()
        optimizer = AdamW(model, lr=1e-4)
        x, t, context, noise = (None if a is None else device.put(a)
                                for a in unet_inputs(config, b, context_length))

        def step():
            model.zero_grad()
            eps = model(x, t, context)
            loss, cache = F.mse_loss(eps, noise)
            model.backward(F.mse_loss_backward(1.0, cache))
            optimizer.step()
        return step

    def make_torch(torch, device, b):
        twin = twins.make_unet_twin(config, UNet(config, seed=0).state_dict(), dtype=torch.float32,
                                    device=device.torch_device).train()
        optimizer = torch.optim.AdamW(twin.parameters(), lr=1e-4)
        x, t, context, noise = (None if a is None else to_torch(torch, device, a)
                                for a in unet_inputs(config, b, context_length))
        t = t.to(torch.float32)

        def step():
            optimizer.zero_grad(set_to_none=True)
            loss = torch.nn.functional.mse_loss(twin(x, t, context), noise)
            loss.backward()
            optimizer.step()
        return step
    shape = f"B={batch} {config.in_channels}x{config.image_size}x{config.image_size}"
    if config.context_dim is not None:
        shape += f" ctx {context_length}x{config.context_dim}"
    return Work("unet", f"{name} train step", shape, batch, make, make_torch)


def unet_works(tiny, batch=None):
    if tiny:
        return [unet_work("tiny", UNetConfig.tiny(), batch or 2, context_length=5)]
    return [unet_work("latent8", UNetConfig.latent8(), batch or 128),
            unet_work("pixel32", UNetConfig.pixel32(), batch or 64)]
