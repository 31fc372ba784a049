"""Training: every model minidiff ships is trained here, by one loop you can read top to bottom.

    python -m minidiff train pixel        # unconditional U-Net on shapes images (or --data folder:PATH / idx:PATH)
    python -m minidiff train vae          # the KL autoencoder; stores the latent scale factor at the end
    python -m minidiff train latent       # unconditional U-Net on the latents of a trained VAE (--vae)
    python -m minidiff train clip         # BPE tokenizer + mini-CLIP -> tokenizer.json, text_encoder.npz
    python -m minidiff train text2image   # U-Net on latents, cross-attending to the frozen text encoder
    python -m minidiff train classifier   # the attribute classifier behind `python -m minidiff evaluate`
    python -m minidiff train all --out DIR --preset full --max-minutes 8    # clip, vae, text2image, classifier;
                                          # run it again (same command) until it prints "all stages complete"

Each job has a config dataclass with two named instances: ``quick()`` (a few minutes on a 2-core
CPU, the default) and ``full()`` (``--preset full``: the shipped models, on a GPU).

The loop (`fit`), the same for every job:

    for step in range(start, steps):
        rng = step_rng(seed, step)        # batch indices, noise, t, dropout: a function of (seed, step)
                                          # alone, so a resumed run continues the very same run
        model.zero_grad()
        loss = job_loss(rng)              # forward + hand-written backward: fills every p.grad
        clip_grad_norm(model, grad_clip)  # ||g|| <= grad_clip
        optimizer.step(lr=warmup_cosine(step + 1, lr, warmup_steps, steps, min_lr))
        ema.update()                      # shadow <- decay shadow + (1 - decay) theta; samples use the shadow
        every log_every steps:            read the mean loss back (the only sync) and stop if it is not finite
        every checkpoint_every steps:     save model + optimizer + EMA + step (atomically)
        every sample_every steps:         save a sample grid and the loss curve under DIR/samples/
        when --max-minutes is up:         save and stop cleanly; `--resume` continues

Nothing in the loop copies between host and device or reads a number back inside a step: the
training data is rendered (or encoded) once and kept on the device, and batches are gathered
there with indices drawn on the device. (One exception: mini-CLIP's forward validates its token
ids and positives matrix, which reads a few numbers back each step.)

Checkpoints
-----------
``DIR/<job>.npz`` (``unet.npz`` for text2image, as ``pipeline.py`` expects) holds, in its JSON
config, ``{"job": ..., "model": <model config>, "train": <job config>, "diffusion": {"schedule",
"num_steps", "prediction_type"}}`` so that ``evaluate``, ``pipeline`` and ``--resume`` can rebuild
the model. While training it also holds the optimizer and EMA states. When the last step is done
it is rewritten as the *final* checkpoint: the EMA weights as the model's, no optimizer, and
``extra/complete = 1`` (and the latent ``scale_factor`` for the VAE). Resuming with a different
job or config is an error that names the first difference.

Read beside: ``minidiff/optim.py`` (AdamW, EMA, clipping, the schedule), ``minidiff/checkpoint.py``,
``minidiff/diffusion/loss.py`` (the objective), and the model files each job builds.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import backend, evaluate
from .checkpoint import CheckpointError, load_checkpoint, load_into, save_checkpoint
from .datasets import shapes
from .diffusion import samplers
from .diffusion.loss import diffusion_loss, training_targets
from .diffusion.schedule import NoiseSchedule
from .models.clip import CLIPConfig, MiniCLIP, clip_loss_and_backward, train_tokenizer
from .models.text_encoder import TextEncoder, TextEncoderConfig
from .models.tokenizer import BPETokenizer
from .models.unet import UNet, UNetConfig
from .models.vae import AutoencoderKL, VAEConfig, vae_loss
from .nn.layers import Dropout
from .nn.module import no_grad
from .optim import EMA, AdamW, clip_grad_norm, warmup_cosine
from .utils import REPO_ROOT, atomic_write_bytes, image_grid

OUTPUT_DIR = REPO_ROOT / "outputs" / "train"
PRETRAINED_DIR = REPO_ROOT / "data" / "pretrained"
# file names inside an output folder (pipeline.py reads vae.npz, unet.npz, text_encoder.npz, tokenizer.json)
FILES = {"pixel": "pixel.npz", "vae": "vae.npz", "latent": "latent.npz", "clip": "clip.npz",
         "text2image": "unet.npz", "classifier": "classifier.npz"}
TEXT_ENCODER_FILE, TOKENIZER_FILE = "text_encoder.npz", "tokenizer.json"
JOBS = tuple(FILES)
SHAPES_DATA_SEED = 1          # training images: shapes.sample(n, seed=(seed, 1)); evaluation uses others


class TrainingDiverged(RuntimeError):
    """The loss (or the gradient norm) stopped being a finite number."""


# =================================================================================================
# configs: what every job shares, then one dataclass per job with quick() and full() instances
# =================================================================================================
@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    min_lr: float = 1e-5              # the cosine decays to this
    warmup_steps: int = 100
    weight_decay: float = 0.0         # decoupled, on weight matrices and kernels only
    betas: tuple = (0.9, 0.999)
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    seed: int = 0
    dataset_size: int = 5000          # images rendered (or encoded) once and kept on the device
    log_every: int = 50
    checkpoint_every: int = 500
    sample_every: int = 500

    def __post_init__(self):
        self.betas = tuple(self.betas)
        for name in ("steps", "batch_size", "dataset_size", "log_every", "checkpoint_every", "sample_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{type(self).__name__}: {name} must be an integer >= 1, got {value!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"{type(self).__name__}: lr must be a number > 0, got {self.lr!r}")
        if not 0 <= self.warmup_steps <= self.steps:
            raise ValueError(f"{type(self).__name__}: warmup_steps must be in [0, steps={self.steps}], "
                             f"got {self.warmup_steps!r}")
        self.min_lr = min(self.min_lr, self.lr)


# fields that may change when a run is resumed (bookkeeping and where the inputs live)
RESUMABLE_CHANGES = ("log_every", "checkpoint_every", "sample_every", "vae", "text_encoder", "tokenizer")


@dataclass
class DiffusionTrainConfig(TrainConfig):
    schedule: str = "linear"
    num_train_timesteps: int = 1000
    prediction_type: str = "epsilon"
    min_snr_gamma: float | None = None
    sample_steps: int = 50            # DDIM steps for the periodic sample grid
    num_samples: int = 16

    def diffusion(self) -> dict:
        """What pipeline.py and evaluate.py need to rebuild the noise schedule."""
        return {"schedule": self.schedule, "num_steps": self.num_train_timesteps,
                "prediction_type": self.prediction_type}


@dataclass
class PixelJob(DiffusionTrainConfig):
    """Unconditional U-Net on images: shapes (default), ``folder:PATH`` or ``idx:PATH`` (MNIST files)."""
    model: UNetConfig = field(default_factory=UNetConfig.quick16)
    data: str = "shapes"
    image_size: int = 16

    @classmethod
    def quick(cls):
        return cls(steps=1500, batch_size=32, lr=1e-3, dataset_size=4000, sample_steps=25)

    @classmethod
    def full(cls):
        return cls(model=UNetConfig.pixel32(), image_size=32, steps=20000, batch_size=128, lr=2e-4,
                   warmup_steps=500, dataset_size=50000, checkpoint_every=2000, sample_every=2000)


@dataclass
class VAEJob(TrainConfig):
    """KL autoencoder with Stable Diffusion's L1 + 1e-6 KL objective."""
    model: VAEConfig = field(default_factory=VAEConfig.f4_32)
    kl_weight: float = 1e-6
    recon: str = "l1"
    scale_images: int = 2048          # images whose latents set the scale factor at the end

    @classmethod
    def quick(cls):
        return cls(steps=800, batch_size=16, lr=1e-3, dataset_size=4000, scale_images=512)

    @classmethod
    def full(cls):
        return cls(steps=1300, batch_size=64, lr=1e-3, warmup_steps=130, dataset_size=40000,
                   checkpoint_every=1000, sample_every=1000)


def _latent_unet(**changes):
    """An unconditional U-Net for 4 x 8 x 8 latents (the text-to-image one without cross-attention)."""
    return dataclasses.replace(UNetConfig.latent8(), context_dim=None, **changes)


@dataclass
class LatentJob(DiffusionTrainConfig):
    """Unconditional U-Net on the scaled latents of a trained VAE checkpoint."""
    model: UNetConfig = field(default_factory=lambda: _latent_unet(base_channels=32, num_res_blocks=1))
    vae: str = str(PRETRAINED_DIR / FILES["vae"])
    schedule: str = "scaled_linear"

    @classmethod
    def quick(cls):
        return cls(steps=1500, batch_size=32, lr=1e-3, dataset_size=4000, sample_steps=25)

    @classmethod
    def full(cls):
        return cls(model=_latent_unet(), steps=15000, batch_size=128, lr=2e-4, warmup_steps=500,
                   dataset_size=50000, checkpoint_every=2000, sample_every=2000)


@dataclass
class ClipJob(TrainConfig):
    """mini-CLIP: the text encoder learns from matching captions to images. No --tokenizer: train one."""
    model: CLIPConfig = field(default_factory=CLIPConfig.quick)
    tokenizer: str | None = None
    tokenizer_corpus: int = 20000
    weight_decay: float = 0.1
    betas: tuple = (0.9, 0.98)
    ema_decay: float = 0.995

    @classmethod
    def quick(cls):
        return cls(steps=600, batch_size=64, lr=1e-3, dataset_size=8000)

    @classmethod
    def full(cls):
        return cls(model=CLIPConfig.shipped(), steps=600, batch_size=128, lr=1e-3, warmup_steps=60,
                   dataset_size=50000, checkpoint_every=1000, sample_every=1000)


@dataclass
class Text2ImageJob(DiffusionTrainConfig):
    """Conditional latent U-Net; captions swapped for "" with probability ``cond_dropout`` (for guidance)."""
    model: UNetConfig = field(default_factory=lambda: dataclasses.replace(
        UNetConfig.latent8(), base_channels=32, num_res_blocks=1))
    vae: str = str(PRETRAINED_DIR / FILES["vae"])
    text_encoder: str = str(PRETRAINED_DIR / TEXT_ENCODER_FILE)
    tokenizer: str = str(PRETRAINED_DIR / TOKENIZER_FILE)
    cond_dropout: float = 0.1
    schedule: str = "scaled_linear"
    guidance_scale: float = 4.0       # for the periodic sample grid
    two_object_fraction: float = 0.3  # share of two-object scenes ("A above B") in the training images
    init: str | None = None           # start from the weights of this finished unet.npz (fine-tuning)

    @classmethod
    def quick(cls):
        return cls(steps=2000, batch_size=32, lr=1e-3, dataset_size=4000, sample_steps=25)

    @classmethod
    def full(cls):
        """The first stage of the shipped U-Net (data/pretrained/README.md has the second)."""
        return cls(model=UNetConfig.latent8(), steps=4500, batch_size=256, lr=4e-4, warmup_steps=450,
                   dataset_size=60000, checkpoint_every=500, sample_every=1500)


@dataclass
class ClassifierJob(TrainConfig):
    """The attribute classifier of evaluate.py (cross-entropy per label head)."""
    model: evaluate.ClassifierConfig = field(default_factory=evaluate.ClassifierConfig)
    lr: float = 2e-3
    weight_decay: float = 0.01
    ema_decay: float = 0.99

    @classmethod
    def quick(cls):
        return cls(model=evaluate.ClassifierConfig(channels=(16, 32, 64)), steps=600, batch_size=32,
                   dataset_size=8000, warmup_steps=50)

    @classmethod
    def full(cls):
        return cls(steps=4000, batch_size=128, dataset_size=40000, warmup_steps=200,
                   checkpoint_every=1000, sample_every=1000)


JOB_CONFIGS = {"pixel": PixelJob, "vae": VAEJob, "latent": LatentJob, "clip": ClipJob,
               "text2image": Text2ImageJob, "classifier": ClassifierJob}


# =================================================================================================
# rebuilding models from checkpoints
# =================================================================================================
MODEL_CLASSES = {"pixel": (UNet, UNetConfig), "latent": (UNet, UNetConfig), "text2image": (UNet, UNetConfig),
                 "vae": (AutoencoderKL, VAEConfig), "clip": (MiniCLIP, CLIPConfig),
                 "text_encoder": (TextEncoder, TextEncoderConfig),
                 "classifier": (evaluate.AttributeClassifier, evaluate.ClassifierConfig)}


def config_from_dict(cls, values: dict):
    """A model config dataclass from its JSON form (lists back to tuples)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise CheckpointError(f"{cls.__name__}: unknown fields {unknown} in the checkpoint's config")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def checkpoint_job(ckpt) -> str:
    """The job recorded in a checkpoint's config ("pixel", "vae", ..., "text_encoder")."""
    job = (ckpt.config or {}).get("job")
    if job not in MODEL_CLASSES:
        raise CheckpointError(f"checkpoint {ckpt.path} records no known job (job={job!r}); "
                              f"expected one of {tuple(MODEL_CLASSES)}")
    return job


def load_trained(path, device=None, hint=None):
    """(model in eval mode on ``device``, Checkpoint) from any checkpoint this module writes.

    Loads the EMA weights when the checkpoint has them (a final checkpoint already stores them as
    the model's). A VAE gets its latent ``scale_factor`` back."""
    ckpt = load_checkpoint(path, hint=hint)
    job = checkpoint_job(ckpt)
    model_class, config_class = MODEL_CLASSES[job]
    model = model_class(config_from_dict(config_class, ckpt.config.get("model", {})))
    load_into(model, ckpt, use_ema=bool(ckpt.ema_state))
    if job == "vae":
        if "scale_factor" not in ckpt.extra:
            raise CheckpointError(f"VAE checkpoint {ckpt.path} has no latent scale factor: it is not "
                                  "finished; resume its training to the end (train vae --resume)")
        model.scale_factor = float(np.asarray(ckpt.extra["scale_factor"]))
    return model.to(device or backend.device()).eval(), ckpt


# =================================================================================================
# the loop
# =================================================================================================
class AdamWGroups:
    """AdamW with weight decay on matrices and kernels (ndim >= 2) but not on biases, norm scales
    or scalars such as CLIP's temperature: decaying those toward 0 only hurts."""

    def __init__(self, model, lr, betas, weight_decay):
        named = model.named_parameters()
        decay = [(n, p) for n, p in named if p.data.ndim >= 2]
        no_decay = [(n, p) for n, p in named if p.data.ndim < 2]
        self.groups = {"decay": AdamW(decay, lr=lr, betas=betas, weight_decay=weight_decay)}
        if no_decay:
            self.groups["no_decay"] = AdamW(no_decay, lr=lr, betas=betas, weight_decay=0.0)

    def step(self, lr):
        for optimizer in self.groups.values():
            optimizer.step(lr=lr)

    def state_dict(self):
        return {name: optimizer.state_dict() for name, optimizer in self.groups.items()}

    def load_state_dict(self, state):
        for name, optimizer in self.groups.items():
            if name not in state:
                raise ValueError(f"optimizer state has no {name!r} group")
            optimizer.load_state_dict(state[name])
        return self


def step_rng(seed: int, step: int):
    """The generator for one step, on the current device: determined by (seed, step) alone."""
    return backend.rng(int(np.random.SeedSequence([seed, step]).generate_state(1)[0]))


@dataclass
class FitResult:
    model: object
    step: int                 # the step the model is at
    complete: bool            # reached cfg.steps (the final checkpoint is written)
    steps_run: int            # steps run by this call
    seconds: float
    final_loss: float | None
    checkpoint: Path | None
    history: list             # [(step, mean loss over the last log window)]


def _json_normalised(value):
    return json.loads(json.dumps(value))


def check_resumable(ckpt, config: dict):
    """Raise ValueError unless the checkpoint was trained by the same job with the same settings."""
    stored = ckpt.config or {}
    if stored.get("job") != config["job"]:
        raise ValueError(f"cannot resume: {ckpt.path} is a {stored.get('job')!r} checkpoint, not {config['job']!r}")
    for section in ("model", "train"):
        mine, theirs = _json_normalised(config[section]), stored.get(section, {})
        for key in sorted(set(mine) | set(theirs)):
            if (section == "train" and key in RESUMABLE_CHANGES) or key not in theirs:
                continue                        # (a setting newer than the checkpoint: nothing to compare)
            if mine.get(key) != theirs.get(key):
                raise ValueError(f"cannot resume {ckpt.path}: it was trained with {section}.{key}="
                                 f"{theirs.get(key)!r}, this run has {mine.get(key)!r}. Resume with the same "
                                 "settings, or train a new model into another --out folder")


def _save_loss_curve(history, path, title):
    from .utils import pyplot
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps, losses = zip(*history)
    ax.plot(steps, losses)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (mean over the log window)")
    ax.set_title(title)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def fit(job: str, model, loss_fn, cfg: TrainConfig, config: dict, out=None, resume=False, deadline=None,
        stop_at=None, sample_fn=None, finalize=None, progress=True, ship_dtype=None) -> FitResult:
    """Train ``model`` for ``cfg.steps`` steps; the loop of the module docstring.

    loss_fn(rng) -> loss: one forward and backward pass (grads filled), the loss a 0-d device array.
    config:     the checkpoint's JSON config ({"job", "model", "train", ...}).
    out:        folder for ``FILES[job]`` and samples/ (None: keep nothing on disk).
    resume:     continue from the checkpoint in ``out`` (a missing one starts afresh; a complete one
                is returned as it is). Without it an existing checkpoint is an error.
    deadline:   a ``time.perf_counter()`` value; at it, save and stop (``--max-minutes``).
    stop_at:    save and stop once this step is reached (a run in pieces; ``--resume`` continues).
    sample_fn(model) -> images in [-1, 1] (N, C, H, W), called with the EMA weights.
    finalize(model) -> {name: array}: extra arrays for the final checkpoint (e.g. the VAE's scale factor).
    ship_dtype: storage dtype of the final checkpoint's weights (e.g. np.float16), None = float32.
    """
    path = Path(out) / FILES[job] if out is not None else None
    samples_dir = Path(out) / "samples" if out is not None else None
    optimizer = AdamWGroups(model, cfg.lr, cfg.betas, cfg.weight_decay)
    ema = EMA(model, decay=cfg.ema_decay)
    start, history = 0, []
    if path is not None and path.exists():
        if not resume:
            raise ValueError(f"{path} already exists: pass --resume to continue it, or choose another --out")
        ckpt = load_checkpoint(path)
        check_resumable(ckpt, config)
        if int(np.asarray(ckpt.extra.get("complete", 0))):
            print(f"{job}: {path} is complete (step {ckpt.step}); nothing to do")
            load_into(model, ckpt)
            return FitResult(model.eval(), ckpt.step, True, 0, 0.0, None, path,
                             [tuple(r) for r in np.asarray(ckpt.extra.get("loss_history", np.zeros((0, 2))))])
        load_into(model, ckpt, optimizer=optimizer, ema=ema)
        start = ckpt.step
        history = [(int(s), float(v)) for s, v in np.asarray(ckpt.extra.get("loss_history", np.zeros((0, 2))))]
        print(f"{job}: resuming {path} at step {start}/{cfg.steps}")
    end = cfg.steps if stop_at is None else min(cfg.steps, max(stop_at, start))
    dropouts = [m for m in model.modules() if isinstance(m, Dropout)]

    def save(step, final_extra=None):
        """A training checkpoint (model, optimizer, EMA), or with ``final_extra`` the final one."""
        if path is None:
            return
        extra = {"loss_history": np.asarray(history, np.float64).reshape(-1, 2)}
        if final_extra is None:
            save_checkpoint(path, model=model, optimizer=optimizer, ema=ema, config=config, step=step, extra=extra)
        else:
            extra.update(final_extra, complete=np.asarray(1))
            save_checkpoint(path, model=model, config=config, step=step, extra=extra, dtype=ship_dtype)

    def save_samples(step):
        if sample_fn is None or samples_dir is None:
            return
        samples_dir.mkdir(parents=True, exist_ok=True)
        ema.swap()                              # sample with the averaged weights ...
        model.eval()
        try:
            with no_grad():
                images = sample_fn(model)
        finally:
            model.train()
            ema.swap()                          # ... and put the training weights back
        import io
        buffer = io.BytesIO()
        image_grid(images, nrow=int(math.ceil(math.sqrt(len(images)))), scale=4).save(buffer, format="PNG")
        atomic_write_bytes(samples_dir / f"{job}_step{step:06d}.png", buffer.getvalue())
        if history:
            _save_loss_curve(history, samples_dir / f"{job}_loss.png", f"{job}: training loss")

    from tqdm.auto import tqdm
    bar = tqdm(total=end, initial=start, desc=job, unit="step", disable=not progress, dynamic_ncols=True)
    xp = backend.get_array_module(model.parameters()[0].data)
    running_loss = xp.zeros((), np.float32)     # sums on the device, read back every log_every steps
    running_norm = xp.zeros((), np.float32)
    window, last_good, began = 0, start, time.perf_counter()
    model.train()
    step = start
    try:
        while step < end:
            rng = step_rng(cfg.seed, step)
            for layer in dropouts:              # dropout masks from this step's generator too
                layer.rng = rng
            model.zero_grad()
            loss = loss_fn(rng)
            grad_norm = clip_grad_norm(model, cfg.grad_clip)
            optimizer.step(lr=warmup_cosine(step + 1, cfg.lr, cfg.warmup_steps, cfg.steps, cfg.min_lr))
            ema.update()
            running_loss += loss
            running_norm += grad_norm
            window += 1
            step += 1
            bar.update(1)
            checkpoint_due = step % cfg.checkpoint_every == 0 or step == end
            out_of_time = deadline is not None and time.perf_counter() > deadline
            if step % cfg.log_every == 0 or checkpoint_due or out_of_time:
                # the only device -> host reads of the loop
                mean_loss, norm = float(running_loss) / window, float(running_norm)
                if not (math.isfinite(mean_loss) and math.isfinite(norm)):
                    kept = (f"the last good checkpoint {path} (step {last_good}) is kept"
                            if path is not None and path.exists() else "no checkpoint was written")
                    raise TrainingDiverged(
                        f"{job}: the loss became {mean_loss} (gradient norm {norm}) between steps "
                        f"{step - window} and {step}; stopped without saving, {kept}. Try a lower --lr "
                        "or check the data")
                history.append((step, mean_loss))
                running_loss[...] = 0
                running_norm[...] = 0
                window = 0
                bar.set_postfix(loss=f"{mean_loss:.4f}")
                if not progress:                # no bar (e.g. a log file): one line per log window
                    print(f"{job}: step {step}/{cfg.steps} loss {mean_loss:.4f}", flush=True)
            if step % cfg.sample_every == 0 and step < cfg.steps:
                save_samples(step)
            if step == cfg.steps:                # done: the model takes the averaged weights for good
                ema.copy_to(model)
                save(step, final_extra=finalize(model) if finalize else {})
                save_samples(step)
                last_good = step
            elif checkpoint_due or out_of_time:
                save(step)
                last_good = step
            if out_of_time and step < cfg.steps:
                print(f"\n{job}: time limit reached at step {step}/{cfg.steps}; checkpoint saved, "
                      "continue with --resume")
                break
    finally:
        bar.close()
    backend.synchronize()
    seconds = time.perf_counter() - began
    steps_run = step - start
    final_loss = history[-1][1] if history else None
    complete = step >= cfg.steps
    if complete:
        model.eval()
    rate = steps_run / seconds if seconds > 0 else float("nan")
    loss_text = f"{final_loss:.4f}" if final_loss is not None else "n/a"
    print(f"{job}: {steps_run} steps (now at {step}/{cfg.steps}) in {seconds:.1f} s, {rate:.2f} steps/s, "
          f"final loss {loss_text}" + (f" -> {path}" if path is not None and steps_run else ""))
    return FitResult(model, step, complete, steps_run, seconds, final_loss, path, history)


# =================================================================================================
# data, kept on the device
# =================================================================================================
def load_images(data: str, size: int, count: int, seed: int):
    """(N, C, size, size) float32 in [-1, 1] on the host: "shapes", "folder:PATH" or "idx:PATH".

    ``seed`` picks the rendered shapes scenes; a folder or idx file gives its first ``count`` images."""
    kind, _, location = data.partition(":")
    if kind == "shapes" and not location:
        return shapes.sample(count, seed=(seed, SHAPES_DATA_SEED), size=size)["images"]
    if kind == "folder" and location:
        from .datasets.folder import load_folder
        return load_folder(location, size=size, limit=count)
    if kind == "idx" and location:
        from .datasets.idx import load_idx_dataset, to_float_images
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


# =================================================================================================
# the jobs
# =================================================================================================
def _checkpoint_config(job, model, cfg):
    train = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "model"}
    config = {"job": job, "model": dataclasses.asdict(model.config), "train": train}
    if isinstance(cfg, DiffusionTrainConfig):
        config["diffusion"] = cfg.diffusion()
    return config


def _diffusion_loss_fn(model, schedule, cfg, draw_batch):
    """loss_fn for the diffusion jobs: x_0 (and context) from ``draw_batch(rng)``, then L_simple."""
    def loss_fn(rng):
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
    images = load_images(cfg.data, cfg.image_size, cfg.dataset_size, cfg.seed)
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


def run_vae(cfg: VAEJob, out=None, resume=False, deadline=None, stop_at=None, progress=True, ship_dtype=None):
    xp = backend.get_xp()
    model = AutoencoderKL(cfg.model, seed=cfg.seed).to(backend.device())
    data = xp.asarray(load_images("shapes", cfg.model.image_size, cfg.dataset_size, cfg.seed))

    def loss_fn(rng):
        (x,) = gather(rng, data, batch_size=cfg.batch_size)
        loss, _ = vae_loss(model, x, rng, kl_weight=cfg.kl_weight, recon=cfg.recon)
        return loss

    def sample_fn(vae):                    # top row: images, bottom row: their reconstructions
        x = data[:8]
        return xp.concatenate([x, vae.decode(vae.encode(x).mode())])

    def finalize(vae):
        # scale_factor = 1 / std(z): the latents the diffusion model sees have about unit variance
        scale = vae.compute_scale_factor(data[:cfg.scale_images])
        print(f"vae: latent scale factor {scale:.4f} (1 / std of {min(cfg.scale_images, len(data))} latents)")
        return {"scale_factor": np.asarray(scale, np.float64)}

    return fit("vae", model, loss_fn, cfg, _checkpoint_config("vae", model, cfg), out, resume, deadline, stop_at,
               sample_fn=sample_fn, finalize=finalize, progress=progress, ship_dtype=ship_dtype)


def _frozen_vae(path):
    vae, _ = load_trained(path, hint="train one with: python -m minidiff train vae")
    if not isinstance(vae, AutoencoderKL):
        raise ValueError(f"--vae {path} is not a VAE checkpoint")
    return vae


def _latent_model_config(cfg, vae, **changes):
    return dataclasses.replace(cfg.model, in_channels=vae.config.latent_channels,
                               out_channels=vae.config.latent_channels, image_size=vae.config.latent_size, **changes)


def run_latent(cfg: LatentJob, out=None, resume=False, deadline=None, stop_at=None, progress=True, ship_dtype=None):
    xp = backend.get_xp()
    vae = _frozen_vae(cfg.vae)
    model = UNet(_latent_model_config(cfg, vae), seed=cfg.seed).to(backend.device())
    means, stds = encode_dataset(vae, load_images("shapes", vae.config.image_size, cfg.dataset_size, cfg.seed))
    schedule = NoiseSchedule.make(cfg.schedule, cfg.num_train_timesteps)

    def draw_batch(rng):
        mean, std = gather(rng, means, stds, batch_size=cfg.batch_size)
        # z ~ q(z | x), already scaled: z = mean + std * eps
        return mean + std * rng.standard_normal(mean.shape, dtype=mean.dtype), None, None

    shape = (cfg.num_samples,) + means.shape[1:]
    decode = lambda z: xp.clip(vae.decode_latents(z), -1, 1)           # noqa: E731
    return fit("latent", model, _diffusion_loss_fn(model, schedule, cfg, draw_batch), cfg,
               _checkpoint_config("latent", model, cfg), out, resume, deadline, stop_at,
               sample_fn=_unconditional_sampler(schedule, cfg, shape, decode), progress=progress,
               ship_dtype=ship_dtype)


def _label_matrix(labels: dict):
    """shapes labels dict -> int64 (N, K) in LABEL_KEYS order (-1 = absent / not said)."""
    return np.stack([np.asarray(labels[key], np.int64) for key in shapes.LABEL_KEYS], axis=1)


def caption_positives(image_labels, caption_labels):
    """(B, B) bool: [i, j] True when caption j describes image i, i.e. every attribute the caption
    states (label >= 0) equals image i's. ``clip.caption_matches`` computed on the device from
    label matrices (B, K) (see `_label_matrix`)."""
    stated = caption_labels[None, :, :] == -1                                     # (1, B, K): not said = any
    agrees = image_labels[:, None, :] == caption_labels[None, :, :]              # (B, B, K)
    return (stated | agrees).all(axis=2)


def _load_or_train_tokenizer(cfg: ClipJob, out):
    """The job's tokenizer: --tokenizer FILE, else DIR/tokenizer.json from an earlier run, else a new one."""
    saved = Path(out) / TOKENIZER_FILE if out is not None else None
    if cfg.tokenizer:
        tokenizer = BPETokenizer.load(cfg.tokenizer)
    elif saved is not None and saved.exists():
        tokenizer = BPETokenizer.load(saved)
    else:
        print(f"clip: training a BPE tokenizer (vocabulary {cfg.model.text.vocab_size}) on "
              f"{cfg.tokenizer_corpus} captions")
        tokenizer = train_tokenizer(cfg.model.text.vocab_size, corpus_size=cfg.tokenizer_corpus, seed=cfg.seed)
    tokenizer.check_vocab_size(cfg.model.text.vocab_size)
    if saved is not None:
        saved.parent.mkdir(parents=True, exist_ok=True)
        tokenizer.save(saved)
    return tokenizer


def run_clip(cfg: ClipJob, out=None, resume=False, deadline=None, stop_at=None, progress=True, ship_dtype=None):
    """mini-CLIP; when complete, also writes DIR/text_encoder.npz (the text tower alone) for text2image."""
    xp = backend.get_xp()
    tokenizer = _load_or_train_tokenizer(cfg, out)
    model = MiniCLIP(cfg.model, seed=cfg.seed).to(backend.device())
    batch = shapes.sample(cfg.dataset_size, seed=(cfg.seed, SHAPES_DATA_SEED), size=cfg.model.image_size)
    ids, mask = tokenizer.encode_batch(batch["captions"], max_length=cfg.model.text.max_length)
    from .models.clip import caption_labels
    images, ids, mask = xp.asarray(batch["images"]), xp.asarray(ids), xp.asarray(mask)
    image_labels = xp.asarray(_label_matrix(batch["labels"]))                         # (N, K)
    said = xp.asarray(_label_matrix(caption_labels(batch["captions"])))                # (N, K), -1 = not said

    def loss_fn(rng):
        x, ids_b, mask_b, have, wanted = gather(rng, images, ids, mask, image_labels, said,
                                                batch_size=cfg.batch_size)
        loss, _ = clip_loss_and_backward(model, x, ids_b, mask_b, caption_positives(have, wanted))
        return loss

    def finalize(clip):
        if out is not None:
            text_config = {"job": "text_encoder", "model": dataclasses.asdict(clip.config.text),
                           "train": {"from": str(Path(out) / FILES["clip"])}}
            save_checkpoint(Path(out) / TEXT_ENCODER_FILE, model=clip.text_encoder, config=text_config,
                            step=cfg.steps, dtype=ship_dtype)
            print(f"clip: text encoder -> {Path(out) / TEXT_ENCODER_FILE}, tokenizer -> {Path(out) / TOKENIZER_FILE}")
        return {}

    result = fit("clip", model, loss_fn, cfg, _checkpoint_config("clip", model, cfg), out, resume, deadline,
                 stop_at, finalize=finalize, progress=progress, ship_dtype=ship_dtype)
    if result.complete:
        from .models.clip import retrieval_accuracy
        scores = retrieval_accuracy(result.model, tokenizer, num_batches=4, batch_size=64, seed=cfg.seed)
        print(f"clip: held-out text->image top-1 {scores['top1']:.3f} (chance {scores['chance']:.3f})")
    return result


def _frozen_text_encoder(path):
    """A TextEncoder from text_encoder.npz, or the text tower of a clip.npz."""
    model, _ = load_trained(path, hint="train one with: python -m minidiff train clip")
    if isinstance(model, MiniCLIP):
        model = model.text_encoder
    if not isinstance(model, TextEncoder):
        raise ValueError(f"--text-encoder {path} is neither a text encoder nor a CLIP checkpoint")
    return model


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


def run_text2image(cfg: Text2ImageJob, out=None, resume=False, deadline=None, stop_at=None, progress=True,
                   ship_dtype=None):
    xp = backend.get_xp()
    vae = _frozen_vae(cfg.vae)
    text_encoder = _frozen_text_encoder(cfg.text_encoder)
    tokenizer = BPETokenizer.load(cfg.tokenizer)
    tokenizer.check_vocab_size(text_encoder.config.vocab_size)
    model = UNet(_latent_model_config(cfg, vae, context_dim=text_encoder.config.width), seed=cfg.seed)
    model.to(backend.device())
    if cfg.init is not None:                          # fine-tune: start from a finished model's weights
        init = load_checkpoint(cfg.init, hint="--init takes a finished text2image unet.npz")
        if checkpoint_job(init) != "text2image":
            raise ValueError(f"--init {cfg.init} is a {checkpoint_job(init)} checkpoint, not a text2image one")
        load_into(model, init)
    batch = shapes.sample(cfg.dataset_size, seed=(cfg.seed, SHAPES_DATA_SEED), size=vae.config.image_size,
                          two_object_fraction=cfg.two_object_fraction)
    means, stds = encode_dataset(vae, batch["images"])
    # the text encoder is frozen, so every caption's states are computed once
    states, masks = text_states(text_encoder, tokenizer, batch["captions"])         # (N, L, W), (N, L)
    empty_state, empty_mask = text_states(text_encoder, tokenizer, [""])            # (1, L, W), (1, L)
    schedule = NoiseSchedule.make(cfg.schedule, cfg.num_train_timesteps)

    def draw_batch(rng):
        mean, std, context, context_mask = gather(rng, means, stds, states, masks, batch_size=cfg.batch_size)
        z0 = mean + std * rng.standard_normal(mean.shape, dtype=mean.dtype)         # z ~ q(z | x), scaled
        # conditioning dropout: with probability cond_dropout the caption becomes "" (for guidance)
        drop = rng.random((cfg.batch_size,), dtype=np.float32) < cfg.cond_dropout
        context = xp.where(drop[:, None, None], empty_state, context)
        context_mask = xp.where(drop[:, None], empty_mask, context_mask)
        return z0, context, context_mask

    from .pipeline import Pipeline
    pipe = Pipeline(vae=vae, unet=model, text_encoder=text_encoder, tokenizer=tokenizer, schedule=schedule,
                    prediction_type=cfg.prediction_type, max_length=text_encoder.config.max_length)
    prompts = [evaluate.FIXED_PROMPTS[i % len(evaluate.FIXED_PROMPTS)] for i in range(cfg.num_samples)]

    def sample_fn(unet):
        return evaluate.generate(pipe, prompts, cfg.guidance_scale, steps=cfg.sample_steps, seed=cfg.seed)

    return fit("text2image", model, _diffusion_loss_fn(model, schedule, cfg, draw_batch), cfg,
               _checkpoint_config("text2image", model, cfg), out, resume, deadline, stop_at,
               sample_fn=sample_fn, progress=progress, ship_dtype=ship_dtype)


def run_classifier(cfg: ClassifierJob, out=None, resume=False, deadline=None, stop_at=None, progress=True,
                   ship_dtype=None):
    xp = backend.get_xp()
    model = evaluate.AttributeClassifier(cfg.model, seed=cfg.seed).to(backend.device())
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

    def loss_fn(rng):
        idx = xp.concatenate([rng.integers(low, high, size=(count,)) for low, high, count in parts])
        return evaluate.classifier_loss(model, images[idx], {k: t[idx] for k, t in targets.items()},
                                        batch_single)

    result = fit("classifier", model, loss_fn, cfg, _checkpoint_config("classifier", model, cfg), out, resume,
                 deadline, stop_at, progress=progress, ship_dtype=ship_dtype)
    if result.complete:
        scores = evaluate.classifier_accuracy(result.model, n=1024, seed=cfg.seed)
        print("classifier: held-out accuracy " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    return result


RUNNERS = {"pixel": run_pixel, "vae": run_vae, "latent": run_latent, "clip": run_clip,
           "text2image": run_text2image, "classifier": run_classifier}


# =================================================================================================
# `train all`: the shipped checkpoints, stage by stage, in pieces of at most --max-minutes
# =================================================================================================
ALL_STAGES = ("clip", "vae", "text2image", "classifier")


def is_complete(path) -> bool:
    """True when ``path`` is a final checkpoint (training reached its last step)."""
    try:
        return bool(int(np.asarray(load_checkpoint(path).extra.get("complete", 0))))
    except (FileNotFoundError, CheckpointError):
        return False


def run_all(out, preset="quick", overrides=None, deadline=None, progress=True, ship_dtype=None) -> bool:
    """clip (+ tokenizer), vae, text2image, classifier into ``out``; each stage resumes its checkpoint
    and a complete one is skipped. Returns True when every stage is complete.

    ``overrides`` reach every stage that has the setting; one that no stage uses is a ValueError
    (text2image always reads the VAE and text encoder trained into ``out``, so ``vae`` and
    ``text_encoder`` are not accepted)."""
    out = Path(out)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    fields = {job: {f.name for f in dataclasses.fields(JOB_CONFIGS[job])} for job in ALL_STAGES}
    used = set().union(*fields.values()) - {"vae", "text_encoder"}
    unused = sorted(set(overrides) - used)
    if unused:
        k = unused[0]
        raise ValueError(f"--{k.replace('_', '-')} {overrides[k]!r}: no stage of `train all` uses it "
                         f"(stages: {', '.join(ALL_STAGES)}); train that job on its own")
    for job in ALL_STAGES:
        path = out / FILES[job]
        if is_complete(path):
            print(f"{job}: complete ({path}); skipping")
            continue
        if deadline is not None and time.perf_counter() > deadline:
            print(f"train all: --max-minutes is up before {job}; run the same command again to continue")
            return False
        cfg = make_config(job, preset, {k: v for k, v in overrides.items() if k in fields[job]})
        if job == "text2image":
            cfg = dataclasses.replace(cfg, vae=str(out / FILES["vae"]), text_encoder=str(out / TEXT_ENCODER_FILE),
                                      tokenizer=str(out / TOKENIZER_FILE))
        result = RUNNERS[job](cfg, out=out, resume=True, deadline=deadline, progress=progress,
                              ship_dtype=ship_dtype)
        if not result.complete:
            print(f"train all: {job} stopped at step {result.step}/{cfg.steps}; run the same command again "
                  "to continue")
            return False
    print(f"train all: all stages complete in {out}")
    return True


# =================================================================================================
# command line: python -m minidiff train JOB [options]
# =================================================================================================
OVERRIDES = ("steps", "batch_size", "lr", "seed", "dataset_size", "log_every", "checkpoint_every",
             "sample_every", "data", "vae", "text_encoder", "tokenizer", "init", "two_object_fraction", "model")


def make_config(job: str, preset: str = "quick", overrides: dict | None = None):
    """The job's ``quick()`` or ``full()`` config with command-line overrides (None = keep).

    An override the job has no setting for (e.g. ``data`` for the vae job) is a ValueError."""
    if job not in JOB_CONFIGS:
        raise ValueError(f"unknown job {job!r}; choose one of {JOBS}")
    if preset not in ("quick", "full"):
        raise ValueError(f"preset must be 'quick' or 'full', got {preset!r}")
    cfg = getattr(JOB_CONFIGS[job], preset)()
    model_name = (overrides or {}).get("model")
    if model_name is not None:                 # a named model config, e.g. --model f8_64 for the vae job
        config_class = type(cfg.model)
        named = sorted(n for n, v in vars(config_class).items() if isinstance(v, classmethod))
        if model_name not in named:
            raise ValueError(f"--model {model_name!r} is not a named {config_class.__name__}; choose one of {named}")
        cfg = dataclasses.replace(cfg, model=getattr(config_class, model_name)())
    names = {f.name for f in dataclasses.fields(cfg)}
    unused = sorted(k for k, v in (overrides or {}).items() if v is not None and k not in names)
    if unused:
        k = unused[0]
        raise ValueError(f"--{k.replace('_', '-')} {overrides[k]!r}: the {job} job has no {k!r} setting")
    changes = {k: v for k, v in (overrides or {}).items() if v is not None and k != "model"}
    if changes.get("steps") is not None and "warmup_steps" not in changes:
        changes["warmup_steps"] = min(cfg.warmup_steps, changes["steps"] // 10)
    return dataclasses.replace(cfg, **changes)


def add_arguments(parser):
    parser.add_argument("job", choices=JOBS + ("all",), help="what to train")
    parser.add_argument("--preset", choices=("quick", "full"), default="quick",
                        help="quick: minutes on a CPU (default); full: the shipped models, on a GPU")
    parser.add_argument("--out", default=None,
                        help=f"output folder (default {OUTPUT_DIR.relative_to(REPO_ROOT)})")
    parser.add_argument("--resume", action="store_true", help="continue the checkpoint in --out")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="save a checkpoint and stop after this many minutes (continue with --resume)")
    parser.add_argument("--stop-at", type=int, default=None, help="save a checkpoint and stop at this step")
    for flag, kind, what in (("--steps", int, "training steps"), ("--batch-size", int, "batch size"),
                             ("--lr", float, "peak learning rate"), ("--seed", int, "seed of data, init and noise"),
                             ("--dataset-size", int, "images rendered once and kept on the device"),
                             ("--log-every", int, "steps between loss read-outs"),
                             ("--checkpoint-every", int, "steps between checkpoints"),
                             ("--sample-every", int, "steps between sample grids")):
        parser.add_argument(flag, type=kind, help=f"{what} (default: the preset's)")
    parser.add_argument("--data", help="pixel job: shapes (default), folder:PATH or idx:PATH")
    parser.add_argument("--vae", help="latent, text2image: the VAE checkpoint (default data/pretrained/vae.npz)")
    parser.add_argument("--text-encoder", help="text2image: text_encoder.npz or clip.npz")
    parser.add_argument("--tokenizer", help="clip (optional: else one is trained), text2image: tokenizer.json")
    parser.add_argument("--model", help="a named model config of the job (e.g. vae: f4_32, f8_64; pixel: quick16, pixel32)")
    parser.add_argument("--init", help="text2image: start from the weights of a finished unet.npz (fine-tune)")
    parser.add_argument("--two-object-fraction", type=float,
                        help="text2image: share of two-object scenes in the training data (default 0.3)")
    parser.add_argument("--half", action="store_true",
                        help="store the final weights as float16 (half the file size)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    backend.add_device_argument(parser)
    return parser


def main(args) -> int:
    """Run ``python -m minidiff train`` from parsed arguments; returns the exit code."""
    backend.set_device(args.device)
    if args.max_minutes is not None and not args.max_minutes > 0:
        raise ValueError(f"--max-minutes must be > 0, got {args.max_minutes}")
    if args.stop_at is not None and args.stop_at < 1:
        raise ValueError(f"--stop-at must be >= 1, got {args.stop_at}")
    if args.stop_at is not None and args.job == "all":
        raise ValueError(f"--stop-at {args.stop_at} names a step of one job; `train all` runs several "
                         "(stop it with --max-minutes)")
    deadline = time.perf_counter() + 60 * args.max_minutes if args.max_minutes else None
    out = Path(args.out) if args.out else OUTPUT_DIR
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    overrides = {name: getattr(args, name) for name in OVERRIDES}
    ship_dtype = np.float16 if args.half else None
    print(f"train {args.job}: preset {args.preset}, device {backend.device()}, output {out}")
    if args.job == "all":
        run_all(out, args.preset, overrides, deadline, not args.no_progress, ship_dtype)
        return 0
    cfg = make_config(args.job, args.preset, overrides)
    RUNNERS[args.job](cfg, out=out, resume=args.resume, deadline=deadline, stop_at=args.stop_at,
                      progress=not args.no_progress, ship_dtype=ship_dtype)
    return 0
