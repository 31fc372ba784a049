"""The autoencoder's training objective: reconstruction + KL, and optional perceptual and adversarial terms.

The ELBO part
-------------
The VAE maximises log p(x) >= E_{z ~ q(z|x)} [log p(x | z)] - KL(q(z | x) || N(0, I)) (see
``vae.py``). With a Laplace likelihood p(x | z) ∝ exp(-|x - Dec(z)|) the first term is minus the
L1 error summed over the pixels (a Gaussian likelihood gives the L2 error). Stable Diffusion trains

    L = sum_pixels |x - x_rec|  +  kl_weight * KL,        kl_weight = 1e-6.

``vae_loss`` divides the whole objective by the number of pixel values D = C*H*W, so the printed
loss reads as a per-pixel error while the balance between the terms stays Stable Diffusion's:

    L = L_rec + (kl_weight / D) KL  [+ perceptual_weight P]  [+ adversarial_weight G]
    L_rec = mean |x - x_rec|        (recon="l1")      dL_rec/dx_rec = sign(x_rec - x) / N
          = mean (x - x_rec)^2      (recon="l2")      dL_rec/dx_rec = 2 (x_rec - x) / N

Why pixel losses blur, and the two terms that sharpen
-----------------------------------------------------
When the exact position of an edge cannot be recovered from the latent, the reconstruction that
minimises a pixel loss is the average (L2) or median (L1) of the plausible images: a blur.
Stable Diffusion's autoencoder (after taming-transformers) adds two terms against it, both off
by default here (weight 0):

* perceptual: P = sum_l mean (phi_l(x_rec) - phi_l(x))^2 in the feature space of a frozen
  network phi (LPIPS uses VGG; any frozen feature extractor works the same way here, wrapped by
  ``frozen_features``). Features respond to edges and shapes, so a faithful but slightly shifted
  edge costs less there than a blur.
* adversarial: G = -mean D(x_rec), with D a ``PatchDiscriminator`` that scores each small patch
  as real or reconstructed (hinge loss; see ``discriminator.py``). A blurred patch is easy to
  tell from a real one, so the decoder is pushed to commit to one sharp detail. The discriminator
  is trained at the same time on its own loss L_D (``vae_loss`` computes both players' gradients
  in one call). Switch the term on only once the autoencoder already reconstructs well (a
  "discriminator start" step: pass adversarial_weight=0 until then): early on D wins trivially
  and its gradient says little. Stable Diffusion also weighs G adaptively; here the weight is fixed.

Read beside: ``minidiff/models/vae.py`` (the model, DiagonalGaussian.kl and its backward),
``minidiff/models/discriminator.py`` (the patch discriminator, the hinge losses) and lesson 07.
"""
from __future__ import annotations

import numbers

from ..backend import get_array_module
from ..nn.module import no_grad
from .discriminator import backward_input_only

__all__ = ["vae_loss", "frozen_features", "feature_matching", "reconstruction_loss"]

RECONSTRUCTION_LOSSES = ("l1", "l2")


def _check_recon(recon):
    if recon not in RECONSTRUCTION_LOSSES:
        raise ValueError(f"vae_loss: recon must be 'l1' or 'l2', got {recon!r}")


# -- the terms -----------------------------------------------------------------------------------
def reconstruction_loss(x_rec, images, recon="l1"):
    """(L_rec, dL_rec/dx_rec): mean |x_rec - x| ("l1", Laplace likelihood) or mean (x_rec - x)^2 ("l2")."""
    _check_recon(recon)
    xp = get_array_module(images)
    diff = x_rec - images
    scale = diff.dtype.type(1.0 / diff.size)
    if recon == "l1":
        # L_rec = mean |x_rec - x|,    dL_rec/dx_rec = sign(x_rec - x) / N
        return xp.abs(diff).mean(), xp.sign(diff) * scale
    # L_rec = mean (x_rec - x)^2,      dL_rec/dx_rec = 2 (x_rec - x) / N
    return (diff ** 2).mean(), diff * (2 * scale)


def frozen_features(module):
    """A ``perceptual_fn`` from a Module whose forward returns features (an array or a list of
    arrays) and whose backward takes their gradients and returns dx. Its parameters stay frozen:
    their grads are left as they were. The module must cache (training mode) and have no dropout."""
    def perceptual_fn(x):
        return module(x), lambda d_features: backward_input_only(module, d_features)
    return perceptual_fn


def _as_list(features):
    return list(features) if isinstance(features, (list, tuple)) else [features]


def feature_matching(features_rec, features_real):
    """P = sum over feature maps of mean((phi(x_rec) - phi(x))^2); returns (P, dP/dphi(x_rec)) with
    the gradients in the structure of ``features_rec`` (an array or a list of arrays)."""
    rec, real = _as_list(features_rec), _as_list(features_real)
    if len(rec) != len(real):
        raise ValueError(f"feature_matching: {len(rec)} feature maps for the reconstruction, {len(real)} "
                         "for the image")
    loss, grads = 0.0, []
    for a, b in zip(rec, real):
        diff = a - b
        loss = loss + (diff ** 2).mean()
        grads.append(diff * diff.dtype.type(2.0 / diff.size))     # d mean(diff^2) / d a
    return loss, (grads if isinstance(features_rec, (list, tuple)) else grads[0])


def _weight(name, value, network, network_name):
    """A term's weight: a number >= 0; a positive weight needs its network."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0:
        raise ValueError(f"vae_loss: {name} must be a number >= 0, got {value!r}")
    if value > 0 and network is None:
        raise ValueError(f"vae_loss: {name}={value} needs a {network_name}")
    return value > 0 and network is not None


# -- the objective -------------------------------------------------------------------------------
def vae_loss(vae, images, rng, kl_weight=1e-6, recon="l1", perceptual_fn=None, perceptual_weight=0.0,
             discriminator=None, adversarial_weight=0.0):
    """One forward AND backward pass of the autoencoder objective (per pixel value, D = C*H*W):

        L = L_rec + (kl_weight / D) KL + perceptual_weight P + adversarial_weight G
        KL = KL(q(z|x) || N(0, I)) summed over latent dims, averaged over the batch
        P  = sum_l mean (phi_l(x_rec) - phi_l(x))^2      through a frozen feature extractor phi
        G  = -mean D(x_rec)                               the generator's hinge-GAN term

    vae:            an AutoencoderKL in training mode; its parameter grads are ADDED (zero_grad first).
    images:         (B, C, H, W) in [-1, 1].   rng: draws the posterior sample z = mean + std * eps.
    perceptual_fn:  ``perceptual_fn(x) -> (features, backward_fn)``, ``backward_fn(d_features) -> dx``
                    (see ``frozen_features``); needed when perceptual_weight > 0.
    discriminator:  a ``PatchDiscriminator`` in training mode; needed when adversarial_weight > 0.
                    Then this call also runs the discriminator's own step, L_D on [images; x_rec]
                    (``discriminator.discriminator_loss``), ADDING into its parameter grads (zero them
                    first; step its own optimiser after). G's pass through D leaves D's grads alone.

    Returns (loss, parts): 0-d arrays, so nothing waits for the GPU (``float(parts["recon"])`` to
    log): "loss", "recon", "kl", and with their terms on "perceptual", "adversarial" (G), and the
    discriminator's "d_loss", "logits_real", "logits_fake".
    """
    _check_recon(recon)
    use_perceptual = _weight("perceptual_weight", perceptual_weight, perceptual_fn, "perceptual_fn")
    use_adversarial = _weight("adversarial_weight", adversarial_weight, discriminator, "discriminator")
    dtype = images.dtype.type
    x_rec, posterior = vae.forward(images, rng, sample_posterior=True)
    rec, d_xrec = reconstruction_loss(x_rec, images, recon)
    kl = posterior.kl()
    kl_per_value = kl_weight / images[0].size
    loss = rec + dtype(kl_per_value) * kl
    parts = {"recon": rec, "kl": kl}
    if use_perceptual:
        with no_grad():
            features_real, _ = perceptual_fn(images)
        features_rec, features_backward = perceptual_fn(x_rec)
        perceptual, d_features = feature_matching(features_rec, features_real)
        loss = loss + dtype(perceptual_weight) * perceptual
        d_xrec = d_xrec + dtype(perceptual_weight) * features_backward(d_features)
        parts["perceptual"] = perceptual
    if use_adversarial:
        adversarial, d_adversarial = discriminator.generator_loss(x_rec)
        loss = loss + dtype(adversarial_weight) * adversarial
        d_xrec = d_xrec + dtype(adversarial_weight) * d_adversarial
        parts["adversarial"] = adversarial
        _, d_parts = discriminator.discriminator_loss(images, x_rec)     # the other player's gradients
        parts.update(d_parts)
    # the KL's gradient joins at the posterior's mean and logvar, inside vae.backward
    vae.backward(d_xrec, kl_weight=kl_per_value)
    parts["loss"] = loss
    return loss, parts


if __name__ == "__main__":      # python -m minidiff.models.vae_loss
    import numpy as np

    from .discriminator import DiscriminatorConfig, PatchDiscriminator
    from .vae import AutoencoderKL, VAEConfig

    vae, disc = AutoencoderKL(VAEConfig.tiny()), PatchDiscriminator(DiscriminatorConfig.tiny())
    images = np.random.default_rng(0).uniform(-1, 1, (2, 3, 8, 8)).astype(np.float32)
    for weight in (0.0, 0.1):           # before and after the "discriminator start"
        vae.zero_grad(), disc.zero_grad()
        loss, parts = vae_loss(vae, images, np.random.default_rng(1), discriminator=disc, adversarial_weight=weight)
        print(f"adversarial_weight={weight}: " + ", ".join(f"{k} {float(v):.4f}" for k, v in parts.items()))
