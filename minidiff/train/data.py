"""The training data, prepared once and kept on the device.

Images are rendered (or read) once; latents are encoded once; a frozen text encoder's states are
computed once. A training step only gathers rows of these device arrays, with indices drawn on the
device, so nothing crosses between host and device inside the loop.
"""
from __future__ import annotations

import numpy as np

from .. import backend
from ..datasets import shapes
from ..nn.module import no_grad

SHAPES_DATA_SEED = 1          # training images: shapes.sample(n, seed=(seed, 1)); evaluation uses others


def load_images(data: str, size: int, count: int, seed: int):
    """(N, C, size, size) float32 in [-1, 1] on the host: "shapes", "folder:PATH" or "idx:PATH".

    ``seed`` picks the rendered shapes scenes; a folder or idx file gives its first ``count`` images."""
    kind, _, location = data.partition(":")
    if kind == "shapes" and not location:
        return shapes.sample(count, seed=(seed, SHAPES_DATA_SEED), size=size)["images"]
    if kind == "folder" and location:
        from ..datasets.folder import load_folder
        return load_folder(location, size=size, limit=count)
    if kind == "idx" and location:
        from ..datasets.idx import load_idx_dataset, to_float_images
        images, _ = load_idx_dataset(location, "train")
        if max(images.shape[1:]) > size:
            raise ValueError(f"--data {data}: the images are {images.shape[1]}x{images.shape[2]}, larger "
                             f"than the model's image size {size}")
        return to_float_images(images[:count], pad_to=size)
    raise ValueError(f"--data must be 'shapes', 'folder:PATH' or 'idx:PATH', got {data!r}")


def gather(rng, *arrays, batch_size):
    """The same random rows of each device array: indices drawn on the device (no host round trip)."""
    idx = rng.integers(0, arrays[0].shape[0], size=(batch_size,))
    return [a[idx] for a in arrays]


def encode_dataset(vae, images, batch_size=256):
    """Posterior means and standard deviations of every image's latent (scaled), on the device.

    Sampling z = mean + std * eps later, per step, keeps the VAE's noise in the data (as Stable
    Diffusion samples the posterior) without running the encoder again."""
    xp = backend.get_xp()
    means, stds = [], []
    scale = np.float32(vae.scale_factor)
    with no_grad():
        for start in range(0, len(images), batch_size):
            posterior = vae.encode(xp.asarray(images[start:start + batch_size]))
            means.append(posterior.mean * scale)       # scaled: z * scale_factor has about unit variance
            stds.append(posterior.std * scale)
    return xp.concatenate(means), xp.concatenate(stds)


def text_states(text_encoder, tokenizer, captions, batch_size=512):
    """The frozen encoder's per-token states (N, L, W) and masks (N, L) for captions, on the device."""
    xp = backend.get_xp()
    states, masks = [], []
    with no_grad():
        for start in range(0, len(captions), batch_size):
            ids, mask = tokenizer.encode_batch(captions[start:start + batch_size],
                                               max_length=text_encoder.config.max_length)
            states.append(text_encoder.forward(ids, mask)[0])
            masks.append(xp.asarray(mask))
    return xp.concatenate(states), xp.concatenate(masks)
