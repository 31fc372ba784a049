"""The MLP that lesson 03 judges in --quick (data/pretrained/lessons/toy_swiss_roll.npz): it loads into the
MLPDenoiser its header names, is stored in float16 with its training recipe, and still shows the lesson's two
claims about it: mid-training, sampling from the EMA of the weights beats the raw weights, and at the end
DDIM-50 from the EMA lands on the swiss roll (MMD^2 near a fresh draw of the data, far below pure noise)."""
from pathlib import Path

import numpy as np
import pytest

from minidiff.checkpoint import load_checkpoint
from minidiff.datasets.toy2d import sample_toy
from minidiff.diffusion import samplers
from minidiff.diffusion.schedule import NoiseSchedule
from minidiff.models.mlp import MLPConfig, MLPDenoiser
from minidiff.nn.module import no_grad

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "data" / "pretrained" / "lessons" / "toy_swiss_roll.npz"
CARD = ROOT / "data" / "pretrained" / "lessons" / "README.md"


def mmd2(a, b, bandwidths=(0.05, 0.1, 0.2, 0.5, 1.0)):
    """Biased MMD^2 with a sum of RBF kernels, as lesson 03 computes it."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)

    def mean_kernel(x, y):
        sq_dist = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2 * x @ y.T
        return sum(np.exp(-np.maximum(sq_dist, 0) / (2 * s * s)).mean() for s in bandwidths)

    return mean_kernel(a, a) + mean_kernel(b, b) - 2 * mean_kernel(a, b)


@pytest.fixture(scope="module")
def toy():
    return load_checkpoint(TOY)


def _net(toy, weights):
    net = MLPDenoiser(MLPConfig(**toy.config["model"]), seed=0).eval()
    net.load_state_dict(weights)
    return net


def _ddim(net, n=1000, seed=20):
    x_T = np.random.default_rng(seed).standard_normal((n, 2)).astype(np.float32)
    with no_grad():
        return np.asarray(samplers.sample(net, NoiseSchedule.make("linear", num_steps=1000), x_T.shape,
                                          sampler="ddim", steps=50, x_T=x_T, progress=False))


def test_toy_checkpoint_holds_its_recipe_in_float16(toy):
    assert toy.config["train"]["dataset"] == "swiss_roll" and toy.step == toy.config["train"]["steps"]
    for weights in (toy.model_state, toy.ema_state["shadow"], toy.extra["mid_raw"], toy.extra["mid_ema"]):
        assert all(w.dtype == np.float16 for w in weights.values())
        assert all(np.isfinite(w).all() for w in weights.values())
    assert 0 < int(toy.extra["mid_step"]) < toy.step
    assert TOY.stat().st_size < 1.2e6
    assert TOY.name in CARD.read_text(encoding="utf-8")


def test_mid_training_ema_samples_beat_the_raw_weights(toy):
    reference = sample_toy("swiss_roll", 1000, seed=3)
    raw, averaged = (mmd2(_ddim(_net(toy, toy.extra[key])), reference) for key in ("mid_raw", "mid_ema"))
    assert averaged < 0.7 * raw, f"mid-training MMD^2: EMA {averaged:.4f} vs raw {raw:.4f}"


def test_final_ema_model_samples_land_on_the_roll(toy):
    reference = sample_toy("swiss_roll", 1000, seed=3)
    floor = mmd2(sample_toy("swiss_roll", 1000, seed=30), reference)
    noise = mmd2(np.random.default_rng(12).standard_normal((1000, 2)), reference)
    score = mmd2(_ddim(_net(toy, toy.ema_state["shadow"])), reference)
    assert score < 1.5 * floor and score < 0.2 * noise, f"MMD^2 {score:.4f}, floor {floor:.4f}, noise {noise:.4f}"
