"""Training: every model minidiff ships is trained by one loop, ``fit``, that you can read top to bottom.

    python -m minidiff train pixel        # unconditional U-Net on shapes images (or --data folder:PATH / idx:PATH)
    python -m minidiff train vae          # the KL autoencoder; stores the latent scale factor at the end
    python -m minidiff train latent       # unconditional U-Net on the latents of a trained VAE (--vae)
    python -m minidiff train clip         # BPE tokenizer + mini-CLIP -> tokenizer.json, text_encoder.npz
    python -m minidiff train text2image   # U-Net on latents, cross-attending to the frozen text encoder
    python -m minidiff train classifier   # the attribute classifier behind `python -m minidiff evaluate`
    python -m minidiff train digit_classifier   # the judge of generated digits (--data digits)
    python -m minidiff train lora | textual_inversion | controlnet | noisy_classifier | vae_decoder
                                          # fine-tunes of a finished model (finetune.py, vae_decoder.py)
    python -m minidiff train vae64        # the 64x64 (f = 8) VAE, taught the 32x32 one's latents (vae64.py)
    python -m minidiff train all --out DIR --preset full     # the whole 64x64 pipeline (recipe.py): clip,
                                          # vae32, text2image, vae64, judge64, up to 3 side by side on a GPU;
                                          # with --max-minutes M, run it again until "all stages complete"

The package, in reading order:

    config.py   the job configs (dataclasses with quick() and full() instances), make_config
    loop.py     fit: the one training loop (AdamW, EMA, clipping, checkpoints, resume, samples)
    data.py     the training data, prepared once and kept on the device
    jobs.py     one function per job: data + model + a loss function, handed to fit (the fine-tunes
                in finetune.py, vae_decoder.py and vae64.py; runners.py names them all)
    recipe.py   `train all`: the stages, what each waits for, side by side in processes of their own
    cli.py      the command line
"""
from .config import (JOB_CONFIGS, JOBS, OVERRIDES, ClassifierJob, ClipJob, DiffusionTrainConfig,  # noqa: F401
                     DigitClassifierJob, LatentJob, PixelJob, Text2ImageJob, TrainConfig, VAE64Job, VAEDecoderJob, VAEJob,
                     make_config)
from .data import SHAPES_DATA_SEED, encode_dataset, gather, load_images, text_states  # noqa: F401
from .loop import (RESUMABLE_CHANGES, FitResult, TrainingDiverged, TrainingInterrupted,  # noqa: F401
                   check_resumable, fit, output_lock, step_rng)
from .jobs import (run_classifier, run_clip, run_digit_classifier, run_latent, run_pixel,  # noqa: F401
                   run_text2image, run_vae, train_classifier, train_tokenizer)
from .vae64 import run_vae64  # noqa: F401
from .vae_decoder import run_vae_decoder  # noqa: F401
from .runners import RUNNERS  # noqa: F401
from .recipe import Stage, recipe_for, run_all, stage_configs, stages_for  # noqa: F401
from .cli import ALL_STAGES, OUTPUT_DIR, add_arguments, main  # noqa: F401
from ..optim import AdamWGroups  # noqa: F401  (its old home)
from ..zoo import (FILES, MODEL_CLASSES, PRETRAINED_DIR, TEXT_ENCODER_FILE, TOKENIZER_FILE,  # noqa: F401
                   checkpoint_job, config_from_dict, is_complete, load_trained)
