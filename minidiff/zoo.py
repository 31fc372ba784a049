"""The model zoo: which file holds which model, and how every model is saved and loaded.

One checkpoint schema for every model minidiff trains. The JSON config inside each ``.npz``
(``minidiff/checkpoint.py`` writes the file) is

    {"job":       "pixel" | "vae" | "latent" | "clip" | "text_encoder" | "text2image" | "classifier"
                  | "digit_classifier",
     "model":     the model's config dataclass, as a dict (enough to rebuild the model),
     "train":     the training job's settings (or, for text_encoder.npz, {"from": the clip.npz}),
     "diffusion": {"schedule", "num_steps", "prediction_type"}       (diffusion models only)}

``load_trained(path)`` rebuilds any of them from that config alone; the registry below says which
class each job builds. The shipped models live in ``data/pretrained/`` under the names in FILES,
the same names ``python -m minidiff train all --out DIR`` writes, so ``--checkpoints DIR`` works
for either.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np

from . import backend
from .checkpoint import CheckpointError, config_from_dict, load_checkpoint, load_into, save_checkpoint  # noqa: F401
from .diffusion.schedule import PREDICTION_TYPES, SCHEDULES
from .models.classifier import AttributeClassifier, ClassifierConfig
from .models.clip import CLIPConfig, MiniCLIP
from .models.controlnet import ControlledUNet, ControlNet, ControlNetConfig
from .models.digit_classifier import DigitClassifier, DigitClassifierConfig
from .models.lora import AdapterMismatch, LoRAAdapters, add_lora
from .models.text_encoder import TextEncoder, TextEncoderConfig
from .models.tokenizer import BPETokenizer
from .models.unet import UNet, UNetConfig
from .models.vae import AutoencoderKL, VAEConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
PRETRAINED_DIR = REPO_ROOT / "data" / "pretrained"
DIGITS_DIR = PRETRAINED_DIR / "digits"          # the checkpoint set trained on the shipped digits

# file names inside a checkpoint folder (data/pretrained/ or a `train all --out DIR`)
FILES = {"pixel": "pixel.npz", "vae": "vae.npz", "latent": "latent.npz", "clip": "clip.npz",
         "text2image": "unet.npz", "classifier": "classifier.npz", "digit_classifier": "digit_classifier.npz",
         "text_encoder": "text_encoder.npz", "tokenizer": "tokenizer.json",
         # the fine-tunes of a finished text-to-image model (train/finetune.py), beside it in the folder
         "lora": "lora_pink.npz", "textual_inversion": "pink_token.npz", "controlnet": "controlnet.npz",
         "noisy_classifier": "noisy_classifier.npz",
         # the 64x64 VAE distilled from a 32x32 one (train/vae64.py) is the folder's VAE
         "vae64": "vae.npz"}
TEXT_ENCODER_FILE, TOKENIZER_FILE = FILES["text_encoder"], FILES["tokenizer"]
VAE32_FILE = "vae32.npz"              # the 32x32 (f = 4) VAE whose latent space the shipped 64x64 one copies
JUDGE64_FILE = "classifier64.npz"      # the attribute classifier of 64x64 images (classifier.npz: 32x32)
PIPELINE_FILE = "pipeline.json"       # optional: a folder's sampling defaults, e.g. {"guidance_scale": 2.0}
DEFAULT_GUIDANCE = 4.0
MAX_TRAIN_TIMESTEPS = 100_000          # the shipped models use 1000

# job -> (model class, its config class)
MODEL_CLASSES = {"pixel": (UNet, UNetConfig), "latent": (UNet, UNetConfig), "text2image": (UNet, UNetConfig),
                 "vae": (AutoencoderKL, VAEConfig), "clip": (MiniCLIP, CLIPConfig),
                 "text_encoder": (TextEncoder, TextEncoderConfig),
                 "classifier": (AttributeClassifier, ClassifierConfig),
                 "digit_classifier": (DigitClassifier, DigitClassifierConfig)}

HOW_TO_GET = ("the shipped checkpoints live in data/pretrained/ (restore them with "
              "`git checkout -- data/pretrained`), or train your own with "
              "`python -m minidiff train all --out DIR` and pass --checkpoints DIR")


# -- the schema ----------------------------------------------------------------------------------
def checkpoint_config(job: str, model, train: dict | None = None, diffusion: dict | None = None) -> dict:
    """The JSON config of a checkpoint of ``model`` trained by ``job`` (the schema above)."""
    if job not in MODEL_CLASSES:
        raise ValueError(f"unknown job {job!r}; expected one of {tuple(MODEL_CLASSES)}")
    config = {"job": job, "model": dataclasses.asdict(model.config), "train": dict(train or {})}
    if diffusion is not None:
        config["diffusion"] = dict(diffusion)
    return config


def checkpoint_job(ckpt) -> str:
    """The job recorded in a checkpoint's config ("pixel", "vae", ..., "text_encoder")."""
    config = ckpt.config if isinstance(ckpt.config, dict) else {}
    job = config.get("job")
    if not isinstance(job, str) or job not in MODEL_CLASSES:
        raise CheckpointError(f"checkpoint {ckpt.path} records no known job (job={job!r}); "
                              f"expected one of {tuple(MODEL_CLASSES)}")
    return job


def diffusion_settings(ckpt) -> dict:
    """{"schedule", "num_steps", "prediction_type"} of a diffusion checkpoint, each checked (a
    schedule of at most MAX_TRAIN_TIMESTEPS steps: its tables are built in memory)."""
    settings = (ckpt.config or {}).get("diffusion", {})
    if not isinstance(settings, dict):
        raise CheckpointError(f"checkpoint {ckpt.path}: its diffusion settings must be a JSON object")
    schedule = settings.get("schedule", "linear")
    num_steps = settings.get("num_steps", 1000)
    prediction_type = settings.get("prediction_type", "epsilon")
    if schedule not in SCHEDULES:
        raise CheckpointError(f"checkpoint {ckpt.path}: diffusion.schedule must be one of {SCHEDULES}, "
                              f"got {schedule!r}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or not 1 <= num_steps <= MAX_TRAIN_TIMESTEPS:
        raise CheckpointError(f"checkpoint {ckpt.path}: diffusion.num_steps must be an integer in "
                              f"[1, {MAX_TRAIN_TIMESTEPS}], got {num_steps!r}")
    if prediction_type not in PREDICTION_TYPES:
        raise CheckpointError(f"checkpoint {ckpt.path}: diffusion.prediction_type must be one of "
                              f"{PREDICTION_TYPES}, got {prediction_type!r}")
    return {"schedule": schedule, "num_steps": num_steps, "prediction_type": prediction_type}


def _scale_factor(ckpt) -> float:
    """A finished VAE's latent scale factor (1 / std of its latents): a finite positive number."""
    value = (ckpt.extra or {}).get("scale_factor")
    if value is None:
        raise CheckpointError(f"VAE checkpoint {ckpt.path} has no latent scale factor: it is not "
                              "finished; resume its training to the end (train vae --resume)")
    value = np.asarray(value)
    if value.shape != () or not np.issubdtype(value.dtype, np.number) or not (np.isfinite(value) and value > 0):
        raise CheckpointError(f"VAE checkpoint {ckpt.path}: the latent scale factor must be one finite "
                              f"number > 0, got {value!r}")
    return float(value)


# -- loading -------------------------------------------------------------------------------------
def load_trained(path, device=None, hint=None, expect=None):
    """(model in eval mode on ``device``, Checkpoint) from any checkpoint in the schema above.

    Loads the EMA weights when the checkpoint has them (a final checkpoint already stores them as
    the model's). A VAE gets its latent ``scale_factor`` back. ``expect``: a job name or a tuple
    of them; any other job is a CheckpointError."""
    ckpt = load_checkpoint(path, hint=hint)
    job = checkpoint_job(ckpt)
    if expect is not None and job not in ((expect,) if isinstance(expect, str) else tuple(expect)):
        raise CheckpointError(f"{path} is a {job!r} checkpoint, not {expect!r}")
    model_class, config_class = MODEL_CLASSES[job]
    config = config_from_dict(config_class, ckpt.config.get("model", {}), where=str(path))
    try:
        model = model_class(config)
    except (TypeError, ValueError, AttributeError, KeyError) as exc:   # a nested config no check caught
        raise CheckpointError(f"{config_class.__name__}: the model config in {path} builds no "
                              f"{model_class.__name__} ({type(exc).__name__}: {exc})") from None
    except MemoryError:                  # sizes no file of this checkpoint's weights could fill
        raise CheckpointError(f"{config_class.__name__}: the model config in {path} asks for a "
                              f"{model_class.__name__} too large to build in memory") from None
    load_into(model, ckpt, use_ema=bool(ckpt.ema_state))
    if job == "vae":
        model.scale_factor = _scale_factor(ckpt)
    _check_finite(model, ckpt.path)
    return model.to(device or backend.device()).eval(), ckpt


def _check_finite(model, path):
    """A weight that is NaN or infinite would make every image black (or grey): refuse it here."""
    for name, p in model.named_parameters():
        if not np.isfinite(backend.to_numpy(p.data)).all():
            raise CheckpointError(f"checkpoint {path}: weight {name!r} holds NaN or infinite values; "
                                  "the file is damaged, train or restore it again")


def load_vae(path, device=None):
    """A finished VAE (with its scale factor)."""
    vae, _ = load_trained(path, device, hint="train one with: python -m minidiff train vae", expect="vae")
    return vae


def load_text_encoder(path, device=None):
    """A TextEncoder from text_encoder.npz, or the text tower of a clip.npz."""
    model, _ = load_trained(path, device, hint="train one with: python -m minidiff train clip",
                            expect=("text_encoder", "clip"))
    return model.text_encoder if isinstance(model, MiniCLIP) else model


def load_tokenizer(path, vocab_size: int | None = None):
    """A BPETokenizer from tokenizer.json; checked against the text encoder's vocabulary size."""
    try:
        tokenizer = BPETokenizer.load(path)          # validates every field of the file
    except FileNotFoundError:
        raise
    except ValueError as exc:
        raise CheckpointError(f"tokenizer {path} is corrupt ({exc})") from None
    if vocab_size is not None:
        tokenizer.check_vocab_size(vocab_size)
    return tokenizer


def load_clip(directory, device=None):
    """(MiniCLIP, BPETokenizer) from a folder holding clip.npz and tokenizer.json (``train clip``)."""
    directory = Path(directory)
    model, _ = load_trained(directory / FILES["clip"], device,
                            hint="train one with: python -m minidiff train clip", expect="clip")
    return model, load_tokenizer(directory / FILES["tokenizer"], model.config.text.vocab_size)


def load_classifier(path=None, device=None):
    """The attribute classifier (default: the shipped one)."""
    path = PRETRAINED_DIR / FILES["classifier"] if path is None else path
    model, _ = load_trained(path, device, hint="train it with: python -m minidiff train classifier",
                            expect="classifier")
    return model


def judge_path(image_size: int, folder=None) -> Path:
    """The shipped attribute classifier that judges images of ``image_size``: classifier64.npz (trained
    on 64x64 renders) for 64x64 when the folder has it, else classifier.npz (32x32; smaller images are
    repeated up to it, larger ones average-pooled down)."""
    folder = PRETRAINED_DIR if folder is None else Path(folder)
    if image_size == 64 and (folder / JUDGE64_FILE).exists():
        return folder / JUDGE64_FILE
    return folder / FILES["classifier"]


def load_digit_classifier(path=None, device=None):
    """The digit classifier that judges generated digits (default: the shipped digits set's)."""
    path = DIGITS_DIR / FILES["digit_classifier"] if path is None else path
    model, _ = load_trained(path, device, hint="train it with: python -m minidiff train digit_classifier",
                            expect="digit_classifier")
    return model


def is_complete(path) -> bool:
    """True when ``path`` is a final checkpoint (training reached its last step)."""
    try:
        return bool(int(np.asarray(load_checkpoint(path).extra.get("complete", 0))))
    except (FileNotFoundError, CheckpointError):
        return False


# -- saving --------------------------------------------------------------------------------------
def save_text_encoder(path, clip: MiniCLIP, source, step: int = 0, dtype=None):
    """The text tower of a trained mini-CLIP on its own, as the pipeline and text2image load it."""
    config = checkpoint_config("text_encoder", clip.text_encoder, train={"from": str(source)})
    return save_checkpoint(path, model=clip.text_encoder, config=config, step=step, dtype=dtype)


def folder_defaults(directory) -> dict:
    """A checkpoint folder's sampling defaults: {"guidance_scale": ...} from its optional pipeline.json
    (the scale its model card measured best), else DEFAULT_GUIDANCE. A damaged file is a CheckpointError."""
    path = Path(directory) / PIPELINE_FILE
    if not path.is_file():
        return {"guidance_scale": DEFAULT_GUIDANCE}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{path} is not readable JSON ({exc})") from None
    scale = data.get("guidance_scale", DEFAULT_GUIDANCE) if isinstance(data, dict) else None
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or not 0 <= scale <= 100:
        raise CheckpointError(f"{path}: guidance_scale must be a number in [0, 100], got {scale!r}")
    return {"guidance_scale": float(scale)}


# -- the add-ons: a LoRA adapter, a ControlNet (each beside the U-Net it was trained on) --------------
def _plain_json(value) -> dict:
    """A config as plain JSON: what an add-on records of its base model and is checked against."""
    return json.loads(json.dumps(dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value))


def save_adapter(path, adapters: LoRAAdapters, base_config, base_name: str = "", extra: dict | None = None):
    """The adapter alone (A and B of every layer) in a small .npz, with a config naming the base
    model's config: {"job": "lora", "lora": {rank, alpha, targets}, "base": {"name", "model"}}."""
    config = {"job": "lora", "lora": adapters.settings(),
              "base": {"name": str(base_name), "model": _plain_json(base_config)}}
    return save_checkpoint(path, model=adapters, config=config, extra=extra)


def load_adapter(path, model, scale: float = 1.0):
    """Attach the adapter saved at ``path`` to ``model`` (whose config must be the one it was trained
    on); returns the LoRAAdapters. A missing file is FileNotFoundError; an adapter for another
    model, or a file that is no adapter, is one AdapterMismatch naming the difference."""
    ckpt = load_checkpoint(path, hint="train one with `python -m minidiff train lora`")
    config = ckpt.config if isinstance(ckpt.config, dict) else {}
    if config.get("job") != "lora" or not isinstance(config.get("lora"), dict):
        raise AdapterMismatch(f"{path} is not a LoRA adapter (its job is {config.get('job')!r})")
    theirs, mine = config.get("base", {}).get("model", {}), _plain_json(model.config)
    differ = [k for k in sorted(set(theirs) | set(mine)) if theirs.get(k) != mine.get(k)]
    if differ:
        k = differ[0]
        raise AdapterMismatch(f"{path} is an adapter for another model: its base has {k}={theirs.get(k)!r}, "
                              f"this model {k}={mine.get(k)!r}")
    settings = config["lora"]
    adapters = add_lora(model, settings["rank"], settings["alpha"], tuple(settings["targets"]))
    try:
        adapters.load_state_dict(ckpt.model_state)
    except ValueError as exc:
        adapters.detach()
        raise AdapterMismatch(f"{path}: {exc}") from None
    if not all(np.isfinite(backend.to_numpy(p.data)).all() for p in adapters.parameters()):
        adapters.detach()
        raise AdapterMismatch(f"{path}: the adapter holds NaN or infinite values")
    return adapters.set_scale(scale)


def save_controlnet(path, controlnet: ControlNet, dtype=None):
    """The ControlNet alone, with its config and its locked U-Net's config."""
    config = {"job": "controlnet", "controlnet": dataclasses.asdict(controlnet.config),
              "base": {"model": _plain_json(controlnet.unet_config)}}
    return save_checkpoint(path, model=controlnet, config=config, dtype=dtype)


def load_controlnet(path, unet):
    """A ControlledUNet: ``unet`` locked, steered by the ControlNet saved at ``path``; one clear error
    when the file is no ControlNet, or one made for another U-Net."""
    ckpt = load_checkpoint(path, hint="train one with `python -m minidiff train controlnet`")
    config = ckpt.config if isinstance(ckpt.config, dict) else {}
    if config.get("job") != "controlnet" or not isinstance(config.get("controlnet"), dict):
        raise AdapterMismatch(f"{path} is not a ControlNet (its job is {config.get('job')!r})")
    if config.get("base", {}).get("model") != _plain_json(unet.config):
        raise AdapterMismatch(f"{path} is a ControlNet for another U-Net")
    controlnet = ControlNet(unet, config_from_dict(ControlNetConfig, config["controlnet"], where=str(path)))
    controlnet.load_state_dict(ckpt.model_state)
    controlnet.to("gpu" if backend.is_gpu_array(unet.parameters()[0].data) else "cpu").eval()
    return ControlledUNet(unet, controlnet)
