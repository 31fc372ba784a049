"""The KL autoencoder (minidiff/models/vae.py), its objective (vae_loss.py) and the patch
discriminator (discriminator.py).

Gradients are checked against central differences in float64 along a random direction u per
array: (L(a + h u) - L(a - h u)) / 2h must equal sum(dL/da * u) for every parameter and input.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minidiff.backend import to_numpy
from minidiff.models.discriminator import (DiscriminatorConfig, PatchDiscriminator, hinge_d_loss,
                                           hinge_g_loss, leaky_relu, leaky_relu_backward)
from minidiff.models.vae import AutoencoderKL, DiagonalGaussian, VAEConfig
from minidiff.models.vae_loss import feature_matching, frozen_features, vae_loss
from minidiff.nn.layers import Conv2d, SiLU
from minidiff.nn.module import Module

RTOL, ATOL = 1e-6, 1e-8   # float64 directional derivatives: |numeric - analytic| <= ATOL + RTOL * scale


# -- helpers -------------------------------------------------------------------------------------
def directional_errors(loss_fn, named_arrays, grads, seed=0, h=1e-5):
    """{name: (numeric, analytic)}: the central difference of loss_fn along a random direction u
    and sum(grad * u); each array is perturbed in place and restored."""
    rng = np.random.default_rng(seed)
    pairs = {}
    for name, array in named_arrays.items():
        u = rng.standard_normal(array.shape)
        u /= np.sqrt(u.size)                                      # |u| ~ 1: a small step in every case
        array += h * u
        plus = float(loss_fn())
        array -= 2 * h * u
        minus = float(loss_fn())
        array += h * u
        pairs[name] = ((plus - minus) / (2 * h), float((to_numpy(grads[name]) * u).sum()))
    return pairs


def assert_small(pairs, what):
    """Every pair agrees within ATOL + RTOL * max(|numeric|, |analytic|). (Some gradients are
    exactly zero, e.g. the key bias of attention, which shifts all logits of a query equally.)"""
    excess = {name: abs(n - a) - (ATOL + RTOL * max(abs(n), abs(a))) for name, (n, a) in pairs.items()}
    worst = max(excess, key=excess.get)
    n, a = pairs[worst]
    assert excess[worst] <= 0, f"{what}: {worst!r} numeric {n:.10g} vs analytic {a:.10g}"


def param_arrays(module, prefix=""):
    return {prefix + name: p.data for name, p in module.named_parameters()}


def param_grads(module, prefix=""):
    return {prefix + name: (p.grad if p.grad is not None else np.zeros_like(p.data))
            for name, p in module.named_parameters()}


def tiny_vae():
    return AutoencoderKL(VAEConfig.tiny(), seed=0).to(dtype=np.float64)


def smooth_images(n, size, seed=0):
    """Random smooth images in [-1, 1]: a few low-frequency sinusoids per channel."""
    rng = np.random.default_rng(seed)
    grid = np.linspace(0, 1, size)
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    freq = rng.uniform(0.5, 2.0, (n, 3, 2, 1, 1))
    phase = rng.uniform(0, 2 * np.pi, (n, 3, 1, 1))
    return np.tanh(np.sin(2 * np.pi * (freq[:, :, 0] * xx + freq[:, :, 1] * yy) + phase)).astype(np.float32)


class FixedFeatures(Module):
    """A tiny frozen feature extractor for the perceptual hook: conv-SiLU-conv, both maps returned."""

    def __init__(self, seed=0):
        rng = np.random.default_rng(seed)
        self.conv1 = Conv2d(3, 4, 3, padding=1, rng=rng)
        self.act = SiLU()
        self.conv2 = Conv2d(4, 4, 3, stride=2, padding=1, rng=rng)

    def forward(self, x):
        f1 = self.act(self.conv1(x))
        return [f1, self.conv2(f1)]

    def backward(self, d_features):
        d1, d2 = d_features
        return self.conv1.backward(self.act.backward(d1 + self.conv2.backward(d2)))


# -- whole-model gradients -------------------------------------------------------------------------
def test_decode_gradients_match_finite_differences():
    vae = tiny_vae()
    rng = np.random.default_rng(1)
    z = rng.standard_normal((2, 4, 4, 4))
    d_out = rng.standard_normal((2, 3, 8, 8))
    loss = lambda: (vae.decode(z) * d_out).sum()              # noqa: E731
    vae.zero_grad()
    loss()
    dz = vae.decode_backward(d_out)
    grads = {"z": dz, **param_grads(vae.decoder, "decoder."), **param_grads(vae.post_quant_conv, "post_quant_conv.")}
    arrays = {"z": z, **param_arrays(vae.decoder, "decoder."), **param_arrays(vae.post_quant_conv, "post_quant_conv.")}
    assert_small(directional_errors(loss, arrays, grads), "decode")


def test_encode_gradients_match_finite_differences():
    vae = tiny_vae()
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, (2, 3, 8, 8))
    d_mean, d_logvar = rng.standard_normal((2, 2, 4, 4, 4))

    def loss():
        posterior = vae.encode(x)
        return (posterior.mean * d_mean).sum() + (posterior.logvar * d_logvar).sum()
    vae.zero_grad()
    loss()
    dx = vae.encode_backward(d_mean, d_logvar)
    grads = {"x": dx, **param_grads(vae.encoder, "encoder."), **param_grads(vae.quant_conv, "quant_conv.")}
    arrays = {"x": x, **param_arrays(vae.encoder, "encoder."), **param_arrays(vae.quant_conv, "quant_conv.")}
    assert_small(directional_errors(loss, arrays, grads), "encode")


def test_sampled_forward_with_kl_gradients_match_finite_differences():
    """L = sum(x_rec * d_out) + kl_weight * KL through z = mean + std * eps (eps fixed by the seed)."""
    vae = tiny_vae()
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, (2, 3, 8, 8))
    d_out = rng.standard_normal((2, 3, 8, 8))
    kl_weight = 0.3

    def loss():
        x_rec, posterior = vae.forward(x, np.random.default_rng(7), sample_posterior=True)
        return (x_rec * d_out).sum() + kl_weight * posterior.kl()
    vae.zero_grad()
    loss()
    dx = vae.backward(d_out, kl_weight=kl_weight)
    errors = directional_errors(loss, {"x": x, **param_arrays(vae)}, {"x": dx, **param_grads(vae)})
    assert_small(errors, "forward(sample) + KL")


def test_vae_loss_gradients_match_finite_differences_with_perceptual_and_gan_terms():
    vae = tiny_vae()
    features = FixedFeatures().to(dtype=np.float64)
    disc = PatchDiscriminator(DiscriminatorConfig.tiny()).to(dtype=np.float64)
    images = np.random.default_rng(4).uniform(-1, 1, (2, 3, 8, 8))
    kwargs = dict(kl_weight=50.0, recon="l2", perceptual_fn=frozen_features(features), perceptual_weight=0.5,
                  discriminator=disc, adversarial_weight=0.1)
    loss = lambda: vae_loss(vae, images, np.random.default_rng(7), **kwargs)[0]   # noqa: E731
    vae.zero_grad()
    loss()
    grads = param_grads(vae)
    vae.zero_grad()
    assert all(p.grad is None for p in features.parameters()), "the frozen feature extractor got grads"
    assert_small(directional_errors(loss, param_arrays(vae), grads), "vae_loss")


def test_vae_loss_with_a_discriminator_also_gives_it_the_gradients_of_its_own_hinge_loss():
    """One call, both players: D's grads are those of L_D on [x; x_rec] alone (G's pass through D
    adds nothing to them), and the parts name every term."""
    vae = tiny_vae()
    disc = PatchDiscriminator(DiscriminatorConfig.tiny()).to(dtype=np.float64)
    images = np.random.default_rng(4).uniform(-1, 1, (2, 3, 8, 8))
    _, parts = vae_loss(vae, images, np.random.default_rng(7), discriminator=disc, adversarial_weight=0.1)
    from_vae_loss = param_grads(disc)
    x_rec, _ = vae.forward(images, np.random.default_rng(7))          # the same sample (same seed)
    disc.zero_grad()
    d_loss, _ = disc.discriminator_loss(images, x_rec)
    assert set(parts) == {"loss", "recon", "kl", "adversarial", "d_loss", "logits_real", "logits_fake"}
    assert float(parts["d_loss"]) == pytest.approx(float(d_loss), rel=1e-12)
    assert all(np.allclose(from_vae_loss[name], g, rtol=1e-12, atol=0) for name, g in param_grads(disc).items())


def test_adversarial_and_perceptual_terms_are_off_at_weight_zero_and_need_their_network():
    vae = tiny_vae()
    disc = PatchDiscriminator(DiscriminatorConfig.tiny()).to(dtype=np.float64)
    images = np.random.default_rng(4).uniform(-1, 1, (2, 3, 8, 8))
    _, parts = vae_loss(vae, images, np.random.default_rng(7), discriminator=disc, adversarial_weight=0.0)
    assert set(parts) == {"loss", "recon", "kl"}                       # before the "discriminator start"
    assert all(p.grad is None for p in disc.parameters())
    with pytest.raises(ValueError, match="adversarial_weight=0.5 needs a discriminator"):
        vae_loss(vae, images, np.random.default_rng(7), adversarial_weight=0.5)
    with pytest.raises(ValueError, match="perceptual_weight=1.0 needs a perceptual_fn"):
        vae_loss(vae, images, np.random.default_rng(7), perceptual_weight=1.0)
    with pytest.raises(ValueError, match="adversarial_weight must be a number >= 0, got -1"):
        vae_loss(vae, images, np.random.default_rng(7), discriminator=disc, adversarial_weight=-1)


# -- the diagonal Gaussian -------------------------------------------------------------------------
@settings(max_examples=20, deadline=None)
@given(st.integers(1, 3), st.integers(1, 3), st.integers(0, 2 ** 31))
def test_kl_matches_closed_form_per_dimension(batch, channels, seed):
    """KL(N(m, s^2) || N(0, 1)) = -log s + (s^2 + m^2) / 2 - 1/2, summed over dims, averaged over B."""
    rng = np.random.default_rng(seed)
    mean = rng.normal(0, 2, (batch, channels, 2, 3))
    s = np.exp(rng.uniform(-2, 2, mean.shape))
    posterior = DiagonalGaussian(np.concatenate([mean, 2 * np.log(s)], axis=1))
    expected = (-np.log(s) + (s ** 2 + mean ** 2) / 2 - 0.5).sum() / batch
    np.testing.assert_allclose(float(posterior.kl()), expected, rtol=1e-12)


def test_kl_matches_monte_carlo_estimate():
    """KL = E_q[log q(z) - log p(z)], estimated from 400k samples of one 2-dimensional posterior."""
    mean, logvar = np.array([0.7, -1.2]), np.array([-0.5, 0.8])
    posterior = DiagonalGaussian(np.concatenate([mean, logvar]).reshape(1, 4, 1, 1))
    z = mean + np.exp(0.5 * logvar) * np.random.default_rng(0).standard_normal((400_000, 2))
    log_q = -0.5 * (((z - mean) ** 2) / np.exp(logvar) + logvar).sum(1)
    log_p = -0.5 * (z ** 2).sum(1)                               # the log(2 pi) terms cancel
    assert abs(float(posterior.kl()) - (log_q - log_p).mean()) < 0.01


def test_kl_is_zero_at_the_prior():
    assert float(DiagonalGaussian(np.zeros((3, 8, 2, 2))).kl()) == 0.0


def test_kl_and_sample_gradients_match_finite_differences_through_the_clamp(xp):
    """Elementwise over the moments, with two raw logvars outside the clamp range (gradient 0 there).
    A narrow range [-1.5, 1.5] keeps the numbers small enough for finite differences."""
    rng = np.random.default_rng(5)
    moments = rng.normal(0, 0.5, (2, 4, 2, 2))
    moments[0, 2, 0, 0], moments[1, 3, 1, 1] = 2.0, -2.5      # clamped logvars
    d_z = rng.standard_normal((2, 2, 2, 2))

    def loss(m):
        posterior = DiagonalGaussian(xp.asarray(m), logvar_min=-1.5, logvar_max=1.5)
        z = posterior.sample(np.random.default_rng(9))
        return float((z * xp.asarray(d_z)).sum() + 0.7 * posterior.kl()), posterior
    _, posterior = loss(moments)
    d_mean, d_logvar = posterior.sample_backward(xp.asarray(d_z))
    d_mean_kl, d_logvar_kl = posterior.kl_backward(0.7)
    analytic = np.concatenate([to_numpy(d_mean + d_mean_kl), to_numpy(d_logvar + d_logvar_kl)], axis=1)
    numeric = np.zeros_like(moments)
    h = 1e-6
    for index in np.ndindex(moments.shape):
        plus, minus = moments.copy(), moments.copy()
        plus[index] += h
        minus[index] -= h
        numeric[index] = (loss(plus)[0] - loss(minus)[0]) / (2 * h)
    assert analytic[0, 2, 0, 0] == 0.0 and analytic[1, 3, 1, 1] == 0.0
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)


def test_logvar_is_clamped_to_sd_range():
    moments = np.zeros((1, 2, 1, 3))
    moments[0, 1] = [-50.0, 0.5, 40.0]
    posterior = DiagonalGaussian(moments)
    np.testing.assert_array_equal(posterior.logvar[0, 0, 0], [-30.0, 0.5, 20.0])
    np.testing.assert_allclose(posterior.std[0, 0, 0], np.exp([-15.0, 0.25, 10.0]))


def test_sample_is_mean_plus_std_times_kept_noise():
    rng = np.random.default_rng(6)
    posterior = DiagonalGaussian(rng.normal(0, 1, (2, 8, 4, 4)))
    z = posterior.sample(np.random.default_rng(0))
    np.testing.assert_array_equal(z, posterior.mean + posterior.std * posterior.noise)
    np.testing.assert_array_equal(posterior.noise, np.random.default_rng(0).standard_normal((2, 4, 4, 4)))
    np.testing.assert_array_equal(posterior.mode(), posterior.mean)


# -- the discriminator -----------------------------------------------------------------------------
def test_discriminator_gradients_match_finite_differences():
    disc = PatchDiscriminator(DiscriminatorConfig.tiny()).to(dtype=np.float64)
    rng = np.random.default_rng(8)
    x = rng.uniform(-1, 1, (2, 3, 8, 8))
    d_logits = rng.standard_normal(disc.forward(x).shape)
    loss = lambda: (disc.forward(x) * d_logits).sum()         # noqa: E731
    disc.zero_grad()
    loss()
    dx = disc.backward(d_logits)
    assert_small(directional_errors(loss, {"x": x, **param_arrays(disc)}, {"x": dx, **param_grads(disc)}),
                 "discriminator")


def test_discriminator_loss_gradients_match_finite_differences():
    disc = PatchDiscriminator(DiscriminatorConfig.tiny()).to(dtype=np.float64)
    rng = np.random.default_rng(10)
    real, fake = rng.uniform(-1, 1, (2, 2, 3, 8, 8))
    disc.zero_grad()
    disc.discriminator_loss(real, fake)
    loss = lambda: hinge_d_loss(disc.forward(real), disc.forward(fake))[0]   # noqa: E731
    assert_small(directional_errors(loss, param_arrays(disc), param_grads(disc)), "discriminator_loss")


def test_hinge_losses_match_hand_computed_values_and_gradients():
    real = np.array([2.0, 0.5, -1.0, 0.0])                       # relu(1 - r) = 0, 0.5, 2, 1
    fake = np.array([-2.0, 0.0, 0.5, -0.5])                      # relu(1 + f) = 0, 1, 1.5, 0.5
    loss, (d_real, d_fake) = hinge_d_loss(real, fake)
    assert loss == pytest.approx(0.5 * (3.5 / 4 + 3.0 / 4))
    np.testing.assert_allclose(d_real, [0, -0.125, -0.125, -0.125])
    np.testing.assert_allclose(d_fake, [0, 0.125, 0.125, 0.125])
    g_loss, d_g = hinge_g_loss(fake)
    assert g_loss == pytest.approx(0.5)
    np.testing.assert_allclose(d_g, -0.25)


def test_generator_loss_gradient_matches_finite_differences_and_leaves_disc_grads():
    disc = PatchDiscriminator(DiscriminatorConfig.tiny()).to(dtype=np.float64)
    fake = np.random.default_rng(11).uniform(-1, 1, (2, 3, 8, 8))
    disc.zero_grad()
    _, d_fake = disc.generator_loss(fake)
    assert all(p.grad is None for p in disc.parameters())
    loss = lambda: hinge_g_loss(disc.forward(fake))[0]       # noqa: E731
    assert_small(directional_errors(loss, {"fake": fake}, {"fake": d_fake}), "generator_loss")


@pytest.mark.parametrize("changes, match", [
    (dict(base_channels=0), "DiscriminatorConfig: base_channels must be a positive integer, got 0"),
    (dict(num_layers="2"), "DiscriminatorConfig: num_layers must be a positive integer, got '2'"),
    (dict(norm_groups=3), "do not divide into norm_groups=3"),
    (dict(negative_slope=None), r"negative_slope must be a number in \[0, 1\), got None"),
])
def test_bad_discriminator_config_raises_one_clear_value_error(changes, match):
    with pytest.raises(ValueError, match=match):
        DiscriminatorConfig(**changes)


def test_leaky_relu_values_and_gradient():
    y, cache = leaky_relu(np.array([-2.0, 3.0]), 0.2)
    np.testing.assert_allclose(y, [-0.4, 3.0])
    np.testing.assert_allclose(leaky_relu_backward(np.array([1.0, 1.0]), cache), [0.2, 1.0])


def test_patch_discriminator_gives_6x6_logits_for_32x32_images():
    disc = PatchDiscriminator().eval()
    assert disc.forward(np.zeros((2, 3, 32, 32), np.float32)).shape == (2, 1, 6, 6)


# -- shapes, sizes and errors ----------------------------------------------------------------------
@pytest.mark.parametrize("name, image, latent", [("tiny", (2, 3, 8, 8), (2, 4, 4, 4)),
                                                  ("f4_32", (2, 3, 32, 32), (2, 4, 8, 8)),
                                                  ("f8_64", (2, 3, 64, 64), (2, 4, 8, 8))])
def test_named_configs_map_images_to_latents_and_back(name, image, latent):
    config = getattr(VAEConfig, name)()
    vae = AutoencoderKL(config).eval()
    x = np.zeros(image, np.float32)
    z = vae.encode(x).sample(np.random.default_rng(0))
    assert z.shape == latent and z.dtype == np.float32
    assert vae.decode(z).shape == image
    assert config.latent_shape == latent[1:]


def test_f8_64_compresses_48x_like_stable_diffusion():
    config = VAEConfig.f8_64()
    assert config.downsample_factor == 8
    assert config.compression_ratio == 48 == (512 * 512 * 3) / (64 * 64 * 4)


@pytest.mark.parametrize("call, match", [
    (lambda vae: vae.encode(np.zeros((1, 1, 8, 8), np.float32)), r"images must be \(B, 3, H, W\)"),
    (lambda vae: vae.encode(np.zeros((3, 8, 8), np.float32)), r"images must be \(B, 3, H, W\)"),
    (lambda vae: vae.encode(np.zeros((1, 3, 9, 8), np.float32)), "not a multiple of the downsampling factor 2"),
    (lambda vae: vae.decode(np.zeros((1, 3, 4, 4), np.float32)), r"latents must be \(B, 4, h, w\)"),
    (lambda vae: vae.decode(np.zeros((4, 4, 4), np.float32)), r"latents must be \(B, 4, h, w\)"),
    (lambda vae: vae.forward(np.zeros((1, 3, 8, 8), np.float32)), "needs a random generator"),
    (lambda vae: vae.encode_latents(np.zeros((1, 3, 8, 8), np.float32)), "has no latent scale factor"),
    (lambda vae: vae.decode_latents(np.zeros((1, 4, 4, 4), np.float32)), "has no latent scale factor"),
    (lambda vae: vae_loss(vae, np.zeros((1, 3, 8, 8), np.float32), None, recon="l3"), "recon must be"),
])
def test_bad_input_raises_one_clear_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call(AutoencoderKL(VAEConfig.tiny()))


@pytest.mark.parametrize("changes, match", [
    (dict(base_channels=6), "do not divide into norm_groups"),
    (dict(image_size=9), "not a multiple of the downsampling factor"),
    (dict(channel_mults=()), "channel_mults"),
    (dict(latent_channels=0), "latent_channels must be a positive integer"),
    (dict(channel_mults=2), "channel_mults must be a sequence of positive integers, got 2"),
    (dict(channel_mults=(1, 2.5)), "channel_mults must be a non-empty sequence of positive integers"),
    (dict(base_channels="8"), "VAEConfig: base_channels must be a positive integer, got '8'"),
    (dict(norm_eps="tiny"), "norm_eps must be a number, got 'tiny'"),
    (dict(logvar_max=None), "logvar_max must be a number, got None"),
    (dict(mid_attention=1), "mid_attention must be True or False, got 1"),
])
def test_bad_config_raises_value_error(changes, match):
    with pytest.raises(ValueError, match=match):
        VAEConfig(**{**vars(VAEConfig.tiny()), **changes})


# -- latent scale factor ---------------------------------------------------------------------------
def test_scale_factor_is_one_over_std_of_sampled_latents():
    vae = AutoencoderKL(VAEConfig.tiny()).eval()
    images = smooth_images(6, 8)
    scale = vae.compute_scale_factor(images, np.random.default_rng(3), batch_size=4)
    posterior_a, posterior_b = vae.encode(images[:4]), vae.encode(images[4:])
    rng = np.random.default_rng(3)
    latents = np.concatenate([posterior_a.sample(rng), posterior_b.sample(rng)])
    assert scale == pytest.approx(1.0 / latents.astype(np.float64).std(), rel=1e-6)
    assert vae.scale_factor == scale


def test_scaled_latents_have_unit_std_and_decode_unscales():
    vae = AutoencoderKL(VAEConfig.tiny()).eval()
    images = smooth_images(6, 8)
    vae.compute_scale_factor(images)                          # posterior means (rng=None)
    z_scaled = vae.encode_latents(images)
    assert float(z_scaled.std()) == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_allclose(vae.decode_latents(z_scaled), vae.decode(vae.encode(images).mode()), atol=1e-5)


# -- the loss --------------------------------------------------------------------------------------
def test_perceptual_term_is_feature_distance_and_extractor_stays_frozen():
    vae = AutoencoderKL(VAEConfig.tiny()).to(dtype=np.float64)
    features = FixedFeatures().to(dtype=np.float64)
    images = smooth_images(2, 8).astype(np.float64)
    _, stats = vae_loss(vae, images, np.random.default_rng(0), perceptual_fn=frozen_features(features),
                        perceptual_weight=1.0)
    x_rec, _ = vae.forward(images, np.random.default_rng(0))     # the same sample (same seed)
    expected = sum(((a - b) ** 2).mean() for a, b in zip(features(x_rec), features(images)))
    assert float(stats["perceptual"]) == pytest.approx(float(expected), rel=1e-10)
    assert float(feature_matching(features(images), features(images))[0]) == 0.0
    assert all(p.grad is None for p in features.parameters())


def test_vae_loss_total_is_sum_of_weighted_terms():
    vae = AutoencoderKL(VAEConfig.tiny()).to(dtype=np.float64)
    images = smooth_images(2, 8).astype(np.float64)
    loss, stats = vae_loss(vae, images, np.random.default_rng(0), kl_weight=10.0, recon="l1")
    x_rec, posterior = vae.forward(images, np.random.default_rng(0))
    expected_recon = np.abs(x_rec - images).mean()
    assert float(stats["recon"]) == pytest.approx(float(expected_recon), rel=1e-12)
    assert float(loss) == pytest.approx(float(expected_recon + 10.0 / (3 * 8 * 8) * posterior.kl()), rel=1e-12)


def test_few_adamw_steps_learn_to_reconstruct_smooth_images():
    """40 AdamW steps on 4 smooth 16x16 images: the L1 error falls well below its start AND below
    the best constant image per channel (so the latents carry the picture, not just its mean colour).
    (Random smooth images rather than the shapes set: there, a flat background alone halves the error.)"""
    from minidiff.optim import AdamW
    images = smooth_images(4, 16, seed=1)
    constant_error = float(np.abs(images - np.median(images, axis=(2, 3), keepdims=True)).mean())
    vae = AutoencoderKL(VAEConfig(base_channels=8, channel_mults=(1, 2, 2), norm_groups=4, image_size=16), seed=0)
    optimizer = AdamW(vae, lr=3e-3, weight_decay=0.0)
    rng = np.random.default_rng(0)
    history = []
    for _ in range(40):
        optimizer.zero_grad()
        _, stats = vae_loss(vae, images, rng)
        optimizer.step()
        history.append(float(stats["recon"]))
    print(f"L1 {history[0]:.3f} -> {history[-1]:.3f} (best constant image: {constant_error:.3f})")
    assert history[-1] < 0.6 * history[0]
    assert history[-1] < 0.8 * constant_error


# -- against PyTorch -------------------------------------------------------------------------------
def test_vae_matches_torch_twin_forward_and_gradients():
    """The same weights in a PyTorch twin (tests/torch_twins.py), float64: x_rec, KL, dx and every
    parameter gradient of L = sum(x_rec * d_out) + kl_weight * KL, with the same noise eps."""
    torch = pytest.importorskip("torch")
    from minidiff.bench.twins import make_vae_twin, twin_grads
    vae = tiny_vae()
    rng = np.random.default_rng(12)
    x = rng.uniform(-1, 1, (2, 3, 8, 8))
    noise = rng.standard_normal((2, 4, 4, 4))
    d_out = rng.standard_normal((2, 3, 8, 8))
    kl_weight = 0.5

    class FixedNoise:                                        # hands the same eps to both models
        def standard_normal(self, shape, dtype):
            return noise.astype(dtype)
    vae.zero_grad()
    x_rec, posterior = vae.forward(x, FixedNoise())
    dx = vae.backward(d_out, kl_weight=kl_weight)
    ours = {"x_rec": x_rec, "kl": posterior.kl(), "dx": dx, **param_grads(vae)}

    twin = make_vae_twin(vae.config, vae.state_dict())
    x_t = torch.tensor(x, requires_grad=True)
    x_rec_t, kl_t = twin(x_t, torch.tensor(noise))
    ((x_rec_t * torch.tensor(d_out)).sum() + kl_weight * kl_t).backward()
    reference = {"x_rec": x_rec_t.detach().numpy(), "kl": kl_t.detach().numpy(), "dx": x_t.grad.numpy(),
                 **twin_grads(twin)}

    assert set(ours) == set(reference)
    errors = {k: float(np.abs(ours[k] - reference[k]).max() / max(np.abs(reference[k]).max(), 1e-6)) for k in ours}
    worst = max(errors, key=errors.get)
    print(f"max relative error vs torch: {errors[worst]:.2e} ({worst})")
    assert errors[worst] < 1e-9, f"{worst}: relative error {errors[worst]:.2e}"


def test_vae_matches_diffusers_autoencoder_kl():
    """The same weights in diffusers' AutoencoderKL give the same posterior and reconstruction:
    minidiff's VAE is Stable Diffusion's architecture (padding, extra decoder ResBlock, 1x1 convs)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    from minidiff.bench.twins import diffusers_vae_from_minidiff
    vae = tiny_vae()
    x = np.random.default_rng(13).uniform(-1, 1, (2, 3, 8, 8))
    reference = diffusers_vae_from_minidiff(vae.config, vae.state_dict())
    with torch.no_grad():
        dist = reference.encode(torch.tensor(x)).latent_dist
        x_rec = reference.decode(dist.mean).sample
    posterior = vae.encode(x)
    np.testing.assert_allclose(posterior.mean, dist.mean.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(posterior.logvar, dist.logvar.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(vae.decode(posterior.mean), x_rec.numpy(), rtol=1e-9, atol=1e-12)


def test_vae64_distillation_loss_gradients_match_finite_differences():
    """train/vae64.py: the student's decoder (L1 to the 64x64 rendering) and its encoder (squared error
    to the teacher's mean and log-variance) in one loss; every parameter's gradient, float64."""
    from minidiff.train.vae64 import distillation_loss
    student = tiny_vae()
    student.scale_factor = 0.7
    rng = np.random.default_rng(11)
    x = rng.uniform(-1, 1, (2, 3, 8, 8))
    z, mean_t, logvar_t = rng.standard_normal((3, 2, 4, 4, 4))
    logvar_t = logvar_t - 4.0
    loss = lambda: distillation_loss(student, x, z, mean_t, logvar_t, logvar_weight=0.3, recon="l2")  # noqa: E731
    student.zero_grad()
    value = float(loss())
    grads = param_grads(student)
    student.zero_grad()
    assert all(np.abs(g).max() > 0 for name, g in grads.items() if name.startswith(("decoder", "encoder")))
    assert_small(directional_errors(loss, param_arrays(student), grads), "distillation_loss")
    assert value > 0
