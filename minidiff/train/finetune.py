"""Fine-tuning jobs: teach a finished text-to-image model something new without retraining it.

    lora   low-rank adapters (models/lora.py) on the U-Net's attention projections learn one new
           colour, pink, from captioned shapes; the U-Net's own weights never change. The adapter is
           saved alone, DIR/lora_pink.npz, a few percent of the U-Net's size.

The job hands ``fit`` (loop.py, the one training loop) a Module whose parameters are the adapters
alone, so AdamW, clipping and the EMA see nothing else; the loss runs the whole U-Net forward and
its hand-written backward, which reaches the adapters through every attention layer.

How well it worked is judged by colour, not by the attribute classifier (which has no pink class):
``colour_share`` counts the generated images whose object pixels are mostly nearest to the asked
colour among the palette's seven.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from .. import backend, zoo
from ..datasets import shapes
from ..datasets.captions import COLOURS
from ..diffusion.schedule import NoiseSchedule
from ..models.lora import add_lora, save_adapter
from ..pipeline import Pipeline
from .config import LoRAJob
from .data import SHAPES_DATA_SEED, encode_dataset, text_states
from .jobs import _diffusion_loss_fn
from .loop import fit

LORA_FILE = "lora_pink.npz"
PINK_PROMPTS = tuple(f"a pink {shape} {where}" for shape in shapes.SHAPES
                     for where in ("on the left", "on the right", "at the top", "at the bottom"))


# -- judging by colour ------------------------------------------------------------------------------
def object_colours(images, background_distance=0.25):
    """The palette colour (index into COLOURS + ("pink",)) most of each image's object pixels are
    nearest to (meant for one-object scenes: with two, the larger object wins); -1 for an image with no object pixel. images: host (N, 3, H, W) in [-1, 1].

    Object pixels are those farther than ``background_distance`` (in [0, 1] RGB) from the grey
    background."""
    palette = np.concatenate([shapes.RGB, np.array([shapes.EXTRA_RGB["pink"]], np.float32)])   # (7, 3)
    rgb = (np.asarray(images, np.float32).transpose(0, 2, 3, 1) + 1) / 2                         # (N, H, W, 3)
    is_object = np.linalg.norm(rgb - shapes.BACKGROUND, axis=-1) > background_distance
    nearest = np.linalg.norm(rgb[..., None, :] - palette, axis=-1).argmin(axis=-1)              # (N, H, W)
    out = np.full(len(rgb), -1)
    for i in range(len(rgb)):
        if is_object[i].any():
            out[i] = np.bincount(nearest[i][is_object[i]], minlength=len(palette)).argmax()
    return out


def colour_share(images, colour: str) -> float:
    """Share of images whose object is mostly ``colour`` (one of COLOURS or "pink")."""
    index = (COLOURS + ("pink",)).index(colour)
    return float(np.mean(object_colours(images) == index))


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
    if resume:
        raise ValueError("train lora: --resume is not supported (the adapter is written when the run ends)")
    xp = backend.get_xp()
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
        z0 = means[idx] + stds[idx] * rng.standard_normal(means[idx].shape, dtype=means.dtype)
        drop = rng.random((cfg.batch_size,), dtype=np.float32) < cfg.cond_dropout   # keep the unconditional branch
        context = xp.where(drop[:, None, None], empty_state, states[idx])
        context_mask = xp.where(drop[:, None], empty_mask, masks[idx])
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
    if result.complete and out is not None:
        path = Path(out) / LORA_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        save_adapter(path, adapters, unet.config, base_name=Path(cfg.unet).name,
                     extra={"loss_history": np.asarray(result.history, np.float64).reshape(-1, 2)})
        result.checkpoint = path
        print(f"lora: adapter -> {path} ({path.stat().st_size / 1024:.0f} KiB)")
    result.unet = unet                         # result.model: the adapters, attached to this U-Net
    return result


def pink_report(pipe: Pipeline, prompts=PINK_PROMPTS, guidance_scale=4.0, steps=25, seed=0):
    """{"pink_share": share of prompts giving a pink object, "colours": the colour names found}."""
    images = pipe.sample_prompts(list(prompts), guidance_scale, steps=steps, seed=seed)
    found = object_colours(images)
    names = COLOURS + ("pink",)
    return {"pink_share": float(np.mean(found == names.index("pink"))),
            "colours": [names[i] if i >= 0 else "none" for i in found], "images": images}


if __name__ == "__main__":      # python -m minidiff.train.finetune: the pink share with and without an adapter
    import sys
    from ..models.lora import load_adapter
    pipe = Pipeline.load()
    began = time.perf_counter()
    base = pink_report(pipe)
    print(f"base model: pink share {base['pink_share']:.2f} ({base['colours']})")
    if len(sys.argv) > 1:
        load_adapter(sys.argv[1], pipe.unet)
        adapted = pink_report(pipe)
        print(f"with {sys.argv[1]}: pink share {adapted['pink_share']:.2f} ({adapted['colours']})")
    print(f"{time.perf_counter() - began:.0f} s")
