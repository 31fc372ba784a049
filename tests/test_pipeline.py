"""The text-to-image pipeline's guarantees, on tiny untrained models (no checkpoints needed)."""
import numpy as np
import pytest
from PIL import Image

from minidiff import backend, pipeline
from minidiff.diffusion.schedule import NoiseSchedule
from minidiff.models.text_encoder import TextEncoder, TextEncoderConfig
from minidiff.models.tokenizer import BPETokenizer
from minidiff.models.unet import UNet, UNetConfig
from minidiff.models.vae import AutoencoderKL, VAEConfig

CORPUS = ["a red circle on the left", "a small blue square at the top", "a green triangle",
          "a yellow circle above a purple square"]


@pytest.fixture(scope="module")
def pipe():
    tokenizer = BPETokenizer.train(CORPUS, vocab_size=280)
    text_config = TextEncoderConfig(vocab_size=tokenizer.vocab_size, max_length=24, width=16,
                                    num_layers=1, num_heads=2, mlp_ratio=2)
    vae = AutoencoderKL(VAEConfig.tiny(), seed=0)
    vae.scale_factor = 1.0
    latent = vae.config.latent_shape
    unet = UNet(UNetConfig(in_channels=latent[0], out_channels=latent[0], base_channels=8, channel_mults=(1, 2),
                           num_res_blocks=1, attention_levels=(1,), num_heads=2, context_dim=16,
                           norm_groups=2, time_embed_dim=16, image_size=latent[1]), seed=1)
    # the output conv starts at zero; give it weights so guidance has something to mix
    rng = np.random.default_rng(0)
    for p in unet.parameters():
        if not p.data.any():
            p.data[...] = rng.normal(0, 0.05, p.data.shape)
    p = pipeline.Pipeline(vae=vae, unet=unet, text_encoder=TextEncoder(text_config, seed=2), tokenizer=tokenizer,
                          schedule=NoiseSchedule.make("scaled_linear", num_steps=100), max_length=24)
    for model in (vae, unet, p.text_encoder):
        model.eval()
    return p


def _image(pipe, seed=0):
    size = pipe.vae.config.image_size
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def _unet_eps(pipe, prompt, z, t):
    states, mask = pipe.encode_prompts([prompt] * z.shape[0])
    return pipe.unet.forward(z, t, states, mask)


def test_guidance_scale_one_is_exactly_the_conditional_prediction(pipe):
    z = np.random.default_rng(0).standard_normal((2, *pipe.vae.config.latent_shape)).astype(np.float32)
    t = np.array([50, 50])
    guided = pipe.guided_model_fn("a red circle", "", 1.0, 2)(z, t)
    np.testing.assert_array_equal(guided, _unet_eps(pipe, "a red circle", z, t))


def test_guidance_scale_zero_is_exactly_the_unconditional_prediction(pipe):
    z = np.random.default_rng(1).standard_normal((2, *pipe.vae.config.latent_shape)).astype(np.float32)
    t = np.array([10, 10])
    guided = pipe.guided_model_fn("a red circle", "a blue square", 0.0, 2)(z, t)
    np.testing.assert_array_equal(guided, _unet_eps(pipe, "a blue square", z, t))


def test_guidance_extrapolates_from_negative_towards_prompt(pipe):
    z = np.random.default_rng(2).standard_normal((1, *pipe.vae.config.latent_shape)).astype(np.float32)
    t = np.array([70])
    cond, uncond = _unet_eps(pipe, "a red circle", z, t), _unet_eps(pipe, "", z, t)
    guided = pipe.guided_model_fn("a red circle", "", 4.0, 1)(z, t)
    assert np.abs(cond - uncond).max() > 1e-4          # the prompt changes the prediction at all
    np.testing.assert_allclose(guided, uncond + 4.0 * (cond - uncond), rtol=1e-4, atol=1e-5)


def test_text_to_image_returns_images_and_strip(pipe):
    images, strip = pipe.text_to_image("a red circle", steps=4, num_images=2, return_intermediates=True)
    assert len(images) == 2 and images[0].size == (pipe.vae.config.image_size,) * 2
    assert images[0].mode == "RGB" and strip.width > strip.height


def test_same_seed_same_images(pipe):
    a = pipe.text_to_image("a green triangle", steps=3, seed=5)[0]
    b = pipe.text_to_image("a green triangle", steps=3, seed=5)[0]
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_image_to_image_strength_zero_returns_the_reconstruction(pipe):
    image = _image(pipe)
    out = pipe.image_to_image(image, "a red circle", strength=0.0, steps=5)[0]
    reconstruction = pipeline.to_pil(pipe.decode(pipe.encode(pipeline.load_image(image))))[0]
    np.testing.assert_array_equal(np.asarray(out), np.asarray(reconstruction))


def test_image_to_image_strength_changes_the_image(pipe):
    image = _image(pipe)
    weak = np.asarray(pipe.image_to_image(image, "a red circle", strength=0.2, steps=10)[0], np.float32)
    strong = np.asarray(pipe.image_to_image(image, "a red circle", strength=1.0, steps=10)[0], np.float32)
    rec = np.asarray(pipe.image_to_image(image, "a red circle", strength=0.0, steps=10)[0], np.float32)
    assert np.abs(weak - rec).mean() < np.abs(strong - rec).mean()


def test_inpainting_keeps_the_known_region(pipe):
    image = _image(pipe, seed=3)
    size = pipe.vae.config.image_size
    mask = np.zeros((size, size), np.uint8)
    mask[: size // 2, : size // 2] = 255                                     # repaint the top-left quarter
    images, latents, z0, keep = pipe.inpaint(image, mask, "a red circle", steps=4, return_latents=True)
    # in latent space, the known cells end exactly at the input's latent
    known = np.broadcast_to(keep, latents.shape) > 0
    np.testing.assert_array_equal(latents[known], z0[known])
    # in pixels, everything outside the mask is the input's VAE reconstruction
    reconstruction = np.asarray(pipeline.to_pil(pipe.decode(z0))[0])
    out = np.asarray(images[0])
    np.testing.assert_array_equal(out[mask == 0], reconstruction[mask == 0])
    assert not np.array_equal(out[mask > 0], reconstruction[mask > 0])


def test_outpainting_grows_the_canvas_and_keeps_the_centre(pipe):
    image = _image(pipe, seed=4)
    size = pipe.vae.config.image_size
    out = pipe.outpaint(image, "a blue square", extend=4, steps=3)[0]
    assert out.size == (size + 8, size + 8)


@pytest.mark.parametrize("kwargs, message", [
    (dict(steps=0), "steps"), (dict(steps=-3), "steps"), (dict(guidance_scale=-1.0), "guidance_scale"),
    (dict(num_images=0), "num_images"), (dict(sampler="heun"), "sampler"),
])
def test_text_to_image_rejects_bad_arguments(pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pipe.text_to_image("a red circle", **{"steps": 2, **kwargs})


def test_prompt_must_be_a_string(pipe):
    with pytest.raises(ValueError, match="prompt must be a string"):
        pipe.text_to_image(None, steps=2)


@pytest.mark.parametrize("strength", [-0.1, 1.5])
def test_strength_outside_unit_interval_is_rejected(pipe, strength):
    with pytest.raises(ValueError, match="strength"):
        pipe.image_to_image(_image(pipe), "a red circle", strength=strength, steps=2)


def test_mask_of_another_size_is_rejected(pipe):
    size = pipe.vae.config.image_size
    with pytest.raises(ValueError, match="mask size"):
        pipe.inpaint(_image(pipe), np.zeros((size + 1, size), np.uint8), "a red circle", steps=2)


def test_an_image_smaller_than_the_model_is_rejected_naming_its_size(pipe):
    size = pipe.vae.config.image_size
    step = pipe.factor * pipe.unet.config.downsampling_factor
    small = _image(pipe).resize((size - step, size - step))
    with pytest.raises(ValueError, match=f"smaller than the {size}x{size} the models were trained at"):
        pipe.image_to_image(small, "a red circle", strength=0.5, steps=2)
    with pytest.raises(ValueError, match=f"resize it to {size}x{size}"):
        pipe.inpaint(small, np.zeros((size - step, size - step), np.uint8), "a red circle", steps=2)
    large = _image(pipe).resize((size + step, size))                      # larger canvases still work
    [image] = pipe.image_to_image(large, "a red circle", strength=0.5, steps=2)
    assert image.size == (size + step, size)


def test_non_rgb_image_is_rejected(pipe):
    grey = _image(pipe).convert("L")
    with pytest.raises(ValueError, match="RGB"):
        pipe.image_to_image(grey, "a red circle", strength=0.5, steps=2)


def test_missing_checkpoint_folder_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="train all"):
        pipeline.Pipeline.load(tmp_path / "nowhere")


def test_missing_checkpoint_file_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="vae"):
        pipeline.Pipeline.load(tmp_path)
