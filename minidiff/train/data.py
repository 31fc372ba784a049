"""The training data, prepared once and kept on the device.

Images are rendered (or read) once; latents are encoded once; a frozen text encoder's states are
computed once. A training step only gathers rows of these device arrays, with indices drawn on the
device, so nothing crosses between host and device inside the loop.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import backend
from ..datasets import captions, digits, folder, idx, shapes
from ..nn.module import no_grad

SHAPES_DATA_SEED = 1          # training images: shapes.sample(n, seed=(seed, 1)); evaluation uses others
DATA_SOURCES = "'shapes', 'digits', 'folder:DIR' or 'idx:DIR'"


@dataclass
class TrainingData:
    """What a job trains on, on the host. ``captions`` is None for a source without them.

    Caption j describes image i when every label caption j states (``said[j] >= 0``) equals image
    i's (``image_labels[i]``): datasets.captions.label_matches. Shapes state attributes, digits the
    digit and ink words, a folder one id per distinct caption (the same caption = the same image
    kind). ``shapes_labels``: the shapes' attribute dict (hard negatives, evaluation), else None."""
    images: np.ndarray                      # (N, C, S, S) float32 in [-1, 1]
    captions: list | None = None
    image_labels: np.ndarray | None = None  # (N, K) int64
    said: np.ndarray | None = None          # (N, K) int64, -1 = not said
    shapes_labels: dict | None = None


def _with_channels(images, channels, data):
    """Grey (N, 1, ...) repeated to RGB when asked; anything else must already match."""
    if channels is None or images.shape[1] == channels:
        return images
    if images.shape[1] == 1 and channels == 3:
        return np.ascontiguousarray(np.repeat(images, 3, axis=1))
    raise ValueError(f"--data {data}: the images have {images.shape[1]} channels, the model takes {channels}")


def _shapes_data(batch, channels):
    if channels not in (None, 3):
        raise ValueError(f"--data shapes: the scenes are RGB, the model takes {channels} channel(s)")
    return TrainingData(batch["images"], batch["captions"], captions.label_matrix(batch["labels"]),
                        captions.caption_label_matrix(batch["captions"]), batch["labels"])


def load_data(data: str, size: int, count: int, seed: int, channels: int | None = None,
              need_captions: bool = False, two_object_fraction: float = 0.3,
              extra_fraction: float = 0.0) -> TrainingData:
    """The one way a job reads ``--data``: "shapes", "digits", "folder:DIR" or "idx:DIR".

    ``size``: the model's image size (a folder's images are center-cropped and resized to it,
    digits padded or shrunk); ``count``: at most this many images (the shapes scenes rendered, a
    folder's first in name order, digits drawn evenly from the training split, never the held-out
    one); ``channels``: 1 or 3 (grey is repeated to RGB), None = the source's own;
    ``need_captions``: a source without captions is a ValueError (the clip and text2image jobs);
    ``extra_fraction``: shapes only, the share of scenes whose object 1 is pink (a colour outside
    the base vocabulary, for the VAE that must later draw what a LoRA or a token asks for)."""
    kind, _, location = str(data).partition(":")
    if extra_fraction and not (kind == "shapes" and not location):
        raise ValueError(f"--extra-fraction {extra_fraction}: only --data shapes has pink objects to add; "
                         f"--data {data} has its own images")
    if kind == "shapes" and not location:
        batch = shapes.sample(count, seed=(seed, SHAPES_DATA_SEED), size=size,
                              two_object_fraction=two_object_fraction,
                              extra_colours=("pink",) if extra_fraction else (), extra_fraction=extra_fraction)
        if extra_fraction:              # the caption grammar has no pink: the images alone (the VAE's data)
            if need_captions:
                raise ValueError(f"--extra-fraction {extra_fraction}: pink scenes have no captions in the "
                                 "shapes grammar, so a job that reads captions cannot take them")
            return TrainingData(_with_channels(batch["images"], channels, data))
        return _shapes_data(batch, channels)
    if kind == "digits" and not location:
        pixels, labels = digits.load_uint8("train")
        order = np.random.default_rng(seed).permutation(len(labels))[:count]
        pixels, labels = pixels[order], labels[order]
        texts, said, have = digits.captions_and_said(pixels, labels, seed=seed)
        return TrainingData(digits.to_images(pixels, size, channels or 1), texts, have, said)
    if kind == "folder" and location:
        images, texts = folder.load_captioned_folder(location, size=size, limit=count, channels=channels or 3,
                                                     need_captions=need_captions)
        if texts is None:
            return TrainingData(images)
        # positives are exact-caption equality: one id per distinct caption
        ids = {text: k for k, text in enumerate(dict.fromkeys(texts))}
        labels = np.array([[ids[text]] for text in texts], np.int64)              # (N, 1)
        return TrainingData(images, texts, labels, labels.copy())
    if kind == "idx" and location:
        if need_captions:
            raise ValueError(f"--data {data}: IDX files have labels but no captions; use --data digits or "
                             "a folder with captions.txt")
        pixels, _ = idx.load_idx_dataset(location, "train")
        if max(pixels.shape[1:]) > size:
            raise ValueError(f"--data {data}: the images are {pixels.shape[1]}x{pixels.shape[2]}, larger "
                             f"than the model's image size {size}")
        return TrainingData(_with_channels(idx.to_float_images(pixels[:count], pad_to=size), channels, data))
    raise ValueError(f"--data must be {DATA_SOURCES}, got {data!r}")


def load_heldout(data: str, size: int, count: int, seed, channels: int | None = None) -> TrainingData | None:
    """Captioned images no training run sees, for a job's running read-out: shapes scenes from
    ``seed`` (the caller's evaluation seed), the digits' held-out split (``count`` of its 500, every
    class); None for a folder or IDX files (all of a user's images are training images)."""
    if data == "shapes":
        batch = shapes.sample(count, seed=seed, size=size)
        return _shapes_data(batch, channels)
    if data == "digits":
        pixels, labels = digits.load_uint8("heldout")
        order = np.random.default_rng(0).permutation(len(labels))[:count]
        texts, said, have = digits.captions_and_said(pixels[order], labels[order], seed=0)
        return TrainingData(digits.to_images(pixels[order], size, channels or 1), texts, have, said)
    return None


def load_images(data: str, size: int, count: int, seed: int, channels: int | None = None):
    """(N, C, size, size) float32 in [-1, 1] on the host: ``load_data(...).images``."""
    return load_data(data, size, count, seed, channels).images


def gather(rng, *arrays, batch_size):
    """The same random rows of each device array: indices drawn on the device (no host round trip)."""
    idx = rng.integers(0, arrays[0].shape[0], size=(batch_size,))
    return [a[idx] for a in arrays]


def draw_latents(rng, means, stds):
    """z ~ q(z | x) = N(mean, std^2) for gathered rows: z = mean + std * eps, eps ~ N(0, I). A new
    eps every step keeps the VAE's own noise in the training data (``encode_dataset``)."""
    return means + stds * rng.standard_normal(means.shape, dtype=means.dtype)


def drop_captions(rng, p: float, *pairs):
    """Conditioning dropout, for classifier-free guidance: with probability ``p`` a row's caption
    becomes the empty one, so one network also learns the unconditional eps(x_t, t, "").

    pairs: (batch (B, ...), the empty caption's row (1, ...)), each a view of the same captions
    (e.g. its states and its mask). One draw per row, the same for every pair; returns the batches."""
    xp = backend.get_array_module(pairs[0][0])
    drop = rng.random((pairs[0][0].shape[0],), dtype=np.float32) < p
    return [xp.where(drop.reshape((-1,) + (1,) * (batch.ndim - 1)), empty, batch) for batch, empty in pairs]


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
