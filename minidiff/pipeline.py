"""Text-to-image, image-to-image, inpainting and outpainting: Stable Diffusion's pipeline, small.

The pieces, each trained by ``python -m minidiff train ...`` and shipped in ``data/pretrained/``:

    prompt --tokenizer--> ids, mask --text encoder (frozen)--> context c  (B, L, 128): one vector per token
    z_T ~ N(0, I)  (B, 4, 8, 8)  --U-Net eps(z_t, t, c), T steps of a sampler-->  z_0
    z_0 / scale_factor --VAE decoder--> image (B, 3, 64, 64)

Classifier-free guidance (``minidiff/diffusion/guidance.py``)
------------------------
The U-Net was trained with the caption replaced by the empty prompt ~10% of the time, so the same
network predicts both eps(z_t, t, c) and the unconditional eps(z_t, t, empty). At sampling time we
extrapolate from the unconditional prediction towards the conditional one:

    eps = eps_uncond + s * (eps_cond - eps_uncond)

s = 1 is plain conditional sampling, s = 0 ignores the prompt, s > 1 follows it more strictly (at
some cost in variety). A negative prompt simply takes the place of the empty prompt in eps_uncond,
so guidance pushes *away* from it. Both branches run as one batch of 2B through the U-Net.

Read beside: ``minidiff/diffusion/samplers.py``, ``minidiff/diffusion/guidance.py``,
``minidiff/zoo.py`` (which file holds which model), ``lessons/10_text_to_image.py``.

Editing
-------
* image-to-image: encode the image to z_0, noise it to the timestep that ``strength`` picks
  (strength 1 = pure noise, 0 = the image itself), then run only the remaining steps.
* inpainting: at every step, overwrite the *known* part of the latent with the input's latent
  forward-noised to the current timestep, z_known = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps, so
  only the masked part is invented, yet it is denoised in agreement with its surroundings.
* outpainting: grow the canvas, and inpaint the new border.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from . import backend, zoo
from .diffusion import guidance, samplers
from .diffusion.guidance import guided_prediction  # noqa: F401  (re-exported: its old home)
from .diffusion.schedule import NoiseSchedule
from .nn.module import no_grad
from .images import load_image, load_mask  # noqa: F401  (re-exported: their old home)
from .utils import image_grid, to_uint8

DEFAULT_DIR = zoo.PRETRAINED_DIR
CONTROLNET_FILE = zoo.FILES["controlnet"]       # beside the other checkpoints (train controlnet writes it)
HOW_TO_GET = zoo.HOW_TO_GET
MAX_GUIDANCE_SCALE = 100.0               # far past any useful scale (7.5 is typical); 1e30 gives a flat grey image


# -- argument checks: one clear ValueError each ------------------------------------------------
def _check_prompt(prompt, name="prompt"):
    if not isinstance(prompt, str):
        raise ValueError(f"{name} must be a string, got {type(prompt).__name__}")
    return prompt


def _check_common(steps, guidance_scale, num_images):
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if (isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float, np.integer, np.floating))
            or not (math.isfinite(guidance_scale) and 0 <= guidance_scale <= MAX_GUIDANCE_SCALE)):
        raise ValueError(f"guidance_scale must be a number in [0, {MAX_GUIDANCE_SCALE:g}], got {guidance_scale!r}")
    if isinstance(num_images, bool) or not isinstance(num_images, (int, np.integer)) or num_images < 1:
        raise ValueError(f"num_images must be an integer >= 1, got {num_images!r}")


def _check_strength(strength):
    if not isinstance(strength, (int, float)) or not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be a number in [0, 1], got {strength!r}")


def to_pil(images):
    """Images in [-1, 1] (B, 3, H, W) -> list of PIL RGB images."""
    from PIL import Image
    return [Image.fromarray(tile) for tile in to_uint8(images)]


# -- the pipeline ----------------------------------------------------------------------------------
@dataclasses.dataclass
class Pipeline:
    """The frozen models of a text-to-image system and the schedule the U-Net was trained with."""
    vae: object
    unet: object
    text_encoder: object
    tokenizer: object
    schedule: NoiseSchedule
    prediction_type: str = "epsilon"
    max_length: int = 24
    lora: object = None                  # the LoRA adapters attached to the U-Net (load_lora), or None
    controlled: object = None            # the U-Net steered by a ControlNet (load_controlnet), or None
    default_guidance: float = 4.0        # the scale used when none is given (the folder's pipeline.json)

    # -- loading -------------------------------------------------------------------------------
    @classmethod
    def load(cls, directory=None, device=None):
        """Load tokenizer, text encoder, VAE and U-Net from ``directory`` (default data/pretrained)
        onto ``device`` (None: the current one). The process-wide device is left as it was: the
        pipeline runs wherever its weights live."""
        directory = Path(directory) if directory else zoo.PRETRAINED_DIR
        if not directory.is_dir():
            raise FileNotFoundError(f"checkpoint folder {directory} not found: {zoo.HOW_TO_GET}")
        paths = {name: directory / zoo.FILES[name] for name in ("vae", "tokenizer", "text_encoder", "text2image")}
        for name, path in paths.items():
            if not path.is_file():
                raise FileNotFoundError(f"{name} checkpoint {path} not found: {zoo.HOW_TO_GET}")
        dev = device or backend.device()
        text_encoder = zoo.load_text_encoder(paths["text_encoder"], dev)
        tokenizer = zoo.load_tokenizer(paths["tokenizer"], text_encoder.config.vocab_size)
        vae = zoo.load_vae(paths["vae"], dev)
        unet, unet_ckpt = zoo.load_trained(paths["text2image"], dev, hint=zoo.HOW_TO_GET, expect="text2image")
        diffusion = zoo.diffusion_settings(unet_ckpt)
        schedule = NoiseSchedule.make(diffusion["schedule"], num_steps=diffusion["num_steps"])
        return cls(vae=vae, unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, schedule=schedule,
                   prediction_type=diffusion["prediction_type"], max_length=text_encoder.config.max_length,
                   default_guidance=zoo.folder_defaults(directory)["guidance_scale"])

    # -- LoRA (minidiff/models/lora.py) ---------------------------------------------------------
    def load_lora(self, path, scale=1.0):
        """Attach the LoRA adapter saved at ``path`` to the U-Net, weighed by ``scale`` (0: the base
        model, 1: as trained); it stays until ``unload_lora``. An adapter made for another U-Net is
        one AdapterMismatch (a ValueError); a missing file a FileNotFoundError."""
        self.unload_lora()
        self.lora = zoo.load_adapter(path, self.unet, scale)
        return self.lora

    def unload_lora(self):
        """Detach the LoRA adapter: the U-Net is the base model again."""
        if self.lora is not None:
            self.lora.detach()
            self.lora = None

    # -- ControlNet (minidiff/models/controlnet.py) -------------------------------------------------
    def load_controlnet(self, path):
        """Steer the U-Net with the ControlNet saved at ``path`` whenever a ``control`` image is given."""
        self.controlled = zoo.load_controlnet(path, self.unet)
        return self.controlled

    def load_control(self, control, num_images=1):
        """An outline (white on black; an RGB or greyscale PNG path, PIL image or array) at the model's
        image size -> (num_images, 1, H, W) in {0, 1} on the pipeline's device. Anything else is one
        ValueError; a control without a loaded ControlNet too."""
        if self.controlled is None:
            raise ValueError("a control image needs a ControlNet: load one with load_controlnet (train one "
                             "with `python -m minidiff train controlnet`)")
        size = self.vae.config.image_size
        # the ControlNet's own grid (a 64x64 outline is max-pooled to it: models/controlnet.py fit_control)
        native = self.vae.config.latent_size << self.controlled.controlnet.config.hint_downsample
        if isinstance(control, (str, Path)) and Path(control).is_file():
            from PIL import Image
            try:
                with Image.open(control) as opened:
                    width, height = opened.size
            except OSError as exc:
                raise ValueError(f"cannot read control image {control}: {exc}") from None
            if width == height == native:
                size = native
            elif (width, height) != (size, size):
                also = f" (or {native}x{native}, the ControlNet's own grid)" if native != size else ""
                raise ValueError(f"control image {control} is {width}x{height}; the model's images are "
                                 f"{size}x{size}{also}")
        elif getattr(control, "size", None) == (native, native) or np.shape(control)[:2] == (native, native):
            size = native                                                         # a PIL image or an array
        outline = load_mask(control, (size, size), what="control image")         # (H, W) in {0, 1}
        return self.xp.asarray(np.broadcast_to(outline, (num_images, 1, size, size)).copy())

    @property
    def device(self) -> str:
        """Where the pipeline's weights live ("cpu" or "gpu"): every array it makes goes there."""
        return "gpu" if backend.is_gpu_array(self.unet.parameters()[0].data) else "cpu"

    @property
    def xp(self):
        return backend.get_array_module(self.unet.parameters()[0].data)

    # -- conditioning --------------------------------------------------------------------------
    def encode_prompts(self, prompts):
        """Prompts -> (context states (B, L, width), mask (B, L)) from the frozen text encoder."""
        ids, mask = self.tokenizer.encode_batch(list(prompts), self.max_length)
        ids, mask = self.xp.asarray(ids), self.xp.asarray(mask)
        with no_grad():
            states, _ = self.text_encoder.forward(ids, mask)
        return states, mask

    def guided_model_fn(self, prompts, negative_prompts, guidance_scale, batch=None, control=None,
                        control_scale=1.0):
        """model_fn(z_t, t) for the samplers: the U-Net under classifier-free guidance
        (``diffusion/guidance.py``). ``prompts`` and ``negative_prompts``: one string for every row
        (repeated ``batch`` times), or a list with one string per row. ``control`` (B, 1, H, W), from
        ``load_control``: the ControlNet steers both guidance branches, weighed by ``control_scale``."""
        rows = lambda p: [p] * batch if isinstance(p, str) else list(p)          # noqa: E731
        cond, cond_mask = self.encode_prompts(rows(prompts))
        uncond, uncond_mask = self.encode_prompts(rows(negative_prompts))
        if control is not None:
            if not isinstance(control_scale, (int, float)) or not math.isfinite(control_scale):
                raise ValueError(f"control_scale must be a finite number, got {control_scale!r}")
            self.controlled.control_scale = float(control_scale)

        def unet(z, t, context, context_mask):
            with no_grad():
                if control is None:
                    return self.unet.forward(z, t, context, context_mask)
                repeats = z.shape[0] // control.shape[0]          # guidance runs both branches as one batch
                return self.controlled.forward(z, t, context, context_mask,
                                               self.xp.concatenate([control] * repeats))
        return guidance.guided_model_fn(unet, cond, cond_mask, uncond, uncond_mask, guidance_scale)

    def sample_prompts(self, prompts, guidance_scale, steps=50, seed=0, sampler="ddim", batch_size=64,
                       spacing="leading"):
        """One image per prompt, a different prompt in every row, guided against the empty prompt;
        in batches of ``batch_size``. Host images (N, 3, H, W) in [-1, 1] (what the evaluation scores)."""
        prompts = list(prompts)
        size = self.vae.config.latent_size
        images = []
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            model_fn = self.guided_model_fn(chunk, [""] * len(chunk), guidance_scale)
            latents = samplers.sample(model_fn, self.schedule, (len(chunk), self.latent_channels, size, size),
                                      sampler=sampler, steps=steps, rng=backend.rng(seed + start, self.device),
                                      prediction_type=self.prediction_type, spacing=spacing, progress=False)
            images.append(backend.to_numpy(self.decode(latents)))
        return np.concatenate(images)

    # -- latents <-> images --------------------------------------------------------------------
    @property
    def latent_channels(self):
        return self.vae.config.latent_channels

    @property
    def factor(self):
        """Pixels per latent cell along each side (the VAE's downsampling factor)."""
        return self.vae.config.downsample_factor

    def _check_canvas(self, height, width):
        size = self.vae.config.image_size
        if height < size or width < size:
            raise ValueError(f"image size {width}x{height} is smaller than the {size}x{size} the models were "
                             f"trained at; resize it to {size}x{size} (larger canvases, multiples of "
                             f"{self.factor * self.unet.config.downsampling_factor}, work too)")
        step = self.factor * self.unet.config.downsampling_factor
        if height % step or width % step:
            raise ValueError(f"image size {width}x{height} must be a multiple of {step} "
                             f"(VAE factor {self.factor} x U-Net downsampling "
                             f"{self.unet.config.downsampling_factor}); the models were trained at "
                             f"{self.vae.config.image_size}x{self.vae.config.image_size}")

    def encode(self, images):
        """Host images (B, 3, H, W) in [-1, 1] -> scaled latents on the device (posterior means)."""
        return self.vae.encode_latents(backend.to_device(images, self.device))

    def decode(self, latents):
        """Scaled latents -> images in [-1, 1] (on the device)."""
        xp = backend.get_array_module(latents)
        return xp.clip(self.vae.decode_latents(latents), -1.0, 1.0)

    def _sample(self, model_fn, shape, steps, sampler, seed, eta=0.0, x_T=None, start_step=0,
                step_callback=None, return_intermediates=False, progress=False):
        return samplers.sample(model_fn, self.schedule, shape, sampler=sampler, steps=steps,
                               rng=backend.rng(seed, self.device), eta=eta, prediction_type=self.prediction_type,
                               x_T=x_T, start_step=start_step, step_callback=step_callback,
                               return_intermediates=return_intermediates, progress=progress)

    def _strip(self, x0_preds, count=8):
        """The denoising strip: the x0 prediction of the first image at ``count`` evenly spaced steps."""
        picks = np.unique(np.linspace(0, len(x0_preds) - 1, min(count, len(x0_preds))).round().astype(int))
        xp = backend.get_array_module(x0_preds[0])
        frames = self.decode(xp.concatenate([x0_preds[i][:1] for i in picks]))
        return image_grid(frames, nrow=len(picks), scale=4)

    # -- the four tasks ------------------------------------------------------------------------
    def text_to_image(self, prompt, negative_prompt="", steps=50, guidance_scale=None, sampler="ddim",
                      seed=0, num_images=1, return_intermediates=False, eta=0.0, progress=False,
                      control=None, control_scale=1.0):
        """Images for ``prompt``: a list of PIL images (and the denoising strip, if asked for).
        ``control``: an outline for the loaded ControlNet to follow (see ``load_control``)."""
        guidance_scale = self.default_guidance if guidance_scale is None else guidance_scale
        _check_prompt(prompt)
        _check_prompt(negative_prompt, "negative_prompt")
        _check_common(steps, guidance_scale, num_images)
        size = self.vae.config.image_size // self.factor
        shape = (num_images, self.latent_channels, size, size)
        control = None if control is None else self.load_control(control, num_images)
        model_fn = self.guided_model_fn(prompt, negative_prompt, guidance_scale, num_images, control, control_scale)
        result = self._sample(model_fn, shape, steps, sampler, seed, eta=eta,
                              return_intermediates=return_intermediates, progress=progress)
        if return_intermediates:
            latents, _, x0_preds = result
            return to_pil(self.decode(latents)), self._strip(x0_preds)
        return to_pil(self.decode(result))

    def image_to_image(self, image, prompt, strength=0.6, negative_prompt="", steps=50, guidance_scale=None,
                       sampler="ddim", seed=0, num_images=1, eta=0.0, progress=False):
        """Re-imagine ``image`` under ``prompt``: noise its latent to the step that ``strength`` picks,
        then denoise the rest of the way. strength 0 returns the image's VAE reconstruction."""
        guidance_scale = self.default_guidance if guidance_scale is None else guidance_scale
        _check_prompt(prompt)
        _check_common(steps, guidance_scale, num_images)
        _check_strength(strength)
        pixels = load_image(image)
        self._check_canvas(*pixels.shape[2:])
        z0 = self.encode(np.repeat(pixels, num_images, axis=0))
        # as diffusers: run the last floor(steps * strength) of the steps' timesteps
        start_step = steps - min(int(steps * strength), steps)
        if start_step == steps:                       # strength 0: nothing to denoise
            return to_pil(self.decode(z0))
        t_start = int(samplers.sampler_timesteps(self.schedule, steps, sampler)[start_step])
        rng = backend.rng(seed + 1, self.device)
        xp = backend.get_array_module(z0)
        noise = rng.standard_normal(z0.shape, dtype=np.float32)
        # z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps        (closed-form forward process)
        z_t = self.schedule.q_sample(z0, xp.full((num_images,), t_start), noise)
        model_fn = self.guided_model_fn(prompt, negative_prompt, guidance_scale, num_images)
        latents = self._sample(model_fn, z0.shape, steps, sampler, seed, eta=eta, x_T=z_t,
                               start_step=start_step, progress=progress)
        return to_pil(self.decode(latents))

    def inpaint(self, image, mask, prompt, negative_prompt="", steps=50, guidance_scale=None, sampler="ddim",
                seed=0, num_images=1, eta=0.0, progress=False, return_latents=False):
        """Repaint the white part of ``mask`` to fit ``prompt``; the rest stays the image's VAE
        reconstruction (exactly, in pixels outside the mask).

        Latent blending: after every step to timestep t', the known latent cells are replaced by the
        input's latent noised to t' (with one fixed noise draw), so the sampler only invents the
        masked cells. A latent cell counts as masked when any of its pixels is."""
        guidance_scale = self.default_guidance if guidance_scale is None else guidance_scale
        _check_prompt(prompt)
        _check_common(steps, guidance_scale, num_images)
        pixels = load_image(image)
        height, width = pixels.shape[2:]
        self._check_canvas(height, width)
        mask_px = load_mask(mask, (height, width))
        f = self.factor
        # (H, W) -> (h, w): a latent cell is repainted when any of its f x f pixels is
        mask_latent = mask_px.reshape(height // f, f, width // f, f).max(axis=(1, 3))
        xp = self.xp
        keep = xp.asarray(1.0 - mask_latent, dtype=np.float32)[None, None]     # (1, 1, h, w)
        z0 = self.encode(np.repeat(pixels, num_images, axis=0))
        known_noise = backend.rng(seed + 1, self.device).standard_normal(z0.shape, dtype=np.float32)

        def blend_known(i, t_prev, z):
            # known cells: z_known = sqrt(abar_t') z_0 + sqrt(1 - abar_t') eps  (t' < 0: z_0 itself)
            if t_prev < 0:
                z_known = z0
            else:
                z_known = self.schedule.q_sample(z0, xp.full((num_images,), int(t_prev)), known_noise)
            return keep * z_known + (1 - keep) * z

        model_fn = self.guided_model_fn(prompt, negative_prompt, guidance_scale, num_images)
        latents = self._sample(model_fn, z0.shape, steps, sampler, seed, eta=eta,
                               step_callback=blend_known, progress=progress)
        # outside the mask, paste the VAE reconstruction back (the decoder mixes neighbouring cells)
        decoded, reconstruction = self.decode(latents), self.decode(z0)
        repaint = xp.asarray(mask_px)[None, None]
        out = repaint * decoded + (1 - repaint) * reconstruction
        images = to_pil(out)
        return (images, latents, z0, keep) if return_latents else images

    def outpaint(self, image, prompt, extend=8, negative_prompt="", steps=50, guidance_scale=None,
                 sampler="ddim", seed=0, num_images=1, eta=0.0, progress=False):
        """Grow the canvas by ``extend`` pixels on every side and inpaint the new border."""
        guidance_scale = self.default_guidance if guidance_scale is None else guidance_scale
        _check_prompt(prompt)
        step = self.factor * self.unet.config.downsampling_factor
        if isinstance(extend, bool) or not isinstance(extend, (int, np.integer)) or extend < 1 or extend % (step // 2):
            raise ValueError(f"extend must be a positive multiple of {step // 2} pixels, got {extend!r}")
        pixels = load_image(image)                                              # (1, 3, H, W)
        height, width = pixels.shape[2:]
        # the new border starts as the image's median colour, its background when that covers most of it: the
        # border's latents are replaced, but the VAE encoder mixes the fill into the kept cells' latents too
        fill = np.median(pixels, axis=(2, 3), keepdims=True)
        canvas = np.broadcast_to(fill, (1, 3, height + 2 * extend, width + 2 * extend)).copy()
        canvas[:, :, extend:extend + height, extend:extend + width] = pixels
        mask = np.ones(canvas.shape[2:], np.float32)
        mask[extend:extend + height, extend:extend + width] = 0.0
        return self.inpaint(to_uint8(canvas)[0], mask, prompt, negative_prompt=negative_prompt, steps=steps,
                            guidance_scale=guidance_scale, sampler=sampler, seed=seed, num_images=num_images,
                            eta=eta, progress=progress)


_loaded_pipelines = {}


def load_pipeline(directory=None, device=None) -> Pipeline:
    """The pipeline for ``directory`` (default data/pretrained), loaded once per process."""
    key = (str(Path(directory).resolve()) if directory else str(zoo.PRETRAINED_DIR), device or backend.device())
    if key not in _loaded_pipelines:
        _loaded_pipelines[key] = Pipeline.load(directory, device)
    return _loaded_pipelines[key]


# -- the module-level entry points (DESIGN.md) ------------------------------------------------------
def text_to_image(prompt, negative_prompt="", steps=50, guidance_scale=None, sampler="ddim", seed=0,
                  num_images=1, return_intermediates=False, checkpoints=None, device=None, progress=False,
                  control=None, control_scale=1.0, lora=None, lora_scale=1.0):
    """PIL images for ``prompt`` from the pretrained models (see ``Pipeline.text_to_image``).

    ``lora``: an adapter .npz, attached for this call only (weighed by ``lora_scale``). ``control``:
    an outline PNG, followed through the ControlNet in the checkpoint folder (controlnet.npz)."""
    pipe = load_pipeline(checkpoints, device)
    if control is not None and pipe.controlled is None:
        pipe.load_controlnet(Path(checkpoints or zoo.PRETRAINED_DIR) / CONTROLNET_FILE)
    if lora is not None:
        pipe.load_lora(lora, lora_scale)
    try:
        return pipe.text_to_image(
            prompt, negative_prompt=negative_prompt, steps=steps, guidance_scale=guidance_scale, sampler=sampler,
            seed=seed, num_images=num_images, return_intermediates=return_intermediates, progress=progress,
            control=control, control_scale=control_scale)
    finally:
        if lora is not None:
            pipe.unload_lora()


def image_to_image(image, prompt, strength=0.6, negative_prompt="", steps=50, guidance_scale=None,
                   sampler="ddim", seed=0, num_images=1, checkpoints=None, device=None, progress=False):
    return load_pipeline(checkpoints, device).image_to_image(
        image, prompt, strength=strength, negative_prompt=negative_prompt, steps=steps,
        guidance_scale=guidance_scale, sampler=sampler, seed=seed, num_images=num_images, progress=progress)


def inpaint(image, mask, prompt, negative_prompt="", steps=50, guidance_scale=None, sampler="ddim", seed=0,
            num_images=1, checkpoints=None, device=None, progress=False):
    return load_pipeline(checkpoints, device).inpaint(
        image, mask, prompt, negative_prompt=negative_prompt, steps=steps, guidance_scale=guidance_scale,
        sampler=sampler, seed=seed, num_images=num_images, progress=progress)


def outpaint(image, prompt, extend=8, negative_prompt="", steps=50, guidance_scale=None, sampler="ddim", seed=0,
             num_images=1, checkpoints=None, device=None, progress=False):
    return load_pipeline(checkpoints, device).outpaint(
        image, prompt, extend=extend, negative_prompt=negative_prompt, steps=steps,
        guidance_scale=guidance_scale, sampler=sampler, seed=seed, num_images=num_images, progress=progress)
