"""The small checkpoints that lessons 05, 06 and 08 load in --quick (data/pretrained/lessons/): each
loads as a pixel U-Net with finite weights, predicts what its name says, was made by the settings
of the script the model card names, is stored small, and is listed in the model card."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from minidiff import zoo
from minidiff.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
LESSON_MODELS = ROOT / "data" / "pretrained" / "lessons"
FILES = sorted(p for p in LESSON_MODELS.glob("*.npz") if not p.stem.startswith("toy_"))   # toy_: lesson 03's
CARD = (LESSON_MODELS / "README.md").read_text(encoding="utf-8") if (LESSON_MODELS / "README.md").exists() else ""


def _script(name):
    spec = importlib.util.spec_from_file_location(name, LESSON_MODELS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _expected_settings(path):
    """The training settings the checkpoint must record, from the script that made it."""
    if path.stem.startswith("clip16_"):
        script = _script("train_relation_clips")
        return {**script.SETTINGS, "hard_negatives": path.stem == "clip16_hard"}
    if path.stem == "pixel16_v":
        return dict(_script("train_pixel16").SETTINGS)
    name = path.stem.removeprefix("pred16_")
    job = _script("train_predictions").job(name)
    return {k: getattr(job, k) for k in ("schedule", "prediction_type", "min_snr_gamma", "steps", "batch_size",
                                         "lr", "ema_decay", "seed")}


def test_the_lessons_ship_their_checkpoints():
    names = {p.stem for p in FILES}
    assert {"pixel16_v", "pred16_eps", "pred16_x0", "pred16_v", "pred16_v_minsnr", "clip16_bag", "clip16_hard"} <= names
    assert sum(p.stat().st_size for p in FILES) < 6e6


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_lesson_checkpoint_loads_and_matches_its_recipe(path):
    job = "clip" if path.stem.startswith("clip16_") else "pixel"
    model, ckpt = zoo.load_trained(path, expect=job, device="cpu")
    assert model.config.image_size == 16 and model.config.in_channels == 3
    recorded = ckpt.config["train"]
    for key, value in _expected_settings(path).items():
        assert recorded[key] == value, f"{path.name}: {key} is {recorded[key]!r}, its script says {value!r}"
    if job == "pixel":
        diffusion = zoo.diffusion_settings(ckpt)
        assert diffusion["prediction_type"] == recorded["prediction_type"]
    stored = load_checkpoint(path)
    assert all(v.dtype == np.float16 for k, v in stored.model_state.items() if np.issubdtype(v.dtype, np.floating))
    assert path.name in CARD, f"{path.name} is not in data/pretrained/lessons/README.md"
