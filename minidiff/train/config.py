"""Training configs: what every job shares, then one dataclass per job with two named instances.

``quick()`` is a few minutes on a 2-core CPU (the default); ``full()`` (``--preset full``) trains
the shipped models, on a GPU. ``make_config(job, preset, overrides)`` is what the command line
builds, e.g. ``make_config("vae", "quick", {"steps": 100})``.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from .. import zoo
from ..checks import positive_int
from ..models.classifier import ClassifierConfig
from ..models.clip import CLIPConfig
from ..models.digit_classifier import DigitClassifierConfig
from ..models.unet import UNetConfig
from ..models.vae import VAEConfig

JOBS = ("pixel", "vae", "latent", "clip", "text2image", "classifier", "digit_classifier", "lora",
        "textual_inversion", "controlnet", "noisy_classifier", "vae_decoder", "vae64")


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
            setattr(self, name, positive_int(type(self).__name__, name, getattr(self, name)))
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"{type(self).__name__}: lr must be a number > 0, got {self.lr!r}")
        if not 0 <= self.warmup_steps <= self.steps:
            raise ValueError(f"{type(self).__name__}: warmup_steps must be in [0, steps={self.steps}], "
                             f"got {self.warmup_steps!r}")
        self.min_lr = min(self.min_lr, self.lr)


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
    """Unconditional U-Net on images: shapes (default), ``digits``, ``folder:PATH`` or ``idx:PATH`` (MNIST files)."""
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
    """KL autoencoder with Stable Diffusion's L1 + 1e-6 KL objective; optionally (both off by default)
    a perceptual term through the frozen attribute classifier and a patch-GAN term (models/vae_loss.py)."""
    model: VAEConfig = field(default_factory=VAEConfig.f4_32)
    data: str = "shapes"              # or "digits", "folder:DIR", "idx:DIR" (train/data.py: load_data)
    kl_weight: float = 1e-6
    recon: str = "l1"
    scale_images: int = 2048          # images whose latents set the scale factor at the end
    perceptual_weight: float = 0.0    # > 0: + weight * feature distance in the classifier's conv maps
    perceptual_network: str = str(zoo.PRETRAINED_DIR / zoo.FILES["classifier"])
    adversarial_weight: float = 0.0   # > 0: + weight * patch-GAN generator loss, D trained alongside
    adversarial_start: int = 0        # the GAN term joins at this step (the "discriminator start")
    discriminator_lr: float = 2e-4
    extra_fraction: float = 0.0       # shapes: scenes whose object 1 is pink (`train all` uses 0.3)

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.extra_fraction, bool) or not isinstance(self.extra_fraction, (int, float)) \
                or not 0 <= self.extra_fraction <= 1:
            raise ValueError(f"VAEJob: extra_fraction must be a number in [0, 1], got {self.extra_fraction!r}")
        if self.extra_fraction and self.data != "shapes":
            raise ValueError(f"--extra-fraction {self.extra_fraction}: only --data shapes has pink objects to add; "
                             f"--data {self.data} has its own images")
        for name in ("perceptual_weight", "adversarial_weight", "discriminator_lr"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"VAEJob: {name} must be a number >= 0, got {value!r}")
        if isinstance(self.adversarial_start, bool) or not isinstance(self.adversarial_start, int) \
                or self.adversarial_start < 0:
            raise ValueError(f"VAEJob: adversarial_start must be an integer >= 0, got {self.adversarial_start!r}")

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
    vae: str = str(zoo.PRETRAINED_DIR / zoo.FILES["vae"])
    schedule: str = "scaled_linear"
    data: str = "shapes"              # or "digits", "folder:DIR", "idx:DIR"

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
    hard_negatives: bool = True       # each image also meets one caption of its own words in the wrong order
    two_object_fraction: float = 0.3  # share of two-object scenes ("A above B") in the training images
    data: str = "shapes"              # or "digits", "folder:DIR" with captions (hard negatives: shapes only)

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
    vae: str = str(zoo.PRETRAINED_DIR / zoo.FILES["vae"])
    text_encoder: str = str(zoo.PRETRAINED_DIR / zoo.FILES["text_encoder"])
    tokenizer: str = str(zoo.PRETRAINED_DIR / zoo.FILES["tokenizer"])
    cond_dropout: float = 0.1
    schedule: str = "scaled_linear"
    guidance_scale: float = 4.0       # for the periodic sample grid
    two_object_fraction: float = 0.3  # share of two-object scenes ("A above B") in the training images
    data: str = "shapes"              # or "digits", "folder:DIR" with captions
    init: str | None = None           # start from the weights of this finished unet.npz (fine-tuning)

    @classmethod
    def quick(cls):
        return cls(steps=2000, batch_size=32, lr=1e-3, dataset_size=4000, sample_steps=25)

    @classmethod
    def full(cls):
        """The first stage of the shipped U-Net (data/pretrained/README.md has the rest); `train all`
        trains 8000 steps from scratch (train/recipe.py)."""
        return cls(model=UNetConfig.latent8(), steps=4500, batch_size=256, lr=4e-4, warmup_steps=450,
                   dataset_size=60000, checkpoint_every=500, sample_every=1500)


@dataclass
class ClassifierJob(TrainConfig):
    """The attribute classifier (models/classifier.py) that evaluate.py judges with (cross-entropy per head)."""
    model: ClassifierConfig = field(default_factory=ClassifierConfig)
    lr: float = 2e-3
    weight_decay: float = 0.01
    ema_decay: float = 0.99

    @classmethod
    def quick(cls):
        return cls(model=ClassifierConfig(channels=(16, 32, 64)), steps=600, batch_size=32,
                   dataset_size=8000, warmup_steps=50)

    @classmethod
    def full(cls):
        return cls(steps=4000, batch_size=128, dataset_size=40000, warmup_steps=200,
                   checkpoint_every=1000, sample_every=1000)


@dataclass
class DigitClassifierJob(TrainConfig):
    """The digit classifier (models/digit_classifier.py) that judges generated digits: cross-entropy
    on the digits' training split only (``dataset_size`` of its 4,500; the held-out 500 score it at
    the end), each batch shifted by up to ``max_shift`` pixels so that a sample drawn a little off
    centre is still judged by its shape."""
    model: DigitClassifierConfig = field(default_factory=DigitClassifierConfig)
    data: str = "digits"              # the only source with digit labels
    dataset_size: int = 4500
    max_shift: int = 2
    lr: float = 2e-3
    weight_decay: float = 0.01
    ema_decay: float = 0.99

    def __post_init__(self):
        super().__post_init__()
        if self.data != "digits":
            raise ValueError(f"--data {self.data}: the digit classifier learns digit labels, which only "
                             "--data digits has")
        if isinstance(self.max_shift, bool) or not isinstance(self.max_shift, int) or self.max_shift < 0:
            raise ValueError(f"DigitClassifierJob: max_shift must be an integer >= 0, got {self.max_shift!r}")

    @classmethod
    def quick(cls):
        return cls(steps=2000, batch_size=64, warmup_steps=100, sample_every=10 ** 6)

    @classmethod
    def full(cls):
        return cls(steps=3000, batch_size=128, warmup_steps=150, checkpoint_every=1000, sample_every=10 ** 6)


@dataclass
class PinkFineTune(DiffusionTrainConfig):
    """What the fine-tunes of a finished text-to-image model share (train/finetune.py): the frozen
    models, and captioned shapes where object 1 of ``extra_fraction`` of the scenes is pink (a colour
    the base model never saw); the rest keep the base colours, so the old ones are not forgotten."""
    unet: str = str(zoo.PRETRAINED_DIR / zoo.FILES["text2image"])
    vae: str = str(zoo.PRETRAINED_DIR / zoo.FILES["vae"])
    text_encoder: str = str(zoo.PRETRAINED_DIR / zoo.FILES["text_encoder"])
    tokenizer: str = str(zoo.PRETRAINED_DIR / zoo.FILES["tokenizer"])
    extra_fraction: float = 0.5       # share of scenes whose object 1 is pink
    cond_dropout: float = 0.1
    two_object_fraction: float = 0.3
    schedule: str = "scaled_linear"
    guidance_scale: float = 4.0
    ema_decay: float = 0.99


@dataclass
class LoRAJob(PinkFineTune):
    """LoRA: only rank-r adapters on the U-Net's attention projections train."""
    rank: int = 4
    alpha: float = 4.0

    @classmethod
    def quick(cls):
        return cls(steps=300, batch_size=16, lr=2e-3, warmup_steps=20, dataset_size=2000, log_every=25,
                   checkpoint_every=10 ** 6, sample_every=10 ** 6)

    @classmethod
    def full(cls):
        return cls(steps=2000, batch_size=128, lr=1e-3, warmup_steps=100, dataset_size=20000)


@dataclass
class TextualInversionJob(PinkFineTune):
    """Textual inversion: one new token embedding "<pink>", everything else frozen (the pink captions
    say "<pink>"). v starts at the embedding of ``init_word``."""
    init_word: str = "red"

    @classmethod
    def quick(cls):
        return cls(steps=300, batch_size=16, lr=5e-3, warmup_steps=20, dataset_size=2000, log_every=25,
                   checkpoint_every=10 ** 6, sample_every=10 ** 6)

    @classmethod
    def full(cls):
        return cls(steps=2000, batch_size=128, lr=5e-3, warmup_steps=100, dataset_size=20000)


@dataclass
class ControlNetJob(PinkFineTune):
    """ControlNet beside the frozen U-Net, on the base shapes (extra_fraction unused) with their
    Sobel outlines as controls."""
    extra_fraction: float = 0.0

    @classmethod
    def quick(cls):
        return cls(steps=300, batch_size=8, lr=1e-4, warmup_steps=20, dataset_size=2000, log_every=25,
                   checkpoint_every=10 ** 6, sample_every=10 ** 6)

    @classmethod
    def full(cls):
        return cls(steps=3000, batch_size=128, lr=1e-4, warmup_steps=100, dataset_size=20000)


@dataclass
class VAEDecoderJob(TrainConfig):
    """Fine-tune the VAE's decoder with its encoder frozen, on scenes where object 1 of
    ``extra_fraction`` of them is pink. The encoder, and so every latent the U-Net was trained on,
    stays exactly as it was: the U-Net, its LoRA and its ControlNet keep working (Stable Diffusion's
    improved autoencoders, ft-EMA and ft-MSE, were made the same way: decoder only)."""
    vae: str = str(zoo.PRETRAINED_DIR / zoo.FILES["vae"])
    extra_fraction: float = 0.3
    two_object_fraction: float = 0.3
    recon: str = "l1"
    ema_decay: float = 0.99

    @classmethod
    def quick(cls):
        return cls(steps=300, batch_size=16, lr=3e-4, warmup_steps=20, dataset_size=2000, log_every=25,
                   checkpoint_every=10 ** 6, sample_every=10 ** 6)

    @classmethod
    def full(cls):
        return cls(steps=1500, batch_size=64, lr=3e-4, warmup_steps=100, dataset_size=20000,
                   checkpoint_every=10 ** 6, sample_every=10 ** 6)


@dataclass
class VAE64Job(TrainConfig):
    """An f = 8 VAE for 64x64 images that copies the latent space of the 32x32 VAE at ``teacher``
    (train/vae64.py): its decoder learns to draw 64x64 scenes from the teacher's latents, its encoder
    to give the teacher's latents. Every model that works in latent space keeps working."""
    model: VAEConfig = field(default_factory=VAEConfig.f8_64)
    teacher: str = str(zoo.PRETRAINED_DIR / zoo.VAE32_FILE)
    init: str | None = None           # continue from a finished 64x64 VAE (e.g. data/pretrained/vae.npz)
    extra_fraction: float = 0.15      # scenes whose object 1 is pink (the shipped decoder draws pink)
    two_object_fraction: float = 0.5
    recon: str = "l1"
    logvar_weight: float = 0.01       # w_v: the log-variances matter far less than the means
    ema_decay: float = 0.99

    @classmethod
    def quick(cls):
        return cls(steps=300, batch_size=16, lr=1e-3, warmup_steps=20, dataset_size=2000, log_every=25,
                   checkpoint_every=10 ** 6, sample_every=10 ** 6)

    @classmethod
    def full(cls):
        """The shipped 64x64 VAE's first 2000 steps (3500 more at 3e-4 followed: the corners of small
        shapes came with them); `train all` runs 5500 steps at once (train/recipe.py)."""
        return cls(steps=2000, batch_size=64, lr=1e-3, warmup_steps=100, dataset_size=20000,
                   checkpoint_every=1000, sample_every=2000)


@dataclass
class NoisyClassifierJob(DiffusionTrainConfig):
    """The noise-aware colour classifier p(y | z_t, t) for classifier guidance (train/finetune.py), on
    the latents of the VAE, noised with the shipped U-Net's schedule."""
    vae: str = str(zoo.PRETRAINED_DIR / zoo.FILES["vae"])
    schedule: str = "scaled_linear"
    weight_decay: float = 0.01
    ema_decay: float = 0.99

    @classmethod
    def quick(cls):
        return cls(steps=600, batch_size=64, lr=2e-3, warmup_steps=30, dataset_size=3000, log_every=50,
                   checkpoint_every=10 ** 6, sample_every=10 ** 6)

    @classmethod
    def full(cls):
        return cls(steps=4000, batch_size=256, lr=2e-3, warmup_steps=200, dataset_size=30000)


JOB_CONFIGS = {"pixel": PixelJob, "vae": VAEJob, "latent": LatentJob, "clip": ClipJob,
               "text2image": Text2ImageJob, "classifier": ClassifierJob, "digit_classifier": DigitClassifierJob,
               "lora": LoRAJob,
               "textual_inversion": TextualInversionJob, "controlnet": ControlNetJob,
               "noisy_classifier": NoisyClassifierJob, "vae_decoder": VAEDecoderJob,
               "vae64": VAE64Job}


OVERRIDES = ("steps", "batch_size", "lr", "seed", "dataset_size", "log_every", "checkpoint_every",
             "sample_every", "data", "vae", "text_encoder", "tokenizer", "init", "two_object_fraction", "model",
             "perceptual_weight", "adversarial_weight", "adversarial_start", "unet", "rank", "alpha",
             "extra_fraction", "init_word", "schedule", "prediction_type", "min_snr_gamma", "teacher")


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
