"""Fine-tuning jobs: teach a finished text-to-image model something new without retraining it.

    lora                low-rank adapters (models/lora.py) on the U-Net's attention projections learn
                        one new colour, pink, from captioned shapes; the U-Net's own weights never
                        change. The adapter is saved alone, DIR/lora_pink.npz, a few percent of the
                        U-Net's size.
    textual_inversion   the same colour as ONE new token embedding v, "<pink>", with the text encoder
                        and the U-Net frozen: the loss's gradient flows back through the U-Net's
                        cross-attention (dcontext), through the frozen text encoder, into v alone.
                        Saved as DIR/pink_token.npz (128 numbers).
    controlnet          a ControlNet (models/controlnet.py) beside the frozen U-Net learns to follow an
                        outline: each training image's Sobel edge map is its control. DIR/controlnet.npz.
    noisy_classifier    p(colour | z_t, t) on noised latents, for classifier guidance
                        (models/noisy_classifier.py). DIR/noisy_classifier.npz.

Textual inversion (Gal et al., 2022), how the placeholder is read: a prompt "a <pink> circle" is
tokenized around the placeholder, and the placeholder's position gets the id of <pad> (0) with the
mask True there, an id the tokenizer never gives a real token; ``PlaceholderToken`` rides beside the
text encoder's token embedding and returns v wherever the id is 0 (at padded positions too, which
nothing reads: the text encoder is causal and the U-Net masks them):

    x_0[b, l] = v                 where ids[b, l] = 0        (else E_tok[ids[b, l]], frozen)
    dv = sum_{b, l: ids = 0} dx_0[b, l]

The job hands ``fit`` (loop.py, the one training loop) a Module whose parameters are the adapters
alone, so AdamW, clipping and the EMA see nothing else; the loss runs the whole U-Net forward and
its hand-written backward, which reaches the adapters through every attention layer.

How well it worked is judged by colour, not by the attribute classifier (which has no pink class):
``colour_share`` counts the generated images whose object pixels are mostly nearest to the asked
colour among the palette's seven.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from .. import backend, zoo
from ..backend import get_array_module
from ..datasets import shapes
from ..datasets.captions import COLOURS
from ..diffusion.loss import diffusion_loss, training_targets
from ..diffusion.schedule import NoiseSchedule
from ..checkpoint import load_checkpoint, save_checkpoint
from ..diffusion import guidance, samplers
from ..models.controlnet import ControlledUNet, ControlNet, ControlNetConfig, edge_map
from ..models.lora import AdapterMismatch, add_lora
from ..models.noisy_classifier import NoisyClassifier, NoisyClassifierConfig
from ..models.tokenizer import END_ID, PAD_ID, START_ID
from ..nn.layers import Embedding
from ..nn.module import Module, Parameter, no_grad
from ..pipeline import Pipeline
from ..nn import functional as F
from .config import ControlNetJob, LoRAJob, NoisyClassifierJob, TextualInversionJob
from .data import SHAPES_DATA_SEED, draw_latents, drop_captions, encode_dataset, text_states
from .jobs import _diffusion_loss_fn
from .loop import fit, fresh_output, keep_file
from ..evaluate.adapters import colour_share, object_colours  # noqa: F401  (judging lives in evaluate)

LORA_FILE, TOKEN_FILE = zoo.FILES["lora"], zoo.FILES["textual_inversion"]
CONTROLNET_FILE, NOISY_CLASSIFIER_FILE = zoo.FILES["controlnet"], zoo.FILES["noisy_classifier"]
PLACEHOLDER = "<pink>"
PLACEHOLDER_ID = PAD_ID           # never produced from text; at a real (mask True) position it is the placeholder
PINK_PROMPTS = tuple(f"a pink {shape} {where}" for shape in shapes.SHAPES
                     for where in ("on the left", "on the right", "at the top", "at the bottom"))


# -- judging by colour: evaluate/adapters.py (object_colours, colour_share) ---------------------------

# -- the lora job ----------------------------------------------------------------------------------
def _frozen_models(cfg: LoRAJob):
    dev = backend.device()
    vae = zoo.load_vae(cfg.vae, dev)
    text_encoder = zoo.load_text_encoder(cfg.text_encoder, dev)
    tokenizer = zoo.load_tokenizer(cfg.tokenizer, text_encoder.config.vocab_size)
    unet, ckpt = zoo.load_trained(cfg.unet, dev, hint="--unet takes a finished text2image unet.npz",
                                  expect="text2image")
    return vae, text_encoder, tokenizer, unet, zoo.diffusion_settings(ckpt)


def run_lora(cfg: LoRAJob, out=None, resume=False, deadline=None, stop_at=None, progress=True, ship_dtype=None):
    """Train a pink LoRA on the U-Net at ``cfg.unet``; with ``out``, write DIR/lora_pink.npz when done.

    (The adapters are small and quick to train, so a run is not resumed: it starts afresh.)"""
    fresh_output("lora", out, resume, "the adapter", LORA_FILE)
    vae, text_encoder, tokenizer, unet, diffusion = _frozen_models(cfg)
    if diffusion["schedule"] != cfg.schedule or diffusion["prediction_type"] != cfg.prediction_type:
        cfg = dataclasses.replace(cfg, schedule=diffusion["schedule"], prediction_type=diffusion["prediction_type"],
                                  num_train_timesteps=diffusion["num_steps"])
    adapters = add_lora(unet, cfg.rank, cfg.alpha, seed=cfg.seed)
    print(f"lora: {adapters.num_parameters():,} adapter parameters beside the U-Net's {unet.num_parameters():,} "
          f"({100 * adapters.num_parameters() / unet.num_parameters():.2f}%)")
    batch = shapes.sample(cfg.dataset_size, seed=(cfg.seed, SHAPES_DATA_SEED, 16), size=vae.config.image_size,
                          two_object_fraction=cfg.two_object_fraction, extra_colours=("pink",),
                          extra_fraction=cfg.extra_fraction)
    means, stds = encode_dataset(vae, batch["images"])
    states, masks = text_states(text_encoder, tokenizer, batch["captions"])           # frozen: computed once
    empty_state, empty_mask = text_states(text_encoder, tokenizer, [""])
    schedule = NoiseSchedule.make(cfg.schedule, cfg.num_train_timesteps)

    def draw_batch(rng):
        idx = rng.integers(0, means.shape[0], size=(cfg.batch_size,))
        z0 = draw_latents(rng, means[idx], stds[idx])
        # keep the unconditional branch: captions dropped as the base model's were
        context, context_mask = drop_captions(rng, cfg.cond_dropout, (states[idx], empty_state), (masks[idx], empty_mask))
        return z0, context, context_mask

    unet.train()
    diffusion_loss_fn = _diffusion_loss_fn(unet, schedule, cfg, draw_batch)

    def loss_fn(rng, step):
        unet.zero_grad()                       # the frozen weights' gradients are computed, never used
        return diffusion_loss_fn(rng, step)

    config = {"job": "lora", "train": {k: v for k, v in dataclasses.asdict(cfg).items()}}
    result = fit("lora", adapters, loss_fn, cfg, config, out=None, deadline=deadline, stop_at=stop_at,
                 progress=progress)
    unet.zero_grad()
    unet.eval()
    if keep_file(result, cfg, out):
        path = Path(out) / LORA_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        zoo.save_adapter(path, adapters, unet.config, base_name=Path(cfg.unet).name,
                     extra={"loss_history": np.asarray(result.history, np.float64).reshape(-1, 2)})
        result.checkpoint = path
        print(f"lora: adapter -> {path} ({path.stat().st_size / 1024:.0f} KiB)")
    result.unet = unet                         # result.model: the adapters, attached to this U-Net
    return result


# -- textual inversion -------------------------------------------------------------------------------
class PlaceholderToken(Module):
    """One learnable token embedding v (1, W) read by a frozen text encoder wherever ids hold
    PLACEHOLDER_ID. ``attach`` routes the encoder's token embedding through it; its only parameter
    is v, started at the embedding of ``init_word`` (its tokens' mean)."""

    def __init__(self, text_encoder, tokenizer, init_word: str = "red"):
        self._text_encoder = text_encoder
        table = text_encoder.token_embedding.weight.data                        # (vocab, W), frozen
        ids = tokenizer.encode_text(init_word)
        # v: (1, W), one row (a matrix, so the optimiser's groups see a weight)
        self.embedding = Parameter(table[ids].mean(axis=0, keepdims=True).copy())
        self._cache = None

    def _children(self):
        yield "embedding", self.embedding                                      # v alone: the encoder is frozen

    def forward(self, ids):
        table = self._text_encoder.token_embedding
        x = Embedding.forward(table, ids)                                      # E_tok[ids]: (B, L, W)
        chosen = ids == PLACEHOLDER_ID                                          # (B, L)
        self._cache = chosen if self.caching else None
        xp = get_array_module(x)
        # x_0[b, l] = v where ids[b, l] is the placeholder
        return xp.where(chosen[..., None], self.embedding.data, x)

    def backward(self, dx):
        chosen, self._cache = self._cache, None
        # dv = sum over the placeholder's positions of dx_0 (the frozen table's rows get nothing)
        self.embedding.accumulate(dx[chosen].sum(axis=0, keepdims=True))
        return None

    def attach(self):
        table = self._text_encoder.token_embedding
        table.forward, table.backward = self.forward, self.backward
        return self

    def detach(self):
        for name in ("forward", "backward"):
            vars(self._text_encoder.token_embedding).pop(name, None)
        return self


def encode_with_placeholder(tokenizer, texts, max_length: int):
    """Prompts that may hold PLACEHOLDER once -> (ids (N, L) int64, mask (N, L) bool) on the host:
    <start> tokens(left) PLACEHOLDER_ID tokens(right) <end> <pad>..."""
    ids = np.full((len(texts), max_length), PAD_ID, np.int64)
    mask = np.zeros((len(texts), max_length), bool)
    for row, text in enumerate(texts):
        if text.count(PLACEHOLDER) > 1:
            raise ValueError(f"textual inversion: {text!r} holds {PLACEHOLDER} more than once")
        if PLACEHOLDER in text:
            left, right = text.split(PLACEHOLDER)
            # "a" + right keeps the space before right's first word; the "a" token is dropped again
            tokens = tokenizer.encode_text(left) + [PLACEHOLDER_ID] + tokenizer.encode_text("a" + right)[1:]
        else:
            tokens = tokenizer.encode_text(text)
        tokens = [START_ID] + tokens[:max_length - 2] + [END_ID]
        ids[row, :len(tokens)] = tokens
        mask[row, :len(tokens)] = True
    return ids, mask


def placeholder_captions(captions, colour="pink"):
    """The captions with the colour word replaced by the placeholder ("a pink circle" -> "a <pink> circle")."""
    return [" ".join(PLACEHOLDER if word == colour else word for word in c.split(" ")) for c in captions]


def run_textual_inversion(cfg: TextualInversionJob, out=None, resume=False, deadline=None, stop_at=None,
                          progress=True, ship_dtype=None):
    """Learn v for "<pink>" with the U-Net and the text encoder frozen; with ``out``, write DIR/pink_token.npz."""
    fresh_output("textual_inversion", out, resume, "the token", TOKEN_FILE)
    xp = backend.get_xp()
    vae, text_encoder, tokenizer, unet, diffusion = _frozen_models(cfg)
    token = PlaceholderToken(text_encoder, tokenizer, cfg.init_word).attach()
    batch = shapes.sample(cfg.dataset_size, seed=(cfg.seed, SHAPES_DATA_SEED, 16), size=vae.config.image_size,
                          two_object_fraction=cfg.two_object_fraction, extra_colours=("pink",),
                          extra_fraction=cfg.extra_fraction)
    means, stds = encode_dataset(vae, batch["images"])
    L = text_encoder.config.max_length
    ids, masks = (xp.asarray(a) for a in encode_with_placeholder(tokenizer, placeholder_captions(batch["captions"]), L))
    empty_ids, empty_mask = (xp.asarray(a) for a in tokenizer.encode_batch([""], L))
    schedule = NoiseSchedule.make(diffusion["schedule"], diffusion["num_steps"])
    prediction_type = diffusion["prediction_type"]
    text_encoder.train()
    unet.train()

    def loss_fn(rng, step):
        unet.zero_grad()
        text_encoder.zero_grad()                   # the frozen weights' gradients are computed, never used
        idx = rng.integers(0, means.shape[0], size=(cfg.batch_size,))
        z0 = draw_latents(rng, means[idx], stds[idx])
        ids_b, mask_b = drop_captions(rng, cfg.cond_dropout, (ids[idx], empty_ids), (masks[idx], empty_mask))
        context, _ = text_encoder.forward(ids_b, mask_b)                        # reads v at the placeholder
        x_t, t, noise, _ = training_targets(schedule, z0, rng, prediction_type)
        prediction = unet.forward(x_t, t, context, mask_b)
        loss, d_out = diffusion_loss(prediction, z0, noise, t, schedule, prediction_type, None)
        _, dcontext = unet.backward(d_out)                                      # through cross-attention
        text_encoder.backward(dcontext)                                         # through the encoder, into v
        return loss

    config = {"job": "textual_inversion", "train": dataclasses.asdict(cfg)}
    result = fit("textual_inversion", token, loss_fn, cfg, config, out=None, deadline=deadline, stop_at=stop_at,
                 progress=progress)
    for model in (unet, text_encoder):
        model.zero_grad()
        model.eval()
    if keep_file(result, cfg, out):
        path = Path(out) / TOKEN_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        save_token(path, token)
        result.checkpoint = path
        print(f"textual_inversion: {PLACEHOLDER} -> {path}")
    result.text_encoder, result.unet = text_encoder, unet
    return result


def save_token(path, token: PlaceholderToken):
    """v alone, with the placeholder and the text encoder's config it was learned for."""
    config = {"job": "textual_inversion", "placeholder": PLACEHOLDER,
              "base": {"model": json_config(token._text_encoder.config)}}
    return save_checkpoint(path, model=token, config=config)


def json_config(config) -> dict:
    """A model config as plain JSON, as a saved file records it."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def load_token(path, text_encoder, tokenizer):
    """Attach the placeholder embedding saved at ``path`` to ``text_encoder``; one clear error when the
    file is not a learned token or was learned for another text encoder."""
    ckpt = load_checkpoint(path, hint="train one with `python -m minidiff train textual_inversion`")
    config = ckpt.config if isinstance(ckpt.config, dict) else {}
    if config.get("job") != "textual_inversion":
        raise AdapterMismatch(f"{path} is not a textual-inversion token (its job is {config.get('job')!r})")
    if config.get("base", {}).get("model") != json_config(text_encoder.config):
        raise AdapterMismatch(f"{path} was learned for another text encoder")
    token = PlaceholderToken(text_encoder, tokenizer)
    token.load_state_dict(ckpt.model_state)
    return token.attach()


def placeholder_images(pipe: Pipeline, prompts, guidance_scale=4.0, steps=25, seed=0):
    """Images for prompts holding PLACEHOLDER (the text encoder must have a PlaceholderToken attached)."""
    xp = pipe.xp
    ids, mask = (xp.asarray(a) for a in encode_with_placeholder(pipe.tokenizer, list(prompts), pipe.max_length))
    with no_grad():
        cond, _ = pipe.text_encoder.forward(ids, mask)
    uncond, uncond_mask = pipe.encode_prompts([""] * len(prompts))

    def unet(z, t, context, context_mask):
        with no_grad():
            return pipe.unet.forward(z, t, context, context_mask)
    model_fn = guidance.guided_model_fn(unet, cond, mask, uncond, uncond_mask, guidance_scale)
    size = pipe.vae.config.latent_size
    latents = samplers.sample(model_fn, pipe.schedule, (len(prompts), pipe.latent_channels, size, size),
                              sampler="ddim", steps=steps, rng=backend.rng(seed, pipe.device),
                              prediction_type=pipe.prediction_type, progress=False)
    return backend.to_numpy(pipe.decode(latents))


# -- controlnet -------------------------------------------------------------------------------------
def run_controlnet(cfg: ControlNetJob, out=None, resume=False, deadline=None, stop_at=None, progress=True,
                   ship_dtype=None):
    """Train a ControlNet on outlines beside the frozen U-Net; with ``out``, write DIR/controlnet.npz."""
    fresh_output("controlnet", out, resume, "the ControlNet", CONTROLNET_FILE)
    xp = backend.get_xp()
    vae, text_encoder, tokenizer, unet, diffusion = _frozen_models(cfg)
    control_config = ControlNetConfig(hint_downsample=int(np.log2(vae.config.downsample_factor)))
    controlnet = ControlNet(unet, control_config, seed=cfg.seed).to(backend.device())
    model = ControlledUNet(unet, controlnet)
    print(f"controlnet: {controlnet.num_parameters():,} parameters beside the locked U-Net's {unet.num_parameters():,}")
    batch = shapes.sample(cfg.dataset_size, seed=(cfg.seed, SHAPES_DATA_SEED, 17), size=vae.config.image_size,
                          two_object_fraction=cfg.two_object_fraction)
    controls = edge_map(xp.asarray(batch["images"]))                              # (N, 1, H, W) in {0, 1}
    means, stds = encode_dataset(vae, batch["images"])
    states, masks = text_states(text_encoder, tokenizer, batch["captions"])
    empty_state, empty_mask = text_states(text_encoder, tokenizer, [""])
    schedule = NoiseSchedule.make(diffusion["schedule"], diffusion["num_steps"])
    prediction_type = diffusion["prediction_type"]
    unet.train()

    def loss_fn(rng, step):
        unet.zero_grad()                           # the locked U-Net's gradients are computed, never used
        idx = rng.integers(0, means.shape[0], size=(cfg.batch_size,))
        z0 = draw_latents(rng, means[idx], stds[idx])
        context, context_mask = drop_captions(rng, cfg.cond_dropout, (states[idx], empty_state), (masks[idx], empty_mask))
        x_t, t, noise, _ = training_targets(schedule, z0, rng, prediction_type)
        prediction = model.forward(x_t, t, context, context_mask, controls[idx])
        loss, d_out = diffusion_loss(prediction, z0, noise, t, schedule, prediction_type, None)
        model.backward(d_out)
        return loss

    config = {"job": "controlnet", "train": dataclasses.asdict(cfg)}
    result = fit("controlnet", model, loss_fn, cfg, config, out=None, deadline=deadline, stop_at=stop_at,
                 progress=progress)
    unet.zero_grad()
    unet.eval()
    if keep_file(result, cfg, out):
        path = Path(out) / CONTROLNET_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        zoo.save_controlnet(path, controlnet, dtype=ship_dtype)
        result.checkpoint = path
        print(f"controlnet: -> {path}")
    return result


# -- the noise-aware classifier ------------------------------------------------------------------------
def run_noisy_classifier(cfg: NoisyClassifierJob, out=None, resume=False, deadline=None, stop_at=None,
                         progress=True, ship_dtype=None):
    """p(colour | z_t, t) on the VAE's latents of one-object scenes, noised to a uniform t."""
    fresh_output("noisy_classifier", out, resume, "the classifier", zoo.FILES["noisy_classifier"])
    xp = backend.get_xp()
    vae = zoo.load_vae(cfg.vae, backend.device())
    schedule = NoiseSchedule.make(cfg.schedule, cfg.num_train_timesteps)
    model_config = NoisyClassifierConfig(in_channels=vae.config.latent_channels, image_size=vae.config.latent_size,
                                         num_classes=len(COLOURS))
    classifier = NoisyClassifier(model_config, seed=cfg.seed).to(backend.device())
    batch = shapes.sample(cfg.dataset_size, seed=(cfg.seed, SHAPES_DATA_SEED, 18), size=vae.config.image_size,
                          two_object_fraction=0.0)
    means, stds = encode_dataset(vae, batch["images"])
    colours = xp.asarray(batch["labels"]["colour"])

    def loss_fn(rng, step):
        idx = rng.integers(0, means.shape[0], size=(cfg.batch_size,))
        z0 = draw_latents(rng, means[idx], stds[idx])
        t = rng.integers(0, schedule.num_steps, size=(cfg.batch_size,))
        # z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps: the classifier must read colours through the noise
        z_t = schedule.q_sample(z0, t, rng.standard_normal(z0.shape, dtype=z0.dtype))
        loss, cache = F.cross_entropy(classifier.forward(z_t, t), colours[idx])
        classifier.backward(F.cross_entropy_backward(1.0, cache))
        return loss

    config = {"job": "noisy_classifier", "model": dataclasses.asdict(model_config), "train": dataclasses.asdict(cfg),
              "diffusion": cfg.diffusion()}
    result = fit("noisy_classifier", classifier, loss_fn, cfg, config, out=None, deadline=deadline,
                 stop_at=stop_at, progress=progress)
    if keep_file(result, cfg, out):
        path = Path(out) / NOISY_CLASSIFIER_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(path, model=classifier, config=config)
        result.checkpoint = path
        print(f"noisy_classifier: -> {path}")
    return result


def load_noisy_classifier(path, device=None):
    """The NoisyClassifier saved at ``path``, in eval mode."""
    ckpt = load_checkpoint(path, hint="train one with `python -m minidiff train noisy_classifier`")
    config = ckpt.config if isinstance(ckpt.config, dict) else {}
    if config.get("job") != "noisy_classifier":
        raise AdapterMismatch(f"{path} is not a noisy classifier (its job is {config.get('job')!r})")
    classifier = NoisyClassifier(zoo.config_from_dict(NoisyClassifierConfig, config.get("model", {}), where=str(path)))
    classifier.load_state_dict(ckpt.model_state)
    return classifier.to(device or backend.device()).eval()


def pink_report(pipe: Pipeline, prompts=PINK_PROMPTS, guidance_scale=4.0, steps=25, seed=0):
    """{"pink_share": share of prompts giving a pink object, "colours": the colour names found}."""
    images = pipe.sample_prompts(list(prompts), guidance_scale, steps=steps, seed=seed)
    found = object_colours(images)
    names = COLOURS + ("pink",)
    return {"pink_share": float(np.mean(found == names.index("pink"))),
            "colours": [names[i] if i >= 0 else "none" for i in found], "images": images}


if __name__ == "__main__":      # python -m minidiff.train.finetune: the pink share with and without an adapter
    import sys
    pipe = Pipeline.load()
    began = time.perf_counter()
    base = pink_report(pipe)
    print(f"base model: pink share {base['pink_share']:.2f} ({base['colours']})")
    if len(sys.argv) > 1:
        zoo.load_adapter(sys.argv[1], pipe.unet)
        adapted = pink_report(pipe)
        print(f"with {sys.argv[1]}: pink share {adapted['pink_share']:.2f} ({adapted['colours']})")
    print(f"{time.perf_counter() - began:.0f} s")
