"""The jobs behind ``python -m minidiff train JOB``: each prepares its data and model, then hands
``fit`` (``loop.py``) a loss function. Nothing here is a second training loop.

    pixel       unconditional U-Net on images (shapes, or --data folder:PATH / idx:PATH)
    vae         the KL autoencoder; its latent scale factor is measured at the end
    latent      unconditional U-Net on the latents of a trained VAE
    clip        BPE tokenizer + mini-CLIP -> tokenizer.json, clip.npz and text_encoder.npz
    text2image  U-Net on latents, cross-attending to the frozen text encoder, captions dropped 10%
    classifier  the attribute classifier that ``evaluate`` judges with
    digit_classifier  the digit classifier that judges generated digits (digits' training split only)
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from .. import backend, evaluate, zoo
from ..checkpoint import load_checkpoint, load_into
from ..datasets import captions, shapes
from ..diffusion import samplers
from ..diffusion.loss import diffusion_loss, training_targets
from ..diffusion.schedule import NoiseSchedule
from ..models.classifier import AttributeClassifier, ClassifierFeatures, classifier_loss
from ..models.clip import MiniCLIP, clip_loss_and_backward
from ..models.digit_classifier import DigitClassifier, digit_loss
from ..models.tokenizer import BPETokenizer
from ..models.unet import UNet
from ..models.vae import AutoencoderKL
from ..models.vae_loss import frozen_features, vae_loss
from ..models.discriminator import DiscriminatorConfig, PatchDiscriminator
from ..optim import AdamW
from ..pipeline import Pipeline
from .config import (ClassifierJob, ClipJob, DiffusionTrainConfig, DigitClassifierJob, LatentJob, PixelJob,
                     Text2ImageJob, VAEJob)
from .data import (SHAPES_DATA_SEED, draw_latents, drop_captions, encode_dataset, gather, load_data,
                   load_heldout, text_states)
from .loop import fit
from ..evaluate.adapters import reconstruction_report


def train_tokenizer(vocab_size: int, corpus_size: int = 20_000, seed: int = 0, texts=None):
    """A byte-level BPE tokenizer trained on ``corpus_size`` shapes captions, and ``texts`` (the
    data's own captions, repeated to as many lines, so their words win the merges; the shapes
    captions make sure there are enough pairs to reach ``vocab_size``)."""
    corpus = shapes.caption_corpus(corpus_size, seed=seed)
    if texts:
        corpus = [texts[i % len(texts)] for i in range(corpus_size)] + corpus
    return BPETokenizer.train(corpus, vocab_size)


def _checkpoint_config(job, model, cfg):
    """The checkpoint's JSON config in the zoo's one schema: job, model config, training settings."""
    train = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "model"}
    diffusion = cfg.diffusion() if isinstance(cfg, DiffusionTrainConfig) else None
    return zoo.checkpoint_config(job, model, train, diffusion)


def _diffusion_loss_fn(model, schedule, cfg, draw_batch):
    """loss_fn for the diffusion jobs: x_0 (and context) from ``draw_batch(rng)``, then L_simple."""
    def loss_fn(rng, step):
        x0, context, context_mask = draw_batch(rng)
        x_t, t, noise, _ = training_targets(schedule, x0, rng, cfg.prediction_type)
        out = model.forward(x_t, t, context, context_mask)
        loss, d_out = diffusion_loss(out, x0, noise, t, schedule, cfg.prediction_type, cfg.min_snr_gamma)
        model.backward(d_out)
        return loss
    return loss_fn


def _unconditional_sampler(schedule, cfg, shape, decode=None):
    """sample_fn for the periodic grid: DDIM from fixed noise (the same seed every time)."""
    def sample_fn(model):
        x = samplers.sample(lambda x_t, t: model.forward(x_t, t), schedule, shape, sampler="ddim",
                            steps=cfg.sample_steps, rng=backend.rng(cfg.seed), prediction_type=cfg.prediction_type,
                            progress=False)
        return decode(x) if decode else x
    return sample_fn


def run_pixel(cfg: PixelJob, out=None, resume=False, deadline=None, stop_at=None, progress=True, ship_dtype=None):
    xp = backend.get_xp()
    images = load_data(cfg.data, cfg.image_size, cfg.dataset_size, cfg.seed).images
    model_config = dataclasses.replace(cfg.model, in_channels=images.shape[1], out_channels=images.shape[1],
                                       image_size=cfg.image_size)
    model = UNet(model_config, seed=cfg.seed).to(backend.device())
    data = xp.asarray(images)                                          # (N, C, S, S) on the device
    schedule = NoiseSchedule.make(cfg.schedule, cfg.num_train_timesteps)

    def draw_batch(rng):
        (x0,) = gather(rng, data, batch_size=cfg.batch_size)
        return x0, None, None

    shape = (cfg.num_samples,) + data.shape[1:]
    return fit("pixel", model, _diffusion_loss_fn(model, schedule, cfg, draw_batch), cfg,
               _checkpoint_config("pixel", model, cfg), out, resume, deadline, stop_at,
               sample_fn=_unconditional_sampler(schedule, cfg, shape), progress=progress, ship_dtype=ship_dtype)


def _vae_extras(cfg: VAEJob, model):
    """The optional terms of the VAE's objective: (perceptual_fn or None, discriminator step or None).

    The perceptual network is the frozen attribute classifier (its conv maps); the discriminator is
    a PatchDiscriminator with its own AdamW, stepped inside the loss function (its state is not
    in the checkpoint: a resumed run starts it afresh)."""
    perceptual_fn = None
    if cfg.perceptual_weight > 0:
        judge = zoo.load_classifier(cfg.perceptual_network, backend.device())
        if judge.config.image_size != cfg.model.image_size:
            raise ValueError(f"--perceptual-weight: the perceptual network {cfg.perceptual_network} sees "
                             f"{judge.config.image_size}x{judge.config.image_size} images, the VAE "
                             f"{cfg.model.image_size}x{cfg.model.image_size}")
        perceptual_fn = frozen_features(ClassifierFeatures(judge.train()))
    discriminator = None
    if cfg.adversarial_weight > 0:
        discriminator = PatchDiscriminator(DiscriminatorConfig(in_channels=cfg.model.in_channels),
                                           seed=cfg.seed).to(backend.device()).train()
        discriminator.optimizer = AdamW(discriminator, lr=cfg.discriminator_lr, betas=(0.5, 0.9), weight_decay=0.0)
    return perceptual_fn, discriminator


def run_vae(cfg: VAEJob, out=None, resume=False, deadline=None, stop_at=None, progress=True, ship_dtype=None):
    xp = backend.get_xp()
    model = AutoencoderKL(cfg.model, seed=cfg.seed).to(backend.device())
    data = xp.asarray(load_data(cfg.data, cfg.model.image_size, cfg.dataset_size, cfg.seed,
                                channels=cfg.model.in_channels, extra_fraction=cfg.extra_fraction).images)
    perceptual_fn, discriminator = _vae_extras(cfg, model)

    def loss_fn(rng, step):
        (x,) = gather(rng, data, batch_size=cfg.batch_size)
        adversarial = cfg.adversarial_weight if discriminator is not None and step >= cfg.adversarial_start else 0.0
        if adversarial:
            discriminator.zero_grad()
        loss, _ = vae_loss(model, x, rng, kl_weight=cfg.kl_weight, recon=cfg.recon, perceptual_fn=perceptual_fn,
                           perceptual_weight=cfg.perceptual_weight, discriminator=discriminator,
                           adversarial_weight=adversarial)
        if adversarial:
            discriminator.optimizer.step()           # the other player's step, on its own loss
        return loss

    def sample_fn(vae):                    # top row: images, bottom row: their reconstructions
        x = data[:8]
        return xp.concatenate([x, vae.decode(vae.encode(x).mode())])

    def finalize(vae):
        # scale_factor = 1 / std(z): the latents the diffusion model sees have about unit variance
        scale = vae.compute_scale_factor(data[:cfg.scale_images])
        print(f"vae: latent scale factor {scale:.4f} (1 / std of {min(cfg.scale_images, len(data))} latents)")
        return {"scale_factor": np.asarray(scale, np.float64)}

    result = fit("vae", model, loss_fn, cfg, _checkpoint_config("vae", model, cfg), out, resume, deadline, stop_at,
                 sample_fn=sample_fn, finalize=finalize, progress=progress, ship_dtype=ship_dtype)
    if result.complete and cfg.extra_fraction:       # did the decoder learn the extra colour?
        result.evaluation = reconstruction_report(result.model, seed=cfg.seed)
        print("vae: held-out reconstructions in their own colour: " +
              ", ".join(f"{k} {v:.2f}" for k, v in result.evaluation.items()))
    return result


def _latent_model_config(cfg, vae, **changes):
    return dataclasses.replace(cfg.model, in_channels=vae.config.latent_channels,
                               out_channels=vae.config.latent_channels, image_size=vae.config.latent_size, **changes)


def run_latent(cfg: LatentJob, out=None, resume=False, deadline=None, stop_at=None, progress=True, ship_dtype=None):
    xp = backend.get_xp()
    vae = zoo.load_vae(cfg.vae)
    model = UNet(_latent_model_config(cfg, vae), seed=cfg.seed).to(backend.device())
    means, stds = encode_dataset(vae, load_data(cfg.data, vae.config.image_size, cfg.dataset_size, cfg.seed,
                                                channels=vae.config.in_channels).images)
    schedule = NoiseSchedule.make(cfg.schedule, cfg.num_train_timesteps)

    def draw_batch(rng):
        mean, std = gather(rng, means, stds, batch_size=cfg.batch_size)
        return draw_latents(rng, mean, std), None, None                     # z ~ q(z | x), already scaled

    shape = (cfg.num_samples,) + means.shape[1:]
    decode = lambda z: xp.clip(vae.decode_latents(z), -1, 1)           # noqa: E731
    return fit("latent", model, _diffusion_loss_fn(model, schedule, cfg, draw_batch), cfg,
               _checkpoint_config("latent", model, cfg), out, resume, deadline, stop_at,
               sample_fn=_unconditional_sampler(schedule, cfg, shape, decode), progress=progress,
               ship_dtype=ship_dtype)


def _load_or_train_tokenizer(cfg: ClipJob, out, texts=None):
    """The job's tokenizer: --tokenizer FILE, else DIR/tokenizer.json from an earlier run, else a new one."""
    saved = Path(out) / zoo.FILES["tokenizer"] if out is not None else None
    if cfg.tokenizer:
        tokenizer = BPETokenizer.load(cfg.tokenizer)
    elif saved is not None and saved.exists():
        tokenizer = BPETokenizer.load(saved)
    else:
        print(f"clip: training a BPE tokenizer (vocabulary {cfg.model.text.vocab_size}) on "
              f"{cfg.tokenizer_corpus} captions")
        tokenizer = train_tokenizer(cfg.model.text.vocab_size, corpus_size=cfg.tokenizer_corpus, seed=cfg.seed,
                                    texts=texts)
    tokenizer.check_vocab_size(cfg.model.text.vocab_size)
    if saved is not None:
        saved.parent.mkdir(parents=True, exist_ok=True)
        tokenizer.save(saved)
    return tokenizer


def run_clip(cfg: ClipJob, out=None, resume=False, deadline=None, stop_at=None, progress=True, ship_dtype=None):
    """mini-CLIP; when complete, also writes DIR/text_encoder.npz (the text tower alone) for text2image."""
    xp = backend.get_xp()
    data = load_data(cfg.data, cfg.model.image_size, cfg.dataset_size, cfg.seed, channels=cfg.model.in_channels,
                     need_captions=True, two_object_fraction=cfg.two_object_fraction)
    is_shapes = data.shapes_labels is not None
    tokenizer = _load_or_train_tokenizer(cfg, out, texts=None if is_shapes else data.captions)
    model = MiniCLIP(cfg.model, seed=cfg.seed).to(backend.device())
    ids, mask = tokenizer.encode_batch(data.captions, max_length=cfg.model.text.max_length)
    images, ids, mask = xp.asarray(data.images), xp.asarray(ids), xp.asarray(mask)
    image_labels = xp.asarray(data.image_labels)                                        # (N, K)
    said = xp.asarray(data.said)                                                        # (N, K), -1 = not said
    hard_negatives = cfg.hard_negatives and is_shapes   # the flips need the shapes grammar
    if hard_negatives:
        # for every caption, three wrong ones in its own words (the relation flipped, the objects or
        # the colours swapped; a mirrored position): random in-batch negatives almost never need
        # word order to be told apart, these can only be told apart by it
        wrong = [text for texts in captions.hard_negative_captions(data.captions, seed=cfg.seed) for text in texts]
        kinds = len(captions.HARD_NEGATIVE_KINDS)
        neg_ids, neg_mask = tokenizer.encode_batch(wrong, max_length=cfg.model.text.max_length)
        neg_ids = xp.asarray(neg_ids).reshape(len(data.captions), kinds, -1)       # (N, 3, L)
        neg_mask = xp.asarray(neg_mask).reshape(neg_ids.shape)
        neg_said = xp.asarray(captions.caption_label_matrix(wrong)).reshape(len(data.captions), kinds, -1)

    def loss_fn(rng, step):
        idx = rng.integers(0, images.shape[0], size=(cfg.batch_size,))
        x, ids_b, mask_b, have, wanted = images[idx], ids[idx], mask[idx], image_labels[idx], said[idx]
        if hard_negatives:                           # one wrong caption per image joins the batch's texts
            kind = rng.integers(0, kinds, size=(cfg.batch_size,))
            ids_b = xp.concatenate([ids_b, neg_ids[idx, kind]])                        # (2B, L)
            mask_b = xp.concatenate([mask_b, neg_mask[idx, kind]])
            wanted = xp.concatenate([wanted, neg_said[idx, kind]])                     # (2B, K)
        # positives (B, M): caption j describes image i (a "wrong" caption may fit another image)
        loss, _ = clip_loss_and_backward(model, x, ids_b, mask_b, captions.label_matches(have, wanted))
        return loss

    def finalize(clip):
        if out is not None:
            text_path = Path(out) / zoo.FILES["text_encoder"]
            zoo.save_text_encoder(text_path, clip, source=Path(out) / zoo.FILES["clip"], step=cfg.steps,
                                  dtype=ship_dtype)
            print(f"clip: text encoder -> {text_path}, tokenizer -> {Path(out) / zoo.FILES['tokenizer']}")
        return {}

    heldout = load_heldout(cfg.data, cfg.model.image_size, 64, (evaluate.CLIP_HELDOUT_SEED, cfg.seed, 10 ** 6),
                           channels=cfg.model.in_channels)           # None for a folder: it has no held-out part
    if heldout is not None:
        heldout_ids, heldout_mask = tokenizer.encode_batch(heldout.captions, max_length=cfg.model.text.max_length)
        heldout_match = captions.label_matches(heldout.image_labels, heldout.said)
        heldout_images = xp.asarray(heldout.images)

    def metrics_fn(clip):
        """Read at every log window: the learned temperature and top-1 on one held-out batch."""
        best = backend.to_numpy(clip.similarity(heldout_images, heldout_ids, heldout_mask)).argmax(axis=0)
        return {"temperature": clip.temperature,
                "heldout_top1": heldout_match[best, np.arange(len(best))].mean()}

    result = fit("clip", model, loss_fn, cfg, _checkpoint_config("clip", model, cfg), out, resume, deadline,
                 stop_at, finalize=finalize, progress=progress, ship_dtype=ship_dtype,
                 metrics_fn=metrics_fn if heldout is not None else None)
    if result.complete and is_shapes:
        scores = evaluate.retrieval_accuracy(result.model, tokenizer, num_batches=4, batch_size=64, seed=cfg.seed)
        result.evaluation = scores
        print(f"clip: held-out text->image top-1 {scores['top1']:.3f} (chance {scores['chance']:.3f})")
    return result


def run_text2image(cfg: Text2ImageJob, out=None, resume=False, deadline=None, stop_at=None, progress=True,
                   ship_dtype=None):
    vae = zoo.load_vae(cfg.vae)
    text_encoder = zoo.load_text_encoder(cfg.text_encoder)
    tokenizer = zoo.load_tokenizer(cfg.tokenizer, text_encoder.config.vocab_size)
    model = UNet(_latent_model_config(cfg, vae, context_dim=text_encoder.config.width), seed=cfg.seed)
    model.to(backend.device())
    if cfg.init is not None:                          # fine-tune: start from a finished model's weights
        init = load_checkpoint(cfg.init, hint="--init takes a finished text2image unet.npz")
        if zoo.checkpoint_job(init) != "text2image":
            raise ValueError(f"--init {cfg.init} is a {zoo.checkpoint_job(init)} checkpoint, not a text2image one")
        load_into(model, init)
    data = load_data(cfg.data, vae.config.image_size, cfg.dataset_size, cfg.seed, channels=vae.config.in_channels,
                     need_captions=True, two_object_fraction=cfg.two_object_fraction)
    means, stds = encode_dataset(vae, data.images)
    # the text encoder is frozen, so every caption's states are computed once
    states, masks = text_states(text_encoder, tokenizer, data.captions)             # (N, L, W), (N, L)
    empty_state, empty_mask = text_states(text_encoder, tokenizer, [""])            # (1, L, W), (1, L)
    schedule = NoiseSchedule.make(cfg.schedule, cfg.num_train_timesteps)

    def draw_batch(rng):
        mean, std, context, context_mask = gather(rng, means, stds, states, masks, batch_size=cfg.batch_size)
        z0 = draw_latents(rng, mean, std)                                          # z ~ q(z | x), scaled
        # conditioning dropout: with probability cond_dropout the caption becomes "" (for guidance)
        context, context_mask = drop_captions(rng, cfg.cond_dropout, (context, empty_state), (context_mask, empty_mask))
        return z0, context, context_mask

    pipe = Pipeline(vae=vae, unet=model, text_encoder=text_encoder, tokenizer=tokenizer, schedule=schedule,
                    prediction_type=cfg.prediction_type, max_length=text_encoder.config.max_length)
    shown = captions.FIXED_PROMPTS if data.shapes_labels is not None else list(dict.fromkeys(data.captions))
    prompts = [shown[i % len(shown)] for i in range(cfg.num_samples)]

    def sample_fn(unet):
        return pipe.sample_prompts(prompts, cfg.guidance_scale, steps=cfg.sample_steps, seed=cfg.seed)

    return fit("text2image", model, _diffusion_loss_fn(model, schedule, cfg, draw_batch), cfg,
               _checkpoint_config("text2image", model, cfg), out, resume, deadline, stop_at,
               sample_fn=sample_fn, progress=progress, ship_dtype=ship_dtype)


def run_classifier(cfg: ClassifierJob, out=None, resume=False, deadline=None, stop_at=None, progress=True,
                   ship_dtype=None):
    xp = backend.get_xp()
    model = AttributeClassifier(cfg.model, seed=cfg.seed).to(backend.device())
    batch = shapes.sample(cfg.dataset_size, seed=(cfg.seed, SHAPES_DATA_SEED), size=cfg.model.image_size)
    # the whole set arranged as [one-object | two-object scenes]; a batch takes its rows from each part
    # in the data's proportion, so every head's label block is known without looking at the labels
    images, targets, num_single = evaluate.arrange_batch(batch["images"], batch["labels"])
    images = xp.asarray(images)
    targets = {name: xp.asarray(t) for name, t in targets.items()}
    batch_single = int(round(cfg.batch_size * num_single / cfg.dataset_size))
    batch_pair = cfg.batch_size - batch_single

    parts = [(low, high, count) for low, high, count in ((0, num_single, batch_single),
                                                          (num_single, cfg.dataset_size, batch_pair)) if count]

    def loss_fn(rng, step):
        idx = xp.concatenate([rng.integers(low, high, size=(count,)) for low, high, count in parts])
        return classifier_loss(model, images[idx], {k: t[idx] for k, t in targets.items()},
                                        batch_single)

    result = fit("classifier", model, loss_fn, cfg, _checkpoint_config("classifier", model, cfg), out, resume,
                 deadline, stop_at, progress=progress, ship_dtype=ship_dtype)
    if result.complete:
        scores = evaluate.classifier_accuracy(result.model, n=1024, seed=cfg.seed)
        print("classifier: held-out accuracy " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    return result


def random_shift(images, rng, max_shift: int):
    """Each image of (B, C, S, S) moved by its own (dy, dx), each in [-max_shift, max_shift], the
    uncovered border filled with background (-1): out[b, :, i, j] = padded[b, :, i + dy_b + m, j + dx_b + m].
    Offsets drawn on the device; the gather runs there too."""
    if max_shift == 0:
        return images
    xp = backend.get_array_module(images)
    B, C, S, _ = images.shape
    m = max_shift
    padded = xp.pad(images, ((0, 0), (0, 0), (m, m), (m, m)), constant_values=-1.0)      # (B, C, S+2m, S+2m)
    offsets = rng.integers(0, 2 * m + 1, size=(2, B))                                    # dy + m, dx + m
    rows = offsets[0][:, None] + xp.arange(S)[None, :]                                   # (B, S)
    cols = offsets[1][:, None] + xp.arange(S)[None, :]
    batch, channel = xp.arange(B)[:, None, None, None], xp.arange(C)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]       # (B, C, S, S)


def run_digit_classifier(cfg: DigitClassifierJob, out=None, resume=False, deadline=None, stop_at=None,
                         progress=True, ship_dtype=None):
    """The digit classifier on the digits' training split (never the held-out one); when complete,
    its class accuracy on the 500 held-out digits, by digit."""
    xp = backend.get_xp()
    model = DigitClassifier(cfg.model, seed=cfg.seed).to(backend.device())
    data = load_data(cfg.data, cfg.model.image_size, cfg.dataset_size, cfg.seed, channels=cfg.model.in_channels)
    images = xp.asarray(data.images)                                       # (N, C, S, S) on the device
    labels = xp.asarray(data.image_labels[:, 0])                           # the digit column

    def loss_fn(rng, step):
        idx = rng.integers(0, images.shape[0], size=(cfg.batch_size,))
        return digit_loss(model, random_shift(images[idx], rng, cfg.max_shift), labels[idx])

    result = fit("digit_classifier", model, loss_fn, cfg, _checkpoint_config("digit_classifier", model, cfg), out,
                 resume, deadline, stop_at, progress=progress, ship_dtype=ship_dtype)
    if result.complete:
        heldout, heldout_labels = evaluate.heldout_digits(evaluate.HELDOUT_DIGITS, cfg.model.image_size)
        table = evaluate.digit_accuracy(heldout, heldout_labels, result.model)
        result.evaluation = table
        print(f"digit_classifier: held-out accuracy {table['overall'][0]:.4f} on {table['overall'][1]} digits; "
              "by digit " + ", ".join(f"{name.split()[0]} {acc:.2f}" for name, (acc, _) in table.items()
                                      if name != "overall"))
    return result


def train_classifier(steps: int = 600, batch_size: int = 32, seed: int = 0, device: str | None = None,
                     config=None, lr: float = 2e-3, dataset_size: int = 8000, out=None, progress: bool = False):
    """Train an AttributeClassifier (the ``classifier`` job with these settings) and return it in
    eval mode with its EMA weights. ``out``: a folder for classifier.npz, or None (memory only).
    ``device``: where to train (None: the current device; the caller's device is left as it was)."""
    from .config import make_config
    job = make_config("classifier", "quick", {"steps": steps, "batch_size": batch_size, "seed": seed,
                                              "lr": lr, "dataset_size": dataset_size})
    if config is not None:
        job = dataclasses.replace(job, model=config)
    with backend.using(device):
        return run_classifier(job, out=out, progress=progress).model
