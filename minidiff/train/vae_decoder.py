"""Fine-tuning the VAE's decoder alone: ``python -m minidiff train vae_decoder``.

The shipped autoencoder saw six colours. Asked to reconstruct a seventh (pink), its encoder still
gives a latent of its own (about 8% away from the same scene in red), but its decoder draws red:
a U-Net taught pink (LoRA, textual inversion) makes the right latents and still shows red images.
So the decoder learns pink here while the encoder stays frozen: every latent keeps its meaning, and
the U-Net, its adapters and its ControlNet need no retraining. (Stable Diffusion's improved
autoencoders were made the same way, decoder only, so that the U-Net trained on the old latents
kept working.)

Read beside: ``minidiff/models/vae.py`` (decode, decode_backward), ``minidiff/models/vae_loss.py``
(the reconstruction loss and its gradient) and ``minidiff/train/finetune.py`` (the pink fine-tunes).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from .. import backend, zoo
from ..checkpoint import load_checkpoint, save_checkpoint
from ..datasets import shapes
from ..evaluate.adapters import colour_share, reconstruction_report  # noqa: F401  (reconstruction_report: its old home)
from ..models.vae_loss import reconstruction_loss
from ..nn.module import Module
from .config import VAEDecoderJob
from .data import SHAPES_DATA_SEED, draw_latents, encode_dataset
from .loop import fit, fresh_output, keep_file


# -- the VAE's decoder, for a colour its latents carry but it never drew -------------------------------
class DecoderHalf(Module):
    """The trainable half of a VAE whose encoder stays frozen: post_quant_conv and the decoder."""

    def __init__(self, vae):
        self._vae = vae

    def _children(self):
        yield "post_quant_conv", self._vae.post_quant_conv
        yield "decoder", self._vae.decoder


def run_vae_decoder(cfg: VAEDecoderJob, out=None, resume=False, deadline=None, stop_at=None, progress=True,
                    ship_dtype=None):
    """Train the decoder of the VAE at ``cfg.vae`` on pink and base scenes; with ``out``, write
    DIR/vae.npz: the same encoder and scale factor, the new decoder.

        z ~ q(z | x) = N(mean, std^2)  (the frozen encoder, computed once)
        L = mean |Dec(z) - x|          dL/dDec(z) = sign(Dec(z) - x) / N"""
    fresh_output("vae_decoder", out, resume, "the VAE", zoo.FILES["vae"])
    xp = backend.get_xp()
    source = load_checkpoint(cfg.vae, hint="train one with: python -m minidiff train vae")
    vae = zoo.load_vae(cfg.vae, backend.device())
    batch = shapes.sample(cfg.dataset_size, seed=(cfg.seed, SHAPES_DATA_SEED, 18), size=vae.config.image_size,
                          two_object_fraction=cfg.two_object_fraction, extra_colours=("pink",),
                          extra_fraction=cfg.extra_fraction)
    images = xp.asarray(batch["images"])
    means, stds = encode_dataset(vae, batch["images"])                     # scaled latents
    scale = np.float32(vae.scale_factor)
    half = DecoderHalf(vae)
    vae.train()

    def loss_fn(rng, step):
        vae.zero_grad()
        idx = rng.integers(0, means.shape[0], size=(cfg.batch_size,))
        z = draw_latents(rng, means[idx], stds[idx]) / scale            # z ~ q(z | x), unscaled for the decoder
        x_rec = vae.decode(z)
        loss, d_rec = reconstruction_loss(x_rec, images[idx], cfg.recon)
        vae.decode_backward(d_rec)                     # the encoder is not run: it gets no gradient
        return loss

    config = {"job": "vae_decoder", "train": dataclasses.asdict(cfg)}
    result = fit("vae_decoder", half, loss_fn, cfg, config, out=None, deadline=deadline, stop_at=stop_at,
                 progress=progress)
    vae.zero_grad()
    vae.eval()
    if keep_file(result, cfg, out):
        path = Path(out) / zoo.FILES["vae"]
        path.parent.mkdir(parents=True, exist_ok=True)
        recorded = dict(source.config)
        recorded["decoder_finetune"] = dataclasses.asdict(cfg)
        save_checkpoint(path, model=vae, config=recorded, step=int((source.step or 0)) + result.step,
                        extra={**(source.extra or {}), "scale_factor": np.asarray(vae.scale_factor, np.float64)},
                        dtype=ship_dtype)
        result.checkpoint = path
        print(f"vae_decoder: -> {path}")
    result.vae = vae
    result.evaluation = reconstruction_report(vae, seed=cfg.seed)
    print("vae_decoder: held-out reconstructions drawn in the right colour: "
          + ", ".join(f"{k} {v:.2f}" for k, v in result.evaluation.items()))
    return result
